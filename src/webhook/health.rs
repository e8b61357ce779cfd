//! Each endpoint's health for the operator console: its last attempt and the run of failures
//! since its last success, as this node's workers saw them (kept in memory; attempts made by
//! other nodes of a cluster are in the attempt log, not here), with its queue as the store
//! counts it.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;

use super::{AttemptStatus, WebhookError, Webhooks};
use crate::event::{format_time, now_ms};

#[derive(Default)]
pub(super) struct Book(Mutex<HashMap<String, Seen>>);

/// What the last attempt said and how many in a row have failed.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub last_status: AttemptStatus,
    pub last_status_code: Option<u16>,
    #[serde(rename = "last_attempt", serialize_with = "rfc3339")]
    pub last_attempt_ms: u64,
    pub last_duration_ms: u64,
    /// Attempts that failed since the last delivered one (0 after a success).
    pub failure_streak: u64,
}

fn rfc3339<S: serde::Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ms))
}

impl Book {
    /// On every attempt, so it allocates only for an endpoint's first (the time is
    /// formatted when read).
    pub(super) fn saw(&self, id: &str, status: AttemptStatus, code: Option<u16>, ms: u64) {
        let mut map = self.0.lock().expect("webhook health");
        let seen = match map.get_mut(id) {
            Some(seen) => seen,
            None => map.entry(id.to_string()).or_insert(Seen {
                last_status: status,
                last_status_code: None,
                last_attempt_ms: 0,
                last_duration_ms: 0,
                failure_streak: 0,
            }),
        };
        seen.failure_streak = match status {
            AttemptStatus::Delivered => 0,
            _ => seen.failure_streak + 1,
        };
        seen.last_status = status;
        seen.last_status_code = code;
        seen.last_attempt_ms = now_ms();
        seen.last_duration_ms = ms;
    }

    pub(super) fn forget(&self, id: &str) {
        self.0.lock().expect("webhook health").remove(id);
    }

    fn get(&self, id: &str) -> Option<Seen> {
        self.0.lock().expect("webhook health").get(id).cloned()
    }
}

/// One endpoint's health, as `GET /v1/webhooks/health` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub id: String,
    /// None until this node has attempted a delivery to it.
    #[serde(flatten)]
    pub seen: Option<Seen>,
    /// Deliveries waiting (due now, later, or being attempted).
    pub queue_depth: usize,
    /// How long the most overdue delivery has been due; 0 when nothing is overdue.
    pub oldest_pending_seconds: f64,
}

impl Webhooks {
    pub async fn health(&self, id: &str) -> Result<Health, WebhookError> {
        let (queue_depth, earliest) = self.store.endpoint_queue(id).await?;
        let overdue = earliest.map_or(0, |at| now_ms().saturating_sub(at));
        Ok(Health {
            id: id.to_string(),
            seen: self.health.get(id),
            queue_depth,
            oldest_pending_seconds: overdue as f64 / 1000.0,
        })
    }
}
