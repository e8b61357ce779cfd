//! A Pusher app's webhooks (`[[pusher.apps]] webhooks = [...]`) as endpoints kept in step
//! with the config at start: one per URL, id `wh_pusher_{app}_{hash of the URL}`, on the app's
//! channels, wanting the notices its `webhook_events` name, delivered in Pusher's format.
//! Being endpoints, they are durable, retried and visible in `/v1/webhooks` like any other.

use std::collections::HashSet;
use std::sync::Arc;

use sha2::Digest;

use super::model::{Endpoint, PusherFormat};
use super::sign::Secret;
use super::{now_ms, WebhookError, Webhooks};
use crate::config::PusherApp;

const PREFIX: &str = "wh_pusher_";

/// Pusher's webhook event names and the notices behind them.
const NOTICES: [(&str, &str); 4] = [
    ("channel_occupied", "channel.occupied"),
    ("channel_vacated", "channel.vacated"),
    ("member_added", "presence.join"),
    ("member_removed", "presence.leave"),
];

fn endpoint_id(app: &str, url: &str) -> String {
    let hash = sha2::Sha256::digest(url.as_bytes());
    format!("{PREFIX}{app}_{}", hex::encode(&hash[..6]))
}

impl Webhooks {
    /// Creates, updates and deletes the Pusher apps' endpoints to match the config.
    pub async fn sync_pusher(self: &Arc<Self>, apps: &[PusherApp]) -> Result<(), WebhookError> {
        let mut wanted = HashSet::new();
        for app in apps {
            let events: Vec<&str> = match &app.webhook_events {
                Some(e) => e.iter().map(String::as_str).collect(),
                None => crate::pusher::WEBHOOK_EVENTS.to_vec(),
            };
            for url in &app.webhooks {
                let id = endpoint_id(&app.id, url);
                wanted.insert(id.clone());
                self.ensure_pusher(id, url, app, &events).await?;
            }
        }
        for e in self.store.endpoints().await? {
            if e.id.starts_with(PREFIX) && !wanted.contains(&e.id) {
                self.delete(&e.id).await?;
            }
        }
        Ok(())
    }

    async fn ensure_pusher(
        self: &Arc<Self>,
        id: String,
        url: &str,
        app: &PusherApp,
        events: &[&str],
    ) -> Result<(), WebhookError> {
        self.check_url(url).await?;
        let format = PusherFormat {
            app: app.id.clone(),
            key: app.key.clone(),
            secret: app.secret.clone(),
            client_events: events.contains(&"client_event"),
        };
        let notifications: Vec<String> = NOTICES
            .iter()
            .filter(|(name, _)| events.contains(name))
            .map(|(_, notice)| notice.to_string())
            .collect();
        let channels = vec![format!("pusher/{}/*", app.id)];
        let existing = self.store.endpoint(&id).await?;
        let endpoint = match existing {
            Some(mut e) => {
                e.url = url.to_string();
                e.channels = channels;
                e.notifications = notifications;
                e.pusher = Some(format);
                e
            }
            None => Endpoint {
                id,
                owner: None,
                url: url.to_string(),
                channels,
                types: None,
                notifications,
                pusher: Some(format),
                description: format!("Pusher app {} webhook", app.id),
                enabled: true,
                ordered: false,
                rate_limit: None,
                secret: Secret::generate().as_str().to_string(),
                previous_secret: None,
                previous_expires_ms: None,
                created_ms: now_ms(),
                failing_since_ms: None,
                disabled_reason: None,
            },
        };
        // New ones start at the head, like any new endpoint; existing ones keep their cursor.
        let cursor = self
            .store
            .endpoint(&endpoint.id)
            .await?
            .is_none()
            .then(|| self.hub.log().bounds().head);
        self.store.put_endpoint(&endpoint, cursor).await?;
        self.install(endpoint)?;
        Ok(())
    }
}
