//! The server's lifecycle: open the log, bind, accept connections, shut down cleanly.
//!
//! We run our own accept loop over hyper instead of `axum::serve` so every connection carries
//! a kill switch (a slow SSE consumer's socket is dropped at once), counts against the
//! connection limits, and shutdown can drain each connection gracefully and then wait for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::auth::{Auth, AuthSetupError};
use crate::config::{Config, ServerConfig};
use crate::http::{app, AppState, Connection};
use crate::hub::Hub;
use crate::limits::{ConnectionLimits, RateLimiter, Refusal};
use crate::log::{EmbeddedLog, Log, LogError, RedisLog};
use crate::presence::{Notice, Presence, RedisPresence};
use crate::webhook::{DeliveryQueue, RedisQueue, WebhookError, WebhookStore, Webhooks};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot open the event log")]
    Log(#[from] LogError),
    #[error(
        "refusing to listen on {0} with no API keys or token keys: anyone could publish. Set \
         auth.api_keys (or HERALD_API_KEY), or listen on a loopback address such as 127.0.0.1"
    )]
    OpenOnPublicAddress(SocketAddr),
    #[error("auth configuration")]
    Auth(#[from] AuthSetupError),
    #[error("cannot start webhooks")]
    Webhooks(#[from] WebhookError),
    #[error("cannot open the webhook store")]
    WebhookStore(#[from] crate::store::StoreError),
    #[error("incoming webhooks configuration")]
    Hooks(#[from] crate::http::incoming::HookConfigError),
    #[error("Pusher apps configuration")]
    Pusher(#[from] crate::http::pusher::AppsError),
    #[error("TLS configuration")]
    Tls(#[from] crate::tls::TlsError),
    #[error("backend hooks configuration")]
    Proxy(#[from] crate::proxy::ProxyConfigError),
    /// A setting outside what it can be, refused at start rather than quietly clamped.
    #[error("{0}")]
    OutOfRange(String),
}

/// Runs Herald until `shutdown` is cancelled, then drains and returns.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), ServeError> {
    let listen = config.server.listen;
    check_ranges(&config)?;
    raise_open_files(&config);
    let auth = Arc::new(Auth::from_config(&config.auth)?);
    let hooks = Arc::new(crate::http::incoming::HookRules::from_config(
        &config.hooks,
    )?);
    let pusher = Arc::new(crate::http::pusher::Apps::from_config(&config.pusher)?);
    let proxy = crate::proxy::Proxy::from_config(&config.proxy)?;
    let tls = crate::tls::acceptor(
        config.server.tls_cert.as_deref(),
        config.server.tls_key.as_deref(),
        shutdown.clone(),
    )?;
    if auth.is_open() && !listen.ip().is_loopback() {
        return Err(ServeError::OpenOnPublicAddress(listen));
    }
    let Storage {
        log,
        queue: webhook_store,
        presence,
        notices,
    } = open_storage(&config, &shutdown).await?;
    let hub = Hub::new(
        log.clone(),
        config.server.send_queue,
        dispatch_threads(config.server.dispatch_threads),
        config.server.dispatch_delay,
    );
    let webhooks = Webhooks::start(
        webhook_store,
        hub.clone(),
        config.webhooks.clone(),
        config.log.retention,
        shutdown.clone(),
    )
    .await?;
    webhooks.take_notices(notices);
    webhooks.sync_pusher(&config.pusher.apps).await?;
    pusher.start(&hub, shutdown.clone());
    let metrics = crate::stats::install_recorder(shutdown.clone());
    let history = crate::stats::History::spawn(shutdown.clone());
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Bind(listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Bind(listen, e))?;
    announce(&config, &auth, log.as_ref());
    let limits = &config.limits;
    let acceptor = Acceptor {
        connections: ConnectionLimits::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.ipv6_prefix,
        ),
        server: Arc::new(config.server.clone()),
        max_header: limits.max_header_bytes,
        tls,
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    };
    let state = AppState::new(crate::http::App {
        hub,
        presence,
        pusher,
        webhooks: webhooks.clone(),
        auth,
        hooks,
        publish_rate: Arc::new(RateLimiter::new(limits.publish_rate, limits.publish_burst)),
        metrics,
        history,
        ws: Arc::new(crate::http::ws::socket::Settings::new(&config.websocket)),
        proxy,
        config: Arc::new(config),
        shutdown,
        tasks: acceptor.tasks.clone(),
    });
    let router = app(state);
    let scheme = if acceptor.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {scheme}://{addr}");
    tracing::info!("operator console: {scheme}://{addr}/");
    acceptor.run(listener, router).await;
    let grace = acceptor.server.shutdown_grace;
    tracing::info!("shutting down: draining connections");
    acceptor.tasks.close();
    if tokio::time::timeout(grace, acceptor.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}; closing anyway");
    }
    webhooks.close(grace).await;
    // Every accepted publish has been answered or dropped with its connection; the writer
    // commits whatever is still queued before it stops.
    tokio::task::spawn_blocking(move || log.close()).await.ok();
    tracing::info!("stopped");
    Ok(())
}

fn check_ranges(config: &Config) -> Result<(), ServeError> {
    let level = config.websocket.compression_level;
    if level > 9 {
        return Err(ServeError::OutOfRange(format!(
            "websocket.compression_level is {level}; it must be 0 (fastest) to 9 (smallest)"
        )));
    }
    let delay = config.websocket.write_delay;
    if delay > Duration::from_secs(1) {
        return Err(ServeError::OutOfRange(format!(
            "websocket.write_delay is {}; it must be at most 1s",
            humantime::format_duration(delay)
        )));
    }
    let threads = config.server.dispatch_threads;
    if threads > MAX_DISPATCH_THREADS {
        return Err(ServeError::OutOfRange(format!(
            "server.dispatch_threads is {threads}; it must be 0 (half the cores) to \
             {MAX_DISPATCH_THREADS}"
        )));
    }
    let linger = config.server.dispatch_delay;
    if linger > Duration::from_secs(1) {
        return Err(ServeError::OutOfRange(format!(
            "server.dispatch_delay is {}; it must be at most 1s",
            humantime::format_duration(linger)
        )));
    }
    let nice = config.webhooks.nice;
    if nice > 19 {
        return Err(ServeError::OutOfRange(format!(
            "webhooks.nice is {nice}; it must be 0 (same priority) to 19 (lowest)"
        )));
    }
    // Each goes into a CSP header as it is: a space or `;` would add directives.
    for origin in &config.server.portal_frame_ancestors {
        let plain = origin == "'self'"
            || origin.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:*".contains(&b))
            });
        if !plain {
            return Err(ServeError::OutOfRange(format!(
                "server.portal_frame_ancestors has {origin:?}; each must be an origin like \
                 \"https://app.example.com\" or \"'self'\""
            )));
        }
    }
    Ok(())
}

/// Every connection is a file descriptor; the default soft limit (often 1024) would cap
/// Herald far below its connection limits.
fn raise_open_files(config: &Config) {
    let nofile = crate::limits::raise_nofile();
    if (nofile as usize) < config.limits.max_connections {
        tracing::warn!(
            nofile,
            max_connections = config.limits.max_connections,
            "open-file limit is below limits.max_connections: connections past it are \
             refused. Raise it with `ulimit -n` in the shell that starts Herald, or \
             LimitNOFILE= in its systemd unit (contrib/systemd/herald.service sets 1048576)"
        );
    }
}

/// What the operator should read at start.
fn announce(config: &Config, auth: &Auth, log: &dyn Log) {
    if auth.is_open() {
        tracing::warn!("no API keys configured: running open, which is only allowed on loopback");
    }
    let bounds = log.bounds();
    if !config.redis.is_cluster() {
        tracing::info!(data = %config.server.data.display(), head = bounds.head, "event log open");
    } else {
        tracing::info!(head = bounds.head, "event log open on redis");
    }
}

/// The accept loop's parts: connection limits, and a tracker so shutdown can wait for every
/// connection it started.
struct Acceptor {
    connections: Arc<ConnectionLimits>,
    server: Arc<ServerConfig>,
    max_header: usize,
    /// With `server.tls_cert`/`tls_key`: every connection is TLS (HTTP/2 or HTTP/1.1).
    tls: Option<tokio_rustls::TlsAcceptor>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Acceptor {
    /// Accepts until shutdown; each connection runs as a tracked task, or is refused (with a
    /// 429) past the limits.
    async fn run(&self, listener: TcpListener, router: axum::Router) {
        loop {
            let accepted = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.connections.acquire(peer.ip()) {
                Ok(permit) => {
                    let (router, shutdown, server) =
                        (router.clone(), self.shutdown.clone(), self.server.clone());
                    let (permit, max_header) = (Arc::new(permit), self.max_header);
                    let tls = self.tls.clone();
                    self.tasks.spawn(async move {
                        if let Some(tls) = tls {
                            let conn = Connection {
                                peer,
                                kill: CancellationToken::new(),
                                permit: Some(permit),
                            };
                            // Boxed: a task reserves room for the largest future it may
                            // await, and TLS + HTTP/2 state would otherwise sit in every
                            // plain connection's task too (an idle SSE stream's above all).
                            return Box::pin(serve_tls(
                                stream, tls, conn, router, shutdown, &server, max_header,
                            ))
                            .await;
                        }
                        serve_connection(
                            stream, peer, permit, router, shutdown, &server, max_header,
                        )
                        .await;
                    });
                }
                // Over TLS a plain-text 429 would be noise: the connection is just closed.
                Err(_) if self.tls.is_some() => drop(stream),
                Err(refusal) => {
                    self.tasks.spawn(refuse(stream, refusal));
                }
            }
        }
    }
}

/// Where state lives: the log, the webhook queue and presence.
struct Storage {
    log: Arc<dyn Log>,
    queue: DeliveryQueue,
    presence: Arc<Presence>,
    /// Presence changes for the webhook side.
    notices: tokio::sync::mpsc::Receiver<Notice>,
}

/// The embedded store by default; Redis (shared by every node) when `redis.url` is set.
async fn open_storage(config: &Config, stop: &CancellationToken) -> Result<Storage, ServeError> {
    if !config.redis.is_cluster() {
        let embedded = EmbeddedLog::open(&config.server.data, &config.log)?;
        let queue = DeliveryQueue::Local(WebhookStore::open(embedded.keyspace())?);
        let (presence, notices) = Presence::local(config.presence.clone());
        return Ok(Storage {
            log: embedded,
            queue,
            presence,
            notices,
        });
    }
    let url = if config.redis.sentinels.is_empty() {
        config.redis.url.clone()
    } else {
        let sentinels = crate::log::redis::Sentinels {
            addrs: config.redis.sentinels.clone(),
            master: config.redis.master_name.clone(),
            sentinel_password: config.redis.sentinel_password.clone(),
            data_url: config.redis.url.clone(),
        };
        tracing::info!(sentinels = ?sentinels.addrs, master = %sentinels.master, "following the redis primary through Sentinel");
        crate::log::redis::sentinel::start(sentinels, stop.clone()).await?
    };
    let (client, conn) = crate::log::redis::connect(&url, config.redis.tls_ca.as_deref()).await?;
    let confirm = crate::log::redis::Confirm {
        replicas: config.redis.min_replicas,
        timeout: config.redis.replica_timeout,
        conn: if config.redis.min_replicas > 0 {
            Some(
                crate::log::redis::connect(&url, config.redis.tls_ca.as_deref())
                    .await?
                    .1,
            )
        } else {
            None
        },
    };
    let log = RedisLog::open(
        client.clone(),
        conn,
        &config.redis.prefix,
        &config.log,
        confirm,
    )
    .await?;
    let (presence, notices) = Presence::shared(config.presence.clone(), |notifier, notices| {
        RedisPresence::start(
            client,
            log.connection(),
            &config.redis.prefix,
            &config.presence,
            notifier,
            notices,
            stop.clone(),
        )
    });
    let redis = crate::log::redis::redact_url(&config.redis.url);
    tracing::info!(redis = %redis, prefix = %config.redis.prefix, "cluster node on redis");
    // A claim must outlive the longest attempt, or a slow delivery would be repeated by
    // another node while it is still running.
    let lease = config
        .redis
        .lease
        .max(config.webhooks.timeout + std::time::Duration::from_secs(2));
    let queue = DeliveryQueue::Shared(Box::new(RedisQueue::new(
        log.connection(),
        &config.redis.prefix,
        lease,
    )));
    Ok(Storage {
        log,
        queue,
        presence,
        notices,
    })
}

/// Answers a connection over the limits with a 429 and closes it.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let message = refusal.message();
    let body = serde_json::json!({"error": {"code": "too_many_connections", "message": message}})
        .to_string();
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Arc<crate::limits::ConnectionPermit>,
    router: axum::Router,
    shutdown: CancellationToken,
    server: &ServerConfig,
    max_header: usize,
) {
    let _ = stream.set_nodelay(true);
    let conn = Connection {
        peer,
        kill: CancellationToken::new(),
        permit: Some(permit),
    };
    if crate::http::sse_direct::is_sse(&stream, server.handshake_timeout).await {
        let serve = crate::http::sse_direct::serve(
            stream,
            conn,
            router,
            shutdown,
            server.handshake_timeout,
            max_header.max(8192),
        );
        return serve.await;
    }
    let kill = conn.kill.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Slowloris guard: a client gets this long to send its request head. The read buffer cap
    // bounds the head's size (hyper answers 431 past it).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(server.handshake_timeout)
        .max_buf_size(max_header.max(8192));
    // Boxed for the same reason: hyper's connection state is only for connections that stay
    // with hyper, not for the direct SSE streams that share this task's type.
    let mut connection = Box::pin(
        builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades(),
    );
    let connection = connection.as_mut();
    let stop = |c: std::pin::Pin<&mut _>| {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
    };
    drive(connection, stop, &kill, &shutdown, server.shutdown_grace).await;
}

/// Runs a connection until it ends or its kill switch fires; on shutdown asks it to finish
/// (`stop`: hyper's graceful shutdown) and gives it the grace period.
async fn drive<C: std::future::Future>(
    mut connection: std::pin::Pin<&mut C>,
    stop: impl FnOnce(std::pin::Pin<&mut C>),
    kill: &CancellationToken,
    shutdown: &CancellationToken,
    grace: Duration,
) {
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = kill.cancelled() => return,
        _ = shutdown.cancelled() => {}
    }
    stop(connection.as_mut());
    tokio::select! {
        _ = connection => {}
        _ = kill.cancelled() => {}
        _ = tokio::time::sleep(grace) => {}
    }
}

/// A TLS connection: the handshake (within the handshake timeout), then HTTP/2 or HTTP/1.1
/// as ALPN chose, with the same router, limits and kill switch as plain connections.
/// WebSockets upgrade over HTTP/1.1.
async fn serve_tls(
    stream: TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    conn: Connection,
    router: axum::Router,
    shutdown: CancellationToken,
    server: &ServerConfig,
    max_header: usize,
) {
    let _ = stream.set_nodelay(true);
    let stream = match tokio::time::timeout(server.handshake_timeout, tls.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let kill = conn.kill.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().oneshot(req)
    });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.handshake_timeout)
        .max_buf_size(max_header.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(server.max_streams_per_connection)
        .max_header_list_size(max_header.max(8192) as u32)
        .keep_alive_interval(Some(server.heartbeat));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let stop = |c: std::pin::Pin<&mut _>| {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(c)
    };
    drive(connection, stop, &kill, &shutdown, server.shutdown_grace).await;
}

/// Every committed group goes to every dispatch thread, so threads past the cores only add
/// hand-offs; the bound keeps a typo (an extra zero) from starting a thousand threads.
const MAX_DISPATCH_THREADS: usize = 256;

/// `server.dispatch_threads`, with 0 meaning half the cores the process may use, at least
/// one: the runtime's workers (every connection's reads, replies and queued writes) need
/// the rest. Measured on 2 cores, a second dispatch thread cost 10-25% more CPU per
/// delivery and a higher p99 than one (BENCHMARKS.md, "Dispatch threads").
fn dispatch_threads(configured: usize) -> usize {
    debug_assert!(
        configured <= MAX_DISPATCH_THREADS,
        "checked in check_ranges"
    );
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    }
}
