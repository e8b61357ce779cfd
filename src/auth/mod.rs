//! Who may do what: API keys (publishers and admins) and subscriber JWTs with channel scopes.
//!
//! Auth is on as soon as an API key or a JWT key is configured. Off, Herald is open, which
//! `server` allows only on loopback. Credentials come from `Authorization: Bearer`, the `token`
//! query parameter, or the `herald_token` cookie (EventSource cannot set headers).
//!
//! Where a credential came from matters. A browser attaches a cookie to any request, whoever's
//! page made it, and a URL ends up in logs and histories. So an API key counts only in the
//! `Authorization` header; the cookie counts only on reads (SSE, WebSocket upgrade, history),
//! where a forged request gains its sender nothing it can read. Browsers that hold an API key
//! trade it for a short-lived session token (`POST /v1/tokens`) to put in a URL.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

use crate::config::AuthConfig;
use crate::event::Pattern;

mod presence;
mod token;

use token::{load_public_keys, Verifier};
pub use token::{mint, mint_with_pem, now_secs, Claims, WebhooksClaim};

/// The furthest ahead an expiry is taken literally.
const MAX_TOKEN_HORIZON: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send an API key or token as `Authorization: Bearer`, `?token=` or the herald_token cookie")]
    Missing,
    #[error("invalid credentials: the key is unknown or the token does not verify")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("not allowed: {0}")]
    Forbidden(String),
    #[error("API keys are accepted only in the Authorization header; in a URL or cookie use a token (POST /v1/tokens or herald token)")]
    KeyOutsideHeader,
    /// The credential may not make its holder a presence member of this channel.
    #[error("not allowed to be present: {0}")]
    PresenceForbidden(String),
    /// Who the member is cannot be told (or the request contradicts the token).
    #[error("{0}")]
    NoIdentity(String),
}

/// A presence member's identity as the credential allows it: the user and what others see.
pub type MemberIdentity = (String, Option<Arc<serde_json::Value>>);

/// Where the request may carry its credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Unsafe methods: the `Authorization` header (or `?token=` for a token).
    Write,
    /// Reads: also the `herald_token` cookie.
    Read,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Header,
    Query,
    Cookie,
}

/// The `kid` of session tokens minted by `POST /v1/tokens`.
pub const SESSION_KID: &str = "herald-session";

/// Longest a session token may live: it is meant for a URL, which leaks into logs.
pub const MAX_SESSION_SECS: u64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth.jwt_public_key {path}: {reason}")]
    PublicKey { path: String, reason: String },
    #[error("auth.public_channels: {0}")]
    PublicChannels(String),
}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Auth is off (loopback only): everything is allowed.
    Open,
    /// An API key (its index in the configured list): publish, manage, subscribe to anything.
    Admin { key: usize },
    /// A subscriber token: what its claims grant, until `exp`.
    Token {
        sub: Option<String>,
        exp: u64,
        subscribe: Vec<Pattern>,
        publish: Vec<Pattern>,
        /// Channels the holder may be present in, as `sub`.
        presence: Vec<Pattern>,
        info: Option<Arc<serde_json::Value>>,
        /// A webhook consumer: may manage its owner's endpoints.
        consumer: Option<Arc<Consumer>>,
    },
    /// No credentials: public channels only.
    Anonymous,
}

/// Whose webhook endpoints a token may manage, and on which channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub owner: String,
    pub channels: Vec<Pattern>,
}

impl Consumer {
    /// Whether every channel `pattern` can match is one this consumer may use: some scope
    /// pattern matches `pattern` read as a literal name. Sound because a `*` in `pattern`
    /// can then only be absorbed by a `*` of the scope, which matches whatever the `*` stands
    /// for (and a name cannot contain `*`). Conservative: `a*` is not let in by `a*` + `b*`.
    pub fn covers(&self, pattern: &str) -> bool {
        self.channels.iter().any(|scope| scope.matches(pattern))
    }
}

/// What a credential may do with webhook endpoints.
#[derive(Debug, Clone)]
pub enum WebhookAccess {
    /// Every endpoint (an API key, or open mode).
    All,
    Consumer(Arc<Consumer>),
}

impl Principal {
    /// What rate limits are keyed by: the credential, or the client address without one.
    pub fn rate_key(&self, peer: std::net::IpAddr) -> String {
        match self {
            Principal::Admin { key } => format!("key:{key}"),
            Principal::Token { sub: Some(sub), .. } => format!("sub:{sub}"),
            _ => format!("ip:{peer}"),
        }
    }

    /// When this principal's access ends (tokens only). A far-future `exp` (up to u64::MAX,
    /// which would overflow time arithmetic) counts as a century from now.
    pub fn expires_at(&self) -> Option<SystemTime> {
        match self {
            Principal::Token { exp, .. } => {
                let limit = SystemTime::now() + MAX_TOKEN_HORIZON;
                let at = UNIX_EPOCH
                    .checked_add(Duration::from_secs(*exp))
                    .unwrap_or(limit);
                Some(at.min(limit))
            }
            _ => None,
        }
    }
}

pub struct Auth {
    api_keys: Vec<Vec<u8>>,
    /// Signs session tokens; derived from the first API key, so every node of a cluster (same
    /// config) agrees on it and changing the keys revokes the sessions.
    session_key: Option<Vec<u8>>,
    verifier: Option<Verifier>,
    public: Vec<Pattern>,
}

impl Auth {
    pub fn from_config(config: &AuthConfig) -> Result<Auth, AuthSetupError> {
        let mut keys = Vec::new();
        if !config.jwt_secret.is_empty() {
            keys.push((
                None,
                DecodingKey::from_secret(config.jwt_secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        if !config.jwt_public_key.is_empty() {
            keys.extend(load_public_keys(&config.jwt_public_key)?);
        }
        let session_key = config.api_keys.iter().find(|k| !k.is_empty()).map(|k| {
            use hmac::Mac;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(k.as_bytes())
                .expect("HMAC takes any key length");
            mac.update(b"herald session tokens v1");
            mac.finalize().into_bytes().to_vec()
        });
        if let Some(key) = &session_key {
            keys.push((
                Some(SESSION_KID.to_string()),
                DecodingKey::from_secret(key),
                Algorithm::HS256,
            ));
        }
        let public = config
            .public_channels
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| AuthSetupError::PublicChannels(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Auth {
            api_keys: config
                .api_keys
                .iter()
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
            verifier: (!keys.is_empty()).then_some(Verifier { keys }),
            session_key,
            public,
        })
    }

    /// Mints a session token (`POST /v1/tokens`); None without API keys.
    pub fn mint_session(&self, claims: &Claims) -> Option<String> {
        let key = self.session_key.as_ref()?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(SESSION_KID.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key)).ok()
    }

    /// Auth is off: no key of any kind is configured.
    pub fn is_open(&self) -> bool {
        self.api_keys.is_empty() && self.verifier.is_none()
    }

    /// Identifies the caller from a bearer token, the `token` query parameter or (on reads)
    /// the cookie.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        via: Via,
    ) -> Result<Principal, AuthError> {
        if self.is_open() {
            return Ok(Principal::Open);
        }
        let Some((credential, source)) = credential(headers, query_token, via) else {
            return Ok(Principal::Anonymous);
        };
        // Compare against every key, so timing says nothing about which one matched.
        let mut found = None;
        for (i, k) in self.api_keys.iter().enumerate() {
            if constant_time_eq(k, credential.as_bytes()) {
                found = Some(i);
            }
        }
        if let Some(key) = found {
            if source != Source::Header {
                return Err(AuthError::KeyOutsideHeader);
            }
            return Ok(Principal::Admin { key });
        }
        match &self.verifier {
            Some(v) => v.verify(&credential),
            None => Err(AuthError::Invalid),
        }
    }

    /// Publishing and webhook management need an API key (or a token granting the channel).
    /// Webhook management: admins everything, a token with a `webhooks` claim its owner's.
    pub fn webhook_access(&self, p: &Principal) -> Result<WebhookAccess, AuthError> {
        match p {
            Principal::Token {
                consumer: Some(c), ..
            } => Ok(WebhookAccess::Consumer(c.clone())),
            _ => self.require_admin(p).map(|()| WebhookAccess::All),
        }
    }

    pub fn require_admin(&self, p: &Principal) -> Result<(), AuthError> {
        match p {
            Principal::Open | Principal::Admin { .. } => Ok(()),
            Principal::Anonymous => Err(AuthError::Missing),
            Principal::Token { .. } => Err(AuthError::Forbidden("this needs an API key".into())),
        }
    }

    pub fn check_publish(&self, p: &Principal, channel: &str) -> Result<(), AuthError> {
        match p {
            Principal::Open | Principal::Admin { .. } => Ok(()),
            Principal::Anonymous => Err(AuthError::Missing),
            Principal::Token { publish, .. } => {
                if publish.iter().any(|g| g.matches(channel)) {
                    Ok(())
                } else {
                    Err(AuthError::Forbidden(format!(
                        "the token may not publish to {channel:?}"
                    )))
                }
            }
        }
    }

    /// May `p` subscribe to (or read history of) `name`, a channel or a pattern? A pattern is
    /// allowed only if a granted pattern covers every channel it could match.
    pub fn check_subscribe(&self, p: &Principal, name: &str) -> Result<(), AuthError> {
        let covered = |grants: &[Pattern]| grants.iter().any(|g| covers(g, name));
        match p {
            Principal::Open | Principal::Admin { .. } => Ok(()),
            _ if covered(&self.public) => Ok(()),
            Principal::Anonymous => Err(AuthError::Missing),
            Principal::Token { subscribe, .. } => {
                if covered(subscribe) {
                    Ok(())
                } else {
                    Err(AuthError::Forbidden(format!(
                        "the token may not subscribe to {name:?}"
                    )))
                }
            }
        }
    }
}

/// Does grant `g` cover every channel that `name` (a channel or a pattern) can match?
/// `g`'s literal characters can never match a `*` in `name` (channel names cannot hold one),
/// so if `g` matches `name` read literally, each `*` of `name` falls inside a `*` of `g`,
/// which matches whatever that `*` expands to. Sound, and exact for the usual `prefix*` grants.
pub fn covers(g: &Pattern, name: &str) -> bool {
    g.matches(name)
}

fn credential(
    headers: &HeaderMap,
    query_token: Option<&str>,
    via: Via,
) -> Option<(String, Source)> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(token) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some((token.trim().to_string(), Source::Header));
        }
    }
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Some((t.to_string(), Source::Query));
    }
    if via != Via::Read {
        return None;
    }
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("herald_token=").map(str::to_string))
        .map(|c| (c, Source::Cookie))
}

/// Compares without an early exit, so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[&str], secret: &str, public: &[&str]) -> Auth {
        Auth::from_config(&AuthConfig {
            api_keys: keys.iter().map(|s| s.to_string()).collect(),
            jwt_secret: secret.into(),
            public_channels: public.iter().map(|s| s.to_string()).collect(),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    fn claims(sub: &[&str], publ: &[&str], exp: u64) -> Claims {
        Claims {
            sub: Some("u1".into()),
            exp,
            nbf: None,
            sub_channels: sub.iter().map(|s| s.to_string()).collect(),
            pub_channels: publ.iter().map(|s| s.to_string()).collect(),
            presence_channels: Vec::new(),
            info: None,
            webhooks: None,
        }
    }

    #[test]
    fn a_consumer_scope_covers_only_what_it_can_match() {
        let consumer = Consumer {
            owner: "acme".into(),
            channels: vec![
                Pattern::parse("orders.acme.*").unwrap(),
                Pattern::parse("billing.acme").unwrap(),
            ],
        };
        for inside in [
            "orders.acme.eu",
            "orders.acme.*",
            "orders.acme.eu.*",
            "billing.acme",
        ] {
            assert!(consumer.covers(inside), "{inside}");
        }
        // A wildcard must fall under a wildcard of the scope, or it could name anything.
        for outside in [
            "orders.*",
            "*",
            "billing.*",
            "billing.acme*",
            "orders.acmex",
            "orders.beta.x",
        ] {
            assert!(!consumer.covers(outside), "{outside}");
        }
    }

    #[test]
    fn keys_tokens_and_scopes() {
        let a = auth(&["k1"], "s3cret", &["news"]);
        assert!(matches!(
            a.authenticate(&bearer("k1"), None, Via::Write),
            Ok(Principal::Admin { key: 0 })
        ));
        assert_eq!(
            a.authenticate(&bearer("k2"), None, Via::Write).unwrap_err(),
            AuthError::Invalid
        );
        assert!(matches!(
            a.authenticate(&HeaderMap::new(), None, Via::Write),
            Ok(Principal::Anonymous)
        ));
        let token = mint(
            "s3cret",
            &claims(&["user:1", "room:*"], &["room:1"], now_secs() + 60),
        )
        .unwrap();
        let p = a
            .authenticate(&HeaderMap::new(), Some(&token), Via::Write)
            .unwrap();
        assert!(a.check_subscribe(&p, "user:1").is_ok());
        assert!(a.check_subscribe(&p, "user:2").is_err());
        assert!(
            a.check_subscribe(&p, "user:*").is_err(),
            "a pattern wider than the grant"
        );
        assert!(a.check_subscribe(&p, "room:*").is_ok());
        assert!(a.check_subscribe(&p, "room:a*").is_ok());
        assert!(a.check_subscribe(&p, "news").is_ok(), "public channel");
        assert!(a.check_publish(&p, "room:1").is_ok());
        assert!(a.check_publish(&p, "room:2").is_err());
        assert!(a.require_admin(&p).is_err());
        let expired = mint("s3cret", &claims(&["*"], &[], now_secs() - 60)).unwrap();
        assert_eq!(
            a.authenticate(&bearer(&expired), None, Via::Write)
                .unwrap_err(),
            AuthError::Expired
        );
        let forged = mint("other", &claims(&["*"], &[], now_secs() + 60)).unwrap();
        assert_eq!(
            a.authenticate(&bearer(&forged), None, Via::Write)
                .unwrap_err(),
            AuthError::Invalid
        );
        let mut cookie = HeaderMap::new();
        cookie.insert(
            "cookie",
            format!("a=b; herald_token={token}").parse().unwrap(),
        );
        assert!(matches!(
            a.authenticate(&cookie, None, Via::Read),
            Ok(Principal::Token { .. })
        ));
        assert!(
            matches!(
                a.authenticate(&cookie, None, Via::Write),
                Ok(Principal::Anonymous)
            ),
            "no cookie on writes"
        );
        let mut key_cookie = HeaderMap::new();
        key_cookie.insert("cookie", "herald_token=k1".parse().unwrap());
        assert_eq!(
            a.authenticate(&key_cookie, None, Via::Read).unwrap_err(),
            AuthError::KeyOutsideHeader
        );
        assert_eq!(
            a.authenticate(&HeaderMap::new(), Some("k1"), Via::Read)
                .unwrap_err(),
            AuthError::KeyOutsideHeader
        );
        let session = a
            .mint_session(&claims(&["s:*"], &[], now_secs() + 60))
            .unwrap();
        let p = a
            .authenticate(&HeaderMap::new(), Some(&session), Via::Read)
            .unwrap();
        assert!(a.check_subscribe(&p, "s:1").is_ok() && a.check_subscribe(&p, "t").is_err());
        assert!(auth(&[], "", &[]).is_open());
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
