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
use super::{parse_cursor, query_pairs, Admin, ApiError, AppState};
use crate::event::format_time;
use crate::webhook::{AttemptStatus, CreateEndpoint, Endpoint, UpdateEndpoint, WebhookError};

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

fn view(e: &Endpoint, secret: bool) -> Value {
    let mut v = json!({
        "id": e.id,
        "url": e.url,
        "channels": e.channels,
        "types": e.types,
        "notifications": e.notifications,
        "description": e.description,
        "enabled": e.enabled,
        "ordered": e.ordered,
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
    _: Admin,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CreateEndpoint = json_body(&app, &headers, body).await?;
    let endpoint = app.webhooks.create(req).await?;
    Ok((StatusCode::CREATED, Json(view(&endpoint, true))).into_response())
}

pub async fn list(State(app): State<AppState>, _: Admin) -> Result<Json<Value>, ApiError> {
    let all: Vec<Value> = app
        .webhooks
        .list()
        .await?
        .iter()
        .map(|e| view(e, false))
        .collect();
    Ok(Json(json!({ "webhooks": all })))
}

pub async fn get(
    State(app): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let endpoint = app.webhooks.get(&id).await?;
    let mut v = view(&endpoint, false);
    v["pending"] = app.webhooks.pending(&id).await?.into();
    Ok(Json(v))
}

pub async fn update(
    State(app): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: UpdateEndpoint = json_body(&app, &headers, body).await?;
    Ok(Json(view(&app.webhooks.update(&id, req).await?, false)))
}

pub async fn delete(
    State(app): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.webhooks.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn rotate(
    State(app): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
    _: Admin,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: Replay = json_body(&app, &headers, body).await?;
    let (since, until) = app.webhooks.replay(&id, req.since).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replaying": {"since": since, "until": until}})),
    )
        .into_response())
}

const MAX_ATTEMPTS_PAGE: usize = 1000;

/// `GET /v1/webhooks/{id}/deliveries?status=S&after=N&limit=L`: the attempt log, oldest first.
pub async fn deliveries(
    State(app): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut after = 0;
    let mut limit = 100;
    let mut status = None;
    for (key, value) in query_pairs(query.as_deref())? {
        match key.as_str() {
            "after" => after = parse_cursor(&value, "after")?,
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_ATTEMPTS_PAGE).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!("limit must be 1-{MAX_ATTEMPTS_PAGE}"),
                        )
                    })?
            }
            "status" => {
                status = Some(AttemptStatus::parse(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_status",
                        "status must be delivered, retrying, failed or disabled",
                    )
                })?);
            }
            _ => {}
        }
    }
    let attempts = app.webhooks.attempts(&id, after, status, limit).await?;
    let next = attempts.last().map_or(after, |a| a.id);
    let list: Vec<Value> = attempts
        .into_iter()
        .map(|a| {
            json!({
                "id": a.id, "seq": a.seq, "attempt": a.attempt, "status": a.status,
                "status_code": a.status_code, "error": a.error, "duration_ms": a.duration_ms,
                "time": a.time, "next_attempt": a.next_attempt, "response_body": a.response_body,
            })
        })
        .collect();
    Ok(Json(json!({"deliveries": list, "next": next})))
}
