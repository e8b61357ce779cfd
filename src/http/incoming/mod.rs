//! Incoming webhooks: `POST /v1/hooks/{channel}` turns any HTTP request into an event, so a
//! service that can only call a URL (GitHub, Stripe, any Standard Webhooks sender) feeds the
//! log like a publisher.
//!
//! The request is kept exactly: a JSON body is embedded byte for byte, any other body as text
//! or base64, so a subscriber can still verify the sender's signature over the original bytes.
//! Who may post: a `[[hooks]]` rule matching the channel (its signature scheme checked here,
//! before anything is written), or else any credential that may publish to the channel.

//!
//! - `verify`: the signature schemes (github, stripe, standard), checked in two steps so a
//!   stale or malformed request is refused before its body is read;
//! - `capture`: the request as event data, and its inverse (what `herald forward` replays).

mod capture;
mod verify;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;
use serde_json::value::RawValue;

use super::api::read_body;
use super::{ApiError, AppState, Connection};
use crate::auth::{AuthError, Principal};
use crate::config::{HookConfig, HookVerify};
use crate::event::{
    validate_channel, NewEvent, Pattern, Source, HOOK_ID_PREFIX, HOOK_TYPE, MAX_NAME_LEN,
};
pub use capture::{capture, restore};
use verify::Unsigned;

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
                HookVerify::Standard => crate::webhook::sign::Secret::parse(&rule.secret)
                    .map_err(|e| err(e.to_string()))?
                    .key()
                    .to_vec(),
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
            .map(|d| format!("{HOOK_ID_PREFIX}{d}"))
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
    let data = RawValue::from_string(data)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let event = NewEvent::new(Source::Hook, channel, Some(HOOK_TYPE.into()), data, id)?;
    let appended = app.hub.publish(vec![event], "hook").await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"seq": appended[0].seq})),
    )
        .into_response())
}

/// `POST /v1/events/{seq}/replay` (API key): stores a captured request again, byte for byte,
/// as a new event on its channel, so subscribers and `herald forward` get it once more (the
/// console's inspector calls it). Done here rather than by re-posting from the browser,
/// which would add its own headers and could not repeat a signature that has gone stale.
pub async fn replay(
    _: super::Admin,
    State(app): State<AppState>,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event {} in the log", crate::event::excerpt(&seq)),
        )
    };
    let seq: u64 = seq.parse().map_err(|_| not_found())?;
    let event = app.hub.log().get(seq).await?.ok_or_else(not_found)?;
    if event.kind.as_deref() != Some(HOOK_TYPE) {
        return Err(ApiError::bad_request(
            "not_a_hook",
            format!("event {seq} was not captured by /v1/hooks; only those can be replayed"),
        ));
    }
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let envelope: Envelope = serde_json::from_slice(event.envelope())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let again = NewEvent::new(
        Source::Hook,
        event.channel.to_string(),
        Some(HOOK_TYPE.into()),
        envelope.data.to_owned(),
        None,
    )?;
    let appended = app.hub.publish(vec![again], "hook").await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"seq": appended[0].seq, "replayed": seq})),
    )
        .into_response())
}
