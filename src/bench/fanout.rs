//! `herald bench fanout` and `herald bench channels`: subscribers receive what a publisher
//! sends at a fixed rate; reports deliveries/s, publish->receive latency (the publisher's
//! timestamp rides in each event's data) and losses.
//!
//! `fanout`: every subscriber on one channel. `channels`: each subscriber on its own channel,
//! the rate spread across them. Works against any server that speaks Herald's WebSocket
//! subscribe (`/v1/ws?channel=`), SSE and `POST /v1/events`, such as `bench/peers/node-ws`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde_json::{json, Value};
use std::sync::LazyLock;
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{
    cpu_secs, find_u64, histogram, now_ns, percentiles, raise_nofile, rss_kib, Run, Sources, Target,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Ws,
    Sse,
    Mix,
    /// The Pusher protocol at `/app/{key}` (publishes go to the app's mapped channel).
    Pusher,
    /// `/v1/ws` offering permessage-deflate (the server needs `[websocket] compression`).
    WsDeflate,
}

impl Transport {
    /// The name as given on the command line (`ws-deflate`), for reports.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

#[derive(Debug, clap::Args)]
pub struct FanoutArgs {
    /// Server URL; the nodes of a cluster comma-separated (subscribers and publishes are
    /// spread over them).
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Which transport the connections use.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,
    /// Events per second, in total.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// How long to publish.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Bytes of padding in each event's data.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Make the padding order-like JSON (line items with SKUs, names, quantities, prices)
    /// instead of one repeated byte, which any compressor would flatter.
    #[arg(long)]
    pub realistic: bool,
    /// Source addresses to spread over (default: one per 25,000 connections).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// The server's pid, to report its RSS and CPU time (same machine).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// With `--transport pusher`: the app, as `ID:KEY`.
    #[arg(long, default_value = "1234:app-key")]
    pub pusher_app: String,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// `channels` only: how many channels the subscribers spread over (subscriber i is on
    /// channel i mod N); 0 = one channel per subscriber.
    #[arg(long, default_value_t = 0)]
    pub channels: usize,
    /// `channels` only: this percentage of subscribers subscribe by a pattern that matches
    /// exactly their channel (`....{c}.*`) instead of by its name.
    #[arg(long, default_value_t = 0)]
    pub pattern_percent: usize,
    /// The server is nginx with nchan laid out as `bench/peers/nchan` does: publish each
    /// event as its own `POST /pub?channel=` whose body is the event's data.
    #[arg(long)]
    pub nchan: bool,
    /// Publish each event in a request of its own instead of one batch per tick: what a
    /// comparison with nchan (one message per request) needs to be like for like.
    #[arg(long)]
    pub single: bool,
    /// An API key for the publishes and the subscriptions (a server with `auth.api_keys`).
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the report as JSON (one object) instead of lines for people.
    #[arg(long)]
    pub json: bool,
}

/// Runs `work` to its end on a thread and current-thread runtime of its own.
async fn apart<F>(work: F) -> anyhow::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let output = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        anyhow::Ok(runtime.block_on(work))
    });
    output.await?
}

/// What one subscriber saw.
struct Seen {
    received: u64,
    /// Received and not yet added to the run's total.
    uncounted: u64,
    /// Latencies (µs) not yet in the run's histogram. One histogram per subscriber was
    /// 140 KB each: at 2,000 subscribers every sample was a cache miss on a core the server
    /// needs too, so samples go to the one shared histogram a few hundred at a time.
    pending: Vec<u64>,
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
    /// Seqs that went backwards or repeated (must stay 0).
    disorder: u64,
    /// Pusher frames carry no seq, and an open-loop publisher's POSTs overlap, so they are
    /// stored in no fixed order of their own numbers: what must hold is that every
    /// subscriber of a channel gets the same order. This folds the order seen into one hash.
    order: Option<u64>,
    disconnected: bool,
}

pub async fn run(args: FanoutArgs, per_channel: bool) -> anyhow::Result<()> {
    let targets = Target::parse_list(&args.server)?;
    raise_nofile();
    let scenario = if per_channel { "channels" } else { "fanout" };
    let run_id = std::process::id();
    let (pusher_id, pusher_key) = args
        .pusher_app
        .split_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap_or_default();
    let pusher = args.transport == Transport::Pusher;
    let channels = match (per_channel, args.channels) {
        (false, _) => 1,
        (true, 0) => args.subscribers,
        (true, n) => n,
    };
    // Channel c's name; publishes go to its Herald channel (the same unless Pusher).
    let name_of = move |c: usize| {
        if per_channel {
            format!("bench.{scenario}.{run_id}.{c}.e")
        } else {
            format!("bench.{scenario}.{run_id}")
        }
    };
    let channel_of = move |i: usize| {
        if pusher {
            format!("pusher/{pusher_id}/{}", name_of(i))
        } else {
            name_of(i)
        }
    };
    let sources = Arc::new(Sources::for_connections(args.subscribers, args.sources));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let ready = Arc::new(AtomicUsize::new(0));
    let received_total = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let mut subscribers = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let kind = match args.transport {
            Transport::Mix if i % 2 == 1 => Transport::Sse,
            Transport::Mix => Transport::Ws,
            t => t,
        };
        let key = pusher_key.clone();
        let auth = args.api_key.clone();
        let ctx = (
            gate.clone(),
            sources.clone(),
            targets[i % targets.len()].clone(),
            ready.clone(),
            received_total.clone(),
            stop_rx.clone(),
            args.nchan,
            latency.clone(),
        );
        let c = i % channels;
        let channel = if pusher {
            name_of(c)
        } else if per_channel && i % 100 < args.pattern_percent {
            // Matches channel c and no other (`.1.*` is not a prefix of `.10.e`).
            format!("bench.{scenario}.{run_id}.{c}.*")
        } else {
            channel_of(c)
        };
        subscribers.push(tokio::spawn(async move {
            let (gate, sources, target, ready, total, stop, nchan, latency) = ctx;
            let permit = gate.acquire_owned().await.expect("gate");
            let ctx = Ctx {
                sources: &sources,
                target: &target,
                permit,
                ready: &ready,
                total: &total,
                stop,
                confirms: !nchan,
                auth: auth.as_deref(),
                latency,
            };
            match kind {
                Transport::Sse => subscribe_sse(ctx, &channel).await,
                Transport::Pusher => subscribe_pusher(ctx, &channel, &key).await,
                Transport::WsDeflate => subscribe_ws_deflate(ctx, &channel).await,
                _ => subscribe_ws(ctx, &channel).await,
            }
        }));
    }
    while ready.load(Ordering::Relaxed) < args.subscribers {
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {} subscribers connected",
                ready.load(Ordering::Relaxed),
                args.subscribers
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if subscribers.iter().any(|s| s.is_finished()) {
            bail!("a subscriber failed to connect (is the server up, and are its limits high enough?)");
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{scenario}: {} subscribers ready in {connect_secs:.1}s; publishing {} events/s for {:?}",
        args.subscribers, args.rate, args.duration
    );
    let rss_start = args.server_pid.and_then(rss_kib);
    let cpu_start = args.server_pid.and_then(cpu_secs);
    let wire_start = loopback_bytes();

    // Publish open-loop: one batch per 10 ms tick on a fixed schedule, each sent without
    // waiting for the one before, and stamped with its scheduled time, so a slow ack never
    // holds back the next publish or hides its own delay (coordinated omission). The
    // publisher's backlog (requests sent and not yet answered) is reported.
    let pad = Arc::new(padding(args.payload, args.realistic));
    let ticks_per_sec = 100u64;
    let tick_len = Duration::from_millis(1000 / ticks_per_sec);
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let most_in_flight = Arc::new(AtomicU64::new(0));
    // From each publish's scheduled time to its ack: the server's ingest and commit, which a
    // delivery's latency includes (its dispatch starts at the commit).
    let acked = Arc::new(std::sync::Mutex::new(histogram()));
    let per_channel_count: Arc<Vec<AtomicU64>> =
        Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect());
    let publish_start = Instant::now();
    let start_ns = now_ns();
    let run = {
        let (published, delivered, in_flight) =
            (published.clone(), received_total.clone(), in_flight.clone());
        Run::start(args.duration, move || {
            format!(
                "published {}, delivered {}, publishes in flight {}",
                published.load(Ordering::Relaxed),
                delivered.load(Ordering::Relaxed),
                in_flight.load(Ordering::Relaxed)
            )
        })
    };
    // The publisher has a thread and runtime of its own: on the subscribers' runtime each
    // tick's send waited behind the thousands of reads the last events woke, so a busy
    // subscriber side delayed the publishes themselves (and the schedule measured that).
    let publisher = {
        let (run, published, failed) = (run.clone(), published.clone(), failed.clone());
        let (in_flight, most_in_flight) = (in_flight.clone(), most_in_flight.clone());
        let (acked, per_channel_count) = (acked.clone(), per_channel_count.clone());
        let (targets, channel_of) = (targets.clone(), channel_of.clone());
        let (rate, key, nchan, pad) = (args.rate, args.api_key.clone(), args.nchan, pad.clone());
        let single = args.single;
        async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(tick_len);
            let mut owed = 0f64;
            let mut scheduled = 0u64;
            let mut ticks = 0u64;
            let mut sent_batches = 0usize;
            let mut publishes = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = run.over() => break,
                    _ = tick.tick() => {}
                }
                // The time this tick was due, whenever the loop gets to it (a late loop catches up
                // with the missed ticks at once, each keeping its own due time).
                let due_ns = start_ns + ticks * tick_len.as_nanos() as u64;
                ticks += 1;
                owed += rate as f64 / ticks_per_sec as f64;
                let n = owed.floor() as usize;
                if n == 0 {
                    continue;
                }
                owed -= n as f64;
                let first = scheduled;
                scheduled += n as u64;
                let batch: Vec<Value> = (0..n)
            .map(|k| {
                let i = first as usize + k;
                json!({"channel": channel_of(i % channels), "data": {"t": due_ns, "i": i, "p": *pad}})
            })
            .collect();
                // Publishes rotate over the nodes of a cluster too.
                sent_batches += 1;
                let base = targets[sent_batches % targets.len()].base.clone();
                let (http, key) = (http.clone(), key.clone());
                let (published, failed, counts) =
                    (published.clone(), failed.clone(), per_channel_count.clone());
                let (in_flight, most, acked) =
                    (in_flight.clone(), most_in_flight.clone(), acked.clone());
                let now_in_flight = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                most.fetch_max(now_in_flight, Ordering::Relaxed);
                publishes.spawn(async move {
                    let key = key.as_deref();
                    let ok = if nchan {
                        publish_nchan(&http, &base, batch).await.is_ok()
                    } else if single {
                        let mut ok = true;
                        for event in &batch {
                            ok &= publish(&http, &base, key, event).await;
                        }
                        ok
                    } else {
                        publish(&http, &base, key, &Value::Array(batch)).await
                    };
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    if ok {
                        let us = (now_ns().saturating_sub(due_ns) / 1000).max(1);
                        let _ = acked.lock().expect("ack lock").record(us);
                        for k in 0..n {
                            counts[(first as usize + k) % channels].fetch_add(1, Ordering::Relaxed);
                        }
                        published.fetch_add(n as u64, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
                // Reap what has finished, so the set holds only what is in flight.
                while publishes.try_join_next().is_some() {}
            }
            // The publishes still in flight finish (each is bounded by the client's own timeouts).
            while publishes.join_next().await.is_some() {}
        }
    };
    apart(publisher).await?;
    let interrupted = run.interrupted();
    let published = published.load(Ordering::Relaxed);
    let failed_events = failed.load(Ordering::Relaxed);
    let most_in_flight = most_in_flight.load(Ordering::Relaxed);
    let per_channel_count: Vec<u64> = per_channel_count
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let publish_secs = publish_start.elapsed().as_secs_f64();
    let expected: u64 = if per_channel {
        (0..args.subscribers)
            .map(|i| per_channel_count[i % channels])
            .sum()
    } else {
        published * args.subscribers as u64
    };
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while received_total.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = publish_start.elapsed().as_secs_f64();
    let rss_end = args.server_pid.and_then(rss_kib);
    let wire = wire_start
        .zip(loopback_bytes())
        .map(|(a, b)| b.saturating_sub(a));
    let cpu = cpu_start
        .zip(args.server_pid.and_then(cpu_secs))
        .map(|(a, b)| b - a);
    let _ = stop_tx.send(true);
    let (mut received, mut disorder, mut disconnected, mut short) = (0u64, 0u64, 0usize, 0usize);
    // Per channel: each complete subscriber's order hash, for subscribers without seqs.
    let mut orders: std::collections::HashMap<usize, Vec<u64>> = Default::default();
    for (i, s) in subscribers.into_iter().enumerate() {
        let seen = s.await??;
        received += seen.received;
        disorder += seen.disorder;
        disconnected += seen.disconnected as usize;
        let want = if per_channel {
            per_channel_count[i % channels]
        } else {
            published
        };
        short += (seen.received < want) as usize;
        if let Some(order) = seen.order.filter(|_| seen.received == want) {
            let channel = if per_channel { i % channels } else { 0 };
            orders.entry(channel).or_default().push(order);
        }
    }
    disorder += orders.values().map(|o| differing(o)).sum::<u64>();
    let lost = expected.saturating_sub(received);
    let report = json!({
        "scenario": scenario, "transport": args.transport.name(),
        "subscribers": args.subscribers, "rate": args.rate, "duration_s": publish_secs,
        "published": published, "expected": expected, "delivered": received, "lost": lost,
        "subscribers_short": short, "disconnected": disconnected, "out_of_order": disorder,
        "deliveries_per_sec": received as f64 / publish_secs,
        "drain_s": drain_secs - publish_secs, "connect_s": connect_secs,
        "latency": percentiles(&latency.lock().expect("latency lock")),
        "server_rss_start_kib": rss_start, "server_rss_end_kib": rss_end,
        "server_cpu_s": cpu,
        "deliveries_per_server_cpu_s": cpu.map(|c| received as f64 / c.max(1e-9)),
        "loopback_bytes": wire,
        "loopback_bytes_per_delivery": wire.map(|w| w as f64 / received.max(1) as f64),
        "open_loop": true, "failed_publishes": failed_events,
        "most_publishes_in_flight": most_in_flight, "interrupted": interrupted,
        "ack_latency": percentiles(&acked.lock().expect("ack lock")),
    });
    if args.json {
        println!("{report}");
    } else {
        let l = &report["latency"];
        println!(
            "{scenario}: {} subscribers ({}), {published} events at {}/s for {publish_secs:.1}s: {received}/{expected} delivered = {:.0} deliveries/s, lost {lost}, out of order {disorder}, disconnected {disconnected}; latency from the scheduled send p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
            args.subscribers, args.transport.name(), args.rate, received as f64 / publish_secs,
            l["p50_ms"], l["p90_ms"], l["p99_ms"], l["p999_ms"], l["max_ms"],
        );
        println!(
            "{scenario}: publisher open-loop: at most {most_in_flight} publishes in flight, {failed_events} events refused; ack from the scheduled send p50 {} ms, p99 {} ms{}",
            report["ack_latency"]["p50_ms"], report["ack_latency"]["p99_ms"],
            if interrupted { "; interrupted (Ctrl-C): the figures cover the time before" } else { "" }
        );
        if let (Some(a), Some(b)) = (rss_start, rss_end) {
            println!("{scenario}: server RSS {a} KiB at start, {b} KiB at end");
        }
        if let Some(c) = cpu {
            println!(
                "{scenario}: server CPU {c:.2}s = {:.0} deliveries per server CPU-second",
                received as f64 / c.max(1e-9)
            );
        }
        if let Some(w) = wire {
            println!(
                "{scenario}: {w} bytes over loopback = {:.0} per delivery (publishes included)",
                w as f64 / received.max(1) as f64
            );
        }
    }
    if lost > 0 || disorder > 0 || failed_events > 0 {
        bail!("{lost} deliveries lost, {disorder} out of order, {failed_events} publishes refused");
    }
    Ok(())
}

/// Samples a subscriber holds before it takes the shared histogram's lock.
const PENDING_SAMPLES: usize = 512;

impl Seen {
    fn new(latency: Arc<std::sync::Mutex<Histogram<u64>>>) -> Seen {
        Seen {
            received: 0,
            uncounted: 0,
            pending: Vec::with_capacity(PENDING_SAMPLES),
            latency,
            disorder: 0,
            order: None,
            disconnected: false,
        }
    }

    /// One event received, sent (by the schedule) at `sent_ns`.
    fn note(&mut self, sent_ns: u64) {
        self.received += 1;
        self.uncounted += 1;
        self.pending
            .push((now_ns().saturating_sub(sent_ns) / 1000).max(1));
        if self.pending.len() == PENDING_SAMPLES {
            self.flush_samples();
        }
    }

    fn flush_samples(&mut self) {
        let mut latency = self.latency.lock().expect("latency lock");
        for &us in &self.pending {
            let _ = latency.record(us);
        }
        self.pending.clear();
    }

    /// Adds what was received since the last count to the run's total (which the drain
    /// waits on).
    fn count(&mut self, total: &AtomicU64) {
        if self.uncounted > 0 {
            total.fetch_add(self.uncounted, Ordering::Relaxed);
            self.uncounted = 0;
        }
    }

    fn finish(mut self, total: &AtomicU64) -> Seen {
        self.count(total);
        self.flush_samples();
        self
    }

    /// Folds one more event number into the order hash (FNV-1a over the numbers).
    fn saw(&mut self, i: u64) {
        let h = self.order.unwrap_or(0xcbf2_9ce4_8422_2325);
        self.order = Some((h ^ i).wrapping_mul(0x0000_0100_0000_01b3));
    }
}

/// The keys `record` looks for, each searcher built once (building one per event showed in
/// the subscriber side's profile).
static T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));
static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static QUOTED_T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"\"t\":"#));
static QUOTED_I: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#"\"i\":"#));

fn record(seen: &mut Seen, text: &[u8], last_seq: &mut u64) {
    let Some(t) = find_u64(text, &T) else {
        return;
    };
    if let Some(seq) = find_u64(text, &SEQ) {
        if seq <= *last_seq {
            seen.disorder += 1;
        }
        *last_seq = seq;
    }
    seen.note(t);
}

/// Feeds `on` each item of `stream` until the run stops, the stream ends, or `on` returns
/// false (a broken connection). Everything already readable is handled before the run's
/// total is updated: one shared count per wakeup instead of one per event, and no new stop
/// future per event (both showed in profiles of the subscriber side, which shares the
/// server's cores).
async fn consume<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    mut stop: watch::Receiver<bool>,
    mut seen: Seen,
    total: &AtomicU64,
    mut on: impl FnMut(&mut Seen, S::Item) -> bool,
) -> Seen {
    let stopped = stop.changed();
    tokio::pin!(stopped);
    'wakeups: loop {
        let mut item = tokio::select! {
            biased;
            _ = &mut stopped => break,
            item = stream.next() => item,
        };
        loop {
            if !item.is_some_and(|it| on(&mut seen, it)) {
                seen.disconnected = true;
                break 'wakeups;
            }
            match futures_util::FutureExt::now_or_never(stream.next()) {
                Some(next) => item = next,
                None => break,
            }
        }
        seen.count(total);
    }
    seen.finish(total)
}

/// `POST /v1/events` of one event or a batch: whether it was acknowledged.
async fn publish(http: &reqwest::Client, base: &str, key: Option<&str>, body: &Value) -> bool {
    let mut request = http.post(format!("{base}/v1/events")).json(body);
    if let Some(k) = key {
        request = request.bearer_auth(k);
    }
    match request.send().await {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            let status = r.status();
            eprintln!(
                "publish failed: {status} {}",
                r.text().await.unwrap_or_default()
            );
            false
        }
        Err(e) => {
            eprintln!("publish failed: {e}");
            false
        }
    }
}

/// nchan takes one message per request, its body delivered as is.
async fn publish_nchan(
    http: &reqwest::Client,
    base: &str,
    batch: Vec<Value>,
) -> anyhow::Result<()> {
    for mut event in batch {
        let channel = event["channel"].as_str().unwrap_or_default().to_string();
        let r = http
            .post(format!("{base}/pub?channel={channel}"))
            .body(event["data"].take().to_string())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("nchan publish failed: {}", r.status());
        }
    }
    Ok(())
}

/// A subscriber's read buffer: tungstenite zeroes all of it before each read, so 16 KiB
/// was a 16 KiB memset per event per subscriber; a few frames fit in this.
const READ_BUFFER: usize = 4 * 1024;

/// What every subscriber task gets.
struct Ctx<'a> {
    sources: &'a Sources,
    target: &'a Target,
    permit: tokio::sync::OwnedSemaphorePermit,
    ready: &'a AtomicUsize,
    total: &'a AtomicU64,
    stop: watch::Receiver<bool>,
    /// The server confirms a WebSocket subscription (Herald does; nchan subscribes silently
    /// with the handshake).
    confirms: bool,
    /// `--api-key`, sent as the handshake's `Authorization` (SSE and `/v1/ws`).
    auth: Option<&'a str>,
    /// The run's one latency histogram.
    latency: Arc<std::sync::Mutex<Histogram<u64>>>,
}

async fn subscribe_ws(ctx: Ctx<'_>, channel: &str) -> anyhow::Result<Seen> {
    let (sources, target, ready, total) = (ctx.sources, ctx.target, ctx.ready, ctx.total);
    let permit = ctx.permit;
    let mut stream = sources.connect(target.addr).await?;
    let path = format!("/v1/ws?channel={channel}");
    let mut frames = super::ws::open(&mut stream, &target.host, &path, ctx.auth).await?;
    let (reader, writer) = stream.into_split();
    let mut reads = tokio_util::io::ReaderStream::with_capacity(reader, READ_BUFFER);
    let mut last_seq = 0;
    let mut seen = Seen::new(ctx.latency);
    // A text handed on; until the server confirms the subscription, one that does so.
    let mut confirmed = !ctx.confirms;
    let mut on_text = |seen: &mut Seen, text: &[u8], confirmed: &mut bool| {
        if *confirmed {
            record(seen, text, &mut last_seq);
        } else if memchr::memmem::find(text, b"\"subscribed\"").is_some() {
            *confirmed = true;
        }
    };
    // Answers a ping: the pong is a few bytes, so a full socket (which would mean the
    // server stopped reading) just drops it.
    let answer = |fed: super::ws::Fed| match fed {
        super::ws::Fed::Alive => true,
        super::ws::Fed::Pong(pong) => {
            let _ = writer.try_write(&pong);
            true
        }
        super::ws::Fed::Ended => false,
    };
    let mut fed = frames.feed(&[], |t| on_text(&mut seen, t, &mut confirmed));
    while !confirmed {
        if !answer(fed) {
            bail!("subscribe failed: the connection ended");
        }
        let Some(read) = reads.next().await else {
            bail!("subscribe failed: the connection closed");
        };
        fed = frames.feed(&read?, |t| on_text(&mut seen, t, &mut confirmed));
    }
    drop(permit);
    ready.fetch_add(1, Ordering::Relaxed);
    if !answer(fed) {
        seen.disconnected = true;
        return Ok(seen.finish(total));
    }
    Ok(consume(&mut reads, ctx.stop, seen, total, |seen, read| {
        let Ok(bytes) = read else { return false };
        let mut confirmed = true;
        answer(frames.feed(&bytes, |t| on_text(seen, t, &mut confirmed)))
    })
    .await)
}

/// A Pusher protocol subscriber: `/app/{key}`, `pusher:subscribe`, then events whose data is
/// the published JSON as a string (so the numbers it carries appear with escaped quotes).
async fn subscribe_pusher(ctx: Ctx<'_>, channel: &str, key: &str) -> anyhow::Result<Seen> {
    let (sources, target, ready, total) = (ctx.sources, ctx.target, ctx.ready, ctx.total);
    let permit = ctx.permit;
    let stream = sources.connect(target.addr).await?;
    let url = format!(
        "ws://{}/app/{key}?protocol=7&client=bench&version=1",
        target.host
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    let subscribe = json!({"event": "pusher:subscribe", "data": {"channel": channel}});
    futures_util::SinkExt::send(&mut ws, Message::Text(subscribe.to_string().into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str().contains("subscription_succeeded") => break,
            Some(Ok(Message::Text(t))) if t.as_str().contains("pusher:error") => {
                bail!("refused: {t}")
            }
            Some(Ok(_)) => continue,
            other => bail!("subscribe failed: {other:?}"),
        }
    }
    drop(permit);
    ready.fetch_add(1, Ordering::Relaxed);
    let seen = Seen::new(ctx.latency);
    Ok(consume(&mut ws, ctx.stop, seen, total, |seen, message| {
        match message {
            Ok(Message::Text(t)) => {
                let text = t.as_bytes();
                if let Some(sent) = find_u64(text, &QUOTED_T) {
                    if let Some(i) = find_u64(text, &QUOTED_I) {
                        seen.saw(i);
                    }
                    seen.note(sent);
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
        true
    })
    .await)
}

/// `/v1/ws` through yawc's client, offering permessage-deflate; frames arrive inflated.
async fn subscribe_ws_deflate(ctx: Ctx<'_>, channel: &str) -> anyhow::Result<Seen> {
    let (sources, target, ready, total) = (ctx.sources, ctx.target, ctx.ready, ctx.total);
    let permit = ctx.permit;
    let stream = sources.connect(target.addr).await?;
    let url = format!("ws://{}/v1/ws?channel={channel}", target.host).parse()?;
    let options = yawc::Options::default().with_compression_level(yawc::CompressionLevel::fast());
    let mut ws = yawc::WebSocket::handshake(url, stream, options).await?;
    loop {
        let frame = ws.next_frame().await?;
        if frame.as_str().contains("\"subscribed\"") {
            break;
        }
    }
    drop(permit);
    ready.fetch_add(1, Ordering::Relaxed);
    let mut last_seq = 0;
    let seen = Seen::new(ctx.latency);
    // yawc's stream ends at an error.
    Ok(consume(&mut ws, ctx.stop, seen, total, |seen, frame| {
        if frame.opcode() == yawc::OpCode::Text {
            record(seen, frame.payload(), &mut last_seq);
        }
        true
    })
    .await)
}

/// The `p` field of each event: `payload` bytes of `x`, or with `realistic` an order's line
/// items (about `payload` bytes of JSON).
fn padding(payload: usize, realistic: bool) -> Value {
    if !realistic {
        return Value::String("x".repeat(payload));
    }
    let mut lines = Vec::new();
    let mut size = 0;
    let mut i = 0u64;
    const NAMES: [&str; 4] = [
        "Blue widget",
        "Red gadget, large",
        "Spare part kit",
        "Gift card",
    ];
    while size < payload {
        let line = json!({
            "sku": format!("SKU-{:05}", (i * 7919) % 100_000),
            "name": NAMES[i as usize % 4],
            "qty": i % 5 + 1,
            "price_cents": 199 + (i * 1337) % 20_000,
            "in_stock": i % 3 != 0,
        });
        size += line.to_string().len() + 1;
        lines.push(line);
        i += 1;
    }
    Value::Array(lines)
}

/// Bytes the loopback interface has sent, from /sys (every byte a bench moves, both ways).
fn loopback_bytes() -> Option<u64> {
    std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes")
        .ok()?
        .trim()
        .parse()
        .ok()
}

async fn subscribe_sse(ctx: Ctx<'_>, channel: &str) -> anyhow::Result<Seen> {
    let (sources, target, ready, total) = (ctx.sources, ctx.target, ctx.ready, ctx.total);
    let permit = ctx.permit;
    let mut stream = sources.connect(target.addr).await?;
    let path = format!("/v1/sse?channel={channel}");
    let mut body = super::sse::open(&mut stream, &target.host, &path, ctx.auth).await?;
    drop(permit);
    ready.fetch_add(1, Ordering::Relaxed);
    let mut last_seq = 0;
    let mut seen = Seen::new(ctx.latency);
    let mut reads = tokio_util::io::ReaderStream::with_capacity(stream, READ_BUFFER);
    // What came with the response head first.
    let alive = body.feed(&[], |line| {
        if line.starts_with(b"data: ") {
            record(&mut seen, line, &mut last_seq);
        }
    });
    if !alive {
        seen.disconnected = true;
        return Ok(seen.finish(total));
    }
    Ok(consume(&mut reads, ctx.stop, seen, total, |seen, read| {
        let Ok(bytes) = read else { return false };
        body.feed(&bytes, |line| {
            if line.starts_with(b"data: ") {
                record(seen, line, &mut last_seq);
            }
        })
    })
    .await)
}

/// How many of a channel's subscribers saw another order than the most common one.
fn differing(orders: &[u64]) -> u64 {
    let mut counts: std::collections::HashMap<u64, u64> = Default::default();
    for o in orders {
        *counts.entry(*o).or_default() += 1;
    }
    let most = counts.values().copied().max().unwrap_or(0);
    orders.len() as u64 - most
}
