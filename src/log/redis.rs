//! The shared log on Redis, for running many nodes as one cluster.
//!
//! Every node appends through one Lua script that takes the next seq (`INCR`) and writes the
//! event to the log stream (`XADD <seq>-0`) in one atomic step, so the whole cluster has one
//! seq order and a stream ID *is* the seq. Reads are scripts too, so a page comes from one
//! consistent state (never half-trimmed). Live fan-out between nodes is a blocking `XREAD` on
//! the log stream from each node's last seq: every node receives every event once, in order,
//! and a node that was cut off (Redis restart, network pause) continues from where it was, so
//! the gap fills itself. Pub/sub would need a separate gap-detection and refill path for
//! exactly that case; the stream read is both.
//!
//! Keys (under `redis.prefix`, default `herald`):
//! - `P:seq`: last seq ever assigned (never reused: it survives trimming)
//! - `P:oldest`: first retained seq (absent: 1)
//! - `P:log`: stream, ID `<seq>-0`, fields `c` channel, `k` type (or empty), `t` time ms,
//!   `e` envelope
//! - `P:ch:<channel>`: stream of the channel's seqs (an index for history reads), `P:channels`
//!   the set of indexed channels (for trimming)
//! - `P:dedup:<channel>|<id>`: publisher id, scoped to its channel (`|` cannot occur in a
//!   channel name) -> seq, expiring after the dedup window
//!
//! Durability is Redis's: run it with `appendonly yes` and `appendfsync always` for the
//! embedded store's `fsync` guarantee (README, "Running a cluster").
//!
//! Every script that writes starts with a `#!lua` shebang (Redis 7+): Redis then refuses it
//! up front when out of memory, instead of failing at some write in the middle and leaving
//! half of it applied (scripts are atomic, but not rolled back).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Appended, Bounds, CommitListener, Log, LogError, Page};
use crate::config::LogConfig;
use crate::event::{now_ms, push_envelope_tail, Event, EventRef, Filter, NewEvent};
use crate::store::StoreError;

mod connect;
mod follow;
mod retention;
pub mod sentinel;
mod stream;

use connect::{check_version, warn_about_durability};
pub use connect::{connect, redact_url, unavailable};
use follow::report_lost_seqs;
use retention::trimmer;
pub use sentinel::Sentinels;
use stream::{corrupt, entry, int_of};

/// Publishes waiting for the writer; a full queue makes publishers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// Most events folded into one append script.
const MAX_GROUP_EVENTS: usize = 2000;

/// Most log entries a pattern read examines per page.
const SCAN_BUDGET: usize = 5_000;

/// Most envelope bytes one read returns (past its first event): a read shares the
/// connection that appends use, so a large reply would hold publishes up behind it.
const MAX_READ_BYTES: usize = 1024 * 1024;

const APPEND: &str = include_str!("redis/append.lua");

const READ: &str = include_str!("redis/read.lua");

const TRIM: &str = include_str!("redis/trim.lua");

const SWEEP: &str = include_str!("redis/sweep.lua");

/// Key names under the configured prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
    seq: String,
    oldest: String,
    log: String,
    channels: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            seq: format!("{prefix}:seq"),
            oldest: format!("{prefix}:oldest"),
            log: format!("{prefix}:log"),
            channels: format!("{prefix}:channels"),
        }
    }
}

struct Append {
    events: Vec<NewEvent>,
    reply: super::AppendReply,
}

pub struct RedisLog {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    scripts: Arc<Scripts>,
    /// Last seq handed to the listener by this node's follower.
    head: Arc<AtomicU64>,
    /// First retained seq, as last seen.
    oldest: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
    tx: Mutex<Option<mpsc::Sender<Append>>>,
    stop: CancellationToken,
    /// Set once: the follower starts with the listener, so it never reads past an event
    /// nobody heard.
    started: AtomicBool,
    /// `redis.min_replicas > 0`: followers hand on only replica-confirmed events.
    confirmed_only: bool,
}

struct Scripts {
    append: Script,
    read: Script,
    trim: Script,
    sweep: Script,
}

impl RedisLog {
    /// Connects, loads the head, and starts the append writer and the retention timer. The
    /// live follower starts with [`Log::set_listener`].
    pub async fn open(
        client: Client,
        conn: ConnectionManager,
        prefix: &str,
        config: &LogConfig,
        confirm: Confirm,
    ) -> Result<Arc<RedisLog>, LogError> {
        let keys = Keys::new(prefix);
        let mut c = conn.clone();
        let (head, oldest): (Option<u64>, Option<u64>) = redis::pipe()
            .get(&keys.seq)
            .get(&keys.oldest)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
        check_version(&mut c).await?;
        warn_about_durability(&mut c, config).await;
        let scripts = Arc::new(Scripts {
            append: Script::new(APPEND),
            read: Script::new(READ),
            trim: Script::new(TRIM),
            sweep: Script::new(SWEEP),
        });
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let log = Arc::new(RedisLog {
            client,
            conn,
            keys,
            scripts,
            head: Arc::new(AtomicU64::new(head.unwrap_or(0))),
            oldest: Arc::new(AtomicU64::new(oldest.unwrap_or(1))),
            ready: Arc::new(AtomicBool::new(true)),
            tx: Mutex::new(Some(tx)),
            stop: CancellationToken::new(),
            started: AtomicBool::new(false),
            confirmed_only: confirm.replicas > 0,
        });
        tokio::spawn(writer(
            rx,
            confirm.conn.clone().unwrap_or_else(|| log.conn.clone()),
            log.keys.clone(),
            log.scripts.clone(),
            config.dedup_window,
            log.head.clone(),
            confirm,
        ));
        tokio::spawn(trimmer(log.clone_parts(), config.clone()));
        Ok(log)
    }

    fn clone_parts(&self) -> Parts {
        Parts {
            conn: self.conn.clone(),
            keys: self.keys.clone(),
            scripts: self.scripts.clone(),
            oldest: self.oldest.clone(),
            stop: self.stop.clone(),
        }
    }

    /// The shared connection, for other cluster state (the webhook queue).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// What the background tasks share with the log.
#[derive(Clone)]
struct Parts {
    conn: ConnectionManager,
    keys: Keys,
    scripts: Arc<Scripts>,
    oldest: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Drains waiting publishes into one script call (group commit: one round trip and one AOF
/// write for many publishers), then answers each.
/// Replica acknowledgement of appends (`redis.min_replicas`): after each group, `WAIT`
/// for that many replicas, on a connection of the writer's own (WAIT holds the connection it
/// is sent on, and the shared one carries everyone else's commands).
#[derive(Clone, Default)]
pub struct Confirm {
    pub replicas: u32,
    pub timeout: Duration,
    pub conn: Option<ConnectionManager>,
}

/// `WAIT`s for `confirm.replicas` replicas to have every write of this connection so far.
/// A group answered only from idempotency records wrote nothing, so a marker is written
/// first: the records it read may come from another node's connection, and the replication
/// stream is ordered, so a replica that has the marker has them too.
async fn confirm_on_replicas(
    conn: &mut ConnectionManager,
    keys: &Keys,
    confirm: &Confirm,
    wrote: bool,
) -> Result<(), LogError> {
    if !wrote {
        redis::cmd("INCR")
            .arg(format!("{}:confirm", keys.prefix))
            .query_async::<i64>(conn)
            .await
            .map_err(unavailable)?;
    }
    let timeout_ms = confirm.timeout.as_millis().max(1) as u64;
    let got: i64 = redis::cmd("WAIT")
        .arg(confirm.replicas)
        .arg(timeout_ms)
        .query_async(conn)
        .await
        .map_err(|e| LogError::Unconfirmed(format!("WAIT failed: {e}")))?;
    if got < i64::from(confirm.replicas) {
        metrics::counter!("herald_redis_unconfirmed_total").increment(1);
        return Err(LogError::Unconfirmed(format!(
            "{got} of {} replicas confirmed within {} (redis.min_replicas, \
             redis.replica_timeout)",
            confirm.replicas,
            humantime::format_duration(confirm.timeout)
        )));
    }
    Ok(())
}

/// Moves the cluster's replica-confirmed point up to `seq` (never down: groups of several
/// nodes confirm in any order, and replication is ordered, so a confirmed seq vouches for
/// every seq below it).
async fn mark_confirmed(
    conn: &mut ConnectionManager,
    keys: &Keys,
    seq: i64,
) -> Result<(), LogError> {
    Script::new(
        "#!lua
        local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
        if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
        return 0",
    )
    .key(confirmed_key(keys))
    .arg(seq)
    .invoke_async::<i64>(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}

/// Where the replica-confirmed point lives.
fn confirmed_key(keys: &Keys) -> String {
    format!("{}:confirmed", keys.prefix)
}

async fn writer(
    mut rx: mpsc::Receiver<Append>,
    mut conn: ConnectionManager,
    keys: Keys,
    scripts: Arc<Scripts>,
    dedup_window: Duration,
    seen: Arc<AtomicU64>,
    confirm: Confirm,
) {
    let window = dedup_window.as_millis().max(1).to_string();
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        let mut events = group[0].events.len();
        while events < MAX_GROUP_EVENTS {
            match rx.try_recv() {
                Ok(next) => {
                    events += next.events.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut invocation = scripts.append.prepare_invoke();
        invocation
            .key(&keys.seq)
            .key(&keys.log)
            .key(&keys.channels)
            .arg(&keys.prefix)
            .arg(now)
            .arg(&window)
            // Seqs never go back, even if Redis lost data: see `guard_seq`.
            .arg(seen.load(Ordering::Acquire));
        for request in &group {
            for event in &request.events {
                invocation
                    .arg(event.channel())
                    .arg(event.kind().unwrap_or(""))
                    .arg(event.id().unwrap_or(""))
                    .arg(envelope_tail(now, event));
            }
        }
        let started = std::time::Instant::now();
        let result: Result<Vec<i64>, _> = invocation.invoke_async(&mut conn).await;
        // Acknowledged only once enough replicas have the group (and, for duplicates, the
        // records they were answered from).
        let result = match result {
            Ok(flat) if confirm.replicas > 0 => {
                let wrote = flat[1.min(flat.len())..]
                    .chunks(2)
                    .any(|p| p.get(1) != Some(&1));
                let newest = flat[1.min(flat.len())..]
                    .chunks(2)
                    .map(|p| p[0])
                    .max()
                    .unwrap_or(0);
                let confirmed = match confirm_on_replicas(&mut conn, &keys, &confirm, wrote).await {
                    Ok(()) => mark_confirmed(&mut conn, &keys, newest).await,
                    Err(e) => Err(e),
                };
                match confirmed {
                    Ok(()) => Ok(flat),
                    Err(e) => {
                        tracing::warn!(error = %e, "append not confirmed by replicas");
                        for request in group {
                            let _ = request.reply.send(Err(match &e {
                                LogError::Unconfirmed(m) => LogError::Unconfirmed(m.clone()),
                                other => LogError::Unconfirmed(other.to_string()),
                            }));
                        }
                        continue;
                    }
                }
            }
            other => other,
        };
        // What a cluster publish costs: one round trip and script per group.
        if result.is_ok() {
            crate::stats::get().commit(started.elapsed(), events);
        } else {
            metrics::counter!("herald_redis_append_failures_total").increment(1);
        }
        match result {
            Ok(flat) => {
                if let Some(&behind) = flat.first().filter(|b| **b >= 0) {
                    report_lost_seqs(behind as u64, seen.load(Ordering::Acquire));
                }
                let mut results = flat[1.min(flat.len())..]
                    .chunks(2)
                    .map(|p| Appended {
                        seq: p[0].max(0) as u64,
                        duplicate: p.get(1) == Some(&1),
                    })
                    .collect::<Vec<_>>()
                    .into_iter();
                for request in group {
                    let mine: Vec<Appended> = results.by_ref().take(request.events.len()).collect();
                    let _ = request.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "append to redis failed");
                let e = Arc::new(e);
                for request in group {
                    let _ = request
                        .reply
                        .send(Err(LogError::Unavailable(StoreError::Redis(e.clone()))));
                }
            }
        }
    }
}

/// The envelope after `{"seq":N` (the script adds that part).
fn envelope_tail(time_ms: u64, event: &NewEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + event.channel().len() + event.data().get().len());
    push_envelope_tail(&mut out, time_ms, event);
    out
}

impl Log for RedisLog {
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'static, Result<Vec<Appended>, LogError>> {
        let tx = self.tx.lock().expect("log sender lock").clone();
        super::request_append(tx, |reply| Append { events, reply })
    }

    fn read(
        &self,
        filter: Arc<Filter>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, LogError>> {
        let mut conn = self.conn.clone();
        let scripts = self.scripts.clone();
        let keys = self.keys.clone();
        let oldest_seen = self.oldest.clone();
        async move {
            let limit = limit.max(1);
            let mut invocation = scripts.read.prepare_invoke();
            invocation
                .key(&keys.seq)
                .key(&keys.log)
                .key(&keys.oldest)
                .arg(&keys.prefix)
                .arg(after)
                .arg(limit)
                .arg(MAX_READ_BYTES)
                .arg(SCAN_BUDGET)
                .arg(filter.channels().count());
            for channel in filter.channels() {
                invocation.arg(channel);
            }
            for pattern in filter.patterns() {
                invocation.arg(pattern.as_str());
            }
            let reply: Value = invocation
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let Value::Array(items) = reply else {
                return Err(corrupt("read reply"));
            };
            let (head, oldest) = (int_of(items.first()), int_of(items.get(1)));
            let complete = int_of(items.get(2)) == 1;
            let last = int_of(items.get(3));
            oldest_seen.store(oldest, Ordering::Release);
            let mut page = Page {
                reset: (after.saturating_add(1) < oldest && after < head).then_some(oldest),
                ..Page::default()
            };
            let after = after.max(oldest.saturating_sub(1));
            for v in items.get(4..).unwrap_or(&[]) {
                page.events.push(entry(v)?);
            }
            page.end = complete;
            page.next = if complete {
                head.max(after)
            } else {
                last.max(after)
            };
            Ok(page)
        }
        .boxed()
    }

    fn get(&self, seq: u64) -> BoxFuture<'static, Result<Option<EventRef>, LogError>> {
        let mut conn = self.conn.clone();
        let log = self.keys.log.clone();
        async move {
            if seq == 0 {
                return Ok(None);
            }
            let id = format!("{seq}-0");
            let reply: Value = redis::cmd("XRANGE")
                .arg(&log)
                .arg(&id)
                .arg(&id)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match reply {
                Value::Array(items) => items.first().map(entry).transpose(),
                _ => Ok(None),
            }
        }
        .boxed()
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            oldest: self.oldest.load(Ordering::Acquire),
            head: self.head.load(Ordering::Acquire),
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn set_listener(&self, listener: Arc<dyn CommitListener>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(follow::follow(follow::Follower {
            client: self.client.clone(),
            keys: self.keys.clone(),
            head: self.head.clone(),
            oldest: self.oldest.clone(),
            ready: self.ready.clone(),
            listener,
            stop: self.stop.clone(),
            confirmed_only: self.confirmed_only,
        }));
    }

    fn close(&self) {
        self.tx.lock().expect("log sender lock").take();
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn the_script_envelope_is_byte_identical_to_the_embedded_one() {
        let new = NewEvent::new(
            crate::event::Source::Publisher,
            "user:42".into(),
            Some("order.created".into()),
            RawValue::from_string(r#"{"x":[1,"é\n"]}"#.into()).unwrap(),
            Some("k\"1".into()),
        )
        .unwrap();
        // What the append script does: `{"seq":` .. seq .. tail.
        let mut made = b"{\"seq\":".to_vec();
        made.extend_from_slice(b"9007199254740991");
        made.extend_from_slice(&envelope_tail(1_764_000_000_123, &new));
        let embedded = Event::encode(9_007_199_254_740_991, 1_764_000_000_123, &new);
        assert_eq!(made, embedded.envelope()[..]);
    }
}
