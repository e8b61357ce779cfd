//! The event model: channel names, patterns, and the envelope every transport carries.
//!
//! An [`Event`] is encoded once, when the log commits it; every transport then shares the same
//! bytes (cloning an `Event` handle is a refcount bump). Nothing here does I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::value::RawValue;

/// Longest channel name, pattern, event type or publisher id we accept.
pub const MAX_NAME_LEN: usize = 200;

/// Longest Herald name of a mapped Pusher channel (`pusher/{app}/{name}`, see
/// `crate::pusher::herald_channel`): a 64-character app id and a 164-character Pusher name
/// whose every character is written as two. Every name Pusher allows stays reachable from
/// Herald's side, so only those names may pass [`MAX_NAME_LEN`].
pub const MAX_MAPPED_LEN: usize = "pusher/".len() + 64 + 1 + 2 * 164;

/// The longest a name may be: [`MAX_MAPPED_LEN`] under `pusher/`, else [`MAX_NAME_LEN`].
fn max_len(name: &str) -> usize {
    if name.starts_with("pusher/") {
        MAX_MAPPED_LEN
    } else {
        MAX_NAME_LEN
    }
}

/// Why a channel name, pattern or event field was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error(
        "channel name must be 1-200 characters of A-Z a-z 0-9 _ . : @ / - (mapped Pusher \
         channels, pusher/..., up to 400), got {0:?}"
    )]
    Channel(String),
    #[error(
        "pattern must be 1-200 characters of A-Z a-z 0-9 _ . : @ / - and * (under pusher/, up \
         to 400), got {0:?}"
    )]
    Pattern(String),
}

fn valid_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'@' | b'/' | b'-')
}

/// Checks a channel name against `^[A-Za-z0-9_.:@/-]{1,200}$`.
pub fn validate_channel(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty() && name.len() <= max_len(name) && name.bytes().all(valid_name_char);
    if ok {
        Ok(())
    } else {
        Err(NameError::Channel(excerpt(name)))
    }
}

/// The start of a client's string, for quoting it in an error message (at most 64 chars).
pub fn excerpt(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A channel name that may hold `*` (any run of characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Box<str>);

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let ok = !text.is_empty()
            && text.len() <= max_len(text)
            && text.bytes().all(|c| c == b'*' || valid_name_char(c));
        if ok {
            Ok(Pattern(text.into()))
        } else {
            Err(NameError::Pattern(excerpt(text)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_literal(&self) -> bool {
        !self.0.contains('*')
    }

    /// Glob match where `*` is the only wildcard. Hand-written because glob crates give `/`
    /// and `?`/`[` special meanings that channel names must not have. Linear-time greedy
    /// matching with backtracking to the last star.
    pub fn matches(&self, name: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), name.as_bytes());
        // Notice channels are matched only by notice patterns (which clients cannot write).
        if s.first() == Some(&NOTICE_MARK) && p.first() != Some(&NOTICE_MARK) {
            return false;
        }
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first byte of a notice channel: `$` + the channel a presence or occupancy notice is
/// about. No client can name one (`$` is not a name character) and no client pattern
/// matches one, so notices reach only the webhook endpoints that asked for them.
pub const NOTICE_MARK: u8 = b'$';

/// What a subscriber or a history read wants: exact channels and patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    channels: BTreeSet<Box<str>>,
    patterns: Vec<Pattern>,
}

impl Filter {
    /// Builds a filter from names that are channels or, when they hold `*`, patterns.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, NameError> {
        let mut filter = Filter::default();
        for name in names {
            let pattern = Pattern::parse(name)?;
            if pattern.is_literal() {
                filter.channels.insert(pattern.0);
            } else if !filter.patterns.contains(&pattern) {
                filter.patterns.push(pattern);
            }
        }
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty()
    }

    /// Exactly the notice channel of `channel` (`$` + it): for internal signals that ride
    /// the log, such as a Pusher app's "end this user's connections".
    pub fn notice(channel: &str) -> Filter {
        let mut f = Filter::default();
        f.channels
            .insert(format!("{}{channel}", char::from(NOTICE_MARK)).into());
        f
    }

    /// The filter plus the notice channels of what it matches.
    pub fn with_notices(&self) -> Filter {
        let mark = char::from(NOTICE_MARK);
        let mut f = self.clone();
        for c in &self.channels {
            f.channels.insert(format!("{mark}{c}").into());
        }
        for p in &self.patterns {
            f.patterns.push(Pattern(format!("{mark}{p}").into()));
        }
        f
    }

    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(|c| &**c)
    }

    pub fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.patterns.iter()
    }

    pub fn matches(&self, channel: &str) -> bool {
        self.channels.contains(channel) || self.patterns.iter().any(|p| p.matches(channel))
    }
}

/// Which door an event comes in by. Each may use only the reserved names it owns, so no
/// path can pass an event off as another's (a forged captured request, a forged Pusher
/// sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `POST /v1/events` and WebSocket `publish`: the native rules, nothing reserved.
    Publisher,
    /// `POST /v1/hooks/{channel}` and its replay: type `webhook`, which only it may write.
    Hook,
    /// The Pusher socket's client events and the Pusher HTTP API: Pusher event names (any
    /// printable text, `pusher:` names refused) and ids that carry the origin (`pusher:`).
    Pusher,
    /// Herald's own signals on notice channels (presence notices, terminate requests).
    Internal,
}

/// The id prefix that carries a Pusher event's origin (see `crate::pusher::origin_id`):
/// reserved to [`Source::Pusher`], or a native publisher could forge a sender.
pub const PUSHER_ID_PREFIX: &str = "pusher:";

/// The id prefix of a captured request's delivery id (`hook:{webhook-id}`), which makes a
/// sender's retries idempotent: reserved to [`Source::Hook`], or a publisher could take an id
/// first and have the real delivery answered as a duplicate.
pub const HOOK_ID_PREFIX: &str = "hook:";

/// Why an event was refused at the door. Each variant's `code` is the API error code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error(transparent)]
    Channel(#[from] NameError),
    #[error("type must be 1-200 characters of A-Z a-z 0-9 _ . : @ / -")]
    Type,
    #[error("event name must be 1-200 characters with no control characters")]
    PusherName,
    #[error("type {:?} is reserved{}", .0, reserved_type_owner(.0))]
    ReservedType(String),
    #[error("id must be 1-200 characters with no control characters")]
    Id,
    #[error("ids starting with \"{0}\" are reserved for Herald's own use")]
    ReservedId(&'static str),
}

fn reserved_type_owner(kind: &str) -> &'static str {
    if kind == HOOK_TYPE {
        " for requests captured by /v1/hooks"
    } else {
        " for the Pusher protocol"
    }
}

impl EventError {
    pub fn code(&self) -> &'static str {
        match self {
            EventError::Channel(_) => "invalid_channel",
            EventError::Type | EventError::PusherName => "invalid_type",
            EventError::ReservedType(_) => "reserved_type",
            EventError::Id => "invalid_id",
            EventError::ReservedId(_) => "reserved_id",
        }
    }
}

/// The type of events made by `POST /v1/hooks/{channel}`, and only there: `herald forward`
/// replays them as HTTP requests to a developer's app, so any other publisher could forge one.
pub const HOOK_TYPE: &str = "webhook";

/// An event as a publisher hands it in, validated, before it has a seq. The fields are
/// private: [`NewEvent::new`] is the one door every ingest path goes through.
#[derive(Debug, Clone)]
pub struct NewEvent {
    channel: String,
    kind: Option<String>,
    data: Box<RawValue>,
    id: Option<String>,
}

impl NewEvent {
    /// Checks the channel, type and id by the rules of `source` (the data is JSON already).
    pub fn new(
        source: Source,
        channel: String,
        kind: Option<String>,
        data: Box<RawValue>,
        id: Option<String>,
    ) -> Result<NewEvent, EventError> {
        match (source, channel.strip_prefix(char::from(NOTICE_MARK))) {
            (Source::Internal, Some(rest)) => validate_channel(rest)?,
            _ => validate_channel(&channel)?,
        }
        if let Some(kind) = &kind {
            check_type(source, kind)?;
        } else if source == Source::Hook {
            return Err(EventError::Type);
        }
        if let Some(id) = &id {
            if id.is_empty() || id.len() > MAX_NAME_LEN || id.chars().any(char::is_control) {
                return Err(EventError::Id);
            }
            for (prefix, owner) in [
                (PUSHER_ID_PREFIX, Source::Pusher),
                (HOOK_ID_PREFIX, Source::Hook),
            ] {
                if id.starts_with(prefix) && source != owner {
                    return Err(EventError::ReservedId(prefix));
                }
            }
        }
        Ok(NewEvent {
            channel,
            kind,
            data,
            id,
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The same event with other data (the publish hook's rewrite; names stay as checked).
    pub fn with_data(self, data: Box<RawValue>) -> NewEvent {
        NewEvent { data, ..self }
    }

    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    pub fn data(&self) -> &RawValue {
        &self.data
    }

    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

fn check_type(source: Source, kind: &str) -> Result<(), EventError> {
    match source {
        // The native type is a token (it becomes the SSE `event:` line, which listeners name).
        Source::Publisher | Source::Hook => {
            if validate_channel(kind).is_err() {
                return Err(EventError::Type);
            }
            if (kind == HOOK_TYPE) != (source == Source::Hook) {
                return Err(EventError::ReservedType(kind.into()));
            }
        }
        // Pusher names are free text (Laravel sends `App\Events\OrderShipped`), but never
        // a line break or other control character, and never Pusher's own namespace.
        Source::Pusher => {
            if kind.is_empty() || kind.len() > MAX_NAME_LEN || kind.chars().any(char::is_control) {
                return Err(EventError::PusherName);
            }
            if kind.starts_with("pusher:") || kind.starts_with("pusher_internal:") {
                return Err(EventError::ReservedType(kind.into()));
            }
            if kind == HOOK_TYPE {
                return Err(EventError::ReservedType(kind.into()));
            }
        }
        Source::Internal => {
            if kind.is_empty() || kind.chars().any(char::is_control) {
                return Err(EventError::Type);
            }
        }
    }
    Ok(())
}

/// A committed event. Immutable; shared by every subscriber through `Arc<Event>`.
#[derive(Debug)]
pub struct Event {
    pub seq: u64,
    pub channel: Box<str>,
    pub kind: Option<Box<str>>,
    pub time_ms: u64,
    envelope: Bytes,
    sse_frame: OnceLock<Bytes>,
    /// Without the `event:` line, for `typed=false` subscribers (only built for typed events).
    sse_untyped: OnceLock<Bytes>,
    /// The whole WebSocket text frame (header and payload); the payload alone is a slice of it.
    ws_frame: OnceLock<Bytes>,
    /// One more transport's frame (the Pusher protocol's), built once like the others. Typed
    /// as `Any` so this module need not know that transport.
    extension: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
}

impl Event {
    /// Builds the envelope for a new event. Called once per event, by the log's writer.
    pub fn encode(seq: u64, time_ms: u64, new: &NewEvent) -> Event {
        let mut out = Vec::with_capacity(96 + new.channel.len() + new.data.get().len());
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(seq.to_string().as_bytes());
        push_envelope_tail(&mut out, time_ms, new);
        Event::from_parts(
            seq,
            new.channel.as_str().into(),
            new.kind.as_deref().map(Into::into),
            time_ms,
            Bytes::from(out),
        )
    }

    /// Rebuilds an event from stored parts (the envelope is taken as is).
    pub fn from_parts(
        seq: u64,
        channel: Box<str>,
        kind: Option<Box<str>>,
        time_ms: u64,
        envelope: Bytes,
    ) -> Event {
        Event {
            seq,
            channel,
            kind,
            time_ms,
            envelope,
            sse_frame: OnceLock::new(),
            sse_untyped: OnceLock::new(),
            ws_frame: OnceLock::new(),
            extension: OnceLock::new(),
        }
    }

    /// The envelope JSON: byte-identical on every transport and in history.
    pub fn envelope(&self) -> &Bytes {
        &self.envelope
    }

    /// The complete SSE frame (`id`, `event`, `data`, blank line), built on first use and shared.
    pub fn sse_frame(&self) -> Bytes {
        self.sse_frame_ref(true).clone()
    }

    /// The SSE frame without an `event:` line: EventSource hands every such event to
    /// `onmessage`, where a typed one only reaches a listener for its exact type.
    pub fn sse_frame_untyped(&self) -> Bytes {
        self.sse_frame_ref(false).clone()
    }

    /// The SSE frame, typed (with its `event:` line) or not, borrowed.
    pub fn sse_frame_ref(&self, typed: bool) -> &Bytes {
        if typed || self.kind.is_none() {
            return self
                .sse_frame
                .get_or_init(|| sse_frame(self.seq, self.kind.as_deref(), &self.envelope));
        }
        self.sse_untyped
            .get_or_init(|| sse_frame(self.seq, None, &self.envelope))
    }

    /// The extension frame, built by `build` the first time. `None` if another type was
    /// stored first (one transport owns the slot).
    pub fn extension<T: std::any::Any + Send + Sync>(
        &self,
        build: impl FnOnce(&Event) -> T,
    ) -> Option<&T> {
        self.extension
            .get_or_init(|| Box::new(build(self)))
            .downcast_ref()
    }

    /// The WebSocket text payload `{"op":"event",...envelope fields}`, built on first use and
    /// shared: cloning it is a refcount bump, so no subscriber re-encodes.
    pub fn ws_text(&self) -> Bytes {
        ws_payload(self.ws_frame())
    }

    /// The same payload as a complete server-to-client text frame (FIN, unmasked, no
    /// extension bits), which a WebSocket subscriber that is caught up gets written straight
    /// to its socket (`http/wire.rs`).
    pub fn ws_frame(&self) -> &Bytes {
        self.ws_frame.get_or_init(|| {
            // The envelope always starts with `{"seq":`; splice `"op":"event",` after `{`.
            ws_text_frame(&[b"{\"op\":\"event\",", &self.envelope[1..]])
        })
    }
}

/// A complete server-to-client WebSocket text frame (FIN, unmasked, no extension bits) of
/// `parts` joined: what the hub writes straight to a caught-up subscriber's socket.
pub fn ws_text_frame(parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 10);
    out.push(0x81); // FIN + text
    match len {
        0..=125 => out.push(len as u8),
        126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    Bytes::from(out)
}

/// The payload of a frame made by [`ws_text_frame`], shared (no copy).
pub fn ws_payload(frame: &Bytes) -> Bytes {
    frame.slice(ws_header_len(frame.len())..)
}

/// The header length of an unmasked frame `total` bytes long, header included.
fn ws_header_len(total: usize) -> usize {
    match total {
        ..=127 => 2,
        128..=65539 => 4,
        _ => 10,
    }
}

/// One SSE frame: `id:`, `event:` (when there is a name), one `data:` line, a blank line.
/// The one place SSE frames are written. No field may hold CR or LF (the door refuses them in
/// names, envelopes never hold them raw); should one get here anyway, it is written as a space,
/// so a field can never end its line and start a forged one (`id:`, `event:`).
pub fn sse_frame(id: u64, event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 48);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.to_string().as_bytes());
    if let Some(name) = event {
        out.extend_from_slice(b"\nevent: ");
        push_field(&mut out, name.as_bytes());
    }
    out.extend_from_slice(b"\ndata: ");
    push_field(&mut out, data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Appends one SSE field value, CR and LF written as spaces (debug builds fail loudly: a
/// line break here means some path skipped the door).
fn push_field(out: &mut Vec<u8>, value: &[u8]) {
    let breaks = value.iter().any(|&b| b == b'\n' || b == b'\r');
    debug_assert!(!breaks, "a line break reached an SSE field: {value:?}");
    let start = out.len();
    out.extend_from_slice(value);
    if breaks {
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
}

/// Appends the envelope after its leading `{"seq":N`, from `,"channel":` to the closing
/// brace. The Redis log's append script prepends the seq, which only Redis knows, to these
/// bytes; the embedded log writes both into one buffer.
pub fn push_envelope_tail(out: &mut Vec<u8>, time_ms: u64, new: &NewEvent) {
    out.extend_from_slice(b",\"channel\":");
    push_json_str(out, &new.channel);
    if let Some(kind) = &new.kind {
        out.extend_from_slice(b",\"type\":");
        push_json_str(out, kind);
    }
    out.extend_from_slice(b",\"data\":");
    push_single_line(out, new.data.get().as_bytes());
    out.extend_from_slice(b",\"time\":\"");
    out.extend_from_slice(format_time(time_ms).as_bytes());
    out.push(b'"');
    if let Some(id) = &new.id {
        out.extend_from_slice(b",\"id\":");
        push_json_str(out, id);
    }
    out.push(b'}');
}

/// Copies JSON text with every raw CR and LF turned into a space. In valid JSON those bytes
/// can only be insignificant whitespace (inside a string they must be escaped), so the value
/// is unchanged, and the envelope stays one line: one SSE `data:` line, one NDJSON line.
/// This is the only place data enters an envelope, so the invariant holds for every ingest.
fn push_single_line(out: &mut Vec<u8>, json: &[u8]) {
    let start = out.len();
    out.extend_from_slice(json);
    if json.iter().any(|&b| b == b'\n' || b == b'\r') {
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
}

/// Shared handle to a committed event.
pub type EventRef = Arc<Event>;

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("string serializes");
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, as the envelope's `time`.
pub fn format_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_match(pattern: &str, name: &str, expected: bool) {
        let p = Pattern::parse(pattern).unwrap();
        assert_eq!(p.matches(name), expected, "{pattern} ~ {name}");
    }

    #[test]
    fn pattern_matching() {
        for (p, n, e) in [
            ("*", "orders", true),
            ("user:*", "user:42", true),
            ("user:*", "user:", true),
            ("user:*", "users:1", false),
            ("*:42", "user:42", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("a*a", "a", false),
            ("chat/*/msgs", "chat/room-1/msgs", true),
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("**", "", true),
        ] {
            check_match(p, n, e);
        }
    }

    #[test]
    fn channel_names() {
        for ok in [
            "orders",
            "user:42",
            "chat/room-1",
            "a@b.c_d-e",
            &"x".repeat(200),
            &format!("pusher/{}/{}", "a".repeat(64), ":e".repeat(164)),
        ] {
            assert_eq!(validate_channel(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "has space",
            "star*",
            "ü",
            &"x".repeat(201),
            "a\nb",
            &format!("pusher/{}", "x".repeat(394)),
        ] {
            assert!(validate_channel(bad).is_err(), "{bad:?}");
        }
    }

    fn door(
        source: Source,
        channel: &str,
        kind: Option<&str>,
        id: Option<&str>,
    ) -> Result<(), EventError> {
        let data = RawValue::from_string("1".into()).unwrap();
        NewEvent::new(
            source,
            channel.into(),
            kind.map(Into::into),
            data,
            id.map(Into::into),
        )
        .map(|_| ())
    }

    #[test]
    fn each_door_owns_its_reserved_names() {
        use Source::*;
        assert_eq!(door(Publisher, "c", Some("a.b"), Some("k1")), Ok(()));
        assert_eq!(
            door(Publisher, "c", Some("webhook"), None),
            Err(EventError::ReservedType("webhook".into()))
        );
        assert_eq!(door(Hook, "c", Some("webhook"), Some("hook:1")), Ok(()));
        assert_eq!(door(Hook, "c", None, None), Err(EventError::Type));
        for id in ["pusher:1.1:ab:eve", "hook:x"] {
            assert_eq!(
                door(Publisher, "c", None, Some(id)).unwrap_err().code(),
                "reserved_id",
                "{id}"
            );
        }
        assert_eq!(
            door(
                Pusher,
                "pusher/a/x",
                Some("App\\Events\\Shipped"),
                Some("pusher::00")
            ),
            Ok(())
        );
        assert_eq!(
            door(Pusher, "pusher/a/x", Some("client-x\nid: 9"), None),
            Err(EventError::PusherName)
        );
        assert_eq!(
            door(Pusher, "pusher/a/x", Some("pusher:subscribe"), None)
                .unwrap_err()
                .code(),
            "reserved_type"
        );
        assert_eq!(
            door(Publisher, "c", Some("a b"), None),
            Err(EventError::Type)
        );
        assert_eq!(
            door(Publisher, "c", None, Some("a\rb")),
            Err(EventError::Id)
        );
        // Notice channels are Herald's own.
        assert!(door(Publisher, "$c", None, None).is_err());
        assert!(door(Pusher, "$c", None, None).is_err());
        assert_eq!(door(Internal, "$c", Some("member_added"), None), Ok(()));
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "line break"))]
    fn a_line_break_never_leaves_an_sse_field() {
        // Release builds write it as a space; debug builds stop at the path that skipped
        // the door.
        let frame = sse_frame(7, Some("a\nid: 99"), b"{}\r");
        assert_eq!(&frame[..], b"id: 7\nevent: a id: 99\ndata: {} \n\n");
    }

    #[test]
    fn envelope_is_canonical() {
        let new = NewEvent {
            channel: "orders".into(),
            kind: Some("order.created".into()),
            data: RawValue::from_string("{\"a\": 1}".into()).unwrap(),
            id: Some("k\"1".into()),
        };
        let ev = Event::encode(42, 1_764_072_000_123, &new);
        assert_eq!(
            std::str::from_utf8(ev.envelope()).unwrap(),
            r#"{"seq":42,"channel":"orders","type":"order.created","data":{"a": 1},"time":"2025-11-25T12:00:00.123Z","id":"k\"1"}"#
        );
        let sse = ev.sse_frame();
        assert!(sse.starts_with(b"id: 42\nevent: order.created\ndata: {\"seq\":42,"));
        assert!(sse.ends_with(b"}\n\n"));
        assert!(ev
            .ws_text()
            .starts_with(br#"{"op":"event","seq":42,"channel""#));
    }

    #[test]
    fn the_ws_frame_is_a_valid_text_frame_around_the_ws_text() {
        // Payload lengths on both sides of the 7-bit and 16-bit length encodings.
        let mut seen = std::collections::BTreeSet::new();
        for pad in (0..80).chain(65_420..65_500).chain([70_000]) {
            let new = NewEvent {
                channel: "c".into(),
                kind: None,
                data: RawValue::from_string(format!("\"{}\"", "x".repeat(pad))).unwrap(),
                id: None,
            };
            let ev = Event::encode(7, 0, &new);
            let (frame, text) = (ev.ws_frame().clone(), ev.ws_text());
            assert_eq!(frame[0], 0x81, "FIN and text, no extension bits");
            let (len, header) = match frame[1] {
                126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
                127 => (
                    u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n => (n as usize, 2),
            };
            assert!(frame[1] & 0x80 == 0, "server frames are not masked");
            assert_eq!(len, text.len(), "pad {pad}");
            assert_eq!(&frame[header..], &text[..], "pad {pad}");
            let minimal = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            assert_eq!(
                header, minimal,
                "the shortest length encoding (RFC 6455 5.2)"
            );
            seen.insert(header);
        }
        assert_eq!(seen.len(), 3, "each length encoding was checked");
    }

    #[test]
    fn envelopes_never_hold_a_raw_line_break() {
        let new = NewEvent {
            channel: "x".into(),
            kind: None,
            data: RawValue::from_string("[1,\n\r\n2, {\"a\":\r\"b\\nc\"}]".into()).unwrap(),
            id: None,
        };
        let ev = Event::encode(1, 0, &new);
        assert!(!ev.envelope().iter().any(|&b| b == b'\n' || b == b'\r'));
        let v: serde_json::Value = serde_json::from_slice(ev.envelope()).unwrap();
        assert_eq!(v["data"], serde_json::json!([1, 2, {"a": "b\nc"}]));
    }

    #[test]
    fn filter_mixes_channels_and_patterns() {
        let f = Filter::parse(["orders", "user:*"]).unwrap();
        assert!(f.matches("orders") && f.matches("user:7"));
        assert!(!f.matches("order") && !f.matches("other"));
        assert!(Filter::parse(["bad name"]).is_err());
    }

    /// Reference matcher: the textbook recursive definition of `*` globbing.
    fn naive(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, _) => s.is_empty(),
            (Some(b'*'), _) => naive(&p[1..], s) || (!s.is_empty() && naive(p, &s[1..])),
            (Some(c), Some(d)) if c == d => naive(&p[1..], &s[1..]),
            _ => false,
        }
    }

    proptest::proptest! {
        #[test]
        fn channel_validation_is_the_documented_regex(s in "\\PC{0,210}") {
            let expected = (1..=if s.starts_with("pusher/") { 400 } else { 200 }).contains(&s.len())
                && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.:@/-".contains(&c));
            proptest::prop_assert_eq!(validate_channel(&s).is_ok(), expected);
        }

        #[test]
        fn pattern_matching_agrees_with_the_reference(p in "[ab:*]{1,8}", s in "[ab:]{0,10}") {
            let pattern = Pattern::parse(&p).unwrap();
            proptest::prop_assert_eq!(pattern.matches(&s), naive(p.as_bytes(), s.as_bytes()));
        }

        /// A grant that covers a requested pattern matches every channel the pattern can.
        #[test]
        fn pattern_cover_is_sound(g in "[ab:*]{1,6}", p in "[ab:*]{1,6}", fills in proptest::collection::vec("[ab:]{0,3}", 6)) {
            let grant = Pattern::parse(&g).unwrap();
            if grant.matches(&p) {
                let mut expansion = String::new();
                let mut i = 0;
                for c in p.chars() {
                    if c == '*' { expansion.push_str(&fills[i % fills.len()]); i += 1; } else { expansion.push(c); }
                }
                proptest::prop_assert!(grant.matches(&expansion), "{} covers {} but not {}", g, p, expansion);
            }
        }
    }
}
