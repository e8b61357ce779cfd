//! Pusher protocol 7 frames: what clients send, and building what the server sends.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use yawc::Frame;

use crate::event::Event;

/// A client frame: `{"event", "data", "channel"?}` (data an object, or a string).
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    pub event: String,
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    #[serde(default)]
    pub channel: Option<String>,
}

/// `pusher:subscribe`'s data.
#[derive(Debug, Deserialize, Default)]
pub struct SubscribeData {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
}

/// `pusher:signin`'s data.
#[derive(Debug, Deserialize)]
pub struct SigninData {
    pub auth: String,
    pub user_data: String,
}

/// A presence channel's `channel_data`: `user_id` (a string or a number) and `user_info`.
#[derive(Debug, Deserialize)]
pub struct ChannelData {
    pub user_id: Value,
    #[serde(default)]
    pub user_info: Option<Value>,
}

impl ChannelData {
    pub fn user_id(&self) -> Option<String> {
        match &self.user_id {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// Parses a frame's `data`, which clients send as an object or as a string holding one.
pub fn data_as<T: serde::de::DeserializeOwned>(data: Option<&RawValue>) -> Option<T> {
    let raw = data?;
    match serde_json::from_str::<T>(raw.get()) {
        Ok(t) => Some(t),
        Err(_) => {
            let text: String = serde_json::from_str(raw.get()).ok()?;
            serde_json::from_str(&text).ok()
        }
    }
}

fn text(v: Value) -> Frame {
    Frame::text(v.to_string())
}

pub fn established(socket_id: &str, activity_timeout: u64) -> Frame {
    let data = json!({"socket_id": socket_id, "activity_timeout": activity_timeout});
    text(json!({"event": "pusher:connection_established", "data": data.to_string()}))
}

pub fn error(code: Option<u16>, message: &str) -> Frame {
    text(json!({"event": "pusher:error", "data": {"message": message, "code": code}}))
}

pub fn pong() -> Frame {
    text(json!({"event": "pusher:pong", "data": "{}"}))
}

pub fn ping() -> Frame {
    text(json!({"event": "pusher:ping", "data": "{}"}))
}

pub fn subscribed(channel: &str, data: Value) -> Frame {
    text(json!({
        "event": "pusher_internal:subscription_succeeded",
        "channel": channel,
        "data": data.to_string(),
    }))
}

pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> Frame {
    text(json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": {"type": kind, "error": message, "status": status},
    }))
}

pub fn member_added(channel: &str, user: &str, info: &Value) -> Frame {
    let data = json!({"user_id": user, "user_info": info});
    text(
        json!({"event": "pusher_internal:member_added", "channel": channel, "data": data.to_string()}),
    )
}

pub fn member_removed(channel: &str, user: &str) -> Frame {
    let data = json!({"user_id": user});
    text(
        json!({"event": "pusher_internal:member_removed", "channel": channel, "data": data.to_string()}),
    )
}

pub fn cache_miss(channel: &str) -> Frame {
    text(json!({"event": "pusher:cache_miss", "channel": channel}))
}

pub fn signin_success(user_data: &str) -> Frame {
    let data = json!({"user_data": user_data});
    text(json!({"event": "pusher:signin_success", "data": data.to_string()}))
}

/// An event as every Pusher subscriber of its channel gets it, built once per event (kept
/// on the event) and shared.
#[derive(Debug)]
pub struct PusherEvent {
    /// The whole WebSocket frame (header included, for the hub's direct write; the
    /// session's own writes take [`PusherEvent::text`]). None for events a Pusher client
    /// must never see (names in Pusher's own namespaces).
    pub frame: Option<Bytes>,
    /// The socket that triggered it, which does not get it back.
    pub skip_socket: Option<Box<str>>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", default)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    event: &'a str,
    channel: &'a str,
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

impl PusherEvent {
    /// `{"event": type (or "message"), "channel", "data": the data as text, "user_id"?}`.
    /// Data that is a JSON string goes out as that string, anything else as its JSON text:
    /// what a Pusher trigger sent comes back byte for byte, and what Herald clients publish
    /// reads as what they meant.
    pub fn of(event: &Event, pusher_channel: &str) -> PusherEvent {
        let Ok(env) = serde_json::from_slice::<Envelope>(event.envelope()) else {
            return PusherEvent {
                frame: None,
                skip_socket: None,
            };
        };
        let name = env.kind.unwrap_or("message");
        let (skip, user) = env
            .id
            .as_deref()
            .map(super::parse_origin)
            .unwrap_or((None, None));
        let skip_socket = skip.map(Into::into);
        if name.starts_with("pusher:") || name.starts_with("pusher_internal:") {
            return PusherEvent {
                frame: None,
                skip_socket,
            };
        }
        let unquoted: Option<String> = serde_json::from_str(env.data.get()).ok();
        let data = unquoted.as_deref().unwrap_or(env.data.get());
        let out = Outgoing {
            event: name,
            channel: pusher_channel,
            data,
            user_id: user,
        };
        let frame = serde_json::to_vec(&out)
            .ok()
            .map(|text| crate::event::ws_text_frame(&[&text]));
        PusherEvent { frame, skip_socket }
    }

    /// The frame's text, for a session writing it through its own WebSocket stack.
    pub fn text(&self) -> Option<Bytes> {
        self.frame.as_ref().map(crate::event::ws_payload)
    }

    /// The frame for `socket_id`: none for the socket that triggered the event.
    pub fn frame_for(&self, socket_id: &str) -> Option<&Bytes> {
        self.frame
            .as_ref()
            .filter(|_| self.skip_socket.as_deref() != Some(socket_id))
    }
}

/// A Pusher trigger's `data` string as Herald event data: the JSON it holds, or the string
/// itself when it is not JSON.
pub fn event_data(data: &str) -> Box<RawValue> {
    match serde_json::from_str::<Box<RawValue>>(data) {
        Ok(raw) => raw,
        Err(_) => RawValue::from_string(Value::String(data.to_string()).to_string())
            .expect("a JSON string"),
    }
}
