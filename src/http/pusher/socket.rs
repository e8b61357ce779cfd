//! `GET /app/{key}`: a Pusher protocol 7 WebSocket. One task per connection owns the socket,
//! its hub subscriptions (one per channel, on the mapped Herald channel) and its presence
//! watches, like Herald's own WebSocket; only the frames differ.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;
use futures_util::stream::{BoxStream, SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use super::message::{
    self, data_as, ChannelData, ClientFrame, PusherEvent, SigninData, SubscribeData,
};
use super::{herald_channel, is_cache, signature_ok, valid_channel, Kind};
use crate::config::PusherApp;
use crate::event::{Filter, NewEvent};
use crate::http::presence::updates;
use crate::http::{query_pairs, AppState, Connection};
use crate::hub::{Item, SubscriptionError};
use crate::limits::Bucket;
use crate::presence::{Identity, Occupant, Update};

/// Most bytes of one client frame (Pusher's limit is 10 KB of data; the frame has more).
const MAX_FRAME: usize = 64 * 1024;

/// Client events per second per connection (Pusher's limit).
const CLIENT_EVENT_RATE: u32 = 10;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pusher close codes (4000-4099: do not reconnect; 4100-4199: back off; 4200-4299:
/// reconnect now).
const APP_UNKNOWN: u16 = 4001;
const UNSUPPORTED_PROTOCOL: u16 = 4007;
const UNAUTHORIZED: u16 = 4009;
const OVER_CAPACITY: u16 = 4100;
const RECONNECT: u16 = 4200;
const PONG_MISSED: u16 = 4201;
const CLIENT_EVENT_REJECTED: u16 = 4301;

/// Numbers for socket ids: `{node}.{counter}`, unique across a cluster's nodes.
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(1);

fn node_number() -> u32 {
    static NODE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *NODE.get_or_init(|| {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("OS random source");
        u32::from_be_bytes(b) % 1_000_000_000
    })
}

pub async fn upgrade(
    State(app): State<AppState>,
    Path(key): Path<String>,
    Extension(conn): Extension<Connection>,
    RawQuery(query): RawQuery,
    upgrade: WebSocketUpgrade,
) -> Response {
    // No Origin check here, unlike `/v1/ws`: a Pusher socket carries no ambient credential
    // (no cookie is read; private channels need a signature from the app's own auth
    // endpoint), so a page on any site may connect, as with Pusher itself.
    let pusher_app = app.pusher.by_key(&key).cloned();
    let protocol = query_pairs(query.as_deref())
        .ok()
        .and_then(|p| p.into_iter().find(|(k, _)| k == "protocol"))
        .map(|(_, v)| v);
    let guard = app.tasks.token();
    upgrade
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| async move {
            let _guard = guard;
            let (mut sink, stream) = socket.split();
            // Pusher reports these on the open socket, then closes it.
            let refusal = match (&pusher_app, protocol.as_deref()) {
                (None, _) => Some((APP_UNKNOWN, format!("Could not find app by key {key}"))),
                (_, Some(p)) if p.parse::<u32>().map_or(true, |v| !(5..=7).contains(&v)) => Some((
                    UNSUPPORTED_PROTOCOL,
                    format!("Unsupported protocol version {p}"),
                )),
                _ => None,
            };
            if let Some((code, reason)) = refusal {
                let _ = sink.send(message::error(Some(code), &reason)).await;
                close(sink, stream, code, "").await;
                return;
            }
            let pusher_app = pusher_app.expect("checked");
            Session::new(app, pusher_app, sink, stream, conn)
                .run()
                .await;
        })
}

type Sink = SplitSink<WebSocket, Message>;
type ItemStream = BoxStream<'static, Result<Item, SubscriptionError>>;

struct Session {
    app: AppState,
    pusher: Arc<PusherApp>,
    socket_id: String,
    sink: Sink,
    stream: SplitStream<WebSocket>,
    /// By Pusher channel name.
    subs: StreamMap<String, ItemStream>,
    watches: StreamMap<String, BoxStream<'static, Update>>,
    /// On each presence channel: this socket's user, and the members it knows of (to turn
    /// a fresh list into added/removed).
    members: HashMap<String, (String, HashSet<String>)>,
    /// Who `pusher:signin` said this socket is, and the hub subscription that ends it when
    /// the API terminates that user's connections.
    user: Option<String>,
    lagged: CancellationToken,
    conn: Connection,
    client_events: Bucket,
    last_seen: tokio::time::Instant,
}

struct Close(u16, &'static str);

impl Session {
    fn new(
        app: AppState,
        pusher: Arc<PusherApp>,
        sink: Sink,
        stream: SplitStream<WebSocket>,
        conn: Connection,
    ) -> Session {
        let socket_id = format!(
            "{}.{}",
            node_number(),
            NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
        );
        Session {
            app,
            pusher,
            socket_id,
            sink,
            stream,
            subs: StreamMap::new(),
            watches: StreamMap::new(),
            members: HashMap::new(),
            user: None,
            lagged: CancellationToken::new(),
            conn,
            client_events: Bucket::new(CLIENT_EVENT_RATE, CLIENT_EVENT_RATE),
            last_seen: tokio::time::Instant::now(),
        }
    }

    async fn run(mut self) {
        let timeout = self.app.pusher.activity_timeout;
        let hello = message::established(&self.socket_id, timeout);
        let result = match self.send(hello).await {
            Ok(()) => self.serve(Duration::from_secs(timeout.max(1))).await,
            Err(c) => Err(c),
        };
        let Close(code, reason) = result.err().unwrap_or(Close(1000, ""));
        self.subs = StreamMap::new();
        self.watches = StreamMap::new();
        close(self.sink, self.stream, code, reason).await;
    }

    async fn serve(&mut self, activity: Duration) -> Result<(), Close> {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + activity, activity);
        let mut pinged = false;
        let shutdown = self.app.shutdown.clone();
        let lagged = self.lagged.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Close(RECONNECT, "server shutting down")),
                _ = lagged.cancelled() => return Err(Close(RECONNECT, "slow consumer")),
                _ = tick.tick() => {
                    // Silent for a whole activity period: ping; silent for another: gone.
                    if self.last_seen.elapsed() >= activity {
                        if pinged {
                            return Err(Close(PONG_MISSED, "pong not received"));
                        }
                        pinged = true;
                        self.send(message::ping()).await?;
                    }
                }
                Some((channel, item)) = self.subs.next(), if !self.subs.is_empty() => {
                    self.deliver(&channel, item).await?;
                }
                Some((channel, update)) = self.watches.next(), if !self.watches.is_empty() => {
                    self.tell_members(&channel, update).await?;
                }
                frame = self.stream.next() => match frame {
                    None => return Ok(()),
                    Some(Ok(frame)) => {
                        self.last_seen = tokio::time::Instant::now();
                        pinged = false;
                        self.on_frame(frame).await?;
                    }
                    Some(Err(e)) => return Err(receive_error(e)),
                },
            }
        }
    }

    async fn send(&mut self, m: Message) -> Result<(), Close> {
        self.sink.send(m).await.map_err(|_| Close(1000, ""))
    }

    async fn deliver(
        &mut self,
        channel: &str,
        item: Result<Item, SubscriptionError>,
    ) -> Result<(), Close> {
        let event = match item {
            // The API ended this signed-in user's connections.
            Ok(Item::Event(_)) if channel == TERMINATE => {
                return Err(Close(UNAUTHORIZED, "connection terminated"))
            }
            Ok(Item::Event(e)) => e,
            // Pusher has no way to say "events were lost": a client reconnects and, with no
            // cursor in the protocol, starts from now.
            Ok(Item::Reset { .. }) => return Ok(()),
            Err(SubscriptionError::Lagged) => return Err(Close(RECONNECT, "slow consumer")),
            Err(SubscriptionError::Log(e)) => {
                tracing::error!(error = %e, "Pusher subscription failed");
                return Err(Close(RECONNECT, "internal error"));
            }
        };
        let frame = event
            .extension(|e| PusherEvent::of(e, channel))
            .filter(|p| p.skip_socket.as_deref() != Some(self.socket_id.as_str()))
            .and_then(|p| p.frame.clone());
        match frame {
            Some(text) => self.send(Message::Text(text)).await,
            None => Ok(()),
        }
    }

    /// Presence changes as `member_added` / `member_removed` (a fresh list is compared with
    /// what this socket knew).
    async fn tell_members(&mut self, channel: &str, update: Update) -> Result<(), Close> {
        let Some((me, known)) = self.members.get_mut(channel) else {
            return Ok(());
        };
        let mut out = Vec::new();
        match update {
            Update::Diff(d) => {
                for e in &d.entries {
                    let user = e.user.to_string();
                    if e.joined && &user != me && known.insert(user.clone()) {
                        out.push(message::member_added(channel, &user, &e.info));
                    } else if !e.joined && &user != me && known.remove(&user) {
                        out.push(message::member_removed(channel, &user));
                    }
                }
            }
            Update::Sync(s) => {
                let now: HashMap<String, Value> = s
                    .members
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| (m.user.to_string(), (*m.info).clone()))
                    .collect();
                for gone in known.iter().filter(|u| !now.contains_key(*u)) {
                    out.push(message::member_removed(channel, gone));
                }
                for (user, info) in &now {
                    if !known.contains(user) && user != me {
                        out.push(message::member_added(channel, user, info));
                    }
                }
                *known = now.into_keys().collect();
            }
        }
        for m in out {
            self.send(m).await?;
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: Message) -> Result<(), Close> {
        let text = match frame {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return self
                    .send(message::error(None, "Binary frames are not supported"))
                    .await
            }
            _ => return Ok(()),
        };
        let Ok(frame) = serde_json::from_str::<ClientFrame>(text.as_str()) else {
            return self
                .send(message::error(
                    None,
                    "Invalid message: expected JSON with an event",
                ))
                .await;
        };
        match frame.event.as_str() {
            "pusher:ping" => self.send(message::pong()).await,
            "pusher:pong" => Ok(()),
            "pusher:subscribe" => self.on_subscribe(frame).await,
            "pusher:unsubscribe" => {
                if let Some(d) = data_as::<SubscribeData>(frame.data.as_deref()) {
                    self.subs.remove(&d.channel);
                    self.watches.remove(&d.channel);
                    self.members.remove(&d.channel);
                }
                Ok(())
            }
            "pusher:signin" => self.on_signin(frame).await,
            name if name.starts_with("client-") => self.on_client_event(frame).await,
            other => {
                let m = format!("Unsupported event {:?}", crate::event::excerpt(other));
                self.send(message::error(None, &m)).await
            }
        }
    }

    async fn on_subscribe(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let Some(d) = data_as::<SubscribeData>(frame.data.as_deref()) else {
            return self
                .send(message::error(None, "pusher:subscribe needs data.channel"))
                .await;
        };
        let name = d.channel.clone();
        if !valid_channel(&name) {
            let m = "Invalid channel name: 1-164 of A-Z a-z 0-9 _ - = @ , . ;";
            return self
                .send(message::subscription_error(&name, "InvalidChannel", m, 400))
                .await;
        }
        let kind = Kind::of(&name);
        if kind.needs_auth() {
            let mut signed = format!("{}:{}", self.socket_id, name);
            if kind == Kind::Presence {
                signed.push(':');
                signed.push_str(d.channel_data.as_deref().unwrap_or(""));
            }
            let good = d
                .auth
                .as_deref()
                .and_then(|a| a.split_once(':'))
                .is_some_and(|(key, sig)| {
                    key == self.pusher.key && signature_ok(&self.pusher.secret, &signed, sig)
                });
            if !good {
                let m = "Invalid signature: the auth does not match this socket and channel";
                return self
                    .send(message::subscription_error(&name, "AuthError", m, 401))
                    .await;
            }
        }
        if !self.subs.contains_key(&name)
            && self.subs.len() >= self.app.config.limits.max_subscriptions
        {
            let m = "Too many subscriptions on this connection (limits.max_subscriptions)";
            return self
                .send(message::subscription_error(&name, "LimitReached", m, 403))
                .await;
        }
        let mapped = herald_channel(&self.pusher.id, &name);
        let data = if kind == Kind::Presence {
            match self
                .join_presence(&name, &mapped, d.channel_data.as_deref())
                .await
            {
                Ok(data) => data,
                Err(m) => return self.send(m).await,
            }
        } else {
            json!({})
        };
        let filter = Filter::parse([mapped.as_str()]).expect("mapped names are valid");
        let occupant = self.app.presence.occupy(&mapped);
        let subscription = self.app.hub.subscribe(filter, None, self.lagged.clone());
        self.subs
            .insert(name.clone(), items(subscription, occupant));
        self.send(message::subscribed(&name, data)).await?;
        if is_cache(&name) {
            self.send_cached(&name, &mapped).await?;
        }
        Ok(())
    }

    /// Joins Herald presence as the `channel_data` user; the reply's `presence` object.
    async fn join_presence(
        &mut self,
        name: &str,
        mapped: &str,
        channel_data: Option<&str>,
    ) -> Result<Value, Message> {
        let parsed: Option<ChannelData> = channel_data.and_then(|t| serde_json::from_str(t).ok());
        let Some((user, info)) = parsed.and_then(|c| Some((c.user_id()?, c.user_info))) else {
            return Err(message::subscription_error(
                name,
                "AuthError",
                "channel_data must hold a user_id",
                400,
            ));
        };
        let info = info.map(Arc::new);
        let identity = match Identity::new(&user, info, self.app.presence.config()) {
            Ok(i) => i,
            Err(e) => {
                return Err(message::subscription_error(
                    name,
                    "AuthError",
                    &e.to_string(),
                    400,
                ))
            }
        };
        let (watch, snapshot) = match self.app.presence.join(mapped, identity).await {
            Ok(j) => j,
            Err(e) => {
                return Err(message::subscription_error(
                    name,
                    "ServerError",
                    &e.to_string(),
                    503,
                ))
            }
        };
        let Some(members) = snapshot.members else {
            let m = format!(
                "presence channel is over capacity ({} members, presence.list_limit)",
                snapshot.count
            );
            return Err(message::subscription_error(
                name,
                "OverCapacity",
                &m,
                OVER_CAPACITY,
            ));
        };
        let ids: Vec<&str> = members.iter().map(|m| &*m.user).collect();
        let hash: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| (m.user.to_string(), (*m.info).clone()))
            .collect();
        let presence = json!({"presence": {"ids": ids, "hash": hash, "count": members.len()}});
        let known = members.iter().map(|m| m.user.to_string()).collect();
        self.members.insert(name.to_string(), (user, known));
        self.watches.insert(name.to_string(), updates(watch));
        Ok(presence)
    }

    /// A cache channel's last event, or `pusher:cache_miss`.
    async fn send_cached(&mut self, name: &str, mapped: &str) -> Result<(), Close> {
        let last = self.app.pusher.cached(mapped);
        let frame = last
            .as_ref()
            .and_then(|e| e.extension(|e| PusherEvent::of(e, name)))
            .and_then(|p| p.frame.clone());
        match frame {
            Some(f) => self.send(Message::Text(f)).await,
            None => self.send(message::cache_miss(name)).await,
        }
    }

    async fn on_client_event(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let channel = frame.channel.clone().unwrap_or_default();
        let kind = Kind::of(&channel);
        let refusal = if !self.pusher.client_events {
            Some("Client events are not enabled for this app")
        } else if !matches!(kind, Kind::Private | Kind::Presence) {
            Some("Client events are only allowed on private and presence channels")
        } else if !self.subs.contains_key(&channel) {
            Some("Client events need a subscription to the channel")
        } else {
            None
        };
        if let Some(m) = refusal {
            return self.send(message::error(None, m)).await;
        }
        if self
            .client_events
            .take(1, std::time::Instant::now())
            .is_err()
        {
            let m = "Client event rejected - only 10 accepted per second";
            return self
                .send(message::error(Some(CLIENT_EVENT_REJECTED), m))
                .await;
        }
        let data = frame.data.unwrap_or_else(|| {
            serde_json::value::RawValue::from_string("{}".into()).expect("JSON")
        });
        if data.get().len() > self.pusher.max_event_bytes {
            let m = format!(
                "Client event data over {} bytes",
                self.pusher.max_event_bytes
            );
            return self.send(message::error(None, &m)).await;
        }
        let user = self.members.get(&channel).map(|(u, _)| u.as_str());
        let event = NewEvent {
            channel: herald_channel(&self.pusher.id, &channel),
            kind: Some(frame.event),
            data,
            id: Some(super::origin_id(Some(&self.socket_id), user)),
        };
        if let Err(e) =
            self.app
                .take_publish_budget(&crate::auth::Principal::Anonymous, self.conn.peer.ip(), 1)
        {
            return self.send(message::error(None, &e.message)).await;
        }
        if let Err(e) = self.app.hub.publish(vec![event]).await {
            tracing::warn!(error = %e, "client event not stored");
            return self
                .send(message::error(None, "Client event not accepted; retry"))
                .await;
        }
        Ok(())
    }

    /// `pusher:signin`: auth = HMAC of `socket_id::user::user_data`. A signed-in socket is
    /// ended by `POST /apps/{id}/users/{user}/terminate_connections` on any node.
    async fn on_signin(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let Some(d) = data_as::<SigninData>(frame.data.as_deref()) else {
            return self
                .send(message::error(
                    None,
                    "pusher:signin needs auth and user_data",
                ))
                .await;
        };
        let signed = format!("{}::user::{}", self.socket_id, d.user_data);
        let good = d.auth.split_once(':').is_some_and(|(key, sig)| {
            key == self.pusher.key && signature_ok(&self.pusher.secret, &signed, sig)
        });
        let user = serde_json::from_str::<Value>(&d.user_data)
            .ok()
            .and_then(|v| match &v["id"] {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
        let (true, Some(user)) = (good, user) else {
            self.send(message::error(
                Some(UNAUTHORIZED),
                "Invalid signin: bad signature or user_data without id",
            ))
            .await?;
            return Err(Close(UNAUTHORIZED, "unauthorized"));
        };
        let filter = Filter::notice(&super::api::terminate_channel(&self.pusher.id, &user));
        let ends = self.app.hub.subscribe(filter, None, self.lagged.clone());
        // A terminate event for this user ends the connection (no frame goes to the client).
        self.subs.insert(TERMINATE.to_string(), plain(ends));
        self.user = Some(user);
        self.send(message::signin_success(&d.user_data)).await
    }
}

/// The `subs` key of the signed-in user's terminate subscription (not a Pusher name: it
/// holds a character Pusher names cannot).
const TERMINATE: &str = "#terminate";

fn plain(subscription: crate::hub::Subscription) -> ItemStream {
    futures_util::stream::unfold(subscription, |mut s| async move {
        let item = s.next().await;
        Some((item, s))
    })
    .boxed()
}

/// The subscription's items; the stream holds the occupancy count until dropped.
fn items(subscription: crate::hub::Subscription, occupant: Occupant) -> ItemStream {
    futures_util::stream::unfold((subscription, occupant), |(mut s, o)| async move {
        let item = s.next().await;
        Some((item, (s, o)))
    })
    .boxed()
}

fn receive_error(e: axum::Error) -> Close {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e.into_inner().downcast_ref::<WsError>() {
        Some(WsError::Capacity(_)) => Close(UNAUTHORIZED, "message too large"),
        _ => Close(1002, "protocol error"),
    }
}

/// Sends a close frame (bounded in time), then reads to the peer's close or EOF.
async fn close(
    mut sink: Sink,
    mut stream: SplitStream<WebSocket>,
    code: u16,
    reason: &'static str,
) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
}
