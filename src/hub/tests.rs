//! The hand-over from history to live, driven deterministically: the in-memory log runs
//! commits and trims at exact points of a subscriber's catch-up.

use super::*;
use crate::log::memory::MemoryLog;

tokio::task_local! {
    /// How `hub()` dispatches: inline on the log's thread (0), or on that many dispatch
    /// threads (as `serve` does); every hand-over test runs each way (`both!`).
    static THREADS: usize;
}

fn hub(queue: usize) -> (Arc<MemoryLog>, Arc<Hub>) {
    let log = MemoryLog::new();
    let hub = match THREADS.try_with(|t| *t).unwrap_or(0) {
        0 => Hub::inline(log.clone(), queue, 3),
        threads => Hub::new(log.clone(), queue, threads, std::time::Duration::ZERO),
    };
    (log, hub)
}

/// A test run with dispatch inline (commits meet the catch-up at exact points; three
/// shards, dispatched one after another), on one dispatch thread and on four (the races
/// the server has).
macro_rules! both {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            use super::*;
            $(#[$meta])*
            async fn body() $body
            #[tokio::test]
            async fn inline() {
                THREADS.scope(0, body()).await
            }
            #[tokio::test]
            async fn on_the_dispatch_thread() {
                THREADS.scope(1, body()).await
            }
            #[tokio::test]
            async fn on_four_dispatch_threads() {
                THREADS.scope(4, body()).await
            }
        }
    };
}

fn commit_n(log: &MemoryLog, channel: &str, n: u64) {
    for _ in 0..n {
        log.commit(channel);
    }
}

fn subscribe(hub: &Arc<Hub>, names: &[&str], since: Option<u64>) -> Subscription {
    let filter = Filter::parse(names.iter().copied()).unwrap();
    hub.subscribe(filter, since, CancellationToken::new())
}

/// Seqs until `last` (inclusive); a reset is written as `r<oldest>`.
async fn until(sub: &mut Subscription, last: u64) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let item = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
            .await
            .expect("an item")
            .expect("no error");
        match item {
            Item::Event(e) => {
                got.push(e.seq.to_string());
                if e.seq >= last {
                    return got;
                }
            }
            Item::Reset { oldest } => got.push(format!("r{oldest}")),
        }
    }
}

/// A subscriber to `a` from 0 whose catch-up has not started; three events are in history.
fn catching_up(queue: usize) -> (Arc<MemoryLog>, Arc<Hub>, Subscription) {
    let (log, hub) = hub(queue);
    commit_n(&log, "a", 3);
    let sub = subscribe(&hub, &["a"], Some(0));
    (log, hub, sub)
}

/// Waits until the hub has handed on everything up to `seq` (at once when inline).
async fn dispatched(hub: &Hub, seq: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while hub
        .shards
        .iter()
        .any(|s| s.dispatched.load(Ordering::Acquire) < seq)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dispatched {seq}"
        );
        tokio::task::yield_now().await;
    }
}

fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
    range.map(|s| s.to_string()).collect()
}

both! {
async fn commits_between_the_last_page_and_registration_are_read_not_lost() {
    let (log, hub) = hub(64);
    commit_n(&log, "a", 5);
    log.commit("b");
    let mut sub = subscribe(&hub, &["a"], Some(2));
    // The last history page sees up to 6; before the subscriber registers, 7 and 8 land.
    let l = log.clone();
    log.after_next_read(move || {
        l.commit("a");
        l.commit("a");
    });
    let first = until(&mut sub, 8).await;
    log.commit("a");
    let mut got = first;
    got.extend(until(&mut sub, 9).await);
    assert_eq!(got, ["3", "4", "5", "7", "8", "9"]);
}
}

// Inline only: its hooks choreograph a gap read, which the dispatch thread's later
// registration head can make unnecessary (the thread is covered by the stress test below).
#[tokio::test]
async fn commits_during_the_gap_read_arrive_once() {
    let (log, _hub, mut sub) = catching_up(64);
    let l = log.clone();
    // After the history page: 4 lands before registration (the gap read must fetch it).
    log.after_next_read(move || {
        l.commit("a");
        let l2 = l.clone();
        // The gap read: 5 lands before its snapshot (it is both in the page, past the
        // gap's end, and queued live), 6 after it (queued live only).
        l.before_next_read(move || {
            l2.commit("a");
            let l3 = l2.clone();
            l2.after_next_read(move || {
                l3.commit("a");
            });
        });
    });
    assert_eq!(until(&mut sub, 6).await, seqs(1..=6));
}

both! {
async fn a_cursor_at_the_head_gets_only_what_comes_next() {
    let (log, hub) = hub(64);
    commit_n(&log, "a", 3);
    let mut at_head = subscribe(&hub, &["a"], Some(3));
    let mut live = subscribe(&hub, &["a"], None);
    log.commit("b");
    log.commit("a");
    assert_eq!(until(&mut at_head, 5).await, ["5"]);
    let live = until(&mut live, 5).await;
    if THREADS.try_with(|t| *t).unwrap_or(0) > 0 {
        // Live from what the dispatch thread had handed on at registration: events acked just
        // before may still come (in order, once), never one of another channel.
        assert_eq!(live.last().map(String::as_str), Some("5"), "{live:?}");
        assert!(!live.contains(&"4".to_string()), "{live:?}");
    } else {
        assert_eq!(live, ["5"]);
    }
    // A cursor past the head (a client that saw a longer log, say before a restore)
    // gets nothing at or below it, live included.
    let mut ahead = subscribe(&hub, &["a"], Some(7));
    let quiet = std::time::Duration::from_millis(50);
    // (Its first `next` reads history, finds nothing, and registers.)
    assert!(tokio::time::timeout(quiet, ahead.next()).await.is_err());
    log.commit("a");
    log.commit("a");
    assert!(
        tokio::time::timeout(quiet, ahead.next()).await.is_err(),
        "6 and 7 are at or below the cursor"
    );
    log.commit("a");
    assert_eq!(until(&mut ahead, 8).await, ["8"]);
}
}

both! {
async fn a_trimmed_gap_is_reported_then_delivery_goes_on() {
    let (log, hub) = hub(64);
    commit_n(&log, "a", 10);
    log.trim_to(6);
    let mut sub = subscribe(&hub, &["a"], Some(2));
    let mut want = vec!["r6".to_string()];
    want.extend(seqs(6..=10));
    assert_eq!(until(&mut sub, 10).await, want);
}
}

both! {
async fn retention_overtaking_a_catch_up_is_reported_once() {
    let (log, hub) = hub(64);
    commit_n(&log, "a", PAGE as u64 + 100);
    let mut sub = subscribe(&hub, &["a*"], Some(0));
    // After the first page (1..=512), retention moves past where the subscriber is.
    let l = log.clone();
    log.after_next_read(move || l.trim_to(550));
    let got = until(&mut sub, PAGE as u64 + 100).await;
    let mut want = seqs(1..=PAGE as u64);
    want.push("r550".into());
    want.extend(seqs(550..=PAGE as u64 + 100));
    assert_eq!(got, want);
}
}

// Inline only: its hooks choreograph a gap read, which the dispatch thread's later
// registration head can make unnecessary (the thread is covered by the stress test below).
#[tokio::test]
async fn a_subscriber_that_lags_mid_catch_up_ends_after_a_gapless_prefix() {
    let (log, hub, mut sub) = catching_up(4);
    // 4 lands before registration, so a gap read follows; once it has its snapshot (the
    // subscriber is registered by then), ten events flood a queue of four.
    let l = log.clone();
    log.after_next_read(move || {
        l.commit("a");
        let l2 = l.clone();
        l.after_next_read(move || {
            for _ in 0..10 {
                l2.commit("a");
            }
        });
    });
    let mut got = Vec::new();
    let end = loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next());
        match next.await.expect("an item or the end") {
            Ok(Item::Event(e)) => got.push(e.seq),
            Ok(Item::Reset { .. }) => panic!("no reset here"),
            Err(e) => break e,
        }
    };
    assert!(matches!(end, SubscriptionError::Lagged), "{end}");
    let n = got.len() as u64;
    assert_eq!(got, (1..=n).collect::<Vec<_>>(), "a gapless prefix");
    assert!(n < 14, "it did lag");
    // Resuming from the last seq it saw delivers the rest exactly once.
    let mut resumed = subscribe(&hub, &["a"], Some(n));
    let mut rest: Vec<u64> = until(&mut resumed, 14)
        .await
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    got.append(&mut rest);
    assert_eq!(got, (1..=14).collect::<Vec<_>>());
    assert_eq!(hub.subscriptions(), 1, "the lagged one was unregistered");
}

#[tokio::test]
async fn the_dispatch_thread_delivers_every_commit_in_order() {
    let log = MemoryLog::new();
    let hub = Hub::new(log.clone(), 10_000, 4, std::time::Duration::ZERO);
    let mut live = subscribe(&hub, &["a*"], None);
    let writer = std::thread::spawn({
        let log = log.clone();
        move || {
            for i in 0..2_000 {
                log.commit(if i % 3 == 0 { "ab" } else { "a" });
            }
        }
    });
    let mut resumed = subscribe(&hub, &["a"], Some(0));
    let all = until(&mut live, 2_000).await;
    assert_eq!(all, seqs(1..=2_000));
    let plain: Vec<String> = (1..=2_000u64)
        .filter(|s| (s - 1) % 3 != 0)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(until(&mut resumed, 2_000).await, plain);
    writer.join().unwrap();
}

/// A subscriber that takes events directly unless it is busy (from a claim until the test
/// says it wrote them) or full, like a WebSocket whose socket is shared with the hub.
#[derive(Default)]
pub(super) struct Taker {
    pub busy: std::sync::Mutex<bool>,
    pub full: std::sync::Mutex<bool>,
    pub taken: std::sync::Mutex<Vec<u64>>,
}

impl Direct for Taker {
    fn offer(&self, events: &[EventRef]) -> bool {
        if *self.busy.lock().unwrap() || *self.full.lock().unwrap() {
            return false;
        }
        let mut taken = self.taken.lock().unwrap();
        taken.extend(events.iter().map(|e| e.seq));
        true
    }

    fn claim(&self) {
        *self.busy.lock().unwrap() = true;
    }

    fn key(&self) -> usize {
        self as *const Taker as usize
    }
}

both! {
async fn history_on_its_way_out_is_never_overtaken_by_a_handed_over_event() {
    let (log, hub) = hub(64);
    commit_n(&log, "a", 3);
    let taker = Arc::new(Taker::default());
    let filter = Filter::parse(["a"]).unwrap();
    let mut sub = hub.subscribe_direct(filter, Some(0), CancellationToken::new(), Some(taker.clone()));
    // The subscriber takes its history (a transport would be writing it out)...
    assert_eq!(until(&mut sub, 3).await, seqs(1..=3));
    // ...and looks for more, which installs the taker.
    let quiet = std::time::Duration::from_millis(20);
    assert!(tokio::time::timeout(quiet, sub.next()).await.is_err());
    log.commit("a");
    dispatched(&hub, 4).await;
    assert!(
        taker.taken.lock().unwrap().is_empty(),
        "4 must wait while 1-3 may be unwritten"
    );
    assert_eq!(until(&mut sub, 4).await, ["4"]);
    *taker.busy.lock().unwrap() = false; // everything written
    log.commit("a");
    dispatched(&hub, 5).await;
    assert_eq!(*taker.taken.lock().unwrap(), [5]);
}
}

/// The hand-over under the dispatch thread's real races: subscribers start from random
/// cursors, at random moments, while a writer commits on its own thread; each sees every
/// event after its cursor exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_during_writes_see_each_event_once_on_the_dispatch_thread() {
    const N: u64 = 3_000;
    let log = MemoryLog::new();
    let hub = Hub::new(log.clone(), 10_000, 4, std::time::Duration::ZERO);
    let writer = std::thread::spawn({
        let log = log.clone();
        move || {
            for i in 0..N {
                log.commit(if i % 2 == 0 { "a" } else { "b" });
                if i % 97 == 0 {
                    std::thread::yield_now();
                }
            }
        }
    });
    let mut readers = Vec::new();
    for k in 0..24u64 {
        let hub = hub.clone();
        readers.push(tokio::spawn(async move {
            // Staggered, so some catch up from history while others join near the head.
            for _ in 0..k * 3 {
                tokio::task::yield_now().await;
            }
            let since = (k * 131) % (N / 2);
            let mut sub = subscribe(&hub, &["a"], Some(since));
            let got = until(&mut sub, N - 1).await;
            let want: Vec<String> = (since + 1..=N - 1)
                .filter(|s| s % 2 == 1)
                .map(|s| s.to_string())
                .collect();
            assert_eq!(got, want, "reader {k} from {since}");
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    writer.join().unwrap();
}

/// A connection for the sharded-dispatch test: like a WebSocket session, it has one busy
/// flag for all its subscriptions and one record of what went out, whether the hub wrote it
/// directly (from a dispatch thread) or its task wrote what it popped from a queue.
#[derive(Default)]
struct Connection {
    busy: std::sync::Mutex<bool>,
    sent: std::sync::Mutex<Vec<(Box<str>, u64)>>,
    writers: std::sync::Mutex<std::collections::HashSet<std::thread::ThreadId>>,
}

impl Direct for Connection {
    fn offer(&self, events: &[EventRef]) -> bool {
        self.writers
            .lock()
            .unwrap()
            .insert(std::thread::current().id());
        let busy = self.busy.lock().unwrap();
        if *busy {
            return false;
        }
        let mut sent = self.sent.lock().unwrap();
        sent.extend(events.iter().map(|e| (e.channel.clone(), e.seq)));
        true
    }

    fn claim(&self) {
        *self.busy.lock().unwrap() = true;
    }

    fn key(&self) -> usize {
        self as *const Connection as usize
    }
}

/// Sharded dispatch: 32 connections, each subscribed to 8 of 16 channels, on four dispatch
/// threads, while groups of events are committed. Each connection is written by one thread
/// only (however many subscriptions it has), every channel arrives whole and in order, and
/// the connections are spread over more than one thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_has_one_writer_and_each_channel_its_order() {
    const CONNECTIONS: usize = 32;
    const CHANNELS: usize = 16;
    const GROUPS: usize = 400;
    let log = MemoryLog::new();
    let hub = Hub::new(log.clone(), 100_000, 4, std::time::Duration::ZERO);
    let channel = |i: usize| format!("c{}", i % CHANNELS);
    let mut connections = Vec::new();
    for c in 0..CONNECTIONS {
        let conn = Arc::new(Connection::default());
        let subs: Vec<Subscription> = (0..8)
            .map(|k| {
                let filter = Filter::parse([channel(c + k * 2).as_str()]).unwrap();
                let direct: Arc<dyn Direct> = conn.clone();
                hub.subscribe_direct(filter, None, CancellationToken::new(), Some(direct))
            })
            .collect();
        // The connection's task: whatever its subscriptions pop, written in turn, then the
        // hub may write again.
        let streams = subs.into_iter().map(|sub| {
            Box::pin(futures_util::stream::unfold(sub, |mut sub| async move {
                let item = sub.next().await.ok()?;
                Some((item, sub))
            }))
        });
        let task = tokio::spawn({
            let conn = conn.clone();
            let mut all = futures_util::stream::select_all(streams);
            async move {
                use futures_util::StreamExt;
                while let Some(Item::Event(e)) = all.next().await {
                    conn.sent.lock().unwrap().push((e.channel.clone(), e.seq));
                    *conn.busy.lock().unwrap() = false;
                }
            }
        });
        connections.push((conn, task));
    }
    // Groups of 1 to 7 events, channels in turn, from one writer thread.
    let writer = std::thread::spawn({
        let log = log.clone();
        move || {
            let mut per_channel: HashMap<String, Vec<u64>> = HashMap::new();
            let mut n = 0;
            for g in 0..GROUPS {
                let names: Vec<String> = (0..g % 7 + 1).map(|i| channel(n + i)).collect();
                n += names.len();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                for (name, seq) in names.iter().zip(log.commit_group(&refs)) {
                    per_channel.entry(name.clone()).or_default().push(seq);
                }
            }
            per_channel
        }
    });
    let per_channel = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let mut all_writers = std::collections::HashSet::new();
    for (c, (conn, task)) in connections.iter().enumerate() {
        let mine: Vec<String> = (0..8).map(|k| channel(c + k * 2)).collect();
        let want: usize = mine.iter().map(|m| per_channel[m].len()).sum();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while conn.sent.lock().unwrap().len() < want {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connection {c} got {} of {want}",
                conn.sent.lock().unwrap().len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let sent = conn.sent.lock().unwrap().clone();
        for m in &mine {
            let got: Vec<u64> = sent
                .iter()
                .filter(|(ch, _)| &**ch == m)
                .map(|(_, seq)| *seq)
                .collect();
            assert_eq!(got, per_channel[m], "connection {c}, channel {m}");
        }
        let writers = conn.writers.lock().unwrap();
        assert_eq!(
            writers.len(),
            1,
            "connection {c} had {} writers",
            writers.len()
        );
        all_writers.extend(writers.iter().copied());
        task.abort();
    }
    assert!(
        all_writers.len() > 1,
        "the connections were spread over the dispatch threads"
    );
}

/// A connection that records each write, and whose first write can run `during`: groups
/// committing while a dispatch pass is under way.
#[derive(Default)]
struct Writes {
    writes: std::sync::Mutex<Vec<Vec<u64>>>,
    during: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Direct for Writes {
    fn offer(&self, events: &[EventRef]) -> bool {
        if let Some(during) = self.during.lock().unwrap().take() {
            during();
        }
        let seqs = events.iter().map(|e| e.seq).collect();
        self.writes.lock().unwrap().push(seqs);
        true
    }

    fn claim(&self) {}

    fn key(&self) -> usize {
        self as *const Writes as usize
    }
}

/// Groups that commit during a pass go to the subscribers the pass has not reached yet, in
/// the same write; the rest get them in the next pass. Nobody gets an event twice or out of
/// order, and a group on another channel stops the pass from taking later ones (a
/// subscriber of both channels would get them out of seq order).
#[tokio::test]
async fn a_pass_gives_groups_committed_during_it_to_the_subscribers_it_has_not_reached() {
    const SUBSCRIBERS: usize = 100;
    let log = MemoryLog::new();
    let hub = Hub::new(log.clone(), 1_000, 1, std::time::Duration::ZERO);
    let mut subs = Vec::new();
    let mut conns = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let conn = Arc::new(Writes::default());
        let filter = Filter::parse(["a", "b"]).unwrap();
        let direct: Arc<dyn Direct> = conn.clone();
        let mut sub = hub.subscribe_direct(filter, None, CancellationToken::new(), Some(direct));
        // Looking for an event installs the taker.
        let quiet = std::time::Duration::from_millis(5);
        assert!(tokio::time::timeout(quiet, sub.next()).await.is_err());
        subs.push(sub);
        conns.push(conn);
    }
    // The pass's first write: a2, then b3 (another channel), then a4 commit.
    *conns[0].during.lock().unwrap() = Some(Box::new({
        let log = log.clone();
        move || {
            log.commit("a");
            log.commit("b");
            log.commit("a");
        }
    }));
    log.commit("a");
    dispatched(&hub, 4).await;
    for (i, conn) in conns.iter().enumerate() {
        let writes = conn.writes.lock().unwrap().clone();
        let all: Vec<u64> = writes.iter().flatten().copied().collect();
        assert_eq!(all, [1, 2, 3, 4], "subscriber {i}: {writes:?}");
    }
    let first = conns[0].writes.lock().unwrap().clone();
    assert_eq!(first, [vec![1], vec![2], vec![3], vec![4]]);
    let last = conns[SUBSCRIBERS - 1].writes.lock().unwrap().clone();
    assert_eq!(
        last,
        [vec![1, 2], vec![3], vec![4]],
        "a2 went out with 1 to a subscriber the pass had not reached"
    );
}
