//! permessage-deflate (RFC 7692) on the WebSocket: negotiated as configured and read off the
//! wire frame by frame (a raw TCP client here, so nothing hides what the server sent), plus
//! Node's `ws` as an independent implementation of the other side.

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// A WebSocket client that shows each frame's header bits and raw payload.
struct RawWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` the server answered with, if any.
    agreed: Option<String>,
}

/// One frame from the server: was RSV1 (compressed) set, the opcode, the payload as sent.
struct RawFrame {
    compressed: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl RawWs {
    async fn connect(h: &Herald, offer: Option<&str>) -> RawWs {
        let mut tcp = TcpStream::connect(h.addr()).await.unwrap();
        let ext = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n",
            h.addr()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut ws = RawWs {
            tcp,
            buf: Vec::new(),
            agreed: None,
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ws.fill().await;
        };
        let head = String::from_utf8(ws.buf.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        ws.agreed = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            })
            .map(|(_, v)| v.trim().to_string());
        ws
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("timed out reading the WebSocket")
            .unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            self.fill().await;
        }
    }

    /// The next data frame (pings skipped).
    async fn frame(&mut self) -> RawFrame {
        loop {
            self.need(2).await;
            let (b0, b1) = (self.buf[0], self.buf[1]);
            assert_eq!(b1 & 0x80, 0, "server frames are never masked");
            let (len, at) = match b1 & 0x7f {
                126 => {
                    self.need(4).await;
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 => {
                    self.need(10).await;
                    let b: [u8; 8] = self.buf[2..10].try_into().unwrap();
                    (u64::from_be_bytes(b) as usize, 10)
                }
                n => (n as usize, 2),
            };
            self.need(at + len).await;
            let payload = self.buf[at..at + len].to_vec();
            self.buf.drain(..at + len);
            assert_ne!(b0 & 0x80, 0, "Herald sends each message in one frame");
            let frame = RawFrame {
                compressed: b0 & 0x40 != 0,
                opcode: b0 & 0x0f,
                payload,
            };
            if frame.opcode != 0x9 {
                return frame;
            }
        }
    }

    /// Sends a text message, masked as a client must; deflated (RSV1) when `deflate` is given.
    async fn send(&mut self, text: &str, deflate: Option<&mut Compress>) {
        let (rsv1, payload) = match deflate {
            Some(c) => (0x40, deflate_message(c, text.as_bytes())),
            None => (0, text.as_bytes().to_vec()),
        };
        let mut frame = vec![0x80 | rsv1 | 0x1];
        assert!(payload.len() < 126);
        frame.push(0x80 | payload.len() as u8);
        let mask = [7u8, 1, 9, 4];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.unwrap();
    }
}

/// RFC 7692 section 7.2.1: deflate, sync flush, drop the trailing 00 00 ff ff.
fn deflate_message(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// RFC 7692 section 7.2.2: append 00 00 ff ff and inflate.
fn inflate_message(d: &mut Decompress, payload: &[u8]) -> Value {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(256 * 1024);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    serde_json::from_slice(&out).expect("inflates to JSON")
}

fn plain(frame: &RawFrame) -> Value {
    assert!(!frame.compressed);
    assert_eq!(frame.opcode, 0x1);
    serde_json::from_slice(&frame.payload).unwrap()
}

/// An order of the kind real-time apps push: JSON that repeats its keys.
fn order(n: usize) -> Value {
    let lines: Vec<Value> = (0..40)
        .map(|i| json!({"sku": format!("SKU-{i:04}"), "name": "Blue widget, large", "qty": i % 3 + 1, "price_cents": 1299}))
        .collect();
    json!({"order": n, "customer": {"id": "cus_123", "tier": "gold"}, "lines": lines})
}

#[tokio::test]
async fn compression_is_off_unless_configured() {
    let h = Herald::start("");
    let mut ws = RawWs::connect(&h, Some(OFFER)).await;
    assert_eq!(ws.agreed, None, "the offer is declined");
    assert_eq!(plain(&ws.frame().await)["op"], "welcome");
    ws.send(r#"{"op":"subscribe","channel":"orders"}"#, None)
        .await;
    assert_eq!(plain(&ws.frame().await)["op"], "subscribed");
    publish_one(&h, "orders", order(1)).await;
    let event = plain(&ws.frame().await);
    assert_eq!(event["data"], order(1));
    // A compressed frame on a connection that agreed no compression is a protocol error.
    let mut c = Compress::new(Compression::fast(), false);
    ws.send(r#"{"op":"ping"}"#, Some(&mut c)).await;
    let close = ws.frame().await;
    assert_eq!(close.opcode, 0x8);
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        1002
    );
}

#[tokio::test]
async fn pooled_compression_deflates_each_message_on_its_own() {
    let h = Herald::start("[websocket]\ncompression = true\n");
    // Without an offer: nothing changes.
    let mut bare = RawWs::connect(&h, None).await;
    assert_eq!(bare.agreed, None);
    assert_eq!(plain(&bare.frame().await)["op"], "welcome");

    let mut ws = RawWs::connect(&h, Some(OFFER)).await;
    // No context takeover is imposed both ways, so deflate state can be pooled; the
    // client's window is cut to 9 bits (512 bytes) for the server's inflater.
    assert_eq!(
        ws.agreed.as_deref(),
        Some("permessage-deflate; client_max_window_bits=9; server_no_context_takeover; client_no_context_takeover"),
    );
    // Under the threshold (128 bytes): sent as is.
    assert_eq!(plain(&ws.frame().await)["op"], "welcome");
    // The client may compress too (with a fresh context each message, as agreed).
    let sub = r#"{"op":"subscribe","channel":"orders","ref":"compressed subscribe"}"#;
    ws.send(sub, Some(&mut Compress::new(Compression::fast(), false)))
        .await;
    assert_eq!(plain(&ws.frame().await)["ref"], "compressed subscribe");
    for n in 1..=2 {
        publish_one(&h, "orders", order(n)).await;
        let frame = ws.frame().await;
        assert!(frame.compressed, "RSV1 set on a large event");
        // A fresh inflater each time: no message refers to an earlier one.
        let event = inflate_message(&mut Decompress::new(false), &frame.payload);
        assert_eq!(
            (event["op"].clone(), event["data"].clone()),
            (json!("event"), order(n))
        );
        let size = serde_json::to_vec(&event).unwrap().len();
        assert!(
            frame.payload.len() * 4 < size,
            "{} bytes on the wire for {size}",
            frame.payload.len()
        );
    }
}

#[tokio::test]
async fn context_takeover_makes_repeats_cheaper() {
    let h = Herald::start("[websocket]\ncompression = true\ncontext_takeover = true\n");
    let mut ws = RawWs::connect(&h, Some(OFFER)).await;
    assert_eq!(
        ws.agreed.as_deref(),
        Some("permessage-deflate; client_max_window_bits=9")
    );
    assert_eq!(plain(&ws.frame().await)["op"], "welcome");
    ws.send(r#"{"op":"subscribe","channel":"orders"}"#, None)
        .await;
    assert_eq!(plain(&ws.frame().await)["op"], "subscribed");
    let mut inflater = Decompress::new(false);
    let mut sizes = Vec::new();
    for _ in 0..2 {
        publish_one(&h, "orders", order(7)).await;
        let frame = ws.frame().await;
        assert!(frame.compressed);
        let event = inflate_message(&mut inflater, &frame.payload);
        assert_eq!(event["data"], order(7));
        sizes.push(frame.payload.len());
    }
    // The second copy refers back to the first (only its seq and time differ): well under
    // half its size, which no fresh deflater could do.
    assert!(sizes[1] * 2 < sizes[0], "{sizes:?}");
}

/// Node's `ws` (its own permessage-deflate) receives compressed events intact.
#[tokio::test]
async fn node_ws_client_negotiates_and_reads_compressed_events() {
    if !crate::client::node_ready() {
        return;
    }
    let dir = crate::client::client_dir();
    let h = Herald::start("[websocket]\ncompression = true\n");
    let script = r#"
        const WebSocket = require('ws');
        const ws = new WebSocket(process.env.URL, { perMessageDeflate: true });
        ws.on('message', (m) => {
          const v = JSON.parse(m);
          if (v.op === 'welcome') ws.send(JSON.stringify({op: 'subscribe', channel: 'orders'}));
          if (v.op === 'subscribed') console.log('ready');
          if (v.op === 'event') {
            console.log(JSON.stringify({ext: ws.extensions, data: v.data, wire: ws._socket.bytesRead}));
            ws.close();
          }
        });
    "#;
    let mut child = tokio::process::Command::from(tool("node"))
        .arg("-e")
        .arg(script)
        .current_dir(&dir)
        .env("URL", h.ws_url("/v1/ws"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    tokio::time::timeout(WAIT, lines.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.trim(), "ready");
    publish_one(&h, "orders", order(3)).await;
    line.clear();
    tokio::time::timeout(WAIT, lines.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["data"], order(3));
    assert!(
        got["ext"]
            .as_str()
            .unwrap()
            .starts_with("permessage-deflate"),
        "{got}"
    );
    let size = order(3).to_string().len() as u64;
    assert!(got["wire"].as_u64().unwrap() < size / 2, "{got}");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    assert!(status.unwrap().unwrap().success());
}

/// HTTP answers are compressed for a client that accepts it (JSON, the console's files),
/// never an event stream, and never for a client that did not ask.
#[tokio::test]
async fn answers_are_compressed_when_accepted_and_event_streams_never() {
    let h = Herald::start("");
    for i in 0..20 {
        publish_one(
            &h,
            "zip",
            json!({"text": "the same words again and again", "i": i}),
        )
        .await;
    }
    let get = |path: &str, accept: Option<&'static str>| {
        let mut r = client().get(h.url(path));
        if let Some(a) = accept {
            r = r.header("accept-encoding", a);
        }
        r.send()
    };
    let plain = get("/v1/events?channel=zip", None).await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();

    let gz = get("/v1/events?channel=zip", Some("gzip")).await.unwrap();
    assert_eq!(gz.headers()["content-encoding"], "gzip");
    let gz = gz.bytes().await.unwrap();
    let mut json_text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json_text)
        .unwrap();
    assert_eq!(json_text.as_bytes(), &plain[..], "the same answer, gzipped");
    assert!(
        gz.len() < plain.len() / 2,
        "{} of {}",
        gz.len(),
        plain.len()
    );

    let br = get("/v1/events?channel=zip", Some("br")).await.unwrap();
    assert_eq!(br.headers()["content-encoding"], "br");
    assert!(br.bytes().await.unwrap().len() < plain.len() / 2);

    let console = get("/ui/console.js", Some("gzip, br")).await.unwrap();
    assert_eq!(console.status(), 200);
    assert!(console.headers().get("content-encoding").is_some());

    // An event stream is written event by event, never through an encoder.
    let stream = get("/v1/sse?channel=zip&since=0", Some("gzip, br"))
        .await
        .unwrap();
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(
        stream.headers().get("content-encoding").is_none(),
        "{:?}",
        stream.headers()
    );
    let mut stream = stream.bytes_stream();
    let first = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(first.to_vec()).expect("plain text");
    assert!(text.contains("id:") || text.contains("retry:"), "{text}");
}
