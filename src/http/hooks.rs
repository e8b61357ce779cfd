//! Incoming webhooks: `POST /v1/hooks/{channel}` turns any HTTP request into an event, so a
//! service that can only call a URL (GitHub, Stripe, any Standard Webhooks sender) feeds the
//! log like a publisher.
//!
//! The request is kept exactly: a JSON body is embedded byte for byte, any other body as text
//! or base64, so a subscriber can still verify the sender's signature over the original bytes.
//! Who may post: a `[[hooks]]` rule matching the channel (its signature scheme checked here,
//! before anything is written), or else any credential that may publish to the channel.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;
use serde_json::value::RawValue;
use sha2::Sha256;

use super::api::read_body;
use super::{ApiError, AppState, Connection};
use crate::auth::{AuthError, Principal};
use crate::config::{HookConfig, HookVerify};
use crate::event::{validate_channel, NewEvent, Pattern, MAX_NAME_LEN};

/// How far a signed timestamp may be from now (both Stripe and Standard Webhooks use 5 min).
const TOLERANCE_SECS: u64 = 300;

/// Headers never copied into the event: they carry credentials meant for Herald, not for
/// every subscriber of the channel.
const PRIVATE_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

#[derive(Debug, thiserror::Error)]
#[error("hooks rule {index}: {message}")]
pub struct HookConfigError {
    index: usize,
    message: String,
}

/// The `[[hooks]]` rules, compiled.
#[derive(Default)]
pub struct HookRules(Vec<Rule>);

struct Rule {
    patterns: Vec<Pattern>,
    verify: HookVerify,
    key: Vec<u8>,
}

impl HookRules {
    pub fn from_config(rules: &[HookConfig]) -> Result<HookRules, HookConfigError> {
        let mut out = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let err = |message: String| HookConfigError { index, message };
            if rule.channels.is_empty() {
                return Err(err(
                    "channels must name at least one channel or pattern".into()
                ));
            }
            let patterns = rule
                .channels
                .iter()
                .map(|c| Pattern::parse(c).map_err(|e| err(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let key = match rule.verify {
                HookVerify::None => Vec::new(),
                HookVerify::Github | HookVerify::Stripe if rule.secret.is_empty() => {
                    return Err(err("a secret is needed to verify signatures".into()))
                }
                HookVerify::Github | HookVerify::Stripe => rule.secret.as_bytes().to_vec(),
                HookVerify::Standard => rule
                    .secret
                    .strip_prefix("whsec_")
                    .and_then(|b| STANDARD.decode(b).ok())
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| err("a standard secret is \"whsec_\" + base64".into()))?,
            };
            out.push(Rule {
                patterns,
                verify: rule.verify,
                key,
            });
        }
        Ok(HookRules(out))
    }

    fn rule_for(&self, channel: &str) -> Option<&Rule> {
        self.0
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(channel)))
    }
}

/// Why a signature was refused (the 401's message).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsigned(&'static str);

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length")
}

fn fresh(timestamp: &str, now: u64) -> Result<(), Unsigned> {
    let t: u64 = timestamp
        .parse()
        .map_err(|_| Unsigned("the signature timestamp is not a number"))?;
    if t.abs_diff(now) > TOLERANCE_SECS {
        return Err(Unsigned(
            "the signature timestamp is more than 5 minutes off",
        ));
    }
    Ok(())
}

/// Most signatures one request may offer: senders list one or two (two while a secret is
/// rotated). More is not a sender but someone making each request cost many MACs.
const MAX_SIGNATURES: usize = 4;

/// A request whose signature headers are well formed and fresh, ready to check against its
/// body. Split from the body check so a stale or malformed request is refused before its
/// body is read.
struct Signed {
    /// What the MAC covers before the body (`t.` for Stripe, `id.ts.` for Standard Webhooks).
    prefix: Vec<u8>,
    /// Candidate MACs: each exactly 32 bytes, at most [`MAX_SIGNATURES`].
    candidates: Vec<[u8; 32]>,
    /// The sender's delivery id where the signature covers it (Standard Webhooks).
    signed_id: Option<String>,
}

impl Signed {
    /// One MAC over the body, then constant-time comparisons with each candidate.
    fn verify(&self, key: &[u8], body: &[u8]) -> Result<[u8; 32], Unsigned> {
        let mut mac = hmac(key);
        mac.update(&self.prefix);
        mac.update(body);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        let mut found = false;
        for candidate in &self.candidates {
            found |= constant_time_eq(candidate, &expected);
        }
        if found {
            Ok(expected)
        } else {
            Err(Unsigned("the signature does not match"))
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Collects well-formed candidates, refusing a request that offers too many.
fn candidates<'a>(
    values: impl Iterator<Item = &'a str>,
    decode: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<[u8; 32]>, Unsigned> {
    let mut out = Vec::new();
    for value in values {
        if out.len() == MAX_SIGNATURES {
            return Err(Unsigned("too many signatures"));
        }
        if let Some(sig) = decode(value).and_then(|s| <[u8; 32]>::try_from(s).ok()) {
            out.push(sig);
        }
    }
    if out.is_empty() {
        return Err(Unsigned("no well-formed signature"));
    }
    Ok(out)
}

impl Rule {
    /// Checks what can be checked from the headers alone: the signature is present and well
    /// formed, and its timestamp is fresh.
    fn precheck(&self, headers: &HeaderMap, now: u64) -> Result<Option<Signed>, Unsigned> {
        match self.verify {
            HookVerify::None => Ok(None),
            HookVerify::Github => {
                let sig = header(headers, "x-hub-signature-256")
                    .ok_or(Unsigned("missing X-Hub-Signature-256"))?;
                let candidates = candidates(std::iter::once(sig), |s| {
                    s.strip_prefix("sha256=").and_then(|h| hex::decode(h).ok())
                })
                .map_err(|_| Unsigned("X-Hub-Signature-256 is not sha256=<64 hex digits>"))?;
                Ok(Some(Signed {
                    prefix: Vec::new(),
                    candidates,
                    signed_id: None,
                }))
            }
            HookVerify::Stripe => {
                let value = header(headers, "stripe-signature")
                    .ok_or(Unsigned("missing Stripe-Signature"))?;
                let parts = || value.split(',').filter_map(|p| p.trim().split_once('='));
                let t = parts()
                    .find(|(k, _)| *k == "t")
                    .map(|(_, v)| v)
                    .ok_or(Unsigned("Stripe-Signature has no t="))?;
                fresh(t, now)?;
                let candidates =
                    candidates(parts().filter(|(k, _)| *k == "v1").map(|(_, v)| v), |h| {
                        hex::decode(h).ok()
                    })?;
                Ok(Some(Signed {
                    prefix: format!("{t}.").into_bytes(),
                    candidates,
                    signed_id: None,
                }))
            }
            HookVerify::Standard => {
                let id = header(headers, "webhook-id").ok_or(Unsigned("missing webhook-id"))?;
                let ts = header(headers, "webhook-timestamp")
                    .ok_or(Unsigned("missing webhook-timestamp"))?;
                let sigs = header(headers, "webhook-signature")
                    .ok_or(Unsigned("missing webhook-signature"))?;
                fresh(ts, now)?;
                let candidates =
                    candidates(sigs.split(' ').filter_map(|s| s.strip_prefix("v1,")), |b| {
                        STANDARD.decode(b).ok()
                    })?;
                Ok(Some(Signed {
                    prefix: format!("{id}.{ts}.").into_bytes(),
                    candidates,
                    signed_id: Some(id.to_string()),
                }))
            }
        }
    }

    /// Checks the sender's signature over the exact body (for tests and callers that have
    /// both at once).
    #[cfg(test)]
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), Unsigned> {
        match self.precheck(headers, now)? {
            None => Ok(()),
            Some(signed) => signed.verify(&self.key, body).map(|_| ()),
        }
    }

    /// What deduplicates a redelivery of the same request, from signed material only: an
    /// unsigned delivery id (GitHub's) could be changed by anyone replaying a request they
    /// saw, so GitHub deliveries are keyed by their signature, which only a new body changes.
    fn delivery_id(&self, signed: &Signed, mac: &[u8; 32], body: &[u8]) -> Option<String> {
        match self.verify {
            HookVerify::Github => Some(format!("sha256={}", hex::encode(mac))),
            HookVerify::Standard => signed.signed_id.clone(),
            HookVerify::Stripe => serde_json::from_slice::<serde_json::Value>(body)
                .ok()?
                .get("id")?
                .as_str()
                .map(str::to_string),
            HookVerify::None => None,
        }
    }
}

/// The captured request as event data:
/// `{"method","path","query","headers":{..},"encoding":"json"|"text"|"base64","body"}`.
pub fn capture(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> String {
    let mut merged: BTreeMap<&str, String> = BTreeMap::new();
    for (name, value) in headers {
        if PRIVATE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        merged
            .entry(name.as_str())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let head = json!({
        "method": method.as_str(),
        "path": uri.path(),
        "query": uri.query().unwrap_or(""),
        "headers": merged,
    })
    .to_string();
    let (encoding, encoded) = encode_body(body);
    // `head` is an object: splice the encoding and body in before its closing brace, so a
    // JSON body stays the exact bytes it came as.
    let mut out = String::with_capacity(head.len() + encoded.len() + 32);
    out.push_str(&head[..head.len() - 1]);
    out.push_str(",\"encoding\":\"");
    out.push_str(encoding);
    out.push_str("\",\"body\":");
    out.push_str(&encoded);
    out.push('}');
    out
}

/// A captured request, restored: what `herald forward` replays.
#[derive(Debug, PartialEq, Eq)]
pub struct Restored {
    pub method: String,
    pub query: String,
    /// Without hop-by-hop and length headers (the replaying client sets its own).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The inverse of [`capture`], from an event's `data`.
pub fn restore(data: &str) -> Result<Restored, String> {
    #[derive(serde::Deserialize)]
    struct Captured<'a> {
        method: String,
        #[serde(default)]
        query: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        encoding: String,
        #[serde(borrow)]
        body: &'a RawValue,
    }
    let c: Captured =
        serde_json::from_str(data).map_err(|e| format!("not a captured request: {e}"))?;
    let body = match c.encoding.as_str() {
        "json" => c.body.get().as_bytes().to_vec(),
        "text" => serde_json::from_str::<String>(c.body.get())
            .map_err(|e| e.to_string())?
            .into_bytes(),
        "base64" => {
            let text: String = serde_json::from_str(c.body.get()).map_err(|e| e.to_string())?;
            STANDARD.decode(text).map_err(|e| e.to_string())?
        }
        other => return Err(format!("unknown body encoding {other:?}")),
    };
    const HOP: [&str; 8] = [
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
    ];
    // Credentials are never replayed, whatever the event says: capture leaves them out, so
    // one present here was put there by someone else.
    let headers = c
        .headers
        .into_iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !HOP.contains(&k.as_str()) && !PRIVATE_HEADERS.contains(&k.as_str())
        })
        .collect();
    Ok(Restored {
        method: c.method,
        query: c.query,
        headers,
        body,
    })
}

/// `json` only when the body is one JSON value with nothing around it (surrounding
/// whitespace would be lost by embedding) and on one line (an envelope never holds a raw CR
/// or LF, so a pretty-printed body's line breaks would become spaces and its signature would
/// no longer verify); `text` for other UTF-8; `base64` for the rest.
fn encode_body(body: &[u8]) -> (&'static str, String) {
    let one_line = !body.iter().any(|&b| b == b'\n' || b == b'\r');
    if let Ok(raw) = serde_json::from_slice::<&RawValue>(body) {
        if raw.get().len() == body.len() && one_line {
            return ("json", raw.get().to_string());
        }
    }
    match std::str::from_utf8(body) {
        Ok(text) => (
            "text",
            serde_json::to_string(text).expect("a string serializes"),
        ),
        Err(_) => ("base64", format!("\"{}\"", STANDARD.encode(body))),
    }
}

/// `POST /v1/hooks/{channel}` -> `202 {"seq":N}` once the captured request is durable.
pub async fn receive(
    State(app): State<AppState>,
    Extension(conn): Extension<Connection>,
    Path(channel): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_channel(&channel)?;
    let rule = app.hooks.rule_for(&channel);
    // Without a rule, the usual publish credentials; checked before the body is read.
    let principal = match rule {
        Some(_) => Principal::Anonymous,
        None => {
            let principal = app.principal(&headers, None, crate::auth::Via::Write)?;
            if matches!(principal, Principal::Anonymous) {
                return Err(AuthError::Missing.into());
            }
            app.auth.check_publish(&principal, &channel)?;
            principal
        }
    };
    let limits = &app.config.limits;
    let unsigned =
        |Unsigned(why)| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", why);
    // Headers first: a stale or malformed signature is refused before the body is read.
    let signed = match rule {
        Some(rule) => rule
            .precheck(&headers, crate::event::now_ms() / 1000)
            .map_err(unsigned)?,
        None => None,
    };
    // The captured request must fit in one event, so no body larger than that is read.
    let body = read_body(
        body,
        limits.max_body_bytes.min(limits.max_event_bytes),
        limits,
    )
    .await?;
    let mut id = None;
    if let (Some(rule), Some(signed)) = (rule, &signed) {
        let mac = signed.verify(&rule.key, &body).map_err(unsigned)?;
        id = rule
            .delivery_id(signed, &mac, &body)
            .map(|d| format!("hook:{d}"))
            .filter(|d| d.len() <= MAX_NAME_LEN && !d.chars().any(char::is_control));
    }
    let data = capture(&method, &uri, &headers, &body);
    if data.len() > limits.max_event_bytes {
        return Err(ApiError::too_large(
            "event_too_large",
            format!(
                "the captured request is {} bytes as event data; limits.max_event_bytes is {}",
                data.len(),
                limits.max_event_bytes
            ),
        ));
    }
    app.take_publish_budget(&principal, conn.peer.ip(), 1)?;
    let event = NewEvent {
        channel,
        kind: Some(super::api::HOOK_TYPE.into()),
        data: RawValue::from_string(data).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?,
        id,
    };
    let appended = app.hub.publish(vec![event]).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"seq": appended[0].seq})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verify: HookVerify, secret: &str) -> Rule {
        HookRules::from_config(&[HookConfig {
            channels: vec!["*".into()],
            verify,
            secret: secret.into(),
        }])
        .unwrap()
        .0
        .remove(0)
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_signatures() {
        // From GitHub's docs: secret "It's a Secret to Everybody", payload "Hello, World!".
        let r = rule(HookVerify::Github, "It's a Secret to Everybody");
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = headers(&[("x-hub-signature-256", good.into())]);
        assert_eq!(r.verify(&h, b"Hello, World!", 0), Ok(()));
        assert!(r.verify(&h, b"Hello, World?", 0).is_err());
        assert!(r.verify(&HeaderMap::new(), b"Hello, World!", 0).is_err());
    }

    #[test]
    fn stripe_signatures_and_their_age() {
        let r = rule(HookVerify::Stripe, "whsec_test");
        let mut mac = hmac(b"whsec_test");
        mac.update(b"1700000000.{\"id\":\"evt_1\"}");
        let sig = hex::encode(mac.finalize().into_bytes());
        let h = headers(&[("stripe-signature", format!("t=1700000000,v1=00ff,v1={sig}"))]);
        let body = br#"{"id":"evt_1"}"#;
        assert_eq!(r.verify(&h, body, 1_700_000_100), Ok(()));
        assert!(r.verify(&h, body, 1_700_000_400).is_err(), "too old");
        let signed = r.precheck(&h, 1_700_000_100).unwrap().unwrap();
        let mac = signed.verify(&r.key, body).unwrap();
        assert_eq!(r.delivery_id(&signed, &mac, body).as_deref(), Some("evt_1"));
        // A flood of candidates is refused from the header alone, before any MAC.
        let many = format!("t=1700000000{}", ",v1=".repeat(4000));
        let h = headers(&[("stripe-signature", many)]);
        assert!(r.precheck(&h, 1_700_000_100).is_err());
    }

    #[test]
    fn standard_signatures_match_our_own_signer() {
        let secret = crate::webhook::sign::Secret::generate();
        let r = rule(HookVerify::Standard, secret.as_str());
        let body = b"{\"a\":1}";
        let sig = secret.sign("msg_1", 1_700_000_000, body);
        let h = headers(&[
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", "1700000000".into()),
            ("webhook-signature", format!("v1,bm9wZQ== {sig}")),
        ]);
        assert_eq!(r.verify(&h, body, 1_700_000_010), Ok(()));
        assert!(r.verify(&h, b"{\"a\":2}", 1_700_000_010).is_err());
    }

    #[test]
    fn bodies_keep_their_exact_bytes() {
        let get = |body: &[u8]| {
            let data = capture(
                &Method::POST,
                &"/v1/hooks/x?a=1".parse().unwrap(),
                &HeaderMap::new(),
                body,
            );
            serde_json::from_str::<serde_json::Value>(&data).unwrap()
        };
        let v = get(br#"{"b": [1, 2.50]}"#);
        assert_eq!(
            (v["encoding"].as_str(), v["query"].as_str()),
            (Some("json"), Some("a=1"))
        );
        let data = capture(
            &Method::POST,
            &"/h".parse().unwrap(),
            &HeaderMap::new(),
            br#"{"b": [1, 2.50]}"#,
        );
        assert!(data.ends_with(r#""body":{"b": [1, 2.50]}}"#), "{data}");
        // Valid JSON with a trailing newline is kept as text: embedding would lose the newline.
        assert_eq!(get(b"{\"a\":1}\n")["body"], "{\"a\":1}\n");
        // Pretty-printed JSON too: its line breaks cannot go into an envelope.
        let pretty = b"{\r\n  \"a\": [\n    1\n  ]\n}";
        let v = get(pretty);
        assert_eq!(v["encoding"], "text");
        assert_eq!(v["body"].as_str().unwrap().as_bytes(), pretty);
        assert_eq!(get(b"a=1&b=2")["encoding"], "text");
        let v = get(&[0xff, 0x00, 0x10]);
        assert_eq!(v["encoding"], "base64");
        assert_eq!(
            STANDARD.decode(v["body"].as_str().unwrap()).unwrap(),
            [0xff, 0x00, 0x10]
        );
        assert_eq!(get(b"")["encoding"], "text");
    }

    #[test]
    fn restore_gives_back_the_captured_request() {
        let h = headers(&[
            ("x-hub-signature-256", "sha256=00".into()),
            ("host", "example.com".into()),
            ("content-length", "3".into()),
        ]);
        let uri: Uri = "/v1/hooks/x?a=1".parse().unwrap();
        for body in [&b"{\"k\": 1}"[..], b"plain text", &[0, 255, 7]] {
            let r = restore(&capture(&Method::PUT, &uri, &h, body)).unwrap();
            assert_eq!(r.body, body);
            assert_eq!((r.method.as_str(), r.query.as_str()), ("PUT", "a=1"));
            assert_eq!(
                r.headers,
                vec![("x-hub-signature-256".to_string(), "sha256=00".to_string())]
            );
        }
        assert!(restore("{\"seq\":1}").is_err());
    }

    #[test]
    fn credentials_are_not_copied_into_the_event() {
        let h = headers(&[
            ("authorization", "Bearer k".into()),
            ("cookie", "herald_token=t".into()),
            ("x-custom", "1".into()),
        ]);
        let data = capture(&Method::POST, &"/h".parse().unwrap(), &h, b"");
        let v: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(v["headers"], json!({"x-custom": "1"}));
    }
}
