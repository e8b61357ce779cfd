//! A lean connection path for `GET /v1/sse`: the accept loop hands such connections here
//! instead of to hyper.
//!
//! Why hand-written: hyper keeps a connection's read buffer (8 KiB) for the connection's whole
//! life, and an SSE connection lives for hours while it is never read again after its request
//! head. At 100k subscribers that buffer alone is ~800 MB. Here the head is parsed with
//! `httparse` (hyper's own parser) from a buffer dropped right after, the request goes
//! through the same router and handler as any other (auth, limits, CORS, errors are not
//! duplicated), and the response is written as HTTP/1.1 chunked frames straight to the
//! socket; once the stream is caught up, the hub writes its events to the socket itself
//! (`wire.rs`). Only the first request of a connection takes this path; a keep-alive connection
//! that asks for SSE later is served by hyper as before.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Response};
use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::wire::{Framing, Taker, Wire};
use super::Connection;

/// Most headers in a request head.
const MAX_HEADERS: usize = 64;
/// Stop gathering ready frames into one write past this many bytes...
const WRITE_BATCH: usize = 64 * 1024;
/// ...or this many frames.
const WRITE_FRAMES: usize = 64;

/// Put in the request's extensions: the socket the stream's events may be written to by the
/// hub directly (`wire.rs`), once the response head is out.
#[derive(Clone)]
pub struct SseWire {
    wire: Arc<Wire>,
    chunked: bool,
}

impl SseWire {
    /// The taker for a subscription whose events go out typed or not.
    pub fn taker(&self, typed: bool) -> Arc<Taker> {
        let framing = Framing::Sse {
            typed,
            chunked: self.chunked,
        };
        Arc::new(Taker::new(self.wire.clone(), framing))
    }
}

/// Whether the connection's first bytes are an SSE request (a cheap peek; short or
/// inconclusive reads go to hyper, which handles everything).
pub async fn is_sse(stream: &TcpStream, wait: Duration) -> bool {
    let mut first = [0u8; 12];
    let peek = tokio::time::timeout(wait, async {
        // The request line may arrive in pieces; a few peeks cover a slow sender's first
        // segment without waiting for a whole head.
        for _ in 0..3 {
            match stream.peek(&mut first).await {
                Ok(n) if n >= 12 => return true,
                Ok(0) | Err(_) => return false,
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    peek && (&first == b"GET /v1/sse?" || &first == b"GET /v1/sse ")
}

/// Serves one SSE request on `stream` and closes it when the event stream ends.
pub async fn serve(
    mut stream: TcpStream,
    conn: Connection,
    router: axum::Router,
    shutdown: CancellationToken,
    head_timeout: Duration,
    max_head: usize,
) {
    let kill = conn.kill.clone();
    // The stream holds its slot in the connection limits for as long as it lives: `conn`
    // itself goes into the request and is dropped once the request is routed.
    let _permit = conn.permit.clone();
    // Reading the head and routing the request are boxed: they end before the stream
    // starts, and inline they would reserve their room (a read buffer, the router's
    // future) in the task for the stream's whole life, which is most of an idle stream's
    // memory.
    let Ok(Some((request, http10))) =
        tokio::time::timeout(head_timeout, Box::pin(read_head(&mut stream, max_head))).await
    else {
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            )
            .await;
        return;
    };
    let wire = Arc::new(Wire::new(stream));
    let mut request = request;
    request.extensions_mut().insert(conn);
    request.extensions_mut().insert(SseWire {
        wire: wire.clone(),
        chunked: !http10,
    });
    let Ok(response) = Box::pin(router.oneshot(request)).await;
    let _ = write_response(wire, response, http10, &kill, &shutdown).await;
}

/// Reads and parses the request head; the buffer is gone once this returns. Returns the
/// request and whether the client speaks HTTP/1.0 (no chunked encoding then).
async fn read_head(stream: &mut TcpStream, max_head: usize) -> Option<(Request<Body>, bool)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let mut builder = Request::builder().method(parsed.method?).uri(parsed.path?);
                for h in parsed.headers.iter() {
                    builder = builder.header(h.name, HeaderValue::from_bytes(h.value).ok()?);
                }
                let http10 = parsed.version == Some(0);
                return builder.body(Body::empty()).ok().map(|r| (r, http10));
            }
            Ok(httparse::Status::Partial) if buf.len() < max_head => continue,
            _ => return None,
        }
    }
}

/// Writes the status line, headers and body. An event stream goes out frame by frame as
/// chunks; anything else (an error) whole. Ends on client EOF, kill, or shutdown.
async fn write_response(
    wire: Arc<Wire>,
    response: Response<Body>,
    http10: bool,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let streaming = parts
        .headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut head = response_head(&parts, http10);
    drop(parts); // not kept in the task for the stream's life
    let (mut reader, mut writer) = (&*wire, &*wire);
    if !streaming {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        head.extend_from_slice(format!("content-length: {}\r\n\r\n", bytes.len()).as_bytes());
        head.extend_from_slice(&bytes);
        writer.write_all(&head).await?;
        return writer.shutdown().await;
    }
    let chunked = !http10;
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    head.extend_from_slice(b"\r\n");
    writer.write_all(&head).await?;
    drop(head);
    // Reads only to notice the client leaving; an SSE client sends nothing after its head.
    let mut probe = [0u8; 16];
    let mut ended = false;
    // Made once, not per frame: each fresh `cancelled()` registers with its token when
    // polled and leaves it when dropped, under the token's lock.
    let mut killed = std::pin::pin!(kill.cancelled());
    let mut shut = std::pin::pin!(shutdown.cancelled());
    // The wire stays busy (the hub writes nothing) until the first frames, the `retry:` and
    // presence preamble, are out.
    while !ended {
        let first = tokio::select! {
            _ = &mut killed => return Ok(()),
            n = reader.read(&mut probe) => match n {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
            // The hub's write of an event left its tail to us.
            () = std::future::poll_fn(|cx| wire.poll_pending(cx)) => None,
            frame = body.frame() => Some(frame),
        };
        let mut out = match first {
            Some(first) => gather(first, &mut body, chunked, &mut ended),
            None => Parts::default(),
        };
        // A full socket must not hold the task forever: the kill switch (slow consumer)
        // and shutdown still end it. Writing anything (even nothing) first finishes a tail
        // the hub left.
        tokio::select! {
            r = write_all_vectored(&mut writer, &mut out) => r?,
            _ = &mut killed => return Ok(()),
            _ = &mut shut => return Ok(()),
        }
        // Every event taken from the queue is written: the hub may write again (unless the
        // body has ended: nothing may follow its last chunk).
        if !ended {
            wire.release();
        }
    }
    writer.shutdown().await
}

/// The status line and headers (without the blank line), closing the connection after.
fn response_head(parts: &axum::http::response::Parts, http10: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    let reason = parts.status.canonical_reason().unwrap_or("Unknown");
    head.extend_from_slice(reason.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"connection: close\r\n");
    head
}

/// `first` and every frame already waiting behind it, as one write: a subscriber behind by
/// ten events costs one syscall, not ten (the WebSocket path batches the same way). The
/// parts are the events' shared frames themselves, not a copy, so a subscriber whose socket
/// is full holds references to frames every subscriber shares and a few chunk headers, not
/// a buffer of its own. Sets `ended` when the stream ended (lagged, expired, shutdown),
/// finishing the body properly.
fn gather(
    first: Option<Result<hyper::body::Frame<Bytes>, axum::Error>>,
    body: &mut Body,
    chunked: bool,
    ended: &mut bool,
) -> Parts {
    let mut out = Parts::default();
    let mut next = Some(first);
    let mut frames = 0;
    while let Some(frame) = next.take() {
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    out.push_chunk(data, chunked);
                    frames += 1;
                }
            }
            Some(Err(_)) | None => {
                if chunked {
                    out.push(Bytes::from_static(b"0\r\n\r\n"));
                }
                *ended = true;
                break;
            }
        }
        if out.len < WRITE_BATCH && frames < WRITE_FRAMES {
            next = body.frame().now_or_never();
        }
    }
    out
}

/// Byte strings written together with `writev`.
#[derive(Default)]
struct Parts {
    parts: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl Parts {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.parts.push_back(b);
        }
    }

    /// One frame, as an HTTP/1.1 chunk unless the client speaks HTTP/1.0.
    fn push_chunk(&mut self, data: Bytes, chunked: bool) {
        if data.is_empty() {
            return;
        }
        if chunked {
            self.push(Bytes::from(format!("{:x}\r\n", data.len())));
            self.push(data);
            self.push(Bytes::from_static(b"\r\n"));
        } else {
            self.push(data);
        }
    }
}

/// Writes every part, as few `writev` calls as the socket allows.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut Parts,
) -> std::io::Result<()> {
    use bytes::Buf;
    // Flushing is what writes a tail the hub left (`wire.rs`), even with nothing to add.
    w.flush().await?;
    while !out.parts.is_empty() {
        let slices: Vec<std::io::IoSlice> = out
            .parts
            .iter()
            .take(64)
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        out.len -= n;
        while n > 0 {
            let front = out.parts.front_mut().expect("written bytes were queued");
            if n >= front.len() {
                n -= front.len();
                out.parts.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}
