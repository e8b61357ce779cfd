//! What WebSocket clients send, and the JSON shapes of the replies.

use yawc::Frame;

use crate::presence::Update;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// A client message. Every field but `op` is optional here and checked per op.
#[derive(Debug, Deserialize)]
pub struct ClientMessage {
    pub op: String,
    pub channel: Option<String>,
    pub since: Option<u64>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub id: Option<String>,
    /// subscribe: join the channel's presence (as `user`/`info` in open mode or with an API
    /// key; a token says who its holder is).
    #[serde(default)]
    pub presence: bool,
    pub user: Option<String>,
    pub info: Option<Value>,
    /// rpc: the method the app is asked to run (`data` its argument).
    pub method: Option<String>,
    #[serde(rename = "ref")]
    _ref: Option<Value>,
}

/// Why a client message was refused, with its `ref` when one could be read.
#[derive(Debug)]
pub struct MessageError {
    pub reference: Option<Value>,
    pub code: &'static str,
    pub message: String,
}

/// Parses one client text frame. Total: any input gives a message or an error, never a panic
/// (fuzzed and property-tested).
pub fn parse_client_message(text: &str) -> Result<(ClientMessage, Option<Value>), MessageError> {
    let value: Value = serde_json::from_str(text).map_err(|e| MessageError {
        reference: None,
        code: "invalid_json",
        message: format!("message is not valid JSON: {e}"),
    })?;
    let reference = value.get("ref").cloned();
    match serde_json::from_value::<ClientMessage>(value) {
        Ok(m) => Ok((m, reference)),
        Err(e) => Err(MessageError {
            reference,
            code: "invalid_message",
            message: format!("message has the wrong shape: {e}"),
        }),
    }
}

pub(super) fn text(value: Value) -> Frame {
    Frame::text(value.to_string())
}

pub(super) fn with_ref(mut value: Value, reference: Option<&Value>) -> Value {
    if let (Some(r), Some(obj)) = (reference, value.as_object_mut()) {
        obj.insert("ref".into(), r.clone());
    }
    value
}

pub(super) fn error(reference: Option<&Value>, code: &str, message: &str) -> Value {
    with_ref(
        json!({"op": "error", "code": code, "message": message}),
        reference,
    )
}

/// `{"op":"presence", ...}`: a diff's frame is built once for every watcher.
pub(super) fn presence_message(update: &Update) -> Frame {
    match update {
        Update::Diff(d) => Frame::text(d.ws_text()),
        Update::Sync(_) => {
            let mut body = update.body();
            body["op"] = "presence".into();
            text(body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any text gives a message or a typed error, never a panic.
        #[test]
        fn parser_is_total(text in "\\PC{0,300}") {
            let _ = parse_client_message(&text);
        }

        #[test]
        fn subscribe_round_trips(channel in "[a-z:*]{1,20}", since in proptest::option::of(proptest::num::u64::ANY), r in proptest::option::of("[a-z0-9]{1,8}")) {
            let mut v = json!({"op": "subscribe", "channel": channel});
            if let Some(s) = since { v["since"] = s.into(); }
            if let Some(r) = &r { v["ref"] = r.clone().into(); }
            let (m, reference) = parse_client_message(&v.to_string()).unwrap();
            proptest::prop_assert_eq!(m.op, "subscribe");
            proptest::prop_assert_eq!(m.channel.as_deref(), Some(channel.as_str()));
            proptest::prop_assert_eq!(m.since, since);
            proptest::prop_assert_eq!(reference.and_then(|r| r.as_str().map(String::from)), r);
        }

        /// JSON of the wrong shape keeps its `ref` in the error.
        #[test]
        fn wrong_shapes_keep_their_ref(since in "[a-z]{1,5}") {
            let text = json!({"op": "subscribe", "channel": "a", "since": since, "ref": "r1"}).to_string();
            let e = parse_client_message(&text).unwrap_err();
            proptest::prop_assert_eq!(e.code, "invalid_message");
            proptest::prop_assert_eq!(e.reference, Some(json!("r1")));
        }
    }
}
