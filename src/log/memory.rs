//! An in-memory [`Log`] for unit tests of what sits on the log (the hub's hand-over above
//! all). Appends commit at once and call the listener on the caller's thread, as the writer
//! thread would; reads see one consistent snapshot; and a test can run code just before a
//! read takes its snapshot or just after (before the read returns), to interleave commits
//! and trims with a subscriber's catch-up deterministically.

use std::sync::{Arc, Mutex, RwLock};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::{Appended, Bounds, CommitListener, Log, LogError, Page};
use crate::event::{Event, EventRef, Filter, NewEvent};

type Hook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
pub struct MemoryLog {
    state: Mutex<State>,
    listener: RwLock<Option<Arc<dyn CommitListener>>>,
    before_read: Mutex<Vec<Hook>>,
    after_read: Mutex<Vec<Hook>>,
}

#[derive(Default)]
struct State {
    events: Vec<EventRef>,
    head: u64,
    /// First retained seq (0 until the first trim: everything is retained).
    oldest: u64,
}

impl MemoryLog {
    pub fn new() -> Arc<MemoryLog> {
        Arc::new(MemoryLog::default())
    }

    /// Commits one event on `channel` and returns its seq.
    pub fn commit(&self, channel: &str) -> u64 {
        self.commit_group(&[channel])[0]
    }

    /// Commits one group, an event on each of `channels` in turn; returns their seqs.
    pub fn commit_group(&self, channels: &[&str]) -> Vec<u64> {
        let events = channels
            .iter()
            .map(|channel| {
                NewEvent::new(
                    crate::event::Source::Publisher,
                    (*channel).into(),
                    None,
                    serde_json::value::RawValue::from_string("1".into()).expect("JSON"),
                    None,
                )
                .unwrap()
            })
            .collect();
        self.commit_all(events)
    }

    fn commit_all(&self, events: Vec<NewEvent>) -> Vec<u64> {
        let committed: Vec<EventRef> = {
            let mut s = self.state.lock().expect("memory log");
            events
                .iter()
                .map(|new| {
                    s.head += 1;
                    let event = Arc::new(Event::encode(s.head, 0, new));
                    s.events.push(event.clone());
                    event
                })
                .collect()
        };
        if let Some(listener) = self.listener.read().expect("listener").as_ref() {
            listener.committed(&committed);
        }
        committed.iter().map(|e| e.seq).collect()
    }

    /// Retention: forgets every event before `oldest`.
    pub fn trim_to(&self, oldest: u64) {
        let mut s = self.state.lock().expect("memory log");
        s.events.retain(|e| e.seq >= oldest);
        s.oldest = oldest;
    }

    /// Runs `f` when the next read starts, before it takes its snapshot.
    pub fn before_next_read(&self, f: impl FnOnce() + Send + 'static) {
        self.before_read.lock().expect("hooks").push(Box::new(f));
    }

    /// Runs `f` after the next read took its snapshot, before it returns.
    pub fn after_next_read(&self, f: impl FnOnce() + Send + 'static) {
        self.after_read.lock().expect("hooks").push(Box::new(f));
    }

    fn run(hooks: &Mutex<Vec<Hook>>) {
        let taken = std::mem::take(&mut *hooks.lock().expect("hooks"));
        for hook in taken {
            hook();
        }
    }

    fn snapshot(&self, filter: &Filter, after: u64, limit: usize) -> Page {
        let s = self.state.lock().expect("memory log");
        let oldest = s.oldest.max(1);
        let from = after.max(oldest - 1);
        let events: Vec<EventRef> = s
            .events
            .iter()
            .filter(|e| e.seq > from && filter.matches(&e.channel))
            .take(limit)
            .cloned()
            .collect();
        let full = events.len() == limit;
        Page {
            next: match (full, events.last()) {
                (true, Some(last)) => last.seq,
                _ => s.head.max(from),
            },
            end: !full,
            reset: (after + 1 < oldest && after < s.head).then_some(oldest),
            events,
        }
    }
}

impl Log for MemoryLog {
    fn append(&self, events: Vec<NewEvent>) -> BoxFuture<'static, Result<Vec<Appended>, LogError>> {
        let seqs = self.commit_all(events);
        let appended = seqs
            .into_iter()
            .map(|seq| Appended {
                seq,
                duplicate: false,
            })
            .collect();
        async move { Ok(appended) }.boxed()
    }

    fn read(
        &self,
        filter: Arc<Filter>,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, LogError>> {
        Self::run(&self.before_read);
        let page = self.snapshot(&filter, after, limit);
        Self::run(&self.after_read);
        async move { Ok(page) }.boxed()
    }

    fn get(&self, seq: u64) -> BoxFuture<'static, Result<Option<EventRef>, LogError>> {
        let s = self.state.lock().expect("memory log");
        let found = s.events.iter().find(|e| e.seq == seq).cloned();
        async move { Ok(found) }.boxed()
    }

    fn bounds(&self) -> Bounds {
        let s = self.state.lock().expect("memory log");
        Bounds {
            oldest: s.oldest.max(1),
            head: s.head,
        }
    }

    fn set_listener(&self, listener: Arc<dyn CommitListener>) {
        *self.listener.write().expect("listener") = Some(listener);
    }

    fn close(&self) {}
}
