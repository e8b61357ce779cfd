//! `POST /v1/tokens`: trades an API key (in the `Authorization` header) for a short-lived
//! session token. A browser must put its credential in an EventSource or WebSocket URL, and
//! URLs end up in logs, histories and proxies; an API key there would be a standing admin
//! credential, a session token expires within the hour and cannot manage anything (but, with
//! a `webhooks` claim, its consumer's own webhook endpoints).

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::api::read_json;
use super::{Admin, ApiError, AppState};
use crate::auth::{now_secs, Claims, WebhooksClaim, MAX_SESSION_SECS};
use crate::event::Pattern;

/// The default lifetime of a session token.
const DEFAULT_SESSION_SECS: u64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// Patterns the token may subscribe to (default: everything, or nothing for a webhook
    /// consumer's token).
    #[serde(default)]
    sub_channels: Option<Vec<String>>,
    /// Patterns it may publish to (default: none).
    #[serde(default)]
    pub_channels: Vec<String>,
    /// Patterns it may join as a presence member (needs `sub`; default: none).
    #[serde(default)]
    presence_channels: Vec<String>,
    /// What other presence members see about the holder (a JSON object).
    #[serde(default)]
    info: Option<serde_json::Map<String, serde_json::Value>>,
    /// Seconds until it expires, 1-3600 (default 300).
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    /// Makes it a webhook consumer's token (e.g. for the portal): `{"owner", "channels"}`.
    #[serde(default)]
    webhooks: Option<WebhooksClaim>,
}

pub async fn create(
    State(app): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: SessionRequest = read_json(
        &headers,
        body,
        16 * 1024,
        &app.config.limits,
        "invalid_json",
    )
    .await?;
    let sub_channels = req.sub_channels.unwrap_or_else(|| match req.webhooks {
        Some(_) => Vec::new(),
        None => vec!["*".into()],
    });
    if req.webhooks.as_ref().is_some_and(|w| w.owner.is_empty()) {
        return Err(ApiError::bad_request(
            "invalid_webhooks_claim",
            "webhooks.owner must name the consumer",
        ));
    }
    let scope = req.webhooks.iter().flat_map(|w| &w.channels);
    for name in sub_channels
        .iter()
        .chain(&req.pub_channels)
        .chain(&req.presence_channels)
        .chain(scope)
    {
        Pattern::parse(name)?;
    }
    let ttl = req.ttl_secs.unwrap_or(DEFAULT_SESSION_SECS);
    if !(1..=MAX_SESSION_SECS).contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_secs must be 1-{MAX_SESSION_SECS}"),
        ));
    }
    let exp = now_secs() + ttl;
    let claims = Claims {
        sub: req.sub,
        exp,
        nbf: None,
        sub_channels,
        pub_channels: req.pub_channels,
        presence_channels: req.presence_channels,
        info: req.info,
        webhooks: req.webhooks,
    };
    let token = app.auth.mint_session(&claims).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_api_keys",
            "session tokens are signed with a key derived from auth.api_keys; with none \
             configured (open mode) no token is needed",
        )
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"token": token, "exp": exp})),
    )
        .into_response())
}
