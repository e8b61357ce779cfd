//! Pusher Channels naming and signing, shared by the protocol (`http::pusher`) and the
//! webhook side (Pusher-format deliveries): channel kinds, the mapping between Pusher names
//! and Herald channels, the HMAC Pusher signs with, and the origin carried in event ids.

use hmac::Mac;

/// The Pusher webhook events an app may send.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
];

/// Longest Pusher channel name (Pusher's own limit).
pub const MAX_CHANNEL_LEN: usize = 164;

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
