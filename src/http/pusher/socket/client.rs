//! What a client sends besides subscribing: client events and `pusher:signin`.

use serde_json::Value;

use super::super::api::terminate_channel;
use super::super::message::{self, data_as, ClientFrame, SigninData};
use super::super::{herald_channel, origin_id, signature_ok, Kind};
use super::{plain, Close, Session, CLIENT_EVENT_REJECTED, UNAUTHORIZED};
use crate::event::{Filter, NewEvent, Source};

impl Session {
    pub(super) async fn on_client_event(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let channel = frame.channel.clone().unwrap_or_default();
        let kind = Kind::of(&channel);
        let refusal = if !self.pusher.client_events {
            Some("Client events are not enabled for this app")
        } else if !matches!(kind, Kind::Private | Kind::Presence) {
            Some("Client events are only allowed on private and presence channels")
        } else if !self.subs.contains_key(&channel) {
            Some("Client events need a subscription to the channel")
        } else {
            None
        };
        if let Some(m) = refusal {
            return self.send(message::error(None, m)).await;
        }
        if self
            .client_events
            .take(1, std::time::Instant::now())
            .is_err()
        {
            let m = "Client event rejected - only 10 accepted per second";
            return self
                .send(message::error(Some(CLIENT_EVENT_REJECTED), m))
                .await;
        }
        let data = frame.data.unwrap_or_else(|| {
            serde_json::value::RawValue::from_string("{}".into()).expect("JSON")
        });
        if data.get().len() > self.pusher.max_event_bytes {
            let m = format!(
                "Client event data over {} bytes",
                self.pusher.max_event_bytes
            );
            return self.send(message::error(None, &m)).await;
        }
        let user = self.members.get(&channel).map(|(u, _)| u.as_str());
        let event = match NewEvent::new(
            Source::Pusher,
            herald_channel(&self.pusher.id, &channel),
            Some(frame.event),
            data,
            Some(origin_id(Some(&self.socket_id), user)),
        ) {
            Ok(event) => event,
            Err(e) => return self.send(message::error(None, &e.to_string())).await,
        };
        if let Err(e) =
            self.app
                .take_publish_budget(&crate::auth::Principal::Anonymous, self.conn.peer.ip(), 1)
        {
            return self.send(message::error(None, &e.message)).await;
        }
        let asker = user.or(self.user.as_deref()).map(str::to_string);
        let (proxy, max) = (self.app.proxy.clone(), self.pusher.max_event_bytes);
        let event = match vet_client_event(proxy, event, asker, max).await {
            Ok(event) => event,
            Err(m) => return self.send(message::error(None, &m)).await,
        };
        if let Err(e) = self.app.hub.publish(vec![event], "pusher").await {
            tracing::warn!(error = %e, "client event not stored");
            return self
                .send(message::error(None, "Client event not accepted; retry"))
                .await;
        }
        Ok(())
    }

    /// `pusher:signin`: auth = HMAC of `socket_id::user::user_data`. A signed-in socket is
    /// ended by `POST /apps/{id}/users/{user}/terminate_connections` on any node.
    pub(super) async fn on_signin(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let Some(d) = data_as::<SigninData>(frame.data.as_deref()) else {
            return self
                .send(message::error(
                    None,
                    "pusher:signin needs auth and user_data",
                ))
                .await;
        };
        let signed = format!("{}::user::{}", self.socket_id, d.user_data);
        let good = d.auth.split_once(':').is_some_and(|(key, sig)| {
            key == self.pusher.key && signature_ok(&self.pusher.secret, &signed, sig)
        });
        let user = serde_json::from_str::<Value>(&d.user_data)
            .ok()
            .and_then(|v| match &v["id"] {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        let (true, Some(user)) = (good, user) else {
            self.send(message::error(
                Some(UNAUTHORIZED),
                "Invalid signin: bad signature or user_data without id",
            ))
            .await?;
            return Err(Close::with(UNAUTHORIZED, "unauthorized"));
        };
        let filter = Filter::notice(&terminate_channel(&self.pusher.id, &user));
        let ends = self.app.hub.subscribe(filter, None, self.lagged.clone());
        // A terminate event for this user ends the connection (no frame goes to the client).
        self.terminate = Some(plain(ends));
        self.user = Some(user);
        self.send(message::signin_success(&d.user_data)).await
    }
}

/// The publish hook, for a client event on a channel whose Herald name is in
/// `proxy.publish_channels`: kept, stored with the app's data instead, or refused with the
/// app's message (as a `pusher:error`, like Pusher's own refusals). `user`: the presence
/// member or signed-in user sending it.
async fn vet_client_event(
    proxy: Option<std::sync::Arc<crate::proxy::Proxy>>,
    event: NewEvent,
    user: Option<String>,
    max_bytes: usize,
) -> Result<NewEvent, String> {
    let Some(proxy) = proxy.filter(|p| p.asks_publish(event.channel())) else {
        return Ok(event);
    };
    match proxy
        .publish(user.as_deref(), event.channel(), event.kind(), event.data())
        .await
    {
        Ok(None) => Ok(event),
        Ok(Some(data)) if data.get().len() > max_bytes => {
            Err(format!("The app's data is over {max_bytes} bytes"))
        }
        Ok(Some(data)) => Ok(event.with_data(data)),
        Err(crate::proxy::ProxyError::Refused { message, .. }) => Err(message),
        Err(e) => Err(format!("proxy_unavailable: {e}")),
    }
}
