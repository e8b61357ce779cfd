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

/// Publishes waiting for the writer; a full queue makes publishers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
/// Most events folded into one append script.
const MAX_GROUP_EVENTS: usize = 2000;
/// Most log entries a pattern read examines per page.
const SCAN_BUDGET: usize = 5_000;
/// Most envelope bytes one read returns (past its first event): a read shares the
/// connection that appends use, so a large reply would hold publishes up behind it.
const MAX_READ_BYTES: usize = 1024 * 1024;
/// Most entries one live read fetches.
const FOLLOW_BATCH: usize = 1024;
/// How long one blocking live read waits; also how soon a dead connection is noticed.
const FOLLOW_BLOCK: Duration = Duration::from_millis(1000);
/// Most events one retention pass deletes per script call.
const TRIM_CHUNK: u64 = 10_000;

const APPEND: &str = r#"#!lua
local p, now, window, floor = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local out = {-1}
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if cur < floor then
  redis.call('SET', KEYS[1], ARGV[4])
  out[1] = cur
end
for i = 5, #ARGV, 4 do
  local channel, kind, id, tail = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local prev = false
  local dkey = p .. ':dedup:' .. channel .. '|' .. id
  if id ~= '' then prev = redis.call('GET', dkey) end
  if prev then
    out[#out + 1] = tonumber(prev)
    out[#out + 1] = 1
  else
    local seq = redis.call('INCR', KEYS[1])
    local sid = string.format('%d-0', seq)
    redis.call('XADD', KEYS[2], sid, 'c', channel, 'k', kind, 't', now,
      'e', '{"seq":' .. string.format('%d', seq) .. tail)
    redis.call('XADD', p .. ':ch:' .. channel, sid, 's', '')
    redis.call('SADD', KEYS[3], channel)
    if id ~= '' then redis.call('SET', dkey, seq, 'PX', window) end
    out[#out + 1] = seq
    out[#out + 1] = 0
  end
end
return out
"#;

/// Returns `{head, oldest, complete, last, entry...}`: the entries after `after` on the
/// given channels or matching the given patterns, at most `limit` of them and, past the
/// first, at most `max_bytes` of envelopes; `last` is the last seq the page covers (when it
/// is not complete). Filtering happens here, in Redis, so a read sends back only what it
/// returns: a rare pattern over a large log costs Redis a bounded scan, not the append
/// connection a stream of envelopes nobody asked for.
/// ARGV: prefix, after, limit, max_bytes, scan budget, number of channels, channels...,
/// patterns... Globs are matched by the same linear algorithm as `Pattern::matches` (Lua's
/// own patterns backtrack, which a crafted glob could make exponential).
const READ: &str = r#"
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = tonumber(redis.call('GET', KEYS[3]) or '1')
local prefix, after, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local max_bytes, budget, nch = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local start = string.format('%d-0', math.max(after + 1, oldest))
local out = {head, oldest, 1, after}
local bytes = 0
local function field(e, name)
  local f = e[2]
  for j = 1, #f, 2 do if f[j] == name then return f[j + 1] end end
  return nil
end
-- Adds an entry unless the page is full; returns false when it is.
local function take(e, seq)
  local size = #(field(e, 'e') or '')
  if #out - 4 >= limit or (#out > 4 and bytes + size > max_bytes) then
    out[3] = 0
    return false
  end
  bytes = bytes + size
  out[#out + 1] = e
  out[4] = seq
  return true
end
local function glob(p, s)
  local pi, si, sp, ss = 1, 1, 0, 0
  local pl, sl = #p, #s
  while si <= sl do
    local pc = string.byte(p, pi)
    if pi <= pl and pc == 42 then
      sp, ss, pi = pi, si, pi + 1
    elseif pi <= pl and pc == string.byte(s, si) then
      pi, si = pi + 1, si + 1
    elseif sp > 0 then
      pi, ss = sp + 1, ss + 1
      si = ss
    else
      return false
    end
  end
  while pi <= pl and string.byte(p, pi) == 42 do pi = pi + 1 end
  return pi > pl
end
local channels, patterns = {}, {}
for i = 7, 6 + nch do channels[ARGV[i]] = true end
for i = 7 + nch, #ARGV do patterns[#patterns + 1] = ARGV[i] end
if #patterns > 0 then
  local r = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', budget)
  if #r >= budget then out[3] = 0 end
  for _, e in ipairs(r) do
    local seq = tonumber(string.match(e[1], '^%d+'))
    local c = field(e, 'c') or ''
    local hit = channels[c] or false
    for _, p in ipairs(patterns) do
      if hit then break end
      hit = glob(p, c)
    end
    if hit and not take(e, seq) then return out end
    out[4] = seq
  end
  return out
end
local seqs = {}
for i = 7, 6 + nch do
  local r = redis.call('XRANGE', prefix .. ':ch:' .. ARGV[i], start, '+', 'COUNT', limit + 1)
  if #r > limit then out[3] = 0 end
  for _, e in ipairs(r) do seqs[#seqs + 1] = tonumber(string.match(e[1], '^%d+')) end
end
table.sort(seqs)
local last = nil
for _, s in ipairs(seqs) do
  if s ~= last then
    last = s
    local id = string.format('%d-0', s)
    local r = redis.call('XRANGE', KEYS[2], id, id)
    if r[1] and not take(r[1], s) then return out end
  end
end
return out
"#;

/// Moves `oldest` forward by count and age (at most `chunk` per call) and deletes what fell
/// out, in one step. Returns how many seqs it moved past.
const TRIM: &str = r#"#!lua
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local oldest = tonumber(redis.call('GET', KEYS[3]) or '1')
local chunk = tonumber(ARGV[3])
local target = math.max(oldest, head - tonumber(ARGV[1]) + 1)
target = math.min(target, oldest + chunk)
local cutoff = tonumber(ARGV[2])
if target < oldest + chunk then
  local r = redis.call('XRANGE', KEYS[2], string.format('%d-0', target), '+', 'COUNT', chunk)
  local stopped = false
  for _, e in ipairs(r) do
    local seq = tonumber(string.match(e[1], '^%d+'))
    local f = e[2]
    local t = 0
    for j = 1, #f, 2 do if f[j] == 't' then t = tonumber(f[j + 1]) end end
    if t >= cutoff or seq >= oldest + chunk then stopped = true break end
    target = seq + 1
  end
  if not stopped and #r < chunk then target = math.max(target, head + 1) end
  target = math.min(target, oldest + chunk)
end
if target > oldest then
  redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d-0', target))
  redis.call('SET', KEYS[3], string.format('%d', target))
end
return target - oldest
"#;

/// Trims one channel index to the log's retained range; drops it (and its set entry) once
/// empty. A script, so an append cannot slip in between the length check and the delete.
const SWEEP: &str = r#"#!lua
redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2])
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
"#;

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
}

struct Scripts {
    append: Script,
    read: Script,
    trim: Script,
    sweep: Script,
}

/// A Redis error as a log error: every failure to talk to Redis means "not written, retry".
pub fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(format!("redis: {e}"))
}

/// The URL as it may be logged: userinfo (`user:password@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("***");
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        // Unparseable: show only the scheme, the rest may hold anything.
        Err(_) => format!("{}://(unparseable)", url.split("://").next().unwrap_or("?")),
    }
}

/// Removes the URL's password from an error message that may quote it.
fn scrub(message: String, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string))
    {
        Some(pw) if !pw.is_empty() => message.replace(&pw, "***"),
        _ => message,
    }
}

/// Connects to Redis with timeouts that turn an outage into fast errors (publishers get a
/// 503 within a second) while the manager reconnects in the background. Errors never quote
/// the URL's password.
pub async fn connect(
    url: &str,
    tls_ca: Option<&std::path::Path>,
) -> Result<(Client, ConnectionManager), LogError> {
    connect_inner(url, tls_ca).await.map_err(|e| match e {
        LogError::Storage(m) => LogError::Storage(scrub(m, url)),
        LogError::Unavailable(m) => LogError::Unavailable(scrub(m, url)),
        other => other,
    })
}

async fn connect_inner(
    url: &str,
    tls_ca: Option<&std::path::Path>,
) -> Result<(Client, ConnectionManager), LogError> {
    let client = match tls_ca {
        None => Client::open(url),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| LogError::Storage(format!("redis.tls_ca {}: {e}", path.display())))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(url, certs)
        }
    }
    .map_err(|e| LogError::Storage(format!("invalid redis url {}: {e}", redact_url(url))))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let conn = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(unavailable)?;
    Ok((client, conn))
}

impl RedisLog {
    /// Connects, loads the head, and starts the append writer and the retention timer. The
    /// live follower starts with [`Log::set_listener`].
    pub async fn open(
        client: Client,
        conn: ConnectionManager,
        prefix: &str,
        config: &LogConfig,
    ) -> Result<Arc<RedisLog>, LogError> {
        let keys = Keys::new(prefix);
        let mut c = conn.clone();
        let (head, oldest): (Option<u64>, Option<u64>) = redis::pipe()
            .get(&keys.seq)
            .get(&keys.oldest)
            .query_async(&mut c)
            .await
            .map_err(unavailable)?;
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
        });
        tokio::spawn(writer(
            rx,
            log.conn.clone(),
            log.keys.clone(),
            log.scripts.clone(),
            config.dedup_window,
            log.head.clone(),
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

/// Our `fsync` policy needs Redis to fsync every write; say so when it does not (the check
/// is advisory: managed Redis services often refuse CONFIG).
async fn warn_about_durability(conn: &mut ConnectionManager, config: &LogConfig) {
    let got: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async(conn)
        .await;
    let Ok(pairs) = got else { return };
    let get = |name: &str| {
        pairs
            .chunks(2)
            .find(|kv| kv[0] == name)
            .map(|kv| kv[1].clone())
    };
    let aof = get("appendonly").unwrap_or_default();
    let fsync = get("appendfsync").unwrap_or_default();
    if aof != "yes" {
        tracing::warn!("redis runs without appendonly: a Redis restart loses acknowledged events");
    } else if config.durability == crate::config::Durability::Fsync && fsync != "always" {
        tracing::warn!(
            appendfsync = %fsync,
            "log.durability is fsync but redis has appendfsync {fsync}: a machine crash may \
             lose up to a second of acknowledged events"
        );
    }
}

/// Drains waiting publishes into one script call (group commit: one round trip and one AOF
/// write for many publishers), then answers each.
async fn writer(
    mut rx: mpsc::Receiver<Append>,
    mut conn: ConnectionManager,
    keys: Keys,
    scripts: Arc<Scripts>,
    dedup_window: Duration,
    seen: Arc<AtomicU64>,
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
                    .arg(&event.channel)
                    .arg(event.kind.as_deref().unwrap_or(""))
                    .arg(event.id.as_deref().unwrap_or(""))
                    .arg(envelope_tail(now, event));
            }
        }
        let started = std::time::Instant::now();
        let result: Result<Vec<i64>, _> = invocation.invoke_async(&mut conn).await;
        // What a cluster publish costs: one round trip and script per group.
        metrics::histogram!("herald_redis_append_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("herald_redis_append_group_events").record(events as f64);
        if result.is_err() {
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
                let msg = e.to_string();
                for request in group {
                    let _ = request
                        .reply
                        .send(Err(LogError::Unavailable(format!("redis: {msg}"))));
                }
            }
        }
    }
}

/// The envelope after `{"seq":N` (the script adds that part).
fn envelope_tail(time_ms: u64, event: &NewEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + event.channel.len() + event.data.get().len());
    push_envelope_tail(&mut out, time_ms, event);
    out
}

/// Applies retention on a timer. Every node runs it; the script makes that harmless.
async fn trimmer(parts: Parts, config: LogConfig) {
    let mut tick = tokio::time::interval(config.trim_interval.max(Duration::from_millis(10)));
    loop {
        tokio::select! {
            _ = parts.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = trim_once(&parts, &config).await {
            tracing::debug!(error = %e, "retention trim failed (will retry)");
        }
    }
}

async fn trim_once(parts: &Parts, config: &LogConfig) -> Result<(), redis::RedisError> {
    let mut conn = parts.conn.clone();
    let cutoff = now_ms().saturating_sub(config.retention.as_millis() as u64);
    let mut moved = 0;
    loop {
        let n: u64 = parts
            .scripts
            .trim
            .key(&parts.keys.seq)
            .key(&parts.keys.log)
            .key(&parts.keys.oldest)
            .arg(config.max_events.max(1))
            .arg(cutoff)
            .arg(TRIM_CHUNK)
            .invoke_async(&mut conn)
            .await?;
        moved += n;
        if n < TRIM_CHUNK {
            break;
        }
    }
    let oldest: Option<u64> = redis::cmd("GET")
        .arg(&parts.keys.oldest)
        .query_async(&mut conn)
        .await?;
    let oldest = oldest.unwrap_or(1);
    parts.oldest.store(oldest, Ordering::Release);
    if moved > 0 {
        sweep_channels(parts, &mut conn, oldest).await?;
    }
    Ok(())
}

/// Trims every channel index to the retained range.
async fn sweep_channels(
    parts: &Parts,
    conn: &mut ConnectionManager,
    oldest: u64,
) -> Result<(), redis::RedisError> {
    let minid = format!("{oldest}-0");
    let mut cursor = 0u64;
    loop {
        let (next, names): (u64, Vec<String>) = redis::cmd("SSCAN")
            .arg(&parts.keys.channels)
            .arg(cursor)
            .arg("COUNT")
            .arg(200)
            .query_async(conn)
            .await?;
        for name in names {
            let _: i64 = parts
                .scripts
                .sweep
                .key(format!("{}:ch:{name}", parts.keys.prefix))
                .key(&parts.keys.channels)
                .arg(&name)
                .arg(&minid)
                .invoke_async(conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Follows the log stream and hands each new event to the listener, in seq order. Runs for
/// the node's lifetime; reconnects by itself and continues from the last seq it handed on.
async fn follow(
    client: Client,
    keys: Keys,
    head: Arc<AtomicU64>,
    oldest: Arc<AtomicU64>,
    ready: Arc<AtomicBool>,
    listener: Arc<dyn CommitListener>,
    stop: CancellationToken,
) {
    // A blocking read needs its own connection: on a shared one it would stall every other
    // command for up to FOLLOW_BLOCK.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(FOLLOW_BLOCK + Duration::from_secs(5)));
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if ready.swap(false, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "redis unreachable; live delivery paused");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if let Err(e) = guard_seq(&mut conn, &keys, head.load(Ordering::Acquire)).await {
            tracing::warn!(error = %e, "redis check failed");
            continue;
        }
        loop {
            let last = head.load(Ordering::Acquire);
            let mut xread = redis::cmd("XREAD");
            xread
                .arg("COUNT")
                .arg(FOLLOW_BATCH)
                .arg("BLOCK")
                .arg(FOLLOW_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&keys.log)
                .arg(format!("{last}-0"));
            let read = xread.query_async::<Value>(&mut conn);
            let reply = tokio::select! {
                _ = stop.cancelled() => return,
                r = read => r,
            };
            let entries = match reply.map_err(unavailable).and_then(|v| xread_entries(&v)) {
                Ok(entries) => entries,
                Err(e) => {
                    if ready.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "redis read failed; live delivery paused");
                    }
                    break;
                }
            };
            if !ready.swap(true, Ordering::AcqRel) {
                tracing::info!(head = last, "redis reachable; live delivery resumed");
            }
            if entries.is_empty() {
                continue;
            }
            if entries[0].seq > last + 1 {
                // Either seqs that were never written (a failed script) or events trimmed
                // before this node could read them; only the latter is a loss.
                let first: Option<u64> = redis::cmd("GET")
                    .arg(&keys.oldest)
                    .query_async(&mut conn)
                    .await
                    .ok()
                    .flatten();
                if let Some(first) = first {
                    oldest.store(first, Ordering::Release);
                    if first > last + 1 {
                        tracing::warn!(
                            last,
                            oldest = first,
                            "events were trimmed before this node read them"
                        );
                        listener.lost();
                    }
                }
            }
            let newest = entries.last().map_or(last, |e| e.seq);
            listener.committed(&entries);
            head.store(newest, Ordering::Release);
        }
    }
}

/// After a (re)connect: if Redis's seq counter is behind what this node has already seen,
/// Redis lost data (restarted without `appendonly`, or failed over to a stale replica). The
/// events are gone, but seqs must never be reused: a subscriber holding cursor N would
/// silently skip new events numbered <= N. Move the counter back up, and say so loudly.
async fn guard_seq(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    seen: u64,
) -> Result<(), redis::RedisError> {
    let raised: i64 = Script::new(
        "#!lua
        local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
        if cur < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) return cur end
        return -1",
    )
    .key(&keys.seq)
    .arg(seen)
    .invoke_async(conn)
    .await?;
    if raised >= 0 {
        report_lost_seqs(raised as u64, seen);
    }
    Ok(())
}

fn report_lost_seqs(redis_seq: u64, seen: u64) {
    tracing::error!(
        redis_seq,
        node_seq = seen,
        "redis lost acknowledged events (its seq counter went back): run it with appendonly \
         yes; seqs continue after {seen} so none is reused"
    );
}

/// Parses an XREAD reply (one stream) into events.
fn xread_entries(v: &Value) -> Result<Vec<EventRef>, LogError> {
    let streams = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(s) => s,
        Value::Map(m) => {
            return match m.first() {
                Some((_, entries)) => entries_of(entries),
                None => Ok(Vec::new()),
            }
        }
        _ => return Err(corrupt("XREAD reply")),
    };
    let Some(Value::Array(stream)) = streams.first() else {
        return Ok(Vec::new());
    };
    match stream.get(1) {
        Some(entries) => entries_of(entries),
        None => Ok(Vec::new()),
    }
}

fn entries_of(v: &Value) -> Result<Vec<EventRef>, LogError> {
    match v {
        Value::Array(items) => items.iter().map(entry).collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(corrupt("stream entries")),
    }
}

fn corrupt(what: &str) -> LogError {
    LogError::Storage(format!("unexpected redis reply ({what})"))
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// One stream entry `[id, [field, value, ...]]` as an event.
fn entry(v: &Value) -> Result<EventRef, LogError> {
    let Value::Array(pair) = v else {
        return Err(corrupt("stream entry"));
    };
    let id = pair
        .first()
        .and_then(bytes_of)
        .ok_or_else(|| corrupt("id"))?;
    let seq = std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.split('-').next())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| corrupt("id"))?;
    let Some(Value::Array(fields)) = pair.get(1) else {
        return Err(corrupt("entry fields"));
    };
    let (mut channel, mut kind, mut time, mut envelope) = (None, None, 0, None);
    for kv in fields.chunks(2) {
        let (Some(k), Some(val)) = (bytes_of(&kv[0]), kv.get(1).and_then(bytes_of)) else {
            continue;
        };
        let text = || std::str::from_utf8(val).map_err(|_| corrupt("text field"));
        match k {
            b"c" => channel = Some(text()?.into()),
            b"k" if !val.is_empty() => kind = Some(text()?.into()),
            b"t" => time = text()?.parse().unwrap_or(0),
            b"e" => envelope = Some(Bytes::copy_from_slice(val)),
            _ => {}
        }
    }
    let (Some(channel), Some(envelope)) = (channel, envelope) else {
        return Err(corrupt("entry without channel or envelope"));
    };
    Ok(Arc::new(Event::from_parts(
        seq, channel, kind, time, envelope,
    )))
}

fn int_of(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => (*n).max(0) as u64,
        Some(other) => bytes_of(other)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0),
        None => 0,
    }
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
        tokio::spawn(follow(
            self.client.clone(),
            self.keys.clone(),
            self.head.clone(),
            self.oldest.clone(),
            self.ready.clone(),
            listener,
            self.stop.clone(),
        ));
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
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/2"),
            "redis://***@10.0.0.1:6379/2"
        );
        assert_eq!(
            redact_url("rediss://app:hunter2@cache.internal"),
            "rediss://***@cache.internal"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert!(!redact_url("redis://:hunter2@[bad").contains("hunter2"));
        assert_eq!(
            scrub("auth failed for hunter2".into(), "redis://:hunter2@h"),
            "auth failed for ***"
        );
    }

    #[test]
    fn the_script_envelope_is_byte_identical_to_the_embedded_one() {
        let new = NewEvent {
            channel: "user:42".into(),
            kind: Some("order.created".into()),
            data: RawValue::from_string(r#"{"x":[1,"é\n"]}"#.into()).unwrap(),
            id: Some("k\"1".into()),
        };
        // What the append script does: `{"seq":` .. seq .. tail.
        let mut made = b"{\"seq\":".to_vec();
        made.extend_from_slice(b"9007199254740991");
        made.extend_from_slice(&envelope_tail(1_764_000_000_123, &new));
        let embedded = Event::encode(9_007_199_254_740_991, 1_764_000_000_123, &new);
        assert_eq!(made, embedded.envelope()[..]);
    }
}
