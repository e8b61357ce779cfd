//! DNS lookups for the URL check when an endpoint is created or its URL changed.
//!
//! `tokio::net::lookup_host` runs getaddrinfo on the runtime's blocking pool, which the log's
//! reads share: a resolver that stalls (a hostile name server, a dead network) would hold
//! threads that publishes and history reads wait for. So lookups run on threads of their own,
//! a few at a time, and the caller waits at most `webhooks.dns_timeout`. A trait, so a test
//! can stall it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::Semaphore;

/// Looks up a host's addresses.
pub trait Resolve: Send + Sync + 'static {
    fn lookup(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>;
}

/// How many system lookups may run at once; more wait (within the caller's timeout).
const LOOKUP_THREADS: usize = 4;

/// getaddrinfo on a thread per lookup (`herald-dns`), at most [`LOOKUP_THREADS`] at once. A
/// lookup that never returns keeps its thread and its permit; the caller has long gone.
pub struct SystemResolver {
    permits: Arc<Semaphore>,
}

impl Default for SystemResolver {
    fn default() -> Self {
        SystemResolver {
            permits: Arc::new(Semaphore::new(LOOKUP_THREADS)),
        }
    }
}

impl Resolve for SystemResolver {
    fn lookup(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let permits = self.permits.clone();
        async move {
            let permit = permits
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("herald-dns".into())
                .spawn(move || {
                    let found = (host.as_str(), port)
                        .to_socket_addrs()
                        .map(|a| a.collect::<Vec<_>>());
                    drop(permit);
                    let _ = tx.send(found);
                })?;
            rx.await.map_err(std::io::Error::other)?
        }
        .boxed()
    }
}

/// The addresses of `host`, or None when the lookup failed or took longer than `timeout`
/// (the URL check then happens at delivery time only).
pub async fn lookup(
    resolver: &dyn Resolve,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Option<Vec<SocketAddr>> {
    match tokio::time::timeout(timeout, resolver.lookup(host.to_string(), port)).await {
        Ok(Ok(addrs)) => Some(addrs),
        Ok(Err(_)) => None,
        Err(_) => {
            tracing::warn!(host, ?timeout, "DNS lookup for a webhook URL timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolver whose lookups never finish.
    struct Stalled;

    impl Resolve for Stalled {
        fn lookup(
            &self,
            _: String,
            _: u16,
        ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
            std::future::pending().boxed()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_lookup_gives_up_at_the_timeout() {
        let started = tokio::time::Instant::now();
        let got = lookup(&Stalled, "stall.example", 443, Duration::from_secs(5)).await;
        assert_eq!(got, None);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "paused time: exactly the timeout"
        );
    }

    #[tokio::test]
    async fn the_system_resolver_uses_threads_of_its_own() {
        // The runtime's blocking pool is capped at one thread and held: a lookup that needed
        // it would never finish.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let got = std::thread::spawn(move || {
            rt.block_on(async {
                let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
                let hold = tokio::task::spawn_blocking(move || {
                    let _ = held_rx.recv();
                });
                let got = lookup(
                    &SystemResolver::default(),
                    "localhost",
                    80,
                    Duration::from_secs(20),
                )
                .await;
                drop(held_tx);
                hold.await.unwrap();
                got
            })
        })
        .join()
        .unwrap();
        let addrs = got.expect("localhost resolves");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
