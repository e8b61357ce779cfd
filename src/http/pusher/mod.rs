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

use hmac::Mac;

use crate::config::{PusherApp, PusherConfig};

pub mod api;
mod cache;
mod message;
pub mod socket;

pub use cache::LastEvents;

/// Longest Pusher channel name (Pusher's own limit).
pub const MAX_CHANNEL_LEN: usize = 164;

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

/// The Pusher webhook events an app may send.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

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

    pub fn all(&self) -> impl Iterator<Item = &Arc<PusherApp>> {
        self.by_id.values()
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

/// What kind of channel a Pusher name is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    Private,
    Presence,
    /// `private-encrypted-`: end-to-end encrypted by the clients; routed opaquely.
    Encrypted,
}

impl Kind {
    pub fn of(name: &str) -> Kind {
        let rest = name.strip_prefix("private-").unwrap_or(name);
        if name.starts_with("presence-") {
            Kind::Presence
        } else if rest.starts_with("encrypted-") && name.starts_with("private-") {
            Kind::Encrypted
        } else if name.starts_with("private-") {
            Kind::Private
        } else {
            Kind::Public
        }
    }

    pub fn needs_auth(self) -> bool {
        self != Kind::Public
    }
}

/// Cache channels (`cache-`, `private-cache-`, `private-encrypted-cache-`,
/// `presence-cache-`) send the last event to a new subscriber.
pub fn is_cache(name: &str) -> bool {
    [
        "cache-",
        "private-cache-",
        "private-encrypted-cache-",
        "presence-cache-",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

/// A valid Pusher channel name: 1-164 of `A-Z a-z 0-9 _ - = @ , . ;`.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b))
}

/// `pusher/{app}/{name}` with the three Pusher characters Herald names cannot hold written
/// as two characters each (`=` `:e`, `,` `:c`, `;` `:s`). `:` never occurs in a Pusher name,
/// so the mapping is one to one and [`pusher_channel`] undoes it. A Herald client subscribes
/// to (or publishes on) the mapped name to share the channel with Pusher clients.
pub fn herald_channel(app: &str, name: &str) -> String {
    let mut out = String::with_capacity(app.len() + name.len() + 8);
    out.push_str("pusher/");
    out.push_str(app);
    out.push('/');
    for c in name.chars() {
        match c {
            '=' => out.push_str(":e"),
            ',' => out.push_str(":c"),
            ';' => out.push_str(":s"),
            c => out.push(c),
        }
    }
    out
}

/// The Pusher name of a mapped Herald channel of `app`, if it is one.
pub fn pusher_channel(app: &str, channel: &str) -> Option<String> {
    let rest = channel
        .strip_prefix("pusher/")?
        .strip_prefix(app)?
        .strip_prefix('/')?;
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != ':' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'e' => '=',
            'c' => ',',
            's' => ';',
            _ => return None,
        });
    }
    Some(out)
}

/// Hex HMAC-SHA256 of `text` with the app secret: what Pusher signs everything with.
pub fn sign(secret: &str, text: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Compares a hex signature in constant time.
pub fn signature_ok(secret: &str, text: &str, given: &str) -> bool {
    let Ok(given) = hex::decode(given) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(text.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// The idempotency id that carries a Pusher event's origin: unique per event (so it never
/// deduplicates two events), naming the socket to skip and, for client events on presence
/// channels, the sender.
pub fn origin_id(socket: Option<&str>, user: Option<&str>) -> String {
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).expect("OS random source");
    let mut id = format!("pusher:{}:{}", socket.unwrap_or(""), hex::encode(nonce));
    if let Some(user) = user {
        id.push(':');
        id.push_str(user);
    }
    id
}

/// (socket to skip, sender) from an event id made by [`origin_id`].
pub fn parse_origin(id: &str) -> (Option<&str>, Option<&str>) {
    let Some(rest) = id.strip_prefix("pusher:") else {
        return (None, None);
    };
    let mut parts = rest.splitn(3, ':');
    let socket = parts.next().filter(|s| !s.is_empty());
    let _nonce = parts.next();
    (socket, parts.next())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every valid Pusher name maps to a valid Herald name (when short enough) and back.
        #[test]
        fn channel_mapping_round_trips(name in "[A-Za-z0-9_=@,.;-]{1,60}") {
            let mapped = herald_channel("app-1", &name);
            proptest::prop_assert!(crate::event::validate_channel(&mapped).is_ok(), "{}", mapped);
            proptest::prop_assert_eq!(pusher_channel("app-1", &mapped), Some(name.clone()));
            proptest::prop_assert_eq!(pusher_channel("app-2", &mapped), None);
        }
    }

    #[test]
    fn kinds_and_origins() {
        assert_eq!(Kind::of("presence-room"), Kind::Presence);
        assert_eq!(Kind::of("private-encrypted-x"), Kind::Encrypted);
        assert_eq!(Kind::of("private-x"), Kind::Private);
        assert_eq!(Kind::of("encrypted-x"), Kind::Public);
        assert!(is_cache("presence-cache-x") && !is_cache("x-cache-"));
        let id = origin_id(Some("12.34"), Some("u:1"));
        assert_eq!(parse_origin(&id), (Some("12.34"), Some("u:1")));
        assert_eq!(parse_origin(&origin_id(None, None)), (None, None));
        assert_eq!(parse_origin("k1"), (None, None));
    }

    #[test]
    fn signatures_match_pushers_examples() {
        // From Pusher's docs (auth signature of a private channel).
        let sig = sign("7ad3773142a6692b25b8", "1234.1234:private-foobar");
        assert_eq!(
            sig,
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(signature_ok(
            "7ad3773142a6692b25b8",
            "1234.1234:private-foobar",
            &sig
        ));
        assert!(!signature_ok("other", "1234.1234:private-foobar", &sig));
    }
}
