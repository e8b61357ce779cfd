//! `herald bench flood`: N subscribers that never read, one that does, and a burst of large
//! events. Reports what the stuck ones cost the server while they are held, whether the
//! healthy reader got everything, how many stuck ones were cut, and whether the server gave
//! its memory back once they were gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use super::idle::handshake;
use super::{raise_nofile, rss_kib, Sources, Target};

#[derive(Debug, clap::Args)]
pub struct FloodArgs {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Subscribers that connect and then never read.
    #[arg(long, default_value_t = 2000)]
    pub stuck: usize,
    /// Events published (in batches of 100).
    #[arg(long, default_value_t = 40_000)]
    pub events: u64,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 1024)]
    pub payload: usize,
    /// `ws` for WebSocket subscribers (stuck and healthy), else SSE.
    #[arg(long)]
    pub ws: bool,
    /// How long to wait after the stuck ones are gone before the last memory reading.
    #[arg(long = "duration", visible_alias = "settle", default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// The server's pid, to read its RSS from /proc (same machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// API key, when the server has auth (HERALD_API_KEY).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the report as JSON (one object) instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.server)?;
    raise_nofile();
    let rss = || args.server_pid.and_then(rss_kib);
    let channel = format!("bench.flood.{}", std::process::id());
    let kind = if args.ws { "ws" } else { "sse" };
    let path = format!("/v1/{kind}?channel={channel}");
    let sources = Sources::for_connections(args.stuck + 1, 1);
    let baseline = rss();
    let mut stuck = Vec::with_capacity(args.stuck);
    for _ in 0..args.stuck {
        stuck.push(handshake(&sources, &target, &path, !args.ws, args.api_key.as_deref()).await?);
    }
    let received = Arc::new(AtomicU64::new(0));
    let healthy = {
        let mut stream =
            handshake(&sources, &target, &path, !args.ws, args.api_key.as_deref()).await?;
        let (received, want, ws) = (received.clone(), args.events, args.ws);
        tokio::spawn(async move {
            // Counts events by a marker each one carries once (SSE `id:` lines, WS `"op":"event"`).
            let marker: &[u8] = if ws { b"\"op\":\"event\"" } else { b"\nid: " };
            let mut buf = vec![0u8; 64 * 1024];
            let mut carry = Vec::new();
            while received.load(Ordering::Relaxed) < want {
                let n = match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                carry.extend_from_slice(&buf[..n]);
                let found = carry.windows(marker.len()).filter(|w| *w == marker).count();
                received.fetch_add(found as u64, Ordering::Relaxed);
                let keep = carry.len().saturating_sub(marker.len() - 1);
                carry.drain(..keep);
            }
        })
    };
    let connected = rss();
    let peak = Arc::new(AtomicU64::new(connected.unwrap_or(0)));
    let sampler = {
        let (peak, pid) = (peak.clone(), args.server_pid);
        tokio::spawn(async move {
            loop {
                if let Some(v) = pid.and_then(rss_kib) {
                    peak.fetch_max(v, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = Instant::now();
    publish_all(&target, &channel, &args).await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let _ = tokio::time::timeout(Duration::from_secs(60), healthy).await;
    sampler.abort();
    let during = peak.load(Ordering::Relaxed);
    // Read what each stuck socket holds: the ones the server cut end with EOF.
    let mut cut = 0;
    for mut s in stuck {
        let mut buf = vec![0u8; 256 * 1024];
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        cut += usize::from(ended.unwrap_or(false));
    }
    tokio::time::sleep(args.settle).await;
    let settled = rss();
    report(
        &args,
        baseline,
        connected,
        during,
        settled,
        cut,
        &received,
        publish_secs,
    )
}

async fn publish_all(target: &Target, channel: &str, args: &FloodArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let pad = "x".repeat(args.payload);
    let mut sent = 0;
    while sent < args.events {
        let n = (args.events - sent).min(100);
        let body = Value::Array(
            (0..n)
                .map(|_| json!({"channel": channel, "data": {"p": pad}}))
                .collect(),
        );
        let mut request = client
            .post(format!("{}/v1/events", target.base))
            .json(&body);
        if let Some(k) = &args.api_key {
            request = request.bearer_auth(k);
        }
        let status = request.send().await?.status();
        if status.as_u16() != 201 {
            bail!("publish answered {status}");
        }
        sent += n;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &FloodArgs,
    baseline: Option<u64>,
    connected: Option<u64>,
    peak: u64,
    settled: Option<u64>,
    cut: usize,
    received: &AtomicU64,
    publish_secs: f64,
) -> anyhow::Result<()> {
    let got = received.load(Ordering::Relaxed);
    let per_stuck = match (connected, args.stuck) {
        (Some(c), n) if n > 0 => Some(peak.saturating_sub(c) as f64 / n as f64),
        _ => None,
    };
    let report = json!({
        "scenario": "flood", "transport": if args.ws { "ws" } else { "sse" },
        "stuck": args.stuck, "events": args.events, "payload": args.payload,
        "healthy_received": got, "stuck_cut": cut, "publish_seconds": publish_secs,
        "rss_kib": {"baseline": baseline, "connected": connected, "peak": peak, "settled": settled},
        "peak_kib_per_stuck": per_stuck,
    });
    if args.json {
        println!("{report}");
    } else {
        let show = |v: Option<u64>| v.map_or("?".into(), |v| format!("{:.1}", v as f64 / 1024.0));
        println!(
            "flood: healthy reader got {got}/{}; {cut}/{} stuck cut; server RSS MiB: baseline {}, connected {}, peak {}, {:?} after {}; {} KiB per stuck subscriber at peak",
            args.events,
            args.stuck,
            show(baseline),
            show(connected),
            show(Some(peak)),
            args.settle,
            show(settled),
            per_stuck.map_or("?".into(), |v| format!("{v:.1}")),
        );
    }
    if got < args.events {
        bail!("the healthy reader got {got} of {} events", args.events);
    }
    Ok(())
}
