//! Dispatch: the scheduler walks due tasks within the global and per-endpoint limits
//! (ordered endpoints: one at a time, the head), workers sign and POST them, and each
//! attempt is recorded with the task's next state (decided by `retry`) in one store write.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::deliver::{Message, Outcome};
use super::endpoint::Live;
use super::model::{Attempt, Endpoint, Finished, Resolution, Task};
use super::queue::Want;
use super::retry::{self, Decision};
use super::{WebhookError, Webhooks};
use crate::event::{format_time, now_ms, EventRef};

/// Scheduling passes happen at least this often (retries come due without a wake-up).
const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
pub(super) struct InFlight {
    total: usize,
    per_endpoint: HashMap<String, usize>,
    /// Seqs being attempted, per endpoint (looked up by `&str` for every task a claim
    /// scans, so without allocating).
    tasks: HashMap<String, HashSet<u64>>,
    /// Cluster claims held by running attempts, to hand back at shutdown.
    pub(super) claims: HashMap<(String, u64), Arc<str>>,
    /// Rate-limited endpoints' token buckets.
    buckets: HashMap<String, Bucket>,
}

/// `rate_limit` as a token bucket: refills at the rate, holds a second's worth at most.
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    /// Whole attempts allowed now.
    fn available(&mut self, rate: u32, now_ms: u64) -> usize {
        let rate = f64::from(rate);
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at_ms = now_ms;
        self.tokens.floor() as usize
    }
}

impl Webhooks {
    /// Hands due tasks to delivery workers within the concurrency limits.
    pub(super) async fn schedule(self: Arc<Self>) {
        let mut last_trim = 0;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            let now = now_ms();
            if let Some((depth, earliest)) = self.store.queue_stats() {
                metrics::gauge!("herald_webhook_queue_depth").set(depth as f64);
                let overdue = earliest.map_or(0, |at| now.saturating_sub(at));
                metrics::gauge!("herald_webhook_oldest_due_seconds").set(overdue as f64 / 1000.0);
            }
            match self.dispatch_due(now).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("webhook scheduling resumed");
                }
                Ok(()) => {}
                Err(e) => {
                    // Said once per outage; retried each second until the store is back.
                    if !failing {
                        tracing::error!(error = %e, "webhook scheduling failed");
                    }
                    failing = true;
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            if now.saturating_sub(last_trim) > 60_000 {
                last_trim = now;
                let cutoff = now.saturating_sub(self.attempt_retention.as_millis() as u64);
                if let Err(e) = self.store.trim_attempts(cutoff).await {
                    tracing::error!(error = %e, "webhook attempt log trim failed");
                }
            }
            // Let completions accumulate a little instead of rescanning per completion.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn dispatch_due(self: &Arc<Self>, now: u64) -> Result<(), WebhookError> {
        let live_map = self.live.read().expect("webhook map").clone();
        let max_total = self.config.max_in_flight.max(1);
        let (wants, total) = {
            let mut f = self.in_flight.lock().expect("in-flight lock");
            let InFlight {
                per_endpoint,
                buckets,
                ..
            } = &mut *f;
            let wants: HashMap<String, Want> = live_map
                .values()
                .filter(|l| l.endpoint.enabled)
                .filter_map(|l| {
                    let ordered = l.endpoint.ordered;
                    let limit = if ordered {
                        1
                    } else {
                        self.config.max_in_flight_per_endpoint.max(1)
                    };
                    let busy = per_endpoint.get(&l.endpoint.id).copied().unwrap_or(0);
                    let mut capacity = limit.saturating_sub(busy);
                    if let Some(rate) = l.endpoint.rate_limit {
                        let bucket = buckets.entry(l.endpoint.id.clone()).or_insert(Bucket {
                            tokens: 1.0,
                            at_ms: now,
                        });
                        capacity = capacity.min(bucket.available(rate, now));
                    }
                    (capacity > 0).then(|| {
                        let want = Want { capacity, ordered };
                        (l.endpoint.id.clone(), want)
                    })
                })
                .collect();
            buckets.retain(|id, _| {
                live_map
                    .get(id)
                    .is_some_and(|l| l.endpoint.rate_limit.is_some())
            });
            (wants, max_total.saturating_sub(f.total))
        };
        if wants.is_empty() || total == 0 {
            return Ok(());
        }
        let local = {
            let f = self.in_flight.lock().expect("in-flight lock");
            self.store.claim_local(now, &wants, total, |id, seq| {
                f.tasks.get(id).is_some_and(|s| s.contains(&seq))
            })
        };
        let claimed = match local {
            Some(claimed) => claimed,
            None => self.store.claim_shared(now, &wants, total).await?,
        };
        if claimed.is_empty() {
            return Ok(());
        }
        // Endpoints on the same channels claim the same events: read each once, together.
        let mut seqs: Vec<u64> = claimed.iter().map(|(_, t)| t.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let events: HashMap<u64, Option<EventRef>> = seqs
            .iter()
            .copied()
            .zip(self.hub.log().get_many(seqs.clone()).await?)
            .collect();
        for (id, task) in claimed {
            let Some(live) = live_map.get(&id) else {
                continue;
            };
            {
                let mut f = self.in_flight.lock().expect("in-flight lock");
                if !f.tasks.entry(id.clone()).or_default().insert(task.seq) {
                    continue;
                }
                if let Some(token) = &task.claim {
                    f.claims.insert((id.clone(), task.seq), token.clone());
                }
                f.total += 1;
                if let Some(bucket) = f.buckets.get_mut(&id) {
                    bucket.tokens -= 1.0;
                }
                *f.per_endpoint.entry(id).or_default() += 1;
            }
            let event = events.get(&task.seq).cloned().flatten();
            self.spawn(self.clone().attempt(live.clone(), task, event));
        }
        Ok(())
    }

    /// `event` is None when retention trimmed it before its delivery.
    async fn attempt(self: Arc<Self>, live: Arc<Live>, task: Task, event: Option<EventRef>) {
        let id = live.endpoint.id.clone();
        let seq = task.seq;
        if let Err(e) = self.attempt_inner(&live, task, event).await {
            tracing::error!(endpoint = %id, seq, error = %e, "webhook attempt failed to record");
        }
        {
            let mut f = self.in_flight.lock().expect("in-flight lock");
            f.total -= 1;
            if let Some(n) = f.per_endpoint.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    f.per_endpoint.remove(&id);
                }
            }
            f.claims.remove(&(id.clone(), seq));
            if let Some(seqs) = f.tasks.get_mut(&id) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    f.tasks.remove(&id);
                }
            }
        }
        self.wake.notify_one();
    }

    async fn attempt_inner(
        &self,
        live: &Live,
        task: Task,
        event: Option<EventRef>,
    ) -> Result<(), WebhookError> {
        let endpoint = &live.endpoint;
        let now = now_ms();
        let Some(event) = event else {
            let outcome = Outcome {
                status: None,
                error: Some("the event is no longer in the log (trimmed by retention)".into()),
                duration: Duration::ZERO,
                retry_after: None,
                body: None,
            };
            self.record(live, task, &outcome, Decision::Exhausted)
                .await?;
            return Ok(());
        };
        let webhook_id = format!("{}_{}", endpoint.id, task.seq);
        let target = live
            .target
            .get_or_init(|| self.deliverer.target(&endpoint.url));
        let message = Message {
            url: target,
            webhook_id: &webhook_id,
            body: super::format::body(&event, endpoint, now),
            secrets: live.signing_secrets(now),
            pusher: endpoint.pusher.as_ref(),
        };
        let outcome = self.deliverer.send(message, now / 1000).await;
        let now = now_ms();
        metrics::histogram!("herald_webhook_delivery_seconds")
            .record(outcome.duration.as_secs_f64());
        let policy = retry::Policy {
            schedule: &self.schedule,
            disable_after: self.config.disable_after,
        };
        let decision = retry::decide(
            &outcome,
            task.attempts,
            endpoint.failing_since_ms,
            &policy,
            now,
            jitter,
        );
        let label = match decision {
            Decision::Delivered => "delivered",
            Decision::Gone => "gone",
            _ => "failed",
        };
        metrics::counter!("herald_webhook_attempts_total", "outcome" => label).increment(1);
        self.health.saw(
            &endpoint.id,
            decision.status(),
            outcome.status,
            outcome.duration.as_millis() as u64,
        );
        let stats = crate::stats::get();
        stats.webhook_attempt(decision == Decision::Delivered);
        if decision == Decision::Delivered {
            stats.delivered(crate::stats::Transport::Webhook, 1);
        }
        self.record(live, task, &outcome, decision).await?;
        match decision {
            Decision::Delivered if endpoint.failing_since_ms.is_some() => {
                self.mark(endpoint.id.as_str(), &|e: &mut Endpoint| {
                    e.failing_since_ms = None
                })
                .await?;
            }
            Decision::Delivered => {}
            Decision::Gone => {
                self.disable(&endpoint.id, "the endpoint answered 410 Gone")
                    .await?;
            }
            Decision::FailingTooLong => {
                self.disable(
                    &endpoint.id,
                    "failing continuously for longer than webhooks.disable_after",
                )
                .await?;
            }
            Decision::Retry { .. } | Decision::Exhausted => {
                if endpoint.failing_since_ms.is_none() {
                    // Another node may have noticed first: its start of the run stands.
                    self.mark(&endpoint.id, &|e: &mut Endpoint| {
                        e.failing_since_ms.get_or_insert(now);
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Logs the attempt and moves the task on, in one store write.
    async fn record(
        &self,
        live: &Live,
        task: Task,
        outcome: &Outcome,
        decision: Decision,
    ) -> Result<(), WebhookError> {
        let now = now_ms();
        let (next_at, resolution) = match decision {
            Decision::Delivered => (None, Resolution::Delivered),
            Decision::Retry { at_ms } => (Some(at_ms), Resolution::Retry { next_at_ms: at_ms }),
            Decision::Exhausted => (None, Resolution::Failed),
            // The task stays queued for when the endpoint is enabled again.
            Decision::Gone | Decision::FailingTooLong => (None, Resolution::Keep),
        };
        let attempt = Attempt {
            id: 0,
            seq: task.seq,
            attempt: task.attempts + 1,
            status: decision.status(),
            status_code: outcome.status,
            error: outcome.error.clone(),
            duration_ms: outcome.duration.as_millis() as u64,
            time: format_time(now),
            time_ms: now,
            next_attempt: next_at.map(format_time),
            response_body: outcome.body.clone(),
        };
        let finished = Finished {
            endpoint: live.endpoint.id.clone(),
            task,
            attempt,
            resolution,
        };
        self.recorder.finish(finished).await?;
        Ok(())
    }
}

/// ±10% so that endpoints failing together do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let r = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    delay.mul_f64(0.9 + 0.2 * r)
}
