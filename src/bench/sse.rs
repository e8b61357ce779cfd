//! The load generator's SSE client: the request written by hand, the head parsed by
//! `httparse`, then the chunked body decoded here, straight off the socket.
//!
//! Why not hyper's client: it reads the socket on a connection task and hands each chunk to
//! the response body through a channel, two task wakeups per event per subscriber. At
//! 400k deliveries/s on a box whose cores the server shares, that was a quarter more
//! subscriber-side CPU than a WebSocket subscriber's, and a slower load generator measures
//! itself. What it must not do is cut corners on the stream: every chunk is decoded and
//! checked, and a malformed one ends the subscription as a disconnect.

use anyhow::bail;
use tokio::net::TcpStream;

/// Sends `GET path` and reads the response head: a decoder for the body, fed whatever of
/// it came with the head, or an error naming the status.
pub async fn open(
    stream: &mut TcpStream,
    host: &str,
    path: &str,
    auth: Option<&str>,
) -> anyhow::Result<Body> {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n");
    if let Some(key) = auth {
        request.push_str(&format!("authorization: Bearer {key}\r\n"));
    }
    let (chunked, early) = super::exchange(stream, request, "SSE", |response| {
        let status = response.code.unwrap_or(0);
        if status != 200 {
            bail!("SSE refused: {status}");
        }
        Ok(response.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(h.value)
                    .to_ascii_lowercase()
                    .contains("chunked")
        }))
    })
    .await?;
    let mut body = Body::new(chunked);
    // Whatever of the body came with the head, fed by the first `feed`.
    if chunked {
        body.raw = early;
    } else {
        body.text = early;
    }
    Ok(body)
}

/// A response body being decoded: HTTP/1.1 chunks (or the bytes as they are, without
/// chunked encoding) into SSE lines.
pub struct Body {
    chunked: bool,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// Data bytes left in the current chunk.
    remaining: u64,
    /// The CRLF after a chunk's data is still to come.
    crlf: bool,
    /// Decoded bytes not yet ending a line.
    text: Vec<u8>,
}

impl Body {
    fn new(chunked: bool) -> Body {
        Body {
            chunked,
            raw: Vec::new(),
            remaining: 0,
            crlf: false,
            text: Vec::new(),
        }
    }

    /// Takes more bytes off the socket and hands `line` every whole line they complete
    /// (without its `\n`). False when the body ended or broke its framing.
    pub fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) -> bool {
        let alive = if self.chunked {
            self.raw.extend_from_slice(bytes);
            self.dechunk()
        } else {
            self.text.extend_from_slice(bytes);
            true
        };
        let mut start = 0;
        while let Some(end) = memchr::memchr(b'\n', &self.text[start..]) {
            line(&self.text[start..start + end]);
            start += end + 1;
        }
        self.text.drain(..start);
        alive
    }

    /// Moves the chunk data in `raw` to `text`: false at the last chunk or a bad one.
    fn dechunk(&mut self) -> bool {
        let mut at = 0;
        let alive = loop {
            if self.remaining > 0 {
                let take = (self.raw.len() - at).min(self.remaining as usize);
                self.text.extend_from_slice(&self.raw[at..at + take]);
                at += take;
                self.remaining -= take as u64;
                if self.remaining > 0 {
                    break true;
                }
                self.crlf = true;
            }
            if self.crlf {
                match self.raw.get(at..at + 2) {
                    None => break true,
                    Some(b"\r\n") => {
                        at += 2;
                        self.crlf = false;
                    }
                    Some(_) => break false,
                }
            }
            match httparse::parse_chunk_size(&self.raw[at..]) {
                Ok(httparse::Status::Complete((len, 0))) => {
                    at += len;
                    break false;
                }
                Ok(httparse::Status::Complete((len, size))) => {
                    at += len;
                    self.remaining = size;
                }
                Ok(httparse::Status::Partial) => break true,
                Err(_) => break false,
            }
        };
        self.raw.drain(..at);
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However the socket splits the bytes, the same lines come out, and the last chunk
    /// ends the body.
    #[test]
    fn chunks_split_anywhere_decode_to_the_same_lines() {
        let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
        let wire = [
            chunk("id: 1\n"),
            chunk("data: {\"seq\":1}\n\nid: 2\n"),
            chunk("data: {\"seq\":"),
            chunk("2}\n\n"),
            "0\r\n\r\n".to_string(),
        ]
        .concat();
        let wire = wire.as_bytes();
        for split in 1..wire.len() {
            let mut body = Body::new(true);
            let mut lines = Vec::new();
            let mut alive = true;
            for part in wire.chunks(split) {
                alive = body.feed(part, |l| {
                    lines.push(String::from_utf8_lossy(l).into_owned())
                });
            }
            assert!(!alive, "split {split}: the last chunk ends the body");
            assert_eq!(
                lines,
                [
                    "id: 1",
                    "data: {\"seq\":1}",
                    "",
                    "id: 2",
                    "data: {\"seq\":2}",
                    ""
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn a_bad_chunk_ends_the_body() {
        let mut body = Body::new(true);
        assert!(!body.feed(b"zz\r\nhello", |_| {}));
        let mut body = Body::new(true);
        assert!(!body.feed(b"2\r\nhiXX", |_| {}), "data must end with CRLF");
    }
}
