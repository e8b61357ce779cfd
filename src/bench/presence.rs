//! `herald bench presence`: N WebSocket members join one channel, paced over a window, and
//! each keeps its own view of the member count from its subscribe reply and the presence
//! notifications that follow. Reports how long after the last join every view agrees on N,
//! the messages members received, the servers' CPU time, and server memory per member
//! beyond the connection (each connection first subscribes without presence; the RSS growth
//! from then on is what presence costs).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{Barrier, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{cpu_secs, raise_nofile, rss_kib, Sources, Target};

#[derive(Debug, clap::Args)]
pub struct PresenceArgs {
    /// Server URL; the nodes of a cluster comma-separated (members are spread over them).
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Members (one WebSocket each, each its own user).
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// The joins are spread evenly over this window.
    #[arg(long = "duration", visible_alias = "over", default_value = "10s", value_parser = humantime::parse_duration)]
    pub over: Duration,
    /// An API key, sent as each handshake's `Authorization` (a server with `auth.api_keys`).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The channel used.
    #[arg(long, default_value = "bench.presence")]
    pub channel: String,
    /// The servers' pids, comma-separated, for their CPU time and RSS (same machine).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Source addresses to spread over (default: one per 25,000 connections).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// Give up waiting for the views to agree after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub patience: Duration,
    /// Print the report as JSON (one object) instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

/// What every member task shares with the driver.
struct Shared {
    /// Each member's current view of the count (0 until it joined).
    views: Vec<AtomicU64>,
    messages: AtomicU64,
    failed: AtomicUsize,
    joined: AtomicUsize,
    api_key: Option<String>,
}

pub async fn run(args: PresenceArgs) -> anyhow::Result<()> {
    let targets = Target::parse_list(&args.server)?;
    let n = args.members;
    if (raise_nofile() as usize) < n + 100 {
        eprintln!("warning: the open-file limit is below {n} connections");
    }
    let sources = Arc::new(Sources::for_connections(n, args.sources));
    let shared = Arc::new(Shared {
        views: (0..n).map(|_| AtomicU64::new(0)).collect(),
        messages: AtomicU64::new(0),
        failed: AtomicUsize::new(0),
        joined: AtomicUsize::new(0),
        api_key: args.api_key.clone(),
    });
    // Everyone connected (and subscribed without presence) before the clock starts.
    let connected = Arc::new(Barrier::new(n + 1));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let start = Arc::new(tokio::sync::OnceCell::<Instant>::new());
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let member = Member {
            index: i,
            target: targets[i % targets.len()].clone(),
            channel: args.channel.clone(),
            at: args.over.mul_f64(i as f64 / n as f64),
        };
        let (sources, shared, connected, gate, start) = (
            sources.clone(),
            shared.clone(),
            connected.clone(),
            gate.clone(),
            start.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = member
                .run(&sources, &shared, &connected, &gate, &start)
                .await
            {
                if shared.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("presence: first failure: {e:#}");
                }
            }
        }));
    }
    connected.wait().await;
    let failed = shared.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {n} members failed to connect");
    }
    // Let the connections settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: u64 = args.server_pid.iter().filter_map(|p| rss_kib(*p)).sum();
    let cpu_before: f64 = args.server_pid.iter().filter_map(|p| cpu_secs(*p)).sum();
    let started = Instant::now();
    start.set(started).ok();
    // Wait for the joins, then for every view to say n.
    let joins_done = loop {
        if shared.joined.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) >= n {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let run = {
        let shared = shared.clone();
        super::Run::start(args.patience, move || {
            let agree = shared
                .views
                .iter()
                .filter(|v| v.load(Ordering::Relaxed) == n as u64)
                .count();
            format!("{agree} of {n} views agree")
        })
    };
    let consistent = loop {
        let agree = shared
            .views
            .iter()
            .filter(|v| v.load(Ordering::Relaxed) == n as u64)
            .count();
        if agree == n {
            run.end();
            break Some(started.elapsed());
        }
        if run.is_over() {
            eprintln!(
                "presence: only {agree} of {n} views agree after {:?}",
                args.patience
            );
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let cpu: f64 = args
        .server_pid
        .iter()
        .filter_map(|p| cpu_secs(*p))
        .sum::<f64>()
        - cpu_before;
    let rss_after: u64 = args.server_pid.iter().filter_map(|p| rss_kib(*p)).sum();
    for t in &tasks {
        t.abort();
    }
    let per_member = (!args.server_pid.is_empty())
        .then(|| (rss_after.saturating_sub(rss_before) as f64) * 1024.0 / n as f64);
    let report = json!({
        "members": n,
        "nodes": targets.len(),
        "joins_over_s": args.over.as_secs_f64(),
        "last_join_s": joins_done.as_secs_f64(),
        "consistent_s": consistent.map(|c| c.as_secs_f64()),
        "consistent_after_last_join_s": consistent.map(|c| (c.saturating_sub(joins_done)).as_secs_f64()),
        "messages_received": shared.messages.load(Ordering::Relaxed),
        "failed": shared.failed.load(Ordering::Relaxed),
        "server_cpu_s": (!args.server_pid.is_empty()).then_some(cpu),
        "server_bytes_per_member": per_member,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "presence: {n} members on {} node(s), joins over {:.1}s (last at {:.2}s); every view consistent {} after the last join; {} presence messages received; server CPU {}; server memory per member {}",
            targets.len(),
            args.over.as_secs_f64(),
            joins_done.as_secs_f64(),
            consistent.map_or("NEVER".into(), |c| format!("{:.3}s", c.saturating_sub(joins_done).as_secs_f64())),
            shared.messages.load(Ordering::Relaxed),
            per_member.map_or("-".into(), |_| format!("{cpu:.2}s")),
            per_member.map_or("-".into(), |b| format!("{b:.0} B")),
        );
    }
    Ok(())
}

struct Member {
    index: usize,
    target: Target,
    channel: String,
    /// When to join, after the start.
    at: Duration,
}

impl Member {
    async fn run(
        self,
        sources: &Sources,
        shared: &Shared,
        connected: &Barrier,
        gate: &Semaphore,
        start: &tokio::sync::OnceCell<Instant>,
    ) -> anyhow::Result<()> {
        let permit = gate.acquire().await?;
        let connecting = async {
            let stream = sources.connect(self.target.addr).await?;
            let url = format!("ws://{}/v1/ws", self.target.host);
            let config = WebSocketConfig::default()
                .read_buffer_size(4 * 1024)
                .write_buffer_size(0);
            let mut request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url,
                )?;
            if let Some(key) = &shared.api_key {
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {key}").parse()?);
            }
            let (mut ws, _) =
                tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
            let plain = json!({"op": "subscribe", "channel": self.channel});
            ws.send(Message::Text(plain.to_string().into())).await?;
            until_op(&mut ws, "subscribed").await?;
            anyhow::Ok(ws)
        }
        .await;
        drop(permit);
        let ws = match connecting {
            Ok(ws) => Some(ws),
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("presence: connect failed: {e:#}");
                None
            }
        };
        connected.wait().await;
        let mut ws = ws.context("not connected")?;
        let started = loop {
            if let Some(s) = start.get() {
                break *s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep_until((started + self.at).into()).await;
        let join = json!({"op": "subscribe", "channel": self.channel, "presence": true,
                          "user": format!("u{}", self.index)});
        ws.send(Message::Text(join.to_string().into())).await?;
        let reply = until_op(&mut ws, "subscribed").await?;
        let view = &shared.views[self.index];
        view.store(
            reply["presence"]["count"].as_u64().unwrap_or(0),
            Ordering::Relaxed,
        );
        shared.joined.fetch_add(1, Ordering::Relaxed);
        while let Some(message) = ws.next().await {
            if let Message::Text(t) = message? {
                shared.messages.fetch_add(1, Ordering::Relaxed);
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["op"] == "presence" {
                    if let Some(count) = v["count"].as_u64() {
                        view.store(count, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn until_op(ws: &mut Ws, op: &str) -> anyhow::Result<Value> {
    while let Some(message) = ws.next().await {
        if let Message::Text(t) = message? {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["op"] == op {
                return Ok(v);
            }
            if v["op"] == "error" {
                bail!("server refused: {v}");
            }
        }
    }
    bail!("connection closed before {op}")
}
