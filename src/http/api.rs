//! The JSON API: publish (single and atomic batch), history, health.

use axum::body::{to_bytes, Body};
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{parse_cursor, query_pairs, query_token, ApiError, AppState, Connection};
use crate::auth::{AuthError, Principal, Via};
use crate::config::LimitsConfig;
use crate::event::{Filter, NewEvent, Source};
use crate::log::Appended;
use axum::http::HeaderMap;
use axum::Extension;
use std::sync::Arc;

/// An event as a publisher sends it (HTTP body or WebSocket `publish`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    pub channel: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub data: Box<RawValue>,
    pub id: Option<String>,
}

impl EventIn {
    /// Validates names and sizes; the result is ready for the log.
    pub fn validate(self, limits: &LimitsConfig) -> Result<NewEvent, ApiError> {
        check_data_size(&self.data, limits)?;
        Ok(NewEvent::new(
            Source::Publisher,
            self.channel,
            self.kind,
            self.data,
            self.id,
        )?)
    }
}

/// Refuses event data over `limits.max_event_bytes` (413).
pub fn check_data_size(data: &RawValue, limits: &LimitsConfig) -> Result<(), ApiError> {
    let size = data.get().len();
    if size > limits.max_event_bytes {
        return Err(ApiError::too_large(
            "event_too_large",
            format!(
                "event data is {size} bytes; the limit is {} bytes",
                limits.max_event_bytes
            ),
        ));
    }
    Ok(())
}

/// Maps a serde_json error to `invalid_json` (not JSON at all) or `invalid_event` (JSON of the
/// wrong shape: missing field, wrong type, unknown field).
pub fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
        }
        Category::Data => {
            ApiError::bad_request("invalid_event", format!("event has the wrong shape: {e}"))
        }
    }
}

/// Reads a request body up to `limit` bytes, within `limits.body_timeout` in all: a client
/// that stalls part-way (or dribbles a byte at a time) is cut off, not waited for.
pub async fn read_body(
    body: Body,
    limit: usize,
    limits: &LimitsConfig,
) -> Result<axum::body::Bytes, ApiError> {
    let read = tokio::time::timeout(limits.body_timeout, to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} (limits.body_timeout)",
                humantime::format_duration(limits.body_timeout)
            ),
        )
        .closing());
    };
    read.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_big {
            ApiError::too_large(
                "body_too_large",
                format!("request body exceeds {limit} bytes"),
            )
            .closing()
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })
}

/// A small JSON request body (management routes): the content type checked, at most `limit`
/// bytes within the body deadline, parsed into `T`. `shape_code` is the error code for JSON
/// of the wrong shape (`invalid_json` is for text that is not JSON).
pub async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    limits: &LimitsConfig,
    shape_code: &'static str,
) -> Result<T, ApiError> {
    require_json(headers)?;
    let bytes = read_body(body, limit.min(limits.max_body_bytes), limits).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(shape_code, format!("request has the wrong shape: {e}"))
        } else {
            ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
        }
    })
}

/// JSON routes take only `application/json` (`application/*+json` too). A cross-site HTML
/// form or a no-CORS `fetch` can send a body only as `text/plain`, form data or with no type
/// at all, so this alone keeps another site's page from posting JSON here.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ok = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| {
            t == "application/json" || (t.starts_with("application/") && t.ends_with("+json"))
        });
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json (curl: --json)",
        ))
    }
}

/// Parses a publish body: one event object or a non-empty array (an atomic batch).
pub fn parse_publish(
    body: &[u8],
    limits: &LimitsConfig,
) -> Result<(Vec<NewEvent>, bool), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            let items: Vec<EventIn> = serde_json::from_slice(body).map_err(json_error)?;
            if items.is_empty() {
                return Err(ApiError::bad_request(
                    "empty_batch",
                    "a batch must hold at least one event",
                ));
            }
            if items.len() > limits.max_batch {
                return Err(ApiError::too_large(
                    "batch_too_large",
                    format!(
                        "batch holds {} events; the limit is {}",
                        items.len(),
                        limits.max_batch
                    ),
                ));
            }
            let events = items
                .into_iter()
                .map(|e| e.validate(limits))
                .collect::<Result<_, _>>()?;
            Ok((events, true))
        }
        Some(b'{') => {
            let item: EventIn = serde_json::from_slice(body).map_err(json_error)?;
            Ok((vec![item.validate(limits)?], false))
        }
        Some(_) => Err(ApiError::bad_request(
            "invalid_json",
            "body must be a JSON object (one event) or array (a batch)",
        )),
        None => Err(ApiError::bad_request(
            "invalid_json",
            "body is empty; send a JSON event",
        )),
    }
}

/// `POST /v1/events`: 201 once durable; 200 when every event was a duplicate `id`.
pub async fn publish(
    State(app): State<AppState>,
    Extension(conn): Extension<Connection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Credentials first: an unauthenticated client does not get its body read (with a
    // connect hook, the app says who it is).
    let principal = app.principal(&headers, None, Via::Write)?;
    let principal = app
        .identify(principal, &headers, conn.peer, "http", &[])
        .await?;
    if matches!(principal, Principal::Anonymous) {
        return Err(AuthError::Missing.into());
    }
    // A token that may publish nowhere is refused before its body is read.
    if let Principal::Token { publish, .. } = &principal {
        if publish.is_empty() {
            return Err(AuthError::Forbidden("the token may not publish".into()).into());
        }
    }
    require_json(&headers)?;
    let limits = &app.config.limits;
    let body = read_body(body, limits.max_body_bytes, limits).await?;
    let (events, batch) = parse_publish(&body, limits)?;
    for event in &events {
        app.auth.check_publish(&principal, event.channel())?;
    }
    app.take_publish_budget(&principal, conn.peer.ip(), events.len())?;
    let events = app.vet_publish(&principal, events).await?;
    let results = app.hub.publish(events, "http").await?;
    let status = if results.iter().all(|a: &Appended| a.duplicate) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = if batch {
        json!({"seqs": results.iter().map(|a| a.seq).collect::<Vec<_>>()})
    } else {
        json!({"seq": results[0].seq})
    };
    Ok((status, axum::Json(body)).into_response())
}

/// Largest page a history read returns.
const MAX_HISTORY_LIMIT: usize = 1000;

/// `GET /v1/events?channel=C&after=N&limit=L` -> `{"events":[...],"next":N}`.
pub async fn history(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref())?;
    let principal = app.principal(&headers, query_token(&pairs), Via::Read)?;
    let mut after = 0;
    let mut limit = 100;
    let mut channels = Vec::new();
    for (key, value) in &pairs {
        match key.as_str() {
            "channel" => channels.push(value.as_str()),
            "after" => after = parse_cursor(value, "after")?,
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_HISTORY_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_limit",
                            format!("limit must be 1-{MAX_HISTORY_LIMIT}"),
                        )
                    })?
            }
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "give at least one channel=NAME (or a pattern with *)",
        ));
    }
    let filter = Filter::parse(channels.iter().copied())?;
    for channel in &channels {
        app.auth.check_subscribe(&principal, channel)?;
    }
    let page = app.hub.log().read(Arc::new(filter), after, limit).await?;
    // Envelopes are spliced in as stored: history is byte-identical to what transports carry.
    let mut out = Vec::with_capacity(
        64 + page
            .events
            .iter()
            .map(|e| e.envelope().len() + 1)
            .sum::<usize>(),
    );
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in page.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(event.envelope());
    }
    out.extend_from_slice(format!("],\"next\":{}", page.next).as_bytes());
    if let Some(oldest) = page.reset {
        out.extend_from_slice(format!(",\"reset\":{{\"oldest\":{oldest}}}").as_bytes());
    }
    out.push(b'}');
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// `GET /metrics`: Prometheus text, with the log's and hub's gauges refreshed first.
pub async fn metrics(State(app): State<AppState>) -> Response {
    let Some(handle) = &app.metrics else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "metrics are not enabled",
        )
        .into_response();
    };
    crate::stats::get().export();
    let b = app.hub.log().bounds();
    metrics::gauge!("herald_log_head").set(b.head as f64);
    metrics::gauge!("herald_log_oldest").set(b.oldest as f64);
    metrics::gauge!("herald_subscriptions").set(app.hub.subscriptions() as f64);
    metrics::gauge!("herald_webhook_endpoints").set(app.webhooks.running() as f64);
    metrics::gauge!("herald_log_ready").set(if app.hub.log().ready() { 1.0 } else { 0.0 });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Alive; `open` tells a page whether it needs a credential before calling the API (any
/// request would show it with a 401 anyway).
pub async fn healthz(State(app): State<AppState>) -> axum::Json<Value> {
    axum::Json(json!({"status": "ok", "open": app.auth.is_open()}))
}

/// Ready while accepting work; 503 once shutdown has begun or while the shared log is
/// unreachable, so balancers stop routing here.
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.shutdown.is_cancelled() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "server is shutting down",
        )
        .into_response()
    } else if !app.hub.log().ready() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_unavailable",
            "the event log is not accepting writes (Redis is unreachable, or a storage \
             failure halted it: see the server log)",
        )
        .into_response()
    } else {
        let b = app.hub.log().bounds();
        axum::Json(json!({"status": "ready", "head": b.head, "oldest": b.oldest})).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expected: Result<usize, (&str, u16)>) {
        let got = parse_publish(
            body.as_bytes(),
            &LimitsConfig {
                max_batch: 3,
                max_event_bytes: 10,
                ..Default::default()
            },
        );
        match (got, expected) {
            (Ok((events, _)), Ok(n)) => assert_eq!(events.len(), n, "{body}"),
            (Err(e), Err((code, status))) => {
                assert_eq!(
                    (e.code, e.status.as_u16()),
                    (code, status),
                    "{body}: {}",
                    e.message
                )
            }
            (got, want) => panic!("{body}: got {:?}, want {want:?}", got.map(|(e, _)| e.len())),
        }
    }

    #[test]
    fn publish_bodies() {
        check(r#"{"channel":"a","data":1}"#, Ok(1));
        check(
            r#"[{"channel":"a","data":1},{"channel":"b","type":"t","data":{},"id":"x"}]"#,
            Ok(2),
        );
        check("", Err(("invalid_json", 400)));
        check("{", Err(("invalid_json", 400)));
        check("42", Err(("invalid_json", 400)));
        check("[]", Err(("empty_batch", 400)));
        check(r#"{"channel":"a"}"#, Err(("invalid_event", 400)));
        check(r#"{"channel":5,"data":1}"#, Err(("invalid_event", 400)));
        check(
            r#"{"channel":"a","data":1,"extra":2}"#,
            Err(("invalid_event", 400)),
        );
        check(
            r#"{"channel":"a b","data":1}"#,
            Err(("invalid_channel", 400)),
        );
        check(
            r#"{"channel":"a*","data":1}"#,
            Err(("invalid_channel", 400)),
        );
        check(
            r#"{"channel":"a","type":"x\ny","data":1}"#,
            Err(("invalid_type", 400)),
        );
        check(
            r#"{"channel":"a","type":"webhook","data":1}"#,
            Err(("reserved_type", 400)),
        );
        check(
            r#"{"channel":"a","id":"","data":1}"#,
            Err(("invalid_id", 400)),
        );
        check(
            r#"{"channel":"a","data":"0123456789"}"#,
            Err(("event_too_large", 413)),
        );
        check(
            r#"[{"channel":"a","data":1},{"channel":"a","data":1},{"channel":"a","data":1},{"channel":"a","data":1}]"#,
            Err(("batch_too_large", 413)),
        );
    }

    proptest::proptest! {
        /// Any bytes give events or a typed 4xx error, never a panic.
        #[test]
        fn publish_parser_is_total(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Err(e) = parse_publish(&body, &LimitsConfig::default()) {
                proptest::prop_assert!(e.status.is_client_error());
            }
        }

        #[test]
        fn valid_events_parse(channel in "[a-z:/@._-]{1,40}", n in proptest::num::i64::ANY, kind in proptest::option::of("[a-z.]{1,20}"), count in 1usize..5) {
            let mut one = serde_json::json!({"channel": channel, "data": {"n": n}});
            if let Some(k) = &kind { one["type"] = k.clone().into(); }
            let batch = serde_json::Value::Array(vec![one.clone(); count]);
            let (events, is_batch) = parse_publish(batch.to_string().as_bytes(), &LimitsConfig::default()).unwrap();
            proptest::prop_assert!(is_batch);
            proptest::prop_assert_eq!(events.len(), count);
            proptest::prop_assert_eq!(events[0].channel(), &channel);
            proptest::prop_assert_eq!(events[0].kind(), kind.as_deref());
            let (single, is_batch) = parse_publish(one.to_string().as_bytes(), &LimitsConfig::default()).unwrap();
            proptest::prop_assert!(!is_batch && single.len() == 1);
        }
    }
}
