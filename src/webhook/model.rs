//! What webhooks are made of, shared by the queue's engines (embedded and Redis), the
//! dispatcher and the API: endpoints, pending tasks, attempts and their statuses. Plain data
//! with no behaviour of its own, so every other webhook module may depend on it and it on
//! none of them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// An attempt's status in the attempt log (the wire strings are the lowercase names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatus {
    /// 2xx.
    Delivered,
    /// Failed; another attempt is scheduled.
    Retrying,
    /// Failed with no retry left (or the event is gone from the log).
    Failed,
    /// The endpoint was disabled by this attempt (410, or failing too long).
    Disabled,
}

impl AttemptStatus {
    pub const ALL: [AttemptStatus; 4] = [
        AttemptStatus::Delivered,
        AttemptStatus::Retrying,
        AttemptStatus::Failed,
        AttemptStatus::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Delivered => "delivered",
            AttemptStatus::Retrying => "retrying",
            AttemptStatus::Failed => "failed",
            AttemptStatus::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<AttemptStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// An outgoing webhook endpoint, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    /// The consumer it belongs to: a token whose `webhooks.owner` is this manages it. None:
    /// only admin credentials see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub url: String,
    pub channels: Vec<String>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Presence and occupancy notices wanted (`presence.join`, ...); none unless asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<String>,
    /// Delivered in Pusher's webhook format for this app (made from `[[pusher.apps]]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<PusherFormat>,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    pub ordered: bool,
    /// At most this many delivery attempts per second (per node), so a receiver that was
    /// down is not flooded with its backlog. None: no limit beyond the in-flight caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    pub secret: String,
    /// The secret before the last rotation, still used to sign until `previous_expires_ms`.
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_expires_ms: Option<u64>,
    pub created_ms: u64,
    /// When the current run of failures began; cleared by a success.
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
    #[serde(default)]
    pub disabled_reason: Option<String>,
}

/// A Pusher app's webhook: `{"time_ms","events":[...]}` signed with the app secret
/// (`X-Pusher-Key`, `X-Pusher-Signature`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PusherFormat {
    pub app: String,
    pub key: String,
    pub secret: String,
    /// Client events (`client_event` webhooks) are wanted too.
    pub client_events: bool,
}

/// A pending delivery of one event to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub seq: u64,
    /// Attempts made so far.
    pub attempts: u32,
    /// The cluster claim this node holds on the task (none on a single node).
    pub claim: Option<Arc<str>>,
}

/// One delivery attempt, as the attempt log shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub id: u64,
    pub seq: u64,
    pub attempt: u32,
    pub status: AttemptStatus,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub time: String,
    pub time_ms: u64,
    pub next_attempt: Option<String>,
    pub response_body: Option<String>,
}

/// An attempt to record, with what it does to its task.
#[derive(Clone)]
pub struct Finished {
    pub endpoint: String,
    pub task: Task,
    pub attempt: Attempt,
    pub resolution: Resolution,
}

/// How a finished attempt changes the task.
#[derive(Clone, Copy)]
pub enum Resolution {
    Delivered,
    Retry {
        next_at_ms: u64,
    },
    Failed,
    /// Leave the task pending as is (the endpoint got disabled).
    Keep,
}
