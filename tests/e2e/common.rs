//! Test harness: starts the real `herald` binary on a free port with a temp data dir, and
//! speaks to it over real sockets (reqwest for HTTP and SSE, tokio-tungstenite for WebSocket).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::cli::{SseEvent, SseReader};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for any single wait, so a broken server fails a test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Herald {
    child: Option<Child>,
    /// Extra environment for the server process (kept across restarts; clear it to drop).
    pub env: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub data: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
    pub stderr: mpsc::Receiver<String>,
    /// What the server logged up to `listening on` (the rest comes through `stderr`).
    pub startup_log: Vec<String>,
}

impl Herald {
    /// Starts Herald with default settings plus `toml` (a herald.toml fragment).
    pub fn start(toml: &str) -> Herald {
        Self::start_with_env(toml, &[])
    }

    /// Starts Herald on a port below the kernel's ephemeral range, for a test that restarts it
    /// on the same port: an ephemeral port could meanwhile be handed to some client socket.
    pub fn start_restartable(toml: &str) -> Herald {
        Self::start_on(toml, &[], free_port())
    }

    /// Starts Herald with extra environment variables.
    pub fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Herald {
        Self::start_on(toml, env, 0)
    }

    fn start_on(toml: &str, env: &[(&str, &str)], port: u16) -> Herald {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let config = dir.path().join("herald.toml");
        std::fs::write(&config, toml).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, addr, stderr, startup_log) = spawn_on(port, &data, &config, &env);
        Herald {
            startup_log,
            env,
            child: Some(child),
            addr,
            data,
            config,
            _dir: dir,
            stderr,
        }
    }

    /// Starts again on the same data directory and config (after `kill9` or `terminate`).
    pub fn restart(&mut self) {
        self.restart_on(0);
    }

    /// Restarts on a given port (0: any free one).
    pub fn restart_on(&mut self, port: u16) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        let (child, addr, stderr, startup_log) =
            spawn_on(port, &self.data, &self.config, &self.env);
        self.startup_log = startup_log;
        self.child = Some(child);
        self.addr = addr;
        self.stderr = stderr;
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = tool("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "herald did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the server process, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// The child is returned to `Herald`, whose Drop kills and reaps it.
#[allow(clippy::zombie_processes)]
fn spawn_on(
    port: u16,
    data: &Path,
    config: &Path,
    env: &[(String, String)],
) -> (Child, SocketAddr, mpsc::Receiver<String>, Vec<String>) {
    let mut child = herald_command()
        // info unless the test asks for another level
        .env("HERALD_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("HERALD_TEST_LOG").is_some() {
                eprintln!("[herald] {line}");
            }
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the server never blocks on stderr.
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    let mut startup = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("herald did not log `listening on`");
        startup.push(line.clone());
        let after = line.split("listening on http").nth(1);
        let rest = after.and_then(|r| r.strip_prefix("s://").or_else(|| r.strip_prefix("://")));
        if let Some(rest) = rest {
            // Text logs end the address at a space, JSON logs at the closing quote.
            let addr = rest
                .split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .expect("address")
                .parse()
                .expect("socket address");
            return (child, addr, rx, startup);
        }
    }
}

/// Variables a test's `herald` process may inherit; everything else (a developer's
/// `HERALD_API_KEY`, `HERALD_REDIS_URL`, `HTTP_PROXY`, ...) would change what is tested.
const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "TMPDIR", "LANG", "RUST_BACKTRACE", "USER"];

/// The `herald` binary with a cleared environment plus [`INHERITED_ENV`]; a test adds what it
/// means to set.
pub fn herald_command() -> Command {
    tool(env!("CARGO_BIN_EXE_herald"))
}

/// Any other program a test runs (node, python3, redis-server, ...), with the same cleared
/// environment as [`herald_command`]: a developer's proxy or `NODE_OPTIONS` must not change
/// what is tested. `PATH` is kept, so the test virtualenv's tools are found.
pub fn tool(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
}

/// An HTTP client that never goes through a proxy from the environment.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .expect("client")
}

/// GETs a URL and parses its JSON body.
pub async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    http()
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

/// GETs a URL and returns its body as text.
pub async fn get_text(url: impl reqwest::IntoUrl) -> String {
    http()
        .get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text body")
}

/// One sample of the node's `/metrics`: `series` is the name with its labels as exposed
/// (`herald_x{a="b"}`), `None` when the node does not expose it.
pub async fn metric(h: &Herald, series: &str) -> Option<f64> {
    let text = get_text(h.url("/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

/// POSTs `body` to /v1/events; returns the status and the JSON reply.
pub async fn publish(h: &Herald, body: Value) -> (u16, Value) {
    let r = http()
        .post(h.url("/v1/events"))
        .json(&body)
        .send()
        .await
        .expect("publish");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json reply"))
}

/// Publishes one event and returns its seq, asserting a 201.
pub async fn publish_one(h: &Herald, channel: &str, data: Value) -> u64 {
    let (status, reply) = publish(h, serde_json::json!({"channel": channel, "data": data})).await;
    assert_eq!(status, 201, "{reply}");
    reply["seq"].as_u64().expect("seq")
}

/// Asserts an error reply: status, code, and that the message is a non-empty explanation.
pub fn assert_error(status: u16, reply: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{reply}");
    assert_eq!(reply["error"]["code"], want_code, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.len() > 10,
        "message should explain the error: {reply}"
    );
}

/// A raw SSE reader over a real HTTP response.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    reader: SseReader,
    pending: std::collections::VecDeque<SseEvent>,
    pub raw: Vec<u8>,
    pub headers: reqwest::header::HeaderMap,
}

impl Sse {
    pub async fn connect(h: &Herald, query: &str, last_event_id: Option<u64>) -> Sse {
        let mut req = client().get(h.url(&format!("/v1/sse?{query}")));
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let response = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE connect timeout")
            .expect("SSE connect");
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        Sse {
            body: Box::pin(response.bytes_stream()),
            reader: SseReader::default(),
            pending: Default::default(),
            raw: Vec::new(),
            headers,
        }
    }

    /// The next event (heartbeats are comments, skipped); None when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(WAIT)
            .await
            .expect("timed out waiting for an SSE event")
    }

    /// Like `next`, but `Err` on timeout.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<SseEvent>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(()),
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.pending.extend(self.reader.push(&chunk));
                }
                Ok(_) => return Ok(None),
            }
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn ws_connect(h: &Herald, query: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(h.ws_url(&format!("/v1/ws{query}"))),
    )
    .await
    .expect("WS connect timeout")
    .expect("WS connect");
    ws
}

pub async fn ws_send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("WS send");
}

/// What a WebSocket read produced.
#[derive(Debug)]
pub enum WsRead {
    Json(Value),
    Closed(Option<(u16, String)>),
}

/// Next JSON text message or the close (pings and pongs skipped). One deadline for the
/// whole wait: the server's heartbeat pings must not keep a test waiting forever.
pub async fn ws_read(ws: &mut Ws) -> WsRead {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("timed out waiting for a WS message");
        match message {
            Some(Ok(Message::Text(t))) => {
                return WsRead::Json(serde_json::from_str(t.as_str()).expect("server sent JSON"))
            }
            Some(Ok(Message::Close(frame))) => {
                return WsRead::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                eprintln!("ws_read: {e}");
                return WsRead::Closed(None);
            }
            None => return WsRead::Closed(None),
        }
    }
}

pub async fn ws_json(ws: &mut Ws) -> Value {
    match ws_read(ws).await {
        WsRead::Json(v) => v,
        WsRead::Closed(c) => panic!("expected a message, connection closed: {c:?}"),
    }
}

/// Reads JSON messages until one has `op`, returning it (others are collected into `skipped`).
pub async fn ws_until_op(ws: &mut Ws, op: &str, skipped: &mut Vec<Value>) -> Value {
    loop {
        let v = ws_json(ws).await;
        if v["op"] == op {
            return v;
        }
        skipped.push(v);
    }
}

/// Sends raw bytes on a fresh TCP connection and returns the server's response (head and,
/// by its Content-Length, body) as soon as it is complete, or whatever came before the
/// server closed or `wait` passed. For requests no HTTP client would send: bodies that stall.
pub async fn raw_http(h: &Herald, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(h.addr).await.expect("connect");
    // The server may answer and close before taking everything: not an error here.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| out.len() >= end + 4 + n) {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP response ("HTTP/1.1 408 ..." -> 408), 0 if there is none.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// What a local app (say, behind `herald forward`) received: method, URI, headers, body.
pub type Got =
    std::sync::Arc<std::sync::Mutex<Vec<(String, String, axum::http::HeaderMap, bytes::Bytes)>>>;

/// An HTTP app on a free loopback port that records every request; returns its base URL.
pub async fn local_app() -> (String, Got) {
    let got: Got = Default::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method,
              uri: axum::http::Uri,
              headers: axum::http::HeaderMap,
              body: bytes::Bytes| {
            let g = g.clone();
            async move {
                g.lock()
                    .unwrap()
                    .push((method.to_string(), uri.to_string(), headers, body));
                "ok"
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), got)
}

/// A running `herald forward`, killed when dropped: an assertion that fails while it runs
/// must not leave it behind.
pub struct Forward(Option<Child>);

impl Forward {
    /// Kills it and returns what it printed.
    pub fn stop(mut self) -> std::process::Output {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        child.wait_with_output().expect("herald forward's output")
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `herald forward` from `server`'s `channel` to `to` (stderr piped, for reading after
/// it is stopped).
pub fn spawn_forward(server: &str, channel: &str, to: &str, since: Option<u64>) -> Forward {
    let mut command = herald_command();
    command
        .args([
            "forward",
            "--server",
            server,
            "--channel",
            channel,
            "--to",
            to,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(since) = since {
        command.args(["--since", &since.to_string()]);
    }
    Forward(Some(command.spawn().expect("spawn herald forward")))
}

/// The seqs of a history page, in order.
pub fn page_seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// The one rule for a missing test dependency (redis-server, chromium, openssl, a Python
/// package): the test fails, naming what to install. A test that did not run is never
/// reported as passed; `scripts/test` installs everything the suite needs and runs it.
/// (Declared to return, so callers read as "if missing, stop"; it never does.)
pub fn dependency_missing(what: &str, install: &str) -> bool {
    panic!(
        "{what} is needed and missing: {install} (or run scripts/test, which installs what \
         the tests need)"
    );
}

/// Like `Command::output`, but never waits past `WAIT`: a command that hangs is killed and
/// fails the test instead of hanging the suite.
pub trait OutputWithin {
    fn output_within(&mut self) -> std::process::Output {
        self.output_within_for(WAIT)
    }

    /// The same with a bound of its own (a script of many scenarios gets more).
    fn output_within_for(&mut self, wait: Duration) -> std::process::Output;
}

impl OutputWithin for Command {
    fn output_within_for(&mut self, wait: Duration) -> std::process::Output {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        output_of(child, wait)
    }
}

/// A spawned child's output (what of stdout and stderr is piped and not taken yet), waiting
/// at most `wait`: past it, the child is killed and the test fails.
pub fn output_of(mut child: Child, wait: Duration) -> std::process::Output {
    use std::io::Read;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = child.stdout.take().map(|p| drain(Box::new(p)));
    let stderr = child.stderr.take().map(|p| drain(Box::new(p)));
    let status = wait_within(&mut child, wait);
    let read = |reader: Option<std::thread::JoinHandle<Vec<u8>>>| {
        reader.map_or_else(Vec::new, |r| r.join().expect("pipe reader"))
    };
    std::process::Output {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    }
}

/// Waits for `child` at most `wait`; past it, kills it and fails.
pub fn wait_within(child: &mut Child, wait: Duration) -> ExitStatus {
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a child process was still running after {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `herald serve` with `toml` as its config file (in `dir`) and asserts that it refuses
/// to start, saying `expected` on stderr.
pub fn assert_serve_refuses(dir: &Path, toml: &str, expected: &str) {
    let config = dir.join("herald.toml");
    std::fs::write(&config, toml).unwrap();
    let out = herald_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .output_within();
    assert!(!out.status.success(), "{toml}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(expected), "{toml}: {stderr}");
}

/// GET `path` with `key` as the bearer credential; the JSON answer.
pub async fn get_json_as(h: &Herald, path: &str, key: &str) -> Value {
    http()
        .get(h.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A token minted by `POST /v1/tokens` with `key` (`claims`: its body).
pub async fn mint_token(h: &Herald, key: &str, claims: Value) -> String {
    let r = http()
        .post(h.url("/v1/tokens"))
        .bearer_auth(key)
        .json(&claims)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Publishes `body` with `key`; asserts 201 and returns the seq.
pub async fn publish_as(h: &Herald, key: &str, body: Value) -> u64 {
    let r = http()
        .post(h.url("/v1/events"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["seq"].as_u64().unwrap()
}

/// A free loopback port below the kernel's ephemeral range. Redis is killed and restarted on
/// its port while nodes keep reconnecting to it; a port from the ephemeral range can be
/// handed to one of those reconnecting sockets (a TCP self-connect), and Redis then cannot
/// bind it again.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low.saturating_sub(1));
    loop {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).unwrap();
        let port = from + u16::from_le_bytes(b) % (to - from);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
