//! The WebSocket connection under both WebSocket protocols (Herald's `/v1/ws` and Pusher's
//! `/app/{key}`): how it is upgraded, sized, compressed, flushed and closed.
//!
//! The stack is yawc: it passes the Autobahn suite including permessage-deflate (RFC 7692),
//! whose deflate state can be pooled between connections that keep no context, and its
//! buffers start small and shrink back after a large frame, which is what many idle
//! connections need.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use futures_util::{FutureExt, SinkExt};
use tokio_util::sync::CancellationToken;
use yawc::{CompressionLevel, DeflatePool, Frame, OpCode, Options, WebSocketError};

use crate::config::WebSocketConfig;
use crate::http::wire::{Wire, WireIo};
use crate::http::ApiError;
use std::future::Future;
use std::sync::Arc;

/// An upgraded connection.
pub type Socket = yawc::WebSocket<WireIo>;

/// What an upgrade becomes: the connection, and the socket the hub may share (see
/// [`Upgrade::accept`]); `None` if the client left before it completed.
pub type Accepted = Option<(Socket, Option<Arc<Wire>>)>;

/// Read buffer a connection starts with; grows for a large frame and shrinks back after.
/// Small, because most connections send little (a subscribe, a pong) and an idle one holds
/// this for its whole life; a larger message grows it (doubling, a read each) and it is
/// given back after.
const READ_BUFFER: usize = 128;

/// Write buffer a connection starts with (the welcome and a subscription's reply fit); the
/// first batch of events grows it to what a batch needs (at most `WRITE_BATCH_BYTES`, or one
/// larger frame), and it stays that size: a connection that is sent to is sent to again.
const WRITE_BUFFER: usize = 64;

/// Bounds what one connection's writer may hold (frames fed before a flush).
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// Most frames fed before one flush...
const WRITE_BATCH: usize = 64;

/// ...and most bytes between flushes: the frames are copied into the connection's write
/// buffer, and a consumer that stopped reading keeps that buffer until it is cut. 8 KiB
/// measured 37-44 KiB per stuck subscriber under jemalloc (the buffer's doubling steps are
/// freed in lockstep across subscribers); 4 KiB, 24-26 KiB. A write of 4 KiB already costs
/// far more in copying than in the syscall.
const WRITE_BATCH_BYTES: usize = 4 * 1024;

/// How long a close frame may take to leave; a stuck peer is then just dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Deflate state between messages, shared by every connection that keeps no context: sized
/// for messages compressed at the same moment (about one per worker thread), not for
/// connections.
const POOL: usize = 64;

/// How connections are set up: limits and compression, the same for every upgrade.
pub struct Settings {
    compression: Option<(WebSocketConfig, DeflatePool)>,
}

impl Settings {
    pub fn new(config: &WebSocketConfig) -> Settings {
        Settings {
            compression: config
                .compression
                .then(|| (config.clone(), DeflatePool::new(POOL))),
        }
    }

    /// Options for a connection whose messages may be up to `max_message` bytes.
    pub fn options(&self, max_message: usize) -> Options {
        // yawc's limits are exclusive; ours are inclusive.
        let mut options = Options::default()
            .with_utf8()
            .with_max_payload_read(max_message + 1)
            .with_max_read_buffer(max_message + 1)
            .with_read_buffer_capacity(READ_BUFFER)
            .with_write_buffer_capacity(WRITE_BUFFER)
            .with_backpressure_boundary(MAX_WRITE_BUFFER)
            .without_compression();
        if let Some((c, pool)) = &self.compression {
            options = options
                .with_compression_level(CompressionLevel::new(c.compression_level))
                .with_compression_threshold(c.compression_threshold);
            if !c.context_takeover {
                // RFC 7692 lets a server impose no context takeover on both directions even
                // when the client did not offer it; then state lives in the pool, not in
                // each connection.
                options = options
                    .server_no_context_takeover()
                    .client_no_context_takeover()
                    .with_deflate_pool(pool.clone());
            }
        }
        options
    }
}

/// A WebSocket upgrade request. Refuses anything else with Herald's JSON error (400
/// `websocket_required`) rather than a bare status.
///
/// yawc checks the request and writes the answer; the connection itself is taken from hyper
/// here (`on_upgrade`), so a plain TCP one can be shared with the hub (`http/wire.rs`).
pub struct Upgrade {
    request: yawc::IncomingUpgrade,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Upgrade, ApiError> {
        let refused = |what: &str| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "websocket_required",
                format!("this endpoint speaks WebSocket only: {what}"),
            )
        };
        if !has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(refused(
                "expected Connection: upgrade and Upgrade: websocket",
            ));
        }
        choose_deflate_offer(&mut parts.headers);
        let on_upgrade = parts
            .extensions
            .get::<hyper::upgrade::OnUpgrade>()
            .cloned()
            .ok_or_else(|| refused("this connection cannot be upgraded"))?;
        let request = yawc::IncomingUpgrade::from_request_parts(parts, state)
            .await
            .map_err(|_| refused("expected Sec-WebSocket-Key and Sec-WebSocket-Version: 13"))?;
        Ok(Upgrade {
            request,
            on_upgrade,
        })
    }
}

/// Leaves in `Sec-WebSocket-Extensions` only the first permessage-deflate offer we can honor,
/// or removes the header when there is none.
///
/// Hand-written because yawc reads the header as a single offer, so a list of fallbacks
/// (`permessage-deflate; server_max_window_bits=10, permessage-deflate`) would be declined
/// whole. zlib cannot deflate with an 8-bit window, so an offer that asks for one (RFC 7692
/// section 7.1.2.1) is passed over for the next.
fn choose_deflate_offer(headers: &mut HeaderMap) {
    let offers: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|o| o.trim().to_string())
        .collect();
    if offers.is_empty() {
        return;
    }
    let honorable = |offer: &&String| {
        let mut params = offer.split(';').map(str::trim);
        params.next() == Some("permessage-deflate")
            && params.all(|p| match p.split_once('=') {
                Some(("server_max_window_bits", bits)) => bits
                    .trim_matches('"')
                    .parse::<u8>()
                    .is_ok_and(|b| (9..=15).contains(&b)),
                _ => true,
            })
    };
    let chosen = offers.iter().find(honorable).cloned();
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    if let Some(v) = chosen.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
}

impl Upgrade {
    /// The 101 response to return, and the connection it becomes once sent (`None` if the
    /// client left first), with the socket the hub may write events to directly when the
    /// connection is plain TCP and compresses nothing (a compressed connection's frames
    /// are its own).
    pub fn accept(
        self,
        options: Options,
    ) -> Result<
        (
            axum::response::Response,
            impl Future<Output = Accepted> + Send,
        ),
        ApiError,
    > {
        let (response, yawc_upgrade) = self.request.upgrade(options.clone()).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "websocket_required", e.to_string())
        })?;
        // yawc's own future would wrap hyper's connection in a box we cannot share; ours
        // takes it instead, with the extensions yawc agreed to in its answer.
        drop(yawc_upgrade);
        let agreed = response
            .headers()
            .get(header::SEC_WEBSOCKET_EXTENSIONS)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let on_upgrade = self.on_upgrade;
        let socket = async move {
            let io = WireIo::new(on_upgrade.await.ok()?);
            let wire = io.wire().filter(|_| agreed.is_none()).cloned();
            let role = yawc::Role::Server;
            let ws =
                yawc::WebSocket::from_stream_with_extensions(io, role, agreed.as_deref(), options);
            Some((ws.ok()?, wire))
        };
        Ok((response.map(axum::body::Body::new), socket))
    }
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Frames fed since the last flush, for both sessions' write batching: feed what is ready,
/// flush once, so a subscriber behind by ten events costs one write, not ten.
pub(crate) struct Batch {
    frames: usize,
    bytes: usize,
    /// `websocket.write_delay`: how long the batch may wait for more once nothing else is
    /// ready; zero once it has waited (once per batch).
    linger: Duration,
}

impl Batch {
    pub fn new(write_delay: Duration) -> Batch {
        Batch {
            frames: 0,
            bytes: 0,
            linger: write_delay,
        }
    }

    /// When nothing more is ready: waits out the write delay, once per batch, and says
    /// whether it did (then look again). Without a delay, returns false at once.
    pub async fn linger(&mut self) -> bool {
        if self.linger.is_zero() {
            return false;
        }
        tokio::time::sleep(std::mem::take(&mut self.linger)).await;
        true
    }

    /// Whether a frame of `len` bytes still fits in the write buffer with what was fed since
    /// the last flush. If not, flush first: the buffer then never grows past
    /// `WRITE_BATCH_BYTES` (a lone larger frame aside), which is what a subscriber whose
    /// socket is full holds.
    pub fn fits(&self, len: usize) -> bool {
        self.bytes == 0 || self.bytes + len + MAX_HEADER <= WRITE_BATCH_BYTES
    }

    /// After a flush in the middle of a batch: the buffer is empty again; the frame count
    /// goes on, so a busy subscription still yields to the rest of the session.
    pub fn flushed(&mut self) {
        self.bytes = 0;
    }

    /// Feeds one frame; true while the batch may take another before the flush.
    pub async fn feed(&mut self, ws: &mut Socket, frame: Frame) -> Result<bool, Close> {
        self.frames += 1;
        self.bytes += frame.payload().len() + MAX_HEADER;
        ws.feed(frame).await.map_err(|_| Close::Fail)?;
        Ok(self.frames < WRITE_BATCH)
    }
}

/// A server frame's header is at most 10 bytes (unmasked, 64-bit length).
const MAX_HEADER: usize = 10;

/// Why a guarded flush ended without flushing.
pub(crate) enum FlushEnd {
    Failed,
    Slow,
    Shutdown,
}

/// Flushes unless the connection is found slow or the server shuts down first: a peer that
/// stops reading would otherwise hold its task in `flush` forever.
pub(crate) async fn flush_or_end(
    ws: &mut Socket,
    lagged: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), FlushEnd> {
    // Most flushes complete at once (the socket has room); only a flush that has to wait
    // needs to watch for the end, and watching costs a registration with each token.
    // The waiting is boxed: it is rare, and inline it would add its size to every
    // session's task for the connection's life.
    if let Some(r) = ws.flush().now_or_never() {
        return r.map_err(|_| FlushEnd::Failed);
    }
    Box::pin(async {
        tokio::select! {
            r = ws.flush() => r.map_err(|_| FlushEnd::Failed),
            _ = lagged.cancelled() => Err(FlushEnd::Slow),
            _ = shutdown.cancelled() => Err(FlushEnd::Shutdown),
        }
    })
    .await
}

/// A session's hub subscriptions, by the channel name the protocol uses.
pub(crate) type ItemStream = futures_util::stream::BoxStream<
    'static,
    Result<crate::hub::Item, crate::hub::SubscriptionError>,
>;

/// What a session lends [`write_items`]: its socket, its subscriptions and what ends a flush.
pub(crate) struct Writer<'a> {
    ws: &'a mut Socket,
    subs: &'a mut tokio_stream::StreamMap<String, ItemStream>,
    lagged: &'a CancellationToken,
    shutdown: &'a CancellationToken,
    write_delay: Duration,
}

impl<'a> Writer<'a> {
    pub fn new(
        ws: &'a mut Socket,
        subs: &'a mut tokio_stream::StreamMap<String, ItemStream>,
        lagged: &'a CancellationToken,
        app: &'a crate::http::AppState,
    ) -> Writer<'a> {
        Writer {
            ws,
            subs,
            lagged,
            shutdown: &app.shutdown,
            write_delay: app.config.websocket.write_delay,
        }
    }
}

/// Both protocols' event writing: `first` and whatever else the subscriptions have ready
/// (up to a batch), fed and flushed once, so a subscriber behind by ten events costs one
/// write, not ten. `frame` is the protocol's: the frame an item becomes for this socket
/// (None: nothing to send), or the close it causes; `ended`, the close a flush that could
/// not finish gets.
pub(crate) async fn write_items(
    w: Writer<'_>,
    first: (
        String,
        Result<crate::hub::Item, crate::hub::SubscriptionError>,
    ),
    mut frame: impl FnMut(
        &str,
        Result<crate::hub::Item, crate::hub::SubscriptionError>,
    ) -> Result<Option<Frame>, Close>,
    ended: fn(FlushEnd) -> Close,
) -> Result<(), Close> {
    use futures_util::StreamExt;
    let Writer {
        ws,
        subs,
        lagged,
        shutdown,
        write_delay,
    } = w;
    let mut next = Some(first);
    let mut batch = Batch::new(write_delay);
    while let Some((channel, item)) = next.take() {
        let room = match frame(&channel, item)? {
            Some(message) => {
                if !batch.fits(message.payload().len()) {
                    flush_or_end(ws, lagged, shutdown).await.map_err(ended)?;
                    batch.flushed();
                }
                batch.feed(ws, message).await?
            }
            None => true,
        };
        if room {
            next = subs.next().now_or_never().flatten();
            if next.is_none() && batch.linger().await {
                next = subs.next().now_or_never().flatten();
            }
        }
    }
    flush_or_end(ws, lagged, shutdown).await.map_err(ended)
}

/// How a session ends.
pub(crate) enum Close {
    /// Send this close frame, then wait (bounded) for the peer's.
    With(u16, &'static str),
    /// Fail the connection (RFC 6455 section 7.1.7): send the close frame yawc queued for the
    /// fault, if any, and drop the TCP connection without waiting.
    Fail,
    /// Drop the TCP connection at once: the peer is gone, or what yawc queued is wrong.
    Drop,
}

impl Close {
    pub fn with(code: u16, reason: &'static str) -> Close {
        Close::With(code, reason)
    }
}

/// What reading a frame came to.
pub(crate) enum Received {
    Frame(Frame),
    /// The peer closed (yawc answered its close frame) or the connection dropped.
    Closed,
    /// The peer broke the protocol or a limit: end with this.
    Refused(Close),
}

pub(crate) fn received(r: Result<Frame, WebSocketError>) -> Received {
    match r {
        // A control frame's payload is at most 125 bytes (RFC 6455 section 5.5); yawc takes
        // an oversized close and echoes it, which would break the protocol in turn.
        Ok(frame) if frame.opcode() == OpCode::Close && frame.payload().len() > 125 => {
            Received::Refused(Close::Drop)
        }
        Ok(frame) => Received::Frame(frame),
        Err(WebSocketError::ConnectionClosed | WebSocketError::IoError(_)) => Received::Closed,
        // yawc queues 1003 for a reserved opcode; that code means "a data type I do not
        // accept", where a reserved opcode is a protocol error: fail by dropping instead.
        Err(WebSocketError::InvalidOpCode(_)) => Received::Refused(Close::Drop),
        // For the rest yawc has queued the close frame that names the fault (1002, 1007,
        // 1009...).
        Err(_) => Received::Refused(Close::Fail),
    }
}

/// Ends the connection as `how` says, each step bounded in time.
pub(crate) async fn close(ws: &mut Socket, how: Close) {
    match how {
        Close::Drop => {}
        Close::Fail => {
            // yawc writes its queued frames when the sink is polled for readiness (a plain
            // flush skips them).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                std::future::poll_fn(|cx| ws.poll_ready_unpin(cx)).await?;
                ws.flush().await
            })
            .await;
        }
        Close::With(code, reason) => close_because(ws, code, reason).await,
    }
}

/// Sends a close frame with `code` and `reason` (a message of the moment, say an app's
/// refusal) and completes the closing handshake, bounded in time.
pub(crate) async fn close_because(ws: &mut Socket, code: u16, reason: &str) {
    let frame = Frame::close(code.into(), reason.as_bytes());
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(frame)).await;
    // Read to the peer's close or EOF so the closing handshake completes cleanly.
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while ws.next_frame().await.is_ok() {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(offer: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer.parse().unwrap());
        choose_deflate_offer(&mut h);
        h.get(header::SEC_WEBSOCKET_EXTENSIONS)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn the_first_offer_we_can_honor_is_kept() {
        assert_eq!(
            chosen("permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        assert_eq!(
            chosen("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=15")
                .as_deref(),
            Some("permessage-deflate; server_max_window_bits=15")
        );
        assert_eq!(
            chosen("permessage-deflate; server_max_window_bits=10").as_deref(),
            Some("permessage-deflate; server_max_window_bits=10")
        );
        assert_eq!(chosen("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(chosen("x-webkit-deflate-frame"), None);
    }
}
