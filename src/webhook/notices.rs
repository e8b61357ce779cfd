//! Presence and occupancy notices as webhook deliveries. A notice wanted by at least one
//! endpoint becomes an event on its notice channel (`$` + the channel it is about), so it is
//! queued, signed, retried and replayed like any event; no subscriber or history read sees
//! it (see `event::NOTICE_MARK`). Delivered (`format.rs`), it names the channel it is about.

use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::Webhooks;
use crate::event::{EventError, NewEvent, Source, NOTICE_MARK};
use crate::presence::Notice;

/// Notices appended in one batch.
const BATCH: usize = 256;

impl Webhooks {
    /// Takes the presence side's notices until shutdown.
    pub fn take_notices(self: &Arc<Self>, mut rx: mpsc::Receiver<Notice>) {
        let service = self.clone();
        self.spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                tokio::select! {
                    _ = service.shutdown.cancelled() => return,
                    n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                }
                // In a cluster another node may have just created an endpoint that wants
                // these: a notice is dropped only against an up-to-date endpoint set.
                if let Err(e) = service.sync_if_changed().await {
                    tracing::debug!(error = %e, "webhook endpoints not synced before notices");
                }
                let events: Vec<NewEvent> = batch
                    .drain(..)
                    .filter(|n| service.wants_notice(n))
                    .filter_map(|n| {
                        notice_event(&n)
                            .inspect_err(|e| tracing::warn!(error = %e, "presence notice refused"))
                            .ok()
                    })
                    .collect();
                if events.is_empty() {
                    continue;
                }
                if let Err(e) = service.hub.publish(events, "notice").await {
                    tracing::warn!(error = %e, "presence notices not logged: no webhook gets them");
                }
            }
        });
    }

    fn wants_notice(&self, notice: &Notice) -> bool {
        let live = self.live.read().expect("webhook endpoints");
        live.values()
            .any(|l| l.wants_notice(notice.channel(), notice.kind()))
    }
}

fn notice_event(notice: &Notice) -> Result<NewEvent, EventError> {
    let data = RawValue::from_string(notice.data().to_string()).expect("JSON");
    NewEvent::new(
        Source::Internal,
        format!("{}{}", char::from(NOTICE_MARK), notice.channel()),
        Some(notice.kind().to_string()),
        data,
        None,
    )
}
