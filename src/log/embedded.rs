//! The embedded log on fjall (an LSM store with a checksummed journal and atomic cross-partition
//! batches). fjall was chosen over redb because its journal maps one-to-one onto our durability
//! policies: `PersistMode::SyncAll` for `fsync`, `PersistMode::Buffer` (in the OS, safe from a
//! process crash) for `os`, and because its append-heavy write path suits a log.
//!
//! One writer thread owns every write. It drains whatever publishes are waiting, writes them in
//! one batch, persists once (group commit), then acknowledges them all and hands the events to
//! the listener, so seq order, commit order and delivery order are the same order.
//!
//! Layout (partitions):
//! - `events`: seq (u64 BE) -> record (time, channel, type, envelope)
//! - `by_channel`: channel 0x00 seq (BE) -> empty; the per-channel index for history reads
//! - `dedup`: channel 0x00 publisher id -> seq (BE) + time ms (BE); an id is scoped to its
//!   channel, so a publisher of one channel cannot shadow another channel's events
//! - `meta`: `head` (last seq ever assigned, so seqs are never reused even after trimming),
//!   `oldest` (first retained seq)

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::{Appended, Bounds, CommitListener, Log, LogError, Page};
use crate::config::{Durability, LogConfig};
use crate::event::{now_ms, Event, EventRef, Filter, NewEvent};
use crate::store::keys::{be_u64, name_seq};
use crate::store::lock::DirLock;
use crate::store::StoreError;

mod record;
mod writer;

use record::Record;
use writer::{fault_injection, Reply, Writer};

/// The store's block cache.
const STORE_CACHE: u64 = 16 * 1024 * 1024;

/// All memtables together, before fjall flushes the largest.
const STORE_WRITE_BUFFERS: u64 = 24 * 1024 * 1024;

/// One partition's memtable.
const STORE_MEMTABLE: u32 = 4 * 1024 * 1024;

/// Publishes waiting for the writer; a full queue makes publishers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// Most log entries a pattern read examines per page, so a rare pattern cannot scan forever.
const SCAN_BUDGET: usize = 20_000;

enum Command {
    Append { events: Vec<NewEvent>, reply: Reply },
    Trim,
}

#[derive(Clone)]
struct Store {
    keyspace: Keyspace,
    events: PartitionHandle,
    by_channel: PartitionHandle,
    dedup: PartitionHandle,
    meta: PartitionHandle,
}

pub struct EmbeddedLog {
    store: Store,
    /// Set for good after a failed commit or sync (see `Writer::halt`).
    halted: Arc<AtomicBool>,
    oldest: Arc<AtomicU64>,
    head: Arc<AtomicU64>,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    listener: Arc<RwLock<Option<Arc<dyn CommitListener>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held while the log lives (the process, in `serve`): no second process opens this store.
    _owner: DirLock,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread and retention timer.
    pub fn open(dir: &Path, config: &LogConfig) -> Result<Arc<EmbeddedLog>, LogError> {
        if dir.exists() && !dir.is_dir() {
            return Err(LogError::Storage(StoreError::Io {
                what: format!("the data directory {}", dir.display()),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "it is a file, not a directory (--data, HERALD_DATA, server.data)",
                ),
            }));
        }
        std::fs::create_dir_all(dir).map_err(|source| {
            LogError::Storage(StoreError::Io {
                what: dir.display().to_string(),
                source,
            })
        })?;
        let owner = DirLock::acquire(dir)?;
        // Background sync each second covers state written beside the log without an explicit
        // persist (webhook queue bookkeeping, retention); the log itself persists per commit.
        // Memory is bounded explicitly (block cache, all memtables together, each memtable):
        // fjall's defaults would let a busy log hold ~100 MiB before it levels off.
        let keyspace = fjall::Config::new(dir)
            .fsync_ms(Some(1000))
            .cache_size(STORE_CACHE)
            .max_write_buffer_size(STORE_WRITE_BUFFERS)
            .open()?;
        let options = || PartitionCreateOptions::default().max_memtable_size(STORE_MEMTABLE);
        let open = |name: &str| keyspace.open_partition(name, options());
        let store = Store {
            events: open("events")?,
            by_channel: open("by_channel")?,
            dedup: open("dedup")?,
            meta: open("meta")?,
            keyspace: keyspace.clone(),
        };
        let head = read_u64(&store.meta, b"head")?
            .or(store.events.last_key_value()?.map(|(k, _)| be_u64(&k)))
            .unwrap_or(0);
        let oldest = read_u64(&store.meta, b"oldest")?
            .or(store.events.first_key_value()?.map(|(k, _)| be_u64(&k)))
            .unwrap_or(head + 1);
        let oldest = Arc::new(AtomicU64::new(oldest));
        let head = Arc::new(AtomicU64::new(head));
        let listener: Arc<RwLock<Option<Arc<dyn CommitListener>>>> = Arc::default();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let halted = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            halted: halted.clone(),
            syncs_before_fault: fault_injection(),
            assigned: head.load(Ordering::Acquire),
            store: store.clone(),
            config: config.clone(),
            oldest: oldest.clone(),
            head: head.clone(),
            listener: listener.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("herald-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| {
                LogError::Storage(StoreError::Io {
                    what: "starting the log writer".into(),
                    source,
                })
            })?;
        spawn_trim_timer(tx.clone(), config.trim_interval);
        Ok(Arc::new(EmbeddedLog {
            store,
            halted,
            oldest,
            head,
            tx: Mutex::new(Some(tx)),
            listener,
            writer: Mutex::new(Some(handle)),
            _owner: owner,
        }))
    }

    /// The store itself, for other durable state that lives beside the log (webhooks).
    pub fn keyspace(&self) -> Keyspace {
        self.store.keyspace.clone()
    }

    fn sender(&self) -> Option<mpsc::Sender<Command>> {
        self.tx.lock().expect("log sender lock").clone()
    }
}

fn spawn_trim_timer(tx: mpsc::Sender<Command>, every: Duration) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let tx = tx.downgrade();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        loop {
            tick.tick().await;
            let Some(tx) = tx.upgrade() else { return };
            // Skip a tick rather than queue trims behind a busy writer.
            let _ = tx.try_send(Command::Trim);
        }
    });
}

impl Log for EmbeddedLog {
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'static, Result<Vec<Appended>, LogError>> {
        super::request_append(self.sender(), |reply| Command::Append { events, reply })
    }

    fn read(
        &self,
        filter: Arc<Filter>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, LogError>> {
        // Only durable events are visible: a subscriber must never see a seq that a crash
        // could take back and reuse. `head` moves only after the writer's sync.
        let head = self.head.load(Ordering::Acquire);
        let store = self.store.clone();
        blocking(move || store.read(head, &filter, after, limit))
    }

    fn get(&self, seq: u64) -> BoxFuture<'static, Result<Option<EventRef>, LogError>> {
        let head = self.head.load(Ordering::Acquire);
        let store = self.store.clone();
        blocking(move || store.get(head, seq))
    }

    /// One trip to the blocking pool for the lot.
    fn get_many(
        &self,
        seqs: Vec<u64>,
    ) -> BoxFuture<'static, Result<Vec<Option<EventRef>>, LogError>> {
        let head = self.head.load(Ordering::Acquire);
        let store = self.store.clone();
        blocking(move || seqs.iter().map(|&seq| store.get(head, seq)).collect())
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            oldest: self.oldest.load(Ordering::Acquire),
            head: self.head.load(Ordering::Acquire),
        }
    }

    fn ready(&self) -> bool {
        !self.halted.load(Ordering::Acquire)
    }

    fn set_listener(&self, listener: Arc<dyn CommitListener>) {
        *self.listener.write().expect("listener lock") = Some(listener);
    }

    fn close(&self) {
        self.tx.lock().expect("log sender lock").take();
        if let Some(handle) = self.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

/// Runs a store read on the blocking pool: LSM reads may touch the disk.
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> BoxFuture<'static, Result<T, LogError>> {
    async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| LogError::Storage(StoreError::Task(e)))?
    }
    .boxed()
}

impl Store {
    fn read(&self, head: u64, filter: &Filter, after: u64, limit: usize) -> Result<Page, LogError> {
        let s = self;
        let instant = s.keyspace.instant();
        let events = s.events.snapshot_at(instant);
        let meta = s.meta.snapshot_at(instant);
        let oldest = match meta.get(b"oldest")? {
            Some(v) => be_u64(&v),
            None => events
                .first_key_value()?
                .map(|(k, _)| be_u64(&k))
                .unwrap_or(head + 1),
        };
        let mut page = Page {
            reset: (after.saturating_add(1) < oldest && after < head).then_some(oldest),
            ..Page::default()
        };
        let after = after.max(oldest.saturating_sub(1));
        let limit = limit.max(1);
        if after >= head {
            page.end = true;
            page.next = after;
            return Ok(page);
        }
        let window = Window { after, head, limit };
        if filter.has_patterns() {
            scan(&events, filter, window, &mut page)?;
        } else {
            let index = s.by_channel.snapshot_at(instant);
            read_channels(&events, &index, filter, window, &mut page)?;
        }
        Ok(page)
    }

    fn get(&self, head: u64, seq: u64) -> Result<Option<EventRef>, LogError> {
        if seq == 0 || seq > head {
            return Ok(None);
        }
        match self.events.get(seq_key(seq))? {
            Some(v) => Ok(Some(Arc::new(Record::decode(&v)?.into_event(seq, &v)))),
            None => Ok(None),
        }
    }
}

/// The seqs a read may return: after `after`, up to `head`, at most `limit` of them.
#[derive(Clone, Copy)]
struct Window {
    after: u64,
    head: u64,
    limit: usize,
}

/// A pattern can match any channel: scan the log itself, bounded per page.
fn scan(
    events: &fjall::Snapshot,
    filter: &Filter,
    w: Window,
    page: &mut Page,
) -> Result<(), LogError> {
    let mut scanned = 0;
    let mut last = w.after;
    page.end = true;
    for item in events.range(seq_key(w.after.saturating_add(1))..) {
        let (k, v) = item?;
        let seq = be_u64(&k);
        if seq > w.head {
            break;
        }
        last = seq;
        scanned += 1;
        let record = Record::decode(&v)?;
        if filter.matches(record.channel) {
            page.events.push(Arc::new(record.into_event(seq, &v)));
        }
        if page.events.len() >= w.limit || scanned >= SCAN_BUDGET {
            page.end = false;
            break;
        }
    }
    page.next = if page.end { w.head.max(w.after) } else { last };
    Ok(())
}

/// Exact channels: merge the per-channel index ranges by seq.
fn read_channels(
    events: &fjall::Snapshot,
    index: &fjall::Snapshot,
    filter: &Filter,
    w: Window,
    page: &mut Page,
) -> Result<(), LogError> {
    let mut seqs = Vec::new();
    let mut complete = true;
    for channel in filter.channels() {
        let from = name_seq(channel, w.after.saturating_add(1));
        let to = name_seq(channel, w.head);
        for (n, item) in index.range(from..=to).enumerate() {
            if n >= w.limit {
                complete = false;
                break;
            }
            let (k, _) = item?;
            seqs.push(be_u64(&k[k.len() - 8..]));
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    if seqs.len() > w.limit {
        complete = false;
        seqs.truncate(w.limit);
    }
    for seq in &seqs {
        if let Some(v) = events.get(seq_key(*seq))? {
            let record = Record::decode(&v)?;
            page.events.push(Arc::new(record.into_event(*seq, &v)));
        }
    }
    page.end = complete;
    page.next = match (complete, seqs.last()) {
        (true, _) => w.head.max(w.after),
        (false, Some(last)) => *last,
        (false, None) => w.after,
    };
    Ok(())
}

/// The key of an event: its seq, big-endian (so the partition is in seq order).
fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn read_u64(p: &PartitionHandle, key: &[u8]) -> Result<Option<u64>, LogError> {
    Ok(p.get(key)?.filter(|v| v.len() == 8).map(|v| be_u64(&v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn new(channel: &str, id: Option<&str>) -> NewEvent {
        NewEvent::new(
            crate::event::Source::Publisher,
            channel.into(),
            None,
            RawValue::from_string("1".into()).unwrap(),
            id.map(Into::into),
        )
        .unwrap()
    }

    fn config() -> LogConfig {
        LogConfig {
            durability: Durability::Os,
            ..LogConfig::default()
        }
    }

    #[tokio::test]
    async fn append_read_and_reopen_continue_the_seq() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), &config()).unwrap();
        let r = log
            .append(vec![new("a", None), new("b", None), new("a", None)])
            .await
            .unwrap();
        assert_eq!(r.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let page = log
            .read(Arc::new(Filter::parse(["a"]).unwrap()), 0, 10)
            .await
            .unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert!(page.end);
        assert_eq!(page.next, 3);
        let page = log
            .read(Arc::new(Filter::parse(["*"]).unwrap()), 1, 1)
            .await
            .unwrap();
        assert_eq!(page.events[0].seq, 2);
        assert!(!page.end);
        log.close();
        drop(log);
        let log = EmbeddedLog::open(dir.path(), &config()).unwrap();
        assert_eq!(log.bounds(), Bounds { oldest: 1, head: 3 });
        let r = log.append(vec![new("a", None)]).await.unwrap();
        assert_eq!(r[0].seq, 4);
        log.close();
    }

    #[tokio::test]
    async fn duplicate_ids_return_the_original_seq() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(dir.path(), &config()).unwrap();
        let first = log.append(vec![new("a", Some("k1"))]).await.unwrap();
        let again = log
            .append(vec![new("a", Some("k1")), new("a", Some("k2"))])
            .await
            .unwrap();
        assert_eq!(
            first[0],
            Appended {
                seq: 1,
                duplicate: false
            }
        );
        assert_eq!(
            again[0],
            Appended {
                seq: 1,
                duplicate: true
            }
        );
        assert_eq!(
            again[1],
            Appended {
                seq: 2,
                duplicate: false
            }
        );
        log.close();
    }

    #[tokio::test]
    async fn retention_by_count_trims_oldest_and_reports_reset() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            max_events: 3,
            trim_interval: Duration::from_millis(20),
            ..config()
        };
        let log = EmbeddedLog::open(dir.path(), &cfg).unwrap();
        for _ in 0..10 {
            log.append(vec![new("a", None)]).await.unwrap();
        }
        for _ in 0..200 {
            if log.bounds().oldest == 8 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            log.bounds(),
            Bounds {
                oldest: 8,
                head: 10
            }
        );
        let page = log
            .read(Arc::new(Filter::parse(["a"]).unwrap()), 2, 10)
            .await
            .unwrap();
        assert_eq!(page.reset, Some(8));
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        log.close();
        drop(log); // lets go of the directory's lock
                   // Trimming never lets seqs be reused.
        let log = EmbeddedLog::open(dir.path(), &cfg).unwrap();
        assert_eq!(log.append(vec![new("a", None)]).await.unwrap()[0].seq, 11);
        log.close();
    }
}
