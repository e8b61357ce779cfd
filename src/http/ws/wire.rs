//! A plain-TCP WebSocket connection shared by its session task and the hub's fan-out, so an
//! event for a caught-up subscriber is written to the socket by the thread that dispatches
//! it, without waking the session at all.
//!
//! Why: in a fan-out of 2,000 subscribers x 200 events/s, three quarters of Herald's user
//! space CPU per delivery was the session's wake-up, its `select!` over every source, the
//! subscription stream and yawc's buffering, for one `send` of a frame every subscriber
//! shares. Here that frame (`Event::ws_frame`) goes out with one `send` from the hub.
//!
//! The task keeps everything else: reading, pings, replies, history, and any event that
//! arrives while it writes or while the socket is full (those are queued as before, with the
//! same bound, so a slow consumer is still cut). The rule that keeps the byte stream whole:
//! the hub writes only while the connection is not `busy`; the session's writes (through
//! yawc, via [`WireIo`]) set it, and the session clears it with [`Wire::release`] once what
//! it wrote, and every event it took from a queue, is flushed. A direct write the socket only
//! partly took leaves its tail `pending`: the connection is busy until the session, woken
//! for it, has written the tail first.

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

#[derive(Default)]
struct State {
    busy: bool,
    /// What the socket did not take of a direct write: the rest of a frame, then whole
    /// frames (shared with every subscriber, not copied).
    pending: VecDeque<Bytes>,
}

/// Most frames in one direct write (and iovecs in one `writev`); a longer run is queued.
const MAX_RUN: usize = 64;

impl Wire {
    fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            state: Mutex::default(),
            session: AtomicWaker::new(),
        }
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
            .take(MAX_RUN)
            .map(|b| io::IoSlice::new(b))
            .collect();
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(&slices) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(0) if !buf.is_empty() => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                }
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Direct for Wire {
    fn offer(&self, events: &[EventRef]) -> bool {
        if events.len() > MAX_RUN {
            return false;
        }
        let mut state = self.lock();
        if state.busy {
            return false;
        }
        let written = match events {
            [one] => self.stream.try_write(one.ws_frame()),
            _ => {
                let slices: Vec<io::IoSlice> = events
                    .iter()
                    .map(|e| io::IoSlice::new(e.ws_frame()))
                    .collect();
                self.stream.try_write_vectored(&slices)
            }
        };
        // Full (or broken): queue them; the session writes them, or finds the fault.
        let Ok(n) = written
            .map_err(drop)
            .and_then(|n| if n == 0 { Err(()) } else { Ok(n) })
        else {
            return false;
        };
        let total: usize = events.iter().map(|e| e.ws_frame().len()).sum();
        if n < total {
            let mut tail: VecDeque<Bytes> = events.iter().map(|e| e.ws_frame().clone()).collect();
            advance(&mut tail, n);
            state.busy = true;
            state.pending = tail;
            drop(state);
            self.session.wake();
        }
        crate::stats::get().delivered(crate::stats::Transport::Ws, events.len() as u64);
        true
    }

    fn claim(&self) {
        self.lock().busy = true;
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
                loop {
                    ready!(wire.stream.poll_read_ready(cx))?;
                    let unfilled = buf.initialize_unfilled();
                    match wire.stream.try_read(unfilled) {
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
            WireIo::Plain { wire, .. } => {
                // Busy before anything of the session's reaches the socket, and the tail of
                // a direct write before it.
                wire.lock().busy = true;
                ready!(wire.poll_drain(cx))?;
                wire.poll_write_some(cx, buf)
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_flush(cx),
            WireIo::Plain { wire, .. } => wire.poll_drain(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WireIo::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
            WireIo::Plain { wire, .. } => {
                ready!(wire.poll_drain(cx))?;
                // The hub may still hold the socket; shutting down the sending side ends the
                // connection for the peer now, as a TcpStream's own shutdown does.
                let socket = socket2::SockRef::from(&wire.stream);
                Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
            }
        }
    }
}
