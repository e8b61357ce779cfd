//! Where the webhook queue lives: the embedded store on a single node, Redis in a cluster.
//!
//! Both keep the same durable state (endpoints, each endpoint's cursor into the log, pending
//! tasks, failed tasks, the attempt log) with the same atomicity: tasks and cursor move
//! together, and an attempt's record and its effect on the task land together. What differs
//! is claiming: one node simply remembers what it has in flight; in a cluster a claim is a
//! lease in Redis (the task's due time pushed past the lease), so exactly one node attempts a
//! task, and a dead node's claims come due again for the others when their lease runs out.
//!
//! An enum rather than a trait object: two known backends, async methods, no boxing.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::retry::AttemptStatus;
use super::store::{Attempt, Endpoint, Resolution, Step, Task, WebhookStore};
use crate::log::redis::unavailable;
use crate::log::LogError;

/// What the scheduler may start for one endpoint now.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// More attempts this node may start for the endpoint.
    pub capacity: usize,
    /// One in flight, lowest seq first.
    pub ordered: bool,
}

pub enum Queue {
    Local(WebhookStore),
    Shared(Box<RedisQueue>),
}

impl Queue {
    /// Whether endpoints can change under us (other nodes): then the service re-reads them.
    pub fn is_shared(&self) -> bool {
        matches!(self, Queue::Shared(_))
    }

    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, LogError> {
        match self {
            Queue::Local(s) => s.endpoints(),
            Queue::Shared(r) => r.endpoints().await,
        }
    }

    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, LogError> {
        match self {
            Queue::Local(s) => s.endpoint(id),
            Queue::Shared(r) => r.endpoint(id).await,
        }
    }

    /// Applies `change` to the stored endpoint and saves it, as a compare-and-set in a
    /// cluster: a node's cached copy may be a second old, and writing it back whole would undo
    /// another node's edit (say, re-enable an endpoint an operator just disabled). `change`
    /// may run more than once. None: no such endpoint.
    pub async fn modify(
        &self,
        id: &str,
        change: &(dyn Fn(&mut Endpoint) + Send + Sync),
    ) -> Result<Option<Endpoint>, LogError> {
        match self {
            Queue::Local(s) => {
                let Some(mut endpoint) = s.endpoint(id)? else {
                    return Ok(None);
                };
                change(&mut endpoint);
                s.put_endpoint(&endpoint, None)?;
                Ok(Some(endpoint))
            }
            Queue::Shared(r) => r.modify(id, change).await,
        }
    }

    pub async fn put_endpoint(
        &self,
        endpoint: &Endpoint,
        cursor: Option<u64>,
    ) -> Result<(), LogError> {
        match self {
            Queue::Local(s) => s.put_endpoint(endpoint, cursor),
            Queue::Shared(r) => r.put_endpoint(endpoint, cursor).await,
        }
    }

    pub async fn cursor(&self, id: &str) -> Result<u64, LogError> {
        match self {
            Queue::Local(s) => s.cursor(id),
            Queue::Shared(r) => r.cursor(id).await,
        }
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<(), LogError> {
        match self {
            Queue::Local(s) => s.delete_endpoint(id),
            Queue::Shared(r) => r.delete_endpoint(id).await,
        }
    }

    /// Queues `seqs` for `id` (due now). With `cursor`, only seqs after the stored cursor are
    /// queued and the cursor moves to `cursor` (so several nodes following the same endpoint
    /// queue each event once); without, the seqs are queued regardless (replay).
    pub async fn enqueue(
        &self,
        id: &str,
        seqs: &[u64],
        cursor: Option<u64>,
        now_ms: u64,
    ) -> Result<(), LogError> {
        match self {
            Queue::Local(s) => s.enqueue(id, seqs, cursor, now_ms),
            Queue::Shared(r) => r.enqueue(id, seqs, cursor, now_ms).await,
        }
    }

    /// Claims due tasks within `wants` (per endpoint) and `total`. `in_flight` is what this
    /// node is attempting now (the local queue has no other record of it).
    pub async fn claim(
        &self,
        now_ms: u64,
        wants: &HashMap<String, Want>,
        total: usize,
        in_flight: &HashSet<(String, u64)>,
    ) -> Result<Vec<(String, Task)>, LogError> {
        match self {
            Queue::Local(s) => Ok(claim_local(s, now_ms, wants, total, in_flight)),
            Queue::Shared(r) => r.claim(now_ms, wants, total).await,
        }
    }

    /// Hands claims back (due now) so another node takes the tasks at once. Only claims
    /// still held by their token are touched; a single node has none.
    pub async fn release(
        &self,
        claims: &[(String, u64, Arc<str>)],
        now_ms: u64,
    ) -> Result<(), LogError> {
        match self {
            Queue::Local(_) => Ok(()),
            Queue::Shared(r) => r.release(claims, now_ms).await,
        }
    }

    pub async fn pending_count(&self, id: &str) -> Result<usize, LogError> {
        match self {
            Queue::Local(s) => Ok(s.pending_count(id)),
            Queue::Shared(r) => r.pending_count(id).await,
        }
    }

    /// Records an attempt and applies its resolution, atomically. In a cluster the resolution
    /// applies only while this node still holds the claim.
    pub async fn finish(
        &self,
        id: &str,
        task: Task,
        attempt: Attempt,
        resolution: Resolution,
    ) -> Result<Attempt, LogError> {
        match self {
            Queue::Local(s) => s.finish(id, task, attempt, resolution),
            Queue::Shared(r) => r.finish(id, task, attempt, resolution).await,
        }
    }

    pub async fn attempts(
        &self,
        id: &str,
        after: u64,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, LogError> {
        match self {
            Queue::Local(s) => s.attempts(id, after, status, limit),
            Queue::Shared(r) => r.attempts(id, after, status, limit).await,
        }
    }

    pub async fn trim_attempts(&self, cutoff_ms: u64) -> Result<usize, LogError> {
        match self {
            Queue::Local(s) => s.trim_attempts(cutoff_ms),
            Queue::Shared(r) => r.trim_attempts(cutoff_ms).await,
        }
    }

    pub async fn failed_seqs(&self, id: &str, after: u64) -> Result<Vec<u64>, LogError> {
        match self {
            Queue::Local(s) => s.failed_seqs(id, after),
            Queue::Shared(r) => r.failed_seqs(id, after).await,
        }
    }
}

/// The single-node claim: a scan of the in-memory due index that seeks past busy endpoints.
fn claim_local(
    store: &WebhookStore,
    now_ms: u64,
    wants: &HashMap<String, Want>,
    total: usize,
    in_flight: &HashSet<(String, u64)>,
) -> Vec<(String, Task)> {
    let mut taken: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut saturated = 0;
    store.scan_due(now_ms, |id, task, is_head| {
        if out.len() >= total || saturated >= wants.len() {
            return Step::Stop;
        }
        let Some((key, want)) = wants.get_key_value(id) else {
            return Step::SkipEndpoint;
        };
        let n = taken.entry(key.as_str()).or_default();
        if *n >= want.capacity {
            saturated += 1;
            return Step::SkipEndpoint;
        }
        if in_flight.contains(&(id.to_string(), task.seq)) {
            return Step::Next;
        }
        // Ordered endpoints send only their head, retried until it resolves.
        if want.ordered && !is_head {
            return Step::SkipEndpoint;
        }
        *n += 1;
        out.push((id.to_string(), task));
        Step::Next
    });
    out
}

const ENQUEUE: &str = r#"#!lua
local p, id, now, cursor = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', p .. ':wh:endpoints', id) == 0 then return -1 end
local cur = tonumber(redis.call('HGET', p .. ':wh:cursor', id) or '0')
local n = 0
for i = 5, #ARGV do
  local s = ARGV[i]
  if cursor == '' or tonumber(s) > cur then
    redis.call('ZADD', p .. ':wh:due:' .. id, now, s)
    redis.call('ZADD', p .. ':wh:pending:' .. id, s, s)
    redis.call('HSET', p .. ':wh:tasks:' .. id, s, 0)
    redis.call('HDEL', p .. ':wh:claims:' .. id, s)
    redis.call('ZREM', p .. ':wh:failed:' .. id, s)
    n = n + 1
  end
end
if cursor ~= '' and tonumber(cursor) > cur then
  redis.call('HSET', p .. ':wh:cursor', id, cursor)
end
return n
"#;

/// Claims due tasks: each claimed task's due time moves to the end of the lease and the claim
/// token is recorded. Returns `{id, seq, attempts, ...}`.
const CLAIM: &str = r#"#!lua
local p, now, lease_end, token, total = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local out = {}
local taken = 0
for i = 6, #ARGV, 3 do
  if taken >= total then break end
  local id, cap, ordered = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2] == '1'
  cap = math.min(cap, total - taken)
  local due = p .. ':wh:due:' .. id
  local seqs = {}
  if ordered then
    local head = redis.call('ZRANGE', p .. ':wh:pending:' .. id, 0, 0)[1]
    if head then
      local at = redis.call('ZSCORE', due, head)
      if at and tonumber(at) <= now then seqs[1] = head end
    end
  else
    seqs = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, cap)
  end
  for _, s in ipairs(seqs) do
    redis.call('ZADD', due, lease_end, s)
    redis.call('HSET', p .. ':wh:claims:' .. id, s, token)
    out[#out + 1] = id
    out[#out + 1] = s
    out[#out + 1] = redis.call('HGET', p .. ':wh:tasks:' .. id, s) or '0'
    taken = taken + 1
  end
end
return out
"#;

/// Records an attempt (id from a counter, spliced into the JSON the node made with id 0) and,
/// if the caller still holds the claim, applies the resolution. Returns `{attempt id, owned}`.
const FINISH: &str = r#"#!lua
local p, id, seq, token, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local next_at, made, json, keep = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call('HEXISTS', p .. ':wh:endpoints', id) == 0 then return {0, 0} end
local claims = p .. ':wh:claims:' .. id
local owned = redis.call('HGET', claims, seq) == token
local n = redis.call('INCR', p .. ':wh:attempt_seq')
redis.call('XADD', p .. ':wh:attempts:' .. id, 'MAXLEN', '~', keep, string.format('%d-0', n),
  'a', '{"id":' .. string.format('%d', n) .. string.sub(json, 8))
if owned then
  redis.call('HDEL', claims, seq)
  if kind == 'delivered' or kind == 'failed' then
    redis.call('ZREM', p .. ':wh:due:' .. id, seq)
    redis.call('ZREM', p .. ':wh:pending:' .. id, seq)
    redis.call('HDEL', p .. ':wh:tasks:' .. id, seq)
    if kind == 'failed' then redis.call('ZADD', p .. ':wh:failed:' .. id, seq, seq) end
  elseif kind == 'retry' then
    redis.call('ZADD', p .. ':wh:due:' .. id, next_at, seq)
    redis.call('HSET', p .. ':wh:tasks:' .. id, seq, made)
  end
end
return {n, owned and 1 or 0}
"#;

/// Gives claims back: due now, no claim token. Returns how many were still held.
const RELEASE: &str = r#"#!lua
local p, now = ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV, 3 do
  local id, seq, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HGET', p .. ':wh:claims:' .. id, seq) == token then
    redis.call('HDEL', p .. ':wh:claims:' .. id, seq)
    redis.call('ZADD', p .. ':wh:due:' .. id, 'XX', now, seq)
    n = n + 1
  end
end
return n
"#;

/// Compare-and-set of one endpoint's JSON.
const SWAP: &str = r#"#!lua
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"#;

/// Most attempt records kept per endpoint (besides the age limit).
const ATTEMPTS_KEPT: usize = 100_000;

/// The cluster's webhook queue on Redis. Keys under `P:wh:` (P = `redis.prefix`):
/// `endpoints` (hash id -> JSON), `cursor` (hash id -> seq), and per endpoint `due:<id>`
/// (zset seq by due ms; a claimed task's due time is its lease end), `pending:<id>` (zset seq
/// by seq: the head for ordered delivery), `tasks:<id>` (hash seq -> attempts made),
/// `claims:<id>` (hash seq -> claim token), `failed:<id>` (zset), `attempts:<id>` (stream,
/// ID = attempt id), and `attempt_seq`.
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    /// How long a claim lasts; past it, another node may attempt the task.
    lease_ms: u64,
    /// This node's claim tokens: node id + counter.
    node: String,
    claims: std::sync::atomic::AtomicU64,
    enqueue: Script,
    claim: Script,
    finish: Script,
    swap: Script,
    release: Script,
}

impl RedisQueue {
    pub fn new(conn: ConnectionManager, prefix: &str, lease: std::time::Duration) -> RedisQueue {
        let mut node = [0u8; 6];
        getrandom::fill(&mut node).expect("OS random source");
        RedisQueue {
            conn,
            prefix: prefix.to_string(),
            lease_ms: lease.as_millis() as u64,
            node: node.iter().map(|b| format!("{b:02x}")).collect(),
            claims: Default::default(),
            enqueue: Script::new(ENQUEUE),
            claim: Script::new(CLAIM),
            finish: Script::new(FINISH),
            swap: Script::new(SWAP),
            release: Script::new(RELEASE),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:wh:{name}", self.prefix)
    }

    fn key_of(&self, name: &str, id: &str) -> String {
        format!("{}:wh:{name}:{id}", self.prefix)
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>, LogError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("endpoints"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        all.iter().map(|(_, json)| parse_endpoint(json)).collect()
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, LogError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.key("endpoints"))
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        json.map(|j| parse_endpoint(&j)).transpose()
    }

    async fn modify(
        &self,
        id: &str,
        change: &(dyn Fn(&mut Endpoint) + Send + Sync),
    ) -> Result<Option<Endpoint>, LogError> {
        let key = self.key("endpoints");
        for _ in 0..16 {
            let old: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg(id)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            let Some(old) = old else { return Ok(None) };
            let mut endpoint = parse_endpoint(&old)?;
            change(&mut endpoint);
            let new =
                serde_json::to_string(&endpoint).map_err(|e| LogError::Storage(e.to_string()))?;
            let swapped: i64 = self
                .swap
                .key(&key)
                .arg(id)
                .arg(&old)
                .arg(&new)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            if swapped == 1 {
                return Ok(Some(endpoint));
            }
        }
        Err(LogError::Unavailable(format!(
            "webhook endpoint {id} kept changing under this update; try again"
        )))
    }

    async fn put_endpoint(&self, endpoint: &Endpoint, cursor: Option<u64>) -> Result<(), LogError> {
        let json = serde_json::to_string(endpoint).map_err(|e| LogError::Storage(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.key("endpoints"), &endpoint.id, json)
            .ignore();
        if let Some(c) = cursor {
            pipe.hset(self.key("cursor"), &endpoint.id, c).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn cursor(&self, id: &str) -> Result<u64, LogError> {
        let c: Option<u64> = redis::cmd("HGET")
            .arg(self.key("cursor"))
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(c.unwrap_or(0))
    }

    async fn delete_endpoint(&self, id: &str) -> Result<(), LogError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.key("endpoints"), id)
            .hdel(self.key("cursor"), id);
        for name in ["due", "pending", "tasks", "claims", "failed", "attempts"] {
            pipe.del(self.key_of(name, id));
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn enqueue(
        &self,
        id: &str,
        seqs: &[u64],
        cursor: Option<u64>,
        now_ms: u64,
    ) -> Result<(), LogError> {
        let mut invocation = self.enqueue.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(id)
            .arg(now_ms)
            .arg(cursor.map(|c| c.to_string()).unwrap_or_default());
        for seq in seqs {
            invocation.arg(seq);
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn claim(
        &self,
        now_ms: u64,
        wants: &HashMap<String, Want>,
        total: usize,
    ) -> Result<Vec<(String, Task)>, LogError> {
        if wants.is_empty() || total == 0 {
            return Ok(Vec::new());
        }
        let n = self
            .claims
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = format!("{}:{n}", self.node);
        let mut invocation = self.claim.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(now_ms)
            .arg(now_ms + self.lease_ms)
            .arg(&token)
            .arg(total);
        for (id, want) in wants {
            invocation
                .arg(id)
                .arg(want.capacity)
                .arg(if want.ordered { "1" } else { "0" });
        }
        let flat: Vec<String> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(flat
            .chunks(3)
            .filter_map(|c| {
                let seq = c.get(1)?.parse().ok()?;
                let attempts = c.get(2)?.parse().ok()?;
                Some((
                    c[0].clone(),
                    Task {
                        seq,
                        attempts,
                        next_at_ms: now_ms,
                        claim: Some(token.clone().into()),
                    },
                ))
            })
            .collect())
    }

    async fn release(
        &self,
        claims: &[(String, u64, Arc<str>)],
        now_ms: u64,
    ) -> Result<(), LogError> {
        let mut invocation = self.release.prepare_invoke();
        invocation.arg(&self.prefix).arg(now_ms);
        for (id, seq, token) in claims {
            invocation.arg(id).arg(seq).arg(token.as_ref());
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn pending_count(&self, id: &str) -> Result<usize, LogError> {
        redis::cmd("ZCARD")
            .arg(self.key_of("pending", id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn finish(
        &self,
        id: &str,
        task: Task,
        mut attempt: Attempt,
        resolution: Resolution,
    ) -> Result<Attempt, LogError> {
        attempt.id = 0;
        let json = serde_json::to_string(&attempt).map_err(|e| LogError::Storage(e.to_string()))?;
        debug_assert!(json.starts_with("{\"id\":0,"));
        let (kind, next_at) = match resolution {
            Resolution::Delivered => ("delivered", 0),
            Resolution::Retry { next_at_ms } => ("retry", next_at_ms),
            Resolution::Failed => ("failed", 0),
            Resolution::Keep => ("keep", 0),
        };
        let (n, owned): (u64, i64) = self
            .finish
            .arg(&self.prefix)
            .arg(id)
            .arg(task.seq)
            .arg(task.claim.as_deref().unwrap_or(""))
            .arg(kind)
            .arg(next_at)
            .arg(task.attempts + 1)
            .arg(json)
            .arg(ATTEMPTS_KEPT)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if owned == 0 {
            tracing::warn!(
                endpoint = id,
                seq = task.seq,
                "webhook claim expired before the attempt finished; another node owns the task now"
            );
        }
        attempt.id = n;
        Ok(attempt)
    }

    async fn attempts(
        &self,
        id: &str,
        after: u64,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, LogError> {
        let mut out = Vec::new();
        let mut from = after.saturating_add(1);
        loop {
            let reply: Value = redis::cmd("XRANGE")
                .arg(self.key_of("attempts", id))
                .arg(format!("{from}-0"))
                .arg("+")
                .arg("COUNT")
                .arg(500)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            let records = stream_records(&reply)?;
            let done = records.len() < 500;
            for (n, attempt) in records {
                from = n + 1;
                if status.is_none_or(|s| s == attempt.status) {
                    out.push(attempt);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    async fn trim_attempts(&self, cutoff_ms: u64) -> Result<usize, LogError> {
        let mut trimmed = 0;
        for endpoint in self.endpoints().await? {
            let key = self.key_of("attempts", &endpoint.id);
            let reply: Value = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            let records = stream_records(&reply)?;
            let young = records.iter().find(|(_, a)| a.time_ms >= cutoff_ms);
            let minid = match (young, records.last()) {
                (Some((n, _)), _) => *n,
                (None, Some((n, _))) => n + 1,
                (None, None) => continue,
            };
            let n: usize = redis::cmd("XTRIM")
                .arg(&key)
                .arg("MINID")
                .arg(format!("{minid}-0"))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(unavailable)?;
            trimmed += n;
        }
        Ok(trimmed)
    }

    async fn failed_seqs(&self, id: &str, after: u64) -> Result<Vec<u64>, LogError> {
        redis::cmd("ZRANGEBYSCORE")
            .arg(self.key_of("failed", id))
            .arg(format!("({after}"))
            .arg("+inf")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }
}

fn parse_endpoint(json: &str) -> Result<Endpoint, LogError> {
    serde_json::from_str(json)
        .map_err(|e| LogError::Storage(format!("corrupt webhook endpoint: {e}")))
}

/// Parses XRANGE entries of the attempt log: `[[id, ["a", json]], ...]`.
fn stream_records(v: &Value) -> Result<Vec<(u64, Attempt)>, LogError> {
    let corrupt = || LogError::Storage("corrupt webhook attempt record".into());
    let Value::Array(items) = v else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| {
            let Value::Array(pair) = item else {
                return Err(corrupt());
            };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (pair.first(), pair.get(1))
            else {
                return Err(corrupt());
            };
            let n = std::str::from_utf8(id)
                .ok()
                .and_then(|s| s.split('-').next()?.parse().ok())
                .ok_or_else(corrupt)?;
            let Some(Value::BulkString(json)) = fields.get(1) else {
                return Err(corrupt());
            };
            let attempt = serde_json::from_slice(json).map_err(|_| corrupt())?;
            Ok((n, attempt))
        })
        .collect()
}
