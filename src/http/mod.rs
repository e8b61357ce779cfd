//! HTTP: the router, shared state, the one error shape, and request parsing shared by the
//! transports. Handlers go through the hub; nothing here touches the store.

pub mod api;
pub mod client;
pub mod console;
pub mod incoming;
pub mod origin;
pub mod presence;
pub mod pusher;
mod request_id;
pub mod sse;
pub mod sse_direct;
pub mod tokens;
pub mod ui;
pub mod webhooks;
mod wire;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, AuthError, Principal, Via};
use crate::config::Config;
use crate::event::NameError;
use crate::hub::Hub;
use crate::limits::RateLimiter;
use crate::log::LogError;
use crate::webhook::Webhooks;

/// What every handler shares, behind one `Arc`: axum clones the state for every extractor
/// of every request, and a dozen refcounts bumped and dropped per clone (on cache lines
/// every core shares) showed in the publish path's profile.
#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    pub fn new(app: App) -> AppState {
        AppState(Arc::new(app))
    }
}

impl std::ops::Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

pub struct App {
    pub hub: Arc<Hub>,
    pub presence: Arc<crate::presence::Presence>,
    /// Pusher protocol apps (none unless `[[pusher.apps]]` is configured).
    pub pusher: Arc<pusher::Apps>,
    pub webhooks: Arc<Webhooks>,
    pub auth: Arc<Auth>,
    /// Who may post incoming webhooks without an API key, and how they sign.
    pub hooks: Arc<incoming::HookRules>,
    /// Publish rate per credential (per client IP without one).
    pub publish_rate: Arc<RateLimiter>,
    pub config: Arc<Config>,
    /// Renders `/metrics`; None when another recorder owns the process (embedding).
    pub metrics: Option<PrometheusHandle>,
    /// The last minutes of the server's own counters, for the operator console.
    pub history: Arc<crate::stats::History>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks upgraded WebSocket sessions so shutdown can wait for their close handshakes.
    pub tasks: TaskTracker,
    /// How WebSocket connections are sized and compressed (`[websocket]`).
    pub ws: Arc<ws::socket::Settings>,
    /// Backend hooks (`[proxy]`), when any URL is set.
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
}

/// An extractor that admits only an admin credential (an API key in the `Authorization`
/// header, or open mode). First among a handler's arguments, it decides before anything
/// else is read: webhook management, minting session tokens.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &AppState,
    ) -> Result<Admin, ApiError> {
        let principal = app.principal(&parts.headers, None, Via::Write)?;
        app.auth.require_admin(&principal)?;
        Ok(Admin)
    }
}

/// Per-connection context, put in each request's extensions by the accept loop.
#[derive(Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// Cancelling it drops the TCP connection at once (used for slow SSE consumers, whose
    /// socket may be too full to take a graceful end).
    pub kill: CancellationToken,
    /// Holds the connection's slot in the limits for as long as any part of it lives (an
    /// upgraded WebSocket outlives the HTTP connection future).
    pub permit: Option<Arc<crate::limits::ConnectionPermit>>,
}

/// Builds the router; tests and `serve` use the same one.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/v1/events", post(api::publish).get(api::history))
        .route("/v1/sse", get(sse::stream))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/tokens", post(tokens::create))
        .route("/v1/client.js", get(client::js))
        .route("/v1/client.d.ts", get(client::dts))
        .route("/v1/presence", get(presence::members))
        .route("/v1/channels", get(presence::channels))
        .route("/app/{key}", get(pusher::socket::upgrade))
        .route("/apps/{id}/events", post(pusher::api::events))
        .route("/apps/{id}/batch_events", post(pusher::api::batch_events))
        .route("/apps/{id}/channels", get(pusher::api::channels))
        .route("/apps/{id}/channels/{name}", get(pusher::api::channel))
        .route("/apps/{id}/channels/{name}/users", get(pusher::api::users))
        .route(
            "/apps/{id}/users/{user}/terminate_connections",
            post(pusher::api::terminate),
        )
        // A wildcard: channel names may contain `/`.
        .route("/v1/hooks/{*channel}", post(incoming::receive))
        .route("/v1/events/{seq}/replay", post(incoming::replay))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/events/{seq}",
            get(webhooks::delivered_event),
        )
        .route("/v1/webhooks/{id}/replay", post(webhooks::replay))
        .route("/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate))
        .route("/v1/webhooks/{id}/test", post(webhooks::test))
        .route("/v1/webhooks/{id}/recover", post(webhooks::recover))
        .route("/v1/webhooks/recover", post(webhooks::recover_all))
        .route("/v1/webhooks/deliveries", get(webhooks::deliveries_all))
        .route("/v1/webhooks/health", get(webhooks::health))
        .route("/v1/stats", get(console::stats))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/console.js", get(ui::console_js))
        .route("/portal", get(ui::portal))
        .route("/ui/portal.js", get(ui::portal_js))
        .route("/ui/app.css", get(ui::app_css))
        .route("/favicon.ico", get(ui::favicon));
    if state.config.server.ws_echo {
        router = router.route("/v1/ws/echo", get(ws::echo));
    }
    let cors = origin::cors(&state);
    let guard = axum::middleware::from_fn_with_state(state.clone(), origin::guard);
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(compression())
        .layer(guard)
        .layer(cors)
        // Outermost, so refusals by the layers inside carry an id too.
        .layer(axum::middleware::from_fn(request_id::assign))
        .with_state(state)
}

/// gzip or brotli for what a client accepts: JSON answers, the console's files. Never event
/// streams (each event would wait in the encoder; the predicate skips `text/event-stream`),
/// nor what is already encoded (the client's precompressed file) or under 32 bytes.
fn compression() -> tower_http::compression::CompressionLayer {
    tower_http::compression::CompressionLayer::new()
        .gzip(true)
        .br(true)
        .no_deflate()
        .no_zstd()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// A known path with a method it does not take; axum keeps its `Allow` header.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {} (the Allow header lists what is)",
            uri.path()
        ),
    )
}

/// The one error shape: `{"error":{"code","message"}}` with a fitting status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
    /// The request body was left unread (too large, too slow), so the connection cannot
    /// carry another request: the response says `Connection: close`.
    pub close: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            close: false,
        }
    }

    pub fn rate_limited(wait: std::time::Duration) -> Self {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let message = format!("publish rate exceeded; retry in {secs} s");
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(secs);
        e
    }

    /// 429 for a client over the connection limits (an HTTP/2 event stream counts as one).
    pub fn too_many_connections(refusal: crate::limits::Refusal) -> Self {
        let message = refusal.message();
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            message,
        );
        e.retry_after = Some(1);
        e
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn too_large(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
    }

    /// 503 with `Retry-After: 1`: a shared store is unreachable, nothing was done; retry.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(1);
        e
    }

    /// This connection ends with the response (its request body was not read to the end).
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(id) = request_id::current() {
            body["error"]["request_id"] = id.as_ref().into();
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.close {
            // Say so, or a pooling client would reuse the connection and fail.
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
            LogError::Unavailable(_) => {
                tracing::warn!(error = %e, "log unavailable");
                Self::unavailable(
                    "log_unavailable",
                    format!("{e}; retry shortly (with the same id, a retry is never doubled)"),
                )
            }
            LogError::Unconfirmed(_) => {
                tracing::warn!(error = %e, "append unconfirmed");
                let out = Self::unavailable(
                    "outcome_unknown",
                    format!(
                        "{e}: they may or may not have been stored. Publish again with the \
                         same ids (a retry is never doubled)"
                    ),
                );
                out
            }
            LogError::Uncertain { ref source, .. } => {
                tracing::error!(error = %e, cause = %source, "log halted");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome_unknown",
                    format!(
                        "{e}: they may or may not have been stored. This server accepts no \
                         more writes until it is restarted; publish again with the same ids \
                         (a retry is never doubled)"
                    ),
                )
            }
            LogError::Halted => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_failed",
                format!("{e}; nothing was written. Restart the server (see its log)"),
            ),
            LogError::Storage(_) | LogError::Locked(_) | LogError::RedisTooOld(_) => {
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

impl From<crate::presence::PresenceError> for ApiError {
    fn from(e: crate::presence::PresenceError) -> Self {
        use crate::presence::PresenceError as P;
        match e {
            P::InvalidUser(_) | P::InvalidInfo(_) => {
                Self::bad_request("invalid_presence", e.to_string())
            }
            P::Pattern(_) => Self::bad_request("presence_pattern", e.to_string()),
            P::Store(source) => {
                tracing::warn!(error = %source, "presence store unavailable");
                Self::unavailable(
                    "presence_unavailable",
                    "the presence store is unreachable; retry shortly",
                )
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let error = Self::from_auth(e);
        metrics::counter!("herald_auth_failures_total", "code" => error.code).increment(1);
        error
    }
}

impl ApiError {
    fn from_auth(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Invalid | AuthError::KeyOutsideHeader => {
                Self::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
            }
            AuthError::Expired => {
                Self::new(StatusCode::UNAUTHORIZED, "token_expired", e.to_string())
            }
            AuthError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            AuthError::PresenceForbidden(_) => {
                Self::new(StatusCode::FORBIDDEN, "presence_forbidden", e.to_string())
            }
            AuthError::NoIdentity(_) => Self::bad_request("presence_identity", e.to_string()),
        }
    }
}

impl AppState {
    /// Who is calling (see [`Auth::authenticate`]).
    pub fn principal(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        via: Via,
    ) -> Result<Principal, ApiError> {
        Ok(self.auth.authenticate(headers, query_token, via)?)
    }

    /// Takes `n` events from the caller's publish budget.
    pub fn take_publish_budget(
        &self,
        p: &Principal,
        peer: std::net::IpAddr,
        n: usize,
    ) -> Result<(), ApiError> {
        let client = crate::limits::client_of(peer, self.config.limits.ipv6_prefix);
        self.publish_rate
            .take(&p.rate_key(client), n as u32)
            .map_err(|wait| {
                metrics::counter!("herald_rate_limited_total", "limit" => "publish").increment(1);
                ApiError::rate_limited(wait)
            })
    }
}

impl From<crate::proxy::ProxyError> for ApiError {
    fn from(e: crate::proxy::ProxyError) -> Self {
        match e {
            crate::proxy::ProxyError::Refused { message, .. } => {
                Self::new(StatusCode::FORBIDDEN, "proxy_refused", message)
            }
            crate::proxy::ProxyError::Unavailable(why) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "proxy_unavailable",
                format!("{why}; refused (the app could not decide)"),
            ),
        }
    }
}

/// The user a principal names to the backend hooks.
fn user_of(p: &crate::auth::Principal) -> Option<&str> {
    match p {
        crate::auth::Principal::Token { sub, .. } => sub.as_deref(),
        _ => None,
    }
}

impl AppState {
    /// Who the caller is: its own credential, or, with none and a connect hook, whom the app
    /// says it is (`transport`: `sse`, `ws` or `http`). An identity vouched for by cookies
    /// needs an allowed Origin (against cross-site WebSocket hijacking and CSRF).
    pub async fn identify(
        &self,
        principal: crate::auth::Principal,
        headers: &HeaderMap,
        peer: std::net::SocketAddr,
        transport: &str,
        channels: &[&str],
    ) -> Result<crate::auth::Principal, ApiError> {
        use crate::auth::Principal;
        let Some(proxy) = self.proxy.as_ref().filter(|p| p.asks_connect()) else {
            return Ok(principal);
        };
        if !matches!(principal, Principal::Anonymous | Principal::Open) {
            return Ok(principal);
        }
        if headers.contains_key(axum::http::header::COOKIE) && !self.origin_allowed(headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "an identity from cookies needs an allowed Origin (same origin or \
                 server.allowed_origins)",
            ));
        }
        Ok(proxy
            .connect(transport, proxy.forwarded(headers), peer, channels)
            .await?)
    }

    /// The subscribe hook, for a channel in `proxy.subscribe_channels` (API keys never ask).
    pub async fn ask_subscribe(
        &self,
        principal: &crate::auth::Principal,
        channel: &str,
        transport: &str,
    ) -> Result<(), ApiError> {
        let Some(proxy) = self.proxy.as_ref().filter(|p| p.asks_subscribe(channel)) else {
            return Ok(());
        };
        if matches!(principal, crate::auth::Principal::Admin { .. }) {
            return Ok(());
        }
        let info = match principal {
            crate::auth::Principal::Token { info, .. } => info.as_deref(),
            _ => None,
        };
        proxy
            .subscribe(user_of(principal), channel, transport, info)
            .await
            .map_err(|e| {
                let mut e = ApiError::from(e);
                e.message = format!("{:?}: {}", crate::event::excerpt(channel), e.message);
                e
            })
    }

    /// The publish hook, once per event on a channel in `proxy.publish_channels`, before the
    /// idempotency check and the append: each kept, rewritten, or the whole lot refused.
    /// Only client publishes ask (tokens and hook identities); API keys never do.
    pub async fn vet_publish(
        &self,
        principal: &crate::auth::Principal,
        events: Vec<crate::event::NewEvent>,
    ) -> Result<Vec<crate::event::NewEvent>, ApiError> {
        let Some(proxy) = self.proxy.as_ref() else {
            return Ok(events);
        };
        if !matches!(principal, crate::auth::Principal::Token { .. }) {
            return Ok(events);
        }
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if !proxy.asks_publish(event.channel()) {
                out.push(event);
                continue;
            }
            let rewrite = proxy
                .publish(
                    user_of(principal),
                    event.channel(),
                    event.kind(),
                    event.data(),
                )
                .await?;
            out.push(match rewrite {
                None => event,
                Some(data) => {
                    crate::http::api::check_data_size(&data, &self.config.limits)?;
                    event.with_data(data)
                }
            });
        }
        Ok(out)
    }
}

impl From<crate::event::EventError> for ApiError {
    fn from(e: crate::event::EventError) -> Self {
        Self::bad_request(e.code(), e.to_string())
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

/// Refuses a set of subscriptions (channel names and patterns, as a URL or a WebSocket
/// connection holds them) beyond `max_subscriptions`, or with more than `max_patterns`
/// patterns, naming the limit.
pub fn check_subscription_caps<'a>(
    limits: &crate::config::LimitsConfig,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    let (mut total, mut patterns) = (0, 0);
    for name in names {
        total += 1;
        patterns += usize::from(name.contains('*'));
    }
    if total > limits.max_subscriptions {
        return Err(ApiError::bad_request(
            "too_many_subscriptions",
            format!(
                "{total} channels; a connection may hold at most {} subscriptions \
                 (limits.max_subscriptions)",
                limits.max_subscriptions
            ),
        ));
    }
    if patterns > limits.max_patterns {
        return Err(ApiError::bad_request(
            "too_many_patterns",
            format!(
                "{patterns} patterns; a connection may hold at most {} (limits.max_patterns)",
                limits.max_patterns
            ),
        ));
    }
    Ok(())
}

/// Parses a query string where keys may repeat (`channel=a&channel=b`).
pub fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request("invalid_query", format!("malformed query string: {e}")))
}

/// The first value of a query parameter.
pub fn query_get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The `token` query parameter (for EventSource and WebSocket, which cannot set headers).
pub fn query_token(pairs: &[(String, String)]) -> Option<&str> {
    pairs
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str())
}

/// Parses a cursor (a seq) given by a client.
pub fn parse_cursor(text: &str, what: &str) -> Result<u64, ApiError> {
    text.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_cursor",
            format!(
                "{what} must be a sequence number (a non-negative integer), got {:?}",
                crate::event::excerpt(text)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn cursor_parsing_is_total(text in "\\PC{0,40}") {
            let parsed = parse_cursor(&text, "Last-Event-ID");
            proptest::prop_assert_eq!(parsed.is_ok(), text.trim().parse::<u64>().is_ok());
            if let Err(e) = parsed {
                proptest::prop_assert_eq!(e.code, "invalid_cursor");
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn cursors_round_trip(n in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(parse_cursor(&n.to_string(), "x").unwrap(), n);
        }
    }
}
