//! `herald bench webhooks`: deliveries per second from a running Herald to a local receiver,
//! with N endpoints all subscribed to one channel and durability as the server is configured.
//!
//! The server must allow delivering to 127.0.0.1 (`webhooks.allow_private = true` or
//! `allow_hosts = ["127.0.0.1"]`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct WebhooksArgs {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Number of endpoints, each receiving every event.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Events per publish request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Give up waiting for the deliveries after this long.
    #[arg(long = "duration", visible_alias = "timeout", default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// An API key for creating the endpoints and publishing (a server with `auth.api_keys`).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The server's pid, to report deliveries per server CPU-second (same machine only).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the scenario and prints the report.
pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let addr = start_receiver(received.clone()).await?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().context("--api-key")?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let base = args.server.trim_end_matches('/').to_string();
    let channel = format!("bench.webhooks.{}", std::process::id());
    let mut ids = Vec::new();
    for i in 0..args.endpoints {
        let r = http
            .post(format!("{base}/v1/webhooks"))
            .json(&json!({"url": format!("http://{addr}/hook/{i}"), "channels": [channel], "description": "herald bench"}))
            .send()
            .await
            .context("create endpoint")?;
        if !r.status().is_success() {
            bail!(
                "creating endpoint: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        ids.push(
            r.json::<serde_json::Value>().await?["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let expected = (args.events * args.endpoints) as u64;
    let cpu_start = args.server_pid.and_then(super::cpu_secs);
    let started = Instant::now();
    let mut sent = 0;
    while sent < args.events {
        let n = args.batch.min(args.events - sent);
        let batch: Vec<_> = (0..n)
            .map(|i| json!({"channel": channel, "data": {"n": sent + i}}))
            .collect();
        let r = http
            .post(format!("{base}/v1/events"))
            .json(&batch)
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!(
                "publish: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        sent += n;
    }
    let published = started.elapsed();
    let run = {
        let received = received.clone();
        super::Run::start(args.timeout.saturating_sub(published), move || {
            format!(
                "{}/{expected} deliveries received",
                received.load(Ordering::Relaxed)
            )
        })
    };
    while received.load(Ordering::Relaxed) < expected && !run.is_over() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    run.end();
    let elapsed = started.elapsed();
    let got = received.load(Ordering::Relaxed);
    let cpu = cpu_start
        .zip(args.server_pid.and_then(super::cpu_secs))
        .map(|(a, b)| b - a);
    let per_cpu = cpu.map(|c| got as f64 / c.max(1e-9));
    for id in &ids {
        let _ = http.delete(format!("{base}/v1/webhooks/{id}")).send().await;
    }
    let rate = got as f64 / elapsed.as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({"scenario": "webhooks", "endpoints": args.endpoints, "events": args.events,
                   "deliveries": got, "expected": expected, "seconds": elapsed.as_secs_f64(),
                   "publish_seconds": published.as_secs_f64(), "deliveries_per_sec": rate,
                   "server_cpu_seconds": cpu, "deliveries_per_cpu_sec": per_cpu})
        );
    } else {
        println!(
            "webhooks: {} endpoints x {} events: {got}/{expected} deliveries in {:.2}s = {rate:.0} deliveries/s (publishing took {:.2}s){}",
            args.endpoints,
            args.events,
            elapsed.as_secs_f64(),
            published.as_secs_f64(),
            cpu.zip(per_cpu)
                .map(|(c, p)| format!(", server CPU {c:.2}s = {p:.0} deliveries per CPU-second"))
                .unwrap_or_default()
        );
    }
    if got < expected {
        bail!(
            "only {got} of {expected} deliveries arrived within {:?}",
            args.timeout
        );
    }
    Ok(())
}

/// A minimal receiver on 127.0.0.1 that answers 204 and counts.
pub(super) async fn start_receiver(count: Arc<AtomicU64>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(move || {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
