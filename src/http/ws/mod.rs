//! WebSocket (`GET /v1/ws`): JSON text frames with an `op`, one task per connection.
//!
//! The task owns the reading side and every subscription of the connection, so there is no
//! extra task per direction. A caught-up subscription's events are written by the hub itself
//! on a plain connection (`../wire.rs`); the rest (history, replies, events that arrive while
//! the socket is full or the task writes) go out as their pre-encoded text (a refcount bump
//! each), fed in batches and flushed once per batch.
//!
//! `message.rs`: what clients send (parsed totally: fuzzed and property-tested) and the
//! shapes of replies. `echo.rs`: the Autobahn echo endpoint.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FuturesUnordered};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;

use super::api::EventIn;
use super::presence::updates;
use super::sse::deadline;
use super::{
    check_subscription_caps, parse_cursor, query_pairs, query_token, ApiError, AppState, Connection,
};
use crate::auth::Principal;
use crate::event::excerpt;
use crate::event::Filter;
use crate::hub::{Item, Subscription, SubscriptionError};
use crate::limits::Bucket;
use crate::presence::{Occupant, Update};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;

mod echo;
mod message;
pub mod socket;

use super::wire::{Framing, Taker, Wire};
pub use echo::echo;
use message::{error, presence_message, text, with_ref};
pub use message::{parse_client_message, ClientMessage};
pub(crate) use socket::{flush_or_end, FlushEnd};
use socket::{received, write_items, Close, ItemStream, Received, Socket, Upgrade, Writer};
use std::sync::Arc;
use yawc::{Frame, OpCode};

pub const CLOSE_GOING_AWAY: u16 = 1001;

pub const CLOSE_POLICY: u16 = 1008;

pub const CLOSE_INTERNAL: u16 = 1011;

pub const CLOSE_SLOW: u16 = 4008;

/// The close for a subscriber that fell behind (the hub counts it for `/metrics`).
fn slow_consumer() -> Close {
    Close::with(CLOSE_SLOW, "slow consumer: reconnect with since")
}

/// Most publishes awaiting their ack on one connection; past it the reader waits.
const MAX_IN_FLIGHT: usize = 256;

fn max_message(app: &AppState) -> usize {
    app.config.limits.max_event_bytes + 16 * 1024
}

/// `GET /v1/ws[?channel=C&since=N]`.
pub async fn upgrade(
    State(app): State<AppState>,
    Extension(conn): Extension<Connection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Result<Upgrade, ApiError>,
) -> Result<Response, ApiError> {
    if !app.origin_allowed(&headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "this Origin is not in server.allowed_origins",
        ));
    }
    let pairs = query_pairs(query.as_deref())?;
    let principal = app.principal(&headers, query_token(&pairs), crate::auth::Via::Read)?;
    let asked: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .collect();
    // The backend hooks' refusals end the WebSocket with 1008 and the app's message (what a
    // browser can see), after the upgrade.
    let hooked = async {
        let principal = app
            .identify(principal, &headers, conn.peer, "ws", &asked)
            .await?;
        for channel in &asked {
            app.ask_subscribe(&principal, channel, "ws").await?;
        }
        Ok::<_, ApiError>(principal)
    };
    let principal = match hooked.await {
        Ok(p) => p,
        Err(e) if e.code.starts_with("proxy_") => {
            let (response, socket) = upgrade?.accept(app.ws.options(max_message(&app)))?;
            tokio::spawn(async move {
                if let Some((mut socket, _)) = socket.await {
                    // A close reason holds at most 123 bytes.
                    let mut reason = e.message;
                    while reason.len() > 120 {
                        reason.pop();
                    }
                    socket::close_because(&mut socket, CLOSE_POLICY, &reason).await;
                }
            });
            return Ok(response);
        }
        Err(e) => return Err(e),
    };
    let since = match pairs.iter().find(|(k, _)| k == "since") {
        Some((_, v)) => Some(parse_cursor(v, "since")?),
        None => None,
    };
    let mut initial = Vec::new();
    let mut distinct: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "channel")
        .map(|(_, v)| v.as_str())
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    check_subscription_caps(&app.config.limits, distinct)?;
    for (_, channel) in pairs.iter().filter(|(k, _)| k == "channel") {
        let filter = Filter::parse([channel.as_str()])?;
        app.auth.check_subscribe(&principal, channel)?;
        initial.push((channel.clone(), filter));
    }
    let (response, socket) = upgrade?.accept(app.ws.options(max_message(&app)))?;
    let guard = app.tasks.token();
    tokio::spawn(async move {
        if let Some((socket, wire)) = socket.await {
            // A task of its own, sized for the session alone: this one also holds what the
            // upgrade needed, and a task keeps its size for its whole life.
            // A write delay batches on purpose, so its events all go through the session.
            let wire = wire.filter(|_| app.config.websocket.write_delay.is_zero());
            let session = Session::new(app, socket, wire, conn, principal, guard);
            tokio::spawn(session.run(initial, since));
        }
    });
    Ok(response)
}

type UpdateStream = BoxStream<'static, Update>;

struct Session {
    app: AppState,
    ws: Socket,
    /// The socket shared with the hub, which then writes caught-up events itself
    /// (`../wire.rs`); `None` for TLS, compression or a write delay.
    wire: Option<Arc<Wire>>,
    subs: StreamMap<String, ItemStream>,
    /// Presence watches (each holding its membership), by channel.
    watches: StreamMap<String, UpdateStream>,
    /// Publishes awaiting their ack; made at the first publish (an empty one allocates, and
    /// most connections only subscribe).
    acks: Option<FuturesUnordered<BoxFuture<'static, Frame>>>,
    /// Shared by every subscription of the connection: one lag closes it with 4008.
    lagged: CancellationToken,
    _open: crate::stats::Held,
    /// The HTTP connection this came from (its peer, and its slot in the limits).
    conn: Connection,
    principal: Principal,
    /// This connection's publish budget.
    bucket: Bucket,
    last_seen: tokio::time::Instant,
    /// Shutdown waits for the session to end.
    _task: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Session {
    fn new(
        app: AppState,
        ws: Socket,
        wire: Option<Arc<Wire>>,
        conn: Connection,
        principal: Principal,
        task: tokio_util::task::task_tracker::TaskTrackerToken,
    ) -> Session {
        let limits = &app.config.limits;
        Session {
            bucket: Bucket::new(limits.ws_publish_rate, limits.ws_publish_burst),
            conn,
            principal,
            last_seen: tokio::time::Instant::now(),
            app,
            ws,
            wire,
            // Most connections hold one subscription.
            subs: StreamMap::with_capacity(1),
            watches: StreamMap::new(),
            acks: None,
            lagged: CancellationToken::new(),
            _open: crate::stats::Held::connection(crate::stats::Transport::Ws),
            _task: task,
        }
    }

    /// The session's task. Sized with care, because a task keeps its size for the
    /// connection's life: not an `async fn`, whose future would hold `self` twice (the
    /// argument, and the binding it is moved into); opening and closing are boxed, since
    /// they run once and inline would make the task larger than serving needs.
    #[allow(clippy::manual_async_fn)] // on purpose, as said above
    fn run(
        mut self,
        initial: Vec<(String, Filter)>,
        since: Option<u64>,
    ) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let result = match Box::pin(self.open(initial, since)).await {
                Ok(()) => self.serve().await,
                Err(how) => Err(how),
            };
            if let Err(how) = result {
                Box::pin(self.close(how)).await;
            }
        }
    }

    async fn open(
        &mut self,
        initial: Vec<(String, Filter)>,
        since: Option<u64>,
    ) -> Result<(), Close> {
        let head = self.app.hub.log().bounds().head;
        self.send(json!({"op": "welcome", "head": head})).await?;
        for (channel, filter) in initial {
            self.add_subscription(channel.clone(), filter, since);
            self.send(json!({"op": "subscribed", "channel": channel}))
                .await?;
        }
        Ok(())
    }

    async fn serve(&mut self) -> Result<(), Close> {
        let heartbeat = self.app.config.server.heartbeat;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        // Made once, not per turn of the loop: a fresh `cancelled()` future registers with
        // (and on drop leaves) the token's waiter list, under its lock, every time it is
        // polled, which was ~7% of the CPU of a busy fan-out.
        // A lag needs no watch here: the hub closes the lagging subscription, whose stream
        // ends with `Lagged` after what was queued. A flush that waits watches for it.
        let mut shutdown = std::pin::pin!(self.app.shutdown.clone().cancelled_owned());
        // Boxed, and only for a token that expires: a timer is large.
        let mut expiry = deadline(&self.principal).map(|at| Box::pin(tokio::time::sleep_until(at)));
        let idle = self.app.config.server.idle_timeout;
        loop {
            tokio::select! {
                _ = &mut shutdown => return Err(Close::with(CLOSE_GOING_AWAY, "server shutting down")),
                _ = expired(&mut expiry) => {
                    self.send(error(None, "token_expired", "the token has expired; reconnect with a fresh one")).await?;
                    return Err(Close::with(CLOSE_POLICY, "token expired"));
                }
                _ = ping.tick() => {
                    // Browsers answer pings on their own, so silence this long means a dead peer.
                    if self.last_seen.elapsed() > idle {
                        return Err(Close::with(CLOSE_GOING_AWAY, "idle timeout"));
                    }
                    self.feed_flush(Frame::ping(bytes::Bytes::new())).await?
                }
                Some(ack) = next_ack(&mut self.acks), if self.acks.as_ref().is_some_and(|a| !a.is_empty()) => self.feed_flush(ack).await?,
                Some((channel, item)) = self.subs.next(), if !self.subs.is_empty() => {
                    Box::pin(self.write_items(channel, item)).await?;
                }
                Some((_, update)) = self.watches.next(), if !self.watches.is_empty() => {
                    self.feed_flush(presence_message(&update)).await?;
                }
                _ = super::wire::pending(&self.wire) => {
                    // The hub's write of an event left its tail to us.
                    self.flush().await?;
                    self.release();
                }
                frame = self.ws.next_frame() => match received(frame) {
                    Received::Frame(frame) => {
                        self.last_seen = tokio::time::Instant::now();
                        // Boxed: handling a client message (subscribe, presence, publish)
                        // needs far more state than waiting does, and an idle connection's
                        // task would otherwise reserve room for it all its life.
                        Box::pin(self.on_frame(frame)).await?
                    }
                    Received::Closed => return Ok(()),
                    Received::Refused(how) => return Err(how),
                },
            }
        }
    }

    /// Writes one item and whatever else is ready (up to a batch), then flushes once.
    async fn write_items(
        &mut self,
        channel: String,
        first: Result<Item, SubscriptionError>,
    ) -> Result<(), Close> {
        let writer = Writer::new(&mut self.ws, &mut self.subs, &self.lagged, &self.app);
        write_items(writer, (channel, first), event_frame, flush_ended).await?;
        self.release();
        Ok(())
    }

    /// Feeds and flushes a message of the session's own (a reply, a ping, a presence
    /// change). Never called while an event taken from a queue is still unwritten.
    async fn feed_flush(&mut self, message: Frame) -> Result<(), Close> {
        self.ws.feed(message).await.map_err(|_| Close::Fail)?;
        self.flush().await?;
        self.release();
        Ok(())
    }

    /// Everything written and no event held: the hub may write events to the socket again.
    fn release(&self) {
        crate::http::wire::release(&self.wire);
    }

    /// Flushes, giving up if the connection is found slow or the server shuts down meanwhile
    /// (a peer that stops reading would otherwise hold the task here forever).
    async fn flush(&mut self) -> Result<(), Close> {
        flush_or_end(&mut self.ws, &self.lagged, &self.app.shutdown)
            .await
            .map_err(flush_ended)
    }

    async fn send(&mut self, value: Value) -> Result<(), Close> {
        self.feed_flush(text(value)).await
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), Close> {
        match frame.opcode() {
            // yawc checked it is UTF-8 (`with_utf8`).
            OpCode::Text => self.on_text(frame.as_str()).await,
            OpCode::Binary => {
                self.send(error(
                    None,
                    "unsupported_frame",
                    "binary frames are not supported; send JSON text frames",
                ))
                .await
            }
            _ => Ok(()),
        }
    }

    async fn on_text(&mut self, body: &str) -> Result<(), Close> {
        let (message, reference) = match parse_client_message(body) {
            Ok(parsed) => parsed,
            Err(e) => {
                return self
                    .send(error(e.reference.as_ref(), e.code, &e.message))
                    .await
            }
        };
        let reply = match message.op.as_str() {
            "subscribe" => self.on_subscribe(message, reference.as_ref()).await,
            "unsubscribe" => self.on_unsubscribe(message, reference.as_ref()),
            "publish" => return self.on_publish(message, reference).await,
            "ping" => with_ref(json!({"op": "pong"}), reference.as_ref()),
            "rpc" if self.app.proxy.as_ref().is_some_and(|p| p.asks_rpc()) => {
                self.on_rpc(message, reference.as_ref()).await
            }
            other => error(
                reference.as_ref(),
                "unknown_op",
                &format!(
                    "unknown op {:?}; expected subscribe, unsubscribe, publish or ping",
                    excerpt(other)
                ),
            ),
        };
        self.send(reply).await
    }

    async fn on_subscribe(&mut self, m: ClientMessage, reference: Option<&Value>) -> Value {
        let Some(channel) = m.channel else {
            return error(reference, "missing_channel", "subscribe needs a channel");
        };
        let filter = match Filter::parse([channel.as_str()]) {
            Ok(f) => f,
            Err(e) => return error(reference, "invalid_channel", &e.to_string()),
        };
        if let Err(e) = self.app.auth.check_subscribe(&self.principal, &channel) {
            let e = ApiError::from(e);
            return error(reference, e.code, &e.message);
        }
        if let Err(e) = self
            .app
            .ask_subscribe(&self.principal, &channel, "ws")
            .await
        {
            return error(reference, e.code, &e.message);
        }
        if !self.subs.contains_key(&channel) {
            let held = self.subs.keys().map(String::as_str);
            let after = held.chain(std::iter::once(channel.as_str()));
            if let Err(e) = check_subscription_caps(&self.app.config.limits, after) {
                return error(reference, e.code, &e.message);
            }
        }
        let mut reply = json!({"op": "subscribed", "channel": channel});
        // Subscribing again replaces the old subscription (say, to resume from a new `since`)
        // and its presence: the new membership is made before the old one is dropped, so a
        // member who subscribes again never leaves in between.
        if m.presence {
            let joined = self
                .app
                .join_presence(&self.principal, &channel, m.user.as_deref(), m.info)
                .await;
            match joined {
                Ok((watch, snapshot)) => {
                    let mut body = snapshot.body();
                    body.as_object_mut().map(|o| o.remove("channel"));
                    reply["presence"] = body;
                    self.watches.insert(channel.clone(), updates(watch));
                }
                Err(e) => return error(reference, e.code, &e.message),
            }
        } else {
            self.watches.remove(&channel);
        }
        self.add_subscription(channel.clone(), filter, m.since);
        with_ref(reply, reference)
    }

    /// `{"op":"rpc","method","data"}`: the app's answer as `{"op":"rpc","data"}`.
    async fn on_rpc(&mut self, m: ClientMessage, reference: Option<&Value>) -> Value {
        let Some(method) = m.method.filter(|m| !m.is_empty() && m.len() <= 200) else {
            return error(
                reference,
                "invalid_message",
                "rpc needs a method (1-200 characters)",
            );
        };
        let Some(proxy) = self.app.proxy.clone() else {
            return error(reference, "unknown_op", "no rpc_url is configured");
        };
        let data: Value = m
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .unwrap_or(Value::Null);
        let user = match &self.principal {
            crate::auth::Principal::Token { sub, .. } => sub.clone(),
            _ => None,
        };
        match proxy.rpc(user.as_deref(), &method, &data).await {
            Ok(answer) => with_ref(json!({"op": "rpc", "data": answer}), reference),
            Err(e) => {
                let e = ApiError::from(e);
                error(reference, e.code, &e.message)
            }
        }
    }

    fn on_unsubscribe(&mut self, m: ClientMessage, reference: Option<&Value>) -> Value {
        let Some(channel) = m.channel else {
            return error(reference, "missing_channel", "unsubscribe needs a channel");
        };
        self.watches.remove(&channel);
        if self.subs.remove(&channel).is_none() {
            return error(
                reference,
                "not_subscribed",
                &format!("not subscribed to {:?}", excerpt(&channel)),
            );
        }
        with_ref(json!({"op": "unsubscribed", "channel": channel}), reference)
    }

    async fn on_publish(
        &mut self,
        m: ClientMessage,
        reference: Option<Value>,
    ) -> Result<(), Close> {
        let (Some(channel), Some(data)) = (m.channel, m.data) else {
            return self
                .send(error(
                    reference.as_ref(),
                    "invalid_event",
                    "publish needs a channel and data",
                ))
                .await;
        };
        let input = EventIn {
            channel,
            kind: m.kind,
            data,
            id: m.id,
        };
        let admitted = match self.admit(input) {
            Ok(e) => self.app.vet_publish(&self.principal, vec![e]).await,
            Err(e) => Err(e),
        };
        let event = match admitted {
            Ok(mut e) => e.remove(0),
            Err(e) => {
                let mut reply = error(reference.as_ref(), e.code, &e.message);
                if let Some(secs) = e.retry_after {
                    reply["retry_after_ms"] = (secs * 1000).into();
                }
                return self.send(reply).await;
            }
        };
        while self.acks.as_ref().map_or(0, |a| a.len()) >= MAX_IN_FLIGHT {
            if let Some(ack) = next_ack(&mut self.acks).await {
                self.feed_flush(ack).await?;
            }
        }
        let hub = self.app.hub.clone();
        self.acks.get_or_insert_with(FuturesUnordered::new).push(
            async move {
                match hub.publish(vec![event], "ws").await {
                    Ok(results) => text(with_ref(
                        json!({"op": "ack", "seq": results[0].seq}),
                        reference.as_ref(),
                    )),
                    Err(e) => {
                        let e = ApiError::from(e);
                        text(error(reference.as_ref(), e.code, &e.message))
                    }
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// Validates a publish and charges it to the connection's and the credential's budgets.
    fn admit(&mut self, input: EventIn) -> Result<crate::event::NewEvent, ApiError> {
        let event = input.validate(&self.app.config.limits)?;
        self.app
            .auth
            .check_publish(&self.principal, event.channel())?;
        self.bucket
            .take(1, std::time::Instant::now())
            .map_err(|wait| {
                metrics::counter!("herald_rate_limited_total", "limit" => "ws_publish")
                    .increment(1);
                ApiError::rate_limited(wait)
            })?;
        self.app
            .take_publish_budget(&self.principal, self.conn.peer.ip(), 1)?;
        Ok(event)
    }

    fn add_subscription(&mut self, channel: String, filter: Filter, since: Option<u64>) {
        // An exact channel counts in its occupancy while subscribed (patterns do not).
        let occupant = (!filter.has_patterns()).then(|| self.app.presence.occupy(&channel));
        let direct = self.wire.as_ref().map(|wire| {
            Arc::new(Taker::new(wire.clone(), Framing::Ws)) as Arc<dyn crate::hub::Direct>
        });
        let subscription = self
            .app
            .hub
            .subscribe_direct(filter, since, self.lagged.clone(), direct)
            .counted(crate::stats::Transport::Ws);
        self.subs.insert(channel, items(subscription, occupant));
    }

    async fn close(mut self, how: Close) {
        self.subs = StreamMap::new();
        self.watches = StreamMap::new();
        socket::close(&mut self.ws, how).await;
    }
}

/// The next publish acknowledged, if any are waiting.
async fn next_ack(acks: &mut Option<FuturesUnordered<BoxFuture<'static, Frame>>>) -> Option<Frame> {
    acks.as_mut()?.next().await
}

/// Resolves when the token's timer fires; never without one.
fn expired(
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match timer {
        Some(sleep) => std::future::Future::poll(sleep.as_mut(), cx),
        None => std::task::Poll::Pending,
    })
}

/// The subscription's items; the stream holds the occupancy count until it is dropped.
fn items(subscription: Subscription, occupant: Option<Occupant>) -> ItemStream {
    futures_util::stream::unfold((subscription, occupant), |(mut s, o)| async move {
        let item = s.next().await;
        Some((item, (s, o)))
    })
    .boxed()
}

/// The frame `/v1/ws` sends for a subscription's item, or the close it causes.
fn event_frame(
    channel: &str,
    item: Result<Item, SubscriptionError>,
) -> Result<Option<Frame>, Close> {
    match item {
        Ok(Item::Event(event)) => {
            crate::stats::get().delivered(crate::stats::Transport::Ws, 1);
            Ok(Some(Frame::text(event.ws_text())))
        }
        Ok(Item::Reset { oldest }) => Ok(Some(text(
            json!({"op": "reset", "channel": channel, "oldest": oldest}),
        ))),
        Err(SubscriptionError::Lagged) => Err(slow_consumer()),
        Err(SubscriptionError::Log(e)) => {
            tracing::error!(error = %e, "WebSocket subscription failed");
            Err(Close::with(CLOSE_INTERNAL, "internal error"))
        }
    }
}

/// The close a flush that could not finish gets.
fn flush_ended(end: FlushEnd) -> Close {
    match end {
        FlushEnd::Failed => Close::Fail,
        FlushEnd::Slow => slow_consumer(),
        FlushEnd::Shutdown => Close::with(CLOSE_GOING_AWAY, "server shutting down"),
    }
}
