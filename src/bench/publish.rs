//! `herald bench publish`: HTTP publish throughput over keep-alive connections, single events
//! or batches, acknowledged as durable by the server's policy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};

use super::webhooks::start_receiver;
use super::{cpu_secs, histogram, percentiles, Run, Target};

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
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// API key, when the server has auth.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Webhook endpoints (subscribed to every published channel, delivering to a receiver in
    /// this process that answers 204) busy while publishing: shows whether delivery work
    /// slows ingest. The server must allow delivering to 127.0.0.1.
    #[arg(long, default_value_t = 0)]
    pub webhook_endpoints: usize,
    /// The server's pid, to report its CPU time (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON (one object) instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let targets = Target::parse_list(&args.server)?;
    let prefix = format!("bench.publish.{}", std::process::id());
    let hooks = match args.webhook_endpoints {
        0 => None,
        n => Some(
            Hooks::create(
                &targets[0].base,
                &format!("{prefix}.*"),
                n,
                args.api_key.as_deref(),
            )
            .await?,
        ),
    };
    let cpu_start = args.server_pid.and_then(cpu_secs);
    let events = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run = {
        let (events, failures) = (events.clone(), failures.clone());
        Run::start(args.duration, move || {
            let n = events.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            format!(
                "{n} events acknowledged ({:.0}/s), {} failed requests",
                n as f64 / secs,
                failures.load(Ordering::Relaxed)
            )
        })
    };
    let mut workers = Vec::new();
    for w in 0..args.concurrency.max(1) {
        let target = targets[w % targets.len()].clone();
        let (events, failures, run) = (events.clone(), failures.clone(), run.clone());
        let channel = format!("{prefix}.{w}");
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
            while !run.is_over() {
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
    let interrupted = run.interrupted();
    let cpu = cpu_start
        .zip(args.server_pid.and_then(cpu_secs))
        .map(|(a, b)| b - a);
    let n = events.load(Ordering::Relaxed);
    let failed = failures.load(Ordering::Relaxed);
    let mut report = json!({
        "scenario": "publish", "batch": args.batch, "concurrency": args.concurrency,
        "events": n, "seconds": secs, "events_per_sec": n as f64 / secs,
        "requests_per_sec": latency.len() as f64 / secs, "failed_requests": failed,
        "request_latency": percentiles(&latency), "server_cpu_seconds": cpu,
        "interrupted": interrupted,
    });
    if let Some(hooks) = hooks {
        let during = hooks.received.load(Ordering::Relaxed);
        report["webhooks"] = hooks
            .finish(n * args.webhook_endpoints as u64, during, secs)
            .await?;
    }
    if args.json {
        println!("{report}");
    } else {
        println!(
            "publish: batch {} x {} publishers: {n} events in {secs:.1}s = {:.0} events/s ({:.0} requests/s), request p50 {} ms, p99 {} ms, {failed} failed{}",
            args.batch,
            args.concurrency,
            n as f64 / secs,
            latency.len() as f64 / secs,
            report["request_latency"]["p50_ms"],
            report["request_latency"]["p99_ms"],
            cpu.map(|c| format!(", server CPU {c:.2}s")).unwrap_or_default(),
        );
        if interrupted {
            println!("publish: interrupted (Ctrl-C): the figures cover {secs:.1}s");
        }
        if let Some(w) = report.get("webhooks") {
            println!(
                "webhooks: {} endpoints: {} deliveries while publishing ({:.0}/s), {}/{} in all after {:.1}s",
                args.webhook_endpoints,
                w["during"],
                w["during_per_sec"].as_f64().unwrap_or(0.0),
                w["delivered"],
                w["expected"],
                w["seconds"].as_f64().unwrap_or(0.0),
            );
        }
    }
    if failed > 0 {
        bail!("{failed} publish requests failed");
    }
    Ok(())
}

/// Webhook endpoints kept busy during a publish run, and the receiver counting their POSTs.
struct Hooks {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    ids: Vec<String>,
    received: Arc<AtomicU64>,
}

impl Hooks {
    async fn create(
        base: &str,
        pattern: &str,
        n: usize,
        key: Option<&str>,
    ) -> anyhow::Result<Hooks> {
        let received = Arc::new(AtomicU64::new(0));
        let addr = start_receiver(received.clone()).await?;
        let mut hooks = Hooks {
            http: reqwest::Client::new(),
            base: base.to_string(),
            key: key.map(str::to_string),
            ids: Vec::new(),
            received,
        };
        for i in 0..n {
            let body = json!({"url": format!("http://{addr}/hook/{i}"), "channels": [pattern], "description": "herald bench publish"});
            let mut request = hooks.http.post(format!("{base}/v1/webhooks")).json(&body);
            if let Some(k) = &hooks.key {
                request = request.bearer_auth(k);
            }
            let r = request.send().await?;
            if !r.status().is_success() {
                bail!(
                    "creating a webhook endpoint: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
            let id = r.json::<Value>().await?["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            hooks.ids.push(id);
        }
        Ok(hooks)
    }

    /// Waits (up to a minute) for the deliveries still queued, then deletes the endpoints.
    async fn finish(self, expected: u64, during: u64, secs: f64) -> anyhow::Result<Value> {
        let started = Instant::now();
        while self.received.load(Ordering::Relaxed) < expected
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for id in &self.ids {
            let mut request = self.http.delete(format!("{}/v1/webhooks/{id}", self.base));
            if let Some(k) = &self.key {
                request = request.bearer_auth(k);
            }
            let _ = request.send().await;
        }
        Ok(json!({
            "endpoints": self.ids.len(), "expected": expected, "during": during,
            "during_per_sec": during as f64 / secs,
            "delivered": self.received.load(Ordering::Relaxed),
            "seconds": secs + started.elapsed().as_secs_f64(),
        }))
    }
}
