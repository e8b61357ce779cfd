//! Telling a node's presence watchers what changed: per channel, changes collect for one
//! window and go out as one [`Diff`] through a broadcast channel (one frame built, shared by
//! every watcher).
//!
//! A diff is state-based: a join says "present now, with this info", a leave "gone now", and
//! a user who joins and leaves inside one window is not in it at all. Every entry carries the
//! version of the change, so a watcher whose snapshot was taken mid-window drops the entries
//! its snapshot already holds: each change reaches each watcher once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;

/// Diffs a watcher may fall behind before it is resynced with a fresh snapshot.
pub(super) const BACKLOG: usize = 32;

/// One membership change, as the backend decided it (in version order per channel).
#[derive(Debug, Clone)]
pub struct Change {
    pub channel: Arc<str>,
    pub user: Arc<str>,
    pub info: Arc<Value>,
    pub joined: bool,
    pub version: u64,
    /// Members of the channel right after the change.
    pub count: u64,
}

/// What one window of changes looks like to watchers.
#[derive(Debug)]
pub struct Diff {
    pub channel: Arc<str>,
    pub count: u64,
    /// Empty (and `counts_only`) above the list limit.
    pub entries: Vec<Entry>,
    pub counts_only: bool,
    /// The oldest and newest change versions in the window.
    pub first: u64,
    pub last: u64,
    /// Not a change: the backend lost track (Redis reconnected); watchers take a snapshot.
    pub resync: bool,
    ws: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub user: Arc<str>,
    pub info: Arc<Value>,
    pub joined: bool,
    pub version: u64,
}

impl Diff {
    fn new(channel: Arc<str>, count: u64, entries: Vec<Entry>, counts_only: bool) -> Diff {
        let first = entries.iter().map(|e| e.version).min().unwrap_or(0);
        let last = entries.iter().map(|e| e.version).max().unwrap_or(0);
        Diff {
            channel,
            count,
            entries,
            counts_only,
            first,
            last,
            resync: false,
            ws: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    fn resync(channel: Arc<str>) -> Diff {
        let mut d = Diff::new(channel, 0, Vec::new(), true);
        d.resync = true;
        d
    }

    /// The entries after `seen` (for a watcher whose snapshot is newer than the window's
    /// start), with the window's count.
    pub fn after(&self, seen: u64) -> Diff {
        let entries = self
            .entries
            .iter()
            .filter(|e| e.version > seen)
            .cloned()
            .collect();
        let mut d = Diff::new(self.channel.clone(), self.count, entries, self.counts_only);
        d.last = self.last;
        d
    }

    /// `{"channel","count","joins":[{"user","info"}],"leaves":[...]}` (joins and leaves
    /// omitted when only counts are told).
    pub fn body(&self) -> Value {
        let mut v = json!({"channel": &*self.channel, "count": self.count});
        if !self.counts_only {
            let side = |joined: bool| -> Vec<Value> {
                self.entries
                    .iter()
                    .filter(|e| e.joined == joined)
                    .map(|e| json!({"user": &*e.user, "info": &*e.info}))
                    .collect()
            };
            v["joins"] = side(true).into();
            v["leaves"] = side(false).into();
        }
        v
    }

    pub fn ws_text(&self) -> Bytes {
        self.ws
            .get_or_init(|| {
                let mut v = self.body();
                v["op"] = "presence".into();
                Bytes::from(v.to_string())
            })
            .clone()
    }

    pub fn sse_frame(&self) -> Bytes {
        self.sse
            .get_or_init(|| presence_frame(&self.body()))
            .clone()
    }
}

/// `event: presence` with no `id:`, so EventSource's resume cursor is never moved by it.
pub fn presence_frame(body: &Value) -> Bytes {
    Bytes::from(format!("event: presence\ndata: {body}\n\n"))
}

/// The node's outboxes, one per channel that has watchers here.
pub struct Notifier {
    rooms: Mutex<HashMap<Arc<str>, Outbox>>,
    window: Duration,
    list_limit: usize,
}

struct Outbox {
    tx: broadcast::Sender<Arc<Diff>>,
    pending: HashMap<Arc<str>, Pending>,
    count: u64,
    /// The count the last diff told (a window that changed nothing is not told).
    told: Option<u64>,
    scheduled: bool,
}

struct Pending {
    was_present: bool,
    entry: Entry,
}

impl Notifier {
    pub fn new(window: Duration, list_limit: usize) -> Arc<Notifier> {
        Arc::new(Notifier {
            rooms: Mutex::default(),
            window,
            list_limit,
        })
    }

    /// A receiver for `channel`'s diffs. Taken before the snapshot, so no change after the
    /// snapshot can be missed.
    pub fn subscribe(&self, channel: &Arc<str>) -> broadcast::Receiver<Arc<Diff>> {
        let mut rooms = self.rooms.lock().expect("presence outboxes");
        rooms
            .entry(channel.clone())
            .or_insert_with(|| Outbox {
                tx: broadcast::channel(BACKLOG).0,
                pending: HashMap::new(),
                count: 0,
                told: None,
                scheduled: false,
            })
            .tx
            .subscribe()
    }

    /// Records a change for the channel's next diff (nothing when nobody here watches it).
    pub fn change(self: &Arc<Self>, change: Change) {
        let mut rooms = self.rooms.lock().expect("presence outboxes");
        let Some(outbox) = rooms.get_mut(&change.channel) else {
            return;
        };
        if outbox.tx.receiver_count() == 0 {
            rooms.remove(&change.channel);
            return;
        }
        outbox.count = change.count;
        let entry = Entry {
            user: change.user.clone(),
            info: change.info,
            joined: change.joined,
            version: change.version,
        };
        outbox
            .pending
            .entry(change.user)
            .and_modify(|p| p.entry = entry.clone())
            .or_insert(Pending {
                was_present: !change.joined,
                entry,
            });
        if !outbox.scheduled {
            outbox.scheduled = true;
            let notifier = self.clone();
            let channel = change.channel;
            tokio::spawn(async move {
                tokio::time::sleep(notifier.window).await;
                notifier.flush(&channel);
            });
        }
    }

    fn flush(&self, channel: &Arc<str>) {
        let mut rooms = self.rooms.lock().expect("presence outboxes");
        let Some(outbox) = rooms.get_mut(channel) else {
            return;
        };
        outbox.scheduled = false;
        let pending = std::mem::take(&mut outbox.pending);
        let counts_only = outbox.count as usize > self.list_limit;
        let mut entries: Vec<Entry> = Vec::new();
        let (mut first, mut last) = (u64::MAX, 0);
        for p in pending.into_values() {
            first = first.min(p.entry.version);
            last = last.max(p.entry.version);
            // Joined and left (or the reverse) inside the window: nothing to tell.
            if p.was_present != p.entry.joined {
                entries.push(p.entry);
            }
        }
        entries.sort_by_key(|e| e.version);
        if entries.is_empty() && outbox.told == Some(outbox.count) {
            return;
        }
        outbox.told = Some(outbox.count);
        let mut diff = Diff::new(
            channel.clone(),
            outbox.count,
            if counts_only { Vec::new() } else { entries },
            counts_only,
        );
        // The window's span, even when its entries cancelled out: a watcher compares it
        // with its snapshot's version.
        (diff.first, diff.last) = (first, last);
        if outbox.tx.send(Arc::new(diff)).is_err() {
            rooms.remove(channel);
        }
    }

    /// Every watcher of every channel takes a fresh snapshot (the backend's state may have
    /// changed in ways no diff described, e.g. Redis restarted).
    pub fn resync_all(&self) {
        let mut rooms = self.rooms.lock().expect("presence outboxes");
        rooms.retain(|channel, outbox| {
            outbox.pending.clear();
            outbox
                .tx
                .send(Arc::new(Diff::resync(channel.clone())))
                .is_ok()
        });
    }
}
