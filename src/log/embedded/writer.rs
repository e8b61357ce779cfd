//! The writer thread: the only code that writes the log. It drains waiting publishes into one
//! batch, persists once (group commit), then acknowledges them all and hands the events to the
//! listener, so seq order, commit order and delivery order are one order. Retention runs here
//! too, between commits. A failed commit or sync halts it for good (see `halt`).

use super::*;

/// Most requests folded into one commit.
pub(super) const MAX_GROUP: usize = 512;

/// Most events deleted per retention batch, so a trim never stalls publishes for long.
pub(super) const TRIM_CHUNK: usize = 10_000;

/// The writer thread's state. Only this thread writes to the store.
pub(super) struct Writer {
    pub(super) store: Store,
    pub(super) halted: Arc<AtomicBool>,
    /// Test hook: how many syncs succeed before one reports failure (see `fault_injection`).
    pub(super) syncs_before_fault: Option<u64>,
    /// Last seq assigned and committed (visible in the store, maybe not yet synced).
    pub(super) assigned: u64,
    pub(super) config: LogConfig,
    pub(super) oldest: Arc<AtomicU64>,
    pub(super) head: Arc<AtomicU64>,
    pub(super) listener: Arc<RwLock<Option<Arc<dyn CommitListener>>>>,
}

pub(super) type Reply = crate::log::AppendReply;

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group: Vec<(Vec<NewEvent>, Reply)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut trim = false;
            let mut next = Some(first);
            while let Some(cmd) = next {
                match cmd {
                    Command::Append { events, reply } => group.push((events, reply)),
                    Command::Trim => trim = true,
                }
                next = if group.len() < MAX_GROUP {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
            if trim {
                if let Err(e) = self.trim() {
                    tracing::error!(error = %e, "retention trim failed");
                }
            }
        }
        // Everything queued has been committed; make sure it is on disk before exiting.
        if let Err(e) = self.store.keyspace.persist(PersistMode::SyncAll) {
            tracing::error!(error = %e, "final log sync failed");
        }
    }

    fn persist_mode(&self) -> PersistMode {
        match self.config.durability {
            Durability::Fsync => PersistMode::SyncAll,
            Durability::Os => PersistMode::Buffer,
        }
    }

    /// Writes every waiting request in one batch, persists once, then acknowledges.
    fn commit(&mut self, group: &mut Vec<(Vec<NewEvent>, Reply)>) {
        if self.halted.load(Ordering::Acquire) {
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(LogError::Halted));
            }
            return;
        }
        let started = std::time::Instant::now();
        let s = &self.store;
        let now = now_ms();
        let window_ms = self.config.dedup_window.as_millis() as u64;
        let mut batch = s.keyspace.batch();
        let mut next = self.assigned + 1;
        let mut seen: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut committed: Vec<EventRef> = Vec::new();
        let mut results: Vec<Result<Vec<Appended>, LogError>> = Vec::with_capacity(group.len());
        for (events, _) in group.iter() {
            let mut out = Vec::with_capacity(events.len());
            for new in events {
                let dedup = new.id().map(|id| dedup_key(new.channel(), id));
                if let Some(key) = &dedup {
                    let original = match seen.get(key) {
                        Some(seq) => Some(*seq),
                        None => match self.dedup_lookup(key, now, window_ms) {
                            Ok(found) => found,
                            Err(e) => {
                                tracing::error!(error = %e, "dedup lookup failed");
                                None
                            }
                        },
                    };
                    if let Some(seq) = original {
                        out.push(Appended {
                            seq,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let seq = next;
                next += 1;
                let event = Event::encode(seq, now, new);
                batch.insert(&s.events, seq_key(seq), Record::encode(&event));
                batch.insert(&s.by_channel, name_seq(new.channel(), seq), []);
                if let Some(key) = dedup {
                    let mut v = seq.to_be_bytes().to_vec();
                    v.extend_from_slice(&now.to_be_bytes());
                    batch.insert(&s.dedup, &key, v);
                    seen.insert(key, seq);
                }
                out.push(Appended {
                    seq,
                    duplicate: false,
                });
                committed.push(Arc::new(event));
            }
            results.push(Ok(out));
        }
        let last = next - 1;
        if !committed.is_empty() {
            batch.insert(&s.meta, b"head", last.to_be_bytes());
            if let Err(e) = batch.commit() {
                self.halt(group, "commit", e.into());
                return;
            }
            self.assigned = last;
            if let Err(e) = self.sync() {
                self.halt(group, "sync", e);
                return;
            }
            self.head.store(last, Ordering::Release);
            crate::stats::get().commit(started.elapsed(), committed.len());
            if let Some(listener) = self.listener.read().expect("listener lock").as_ref() {
                listener.committed(&committed);
            }
        }
        for ((_, reply), result) in group.drain(..).zip(results) {
            let _ = reply.send(result);
        }
    }

    /// Persists by the configured policy (or reports the injected fault).
    fn sync(&mut self) -> Result<(), StoreError> {
        let result = self
            .store
            .keyspace
            .persist(self.persist_mode())
            .map_err(StoreError::from);
        match &mut self.syncs_before_fault {
            Some(0) => Err(StoreError::Io {
                what: "injected sync failure (HERALD_TEST_FAIL_SYNC_AFTER)".into(),
                source: std::io::Error::other("fsync"),
            }),
            Some(n) => {
                *n -= 1;
                result
            }
            None => result,
        }
    }

    /// A commit or sync failed part-way. After a failed fsync the kernel may have dropped
    /// the dirty pages and marked them clean, and fjall cannot say what reached the disk, so
    /// nothing this process writes afterwards can be trusted to line up with it: a later
    /// commit would make these seqs readable in history although no subscriber or webhook
    /// was ever handed them. So the log stops for good: this group hears the truth (maybe
    /// stored), later appends are refused, `/readyz` fails, and a restart re-reads the store,
    /// where whatever did land is delivered to resuming subscribers and webhooks alike.
    fn halt(
        &mut self,
        group: &mut Vec<(Vec<NewEvent>, Reply)>,
        step: &'static str,
        error: StoreError,
    ) {
        self.halted.store(true, Ordering::Release);
        tracing::error!(
            error = %error,
            "the event log's {step} failed: it accepts no more writes; restart Herald once \
             the disk is healthy"
        );
        let source = Arc::new(error);
        for (_, reply) in group.drain(..) {
            let _ = reply.send(Err(LogError::Uncertain {
                step,
                source: source.clone(),
            }));
        }
    }

    fn dedup_lookup(&self, key: &[u8], now: u64, window_ms: u64) -> Result<Option<u64>, LogError> {
        Ok(self.store.dedup.get(key)?.and_then(|v| {
            let (seq, at) = (be_u64(&v[..8]), be_u64(&v[8..16]));
            (now.saturating_sub(at) <= window_ms).then_some(seq)
        }))
    }

    /// Applies retention by count and age, oldest first, in bounded atomic chunks. Each chunk
    /// moves `oldest` in the same batch, so a reader's snapshot never sees a half-trimmed log.
    fn trim(&self) -> Result<(), LogError> {
        let s = &self.store;
        let now = now_ms();
        let cutoff = now.saturating_sub(self.config.retention.as_millis() as u64);
        loop {
            let head = self.head.load(Ordering::Acquire);
            let oldest = self.oldest.load(Ordering::Acquire);
            let count = (head + 1).saturating_sub(oldest);
            let excess = count.saturating_sub(self.config.max_events);
            let mut batch = s.keyspace.batch();
            let mut deleted = 0usize;
            let mut new_oldest = oldest;
            for item in s.events.range(seq_key(oldest)..) {
                let (k, v) = item?;
                let record = Record::decode(&v)?;
                if deleted as u64 >= excess && record.time_ms >= cutoff {
                    break;
                }
                let seq = be_u64(&k);
                batch.remove(&s.events, seq_key(seq));
                batch.remove(&s.by_channel, name_seq(record.channel, seq));
                new_oldest = seq + 1;
                deleted += 1;
                if deleted >= TRIM_CHUNK {
                    break;
                }
            }
            if deleted == 0 {
                break;
            }
            batch.insert(&s.meta, b"oldest", new_oldest.to_be_bytes());
            batch.commit()?;
            self.oldest.store(new_oldest, Ordering::Release);
            tracing::debug!(deleted, oldest = new_oldest, "retention trimmed the log");
            if deleted < TRIM_CHUNK {
                break;
            }
        }
        self.sweep_dedup(now)
    }

    /// Forgets publisher ids older than the dedup window.
    fn sweep_dedup(&self, now: u64) -> Result<(), LogError> {
        let s = &self.store;
        let window_ms = self.config.dedup_window.as_millis() as u64;
        let mut batch = s.keyspace.batch();
        for item in s.dedup.iter() {
            let (k, v) = item?;
            if now.saturating_sub(be_u64(&v[8..16])) > window_ms {
                batch.remove(&s.dedup, k);
            }
            if batch.len() >= TRIM_CHUNK {
                break;
            }
        }
        if !batch.is_empty() {
            batch.commit()?;
        }
        Ok(())
    }
}

/// The test-only fault hook: `HERALD_TEST_FAIL_SYNC_AFTER=N` makes the (N+1)th sync report
/// failure, so the end-to-end suite can drive the halt path through the real binary (no
/// filesystem here lets a test make fsync fail on demand). Unset in production.
pub(super) fn fault_injection() -> Option<u64> {
    std::env::var("HERALD_TEST_FAIL_SYNC_AFTER")
        .ok()
        .and_then(|n| n.parse().ok())
}

/// `channel 0x00 id`: channel names cannot hold a 0 byte, so no two pairs share a key.
/// Keys written before ids were scoped (the bare id) are never matched and expire with the
/// window.
pub(super) fn dedup_key(channel: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 1 + id.len());
    key.extend_from_slice(channel.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}
