//! Durable webhook state on the embedded store: endpoints, each endpoint's cursor into the log,
//! pending delivery tasks with a due-time index, and the attempt log (where a failed delivery
//! is found: its last attempt says `failed`).
//!
//! Enqueuing writes the tasks and the endpoint's cursor in one atomic batch, so after a crash
//! either both exist or neither does, and the enqueuer re-reads the log from the cursor: no
//! event is dropped, none is queued twice.
//!
//! Pending tasks are mirrored in memory ([`Index`]): what is due and each endpoint's head are
//! answered from there. Keeping the due-time index in the LSM store instead would make every
//! scan wade through the tombstones of delivered tasks. Partitions:
//! - `wh_endpoints`: id -> endpoint JSON
//! - `wh_cursor`: id -> last seq enqueued (BE)
//! - `wh_tasks`: id 0x00 seq -> attempts made (u32 BE) + next attempt ms (u64 BE)
//! - `wh_attempts`: id 0x00 attempt number (BE) -> attempt JSON

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle};

use crate::store::keys::{be_u32, be_u64, name_prefix, name_seq, split_name_seq};
use crate::store::StoreError;
use crate::webhook::model::{Attempt, AttemptStatus, Endpoint, Finished, Resolution, Task};

#[derive(Clone)]
pub struct WebhookStore {
    keyspace: Keyspace,
    endpoints: PartitionHandle,
    cursors: PartitionHandle,
    tasks: PartitionHandle,
    attempts: PartitionHandle,
    /// Next attempt id; attempt ids increase across the whole store.
    next_attempt: Arc<AtomicU64>,
    index: Arc<Mutex<Index>>,
}

/// The in-memory mirror of `wh_tasks`. Updated after each store commit, under its lock.
#[derive(Default)]
struct Index {
    /// (due ms, endpoint, seq), in time order.
    due: BTreeSet<(u64, Arc<str>, u64)>,
    /// endpoint -> seq -> (attempts made, next attempt ms)
    tasks: HashMap<Arc<str>, BTreeMap<u64, (u32, u64)>>,
}

impl Index {
    fn put(&mut self, id: &str, seq: u64, attempts: u32, at: u64) {
        let key: Arc<str> = Arc::from(id);
        let tasks = self.tasks.entry(key.clone()).or_default();
        if let Some((_, old_at)) = tasks.insert(seq, (attempts, at)) {
            self.due.remove(&(old_at, key.clone(), seq));
        }
        self.due.insert((at, key, seq));
    }

    fn remove(&mut self, id: &str, seq: u64) {
        let Some(tasks) = self.tasks.get_mut(id) else {
            return;
        };
        let Some((_, at)) = tasks.remove(&seq) else {
            return;
        };
        if tasks.is_empty() {
            self.tasks.remove(id);
        }
        self.due.remove(&(at, Arc::from(id), seq));
    }
}

/// What [`WebhookStore::scan_due`] does after visiting a task.
pub enum Step {
    Next,
    SkipEndpoint,
    Stop,
}

/// `endpoint 0x00 seq`: the key of a task.
pub fn task_key(endpoint: &str, seq: u64) -> Vec<u8> {
    name_seq(endpoint, seq)
}

fn task_value(attempts: u32, next_at_ms: u64) -> Vec<u8> {
    let mut v = attempts.to_be_bytes().to_vec();
    v.extend_from_slice(&next_at_ms.to_be_bytes());
    v
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Json {
        what: "webhook record",
        source: e,
    }
}

impl WebhookStore {
    pub fn open(keyspace: Keyspace) -> Result<WebhookStore, StoreError> {
        let open = |name: &str| keyspace.open_partition(name, PartitionCreateOptions::default());
        // Earlier versions kept a set of failed tasks that nothing read; drop it.
        if keyspace.partition_exists("wh_failed") {
            keyspace.delete_partition(open("wh_failed")?)?;
        }
        let store = WebhookStore {
            endpoints: open("wh_endpoints")?,
            cursors: open("wh_cursor")?,
            tasks: open("wh_tasks")?,
            attempts: open("wh_attempts")?,
            next_attempt: Default::default(),
            index: Default::default(),
            keyspace,
        };
        {
            let mut index = store.index.lock().expect("webhook index");
            for item in store.tasks.iter() {
                let (k, v) = item?;
                if let Some((id, seq)) = split_name_seq(&k) {
                    index.put(&id, seq, be_u32(&v[..4]), be_u64(&v[4..12]));
                }
            }
        }
        // Attempt keys end in the attempt id, so each endpoint's last key holds its highest.
        let mut max = 0;
        for endpoint in store.endpoints()? {
            if let Some(item) = store.attempts.prefix(name_prefix(&endpoint.id)).next_back() {
                let (k, _) = item?;
                max = max.max(be_u64(&k[k.len() - 8..]));
            }
        }
        store.next_attempt.store(max + 1, Ordering::Release);
        Ok(store)
    }

    pub fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        self.endpoints
            .iter()
            .map(|item| {
                let (_, v) = item?;
                serde_json::from_slice(&v).map_err(json_err)
            })
            .collect()
    }

    pub fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        self.endpoints
            .get(id.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(json_err))
            .transpose()
    }

    /// Saves an endpoint; `cursor` (the seq it starts after) is set only when given.
    pub fn put_endpoint(&self, endpoint: &Endpoint, cursor: Option<u64>) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        batch.insert(
            &self.endpoints,
            endpoint.id.as_bytes(),
            serde_json::to_vec(endpoint).map_err(json_err)?,
        );
        if let Some(c) = cursor {
            batch.insert(&self.cursors, endpoint.id.as_bytes(), c.to_be_bytes());
        }
        Ok(batch.commit()?)
    }

    pub fn cursor(&self, id: &str) -> Result<u64, StoreError> {
        Ok(self
            .cursors
            .get(id.as_bytes())?
            .map(|v| be_u64(&v))
            .unwrap_or(0))
    }

    /// Deletes an endpoint with its cursor, tasks, failures and attempts.
    pub fn delete_endpoint(&self, id: &str) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        batch.remove(&self.endpoints, id.as_bytes());
        batch.remove(&self.cursors, id.as_bytes());
        let mut index = self.index.lock().expect("webhook index");
        let seqs: Vec<u64> = index
            .tasks
            .get(id)
            .map(|t| t.keys().copied().collect())
            .unwrap_or_default();
        for &seq in &seqs {
            batch.remove(&self.tasks, task_key(id, seq));
        }
        for item in self.attempts.prefix(name_prefix(id)) {
            batch.remove(&self.attempts, item?.0);
        }
        batch.commit()?;
        for seq in seqs {
            index.remove(id, seq);
        }
        Ok(())
    }

    /// Queues `seqs` for `id` (due now) and moves its cursor, atomically. Re-queuing a seq
    /// resets its attempts (replay).
    pub fn enqueue(
        &self,
        id: &str,
        seqs: &[u64],
        cursor: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        for &seq in seqs {
            let key = task_key(id, seq);
            batch.insert(&self.tasks, key, task_value(0, now_ms));
        }
        if let Some(c) = cursor {
            batch.insert(&self.cursors, id.as_bytes(), c.to_be_bytes());
        }
        let mut index = self.index.lock().expect("webhook index");
        batch.commit()?;
        for &seq in seqs {
            index.put(id, seq, 0, now_ms);
        }
        Ok(())
    }

    /// Visits what is due by `now_ms`, oldest first, under the index lock (so every task seen
    /// is current). The visitor may skip the rest of an endpoint's run (a seek, not a scan: a
    /// busy endpoint with a long backlog costs nothing) or stop. `is_head` tells whether the
    /// task is its endpoint's lowest pending seq.
    pub fn scan_due(&self, now_ms: u64, mut visit: impl FnMut(&str, Task, bool) -> Step) {
        use std::ops::Bound::{Excluded, Unbounded};
        let index = self.index.lock().expect("webhook index");
        let mut from: std::ops::Bound<(u64, Arc<str>, u64)> = Unbounded;
        while let Some((at, id, seq)) = index.due.range((from, Unbounded)).next().cloned() {
            if at > now_ms {
                break;
            }
            let tasks = &index.tasks[&id];
            let &(attempts, _) = &tasks[&seq];
            let is_head = tasks.first_key_value().is_some_and(|(s, _)| *s == seq);
            from = match visit(
                &id,
                Task {
                    seq,
                    attempts,
                    claim: None,
                },
                is_head,
            ) {
                Step::Next => Excluded((at, id, seq)),
                Step::SkipEndpoint => Excluded((at, id, u64::MAX)),
                Step::Stop => break,
            };
        }
    }

    /// Tasks queued over all endpoints, and the earliest due time among them.
    pub fn queue_stats(&self) -> (usize, Option<u64>) {
        let index = self.index.lock().expect("webhook index");
        (index.due.len(), index.due.first().map(|(at, _, _)| *at))
    }

    pub fn endpoint_queue(&self, id: &str) -> (usize, Option<u64>) {
        let index = self.index.lock().expect("webhook index");
        index.tasks.get(id).map_or((0, None), |tasks| {
            (tasks.len(), tasks.values().map(|(_, at)| *at).min())
        })
    }

    pub fn pending_count(&self, id: &str) -> usize {
        let index = self.index.lock().expect("webhook index");
        index.tasks.get(id).map_or(0, BTreeMap::len)
    }

    /// Records attempts and applies their resolutions to their tasks, atomically, in one
    /// store batch: the delivery workers' results are written together, not one write (and
    /// one journal lock) per attempt.
    pub fn finish(&self, finished: &mut [Finished]) -> Result<(), StoreError> {
        let mut batch = self.keyspace.batch();
        for Finished {
            endpoint,
            task,
            attempt,
            resolution,
        } in finished.iter_mut()
        {
            let key = task_key(endpoint, task.seq);
            match *resolution {
                Resolution::Delivered | Resolution::Failed => batch.remove(&self.tasks, key),
                Resolution::Retry { next_at_ms } => {
                    batch.insert(&self.tasks, key, task_value(task.attempts + 1, next_at_ms))
                }
                Resolution::Keep => {}
            }
            attempt.id = self.next_attempt.fetch_add(1, Ordering::AcqRel);
            let mut akey = name_prefix(endpoint);
            akey.extend_from_slice(&attempt.id.to_be_bytes());
            batch.insert(
                &self.attempts,
                akey,
                serde_json::to_vec(attempt).map_err(json_err)?,
            );
        }
        let mut index = self.index.lock().expect("webhook index");
        batch.commit()?;
        for f in finished.iter() {
            match f.resolution {
                Resolution::Delivered | Resolution::Failed => index.remove(&f.endpoint, f.task.seq),
                Resolution::Retry { next_at_ms } => {
                    index.put(&f.endpoint, f.task.seq, f.task.attempts + 1, next_at_ms)
                }
                Resolution::Keep => {}
            }
        }
        Ok(())
    }

    /// Attempts of an endpoint with id > `after`, optionally only those with `status`.
    pub fn attempts(
        &self,
        id: &str,
        after: u64,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let mut from = name_prefix(id);
        from.extend_from_slice(&(after.saturating_add(1)).to_be_bytes());
        let mut to = name_prefix(id);
        to.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for item in self.attempts.range(from..=to) {
            let (_, v) = item?;
            let attempt: Attempt = serde_json::from_slice(&v).map_err(json_err)?;
            if status.is_none_or(|s| s == attempt.status) {
                out.push(attempt);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The newest attempts first, reading back from the end of the endpoint's log.
    pub fn attempts_newest(
        &self,
        id: &str,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        let from = name_prefix(id);
        let mut to = name_prefix(id);
        to.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for item in self.attempts.range(from..=to).rev() {
            let (_, v) = item?;
            let attempt: Attempt = serde_json::from_slice(&v).map_err(json_err)?;
            if status.is_none_or(|s| s == attempt.status) {
                out.push(attempt);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Drops attempt records older than `cutoff_ms` (the attempt log is bounded by retention).
    pub fn trim_attempts(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut batch = self.keyspace.batch();
        for endpoint in self.endpoints()? {
            for item in self.attempts.prefix(name_prefix(&endpoint.id)) {
                let (k, v) = item?;
                let attempt: Attempt = serde_json::from_slice(&v).map_err(json_err)?;
                if attempt.time_ms >= cutoff_ms || batch.len() >= 10_000 {
                    break;
                }
                batch.remove(&self.attempts, k);
            }
        }
        let n = batch.len();
        if n > 0 {
            batch.commit()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(seq: u64, status: AttemptStatus) -> Attempt {
        Attempt {
            id: 0,
            seq,
            attempt: 1,
            status,
            status_code: Some(200),
            error: None,
            duration_ms: 1,
            time: String::new(),
            time_ms: 0,
            next_attempt: None,
            response_body: None,
        }
    }

    fn finished(endpoint: &str, seq: u64, resolution: Resolution) -> Finished {
        let status = match resolution {
            Resolution::Delivered => AttemptStatus::Delivered,
            Resolution::Retry { .. } => AttemptStatus::Retrying,
            Resolution::Failed => AttemptStatus::Failed,
            Resolution::Keep => AttemptStatus::Disabled,
        };
        Finished {
            endpoint: endpoint.into(),
            task: Task {
                seq,
                attempts: 0,
                claim: None,
            },
            attempt: attempt(seq, status),
            resolution,
        }
    }

    fn due(store: &WebhookStore, now: u64) -> Vec<(String, u64, u32)> {
        let mut out = Vec::new();
        store.scan_due(now, |id, task, _| {
            out.push((id.to_string(), task.seq, task.attempts));
            Step::Next
        });
        out.sort();
        out
    }

    /// One batch of mixed outcomes over two endpoints: each resolution lands on its own task,
    /// every attempt gets its own id, and all of it is on disk (a reopened store agrees).
    #[test]
    fn a_batch_of_attempts_resolves_each_task_durably() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let keyspace = fjall::Config::new(dir.path()).open().unwrap();
            WebhookStore::open(keyspace).unwrap()
        };
        let store = open();
        store.enqueue("a", &[1, 2, 3], Some(3), 0).unwrap();
        store.enqueue("b", &[1], Some(1), 0).unwrap();
        let mut batch = vec![
            finished("a", 1, Resolution::Delivered),
            finished("a", 2, Resolution::Retry { next_at_ms: 5_000 }),
            finished("a", 3, Resolution::Failed),
            finished("b", 1, Resolution::Keep),
        ];
        store.finish(&mut batch).unwrap();

        let ids: Vec<u64> = batch.iter().map(|f| f.attempt.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(due(&store, 1_000), vec![("b".into(), 1, 0)]);
        let later = vec![("a".into(), 2, 1), ("b".into(), 1, 0)];
        assert_eq!(due(&store, 10_000), later);
        let logged: Vec<(u64, AttemptStatus)> = store
            .attempts("a", 0, None, 10)
            .unwrap()
            .iter()
            .map(|a| (a.seq, a.status))
            .collect();
        assert_eq!(
            logged,
            vec![
                (1, AttemptStatus::Delivered),
                (2, AttemptStatus::Retrying),
                (3, AttemptStatus::Failed)
            ]
        );
        drop(store);
        assert_eq!(due(&open(), 10_000), later);
    }
}
