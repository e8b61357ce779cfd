//! The webhook endpoints API (`/v1/webhooks...`). Secrets are returned only when created or
//! rotated, never in reads or lists.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::read_json;
use super::{parse_cursor, query_pairs, ApiError, AppState, Via};
use crate::auth::WebhookAccess;
use crate::event::format_time;
use crate::webhook::{
    Attempt, AttemptStatus, CreateEndpoint, Endpoint, UpdateEndpoint, WebhookError,
};

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            WebhookError::Invalid(m) => ApiError::bad_request("invalid_webhook", m),
            WebhookError::Guard(g) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "forbidden_url",
                g.to_string(),
            ),
            WebhookError::Log(e) => e.into(),
            WebhookError::OwnerFull { .. } => {
                ApiError::new(StatusCode::CONFLICT, "endpoint_limit", e.to_string())
            }
            WebhookError::OwnerRate { retry_after, .. } => {
                let mut out = ApiError::rate_limited(retry_after);
                out.message = e.to_string();
                out
            }
            WebhookError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "webhook store unavailable");
                ApiError::unavailable("webhook_store_unavailable", format!("{e}; retry shortly"))
            }
            WebhookError::Store(_) | WebhookError::Recorded(_) => {
                tracing::error!(error = %e, "webhook store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "webhook_store",
                    "the webhook store failed (see the server log)",
                )
            }
        }
    }
}

/// Who is managing endpoints: an admin credential (all of them) or a consumer token (its
/// owner's, on channels within its scope). Decided before the body is read.
pub struct Manager(WebhookAccess);

impl axum::extract::FromRequestParts<AppState> for Manager {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppState,
    ) -> Result<Manager, ApiError> {
        let principal = app.principal(&parts.headers, None, Via::Write)?;
        Ok(Manager(app.auth.webhook_access(&principal)?))
    }
}

impl Manager {
    fn may_see(&self, e: &Endpoint) -> bool {
        match &self.0 {
            WebhookAccess::All => true,
            WebhookAccess::Consumer(c) => e.owner.as_deref() == Some(c.owner.as_str()),
        }
    }

    /// The endpoint, if this manager may touch it.
    async fn endpoint(&self, app: &AppState, id: &str) -> Result<Endpoint, ApiError> {
        let endpoint = app.webhooks.get(id).await?;
        if self.may_see(&endpoint) {
            return Ok(endpoint);
        }
        // As if it did not exist: another owner's endpoint ids are none of this token's
        // business (a 403 would confirm that one exists).
        Err(WebhookError::NotFound(id.to_string()).into())
    }

    /// Refuses channels outside a consumer's scope.
    fn check_channels(&self, channels: &[String]) -> Result<(), ApiError> {
        let WebhookAccess::Consumer(c) = &self.0 else {
            return Ok(());
        };
        match channels.iter().find(|ch| !c.covers(ch)) {
            None => Ok(()),
            Some(ch) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "channel_out_of_scope",
                format!(
                    "this token may not follow {:?}; its webhooks.channels are {:?}",
                    crate::event::excerpt(ch),
                    c.channels.iter().map(|p| p.as_str()).collect::<Vec<_>>()
                ),
            )),
        }
    }
}

fn view(e: &Endpoint, secret: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "owner": e.owner,
        "url": e.url,
        "channels": e.channels,
        "types": e.types,
        "notifications": e.notifications,
        "description": e.description,
        "enabled": e.enabled,
        "ordered": e.ordered,
        "rate_limit": e.rate_limit,
        "created": format_time(e.created_ms),
    });
    if let Some(reason) = &e.disabled_reason {
        v["disabled_reason"] = reason.clone().into();
    }
    if secret {
        v["secret"] = e.secret.clone().into();
    }
    v
}

async fn json_body<T: DeserializeOwned>(
    app: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    read_json(
        headers,
        body,
        64 * 1024,
        &app.config.limits,
        "invalid_webhook",
    )
    .await
}

pub async fn create(
    State(app): State<AppState>,
    manager: Manager,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut req: CreateEndpoint = json_body(&app, &headers, body).await?;
    if let WebhookAccess::Consumer(c) = &manager.0 {
        if req.owner.as_ref().is_some_and(|o| *o != c.owner) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_your_owner",
                "a consumer token creates endpoints for its own owner only",
            ));
        }
        req.owner = Some(c.owner.clone());
    }
    manager.check_channels(&req.channels)?;
    let endpoint = app.webhooks.create(req).await?;
    Ok((StatusCode::CREATED, Json(view(&endpoint, true))).into_response())
}

pub async fn list(State(app): State<AppState>, manager: Manager) -> Result<Json<Value>, ApiError> {
    let all: Vec<Value> = app
        .webhooks
        .list()
        .await?
        .iter()
        .filter(|e| manager.may_see(e))
        .map(|e| view(e, false))
        .collect();
    Ok(Json(json!({ "webhooks": all })))
}

pub async fn get(
    State(app): State<AppState>,
    manager: Manager,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = manager.endpoint(&app, &id).await?;
    let mut v = view(&endpoint, false);
    v["pending"] = app.webhooks.pending(&id).await?.into();
    Ok(Json(v))
}

pub async fn update(
    State(app): State<AppState>,
    manager: Manager,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    manager.endpoint(&app, &id).await?;
    let req: UpdateEndpoint = json_body(&app, &headers, body).await?;
    manager.check_channels(req.channels.as_deref().unwrap_or_default())?;
    Ok(Json(view(&app.webhooks.update(&id, req).await?, false)))
}

pub async fn delete(
    State(app): State<AppState>,
    manager: Manager,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    manager.endpoint(&app, &id).await?;
    app.webhooks.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn rotate(
    State(app): State<AppState>,
    manager: Manager,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    manager.endpoint(&app, &id).await?;
    let endpoint = app.webhooks.rotate(&id).await?;
    Ok(Json(view(&endpoint, true)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replay {
    since: u64,
}

pub async fn replay(
    State(app): State<AppState>,
    manager: Manager,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    manager.endpoint(&app, &id).await?;
    let req: Replay = json_body(&app, &headers, body).await?;
    let (since, until) = app.webhooks.replay(&id, req.since).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replaying": {"since": since, "until": until}})),
    )
        .into_response())
}

/// `GET /v1/webhooks/{id}/events/{seq}`: the event a delivery to this endpoint carried (its
/// envelope, as the body was sent), so the portal can show what an attempt was about; 404
/// for an event the endpoint does not take or the log no longer holds.
pub async fn delivered_event(
    State(app): State<AppState>,
    manager: Manager,
    Path((id, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // Parsed here, not by the extractor, so a bad seq gets the JSON error like any other.
    let seq: u64 = seq.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_seq",
            format!("{seq:?} is not a seq (a whole number)"),
        )
    })?;
    let endpoint = manager.endpoint(&app, &id).await?;
    match app.webhooks.delivered_event(endpoint, seq).await? {
        Some(event) => Ok((
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            event.envelope().clone(),
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event {seq} for this endpoint (not one it takes, or past retention)"),
        )),
    }
}

const MAX_ATTEMPTS_PAGE: usize = 1000;

/// `GET /v1/webhooks/{id}/deliveries?status=S&after=N&limit=L`: the attempt log, oldest first.
pub async fn deliveries(
    State(app): State<AppState>,
    manager: Manager,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    manager.endpoint(&app, &id).await?;
    let mut after = 0;
    let mut limit = 100;
    let mut status = None;
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "after" => after = parse_cursor(&value, "after")?,
            "limit" => limit = parse_limit(&value)?,
            "status" => status = Some(parse_status(&value)?),
            _ => {}
        }
    }
    let attempts = app.webhooks.attempts(&id, after, status, limit).await?;
    let next = attempts.last().map_or(after, |a| a.id);
    let list: Vec<Value> = attempts.iter().map(attempt_view).collect();
    Ok(Json(json!({"deliveries": list, "next": next})))
}

/// `GET /v1/webhooks/health`: each managed endpoint with its last attempt, failure streak,
/// queue depth and oldest pending age (the operator console's and the portal's overview).
pub async fn health(
    State(app): State<AppState>,
    manager: Manager,
) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for e in app.webhooks.list().await? {
        if !manager.may_see(&e) {
            continue;
        }
        let mut v =
            serde_json::to_value(app.webhooks.health(&e.id).await?).unwrap_or_else(|_| json!({}));
        v["url"] = e.url.as_str().into();
        v["description"] = e.description.as_str().into();
        v["owner"] = e.owner.clone().into();
        v["enabled"] = e.enabled.into();
        v["disabled_reason"] = e.disabled_reason.clone().into();
        v["failing_since"] = e.failing_since_ms.map(format_time).into();
        out.push(v);
    }
    Ok(Json(json!({ "data": out })))
}

/// `GET /v1/webhooks/deliveries?status=failed&limit=L`: the attempts of every endpoint the
/// caller manages (a consumer: its owner's), newest first, each with its `endpoint`;
/// `endpoint=ID` narrows it to one (the portal's newest-first list).
pub async fn deliveries_all(
    State(app): State<AppState>,
    manager: Manager,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut limit = 100;
    let mut status = None;
    let mut only = None;
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "limit" => limit = parse_limit(&value)?,
            "status" => status = Some(parse_status(&value)?),
            "endpoint" => only = Some(value),
            _ => {}
        }
    }
    // Each endpoint's newest `limit` (read back from the end of its attempt log, never the
    // whole log), merged newest first.
    let endpoints: Vec<Endpoint> = match &only {
        Some(id) => vec![manager.endpoint(&app, id).await?],
        None => app
            .webhooks
            .list()
            .await?
            .into_iter()
            .filter(|e| manager.may_see(e))
            .collect(),
    };
    let mut all: Vec<(String, Attempt)> = Vec::new();
    for e in endpoints {
        let newest = app.webhooks.attempts_newest(&e.id, status, limit).await?;
        all.extend(newest.into_iter().map(|a| (e.id.clone(), a)));
        all.sort_by(|x, y| y.1.time_ms.cmp(&x.1.time_ms).then(y.1.id.cmp(&x.1.id)));
        all.truncate(limit);
    }
    let list: Vec<Value> = all
        .iter()
        .map(|(id, a)| {
            let mut v = attempt_view(a);
            v["endpoint"] = id.as_str().into();
            v
        })
        .collect();
    Ok(Json(json!({ "deliveries": list })))
}

fn parse_limit(value: &str) -> Result<usize, ApiError> {
    value
        .parse()
        .ok()
        .filter(|l| (1..=MAX_ATTEMPTS_PAGE).contains(l))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_limit",
                format!("limit must be 1-{MAX_ATTEMPTS_PAGE}"),
            )
        })
}

fn parse_status(value: &str) -> Result<AttemptStatus, ApiError> {
    AttemptStatus::parse(value).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_status",
            "status must be delivered, retrying, failed or disabled",
        )
    })
}

fn attempt_view(a: &Attempt) -> Value {
    json!({
        "id": a.id, "seq": a.seq, "attempt": a.attempt, "status": a.status,
        "status_code": a.status_code, "error": a.error, "duration_ms": a.duration_ms,
        "time": a.time, "next_attempt": a.next_attempt, "response_body": a.response_body,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TestEvent {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    data: Option<Value>,
}

/// `POST /v1/webhooks/{id}/test`: one synthetic event sent now; answers with the attempt
/// (status code, latency, response body), which the attempt log also keeps (seq 0).
pub async fn test(
    State(app): State<AppState>,
    manager: Manager,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    manager.endpoint(&app, &id).await?;
    let req: TestEvent = if headers.contains_key("content-type") {
        json_body(&app, &headers, body).await?
    } else {
        TestEvent::default()
    };
    let attempt = app.webhooks.send_test(&id, req.kind, req.data).await?;
    Ok(Json(attempt_view(&attempt)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recover {
    /// RFC 3339 time, or ms since the epoch.
    since: Value,
}

fn since_ms(req: &Recover) -> Result<u64, ApiError> {
    let parsed = match &req.since {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => humantime::parse_rfc3339_weak(s).ok().and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as u64)
        }),
        _ => None,
    };
    parsed.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_since",
            "since must be an RFC 3339 time (2026-11-26T10:00:00Z) or ms since the epoch",
        )
    })
}

/// `POST /v1/webhooks/{id}/recover {"since"}`: re-queues every event whose delivery failed
/// for good since then.
pub async fn recover(
    State(app): State<AppState>,
    manager: Manager,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    manager.endpoint(&app, &id).await?;
    let req: Recover = json_body(&app, &headers, body).await?;
    let n = app.webhooks.recover(&id, since_ms(&req)?).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"recovering": n}))).into_response())
}

/// `POST /v1/webhooks/recover {"since"}`: the same for every endpoint the caller manages (a
/// consumer: all of its owner's).
pub async fn recover_all(
    State(app): State<AppState>,
    manager: Manager,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: Recover = json_body(&app, &headers, body).await?;
    let since = since_ms(&req)?;
    let mut per_endpoint = serde_json::Map::new();
    let mut total = 0;
    for e in app.webhooks.list().await? {
        if !manager.may_see(&e) {
            continue;
        }
        let n = app.webhooks.recover(&e.id, since).await?;
        total += n;
        per_endpoint.insert(e.id, n.into());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"recovering": total, "endpoints": per_endpoint})),
    )
        .into_response())
}
