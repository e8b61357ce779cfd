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

use std::collections::HashMap;
use std::sync::Arc;

mod embedded;
mod local;
mod redis;

pub use self::redis::RedisQueue;
use super::model::{Attempt, AttemptStatus, Endpoint, Finished, Task};
use crate::store::StoreError;
pub use embedded::WebhookStore;

/// What the scheduler may start for one endpoint now.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// More attempts this node may start for the endpoint.
    pub capacity: usize,
    /// One in flight, lowest seq first.
    pub ordered: bool,
}

pub enum DeliveryQueue {
    Local(WebhookStore),
    Shared(Box<RedisQueue>),
}

impl DeliveryQueue {
    /// Queued tasks and the earliest due time, where this node can tell cheaply (its own
    /// store's in-memory index; a cluster's queue is Redis's to count).
    pub fn queue_stats(&self) -> Option<(usize, Option<u64>)> {
        match self {
            DeliveryQueue::Local(s) => Some(s.queue_stats()),
            DeliveryQueue::Shared(_) => None,
        }
    }

    /// Whether endpoints can change under us (other nodes): then the service re-reads them.
    pub fn is_shared(&self) -> bool {
        matches!(self, DeliveryQueue::Shared(_))
    }

    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        match self {
            DeliveryQueue::Local(s) => blocking(s, |s| s.endpoints()).await,
            DeliveryQueue::Shared(r) => r.endpoints().await,
        }
    }

    /// Cluster: the shared endpoint set's version (see `RedisQueue::endpoints_version`); a
    /// single node's set changes only through this node, so it has none.
    pub async fn endpoints_version(&self) -> Result<Option<u64>, StoreError> {
        match self {
            DeliveryQueue::Local(_) => Ok(None),
            DeliveryQueue::Shared(r) => r.endpoints_version().await.map(Some),
        }
    }

    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.endpoint(&id)).await
            }
            DeliveryQueue::Shared(r) => r.endpoint(id).await,
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
    ) -> Result<Option<Endpoint>, StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let key = id.to_string();
                let Some(mut endpoint) = blocking(s, move |s| s.endpoint(&key)).await? else {
                    return Ok(None);
                };
                change(&mut endpoint);
                let saved = endpoint.clone();
                blocking(s, move |s| s.put_endpoint(&saved, None)).await?;
                Ok(Some(endpoint))
            }
            DeliveryQueue::Shared(r) => r.modify(id, change).await,
        }
    }

    pub async fn put_endpoint(
        &self,
        endpoint: &Endpoint,
        cursor: Option<u64>,
    ) -> Result<(), StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let endpoint = endpoint.clone();
                blocking(s, move |s| s.put_endpoint(&endpoint, cursor)).await
            }
            DeliveryQueue::Shared(r) => r.put_endpoint(endpoint, cursor).await,
        }
    }

    pub async fn cursor(&self, id: &str) -> Result<u64, StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.cursor(&id)).await
            }
            DeliveryQueue::Shared(r) => r.cursor(id).await,
        }
    }

    pub async fn delete_endpoint(&self, id: &str) -> Result<(), StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.delete_endpoint(&id)).await
            }
            DeliveryQueue::Shared(r) => r.delete_endpoint(id).await,
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
    ) -> Result<(), StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let (id, seqs) = (id.to_string(), seqs.to_vec());
                blocking(s, move |s| s.enqueue(&id, &seqs, cursor, now_ms)).await
            }
            DeliveryQueue::Shared(r) => r.enqueue(id, seqs, cursor, now_ms).await,
        }
    }

    /// Claims due tasks within `wants` (per endpoint) and `total`. `in_flight` is what this
    /// node is attempting now (the local queue has no other record of it).
    /// Claims due tasks. On one node the claim is a scan of the in-memory index, done in
    /// place (no await), so the caller can hold its in-flight set locked and answer `busy`
    /// from it instead of copying it per pass; a cluster's claim is Redis's, which knows
    /// what is leased, so it is asked with `claim_shared`.
    pub fn claim_local(
        &self,
        now_ms: u64,
        wants: &HashMap<String, Want>,
        total: usize,
        busy: impl Fn(&str, u64) -> bool,
    ) -> Option<Vec<(String, Task)>> {
        match self {
            DeliveryQueue::Local(s) => Some(local::claim(s, now_ms, wants, total, busy)),
            DeliveryQueue::Shared(_) => None,
        }
    }

    pub async fn claim_shared(
        &self,
        now_ms: u64,
        wants: &HashMap<String, Want>,
        total: usize,
    ) -> Result<Vec<(String, Task)>, StoreError> {
        match self {
            DeliveryQueue::Local(_) => Ok(Vec::new()),
            DeliveryQueue::Shared(r) => r.claim(now_ms, wants, total).await,
        }
    }

    /// Hands claims back (due now) so another node takes the tasks at once. Only claims
    /// still held by their token are touched; a single node has none.
    pub async fn release(
        &self,
        claims: &[(String, u64, Arc<str>)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match self {
            DeliveryQueue::Local(_) => Ok(()),
            DeliveryQueue::Shared(r) => r.release(claims, now_ms).await,
        }
    }

    /// One endpoint's queued tasks and the earliest due time among them.
    pub async fn endpoint_queue(&self, id: &str) -> Result<(usize, Option<u64>), StoreError> {
        match self {
            DeliveryQueue::Local(s) => Ok(s.endpoint_queue(id)),
            DeliveryQueue::Shared(r) => r.endpoint_queue(id).await,
        }
    }

    pub async fn pending_count(&self, id: &str) -> Result<usize, StoreError> {
        match self {
            DeliveryQueue::Local(s) => Ok(s.pending_count(id)),
            DeliveryQueue::Shared(r) => r.pending_count(id).await,
        }
    }

    /// Records attempts and applies their resolutions, each atomically (on one node all in
    /// one write). In a cluster a resolution applies only while this node still holds the
    /// claim.
    pub async fn finish(&self, mut finished: Vec<Finished>) -> Result<(), StoreError> {
        match self {
            DeliveryQueue::Local(s) => blocking(s, move |s| s.finish(&mut finished)).await,
            // Concurrent calls on the multiplexed connection go out as one pipeline.
            DeliveryQueue::Shared(r) => {
                let calls = finished
                    .into_iter()
                    .map(|f| r.finish(f.endpoint, f.task, f.attempt, f.resolution));
                futures_util::future::try_join_all(calls).await.map(|_| ())
            }
        }
    }

    pub async fn attempts(
        &self,
        id: &str,
        after: u64,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.attempts(&id, after, status, limit)).await
            }
            DeliveryQueue::Shared(r) => r.attempts(id, after, status, limit).await,
        }
    }

    pub async fn attempts_newest(
        &self,
        id: &str,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, StoreError> {
        match self {
            DeliveryQueue::Local(s) => {
                let id = id.to_string();
                blocking(s, move |s| s.attempts_newest(&id, status, limit)).await
            }
            DeliveryQueue::Shared(r) => r.attempts_newest(id, status, limit).await,
        }
    }

    pub async fn trim_attempts(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        match self {
            DeliveryQueue::Local(s) => blocking(s, move |s| s.trim_attempts(cutoff_ms)).await,
            DeliveryQueue::Shared(r) => r.trim_attempts(cutoff_ms).await,
        }
    }
}

/// Runs embedded-store work on the blocking pool: a write may wait on an fsync or a memtable
/// flush, and the async workers (which carry every connection) must never wait on a disk.
async fn blocking<T: Send + 'static>(
    store: &WebhookStore,
    f: impl FnOnce(&WebhookStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(StoreError::Task)?
}
