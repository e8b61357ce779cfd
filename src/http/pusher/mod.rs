//! The Pusher Channels protocol (version 7) on Herald's listener, so pusher-js, Laravel Echo
//! and the Pusher server SDKs work unchanged: the WebSocket at `/app/{key}` (`socket.rs`) and
//! the signed HTTP API at `/apps/{id}/...` (`api.rs`).
//!
//! Nothing here has its own state or delivery path: a Pusher event is a Herald event on the
//! mapped channel (`pusher/{app id}/{name}`, see [`herald_channel`]), with a seq, history,
//! SSE/WS delivery and webhooks; presence is Herald's presence on that channel. Pusher-only
//! facts ride in the event's idempotency id (`pusher:{socket}:{nonce}[:{user}]`: which socket
//! triggered it, so that socket is skipped, and who sent a client event).

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{PusherApp, PusherConfig};

pub mod api;
mod cache;
mod message;
pub mod socket;

pub use crate::pusher::*;
pub use cache::LastEvents;
pub use message::PusherEvent;

/// The apps, by id and by key.
pub struct Apps {
    by_id: HashMap<String, Arc<PusherApp>>,
    by_key: HashMap<String, Arc<PusherApp>>,
    pub activity_timeout: u64,
    /// The last event of each cache channel.
    cache: LastEvents,
}

#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    #[error("pusher.apps: app id {0:?} must be 1-64 characters of A-Z a-z 0-9 _ -")]
    Id(String),
    #[error("pusher.apps: {0:?} is used by two apps")]
    Duplicate(String),
    #[error("pusher.apps {0}: key and secret must not be empty")]
    Empty(String),
    #[error("pusher.apps {0}: unknown webhook event {1:?}")]
    WebhookEvent(String, String),
}

impl Apps {
    pub fn from_config(config: &PusherConfig) -> Result<Apps, AppsError> {
        let mut apps = Apps {
            by_id: HashMap::new(),
            by_key: HashMap::new(),
            activity_timeout: config.activity_timeout,
            cache: LastEvents::default(),
        };
        for app in &config.apps {
            let id_ok = !app.id.is_empty()
                && app.id.len() <= 64
                && app
                    .id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(AppsError::Id(app.id.clone()));
            }
            if app.key.is_empty() || app.secret.is_empty() {
                return Err(AppsError::Empty(app.id.clone()));
            }
            for e in app.webhook_events.iter().flatten() {
                if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                    return Err(AppsError::WebhookEvent(app.id.clone(), e.clone()));
                }
            }
            let app = Arc::new(app.clone());
            if apps.by_id.insert(app.id.clone(), app.clone()).is_some() {
                return Err(AppsError::Duplicate(app.id.clone()));
            }
            if apps.by_key.insert(app.key.clone(), app.clone()).is_some() {
                return Err(AppsError::Duplicate(app.key.clone()));
            }
        }
        Ok(apps)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<PusherApp>> {
        self.by_id.get(id)
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<PusherApp>> {
        self.by_key.get(key)
    }

    /// Starts keeping cache channels' last events (when there are apps at all).
    pub fn start(&self, hub: &Arc<crate::hub::Hub>, shutdown: tokio_util::sync::CancellationToken) {
        if !self.by_id.is_empty() {
            self.cache.start(hub.clone(), shutdown);
        }
    }

    /// A cache channel's last event (Herald channel name), if fresh.
    pub fn cached(&self, channel: &str) -> Option<crate::event::EventRef> {
        self.cache.get(channel)
    }
}
