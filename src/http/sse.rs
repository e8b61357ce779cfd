//! Server-Sent Events (`GET /v1/sse`): frames are the events' pre-encoded SSE bytes, written
//! straight into the response body; nothing is serialized per subscriber. On the direct path
//! (`sse_direct.rs`) a caught-up stream's events skip the body: the hub writes them to the
//! socket (`wire.rs`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream;
use tokio_util::sync::CancellationToken;

use super::presence::updates;
use super::sse_direct::SseWire;
use super::{
    check_subscription_caps, parse_cursor, query_pairs, query_token, ApiError, AppState, Connection,
};
use crate::auth::{Principal, Via};
use crate::event::Filter;
use crate::hub::{Item, Subscription, SubscriptionError};
use crate::presence::{presence_frame, Occupant, Update};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio_stream::StreamMap;

const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// `GET /v1/sse?channel=C[&channel=D][&last_event_id=N][&typed=false]`.
pub async fn stream(
    State(app): State<AppState>,
    Extension(conn): Extension<Connection>,
    wire: Option<Extension<SseWire>>,
    version: axum::http::Version,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    // Over HTTP/2 one TCP connection carries any number of streams (up to
    // server.max_streams_per_connection): each event stream holds a connection's slot of its
    // own in the per-client limits, or one client could hold thousands through a few sockets.
    let slot = match (&conn.permit, version) {
        (Some(permit), axum::http::Version::HTTP_2) => {
            Some(permit.another().map_err(ApiError::too_many_connections)?)
        }
        _ => None,
    };
    let pairs = query_pairs(query.as_deref())?;
    let channels: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .collect();
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "give at least one channel=NAME (or a pattern with *)",
        ));
    }
    let mut distinct = channels.clone();
    distinct.sort_unstable();
    distinct.dedup();
    check_subscription_caps(&app.config.limits, distinct)?;
    let principal = app.principal(&headers, query_token(&pairs), Via::Read)?;
    let principal = app
        .identify(principal, &headers, conn.peer, "sse", &channels)
        .await?;
    for channel in &channels {
        app.auth.check_subscribe(&principal, channel)?;
    }
    // A refused channel refuses the stream (403 naming it) before it starts.
    for channel in &distinct_channels(&channels) {
        app.ask_subscribe(&principal, channel, "sse").await?;
    }
    let filter = Filter::parse(channels.iter().copied())?;
    // `typed=false`: no `event:` lines, so a browser gets every event in `onmessage` without
    // knowing the types in advance.
    let typed = match pairs.iter().find(|(k, _)| k == "typed") {
        None => true,
        Some((_, v)) if v == "true" => true,
        Some((_, v)) if v == "false" => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "typed must be true or false",
            ))
        }
    };
    // EventSource sends Last-Event-ID on reconnect while the URL keeps its original query, so
    // the header is the newer cursor and wins.
    let since = match headers.get("last-event-id") {
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::bad_request("invalid_cursor", "Last-Event-ID must be a sequence number")
            })?;
            Some(parse_cursor(text, "Last-Event-ID")?)
        }
        None => match pairs.iter().find(|(k, _)| k == "last_event_id") {
            Some((_, v)) => Some(parse_cursor(v, "last_event_id")?),
            None => None,
        },
    };
    let presence = join_presence(&app, &principal, &pairs, &channels).await?;
    let occupants = channels
        .iter()
        .filter(|c| !c.contains('*'))
        .map(|c| app.presence.occupy(c))
        .collect();
    // A slow consumer cancels the connection's kill token: its socket is likely full, so the
    // only sure way to free the server's buffers is to drop the connection.
    // On the direct path the hub writes caught-up events to the socket itself.
    let direct =
        wire.map(|Extension(wire)| wire.taker(typed) as std::sync::Arc<dyn crate::hub::Direct>);
    let subscription = app
        .hub
        .subscribe_direct(filter, since, conn.kill.clone(), direct)
        .counted(crate::stats::Transport::Sse);
    // A live stream (no cursor) starts with the head it was registered at as its id (in the
    // `retry:` frame, which carries no data, so no event fires): should it drop before any
    // event, EventSource resumes from there, and nothing published meanwhile is lost.
    let start_id = since.is_none().then(|| subscription.cursor());
    let server = &app.config.server;
    let body = Body::from_stream(frames(
        Sources {
            subscription,
            presence,
            _occupants: occupants,
            _slot: slot,
        },
        typed,
        start_id,
        server.heartbeat,
        server.sse_retry,
        app.shutdown.clone(),
        deadline(&principal),
    ));
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn distinct_channels<'a>(channels: &[&'a str]) -> Vec<&'a str> {
    let mut out = channels.to_vec();
    out.sort_unstable();
    out.dedup();
    out
}

/// `&presence=true[&user=U][&info=JSON]`: the reader is a member of every channel of the
/// URL while its stream is open (patterns cannot be joined). Each channel's members come
/// first, as `event: presence` frames.
async fn join_presence(
    app: &AppState,
    principal: &Principal,
    pairs: &[(String, String)],
    channels: &[&str],
) -> Result<Presence, ApiError> {
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut presence = Presence::default();
    match get("presence") {
        None | Some("false") => return Ok(presence),
        Some("true") => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "presence must be true or false",
            ))
        }
    }
    let info = match get("info") {
        None => None,
        Some(text) => Some(serde_json::from_str(text).map_err(|e| {
            ApiError::bad_request("invalid_presence", format!("info is not JSON: {e}"))
        })?),
    };
    let mut distinct = channels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for channel in distinct {
        let (watch, snapshot) = app
            .join_presence(principal, channel, get("user"), info.clone())
            .await?;
        presence.first.push(presence_frame(&snapshot.body()));
        presence.watches.insert(channel.to_string(), updates(watch));
    }
    Ok(presence)
}

#[derive(Default)]
struct Presence {
    /// Each channel's members, sent before anything else.
    first: Vec<Bytes>,
    watches: StreamMap<String, BoxStream<'static, Update>>,
}

/// What a stream reads from, and what it holds while open.
struct Sources {
    subscription: Subscription,
    presence: Presence,
    /// Counted in their channels' occupancy until the stream ends.
    _occupants: Vec<Occupant>,
    /// An HTTP/2 stream's own slot in the connection limits.
    _slot: Option<crate::limits::ConnectionPermit>,
}

struct StreamState {
    sources: Sources,
    typed: bool,
    heartbeat: tokio::time::Interval,
    /// Shutdown, or the subscriber's token expiring. Made once for the stream: a fresh
    /// `cancelled()` or `sleep_until` per frame would register with the token or the timer
    /// (and leave again) for every event sent.
    end: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    preamble: Option<Bytes>,
    _open: crate::stats::Held,
}

/// The body: `retry:` first, then events and heartbeats until shutdown or a lag.
fn frames(
    sources: Sources,
    typed: bool,
    start_id: Option<u64>,
    heartbeat: Duration,
    retry: Duration,
    shutdown: CancellationToken,
    expires: Option<tokio::time::Instant>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let first = match start_id {
        Some(id) => format!("retry: {}\nid: {id}\n\n", retry.as_millis()),
        None => format!("retry: {}\n\n", retry.as_millis()),
    };
    let mut preamble = vec![Bytes::from(first)];
    let mut sources = sources;
    preamble.append(&mut sources.presence.first);
    let state = StreamState {
        sources,
        typed,
        heartbeat,
        end: Box::pin(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = until(expires) => {}
            }
        }),
        preamble: Some(Bytes::from(preamble.concat())),
        _open: crate::stats::Held::connection(crate::stats::Transport::Sse),
    };
    stream::unfold(state, |mut s| async move {
        if let Some(preamble) = s.preamble.take() {
            return Some((Ok(preamble), s));
        }
        let frame = tokio::select! {
            _ = &mut s.end => return None,
            _ = s.heartbeat.tick() => Bytes::from_static(HEARTBEAT),
            Some((_, update)) = s.sources.presence.watches.next(), if !s.sources.presence.watches.is_empty() => {
                match update {
                    Update::Diff(d) => d.sse_frame(),
                    Update::Sync(_) => presence_frame(&update.body()),
                }
            }
            item = s.sources.subscription.next() => match item {
                Ok(Item::Event(event)) => {
                    crate::stats::get().delivered(crate::stats::Transport::Sse, 1);
                    if s.typed { event.sse_frame() } else { event.sse_frame_untyped() }
                }
                Ok(Item::Reset { oldest }) => reset_frame(oldest),
                Err(SubscriptionError::Lagged) => return None,
                Err(SubscriptionError::Log(e)) => {
                    tracing::error!(error = %e, "SSE subscription failed");
                    return None;
                }
            },
        };
        Some((Ok(frame), s))
    })
}

/// When a principal's access ends, on the runtime's clock.
pub fn deadline(principal: &Principal) -> Option<tokio::time::Instant> {
    let at = principal.expires_at()?;
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    let now = tokio::time::Instant::now();
    // `expires_at` is bounded, but an Instant overflowing would panic the handler: clamp.
    Some(
        now.checked_add(left)
            .unwrap_or(now + Duration::from_secs(86_400 * 365)),
    )
}

/// Resolves at `at`, or never.
pub async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `event: reset` with an `id` just before the oldest retained event, so EventSource's own
/// reconnect resumes from there instead of reporting the same gap again.
fn reset_frame(oldest: u64) -> Bytes {
    let data = format!("{{\"oldest\":{oldest}}}");
    crate::event::sse_frame(oldest.saturating_sub(1), Some("reset"), data.as_bytes())
}
