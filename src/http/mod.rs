//! HTTP: the router, shared state, the one error shape, and request parsing shared by the
//! transports. Handlers go through the hub; nothing here touches the store.

pub mod api;
pub mod sse;
pub mod webhooks;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::event::NameError;
use crate::hub::Hub;
use crate::log::LogError;
use crate::webhook::Webhooks;

/// What every handler shares. Cloning is a few refcount bumps.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub webhooks: Arc<Webhooks>,
    pub config: Arc<Config>,
    /// Renders `/metrics`; None when another recorder owns the process (embedding).
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks upgraded WebSocket sessions so shutdown can wait for their close handshakes.
    pub tasks: TaskTracker,
}

/// Per-connection context, put in each request's extensions by the accept loop.
#[derive(Clone, Debug)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Cancelling it drops the TCP connection at once (used for slow SSE consumers, whose
    /// socket may be too full to take a graceful end).
    pub kill: CancellationToken,
}

/// Builds the router; tests and `serve` use the same one.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/v1/events", post(api::publish).get(api::history))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/webhooks/{id}/replay", post(webhooks::replay))
        .route("/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz));
    if state.config.server.ws_echo {
        router = router.route("/v1/ws/echo", get(ws::echo));
    }
    router.fallback(not_found).with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The one error shape: `{"error":{"code","message"}}` with a fitting status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.code == "body_too_large" {
            // The rest of the body was never read, so this connection cannot carry another
            // request; say so, or a pooling client would reuse it and fail.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            LogError::Storage(_) => {
                tracing::error!(error = %e, "log error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage",
                    "the event log failed; nothing was acknowledged",
                )
            }
        }
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> Self {
        let code = match e {
            NameError::Channel(_) => "invalid_channel",
            NameError::Pattern(_) => "invalid_channel",
        };
        Self::bad_request(code, e.to_string())
    }
}

/// Parses a query string where keys may repeat (`channel=a&channel=b`).
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_query", format!("malformed query string: {e}")))
}

/// Parses a cursor (a seq) given by a client.
pub fn parse_cursor(text: &str, what: &str) -> Result<u64, ApiError> {
    text.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_cursor",
            format!(
                "{what} must be a sequence number (a non-negative integer), got {:?}",
                truncate(text)
            ),
        )
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
