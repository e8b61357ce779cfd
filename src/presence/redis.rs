//! Presence for a cluster, in Redis (key layout and rules: `presence.lua`).
//!
//! Each node keeps the truth about its own connections in memory (`Mine`) and writes it to
//! Redis through one ordered writer task, in pipelined batches. Changes come back to every
//! node (this one included) on a Pub/Sub channel, so watchers everywhere hear each change
//! once. Nodes beat every `presence.heartbeat`; a beat also reaps nodes silent for
//! `presence.node_timeout` (their members leave everywhere). When anything went wrong (a
//! failed write, a lost Pub/Sub connection, a beat that finds this node unknown because it
//! was reaped or Redis lost its data), the node re-states everything it holds (`sync`), which
//! tells only what differs: no phantom member outlives a reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, Script, Value as RedisValue};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::notify::Notifier;

mod reply;

use super::{local::page_end, Snapshot};
use super::{send_notice, ChannelInfo, ChannelsPage, Identity, MembersPage, Nodes, Notice};
use crate::config::PresenceConfig;
use crate::store::StoreError;
use reply::{change, int, members, notice, text, Published, Told};

const SCRIPT: &str = include_str!("presence.lua");

/// Ordered writes waiting for the writer; past it a leave marks the node for a sync.
const OPS: usize = 65_536;

/// Most writes sent in one pipeline.
const BATCH: usize = 512;

/// Most dead nodes one beat reaps.
const REAP: usize = 16;

pub struct RedisPresence {
    conn: ConnectionManager,
    prefix: String,
    node: String,
    script: Script,
    ops: mpsc::Sender<Op>,
    mine: Mutex<Mine>,
    /// Redis may not hold what `mine` says: the next beat syncs.
    dirty: AtomicBool,
}

/// This node's connections and subscribers, as it knows them.
#[derive(Default)]
struct Mine {
    conns: HashMap<u64, (Arc<str>, Identity)>,
    occupancy: HashMap<Arc<str>, u64>,
}

enum Op {
    Join {
        conn: u64,
        channel: Arc<str>,
        member: Identity,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    Leave {
        conn: u64,
    },
    Occupy {
        channel: Arc<str>,
        delta: i64,
    },
    Beat,
}

impl RedisPresence {
    /// Starts the node's writer, heartbeat and Pub/Sub listener (until `stop`).
    pub fn start(
        client: Client,
        conn: ConnectionManager,
        prefix: &str,
        config: &PresenceConfig,
        notifier: Arc<Notifier>,
        notices: mpsc::Sender<Notice>,
        stop: CancellationToken,
    ) -> Arc<RedisPresence> {
        let (tx, rx) = mpsc::channel(OPS);
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("OS random source");
        let node = format!("{:016x}", u64::from_be_bytes(id));
        let presence = Arc::new(RedisPresence {
            conn,
            prefix: prefix.to_string(),
            node,
            script: Script::new(SCRIPT),
            ops: tx,
            mine: Mutex::default(),
            dirty: AtomicBool::new(true),
        });
        let config = config.clone();
        tokio::spawn(presence.clone().writer(rx, notices, config.clone()));
        tokio::spawn(beat(presence.ops.clone(), config.heartbeat, stop.clone()));
        tokio::spawn(presence.clone().listen(client, notifier, stop));
        presence
    }

    pub(super) async fn join(
        &self,
        conn: u64,
        channel: &Arc<str>,
        member: &Identity,
    ) -> Result<(), StoreError> {
        self.mine
            .lock()
            .expect("presence mine")
            .conns
            .insert(conn, (channel.clone(), member.clone()));
        let (done, wait) = oneshot::channel();
        let op = Op::Join {
            conn,
            channel: channel.clone(),
            member: member.clone(),
            done,
        };
        let result = match self.ops.send(op).await {
            Err(_) => Err(StoreError::Corrupt(
                "the presence writer has stopped".into(),
            )),
            Ok(()) => wait.await.unwrap_or_else(|_| {
                Err(StoreError::Corrupt(
                    "the presence writer has stopped".into(),
                ))
            }),
        };
        if result.is_err() {
            // Refused: nothing may stay behind. Out of `mine` (or the next sync would state
            // the member again once Redis is back: a phantom nobody leaves), and a leave in
            // case the write reached Redis before its reply was lost.
            self.leave(conn);
        }
        result
    }

    pub(super) fn leave(&self, conn: u64) {
        self.mine.lock().expect("presence mine").conns.remove(&conn);
        self.send(Op::Leave { conn });
    }

    pub(super) fn occupy(&self, channel: &Arc<str>, delta: i64) {
        {
            let mut mine = self.mine.lock().expect("presence mine");
            let n = mine.occupancy.entry(channel.clone()).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                mine.occupancy.remove(channel);
            }
        }
        self.send(Op::Occupy {
            channel: channel.clone(),
            delta,
        });
    }

    /// Never waits (callers include `Drop`): a full queue leaves Redis behind `mine`, which
    /// the next beat's sync repairs.
    fn send(&self, op: Op) {
        if self.ops.try_send(op).is_err() {
            self.dirty.store(true, Ordering::Release);
        }
    }

    fn invocation(&self, op: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(0)
            .arg(&self.prefix)
            .arg(op);
        cmd
    }

    /// Runs a read, loading the script first if Redis does not have it (a restart).
    async fn read(&self, cmd: redis::Cmd) -> Result<Vec<RedisValue>, StoreError> {
        let mut conn = self.conn.clone();
        match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load().await?;
                Ok(cmd.query_async(&mut conn).await?)
            }
            other => Ok(other?),
        }
    }

    async fn load(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query_async::<String>(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn snapshot(
        &self,
        channel: &Arc<str>,
        limit: usize,
    ) -> Result<Snapshot, StoreError> {
        let mut cmd = self.invocation("snapshot");
        cmd.arg(&**channel).arg(limit);
        let reply = self.read(cmd).await?;
        let version = int(reply.first());
        let count = int(reply.get(1));
        let members = (count as usize <= limit).then(|| members(&reply[2..]));
        Ok(Snapshot {
            channel: channel.clone(),
            count,
            members,
            version,
        })
    }

    pub(super) async fn members(
        &self,
        channel: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        let mut cmd = self.invocation("members");
        cmd.arg(channel).arg(after.unwrap_or("")).arg(limit);
        let reply = self.read(cmd).await?;
        let members = members(reply.get(1..).unwrap_or_default());
        let next = page_end(&members, limit, |m| m.user.to_string());
        Ok(MembersPage {
            count: int(reply.first()),
            members,
            next,
        })
    }

    /// The cluster's nodes with their last heartbeat (Unix ms), and which one is this.
    pub(super) async fn nodes(&self) -> Result<Nodes, StoreError> {
        let mut conn = self.conn.clone();
        let beats: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(format!("{}:pr:nodes", self.prefix))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        Ok(Nodes {
            this: self.node.clone(),
            beats,
        })
    }

    pub(super) async fn channels(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ChannelsPage, StoreError> {
        let mut cmd = self.invocation("channels");
        cmd.arg(prefix).arg(after.unwrap_or("")).arg(limit);
        let reply = self.read(cmd).await?;
        let channels: Vec<ChannelInfo> = reply
            .chunks_exact(3)
            .map(|c| ChannelInfo {
                channel: text(&c[0]),
                subscribers: int(c.get(1)),
                members: int(c.get(2)),
            })
            .collect();
        let next = page_end(&channels, limit, |c| c.channel.clone());
        Ok(ChannelsPage { channels, next })
    }

    /// The one writer: ops in order, pipelined in batches.
    async fn writer(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Op>,
        notices: mpsc::Sender<Notice>,
        config: PresenceConfig,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let result = self.write(&batch, &config).await;
            let mut waiters = Vec::new();
            for op in batch.drain(..) {
                if let Op::Join { done, .. } = op {
                    waiters.push(done);
                }
            }
            match result {
                Ok(told) => {
                    for t in told {
                        if let Some(notice) = notice(t) {
                            send_notice(&notices, notice);
                        }
                    }
                    for w in waiters {
                        let _ = w.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "presence write failed; resyncing at the next beat");
                    self.dirty.store(true, Ordering::Release);
                    for w in waiters {
                        let _ = w.send(Err(StoreError::Corrupt(e.to_string())));
                    }
                }
            }
        }
    }

    /// One pipeline for the batch (a beat may become a sync); returns what the scripts told.
    async fn write(&self, batch: &[Op], config: &PresenceConfig) -> Result<Vec<Told>, StoreError> {
        let mut pipe = redis::pipe();
        let mut beats = Vec::new();
        for (i, op) in batch.iter().enumerate() {
            let cmd = match op {
                Op::Join {
                    conn,
                    channel,
                    member,
                    ..
                } => {
                    let mut c = self.invocation("join");
                    c.arg(&self.node)
                        .arg(conn)
                        .arg(&**channel)
                        .arg(&*member.user)
                        .arg(member.info.to_string());
                    c
                }
                Op::Leave { conn } => {
                    let mut c = self.invocation("leave");
                    c.arg(&self.node).arg(conn);
                    c
                }
                Op::Occupy { channel, delta } => {
                    let mut c = self.invocation("occupy");
                    c.arg(&self.node).arg(&**channel).arg(delta);
                    c
                }
                Op::Beat if self.dirty.swap(false, Ordering::AcqRel) => self.sync_cmd(),
                Op::Beat => {
                    beats.push(i);
                    let mut c = self.invocation("beat");
                    c.arg(&self.node)
                        .arg(now_ms())
                        .arg(config.node_timeout.as_millis() as u64)
                        .arg(REAP);
                    c
                }
            };
            pipe.add_command(cmd);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<Vec<RedisValue>> = match pipe.query_async(&mut conn).await {
            // Redis restarted and lost its scripts: no command of the batch ran (each needs
            // the script), so it runs again once the script is loaded.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.load().await?;
                pipe.query_async(&mut conn).await?
            }
            other => other?,
        };
        let mut told = Vec::new();
        for (i, reply) in replies.into_iter().enumerate() {
            let mut items = reply.into_iter();
            if beats.contains(&i) && int(items.next().as_ref()) == 0 {
                // This node is unknown to Redis: reaped while cut off, or Redis lost its data.
                self.dirty.store(true, Ordering::Release);
            }
            told.extend(items.filter_map(|v| serde_json::from_str(&text(&v)).ok()));
        }
        if self.dirty.load(Ordering::Acquire) && !beats.is_empty() {
            // Sync now rather than a heartbeat later.
            let _ = self.ops.try_send(Op::Beat);
        }
        Ok(told)
    }

    /// `sync`: everything this node holds, so Redis holds exactly that.
    fn sync_cmd(&self) -> redis::Cmd {
        let mine = self.mine.lock().expect("presence mine");
        let mut c = self.invocation("sync");
        c.arg(&self.node).arg(now_ms()).arg(mine.conns.len());
        for (conn, (channel, member)) in &mine.conns {
            c.arg(conn)
                .arg(&**channel)
                .arg(&*member.user)
                .arg(member.info.to_string());
        }
        for (channel, n) in &mine.occupancy {
            c.arg(&**channel).arg(n);
        }
        c
    }

    /// Hands every published change to this node's watchers. A lost subscription may have
    /// missed changes: the node then syncs and every watcher takes a fresh snapshot.
    async fn listen(
        self: Arc<Self>,
        client: Client,
        notifier: Arc<Notifier>,
        stop: CancellationToken,
    ) {
        let channel = format!("{}:pr:changes", self.prefix);
        let mut first = true;
        while !stop.is_cancelled() {
            let mut pubsub = match client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(error = %e, "presence subscription failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if pubsub.subscribe(&channel).await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if !first {
                self.dirty.store(true, Ordering::Release);
                let _ = self.ops.try_send(Op::Beat);
                notifier.resync_all();
            }
            first = false;
            let mut messages = pubsub.on_message();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => match m {
                        Some(m) => {
                            if let Ok(p) = serde_json::from_slice::<Published>(m.get_payload_bytes()) {
                                notifier.change(change(p));
                            }
                        }
                        None => break,
                    }
                }
            }
            tracing::warn!("presence subscription to Redis lost; reconnecting");
        }
    }
}

async fn beat(ops: mpsc::Sender<Op>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if ops.send(Op::Beat).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
