//! Presence and occupancy: which users are members of a channel, and how many subscribers
//! each channel has. State, not history: nothing here goes through the log or has a seq (the
//! webhook notices about it do, see [`Notice`]).
//!
//! A member is a user: several connections of one user (tabs, devices, nodes) are one member,
//! who joins with the first and leaves after the last. Transports hold guards: a
//! [`Membership`] while a connection is present, an [`Occupant`] while it is subscribed to an
//! exact channel; dropping them is leaving. Watchers ([`Watch`]) get a snapshot, then diffs.
//!
//! Where the state lives: `local.rs` (one node, in memory: a restart ends every connection,
//! so there is nothing to keep) or `redis.rs` (a cluster: shared, with node heartbeats so a
//! dead node's members leave). `notify.rs` turns changes into coalesced diffs per channel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::config::PresenceConfig;
use crate::store::StoreError;

mod local;
mod notify;
mod redis;

pub use notify::{presence_frame, Change, Diff};
pub use redis::RedisPresence;

use local::LocalState;
use notify::Notifier;

/// Longest user id, in bytes.
pub const MAX_USER_BYTES: usize = 256;

/// Most members or channels in one page of a query.
pub const MAX_PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("invalid user: {0}")]
    InvalidUser(String),
    #[error("invalid info: {0}")]
    InvalidInfo(String),
    #[error("presence is per channel: {0:?} is a pattern")]
    Pattern(String),
    #[error("the presence store failed: {0}")]
    Store(#[from] StoreError),
}

/// A member as others see it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<str>,
    /// A JSON object, or null.
    pub info: Arc<Value>,
}

impl Identity {
    pub fn new(
        user: &str,
        info: Option<Arc<Value>>,
        config: &PresenceConfig,
    ) -> Result<Identity, PresenceError> {
        if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
            return Err(PresenceError::InvalidUser(format!(
                "a user is 1-{MAX_USER_BYTES} bytes with no control characters"
            )));
        }
        let info = info.unwrap_or_else(|| Arc::new(Value::Null));
        if !(info.is_object() || info.is_null()) {
            return Err(PresenceError::InvalidInfo(
                "info must be a JSON object".into(),
            ));
        }
        let size = info.to_string().len();
        if size > config.max_info_bytes {
            return Err(PresenceError::InvalidInfo(format!(
                "info is {size} bytes; the limit is {} (presence.max_info_bytes)",
                config.max_info_bytes
            )));
        }
        Ok(Identity {
            user: user.into(),
            info,
        })
    }
}

/// One member in a snapshot or a page.
#[derive(Debug, Clone)]
pub struct Member {
    pub user: Arc<str>,
    pub info: Arc<Value>,
    pub connections: u64,
}

impl Member {
    pub fn json(&self) -> Value {
        json!({"user": &*self.user, "info": &*self.info, "connections": self.connections})
    }
}

/// A channel's members at one version. `members` is `None` above the list limit.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub channel: Arc<str>,
    pub count: u64,
    pub members: Option<Vec<Member>>,
    pub version: u64,
}

impl Snapshot {
    /// `{"channel","count","members":[...]}` (members omitted above the limit).
    pub fn body(&self) -> Value {
        let mut v = json!({"channel": &*self.channel, "count": self.count});
        if let Some(members) = &self.members {
            v["members"] = members.iter().map(Member::json).collect::<Vec<_>>().into();
        }
        v
    }
}

/// A page of `GET /v1/presence`: members in user order after `after`.
pub struct MembersPage {
    pub count: u64,
    pub members: Vec<Member>,
    pub next: Option<String>,
}

/// One line of `GET /v1/channels`.
pub struct ChannelInfo {
    pub channel: String,
    pub subscribers: u64,
    pub members: u64,
}

pub struct ChannelsPage {
    pub channels: Vec<ChannelInfo>,
    pub next: Option<String>,
}

/// A change webhooks may be told of (they opt in per kind). The node that decided the
/// change (in a cluster: the one whose script made it) hands it on, so it is told once.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    Join {
        channel: String,
        user: String,
        info: Value,
    },
    Leave {
        channel: String,
        user: String,
        info: Value,
    },
    Occupied {
        channel: String,
    },
    Vacated {
        channel: String,
    },
}

impl Notice {
    /// The webhook event type.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::Join { .. } => "presence.join",
            Notice::Leave { .. } => "presence.leave",
            Notice::Occupied { .. } => "channel.occupied",
            Notice::Vacated { .. } => "channel.vacated",
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            Notice::Join { channel, .. }
            | Notice::Leave { channel, .. }
            | Notice::Occupied { channel }
            | Notice::Vacated { channel } => channel,
        }
    }

    /// The event data delivered (the channel is the event's own).
    pub fn data(&self) -> Value {
        match self {
            Notice::Join { user, info, .. } | Notice::Leave { user, info, .. } => {
                json!({"user": user, "info": info})
            }
            Notice::Occupied { .. } | Notice::Vacated { .. } => json!({}),
        }
    }
}

/// Most notices waiting for the webhook side; past it they are dropped (and logged).
const NOTICE_QUEUE: usize = 65_536;

pub struct Presence {
    config: PresenceConfig,
    backend: Backend,
    notifier: Arc<Notifier>,
    next_conn: AtomicU64,
    notices: mpsc::Sender<Notice>,
}

enum Backend {
    Local(std::sync::Mutex<LocalState>),
    Shared(Arc<RedisPresence>),
}

impl Presence {
    /// Single node: state in memory. The receiver yields the notices for webhooks.
    pub fn local(config: PresenceConfig) -> (Arc<Presence>, mpsc::Receiver<Notice>) {
        Presence::with(config, |_, _| Backend::Local(Default::default()))
    }

    /// A cluster node: state in Redis (see `redis.rs`).
    pub fn shared(
        config: PresenceConfig,
        make: impl FnOnce(Arc<Notifier>, mpsc::Sender<Notice>) -> Arc<RedisPresence>,
    ) -> (Arc<Presence>, mpsc::Receiver<Notice>) {
        Presence::with(config, |notifier, notices| {
            Backend::Shared(make(notifier, notices))
        })
    }

    fn with(
        config: PresenceConfig,
        backend: impl FnOnce(Arc<Notifier>, mpsc::Sender<Notice>) -> Backend,
    ) -> (Arc<Presence>, mpsc::Receiver<Notice>) {
        let notifier = Notifier::new(config.window, config.list_limit);
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let presence = Arc::new(Presence {
            backend: backend(notifier.clone(), tx.clone()),
            config,
            notifier,
            next_conn: AtomicU64::new(1),
            notices: tx,
        });
        (presence, rx)
    }

    pub fn config(&self) -> &PresenceConfig {
        &self.config
    }

    /// Makes the caller a member of `channel` and starts watching it: the snapshot (which
    /// holds the new member) and a [`Watch`] for what follows.
    pub async fn join(
        self: &Arc<Self>,
        channel: &str,
        member: Identity,
    ) -> Result<(Watch, Snapshot), PresenceError> {
        if channel.contains('*') {
            return Err(PresenceError::Pattern(channel.to_string()));
        }
        let channel: Arc<str> = channel.into();
        let rx = self.notifier.subscribe(&channel);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        match &self.backend {
            Backend::Local(state) => {
                let (change, notice) = state
                    .lock()
                    .expect("presence state")
                    .join(&channel, &member);
                self.told(change, notice);
            }
            Backend::Shared(redis) => redis.join(conn, &channel, &member).await?,
        }
        let membership = Membership {
            _counted: crate::stats::Held::member(),
            presence: self.clone(),
            channel: channel.clone(),
            user: member.user.clone(),
            conn,
        };
        let snapshot = match self.snapshot(&channel).await {
            Ok(s) => s,
            Err(e) => {
                drop(membership);
                return Err(e);
            }
        };
        let watch = Watch {
            presence: self.clone(),
            channel,
            rx,
            seen: snapshot.version,
            _membership: membership,
        };
        Ok((watch, snapshot))
    }

    fn leave(&self, conn: u64, channel: &Arc<str>, user: &Arc<str>) {
        match &self.backend {
            Backend::Local(state) => {
                let told = state.lock().expect("presence state").leave(channel, user);
                if let Some((change, notice)) = told {
                    self.told(Some(change), notice);
                }
            }
            Backend::Shared(redis) => redis.leave(conn),
        }
    }

    /// Counts a subscriber of `channel` until the returned guard drops.
    pub fn occupy(self: &Arc<Self>, channel: &str) -> Occupant {
        let channel: Arc<str> = channel.into();
        self.occupancy(&channel, 1);
        Occupant {
            presence: self.clone(),
            channel,
        }
    }

    fn occupancy(&self, channel: &Arc<str>, delta: i64) {
        match &self.backend {
            Backend::Local(state) => {
                let notice = state.lock().expect("presence state").occupy(channel, delta);
                self.told(None, notice);
            }
            Backend::Shared(redis) => redis.occupy(channel, delta),
        }
    }

    /// Hands a local change to the watchers and a notice to the webhook side.
    fn told(&self, change: Option<Change>, notice: Option<Notice>) {
        if let Some(change) = change {
            self.notifier.change(change);
        }
        if let Some(notice) = notice {
            send_notice(&self.notices, notice);
        }
    }

    pub async fn snapshot(&self, channel: &Arc<str>) -> Result<Snapshot, PresenceError> {
        let limit = self.config.list_limit;
        match &self.backend {
            Backend::Local(state) => Ok(state
                .lock()
                .expect("presence state")
                .snapshot(channel, limit)),
            Backend::Shared(redis) => Ok(redis.snapshot(channel, limit).await?),
        }
    }

    /// `GET /v1/presence`: members in user order after `after`.
    pub async fn members(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, PresenceError> {
        let limit = limit.clamp(1, MAX_PAGE);
        match &self.backend {
            Backend::Local(state) => Ok(state
                .lock()
                .expect("presence state")
                .members(channel, after, limit)),
            Backend::Shared(redis) => Ok(redis.members(channel, after, limit).await?),
        }
    }

    /// The cluster's nodes; None on a single node.
    pub async fn nodes(&self) -> Option<Result<Nodes, PresenceError>> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Shared(redis) => Some(redis.nodes().await.map_err(Into::into)),
        }
    }

    /// `GET /v1/channels`: channels with subscribers or members, in name order.
    pub async fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ChannelsPage, PresenceError> {
        let limit = limit.clamp(1, MAX_PAGE);
        match &self.backend {
            Backend::Local(state) => Ok(state
                .lock()
                .expect("presence state")
                .channels(prefix, after, limit)),
            Backend::Shared(redis) => Ok(redis.channels(prefix, after, limit).await?),
        }
    }
}

/// A cluster's nodes as presence's heartbeats know them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Nodes {
    /// This node's id.
    pub this: String,
    /// (node id, last heartbeat in Unix ms), every node that has not been reaped.
    pub beats: Vec<(String, u64)>,
}

/// Queues a notice for the webhook side without ever waiting (callers include `Drop`).
fn send_notice(tx: &mpsc::Sender<Notice>, notice: Notice) {
    if let Err(e) = tx.try_send(notice) {
        tracing::warn!(error = %e, "presence notice dropped: the webhook side is behind");
    }
}

/// A connection's membership of a channel; dropping it leaves.
pub struct Membership {
    _counted: crate::stats::Held,
    presence: Arc<Presence>,
    channel: Arc<str>,
    user: Arc<str>,
    conn: u64,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.presence.leave(self.conn, &self.channel, &self.user);
    }
}

/// A subscriber counted in its channel's occupancy; dropping it stops counting.
pub struct Occupant {
    presence: Arc<Presence>,
    channel: Arc<str>,
}

impl Drop for Occupant {
    fn drop(&mut self) {
        self.presence.occupancy(&self.channel, -1);
    }
}

/// What a watcher is told next.
pub enum Update {
    /// Changes since what the watcher knows.
    Diff(Arc<Diff>),
    /// The whole state again (after falling behind, or a backend resync).
    Sync(Snapshot),
}

impl Update {
    /// The JSON body (without `op`), as SSE `data:` and inside a WS frame.
    pub fn body(&self) -> Value {
        match self {
            Update::Diff(d) => d.body(),
            Update::Sync(s) => s.body(),
        }
    }
}

/// A connection's view of one channel's presence, holding its membership.
pub struct Watch {
    presence: Arc<Presence>,
    channel: Arc<str>,
    rx: broadcast::Receiver<Arc<Diff>>,
    /// The newest change version this watcher knows of.
    seen: u64,
    _membership: Membership,
}

impl Watch {
    /// The next update. A watcher that fell behind (or a backend resync) gets a fresh
    /// snapshot; a store error then ends the watch (`None`).
    pub async fn next(&mut self) -> Option<Update> {
        loop {
            let diff = match self.rx.recv().await {
                Ok(d) if d.resync => return self.resync().await,
                Ok(d) => d,
                Err(broadcast::error::RecvError::Lagged(_)) => return self.resync().await,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if diff.last <= self.seen {
                continue;
            }
            let update = if diff.first > self.seen || diff.counts_only {
                diff
            } else {
                Arc::new(diff.after(self.seen))
            };
            self.seen = update.last;
            return Some(Update::Diff(update));
        }
    }

    async fn resync(&mut self) -> Option<Update> {
        // Boxed: a Redis read's future is large, and every idle watcher's future would
        // otherwise reserve room for it.
        match Box::pin(self.presence.snapshot(&self.channel)).await {
            Ok(s) => {
                self.seen = s.version;
                Some(Update::Sync(s))
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence resync failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
