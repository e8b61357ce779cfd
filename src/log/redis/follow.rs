//! The follower: each node's blocking `XREAD` on the log stream from the last seq it handed on.
//! Every node receives every event once, in order; after an outage it continues from where it
//! was, so the gap fills itself. It also guards seqs against a Redis that lost data.

use super::*;

/// Most entries one live read fetches.
pub(super) const FOLLOW_BATCH: usize = 1024;

/// How long one blocking live read waits; also how soon a dead connection is noticed.
pub(super) const FOLLOW_BLOCK: Duration = Duration::from_millis(1000);

/// What a follower reads and updates (the log's shared state).
pub(super) struct Follower {
    pub client: Client,
    pub keys: Keys,
    pub head: Arc<AtomicU64>,
    pub oldest: Arc<AtomicU64>,
    pub ready: Arc<AtomicBool>,
    pub listener: Arc<dyn CommitListener>,
    pub stop: CancellationToken,
    /// Hand on only replica-confirmed events (`redis.min_replicas > 0`).
    pub confirmed_only: bool,
}

/// Follows the log stream and hands each new event to the listener, in seq order. Runs for
/// the node's lifetime; reconnects by itself and continues from the last seq it handed on.
pub(super) async fn follow(f: Follower) {
    let Follower {
        client,
        keys,
        head,
        oldest,
        ready,
        listener,
        stop,
        confirmed_only,
    } = f;
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
            let reply = tokio::select! {
                _ = stop.cancelled() => return,
                r = read_after(&mut conn, &keys, last) => r,
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
                notice_trim(&mut conn, &keys, &oldest, last, listener.as_ref()).await;
            }
            let mut entries = entries;
            if confirmed_only {
                // Only what enough replicas have: an event a failover could lose is never
                // delivered. The rest is read again once the confirmed point moves.
                let confirmed: u64 = match redis::cmd("GET")
                    .arg(super::confirmed_key(&keys))
                    .query_async::<Option<u64>>(&mut conn)
                    .await
                {
                    Ok(c) => c.unwrap_or(0),
                    Err(_) => break,
                };
                entries.retain(|e| e.seq <= confirmed);
                if entries.is_empty() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
            }
            let newest = entries.last().map_or(last, |e| e.seq);
            listener.committed(&entries);
            head.store(newest, Ordering::Release);
        }
    }
}

/// One blocking read of the log stream after `last`.
async fn read_after(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    last: u64,
) -> redis::RedisResult<Value> {
    redis::cmd("XREAD")
        .arg("COUNT")
        .arg(FOLLOW_BATCH)
        .arg("BLOCK")
        .arg(FOLLOW_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&keys.log)
        .arg(format!("{last}-0"))
        .query_async::<Value>(conn)
        .await
}

/// The next entry is past `last + 1`: either seqs that were never written (a failed script)
/// or events trimmed before this node could read them. Only the latter is a loss, and then
/// every live subscriber must resume to learn of the gap.
async fn notice_trim(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
    oldest: &AtomicU64,
    last: u64,
    listener: &dyn CommitListener,
) {
    let first: Option<u64> = redis::cmd("GET")
        .arg(&keys.oldest)
        .query_async(conn)
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

/// After a (re)connect: if Redis's seq counter is behind what this node has already seen,
/// Redis lost data (restarted without `appendonly`, or failed over to a stale replica). The
/// events are gone, but seqs must never be reused: a subscriber holding cursor N would
/// silently skip new events numbered <= N. Move the counter back up, and say so loudly.
pub(super) async fn guard_seq(
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

pub(super) fn report_lost_seqs(redis_seq: u64, seen: u64) {
    tracing::error!(
        redis_seq,
        node_seq = seen,
        "redis lost acknowledged events (its seq counter went back): run it with appendonly \
         yes; seqs continue after {seen} so none is reused"
    );
}

/// Parses an XREAD reply (one stream) into events.
pub(super) fn xread_entries(v: &Value) -> Result<Vec<EventRef>, LogError> {
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

pub(super) fn entries_of(v: &Value) -> Result<Vec<EventRef>, LogError> {
    match v {
        Value::Array(items) => items.iter().map(entry).collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(corrupt("stream entries")),
    }
}
