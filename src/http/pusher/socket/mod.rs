//! `GET /app/{key}`: a Pusher protocol 7 WebSocket. One task per connection owns the socket,
//! its hub subscriptions (one per channel, on the mapped Herald channel) and its presence
//! watches, like Herald's own WebSocket; only the frames differ.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use yawc::{Frame, OpCode};

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Extension;
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use super::message::{self, data_as, ClientFrame, PusherEvent, SubscribeData};

mod channels;
mod client;
use crate::config::PusherApp;
use crate::http::ws::socket::{
    self, received, write_items, Close, ItemStream, Received, Socket, Upgrade, Writer,
};
use crate::http::{query_pairs, AppState, Connection};
use crate::hub::{Item, SubscriptionError};
use crate::limits::Bucket;
use crate::presence::{Occupant, Update};

/// Most bytes of one client frame (Pusher's limit is 10 KB of data; the frame has more).
const MAX_FRAME: usize = 64 * 1024;

/// Client events per second per connection (Pusher's limit).
const CLIENT_EVENT_RATE: u32 = 10;

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
    upgrade: Result<Upgrade, crate::http::ApiError>,
) -> Response {
    use axum::response::IntoResponse;
    let pusher_app = app.pusher.by_key(&key).cloned();
    let protocol = query_pairs(query.as_deref())
        .ok()
        .and_then(|p| p.into_iter().find(|(k, _)| k == "protocol"))
        .map(|(_, v)| v);
    let guard = app.tasks.token();
    let (response, socket) = match upgrade.and_then(|u| u.accept(app.ws.options(MAX_FRAME))) {
        Ok(accepted) => accepted,
        Err(e) => return e.into_response(),
    };
    tokio::spawn(async move {
        let Some((mut ws, wire)) = socket.await else {
            return;
        };
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
            let _ = ws.send(message::error(Some(code), &reason)).await;
            socket::close(&mut ws, Close::with(code, "")).await;
            return;
        }
        let pusher_app = pusher_app.expect("checked");
        // A task of its own, sized for the session (as Herald's own WebSocket does).
        tokio::spawn(Session::new(app, pusher_app, ws, wire, conn, guard).run());
    });
    response
}

struct Session {
    app: AppState,
    pusher: Arc<PusherApp>,
    socket_id: String,
    ws: Socket,
    /// The socket shared with the hub, which writes caught-up events to it itself
    /// (`http/wire.rs`); `None` for TLS or compression.
    wire: Option<Arc<crate::http::wire::Wire>>,
    /// By Pusher channel name.
    subs: StreamMap<String, ItemStream>,
    watches: StreamMap<String, BoxStream<'static, Update>>,
    /// On each presence channel: this socket's user, and the members it knows of (to turn
    /// a fresh list into added/removed).
    members: HashMap<String, (String, HashSet<String>)>,
    /// Who `pusher:signin` said this socket is.
    user: Option<String>,
    /// The hub subscription that ends the connection when the API terminates the signed-in
    /// user's connections. Kept apart from `subs`, which the client's own frames edit.
    terminate: Option<ItemStream>,
    lagged: CancellationToken,
    conn: Connection,
    client_events: Bucket,
    last_seen: tokio::time::Instant,
    _open: crate::stats::Held,
    /// Shutdown waits for the session to end.
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Session {
    fn new(
        app: AppState,
        pusher: Arc<PusherApp>,
        ws: Socket,
        wire: Option<Arc<crate::http::wire::Wire>>,
        conn: Connection,
        task: tokio_util::task::task_tracker::TaskTrackerToken,
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
            ws,
            wire,
            subs: StreamMap::new(),
            watches: StreamMap::new(),
            members: HashMap::new(),
            user: None,
            terminate: None,
            lagged: CancellationToken::new(),
            conn,
            client_events: Bucket::new(CLIENT_EVENT_RATE, CLIENT_EVENT_RATE),
            last_seen: tokio::time::Instant::now(),
            _open: crate::stats::Held::connection(crate::stats::Transport::Pusher),
            _task: task,
        }
    }

    /// The session's task, sized as Herald's own WebSocket session's is (see there): not an
    /// `async fn`, and what runs once or rarely boxed.
    #[allow(clippy::manual_async_fn)] // on purpose, as said above
    fn run(mut self) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let timeout = self.app.pusher.activity_timeout;
            let hello = message::established(&self.socket_id, timeout);
            let result = match Box::pin(self.send(hello)).await {
                Ok(()) => self.serve(Duration::from_secs(timeout.max(1))).await,
                Err(c) => Err(c),
            };
            let how = result.err().unwrap_or(Close::with(1000, ""));
            self.subs = StreamMap::new();
            self.terminate = None;
            self.watches = StreamMap::new();
            Box::pin(socket::close(&mut self.ws, how)).await;
        }
    }

    async fn serve(&mut self, activity: Duration) -> Result<(), Close> {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + activity, activity);
        let mut pinged = false;
        // Made once, not per turn (see Herald's own session).
        let mut shutdown = std::pin::pin!(self.app.shutdown.clone().cancelled_owned());
        let mut lagged = std::pin::pin!(self.lagged.clone().cancelled_owned());
        loop {
            tokio::select! {
                _ = &mut shutdown => return Err(Close::with(RECONNECT, "server shutting down")),
                _ = &mut lagged => return Err(Close::with(RECONNECT, "slow consumer")),
                _ = tick.tick() => {
                    // Silent for a whole activity period: ping; silent for another: gone.
                    if self.last_seen.elapsed() >= activity {
                        if pinged {
                            return Err(Close::with(PONG_MISSED, "pong not received"));
                        }
                        pinged = true;
                        Box::pin(self.send(message::ping())).await?;
                    }
                }
                item = next_of(&mut self.terminate), if self.terminate.is_some() => {
                    if let Some(Ok(Item::Event(_))) = item {
                        return Err(Close::with(UNAUTHORIZED, "connection terminated"));
                    }
                }
                Some((channel, item)) = self.subs.next(), if !self.subs.is_empty() => {
                    Box::pin(self.deliver(channel, item)).await?;
                }
                Some((channel, update)) = self.watches.next(), if !self.watches.is_empty() => {
                    Box::pin(self.tell_members(&channel, update)).await?;
                }
                _ = crate::http::wire::pending(&self.wire) => {
                    // The hub's write of an event left its tail to us.
                    self.flush().await?;
                    self.release();
                }
                frame = self.ws.next_frame() => match received(frame) {
                    Received::Frame(frame) => {
                        self.last_seen = tokio::time::Instant::now();
                        pinged = false;
                        // Boxed, as in Herald's own session: an idle task stays small.
                        Box::pin(self.on_frame(frame)).await?;
                    }
                    Received::Closed => return Ok(()),
                    Received::Refused(how) => return Err(how),
                },
            }
        }
    }

    /// Feeds and flushes a message of the session's own. Never called while an event
    /// taken from a queue is still unwritten.
    async fn send(&mut self, m: Frame) -> Result<(), Close> {
        self.ws.feed(m).await.map_err(|_| Close::Fail)?;
        self.flush().await?;
        self.release();
        Ok(())
    }

    /// Everything written and no event held: the hub may write events to the socket again.
    fn release(&self) {
        crate::http::wire::release(&self.wire);
    }

    /// Writes one item and whatever else is ready (up to a batch), then flushes once, as
    /// Herald's own WebSocket does: a flush per message would be a write per message.
    async fn deliver(
        &mut self,
        channel: String,
        first: Result<Item, SubscriptionError>,
    ) -> Result<(), Close> {
        let writer = Writer::new(&mut self.ws, &mut self.subs, &self.lagged, &self.app);
        let socket_id = self.socket_id.as_str();
        let frame = |channel: &str, item| {
            let frame = frame_for(socket_id, channel, item)?;
            if frame.is_some() {
                crate::stats::get().delivered(crate::stats::Transport::Pusher, 1);
            }
            Ok(frame.map(Frame::text))
        };
        write_items(writer, (channel, first), frame, flush_ended).await?;
        self.release();
        Ok(())
    }

    /// Flushes, giving up if the connection is found slow or the server shuts down meanwhile
    /// (a peer that stops reading would otherwise hold the task here forever).
    async fn flush(&mut self) -> Result<(), Close> {
        crate::http::ws::flush_or_end(&mut self.ws, &self.lagged, &self.app.shutdown)
            .await
            .map_err(flush_ended)
    }
    async fn on_frame(&mut self, frame: Frame) -> Result<(), Close> {
        let text = match frame.opcode() {
            // yawc checked it is UTF-8.
            OpCode::Text => frame.as_str(),
            OpCode::Binary => {
                return self
                    .send(message::error(None, "Binary frames are not supported"))
                    .await
            }
            _ => return Ok(()),
        };
        let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
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
}

/// The next item of an optional stream (pending forever when there is none).
async fn next_of(stream: &mut Option<ItemStream>) -> Option<Result<Item, SubscriptionError>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

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

/// The close a flush that could not finish gets (Pusher's code: reconnect).
fn flush_ended(end: crate::http::ws::FlushEnd) -> Close {
    use crate::http::ws::FlushEnd;
    match end {
        FlushEnd::Failed => Close::Fail,
        FlushEnd::Slow => Close::with(RECONNECT, "slow consumer"),
        FlushEnd::Shutdown => Close::with(RECONNECT, "server shutting down"),
    }
}

/// The frame a socket gets for an item: none for its own triggers and for names in Pusher's
/// namespaces; the item's close for a subscription that failed.
fn frame_for(
    socket_id: &str,
    channel: &str,
    item: Result<Item, SubscriptionError>,
) -> Result<Option<Bytes>, Close> {
    let event = match item {
        Ok(Item::Event(e)) => e,
        // Pusher has no way to say "events were lost": a client reconnects and, with no
        // cursor in the protocol, starts from now.
        Ok(Item::Reset { .. }) => return Ok(None),
        Err(SubscriptionError::Lagged) => return Err(Close::with(RECONNECT, "slow consumer")),
        Err(SubscriptionError::Log(e)) => {
            tracing::error!(error = %e, "Pusher subscription failed");
            return Err(Close::with(RECONNECT, "internal error"));
        }
    };
    Ok(event
        .extension(|e| PusherEvent::of(e, channel))
        .and_then(|p| p.frame_for(socket_id))
        .map(crate::event::ws_payload))
}
