//! Every request gets an id: it is in the request's log line, in the `x-request-id` response
//! header, and in an error body's `request_id`, so a user's report ("I got 422, request
//! 3f2a...") leads straight to the server's line. A well-formed `x-request-id` from a proxy
//! in front is kept, so one id follows the request through both.
//!
//! The same middleware counts requests for `/metrics` by route template (never the raw
//! path, whose values are unbounded), method and status, with their latency to the response
//! head (for SSE and WebSocket that is the handshake, not the stream).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};

const HEADER: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The id of the request being handled (errors read it to put it in their body).
    static CURRENT: Arc<str>;
}

/// The current request's id, inside a handler.
pub fn current() -> Option<Arc<str>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// A counter from a random start: unique within the process, unpredictable across them, and
/// no system call per request.
fn next_id() -> Arc<str> {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("OS random source");
        AtomicU64::new(u64::from_le_bytes(seed))
    });
    format!("{:016x}", next.fetch_add(1, Ordering::Relaxed)).into()
}

/// Ids from upstream are kept only if short and plain (they end up in logs).
fn upstream(request: &Request) -> Option<Arc<str>> {
    let v = request.headers().get(&HEADER)?.to_str().ok()?;
    let plain = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    plain.then(|| v.into())
}

/// The middleware: assigns the id, runs the request with it, logs one line. Successful
/// requests log at debug (a busy publisher makes thousands a second), failures at info
/// (4xx) or warn (5xx).
pub async fn assign(request: Request, next: Next) -> Response {
    let id = upstream(&request).unwrap_or_else(next_id);
    let method = request.method().clone();
    // A cheap clone (shared bytes); the path is cut down only if a line is written.
    let uri = request.uri().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let mut response = CURRENT.scope(id.clone(), next.run(request)).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let ms = elapsed * 1000.0;
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    let (count, latency) = series(route, method_label(&method), status);
    count.increment(1);
    latency.record(elapsed);
    // Field values are evaluated only when the line is enabled.
    let path = || crate::event::excerpt(uri.path());
    match status {
        500.. => tracing::warn!(request_id = %id, %method, path = path(), status, ms, "request"),
        400..=499 => {
            tracing::info!(request_id = %id, %method, path = path(), status, ms, "request")
        }
        _ => tracing::debug!(request_id = %id, %method, path = path(), status, ms, "request"),
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, v);
    }
    response
}

/// The request's counter and latency histogram, looked up once per (route, method, status)
/// and kept: building a `metrics` key from owned label strings and hashing it on every
/// request showed on the publish path.
fn series(route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
    type Series = HashMap<String, Vec<(&'static str, u16, Counter, Histogram)>>;
    static SERIES: OnceLock<RwLock<Series>> = OnceLock::new();
    let map = SERIES.get_or_init(RwLock::default);
    let find = |m: &Series| {
        m.get(route)?
            .iter()
            .find(|(me, st, _, _)| *me == method && *st == status)
            .map(|(_, _, c, h)| (c.clone(), h.clone()))
    };
    if let Some(found) = find(&map.read().expect("series")) {
        return found;
    }
    let labels = [
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    let count = metrics::counter!("herald_http_requests_total", &labels);
    let latency = metrics::histogram!("herald_http_request_seconds", &labels[..2]);
    let mut m = map.write().expect("series");
    m.entry(route.to_string())
        .or_default()
        .push((method, status, count.clone(), latency.clone()));
    (count, latency)
}

/// Methods a client can invent are one label, so they cannot grow the series without bound.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::PATCH => "PATCH",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
