//! `herald bench publish`: HTTP publish throughput over keep-alive connections, single events
//! or batches, acknowledged as durable by the server's policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use super::{histogram, percentiles, Target};

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Server URL; the nodes of a cluster comma-separated (publishers are spread over them).
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Concurrent publishers, each on its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Events per request (1 = single-event publishes).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// API key, when the server has auth.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let targets = Target::parse_list(&args.server)?;
    let events = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let target = targets[w % targets.len()].clone();
        let (events, failures) = (events.clone(), failures.clone());
        let (batch, pad, key) = (
            args.batch.max(1),
            "x".repeat(args.payload),
            args.api_key.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("client");
            let url = format!("{}/v1/events", target.base);
            let mut latency = histogram();
            let channel = format!("bench.publish.{}.{w}", std::process::id());
            while Instant::now() < deadline {
                let body = if batch == 1 {
                    json!({"channel": channel, "data": {"p": pad}})
                } else {
                    Value::Array(
                        (0..batch)
                            .map(|_| json!({"channel": channel, "data": {"p": pad}}))
                            .collect(),
                    )
                };
                let mut request = client.post(&url).json(&body);
                if let Some(k) = &key {
                    request = request.bearer_auth(k);
                }
                let t = Instant::now();
                match request.send().await {
                    Ok(r) if r.status().as_u16() == 201 => {
                        let _ = r.bytes().await;
                        events.fetch_add(batch as u64, Ordering::Relaxed);
                        let _ = latency.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latency
        }));
    }
    let mut latency = histogram();
    for w in workers {
        latency.add(&w.await?).ok();
    }
    let secs = started.elapsed().as_secs_f64();
    let n = events.load(Ordering::Relaxed);
    let failed = failures.load(Ordering::Relaxed);
    let report = json!({
        "scenario": "publish", "batch": args.batch, "concurrency": args.concurrency,
        "events": n, "seconds": secs, "events_per_sec": n as f64 / secs,
        "requests_per_sec": latency.len() as f64 / secs, "failed_requests": failed,
        "request_latency": percentiles(&latency),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "publish: batch {} x {} publishers: {n} events in {secs:.1}s = {:.0} events/s ({:.0} requests/s), request p50 {} ms, p99 {} ms, {failed} failed",
            args.batch,
            args.concurrency,
            n as f64 / secs,
            latency.len() as f64 / secs,
            report["request_latency"]["p50_ms"],
            report["request_latency"]["p99_ms"],
        );
    }
    if failed > 0 {
        bail!("{failed} publish requests failed");
    }
    Ok(())
}
