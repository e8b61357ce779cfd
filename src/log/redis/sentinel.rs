//! Redis Sentinel: the node asks the Sentinels which server is the primary and follows a
//! failover by itself.
//!
//! Why a forwarder on a loopback port: redis-rs's `ConnectionManager` reconnects to the one
//! address its client was built with, and the log, presence and the webhook queue each hold
//! its connections. Rather than teach each of them to re-resolve, the node listens on a
//! loopback port of its own and hands every connection it accepts to the current primary;
//! the rest of Herald connects there as to any Redis (AUTH and SELECT pass through). When the
//! Sentinels name another primary (a failover), every forwarded connection is cut; the
//! managers reconnect and reach the new one. A connection is forwarded only to a server that
//! answers `ROLE` as `master` at that moment, so nothing is ever written to a replica, and
//! while there is no primary a connection is refused at once: publishes get 503
//! `log_unavailable` with `Retry-After`, and go through again as soon as there is one.

use std::net::SocketAddr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::log::LogError;
use crate::store::StoreError;

/// How often the Sentinels are asked who the primary is.
const POLL: Duration = Duration::from_millis(250);
/// Bound on each question to a Sentinel or a data node.
const ASK: Duration = Duration::from_secs(1);

/// Where to find the primary: the Sentinels, its name, and the credentials for each side.
#[derive(Clone)]
pub struct Sentinels {
    pub addrs: Vec<String>,
    pub master: String,
    pub sentinel_password: String,
    /// The data nodes' `redis://` URL (credentials, database); its host is not used.
    pub data_url: String,
}

/// The primary as last seen: an address, or none (a failover under way, no Sentinel
/// reachable). Each change is a new generation, which cuts the connections of the last one.
type Primary = Option<SocketAddr>;

/// Starts the forwarder; returns the URL the node's Redis clients should use.
pub async fn start(s: Sentinels, stop: CancellationToken) -> Result<String, LogError> {
    let first = find_primary(&s).await;
    if first.is_none() {
        tracing::warn!(
            sentinels = ?s.addrs, master = %s.master,
            "no Sentinel names a reachable primary yet; publishes get 503 until one does"
        );
    }
    let (tx, rx) = watch::channel(first);
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|source| {
            LogError::Storage(StoreError::Io {
                what: "the Sentinel forwarder's loopback port".into(),
                source,
            })
        })?;
    let local = listener.local_addr().map_err(|source| {
        LogError::Storage(StoreError::Io {
            what: "the Sentinel forwarder's loopback port".into(),
            source,
        })
    })?;
    tokio::spawn(watch_primary(s.clone(), tx, stop.clone()));
    tokio::spawn(accept(listener, rx, s.clone(), stop));
    local_url(&s.data_url, local)
}

/// The data URL with its host and port replaced by the forwarder's.
fn local_url(data_url: &str, local: SocketAddr) -> Result<String, LogError> {
    let base = if data_url.is_empty() {
        "redis://localhost"
    } else {
        data_url
    };
    let mut url = url::Url::parse(base).map_err(|e| {
        LogError::Storage(StoreError::Corrupt(format!(
            "redis.url {}: {e}",
            super::redact_url(data_url)
        )))
    })?;
    if url.scheme() != "redis" {
        return Err(LogError::Storage(StoreError::Corrupt(
            "with redis.sentinels, redis.url must be a redis:// URL (TLS to Sentinel-managed \
             nodes is not supported yet)"
                .into(),
        )));
    }
    let host_ok = url.set_host(Some(&local.ip().to_string())).is_ok();
    let port_ok = url.set_port(Some(local.port())).is_ok();
    if !(host_ok && port_ok) {
        return Err(LogError::Storage(StoreError::Corrupt(format!(
            "redis.url {} cannot name a host",
            super::redact_url(data_url)
        ))));
    }
    Ok(url.to_string())
}

/// Asks the Sentinels every `POLL` and publishes each change of primary.
async fn watch_primary(s: Sentinels, tx: watch::Sender<Primary>, stop: CancellationToken) {
    let mut lost_at = tx.borrow().is_none().then(std::time::Instant::now);
    metrics::gauge!("herald_redis_primary_up").set(if lost_at.is_none() { 1.0 } else { 0.0 });
    metrics::gauge!("herald_redis_without_primary_seconds_total").increment(0.0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let now = find_primary(&s).await;
        let before = *tx.borrow();
        if before == now {
            continue;
        }
        match now {
            Some(addr) => {
                let without = lost_at.take().map(|t| t.elapsed());
                if let Some(d) = without {
                    // A gauge that only grows: a counter would drop the fraction of a second
                    // most failovers take.
                    metrics::gauge!("herald_redis_without_primary_seconds_total")
                        .increment(d.as_secs_f64());
                }
                if before.is_some() || without.is_some() {
                    metrics::counter!("herald_redis_failovers_total").increment(1);
                }
                tracing::warn!(
                    primary = %addr,
                    without_primary_ms = without.map(|d| d.as_millis() as u64),
                    "redis primary changed (Sentinel)"
                );
                metrics::gauge!("herald_redis_primary_up").set(1.0);
            }
            None => {
                lost_at.get_or_insert_with(std::time::Instant::now);
                metrics::gauge!("herald_redis_primary_up").set(0.0);
                tracing::warn!("no writable redis primary (Sentinel): publishes get 503");
            }
        }
        tx.send_replace(now);
    }
}

/// The primary a Sentinel names, if that server says it is one. Sentinels learn of a
/// failover one after another: one may still name the dead primary while another names the
/// promoted replica, so each is asked in turn until one names a server that is a master.
async fn find_primary(s: &Sentinels) -> Option<SocketAddr> {
    let mut tried = Vec::new();
    for sentinel in &s.addrs {
        let Ok(Some(addr)) = tokio::time::timeout(ASK, ask_sentinel(s, sentinel)).await else {
            continue;
        };
        if tried.contains(&addr) {
            continue;
        }
        tried.push(addr);
        if let Ok(true) = tokio::time::timeout(ASK, is_master(s, addr)).await {
            return Some(addr);
        }
    }
    None
}

async fn ask_sentinel(s: &Sentinels, sentinel: &str) -> Option<SocketAddr> {
    let url = if s.sentinel_password.is_empty() {
        format!("redis://{sentinel}")
    } else {
        let password: String =
            url::form_urlencoded::byte_serialize(s.sentinel_password.as_bytes()).collect();
        format!("redis://:{password}@{sentinel}")
    };
    let mut conn = connection(&url).await?;
    let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&s.master)
        .query_async(&mut conn)
        .await
        .ok()?;
    let (host, port) = reply?;
    // Sentinels answer with addresses (their announce-ip); a name is looked up.
    let text = format!("{host}:{port}");
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    let found = tokio::net::lookup_host(text).await.ok()?.next();
    found
}

/// Whether the server at `addr` answers `ROLE` as a master (with the data URL's credentials).
async fn is_master(s: &Sentinels, addr: SocketAddr) -> bool {
    let Ok(url) = local_url(&s.data_url, addr) else {
        return false;
    };
    let Some(mut conn) = connection(&url).await else {
        return false;
    };
    let role: Result<redis::Value, _> = redis::cmd("ROLE").query_async(&mut conn).await;
    match role {
        Ok(redis::Value::Array(items)) => matches!(
            items.first(),
            Some(redis::Value::BulkString(b)) if b == b"master"
        ),
        _ => false,
    }
}

async fn connection(url: &str) -> Option<MultiplexedConnection> {
    let client = redis::Client::open(url).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ASK))
        .set_response_timeout(Some(ASK));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// Hands each accepted connection to the primary of the moment.
async fn accept(
    listener: TcpListener,
    primary: watch::Receiver<Primary>,
    s: Sentinels,
    stop: CancellationToken,
) {
    loop {
        let inbound = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        tokio::spawn(forward(inbound, primary.clone(), s.clone(), stop.clone()));
    }
}

/// One connection: to the current primary, checked to be one, until the primary changes.
async fn forward(
    mut inbound: TcpStream,
    mut primary: watch::Receiver<Primary>,
    s: Sentinels,
    stop: CancellationToken,
) {
    let Some(addr) = *primary.borrow_and_update() else {
        return; // no primary: refused at once, the client's error is a fast 503
    };
    if !matches!(
        tokio::time::timeout(ASK, is_master(&s, addr)).await,
        Ok(true)
    ) {
        return;
    }
    let Ok(Ok(mut outbound)) = tokio::time::timeout(ASK, TcpStream::connect(addr)).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = stop.cancelled() => {}
        // Another primary (or none): this connection must not write to the old one.
        _ = primary.changed() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_url_keeps_its_credentials_and_database() {
        let local: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        assert_eq!(
            local_url("redis://:pw@10.0.0.5:6379/2", local).unwrap(),
            "redis://:pw@127.0.0.1:4242/2"
        );
        assert_eq!(local_url("", local).unwrap(), "redis://127.0.0.1:4242");
        assert!(local_url("rediss://10.0.0.5", local).is_err());
    }
}
