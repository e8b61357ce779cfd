//! `herald bench idle`: open N connections (SSE, WebSocket, or a mix), hold them, and report
//! the connect rate and the server's memory growth per connection.
//!
//! Clients here are as thin as possible (a raw handshake, then a socket read into a small
//! buffer) so the generator itself fits 100,000 connections beside the server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::{raise_nofile, rss_kib, Sources, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Sse,
    Ws,
    Mix,
}

impl Transport {
    /// The name as given on the command line, for reports.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Connections to open.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Which transport the connections use.
    #[arg(long, value_enum, default_value_t = Transport::Mix)]
    pub transport: Transport,
    /// How long to hold them once all are open.
    #[arg(long = "duration", visible_alias = "hold", default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// An API key, sent as each handshake's `Authorization` (a server with `auth.api_keys`).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The server's pid, to read its RSS from /proc (same machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Source addresses to spread over (default: one per 25,000 connections).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// Token for servers with auth (sent as ?token=).
    #[arg(long, env = "HERALD_TOKEN")]
    pub token: Option<String>,
    /// Each connection subscribes to its own pattern `user:{i}:*` instead of a channel (the
    /// cost of many patterned subscriptions to everyone else's publishes).
    #[arg(long)]
    pub patterns: bool,
    /// Print the report as JSON (one object) instead of lines for people.
    #[arg(long)]
    pub json: bool,
    /// Also be the app behind the server's backend hooks: answer every POST at this loopback
    /// address at once with `{"result":{"user":"bench","channels":["*"]}}` (point the server's
    /// `proxy.connect_url` here to measure the connect hook's cost).
    #[arg(long, value_name = "ADDR")]
    pub hook_app: Option<std::net::SocketAddr>,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.server)?;
    if let Some(addr) = args.hook_app {
        serve_hook_app(addr).await?;
    }
    let nofile = raise_nofile();
    if (nofile as usize) < args.connections + 100 {
        eprintln!(
            "warning: open-file limit {nofile} is below {} connections",
            args.connections
        );
    }
    let sources = Arc::new(Sources::for_connections(args.connections, args.sources));
    let rss_before = args.server_pid.and_then(rss_kib);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let open = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // Each handshake's time, from the connect to the server's answer.
    let latency = Arc::new(std::sync::Mutex::new(super::histogram()));
    let token = args
        .token
        .as_deref()
        .map(|t| format!("&token={t}"))
        .unwrap_or_default();
    let started = Instant::now();
    let mut holders = Vec::with_capacity(args.connections);
    let mut last_progress = Instant::now();
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        let sse = match args.transport {
            Transport::Sse => true,
            Transport::Ws => false,
            Transport::Mix => i % 2 == 0,
        };
        let (sources, target, open_n, failed_n) = (
            sources.clone(),
            target.clone(),
            open.clone(),
            failed.clone(),
        );
        let channel = if args.patterns {
            format!("user:{i}:*")
        } else {
            format!("bench.idle.{}", i % 1000)
        };
        let path = format!(
            "/v1/{}?channel={channel}{token}",
            if sse { "sse" } else { "ws" },
        );
        let key = args.api_key.clone();
        let latency = latency.clone();
        holders.push(tokio::spawn(async move {
            let began = Instant::now();
            let stream = match tokio::time::timeout(
                Duration::from_secs(15),
                handshake(&sources, &target, &path, sse, key.as_deref()),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("handshake timed out")),
            };
            match stream {
                Ok(mut stream) => {
                    let took = began.elapsed().as_micros() as u64;
                    let _ = latency.lock().expect("latency").record(took.max(1));
                    open_n.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    // Hold: read and discard (heartbeats) until the server or we end it.
                    let mut buf = [0u8; 256];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                    open_n.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if failed_n.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("idle: first failure: {e:#}");
                    }
                    drop(permit);
                }
            }
        }));
        if last_progress.elapsed() > Duration::from_secs(2) {
            last_progress = Instant::now();
            eprintln!(
                "idle: {} open, {} failed, {:.0}s",
                open.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // Wait for the last handshakes.
    let _ = gate.acquire_many(args.concurrency.max(1) as u32).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    let opened = open.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    let run = {
        let open = open.clone();
        super::Run::start(args.hold, move || {
            format!("{} connections open", open.load(Ordering::Relaxed))
        })
    };
    run.over().await;
    let still_open = open.load(Ordering::Relaxed);
    for h in &holders {
        h.abort();
    }
    let per_conn_kib = match (rss_before, rss_after) {
        (Some(a), Some(b)) if opened > 0 => Some((b.saturating_sub(a)) as f64 / opened as f64),
        _ => None,
    };
    let connect_latency = super::percentiles(&latency.lock().expect("latency"));
    let report = json!({
        "scenario": "idle", "transport": args.transport.name(),
        "requested": args.connections, "opened": opened, "failed": failed.load(Ordering::Relaxed),
        "still_open_after_hold": still_open, "connect_seconds": connect_secs,
        "connects_per_sec": opened as f64 / connect_secs, "connect_latency": connect_latency,
        "concurrency": args.concurrency, "hook_app": args.hook_app.is_some(),
        "server_rss_before_kib": rss_before, "server_rss_after_kib": rss_after,
        "server_kib_per_connection": per_conn_kib, "sources": sources_count(&sources),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "idle: {opened}/{} connections ({}) in {connect_secs:.1}s = {:.0} connects/s (handshake p50 {} ms, p99 {} ms); {} still open after {:?}; server RSS {} -> {} KiB = {} KiB per connection",
            args.connections,
            args.transport.name(),
            opened as f64 / connect_secs,
            connect_latency["p50_ms"],
            connect_latency["p99_ms"],
            still_open,
            args.hold,
            rss_before.map_or("?".into(), |v| v.to_string()),
            rss_after.map_or("?".into(), |v| v.to_string()),
            per_conn_kib.map_or("?".into(), |v| format!("{v:.2}")),
        );
    }
    if opened < args.connections {
        bail!("only {opened} of {} connections opened", args.connections);
    }
    Ok(())
}

fn sources_count(s: &Sources) -> usize {
    s.count
}

/// A raw SSE request or WebSocket upgrade; returns the socket once the server accepted.
pub(super) async fn handshake(
    sources: &Sources,
    target: &Target,
    path: &str,
    sse: bool,
    api_key: Option<&str>,
) -> anyhow::Result<TcpStream> {
    let mut stream = sources.connect(target.addr).await?;
    let auth = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = if sse {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{auth}\r\n",
            target.host
        )
    } else {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n",
            target.host
        )
    };
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() > 8192 {
            bail!("connection closed during the handshake");
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let want: &[u8] = if sse {
        b"HTTP/1.1 200"
    } else {
        b"HTTP/1.1 101"
    };
    if !head.starts_with(want) {
        bail!(
            "handshake refused: {}",
            String::from_utf8_lossy(&head[..head.len().min(40)])
        );
    }
    Ok(stream)
}

/// The app behind the server's hooks, answering at once: what a hook costs Herald itself,
/// with the app's own work taken out. Loopback only, like every bench target.
async fn serve_hook_app(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        bail!("--hook-app must be a loopback address, not {addr}");
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().fallback(axum::routing::post(|| async {
        axum::Json(json!({"result": {"user": "bench", "channels": ["*"]}}))
    }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
