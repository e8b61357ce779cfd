//! What a delivery carries: Herald's envelope (Standard Webhooks), with a notice naming the
//! channel it is about, or, for a Pusher app's webhook, Pusher's format.

use axum::body::Bytes;
use serde_json::{json, Value};

use super::model::{Endpoint, PusherFormat};
use crate::event::{Event, NOTICE_MARK};

/// The body of `event` for `endpoint`.
pub(super) fn body(event: &Event, endpoint: &Endpoint, now_ms: u64) -> Bytes {
    if let Some(p) = &endpoint.pusher {
        return pusher_body(event, p, now_ms);
    }
    let Some(channel) = event.channel.strip_prefix(char::from(NOTICE_MARK)) else {
        return event.envelope().clone();
    };
    match serde_json::from_slice::<Value>(event.envelope()) {
        Ok(mut v) => {
            v["channel"] = channel.into();
            Bytes::from(v.to_string())
        }
        Err(_) => event.envelope().clone(),
    }
}

/// `{"time_ms", "events": [one event]}` in Pusher's names: `channel_occupied`,
/// `channel_vacated`, `member_added`, `member_removed` (from notices) and `client_event`.
fn pusher_body(event: &Event, p: &PusherFormat, now_ms: u64) -> Bytes {
    let env: Value = serde_json::from_slice(event.envelope()).unwrap_or(Value::Null);
    let herald = event.channel.trim_start_matches(char::from(NOTICE_MARK));
    let channel =
        crate::pusher::pusher_channel(&p.app, herald).unwrap_or_else(|| herald.to_string());
    let user = env["data"]["user"].clone();
    let one = match event.kind.as_deref() {
        Some("channel.occupied") => json!({"name": "channel_occupied", "channel": channel}),
        Some("channel.vacated") => json!({"name": "channel_vacated", "channel": channel}),
        Some("presence.join") => {
            json!({"name": "member_added", "channel": channel, "user_id": user})
        }
        Some("presence.leave") => {
            json!({"name": "member_removed", "channel": channel, "user_id": user})
        }
        kind => {
            let (socket, sender) = env["id"]
                .as_str()
                .map(crate::pusher::parse_origin)
                .unwrap_or((None, None));
            let data = match &env["data"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut e = json!({"name": "client_event", "channel": channel,
                               "event": kind.unwrap_or(""), "data": data, "socket_id": socket});
            if let Some(u) = sender {
                e["user_id"] = u.into();
            }
            e
        }
    };
    Bytes::from(json!({"time_ms": now_ms, "events": [one]}).to_string())
}

/// `X-Pusher-Key` and `X-Pusher-Signature` (hex HMAC-SHA256 of the body with the secret).
pub(super) fn pusher_headers(p: &PusherFormat, body: &[u8]) -> [(&'static str, String); 2] {
    let signature = crate::pusher::sign(&p.secret, &String::from_utf8_lossy(body));
    [
        ("x-pusher-key", p.key.clone()),
        ("x-pusher-signature", signature),
    ]
}
