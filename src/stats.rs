//! The server's own counters, kept where the work happens and read two ways: `/metrics`
//! exports them (as Prometheus counters and gauges, set at scrape), and a sampler takes one
//! sample a second into a ring of the last minutes that `GET /v1/stats` serves to the
//! operator console. One source for both, so the console and Prometheus never disagree.
//!
//! Plain relaxed atomics in one process-wide value: a delivery adds one to a counter, an
//! idle connection costs nothing, and no part of the pipeline needs a handle passed down to
//! count. (The `metrics` crate's recorder cannot be read back, which the sampler needs.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The ways an event leaves (and the kinds of open connection, webhooks aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
    Pusher,
    Webhook,
}

impl Transport {
    pub const ALL: [Transport; 4] = [
        Transport::Sse,
        Transport::Ws,
        Transport::Pusher,
        Transport::Webhook,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Pusher => "pusher",
            Transport::Webhook => "webhook",
        }
    }
}

/// Commit latency buckets: bucket i holds commits that took < 2^i microseconds (the last
/// one everything slower), enough resolution for a p99 on a chart.
const LATENCY_BUCKETS: usize = 24;

pub struct Stats {
    published: AtomicU64,
    delivered: [AtomicU64; 4],
    connections: [AtomicI64; 4],
    subscriptions: [AtomicI64; 4],
    presence_members: AtomicI64,
    webhook_ok: AtomicU64,
    webhook_failed: AtomicU64,
    commits: AtomicU64,
    commit_latency: [AtomicU64; LATENCY_BUCKETS],
}

static STATS: Stats = Stats {
    published: AtomicU64::new(0),
    delivered: [const { AtomicU64::new(0) }; 4],
    connections: [const { AtomicI64::new(0) }; 4],
    subscriptions: [const { AtomicI64::new(0) }; 4],
    presence_members: AtomicI64::new(0),
    webhook_ok: AtomicU64::new(0),
    webhook_failed: AtomicU64::new(0),
    commits: AtomicU64::new(0),
    commit_latency: [const { AtomicU64::new(0) }; LATENCY_BUCKETS],
};

pub fn get() -> &'static Stats {
    &STATS
}

impl Stats {
    pub fn published(&self, n: u64) {
        self.published.fetch_add(n, Relaxed);
    }

    pub fn delivered(&self, t: Transport, n: u64) {
        self.delivered[t as usize].fetch_add(n, Relaxed);
    }

    pub fn webhook_attempt(&self, ok: bool) {
        if ok {
            self.webhook_ok.fetch_add(1, Relaxed);
        } else {
            self.webhook_failed.fetch_add(1, Relaxed);
        }
    }

    /// One group commit of `events` events that took `took` to become durable.
    pub fn commit(&self, took: Duration, events: usize) {
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
        let bucket = (u64::BITS - micros.leading_zeros()) as usize;
        self.commits.fetch_add(1, Relaxed);
        self.commit_latency[bucket.min(LATENCY_BUCKETS - 1)].fetch_add(1, Relaxed);
        metrics::histogram!("herald_commit_seconds").record(took.as_secs_f64());
        metrics::histogram!("herald_commit_group_events").record(events as f64);
    }

    pub fn connections(&self, t: Transport) -> i64 {
        self.connections[t as usize].load(Relaxed)
    }

    pub fn subscriptions(&self, t: Transport) -> i64 {
        self.subscriptions[t as usize].load(Relaxed)
    }

    /// Sets the counters and gauges kept here on the `metrics` recorder, before a scrape.
    pub fn export(&self) {
        for t in Transport::ALL {
            let name = t.name();
            metrics::counter!("herald_deliveries_total", "transport" => name)
                .absolute(self.delivered[t as usize].load(Relaxed));
            metrics::gauge!("herald_subscriptions_open", "transport" => name)
                .set(self.subscriptions(t) as f64);
            if t != Transport::Webhook {
                metrics::gauge!("herald_connections", "transport" => name)
                    .set(self.connections(t) as f64);
            }
        }
        metrics::gauge!("herald_presence_members").set(self.presence_members.load(Relaxed) as f64);
    }
}

/// Counts something open (a connection, a subscription, a membership) while it lives; one
/// byte, so an idle connection's guards cost it next to nothing.
pub struct Held(Gauge);

#[derive(Clone, Copy)]
enum Gauge {
    Connection(Transport),
    Subscription(Transport),
    Member,
}

impl Gauge {
    fn cell(self) -> &'static AtomicI64 {
        match self {
            Gauge::Connection(t) => &STATS.connections[t as usize],
            Gauge::Subscription(t) => &STATS.subscriptions[t as usize],
            Gauge::Member => &STATS.presence_members,
        }
    }
}

impl Held {
    fn new(g: Gauge) -> Held {
        g.cell().fetch_add(1, Relaxed);
        Held(g)
    }

    pub fn connection(t: Transport) -> Held {
        Held::new(Gauge::Connection(t))
    }

    pub fn subscription(t: Transport) -> Held {
        Held::new(Gauge::Subscription(t))
    }

    pub fn member() -> Held {
        Held::new(Gauge::Member)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.cell().fetch_sub(1, Relaxed);
    }
}

/// One second of the server's life, as the console charts it.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Unix ms at the end of the second.
    pub t: u64,
    pub connections: PerTransport,
    pub subscriptions: PerTransport,
    /// Events committed to the log in this second.
    pub published: u64,
    pub delivered: PerTransport,
    pub webhook_ok: u64,
    pub webhook_failed: u64,
    pub commits: u64,
    /// The 99th percentile of this second's commit latencies (upper bucket bound), or None
    /// without commits.
    pub commit_p99_ms: Option<f64>,
    pub presence_members: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PerTransport {
    pub sse: i64,
    pub ws: i64,
    pub pusher: i64,
    pub webhook: i64,
}

impl PerTransport {
    fn from(f: impl Fn(Transport) -> i64) -> PerTransport {
        PerTransport {
            sse: f(Transport::Sse),
            ws: f(Transport::Ws),
            pusher: f(Transport::Pusher),
            webhook: f(Transport::Webhook),
        }
    }
}

/// Totals at one instant; a sample is the difference of two.
#[derive(Clone, Default)]
struct Totals {
    published: u64,
    delivered: [u64; 4],
    webhook_ok: u64,
    webhook_failed: u64,
    commits: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Totals {
    fn read(s: &Stats) -> Totals {
        Totals {
            published: s.published.load(Relaxed),
            delivered: std::array::from_fn(|i| s.delivered[i].load(Relaxed)),
            webhook_ok: s.webhook_ok.load(Relaxed),
            webhook_failed: s.webhook_failed.load(Relaxed),
            commits: s.commits.load(Relaxed),
            latency: std::array::from_fn(|i| s.commit_latency[i].load(Relaxed)),
        }
    }
}

/// The last `capacity` samples, oldest first.
pub struct History {
    capacity: usize,
    samples: Mutex<VecDeque<Sample>>,
    last: Mutex<Totals>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(1),
            samples: Mutex::new(VecDeque::new()),
            last: Mutex::new(Totals::read(&STATS)),
        }
    }

    /// Takes a sample of what happened since the previous one.
    pub fn sample(&self, now_ms: u64) {
        let now = Totals::read(&STATS);
        let before = std::mem::replace(&mut *self.last.lock().expect("stats"), now.clone());
        let sample = Sample {
            t: now_ms,
            connections: PerTransport::from(|t| STATS.connections(t)),
            subscriptions: PerTransport::from(|t| STATS.subscriptions(t)),
            published: now.published - before.published,
            delivered: PerTransport::from(|t| {
                (now.delivered[t as usize] - before.delivered[t as usize]) as i64
            }),
            webhook_ok: now.webhook_ok - before.webhook_ok,
            webhook_failed: now.webhook_failed - before.webhook_failed,
            commits: now.commits - before.commits,
            commit_p99_ms: p99_ms(&std::array::from_fn(|i| now.latency[i] - before.latency[i])),
            presence_members: STATS.presence_members.load(Relaxed),
        };
        let mut samples = self.samples.lock().expect("stats");
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("stats")
            .iter()
            .cloned()
            .collect()
    }
}

/// How many seconds the console can look back.
pub const HISTORY_SECONDS: usize = 600;

impl History {
    /// A history sampled every second until shutdown.
    pub fn spawn(shutdown: CancellationToken) -> Arc<History> {
        let history = Arc::new(History::new(HISTORY_SECONDS));
        let h = history.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => h.sample(crate::event::now_ms()),
                }
            }
        });
        history
    }
}

/// Installs the Prometheus recorder (None if the process already has one: Herald embedded
/// in another program) and keeps it bounded: the recorder gathers histogram samples until
/// upkeep folds them into buckets, so without upkeep a server nobody scrapes would keep one
/// sample per request forever.
pub fn install_recorder(shutdown: CancellationToken) -> Option<PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const SECONDS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    let handle = PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_events".into()), SIZES))
        .ok()?
        .install_recorder()
        .ok()?;
    let h = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => h.run_upkeep(),
            }
        }
    });
    Some(handle)
}

/// The upper bound (in ms) of the bucket holding the 99th percentile.
fn p99_ms(buckets: &[u64; LATENCY_BUCKETS]) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some((1u64 << i) as f64 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_holding_the_99th_percentile() {
        let mut b = [0u64; LATENCY_BUCKETS];
        assert_eq!(p99_ms(&b), None);
        b[10] = 99; // < 1.024 ms
        b[14] = 1; // < 16.384 ms
        assert_eq!(p99_ms(&b), Some(1.024));
        b[14] = 2;
        assert_eq!(p99_ms(&b), Some(16.384));
    }

    #[test]
    fn a_sample_is_the_difference_since_the_last() {
        let history = History::new(2);
        get().published(5);
        get().delivered(Transport::Ws, 7);
        let held = Held::connection(Transport::Sse);
        history.sample(1);
        get().published(1);
        history.sample(2);
        history.sample(3);
        let samples = history.samples();
        assert_eq!(samples.len(), 2, "the ring keeps its capacity");
        assert_eq!(samples[0].t, 2);
        // Other tests in this process may count too; these two samples saw only our adds
        // unless one ran in between, so compare with at least.
        assert!(samples[0].published >= 1);
        assert!(samples[0].connections.sse >= 1);
        drop(held);
    }
}
