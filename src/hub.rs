//! Fan-out: live subscriptions by channel and pattern, and resume (history, then live).
//!
//! The log hands each committed group, in seq order, to the hub's dispatch threads. Live
//! subscriptions are split over them in shards (every subscription of one connection in the
//! same shard); each thread pushes a refcounted [`EventRef`] into every matching
//! subscription of its shard's bounded queue (`queue.rs`) or gives it to a caught-up
//! subscriber's [`Direct`] taker. It never waits on a subscriber: a full queue marks that
//! subscription lagged and its connection is closed, to resume from its cursor. Transports
//! never read the log themselves; they hold a [`Subscription`].

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::event::{EventRef, Filter, NewEvent};
use crate::log::{Appended, CommitListener, Log, LogError};

mod patterns;
mod queue;

use patterns::PatternIndex;
use queue::SubscriptionQueue;

/// Events read from the log per catch-up page.
const PAGE: usize = 512;

pub struct Hub {
    log: Arc<dyn Log>,
    /// One per dispatch thread. Every event goes to every shard, in seq order; a
    /// subscription lives in one, so it is only ever dispatched to by one thread.
    shards: Box<[Shard]>,
    next_id: AtomicU64,
    queue_len: usize,
}

/// The subscriptions one dispatch thread serves.
struct Shard {
    registry: RwLock<Registry>,
    /// Last seq this shard handed to its subscribers. Read under the registry's write lock,
    /// it splits every event into "in the log before registration" and "will be queued
    /// live".
    dispatched: AtomicU64,
}

#[derive(Default)]
struct Registry {
    by_channel: HashMap<Box<str>, Vec<Arc<Sink>>>,
    /// Subscriptions with at least one pattern, indexed by the patterns' literal prefixes.
    patterned: PatternIndex,
}

/// One live subscription, shared by the hub (which pushes) and the subscription (which pops).
struct Sink {
    id: u64,
    filter: Arc<Filter>,
    queue: SubscriptionQueue,
    /// Cancelled when the queue overflowed; the subscription then ends with [`Lagged`].
    lagged: CancellationToken,
    /// Set with `lagged`; a plain flag because dispatch reads it for every event.
    dead: AtomicBool,
}

/// A subscriber that can take an event without waking its task: a WebSocket connection
/// writes the event's frame to its socket from the dispatching thread. On a busy fan-out
/// most of a delivery's CPU was the task's wake-up and polling, not the write.
///
/// Ordering is the queue's: `offer` is only tried when the subscription has nothing queued
/// and is caught up, and `claim` is called (under the queue's lock) for every event the
/// subscriber pops, so nothing is handed over while an earlier event is on its way.
pub trait Direct: Send + Sync {
    /// Takes all of `events` now, or returns false to have them queued (the connection is
    /// busy writing, or its socket is full).
    fn offer(&self, events: &[EventRef]) -> bool;
    /// The subscriber took an event from its queue; hold off until it says it wrote it.
    fn claim(&self);
    /// Which connection this is: takers with the same key are served by one dispatch
    /// thread, so a connection has one writer however many subscriptions it holds.
    fn key(&self) -> usize;
}

/// What a subscription yields, in seq order.
#[derive(Debug, Clone)]
pub enum Item {
    Event(EventRef),
    /// Events after the cursor were trimmed by retention; delivery continues from `oldest`.
    Reset {
        oldest: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscriber fell `send_queue` events behind and was dropped; resume from its cursor.
    #[error("subscriber fell too far behind")]
    Lagged,
    #[error(transparent)]
    Log(#[from] LogError),
}

impl Hub {
    /// A hub with `threads` dispatch threads (at least one), each waiting up to `delay`
    /// after a commit for more to send with it (`server.dispatch_delay`).
    pub fn new(log: Arc<dyn Log>, queue_len: usize, threads: usize, delay: Duration) -> Arc<Hub> {
        let hub = Hub::unlistening(log.clone(), queue_len, threads);
        log.set_listener(Arc::new(Dispatcher::start(hub.clone(), delay)));
        hub
    }

    /// A hub that dispatches every shard on the log's own thread, for tests that drive
    /// commits at exact points of a subscriber's catch-up.
    #[cfg(test)]
    fn inline(log: Arc<dyn Log>, queue_len: usize, shards: usize) -> Arc<Hub> {
        let hub = Hub::unlistening(log.clone(), queue_len, shards);
        log.set_listener(Arc::new(Inline(hub.clone())));
        hub
    }

    fn unlistening(log: Arc<dyn Log>, queue_len: usize, shards: usize) -> Arc<Hub> {
        let head = log.bounds().head;
        let shards = (0..shards.max(1))
            .map(|_| Shard {
                registry: RwLock::default(),
                dispatched: AtomicU64::new(head),
            })
            .collect();
        Arc::new(Hub {
            log,
            shards,
            next_id: AtomicU64::new(1),
            queue_len: queue_len.max(1),
        })
    }

    /// The shard a subscription joins: its connection's (with a [`Direct`] taker, whose
    /// writes must come from one thread), else its own, spread by id.
    fn shard_of(&self, id: u64, direct: Option<&Arc<dyn Direct>>) -> usize {
        let key = match direct {
            // Keys are addresses: mix the bits so aligned ones spread over every shard.
            Some(d) => (d.key() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32,
            None => id,
        };
        (key % self.shards.len() as u64) as usize
    }

    pub fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    /// Publishes through the log; resolves once durable. `ingest` names the way in (`http`,
    /// `ws`, `hook`, `pusher`, `notice`) for `herald_events_published_total`.
    pub async fn publish(
        &self,
        events: Vec<NewEvent>,
        ingest: &'static str,
    ) -> Result<Vec<Appended>, LogError> {
        let n = events.len() as u64;
        let appended = self.log.append(events).await?;
        metrics::counter!("herald_events_published_total", "ingest" => ingest).increment(n);
        crate::stats::get().published(n);
        Ok(appended)
    }

    /// Starts a subscription. With `since`, it first replays every retained matching event
    /// after that seq, then goes live with no gap and no duplicate at the hand-over. Without,
    /// it is live only. `lagged` is cancelled if it falls behind (callers may share one token
    /// per connection).
    pub fn subscribe(
        self: &Arc<Self>,
        filter: Filter,
        since: Option<u64>,
        lagged: CancellationToken,
    ) -> Subscription {
        self.subscribe_direct(filter, since, lagged, None)
    }

    /// [`Hub::subscribe`], and once caught up the hub hands live events to `direct` (see
    /// [`Direct`]); the subscription joins the dispatch shard of `direct`'s connection.
    pub fn subscribe_direct(
        self: &Arc<Self>,
        filter: Filter,
        since: Option<u64>,
        lagged: CancellationToken,
        direct: Option<Arc<dyn Direct>>,
    ) -> Subscription {
        let mut sub = Subscription {
            hub: self.clone(),
            filter: Arc::new(filter),
            cursor: since.unwrap_or(0),
            state: State::CatchUp,
            fill_to: None,
            buffer: VecDeque::new(),
            lagged,
            counted: None,
            direct,
        };
        if since.is_none() {
            sub.register_live_only();
        }
        sub
    }

    fn register(
        &self,
        filter: &Arc<Filter>,
        lagged: &CancellationToken,
        direct: Option<&Arc<dyn Direct>>,
    ) -> Registered {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard_of(id, direct);
        let sink = Arc::new(Sink::new(
            id,
            filter.clone(),
            lagged.clone(),
            self.queue_len,
        ));
        let live = sink.clone();
        let mut reg = self.shards[shard]
            .registry
            .write()
            .expect("hub registry lock");
        if filter.has_patterns() {
            reg.patterned.insert(sink);
        } else {
            for channel in filter.channels() {
                reg.by_channel
                    .entry(channel.into())
                    .or_default()
                    .push(sink.clone());
            }
        }
        let head = self.shards[shard].dispatched.load(Ordering::Acquire);
        Registered {
            id,
            shard,
            sink: live,
            head,
        }
    }

    fn unregister(&self, shard: usize, id: u64, filter: &Filter) {
        let mut reg = self.shards[shard]
            .registry
            .write()
            .expect("hub registry lock");
        reg.remove(id, filter);
    }

    /// Number of live subscriptions (for metrics and tests).
    pub fn subscriptions(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let reg = shard.registry.read().expect("hub registry lock");
                reg.patterned.len() + reg.by_channel.values().map(Vec::len).sum::<usize>()
            })
            .sum()
    }
}

/// A subscription just made live: where it lives, and the head it must read history up to.
struct Registered {
    id: u64,
    shard: usize,
    sink: Arc<Sink>,
    head: u64,
}

impl Registry {
    fn remove(&mut self, id: u64, filter: &Filter) {
        if filter.has_patterns() {
            self.patterned.remove(id, filter);
        } else {
            for channel in filter.channels() {
                if let Some(list) = self.by_channel.get_mut(channel) {
                    list.retain(|s| s.id != id);
                    if list.is_empty() {
                        self.by_channel.remove(channel);
                    }
                }
            }
        }
    }
}

/// What the log tells the hub, in order.
#[derive(Clone)]
enum LogSignal {
    /// A group, and when it became durable.
    Committed(Arc<[EventRef]>, Instant),
    Lost,
}

/// Committed groups waiting for dispatch, per thread; past this the log's writer waits.
const DISPATCH_BACKLOG: usize = 1024;

/// The log's listener: hands each committed group to every dispatch thread, each of which
/// dispatches them in order to its shard. Dispatch writes to caught-up subscribers' sockets
/// (`http/wire.rs`), a `send` each; on the log writer's thread that would delay every
/// publisher's ack and the next group's commit by the whole fan-out, and one thread would
/// be the ceiling of a many-core machine.
struct Dispatcher {
    threads: Vec<std::sync::mpsc::SyncSender<LogSignal>>,
}

impl Dispatcher {
    fn start(hub: Arc<Hub>, delay: Duration) -> Dispatcher {
        let threads = (0..hub.shards.len())
            .map(|shard| {
                let (tx, rx) = std::sync::mpsc::sync_channel(DISPATCH_BACKLOG);
                let hub = hub.clone();
                std::thread::Builder::new()
                    .name(format!("herald-dispatch-{shard}"))
                    .spawn(move || dispatch_loop(&hub, shard, &rx, delay))
                    .expect("spawn a dispatch thread");
                tx
            })
            .collect();
        Dispatcher { threads }
    }

    fn send(&self, notice: LogSignal) {
        for thread in &self.threads {
            // A thread lives as long as the process (the hub and the log hold each other).
            let _ = thread.send(notice.clone());
        }
    }
}

/// One dispatch thread: whatever piled up while the last dispatch ran goes out as one, so
/// runs of events on a channel grow and a subscriber gets a run in one write; a fan-out
/// that falls behind catches up in fewer, larger writes instead of falling further behind.
fn dispatch_loop(
    hub: &Hub,
    shard: usize,
    rx: &std::sync::mpsc::Receiver<LogSignal>,
    delay: Duration,
) {
    // Bounded well below a subscriber's queue: a run longer than what the queue holds would
    // cut even a subscriber that keeps up.
    let most = (hub.queue_len / 2).clamp(1, 1024);
    let mut incoming = Incoming {
        rx,
        pending: VecDeque::new(),
        most,
    };
    let mut batch = Vec::new();
    let mut oldest = None;
    while let Some(first) = incoming.next() {
        let mut next = Some(first);
        let mut until = None;
        while let Some(notice) = next.take() {
            match notice {
                LogSignal::Committed(events, at) => {
                    batch.extend(events.iter().cloned());
                    oldest.get_or_insert(at);
                    // Counted from the commit: a thread already that late waits no more.
                    until.get_or_insert(at + delay);
                }
                LogSignal::Lost => {
                    // Nothing after a loss may join what went before it: a subscriber
                    // would skip the lost events and resume past them.
                    timed_dispatch(hub, shard, &batch, oldest.take(), None);
                    batch.clear();
                    hub.drop_all(shard);
                }
            }
            if batch.len() < most {
                next = incoming.try_next();
                let wait = until.map_or(Duration::ZERO, |t| {
                    t.saturating_duration_since(Instant::now())
                });
                if next.is_none() && !wait.is_zero() {
                    next = incoming.next_within(wait);
                }
            }
        }
        timed_dispatch(hub, shard, &batch, oldest.take(), Some(&mut incoming));
        batch.clear();
    }
}

/// A dispatch thread's signals, with those a pass over the shard looked at early.
///
/// A pass writes to every subscriber of the shard in turn, and with thousands of sockets it
/// takes milliseconds. A group that commits meanwhile would wait for the pass to end and
/// then for its own pass to reach each subscriber: up to two passes. Instead the pass looks
/// for new groups as it goes and gives them to the subscribers it has not reached yet, in
/// the same write (`Hub::dispatch`); the next pass gives them to the rest, and the queue
/// drops what a subscriber already has. So an event waits at most about one pass, and no
/// write is added.
struct Incoming<'a> {
    rx: &'a std::sync::mpsc::Receiver<LogSignal>,
    /// Taken from `rx` during a pass, still to be dispatched to the whole shard, in order.
    pending: VecDeque<LogSignal>,
    most: usize,
}

impl Incoming<'_> {
    fn next(&mut self) -> Option<LogSignal> {
        self.pending.pop_front().or_else(|| self.rx.recv().ok())
    }

    fn try_next(&mut self) -> Option<LogSignal> {
        self.pending.pop_front().or_else(|| self.rx.try_recv().ok())
    }

    fn next_within(&mut self, wait: Duration) -> Option<LogSignal> {
        self.pending
            .pop_front()
            .or_else(|| self.rx.recv_timeout(wait).ok())
    }

    /// Appends to `run` the events of groups committed since the pass began, from the
    /// `taken`th on, while each group is wholly on `channel` (the run's): a group on
    /// another channel, or a loss, ends what a pass may take, since a pattern subscriber
    /// of both channels must get them in seq order. Returns how many groups it took.
    fn more_on(&mut self, channel: &str, taken: usize, run: &mut Vec<EventRef>) -> usize {
        while let Ok(signal) = self.rx.try_recv() {
            self.pending.push_back(signal);
        }
        let mut took = 0;
        for signal in self.pending.iter().skip(taken) {
            let LogSignal::Committed(events, _) = signal else {
                break;
            };
            if run.len() + events.len() > self.most || events.iter().any(|e| &*e.channel != channel)
            {
                break;
            }
            run.extend(events.iter().cloned());
            took += 1;
        }
        took
    }
}

/// Dispatches a batch and records where a delivery's time went on the server: waiting for
/// the dispatch thread since the oldest group in it became durable, then the writes to the
/// whole shard (the last subscriber's event waits for all the writes before it).
fn timed_dispatch(
    hub: &Hub,
    shard: usize,
    batch: &[EventRef],
    committed: Option<Instant>,
    incoming: Option<&mut Incoming>,
) {
    let Some(committed) = committed else { return };
    let start = Instant::now();
    hub.dispatch(shard, batch, incoming);
    metrics::histogram!("herald_dispatch_wait_seconds")
        .record(start.duration_since(committed).as_secs_f64());
    metrics::histogram!("herald_dispatch_seconds").record(start.elapsed().as_secs_f64());
}

impl CommitListener for Dispatcher {
    fn lost(&self) {
        self.send(LogSignal::Lost);
    }

    fn committed(&self, events: &[EventRef]) {
        if !events.is_empty() {
            self.send(LogSignal::Committed(events.into(), Instant::now()));
        }
    }
}

#[cfg(test)]
struct Inline(Arc<Hub>);

#[cfg(test)]
impl CommitListener for Inline {
    fn lost(&self) {
        for shard in 0..self.0.shards.len() {
            self.0.drop_all(shard);
        }
    }

    fn committed(&self, events: &[EventRef]) {
        for shard in 0..self.0.shards.len() {
            self.0.dispatch(shard, events, None);
        }
    }
}

impl Hub {
    /// Pushes each event to every matching subscription of `shard`, in seq order. With
    /// `incoming`, the batch's last run also takes groups that commit during the pass
    /// (`Incoming`), for the subscribers not yet written to.
    fn dispatch(&self, shard: usize, events: &[EventRef], mut incoming: Option<&mut Incoming>) {
        let Some(last) = events.last() else { return };
        let shard = &self.shards[shard];
        let mut dropped: Vec<(u64, Arc<Filter>)> = Vec::new();
        let mut candidates = Vec::new();
        {
            let reg = shard.registry.read().expect("hub registry lock");
            // Events in a row on one channel go to the same subscribers: each gets the run
            // at once (one write for a subscriber written to directly).
            let runs: Vec<&[EventRef]> = events.chunk_by(|a, b| a.channel == b.channel).collect();
            for (r, run) in runs.iter().enumerate() {
                let channel = &run[0].channel;
                let exact = reg.by_channel.get(&**channel).into_iter().flatten();
                reg.patterned.candidates(channel, &mut candidates);
                let patterned = candidates.iter().filter(|s| s.filter.matches(channel));
                let mut later = match incoming.as_deref_mut() {
                    Some(incoming) if r + 1 == runs.len() => Some((incoming, run.to_vec(), 0)),
                    _ => None,
                };
                for (i, sink) in exact.chain(patterned).enumerate() {
                    // A lagged sink must get nothing more: a later event slipping in would
                    // hide the gap from the subscriber.
                    if sink.dead.load(Ordering::Relaxed) {
                        continue;
                    }
                    let run = match &mut later {
                        Some((incoming, longer, taken)) => {
                            if i % LOOK_EVERY == LOOK_EVERY - 1 {
                                *taken += incoming.more_on(channel, *taken, longer);
                            }
                            &longer[..]
                        }
                        None => run,
                    };
                    if sink.queue.push(run).is_err() {
                        metrics::counter!("herald_slow_consumer_disconnects_total").increment(1);
                        sink.end();
                        dropped.push((sink.id, sink.filter.clone()));
                    }
                }
            }
            shard.dispatched.store(last.seq, Ordering::Release);
        }
        if !dropped.is_empty() {
            let mut reg = shard.registry.write().expect("hub registry lock");
            for (id, filter) in dropped {
                reg.remove(id, &filter);
            }
        }
    }
}

/// Subscribers written to between looks for groups committed during a pass: a look is a
/// channel poll, a write a syscall.
const LOOK_EVERY: usize = 32;

impl Hub {
    /// Drops every live subscription of `shard` as lagged, so each resumes from its own
    /// cursor.
    fn drop_all(&self, shard: usize) {
        let mut reg = self.shards[shard]
            .registry
            .write()
            .expect("hub registry lock");
        let mut all = std::mem::take(&mut *reg);
        let patterned = all.patterned.drain();
        for sink in patterned.iter().chain(all.by_channel.values().flatten()) {
            sink.end();
        }
    }
}

impl Sink {
    fn new(id: u64, filter: Arc<Filter>, lagged: CancellationToken, queue_len: usize) -> Sink {
        Sink {
            id,
            filter,
            queue: SubscriptionQueue::new(queue_len),
            lagged,
            dead: AtomicBool::new(false),
        }
    }

    /// Dropped by the hub: nothing more is queued, and the subscriber (after what it has)
    /// ends with [`SubscriptionError::Lagged`].
    fn end(&self) {
        self.dead.store(true, Ordering::Relaxed);
        self.queue.close();
        self.lagged.cancel();
    }
}

enum State {
    /// Reading history page by page, not yet registered.
    CatchUp,
    Live {
        id: u64,
        shard: usize,
        sink: Arc<Sink>,
    },
    Ended,
}

/// One subscriber's ordered view of the log: history after its cursor, then live events.
pub struct Subscription {
    hub: Arc<Hub>,
    filter: Arc<Filter>,
    /// Seq of the last event read into `buffer` or delivered; events at or below it are skipped.
    cursor: u64,
    state: State,
    /// Set on registration: history must be read up to this seq before live events.
    fill_to: Option<u64>,
    buffer: VecDeque<Item>,
    lagged: CancellationToken,
    /// Counts it in `herald_subscriptions_open` while it lives, once a transport says whose.
    counted: Option<crate::stats::Held>,
    /// Given to the hub's queue once history is delivered (see [`Direct`]).
    direct: Option<Arc<dyn Direct>>,
}

impl Subscription {
    /// Counts this subscription under `transport` until it ends.
    pub fn counted(mut self, transport: crate::stats::Transport) -> Subscription {
        self.counted = Some(crate::stats::Held::subscription(transport));
        self
    }

    /// Where the subscription stands: the last seq handed over (for a live-only one, the
    /// head when it was registered).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    fn register_live_only(&mut self) {
        let r = self
            .hub
            .register(&self.filter, &self.lagged, self.direct.as_ref());
        self.cursor = r.head;
        self.state = State::Live {
            id: r.id,
            shard: r.shard,
            sink: r.sink,
        };
    }

    /// The next item in seq order. Cancel-safe: every state change happens after an await
    /// completes, so dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Item, SubscriptionError> {
        loop {
            if let Some(item) = self.buffer.pop_front() {
                // History on its way out: the taker must hand nothing over until it is
                // written, or a live event would overtake it.
                if let Some(direct) = &self.direct {
                    direct.claim();
                }
                return Ok(item);
            }
            if let Some(until) = self.fill_to {
                // Registered: first read what committed between the last history page and
                // the registration, so the hand-over has no gap and no duplicate.
                if self.cursor >= until || self.read_page(Some(until)).await? {
                    self.cursor = self.cursor.max(until);
                    self.fill_to = None;
                }
                continue;
            }
            match &mut self.state {
                State::Ended => return Err(SubscriptionError::Lagged),
                State::CatchUp => {
                    if self.read_page(None).await? {
                        let r = self
                            .hub
                            .register(&self.filter, &self.lagged, self.direct.as_ref());
                        self.state = State::Live {
                            id: r.id,
                            shard: r.shard,
                            sink: r.sink,
                        };
                        self.fill_to = Some(r.head);
                    }
                }
                State::Live { sink, .. } => {
                    // Here history and the hand-over are done and the buffer is empty:
                    // from now on only the queue's order matters.
                    if let Some(direct) = self.direct.take() {
                        sink.queue.set_direct(direct, self.cursor);
                    }
                    match poll_fn(|cx| sink.queue.poll_pop(cx)).await {
                        Some(event) if event.seq > self.cursor => {
                            self.cursor = event.seq;
                            return Ok(Item::Event(event));
                        }
                        Some(_) => continue,
                        None => {
                            self.end();
                            return Err(SubscriptionError::Lagged);
                        }
                    }
                }
            }
        }
    }

    /// Reads one page after the cursor (up to `until`, if set) into the buffer. Returns
    /// whether the read reached the end (the head, or `until`).
    async fn read_page(&mut self, until: Option<u64>) -> Result<bool, SubscriptionError> {
        let page = self
            .hub
            .log
            .read(self.filter.clone(), self.cursor, PAGE)
            .await?;
        if let Some(oldest) = page.reset {
            self.buffer.push_back(Item::Reset { oldest });
        }
        let limit = until.unwrap_or(u64::MAX);
        for event in page.events {
            if event.seq > limit {
                return Ok(true);
            }
            self.cursor = event.seq;
            self.buffer.push_back(Item::Event(event));
        }
        self.cursor = self.cursor.max(page.next.min(limit));
        Ok(page.end || page.next >= limit)
    }

    fn end(&mut self) {
        if let State::Live { id, shard, .. } = std::mem::replace(&mut self.state, State::Ended) {
            self.hub.unregister(shard, id, &self.filter);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests;
