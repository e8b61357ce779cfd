//! One subscription's bounded queue of events: the hub pushes (never waiting), the
//! subscription pops.
//!
//! Hand-written instead of tokio's `mpsc`: that channel allocates its slots in blocks of 32
//! and keeps ~300 bytes of shared state, about 800 bytes per subscription before the first
//! event, which every idle connection carried for its whole life. Here an idle subscription
//! costs a lock and an empty `VecDeque`; the storage grows with a backlog and is given back
//! once the backlog drains.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use super::Direct;
use crate::event::EventRef;

/// Storage kept after a backlog drains: enough for the usual few events in flight, so a
/// subscriber that keeps up does not allocate per event.
const KEEP: usize = 8;

pub(crate) struct SubscriptionQueue {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<EventRef>,
    /// The subscription waiting for an event, if it is.
    waker: Option<Waker>,
    /// No more pushes: the subscription lagged or was dropped by the hub. What is queued is
    /// still popped, then `None`.
    closed: bool,
    /// Set once the subscriber is caught up and can take events without its task. Used only
    /// while nothing is queued, so a handed-over event never overtakes a queued one.
    direct: Option<Arc<dyn Direct>>,
    /// The subscriber's cursor as far as this queue knows: the last event handed over or
    /// queued (or, if later, the seq it was caught up to when `direct` was set). An event at
    /// or below it is a repeat and is dropped, as the subscription itself drops such events
    /// from the queue.
    cursor: u64,
}

/// `events` after `cursor`, in order: an event at or below it is a repeat (a cluster's engine
/// can redeliver, and a dispatch pass may already have handed over an event that commits
/// during it, see `Hub::dispatch`).
fn after(events: &[EventRef], cursor: u64) -> std::borrow::Cow<'_, [EventRef]> {
    if events.first().is_some_and(|e| e.seq > cursor)
        && events.windows(2).all(|w| w[0].seq < w[1].seq)
    {
        return events.into();
    }
    let mut kept = Vec::new();
    for e in events {
        if e.seq > kept.last().map_or(cursor, |k: &EventRef| k.seq) {
            kept.push(e.clone());
        }
    }
    kept.into()
}

impl Inner {
    /// `push` for a subscriber that takes events directly while nothing is queued.
    fn push_direct(&mut self, events: &[EventRef], capacity: usize) -> Result<Option<Waker>, Full> {
        let fresh = after(events, self.cursor);
        let Some(last) = fresh.last() else {
            return Ok(None);
        };
        let last = last.seq;
        let direct = self
            .direct
            .as_ref()
            .expect("only called with a direct subscriber");
        if self.items.is_empty() && direct.offer(&fresh) {
            self.cursor = last;
            return Ok(None);
        }
        if self.items.len() + fresh.len() > capacity {
            return Err(Full);
        }
        self.items.extend(fresh.iter().cloned());
        self.cursor = last;
        Ok(self.waker.take())
    }
}

/// The queue holds `capacity` events already.
#[derive(Debug)]
pub(crate) struct Full;

impl SubscriptionQueue {
    pub fn new(capacity: usize) -> SubscriptionQueue {
        SubscriptionQueue {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing runs under the lock that can panic; a poisoned lock still holds a
        // consistent queue.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `events` (in order) unless that would overfill the queue. A closed queue
    /// takes nothing (and says so as if it were fine: its subscriber is already on its way
    /// out).
    pub fn push(&self, events: &[EventRef]) -> Result<(), Full> {
        let waker = {
            let mut inner = self.lock();
            if inner.closed {
                return Ok(());
            }
            if inner.direct.is_some() {
                inner.push_direct(events, self.capacity)?
            } else {
                let fresh = after(events, inner.cursor);
                let Some(last) = fresh.last() else {
                    return Ok(());
                };
                if inner.items.len() + fresh.len() > self.capacity {
                    return Err(Full);
                }
                inner.cursor = last.seq;
                inner.items.extend(fresh.iter().cloned());
                inner.waker.take()
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Takes no more events; the subscriber gets what is queued, then the end.
    pub fn close(&self) {
        let waker = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next event; `None` once closed and drained.
    pub fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<EventRef>> {
        let mut inner = self.lock();
        if let Some(event) = inner.items.pop_front() {
            // Under this lock, so no later event is handed over before this one is written.
            if let Some(direct) = &inner.direct {
                direct.claim();
            }
            if inner.items.is_empty() && inner.items.capacity() > KEEP {
                inner.items = VecDeque::new();
            }
            return Poll::Ready(Some(event));
        }
        if inner.closed {
            inner.items = VecDeque::new();
            return Poll::Ready(None);
        }
        match &mut inner.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// From now on, while nothing is queued, events after `cursor` go to `direct` first.
    pub fn set_direct(&self, direct: Arc<dyn Direct>, cursor: u64) {
        let mut inner = self.lock();
        inner.direct = Some(direct);
        inner.cursor = inner.cursor.max(cursor);
    }

    #[cfg(test)]
    fn storage(&self) -> usize {
        self.lock().items.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, NewEvent};
    use std::sync::Arc;

    fn event(seq: u64) -> EventRef {
        let new = NewEvent::new(
            crate::event::Source::Publisher,
            "c".into(),
            None,
            serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            None,
        )
        .unwrap();
        Arc::new(Event::encode(seq, 0, &new))
    }

    fn pop(q: &SubscriptionQueue) -> Poll<Option<u64>> {
        let mut cx = Context::from_waker(Waker::noop());
        q.poll_pop(&mut cx).map(|e| e.map(|e| e.seq))
    }

    #[test]
    fn bounded_ordered_and_drained_after_close() {
        let q = SubscriptionQueue::new(3);
        assert_eq!(pop(&q), Poll::Pending);
        for seq in 1..=3 {
            q.push(&[event(seq)]).unwrap();
        }
        assert!(q.push(&[event(4)]).is_err(), "a full queue refuses");
        assert_eq!(pop(&q), Poll::Ready(Some(1)));
        q.push(&[event(4)]).unwrap();
        q.close();
        q.push(&[event(5)]).unwrap();
        assert_eq!(pop(&q), Poll::Ready(Some(2)));
        assert_eq!(pop(&q), Poll::Ready(Some(3)));
        assert_eq!(
            pop(&q),
            Poll::Ready(Some(4)),
            "closing keeps what was queued"
        );
        assert_eq!(pop(&q), Poll::Ready(None), "nothing after close");
    }

    #[test]
    fn a_drained_backlog_gives_its_storage_back() {
        let q = SubscriptionQueue::new(1000);
        assert_eq!(q.storage(), 0, "an idle queue holds no storage");
        for seq in 1..=500 {
            q.push(&[event(seq)]).unwrap();
        }
        assert!(q.storage() >= 500);
        for _ in 1..=500 {
            assert!(pop(&q).is_ready());
        }
        assert_eq!(q.storage(), 0);
        q.push(&[event(501)]).unwrap();
        assert!(pop(&q).is_ready());
        assert!(
            q.storage() <= KEEP,
            "a subscriber that keeps up keeps a little"
        );
    }

    use crate::hub::tests::Taker;

    #[test]
    fn direct_delivery_never_overtakes_a_queued_or_unwritten_event() {
        let q = SubscriptionQueue::new(100);
        let taker = Arc::new(Taker::default());
        q.set_direct(taker.clone(), 0);

        q.push(&[event(1), event(2)]).unwrap();
        assert_eq!(pop(&q), Poll::Pending, "taken directly, nothing queued");
        q.push(&[event(2)]).unwrap();
        q.push(&[event(1), event(2)]).unwrap();
        assert_eq!(pop(&q), Poll::Pending, "a repeat is dropped, not queued");
        *taker.full.lock().unwrap() = true;
        q.push(&[event(3)]).unwrap();
        *taker.full.lock().unwrap() = false;
        q.push(&[event(4)]).unwrap();
        assert_eq!(
            *taker.taken.lock().unwrap(),
            [1, 2],
            "4 waits behind the queued 3"
        );
        assert_eq!(pop(&q), Poll::Ready(Some(3)));
        q.push(&[event(5)]).unwrap();
        assert_eq!(pop(&q), Poll::Ready(Some(4)));
        assert_eq!(pop(&q), Poll::Ready(Some(5)));
        q.push(&[event(6)]).unwrap();
        assert_eq!(
            *taker.taken.lock().unwrap(),
            [1, 2],
            "the subscriber has not written what it took: still queued"
        );
        assert_eq!(pop(&q), Poll::Ready(Some(6)));
        *taker.busy.lock().unwrap() = false; // it wrote them
        q.push(&[event(7)]).unwrap();
        assert_eq!(*taker.taken.lock().unwrap(), [1, 2, 7]);
        assert_eq!(pop(&q), Poll::Pending);
    }

    #[test]
    fn a_run_that_would_overfill_the_queue_is_refused_whole() {
        let q = SubscriptionQueue::new(3);
        q.push(&[event(1), event(2)]).unwrap();
        assert!(q.push(&[event(3), event(4)]).is_err());
        assert_eq!(pop(&q), Poll::Ready(Some(1)));
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_subscriber() {
        let q = Arc::new(SubscriptionQueue::new(4));
        let waiting = tokio::spawn({
            let q = q.clone();
            async move {
                std::future::poll_fn(|cx| q.poll_pop(cx))
                    .await
                    .map(|e| e.seq)
            }
        });
        tokio::task::yield_now().await;
        q.push(&[event(7)]).unwrap();
        assert_eq!(waiting.await.unwrap(), Some(7));
    }
}
