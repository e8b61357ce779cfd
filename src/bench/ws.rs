//! The load generator's WebSocket client: the upgrade written by hand, the response head
//! parsed by `httparse`, then the server's frames decoded here, straight off the socket.
//!
//! Why not tokio-tungstenite: in a profile of the subscriber side at 400k deliveries/s, its
//! waker bookkeeping and buffer splitting were a sixth of the generator's CPU, on a box
//! whose two cores the server shares (a slower generator measures itself). What it must not
//! do is cut corners: the handshake's accept key is checked, every frame is decoded whole,
//! pings are answered, and a masked, oversized or malformed frame ends the subscription as a
//! disconnect. Pusher and permessage-deflate subscribers still use tungstenite.

use anyhow::bail;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Frames larger than this end the subscription (the bench's events are small).
const MAX_FRAME: u64 = 16 << 20;

/// Sends the upgrade for `path` and reads the response head: a decoder for the frames, fed
/// whatever of them came with the head, or an error naming the status.
pub async fn open(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    auth: Option<&str>,
) -> anyhow::Result<Frames> {
    let key = generate_key();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n"
    );
    if let Some(token) = auth {
        request.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    let ((), early) = super::exchange(stream, request, "WebSocket", |response| {
        let status = response.code.unwrap_or(0);
        if status != 101 {
            bail!("WebSocket upgrade refused: {status}");
        }
        let accept = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|h| h.value);
        if accept != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
            bail!("WebSocket upgrade: wrong or missing Sec-WebSocket-Accept");
        }
        Ok(())
    })
    .await?;
    Ok(Frames {
        buf: early,
        ..Frames::default()
    })
}

/// Server frames being decoded (RFC 6455 §5.2: a server's frames are never masked).
#[derive(Default)]
pub struct Frames {
    /// Bytes read and not yet decoded.
    buf: Vec<u8>,
    /// A fragmented text message so far.
    message: Vec<u8>,
    fragmented: bool,
}

/// What a `feed` left to do besides the texts it handed on.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    Alive,
    /// The server pinged: send this pong frame (masked, as a client's frames must be).
    Pong(Vec<u8>),
    /// A Close frame, or a frame that breaks the protocol.
    Ended,
}

impl Frames {
    /// Takes more bytes off the socket and hands `text` every whole text message they
    /// complete.
    pub fn feed(&mut self, bytes: &[u8], mut text: impl FnMut(&[u8])) -> Fed {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        let mut pong = None;
        let fed = loop {
            let Some((header, len)) = header(&self.buf[at..]) else {
                break Fed::Alive;
            };
            let Ok(header) = header else {
                break Fed::Ended;
            };
            if (self.buf.len() - at - len) < header.len as usize {
                break Fed::Alive;
            }
            let payload = &self.buf[at + len..at + len + header.len as usize];
            at += len + header.len as usize;
            match (header.opcode, header.fin) {
                (1, true) if !self.fragmented => text(payload),
                (1, false) if !self.fragmented => {
                    self.fragmented = true;
                    self.message.clear();
                    self.message.extend_from_slice(payload);
                }
                (0, fin) if self.fragmented => {
                    self.message.extend_from_slice(payload);
                    if fin {
                        self.fragmented = false;
                        text(&self.message);
                    }
                }
                (2, true) if !self.fragmented => {}
                (9, true) => pong = Some(masked(0xA, payload)),
                (10, true) => {}
                _ => break Fed::Ended, // Close, or a frame out of place.
            }
        };
        self.buf.drain(..at);
        match (fed, pong) {
            (Fed::Alive, Some(p)) => Fed::Pong(p),
            (fed, _) => fed,
        }
    }
}

struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
}

/// A frame's header at the start of `bytes` and its size, or None until it is all there.
fn header(bytes: &[u8]) -> Option<(Result<Header, ()>, usize)> {
    let [b0, b1, ..] = *bytes else { return None };
    if b0 & 0x70 != 0 || b1 & 0x80 != 0 {
        return Some((Err(()), 2)); // reserved bits (no extension here), or masked
    }
    let (len, size) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        n => (n as u64, 2),
    };
    let opcode = b0 & 0x0f;
    let fin = b0 & 0x80 != 0;
    if len > MAX_FRAME || (opcode >= 8 && (len > 125 || !fin)) {
        return Some((Err(()), size));
    }
    Some((Ok(Header { fin, opcode, len }), size))
}

/// A client frame: always masked. The key need not be secret here (it exists to stop cache
/// poisoning through proxies, and the bench talks to loopback only).
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 4];
    let _ = getrandom::fill(&mut key); // a zero key still makes a valid frame
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `bytes` split at `cut`: the texts seen and the last `Fed`.
    fn feed_split(bytes: &[u8], cut: usize) -> (Vec<Vec<u8>>, Fed) {
        let mut frames = Frames::default();
        let mut texts = Vec::new();
        let first = frames.feed(&bytes[..cut], |t| texts.push(t.to_vec()));
        let second = frames.feed(&bytes[cut..], |t| texts.push(t.to_vec()));
        let fed = if first == Fed::Alive { second } else { first };
        (texts, fed)
    }

    #[test]
    fn texts_arrive_whole_however_the_reads_split_them() {
        let long = vec![b'x'; 300];
        let mut bytes = frame(0x81, b"one");
        bytes.extend(frame(0x01, b"tw")); // a fragmented message
        bytes.extend(frame(0x8A, b"")); // an unsolicited pong between its fragments
        bytes.extend(frame(0x80, b"o"));
        bytes.extend(frame(0x82, b"\x00\x01")); // binary: skipped
        bytes.extend(frame(0x81, &long));
        for cut in 0..=bytes.len() {
            let (texts, fed) = feed_split(&bytes, cut);
            assert_eq!(fed, Fed::Alive, "cut at {cut}");
            assert_eq!(
                texts,
                [b"one".to_vec(), b"two".to_vec(), long.clone()],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_ping_is_answered_with_a_masked_pong_of_its_payload() {
        let mut frames = Frames::default();
        let Fed::Pong(pong) = frames.feed(&frame(0x89, b"hi"), |_| {}) else {
            panic!("no pong");
        };
        assert_eq!(pong[0], 0x8A);
        assert_eq!(pong[1], 0x80 | 2);
        let key = &pong[2..6];
        let payload: Vec<u8> = pong[6..]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(payload, b"hi");
    }

    #[test]
    fn close_and_broken_frames_end_the_stream() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("close", frame(0x88, b"\x03\xe8")),
            ("masked", vec![0x81, 0x81, 1, 2, 3, 4, b'a']),
            ("reserved bit", frame(0xC1, b"a")),
            ("continuation without a start", frame(0x80, b"a")),
            ("fragmented ping", frame(0x09, b"")),
        ];
        for (name, bytes) in cases {
            let mut frames = Frames::default();
            let mut texts = 0;
            assert_eq!(frames.feed(&bytes, |_| texts += 1), Fed::Ended, "{name}");
            assert_eq!(texts, 0, "{name}");
        }
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        assert_eq!(
            Frames::default().feed(&huge, |_| {}),
            Fed::Ended,
            "oversized"
        );
    }
}
