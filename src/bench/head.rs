//! The load generator's hand-written HTTP/1.1 request head, shared by its SSE and WebSocket
//! subscribers (`sse.rs`, `ws.rs`): both read their streams straight off the socket.

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes a request's head (`request`, its lines without the blank one that ends it) and
/// reads the response's, which `check` looks at; returns what it found and the bytes that
/// came after the head. `what` names the protocol in errors.
pub async fn exchange<T>(
    stream: &mut TcpStream,
    mut request: String,
    what: &str,
    check: impl FnOnce(&httparse::Response) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Vec<u8>)> {
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(4096);
    loop {
        if head.len() > 64 * 1024 {
            bail!("{what} response head over 64 KiB");
        }
        if stream.read_buf(&mut head).await? == 0 {
            bail!("{what}: connection closed before the response head");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = response
            .parse(&head)
            .with_context(|| format!("{what} response"))?
        else {
            continue;
        };
        let found = check(&response)?;
        return Ok((found, head.split_off(len)));
    }
}
