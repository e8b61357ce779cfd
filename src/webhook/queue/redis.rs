//! The cluster's webhook queue on Redis. Every write that must be atomic is one Lua script
//! (in the `.lua` files beside this one): enqueue (tasks and cursor together), claim (a
//! lease), finish (the attempt record and the task's next state), release, swap (compare and
//! set of an endpoint).

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::Want;
use crate::store::StoreError;
use crate::webhook::model::{Attempt, AttemptStatus, Endpoint, Resolution, Task};

const ENQUEUE: &str = include_str!("enqueue.lua");
const CLAIM: &str = include_str!("claim.lua");
const FINISH: &str = include_str!("finish.lua");
const RELEASE: &str = include_str!("release.lua");
const SWAP: &str = include_str!("swap.lua");

/// Most attempt records kept per endpoint (besides the age limit).
const ATTEMPTS_KEPT: usize = 100_000;

/// The cluster's webhook queue on Redis. Keys under `P:wh:` (P = `redis.prefix`):
/// `endpoints` (hash id -> JSON), `cursor` (hash id -> seq), and per endpoint `due:<id>`
/// (zset seq by due ms; a claimed task's due time is its lease end), `pending:<id>` (zset seq
/// by seq: the head for ordered delivery), `tasks:<id>` (hash seq -> attempts made),
/// `claims:<id>` (hash seq -> claim token), `attempts:<id>` (stream, ID = attempt id), and
/// `attempt_seq`. (`failed:<id>`, written by earlier versions and never read, is only deleted.)
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

    pub(super) async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(self.key("endpoints"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        all.iter().map(|(_, json)| parse_endpoint(json)).collect()
    }

    /// The endpoint set's version: moved in the same atomic step as every change to it.
    pub(super) async fn endpoints_version(&self) -> Result<u64, StoreError> {
        let v: Option<u64> = redis::cmd("GET")
            .arg(self.key("version"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        Ok(v.unwrap_or(0))
    }

    pub(super) async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(self.key("endpoints"))
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        json.map(|j| parse_endpoint(&j)).transpose()
    }

    pub(super) async fn modify(
        &self,
        id: &str,
        change: &(dyn Fn(&mut Endpoint) + Send + Sync),
    ) -> Result<Option<Endpoint>, StoreError> {
        let key = self.key("endpoints");
        for _ in 0..16 {
            let old: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg(id)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(StoreError::from)?;
            let Some(old) = old else { return Ok(None) };
            let mut endpoint = parse_endpoint(&old)?;
            change(&mut endpoint);
            let new =
                serde_json::to_string(&endpoint).map_err(StoreError::json("webhook record"))?;
            let swapped: i64 = self
                .swap
                .key(&key)
                .key(self.key("version"))
                .arg(id)
                .arg(&old)
                .arg(&new)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(StoreError::from)?;
            if swapped == 1 {
                return Ok(Some(endpoint));
            }
        }
        Err(StoreError::Contended(format!(
            "webhook endpoint {id} kept changing under this update; try again"
        )))
    }

    pub(super) async fn put_endpoint(
        &self,
        endpoint: &Endpoint,
        cursor: Option<u64>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(endpoint).map_err(StoreError::json("webhook record"))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(self.key("endpoints"), &endpoint.id, json)
            .ignore()
            .incr(self.key("version"), 1)
            .ignore();
        if let Some(c) = cursor {
            pipe.hset(self.key("cursor"), &endpoint.id, c).ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    pub(super) async fn cursor(&self, id: &str) -> Result<u64, StoreError> {
        let c: Option<u64> = redis::cmd("HGET")
            .arg(self.key("cursor"))
            .arg(id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        Ok(c.unwrap_or(0))
    }

    pub(super) async fn delete_endpoint(&self, id: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.key("endpoints"), id)
            .hdel(self.key("cursor"), id)
            .incr(self.key("version"), 1);
        for name in ["due", "pending", "tasks", "claims", "failed", "attempts"] {
            pipe.del(self.key_of(name, id));
        }
        pipe.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    pub(super) async fn enqueue(
        &self,
        id: &str,
        seqs: &[u64],
        cursor: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
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
            .map_err(StoreError::from)?;
        Ok(())
    }

    pub(super) async fn claim(
        &self,
        now_ms: u64,
        wants: &HashMap<String, Want>,
        total: usize,
    ) -> Result<Vec<(String, Task)>, StoreError> {
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
            .map_err(StoreError::from)?;
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
                        claim: Some(token.clone().into()),
                    },
                ))
            })
            .collect())
    }

    pub(super) async fn release(
        &self,
        claims: &[(String, u64, Arc<str>)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation.arg(&self.prefix).arg(now_ms);
        for (id, seq, token) in claims {
            invocation.arg(id).arg(seq).arg(token.as_ref());
        }
        let _: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    pub(super) async fn endpoint_queue(
        &self,
        id: &str,
    ) -> Result<(usize, Option<u64>), StoreError> {
        let (count, first): (usize, Vec<(u64, f64)>) = redis::pipe()
            .cmd("ZCARD")
            .arg(self.key_of("pending", id))
            .cmd("ZRANGE")
            .arg(self.key_of("due", id))
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok((count, first.first().map(|(_, at)| *at as u64)))
    }

    pub(super) async fn pending_count(&self, id: &str) -> Result<usize, StoreError> {
        redis::cmd("ZCARD")
            .arg(self.key_of("pending", id))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)
    }

    pub(super) async fn finish(
        &self,
        id: String,
        task: Task,
        mut attempt: Attempt,
        resolution: Resolution,
    ) -> Result<Attempt, StoreError> {
        attempt.id = 0;
        let json = serde_json::to_string(&attempt).map_err(StoreError::json("webhook record"))?;
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
            .arg(&id)
            .arg(task.seq)
            .arg(task.claim.as_deref().unwrap_or(""))
            .arg(kind)
            .arg(next_at)
            .arg(task.attempts + 1)
            .arg(json)
            .arg(ATTEMPTS_KEPT)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(StoreError::from)?;
        if owned == 0 && task.claim.is_some() {
            tracing::warn!(
                endpoint = %id,
                seq = task.seq,
                "webhook claim expired before the attempt finished; another node owns the task now"
            );
        }
        attempt.id = n;
        Ok(attempt)
    }

    pub(super) async fn attempts(
        &self,
        id: &str,
        after: u64,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        self.scan_attempts(id, Scan::After(after), status, limit)
            .await
    }

    /// The newest attempts first (`XREVRANGE`): what a poll of the newest needs, without
    /// reading the endpoint's whole attempt log.
    pub(super) async fn attempts_newest(
        &self,
        id: &str,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        self.scan_attempts(id, Scan::Newest, status, limit).await
    }

    /// Reads an endpoint's attempt log in pages of 500, forward from a number or back from
    /// the end, keeping up to `limit` of the given status.
    async fn scan_attempts(
        &self,
        id: &str,
        scan: Scan,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let mut out = Vec::new();
        // The next page's bound: from it up (forward), from it down (back).
        let mut bound = match scan {
            Scan::After(after) => Some(after.saturating_add(1)),
            Scan::Newest => None,
        };
        loop {
            let mut cmd = match scan {
                Scan::After(_) => redis::cmd("XRANGE"),
                Scan::Newest => redis::cmd("XREVRANGE"),
            };
            cmd.arg(self.key_of("attempts", id));
            match (scan, bound) {
                (Scan::After(_), Some(b)) => cmd.arg(format!("{b}-0")).arg("+"),
                (Scan::Newest, Some(b)) => cmd.arg(format!("{b}-0")).arg("-"),
                (_, None) => cmd.arg("+").arg("-"),
            };
            let reply: Value = cmd
                .arg("COUNT")
                .arg(500)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(StoreError::from)?;
            let records = stream_records(&reply)?;
            let done = records.len() < 500;
            for (n, attempt) in records {
                bound = match scan {
                    Scan::After(_) => Some(n + 1),
                    Scan::Newest if n == 0 => return Ok(out),
                    Scan::Newest => Some(n - 1),
                };
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

    pub(super) async fn trim_attempts(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
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
                .map_err(StoreError::from)?;
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
                .map_err(StoreError::from)?;
            trimmed += n;
        }
        Ok(trimmed)
    }
}

fn parse_endpoint(json: &str) -> Result<Endpoint, StoreError> {
    serde_json::from_str(json).map_err(StoreError::json("webhook endpoint"))
}

/// Parses XRANGE entries of the attempt log: `[[id, ["a", json]], ...]`.
fn stream_records(v: &Value) -> Result<Vec<(u64, Attempt)>, StoreError> {
    let corrupt = || StoreError::Corrupt("webhook attempt record".into());
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

/// Which way an attempt log is read.
#[derive(Clone, Copy)]
enum Scan {
    After(u64),
    Newest,
}
