//! What a consumer does by hand: send a test event to an endpoint and see what came back,
//! and recover what failed (re-queue every event whose deliveries ran out of retries).

use serde_json::json;

use super::deliver::Message;
use super::endpoint::Live;
use super::model::{Attempt, AttemptStatus, Finished, Resolution, Task};
use super::{WebhookError, Webhooks};
use crate::event::{format_time, now_ms};

/// Attempt-log records read per page while recovering.
const PAGE: usize = 1000;

impl Webhooks {
    /// Sends one synthetic event (`seq` 0, `"test": true`) to the endpoint now, signed like
    /// any delivery, logs the attempt (seq 0) and returns it. Nothing enters the event log.
    pub async fn send_test(
        &self,
        id: &str,
        kind: Option<String>,
        data: Option<serde_json::Value>,
    ) -> Result<Attempt, WebhookError> {
        let endpoint = self.get(id).await?;
        if endpoint.pusher.is_some() {
            return Err(WebhookError::Invalid(
                "a Pusher app's webhook takes Pusher's format; send a client event instead".into(),
            ));
        }
        let live = Live::new(endpoint)?;
        let now = now_ms();
        let channel = live
            .endpoint
            .channels
            .iter()
            .find(|c| !c.contains('*'))
            .cloned()
            .unwrap_or_else(|| "webhook.test".into());
        let body = json!({
            "seq": 0, "channel": channel, "type": kind.unwrap_or_else(|| "webhook.test".into()),
            "data": data.unwrap_or_else(|| json!({"message": "a test event from Herald"})),
            "time": format_time(now), "test": true,
        });
        let mut nonce = [0u8; 6];
        getrandom::fill(&mut nonce).expect("OS random source");
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let webhook_id = format!("{id}_test_{nonce}");
        let target = self.deliverer.target(&live.endpoint.url);
        let message = Message {
            url: &target,
            webhook_id: &webhook_id,
            body: body.to_string().into(),
            secrets: live.signing_secrets(now),
            pusher: None,
        };
        let outcome = self.deliverer.send(message, now / 1000).await;
        let status = if outcome.delivered() {
            AttemptStatus::Delivered
        } else {
            AttemptStatus::Failed
        };
        let attempt = Attempt {
            id: 0,
            seq: 0,
            attempt: 1,
            status,
            status_code: outcome.status,
            error: outcome.error,
            duration_ms: outcome.duration.as_millis() as u64,
            time: format_time(now),
            time_ms: now,
            next_attempt: None,
            response_body: outcome.body,
        };
        self.recorder
            .finish(Finished {
                endpoint: id.to_string(),
                task: Task {
                    seq: 0,
                    attempts: 0,
                    claim: None,
                },
                attempt: attempt.clone(),
                resolution: Resolution::Keep,
            })
            .await?;
        Ok(attempt)
    }

    /// Re-queues every event whose delivery to `id` failed for good (its last attempt since
    /// `since_ms` says `failed`), due now, with fresh retries. Returns how many.
    pub async fn recover(&self, id: &str, since_ms: u64) -> Result<usize, WebhookError> {
        self.get(id).await?;
        // The latest attempt per seq decides: one delivered later (by a replay) is done.
        let mut last: std::collections::BTreeMap<u64, AttemptStatus> = Default::default();
        let mut after = 0;
        loop {
            let page = self.store.attempts(id, after, None, PAGE).await?;
            for a in &page {
                if a.seq != 0 && a.time_ms >= since_ms {
                    last.insert(a.seq, a.status);
                }
            }
            match page.last() {
                Some(a) if page.len() == PAGE => after = a.id,
                _ => break,
            }
        }
        let seqs: Vec<u64> = last
            .into_iter()
            .filter(|(_, s)| *s == AttemptStatus::Failed)
            .map(|(seq, _)| seq)
            .collect();
        if !seqs.is_empty() {
            self.store.enqueue(id, &seqs, None, now_ms()).await?;
            self.wake.notify_one();
        }
        Ok(seqs.len())
    }
}
