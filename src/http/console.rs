//! `GET /v1/stats`: what the operator console charts. The last minutes of the server's own
//! counters, one sample a second (see `stats`), with the log's bounds and, in a cluster, the
//! nodes and whether Redis answers. Admin only: it describes the whole server.

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::{query_pairs, Admin, ApiError, AppState};
use crate::event::now_ms;
use crate::stats::HISTORY_SECONDS;

pub async fn stats(
    _: Admin,
    State(app): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut seconds = 300;
    for (key, value) in query_pairs(query.as_deref())? {
        if key == "seconds" {
            seconds = value
                .parse::<usize>()
                .ok()
                .filter(|s| (1..=HISTORY_SECONDS).contains(s))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_seconds",
                        format!("seconds must be 1..={HISTORY_SECONDS}"),
                    )
                })?;
        }
    }
    let mut samples = app.history.samples();
    samples.drain(..samples.len().saturating_sub(seconds));
    let log = app.hub.log();
    let bounds = log.bounds();
    Ok(Json(json!({
        "interval_ms": 1000,
        "samples": samples,
        "log": {"head": bounds.head, "oldest": bounds.oldest, "ready": log.ready()},
        "cluster": cluster(&app).await,
    })))
}

/// None on a single node; else every node presence knows, with its heartbeat's age, and
/// whether Redis answered this request.
async fn cluster(app: &AppState) -> Value {
    let Some(nodes) = app.presence.nodes().await else {
        return Value::Null;
    };
    let now = now_ms();
    match nodes {
        Ok(nodes) => json!({
            "redis": "up",
            "this_node": nodes.this,
            "nodes": nodes.beats.iter().map(|(id, beat)| json!({
                "id": id,
                "last_heartbeat_ms_ago": now.saturating_sub(*beat),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({"redis": "down", "error": e.to_string()}),
    }
}
