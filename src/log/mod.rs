//! The durable, ordered event log: the one source of truth for seq order.
//!
//! Owns durability (acknowledge only once stored by policy), seq assignment, idempotency and
//! retention. It never knows who is subscribed: after each commit it hands the committed events
//! to a [`CommitListener`] (the hub), in seq order.

pub mod embedded;
#[cfg(test)]
pub mod memory;
pub mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::event::{EventRef, Filter, NewEvent};
use crate::store::StoreError;

pub use embedded::EmbeddedLog;
pub use redis::RedisLog;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the event log's storage failed: {0}")]
    Storage(#[source] StoreError),
    #[error("the log is shutting down")]
    Closed,
    /// The shared engine (Redis) cannot be reached: nothing was written, try again.
    #[error("the event log is unreachable: {0}")]
    Unavailable(#[source] StoreError),
    /// Making this append durable failed part-way: the events may or may not be on disk.
    /// The log halted (see `Halted`); a retry with the same ids after a restart is never
    /// doubled.
    #[error("the event log could not make these events durable (its {step} failed)")]
    Uncertain {
        step: &'static str,
        /// Shared: one failed commit answers every publish in its group.
        #[source]
        source: std::sync::Arc<StoreError>,
    },
    /// An earlier storage failure left the store in a state nobody can vouch for, so the log
    /// accepts no more writes until the process restarts. Nothing was written.
    #[error("the event log stopped accepting writes after a storage failure")]
    Halted,
    /// The append reached the primary but not `redis.min_replicas` replicas in time: it may
    /// or may not survive a failover. Retrying with the same ids is never doubled.
    #[error("the event log could not confirm these events on enough replicas ({0})")]
    Unconfirmed(String),
    /// The shared engine is a Redis older than the scripts need.
    #[error(
        "Redis {0} is too old: Herald needs Redis 7.0 or newer (Debian 12, Ubuntu 24.04, or \
         packages.redis.io)"
    )]
    RedisTooOld(String),
    /// Another process owns the data directory.
    #[error(transparent)]
    Locked(#[from] crate::store::lock::LockError),
}

/// Transient store failures (Redis unreachable) are `Unavailable`: retry. The rest are
/// `Storage`.
impl From<StoreError> for LogError {
    fn from(e: StoreError) -> Self {
        if e.is_transient() {
            LogError::Unavailable(e)
        } else {
            LogError::Storage(e)
        }
    }
}

impl From<fjall::Error> for LogError {
    fn from(e: fjall::Error) -> Self {
        LogError::Storage(e.into())
    }
}

impl From<fjall::LsmError> for LogError {
    fn from(e: fjall::LsmError) -> Self {
        LogError::Storage(e.into())
    }
}

/// Result of appending one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// The event's `id` was seen within the dedup window: nothing new was written and `seq`
    /// is the original one.
    pub duplicate: bool,
}

/// One page of a history read.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<EventRef>,
    /// Cursor to continue from: every matching event `<= next` has been returned.
    pub next: u64,
    /// The read reached the head of the log as of the read.
    pub end: bool,
    /// Events after the requested cursor were already trimmed; the oldest retained seq.
    pub reset: Option<u64>,
}

/// The retained range: `oldest..=head` (empty when `oldest > head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub oldest: u64,
    pub head: u64,
}

/// Receives each committed group of events, in seq order, on the log's writer.
/// Must not block: it runs on the commit path.
pub trait CommitListener: Send + Sync {
    fn committed(&self, events: &[EventRef]);

    /// Events this node never saw were trimmed before it could read them (it was cut off
    /// from the shared log for longer than retention): every live subscriber must resume from
    /// its cursor to learn of the gap.
    fn lost(&self) {}
}

/// Where a log's writer answers an append.
pub(crate) type AppendReply = oneshot::Sender<Result<Vec<Appended>, LogError>>;

/// Hands an append to a log's writer and waits for its answer: the request path of both
/// logs, whose writers fold whatever is waiting into one commit. `None`: the log is closed.
pub(crate) fn request_append<C: Send + 'static>(
    tx: Option<mpsc::Sender<C>>,
    command: impl FnOnce(AppendReply) -> C + Send + 'static,
) -> BoxFuture<'static, Result<Vec<Appended>, LogError>> {
    async move {
        let tx = tx.ok_or(LogError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(command(reply))
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }
    .boxed()
}

/// A durable, ordered log: the embedded store on one node, Redis shared by a cluster.
pub trait Log: Send + Sync + 'static {
    /// Appends `events` atomically (all or none); resolves once durable by the configured
    /// policy, with one result per event in order.
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'static, Result<Vec<Appended>, LogError>>;

    /// Reads up to `limit` events matching `filter` with seq > `after`, in seq order, from one
    /// consistent snapshot.
    fn read(
        &self,
        filter: Arc<Filter>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, LogError>>;

    /// One durable event by seq (None if never written, not yet durable, or trimmed).
    fn get(&self, seq: u64) -> BoxFuture<'static, Result<Option<EventRef>, LogError>>;

    /// Several events by seq, in the order asked (webhook delivery reads a scheduling pass's
    /// events together). By default, concurrent `get`s.
    fn get_many(
        &self,
        seqs: Vec<u64>,
    ) -> BoxFuture<'static, Result<Vec<Option<EventRef>>, LogError>> {
        let gets: Vec<_> = seqs.into_iter().map(|seq| self.get(seq)).collect();
        futures_util::future::try_join_all(gets).boxed()
    }

    /// `head` is the last seq this node has handed to its listener (every event up to it is
    /// readable), `oldest` the first retained one.
    fn bounds(&self) -> Bounds;

    /// Whether appends can succeed now (false while a shared engine is unreachable, or after
    /// a storage failure halted the log).
    fn ready(&self) -> bool {
        true
    }

    /// Sets who hears about commits. Called once, before the first append.
    fn set_listener(&self, listener: Arc<dyn CommitListener>);

    /// Finishes pending appends and stops the writer.
    fn close(&self);
}
