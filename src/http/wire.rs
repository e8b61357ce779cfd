//! A plain-TCP connection shared by its task and the hub's fan-out, so an event for a
//! caught-up subscriber is written to the socket by the thread that dispatches it, without
//! waking the connection's task at all. Used by `/v1/ws` and `/app/{key}` (Pusher) sessions
//! and direct SSE streams.
//!
//! Why: in a fan-out of 2,000 subscribers x 200 events/s, three quarters of Herald's user
//! space CPU per delivery was the task's wake-up, its `select!` over every source, the
//! subscription stream and the framing layer's buffering, for one `send` of a frame every
//! subscriber shares. Here that frame (`Event::ws_frame`, `Event::sse_frame`) goes out with
//! one `send` from the hub.
//!
//! The task keeps everything else: reading, pings and heartbeats, replies, history, and any
//! event that arrives while it writes or while the socket is full (those are queued as
//! before, with the same bound, so a slow consumer is still cut). The rule that keeps the
//! byte stream whole: the hub writes only while the connection is not `busy`. A wire starts
//! busy (the task writes its response head or welcome first); the task's writes (through
//! [`WireIo`]) set it, and the task clears it with [`Wire::release`] once what it wrote, and
//! every event it took from a queue, is flushed. A direct write the socket only partly took
//! leaves its tail `pending`: the connection stays busy until the task, woken for it, has
//! written the tail first.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::event::EventRef;
use crate::hub::Direct;

pub struct Wire {
    stream: TcpStream,
    state: Mutex<State>,
    /// The session, woken when a direct write left a tail for it to finish.
    session: AtomicWaker,
}

struct State {
    busy: bool,
    /// What the socket did not take of a direct write: the rest of a frame, then whole
    /// frames (shared with every subscriber, not copied).
    pending: VecDeque<Bytes>,
}

/// Most frames in one direct write (and iovecs in one `writev`); a longer run is queued.
const MAX_RUN: usize = 64;

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            state: Mutex::new(State {
                busy: true,
                pending: VecDeque::new(),
            }),
            session: AtomicWaker::new(),
        }
    }

    /// The shared stream, for what the task reads and writes itself through [`WireIo`].
    fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under the lock can panic; a poisoned one still holds a consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session flushed everything it wrote and holds no event it took: the hub may
    /// write again (unless a tail is still pending).
    pub fn release(&self) {
        let mut state = self.lock();
        if state.pending.is_empty() {
            state.busy = false;
        }
    }

    /// Resolves when a direct write left a tail for the session to write (then flush).
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.session.register(cx.waker());
        if !self.lock().pending.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Writes the pending tail, if any.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Taken out while written (only the session drains, and the hub writes nothing
            // while a tail is pending); put back with what is left whatever happens.
            let mut tail = std::mem::take(&mut self.lock().pending);
            if tail.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let written = self.poll_write_parts(cx, &tail);
            if let Poll::Ready(Ok(n)) = written {
                advance(&mut tail, n);
            }
            self.lock().pending = tail;
            match written {
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_write_parts(
        &self,
        cx: &mut Context<'_>,
        parts: &VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        let slices: Vec<io::IoSlice> = parts
            .iter()
            .take(MAX_RUN * 3)
            .map(|b| io::IoSlice::new(b))
            .collect();
        self.poll_write_vectored(cx, &slices)
    }

    fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if slices.iter().all(|s| s.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(slices) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Writes what the socket takes now with `sendmsg`: a socket needs none of what `write` and
/// `writev` go through first (the file layer's position lock and dispatch), which was a
/// tenth of the dispatch thread's time per delivery.
fn send(stream: &TcpStream, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
    stream.try_io(tokio::io::Interest::WRITABLE, || {
        socket2::SockRef::from(stream).send_vectored(slices)
    })
}

/// Resolves when the hub left the tail of an event for the session to write; never without
/// a shared socket.
pub fn pending(wire: &Option<Arc<Wire>>) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match wire {
        Some(wire) => wire.poll_pending(cx),
        None => std::task::Poll::Pending,
    })
}

/// [`Wire::release`] for a session that may have no shared socket.
pub fn release(wire: &Option<Arc<Wire>>) {
    if let Some(wire) = wire {
        wire.release();
    }
}

/// How a wire frames events.
#[derive(Clone, Debug)]
pub enum Framing {
    /// A WebSocket text frame per event.
    Ws,
    /// An SSE frame per event (with or without its `event:` line), as an HTTP/1.1 chunk
    /// unless the client speaks HTTP/1.0.
    Sse { typed: bool, chunked: bool },
    /// A Pusher protocol frame per event on `channel` (its Pusher name), except those
    /// `socket_id` triggered itself and Pusher's own namespaces, which it never sees.
    Pusher {
        socket_id: Arc<str>,
        channel: Arc<str>,
    },
}

/// Longest chunk-size line: 16 hex digits and CRLF.
const CHUNK_HEAD: usize = 18;

/// A subscription's way to the wire: what the hub is given (see [`Direct`]).
pub struct Taker {
    wire: Arc<Wire>,
    framing: Framing,
}

impl Taker {
    pub fn new(wire: Arc<Wire>, framing: Framing) -> Taker {
        Taker { wire, framing }
    }

    /// The bytes `event` is written as; none for an event this subscriber does not get.
    fn frame<'a>(&self, event: &'a EventRef) -> Option<&'a Bytes> {
        match &self.framing {
            Framing::Ws => Some(event.ws_frame()),
            Framing::Sse { typed, .. } => Some(event.sse_frame_ref(*typed)),
            Framing::Pusher { socket_id, channel } => event
                .extension(|e| crate::http::pusher::PusherEvent::of(e, channel))
                .and_then(|p| p.frame_for(socket_id)),
        }
    }

    fn chunked(&self) -> bool {
        matches!(self.framing, Framing::Sse { chunked: true, .. })
    }

    /// Writes `events` now, as far as the socket takes them: the bytes written and the
    /// bytes there were, or `None` if it took nothing (full, or broken).
    fn write(&self, events: &[EventRef]) -> Option<(usize, usize)> {
        let stream = self.wire.stream();
        let chunked = self.chunked();
        let mut total = 0;
        let written = match events {
            [one] if !chunked => {
                let Some(frame) = self.frame(one) else {
                    return Some((0, 0));
                };
                total = frame.len();
                send(stream, &[io::IoSlice::new(frame)])
            }
            _ => {
                let mut heads = [[0u8; CHUNK_HEAD]; MAX_RUN];
                let mut head_lens = [0usize; MAX_RUN];
                if chunked {
                    for (i, e) in events.iter().enumerate() {
                        let len = self.frame(e).map_or(0, |f| f.len());
                        head_lens[i] = chunk_head(&mut heads[i], len);
                    }
                }
                let mut slices = Vec::with_capacity(events.len() * 3);
                for (i, e) in events.iter().enumerate() {
                    let Some(frame) = self.frame(e) else { continue };
                    total += frame.len();
                    if chunked {
                        total += head_lens[i] + 2;
                        slices.push(io::IoSlice::new(&heads[i][..head_lens[i]]));
                        slices.push(io::IoSlice::new(frame));
                        slices.push(io::IoSlice::new(b"\r\n"));
                    } else {
                        slices.push(io::IoSlice::new(frame));
                    }
                }
                if total == 0 {
                    return Some((0, 0));
                }
                send(stream, &slices)
            }
        };
        written.ok().filter(|&n| n > 0).map(|n| (n, total))
    }

    /// The bytes [`Taker::write`] sends, owned (shared frames and small heads), less the
    /// first `written`.
    fn rest(&self, events: &[EventRef], written: usize) -> VecDeque<Bytes> {
        let mut parts = VecDeque::with_capacity(events.len() * 3);
        for e in events {
            let Some(frame) = self.frame(e) else { continue };
            if self.chunked() {
                let mut head = [0u8; CHUNK_HEAD];
                let n = chunk_head(&mut head, frame.len());
                parts.push_back(Bytes::copy_from_slice(&head[..n]));
                parts.push_back(frame.clone());
                parts.push_back(Bytes::from_static(b"\r\n"));
            } else {
                parts.push_back(frame.clone());
            }
        }
        advance(&mut parts, written);
        parts
    }
}

/// Writes an HTTP/1.1 chunk-size line for `len` bytes; returns its length.
fn chunk_head(out: &mut [u8; CHUNK_HEAD], len: usize) -> usize {
    use std::io::Write;
    let mut cursor = io::Cursor::new(&mut out[..]);
    write!(cursor, "{len:x}\r\n").expect("a usize in hex fits");
    cursor.position() as usize
}

impl Direct for Taker {
    fn offer(&self, events: &[EventRef]) -> bool {
        if events.is_empty() || events.len() > MAX_RUN {
            return false;
        }
        let mut state = self.wire.lock();
        if state.busy {
            return false;
        }
        // Full (or broken): queue them; the task writes them, or finds the fault.
        let Some((written, total)) = self.write(events) else {
            return false;
        };
        if written < total {
            state.busy = true;
            state.pending = self.rest(events, written);
            drop(state);
            self.wire.session.wake();
        }
        let (transport, delivered) = match &self.framing {
            Framing::Ws => (crate::stats::Transport::Ws, events.len()),
            Framing::Sse { .. } => (crate::stats::Transport::Sse, events.len()),
            Framing::Pusher { .. } => (
                crate::stats::Transport::Pusher,
                events.iter().filter(|e| self.frame(e).is_some()).count(),
            ),
        };
        crate::stats::get().delivered(transport, delivered as u64);
        true
    }

    fn claim(&self) {
        self.wire.lock().busy = true;
    }

    fn key(&self) -> usize {
        Arc::as_ptr(&self.wire) as usize
    }
}

/// Drops the first `n` bytes of `parts`.
fn advance(parts: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = parts.front_mut() else {
            return;
        };
        if n >= front.len() {
            n -= front.len();
            parts.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

/// What yawc reads from and writes to: a shared plain socket, or (TLS, or anything hyper
/// could not hand back as a `TcpStream`) the upgraded connection as hyper gives it.
pub enum WireIo {
    Plain {
        wire: Arc<Wire>,
        /// Bytes the client sent after its upgrade request, read by hyper already.
        early: Bytes,
    },
    Upgraded(TokioIo<hyper::upgrade::Upgraded>),
}

impl WireIo {
    /// The connection as hyper upgraded it; a plain TCP one becomes shareable.
    pub fn new(upgraded: hyper::upgrade::Upgraded) -> WireIo {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => WireIo::Plain {
                wire: Arc::new(Wire::new(parts.io.into_inner())),
                early: parts.read_buf,
            },
            Err(upgraded) => WireIo::Upgraded(TokioIo::new(upgraded)),
        }
    }

    pub fn wire(&self) -> Option<&Arc<Wire>> {
        match self {
            WireIo::Plain { wire, .. } => Some(wire),
            WireIo::Upgraded(_) => None,
        }
    }
}

/// The task's own reading and writing on a shared socket; the hub writes only through
/// [`Taker`]. By reference, so a task that reads and writes holds one `Arc` and two pointers.
impl AsyncRead for &Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match self.stream.try_read(unfilled) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for &Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Busy before anything of the task's reaches the socket, and the tail of a direct
        // write before it.
        self.lock().busy = true;
        ready!(self.poll_drain(cx))?;
        Wire::poll_write_vectored(&self, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        // The hub may still hold the socket; shutting down the sending side ends the
        // connection for the peer now, as a TcpStream's own shutdown does.
        let socket = socket2::SockRef::from(&self.stream);
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}

impl AsyncRead for WireIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
            WireIo::Plain { wire, early } => {
                if !early.is_empty() {
                    let n = early.len().min(buf.remaining());
                    buf.put_slice(&early.split_to(n));
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut &**wire).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for WireIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
            WireIo::Plain { wire, .. } => Pin::new(&mut &**wire).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            WireIo::Plain { wire, .. } => Pin::new(&mut &**wire).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WireIo::Upgraded(io) => io.is_write_vectored(),
            WireIo::Plain { .. } => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_flush(cx),
            WireIo::Plain { wire, .. } => Pin::new(&mut &**wire).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
            WireIo::Plain { wire, .. } => Pin::new(&mut &**wire).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_heads_are_hex_sizes_with_crlf() {
        for (len, want) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut head = [0u8; CHUNK_HEAD];
            let n = chunk_head(&mut head, len);
            assert_eq!(std::str::from_utf8(&head[..n]).unwrap(), want);
        }
    }

    #[test]
    fn advance_drops_whole_parts_then_splits_one() {
        let mut parts: VecDeque<Bytes> = ["ab", "cde", "f"]
            .into_iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        advance(&mut parts, 3);
        assert_eq!(parts, ["de", "f"]);
        advance(&mut parts, 3);
        assert!(parts.is_empty());
    }
}
