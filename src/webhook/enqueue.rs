//! The enqueuer: each enabled endpoint follows the log from its durable cursor through a hub
//! subscription and turns matching events into delivery tasks, moving the cursor in the same
//! store batch (so a crash re-reads from the cursor: nothing dropped, nothing queued twice).
//! Replays queue a past range the same way.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::endpoint::Live;
use super::WebhookError;
use super::Webhooks;
use crate::event::now_ms;
use crate::hub::{Item, SubscriptionError};

/// Most events folded into one enqueue batch.
const ENQUEUE_BATCH: usize = 1000;
/// How long an enqueuer lets events gather before writing them. Under a stream of single
/// publishes each endpoint would otherwise write (and take the store's journal lock, which
/// the log's writer also needs) once per event; a few milliseconds on a webhook's latency
/// turns that into one write per endpoint per interval.
const LINGER: Duration = Duration::from_millis(5);

impl Webhooks {
    pub(super) async fn replay_range(
        &self,
        live: &Live,
        since: u64,
        until: u64,
    ) -> Result<(), WebhookError> {
        let mut after = since;
        while after < until {
            let page = self
                .hub
                .log()
                .read(Arc::new(live.filter.clone()), after, ENQUEUE_BATCH)
                .await?;
            let seqs: Vec<u64> = page
                .events
                .iter()
                .filter(|e| e.seq <= until && live.wants(&e.channel, e.kind.as_deref()))
                .map(|e| e.seq)
                .collect();
            self.store
                .enqueue(&live.endpoint.id, &seqs, None, now_ms())
                .await?;
            self.wake.notify_one();
            if page.end || page.next <= after {
                break;
            }
            after = page.next;
        }
        Ok(())
    }

    /// Follows the log for one endpoint and turns matching events into durable tasks.
    pub(super) async fn enqueue(self: Arc<Self>, live: Arc<Live>) {
        let id = live.endpoint.id.clone();
        while !live.stop.is_cancelled() && !self.shutdown.is_cancelled() {
            let cursor = match self.store.cursor(&id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(endpoint = %id, error = %e, "webhook cursor unreadable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut sub = self
                .hub
                .subscribe(live.filter.clone(), Some(cursor), CancellationToken::new())
                .counted(crate::stats::Transport::Webhook);
            loop {
                let first = tokio::select! {
                    _ = live.stop.cancelled() => return,
                    _ = self.shutdown.cancelled() => return,
                    item = sub.next() => item,
                };
                let mut items = vec![first];
                tokio::time::sleep(LINGER).await;
                while items.len() < ENQUEUE_BATCH {
                    match sub.next().now_or_never() {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                let mut seqs = Vec::new();
                let mut last = None;
                let mut broken = false;
                for item in items {
                    match item {
                        Ok(Item::Event(event)) => {
                            last = Some(event.seq);
                            if live.wants(&event.channel, event.kind.as_deref()) {
                                seqs.push(event.seq);
                            }
                        }
                        Ok(Item::Reset { oldest }) => {
                            tracing::warn!(endpoint = %id, oldest, "events trimmed before they could be queued");
                        }
                        Err(SubscriptionError::Lagged) => broken = true,
                        Err(SubscriptionError::Log(e)) => {
                            tracing::error!(endpoint = %id, error = %e, "webhook enqueue read failed");
                            broken = true;
                        }
                    }
                }
                if last.is_some() {
                    // The stop switch is checked right before writing: a deleted endpoint's
                    // enqueuer must not recreate its tasks.
                    if live.stop.is_cancelled() {
                        return;
                    }
                    if let Err(e) = self.store.enqueue(&id, &seqs, last, now_ms()).await {
                        tracing::error!(endpoint = %id, error = %e, "webhook enqueue failed");
                        broken = true;
                    }
                    self.wake.notify_one();
                }
                if broken {
                    // Resume from the durable cursor.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
}
