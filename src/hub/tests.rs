//! The hand-over from history to live, driven deterministically: the in-memory log runs
//! commits and trims at exact points of a subscriber's catch-up.

use super::*;
use crate::log::memory::MemoryLog;

tokio::task_local! {
    /// Whether `hub()` dispatches on the dispatch thread (as `serve` does) or inline on the
    /// log's thread; every hand-over test runs both ways (`both!`).
    static ON_THREAD: bool;
}

fn hub(queue: usize) -> (Arc<MemoryLog>, Arc<Hub>) {
    let log = MemoryLog::new();
    let hub = if ON_THREAD.try_with(|t| *t).unwrap_or(false) {
        Hub::new(log.clone(), queue)
    } else {
        Hub::inline(log.clone(), queue)
    };
    (log, hub)
}

/// A test run twice: with dispatch inline (commits meet the catch-up at exact points) and on
/// the dispatch thread (the races the server has).
macro_rules! both {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            use super::*;
            $(#[$meta])*
            async fn body() $body
            #[tokio::test]
            async fn inline() {
                ON_THREAD.scope(false, body()).await
            }
            #[tokio::test]
            async fn on_the_dispatch_thread() {
                ON_THREAD.scope(true, body()).await
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
    while hub.dispatched.load(Ordering::Acquire) < seq {
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
    if ON_THREAD.try_with(|t| *t).unwrap_or(false) {
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
    let hub = Hub::new(log.clone(), 10_000);
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
}

both! {
async fn history_on_its_way_out_is_never_overtaken_by_a_handed_over_event() {
    let (log, hub) = hub(64);
    commit_n(&log, "a", 3);
    let taker = Arc::new(Taker::default());
    let mut sub = subscribe(&hub, &["a"], Some(0)).direct(taker.clone());
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
    let hub = Hub::new(log.clone(), 10_000);
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
