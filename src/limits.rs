//! Per-client limits that no single request can see: connections per IP and in total, and
//! publish rates (token buckets) per credential and per WebSocket connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The client an address counts as for per-IP limits: an IPv6 host usually holds a whole
/// /64 (or more), so counting single addresses would let one host open a connection per
/// address; IPv4-mapped IPv6 addresses count as their IPv4 address.
pub fn client_of(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

/// Counts open connections; a [`ConnectionPermit`] gives its slot back when dropped.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    ipv6_prefix: u8,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Total(usize),
    PerIp(usize),
}

impl Refusal {
    /// What the client is told (429 `too_many_connections`).
    pub fn message(&self) -> String {
        match self {
            Refusal::Total(n) => format!("the server holds its maximum of {n} connections"),
            Refusal::PerIp(n) => {
                format!("this address already holds its maximum of {n} connections")
            }
        }
    }
}

pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize, ipv6_prefix: u8) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_ip,
            ipv6_prefix,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        })
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let ip = client_of(ip, self.ipv6_prefix);
        let mut per_ip = self.per_ip.lock().expect("connection limits");
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let n = per_ip.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(Refusal::PerIp(self.max_per_ip));
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limits: self.clone(),
            ip,
        })
    }
}

impl ConnectionPermit {
    /// One more slot for the same client, for something that costs what a connection does
    /// (an HTTP/2 event stream: many of them share one TCP connection).
    pub fn another(&self) -> Result<ConnectionPermit, Refusal> {
        let mut per_ip = self.limits.per_ip.lock().expect("connection limits");
        if self.limits.total.load(Ordering::Relaxed) >= self.limits.max_total {
            return Err(Refusal::Total(self.limits.max_total));
        }
        let n = per_ip.entry(self.ip).or_default();
        if *n >= self.limits.max_per_ip {
            return Err(Refusal::PerIp(self.limits.max_per_ip));
        }
        *n += 1;
        self.limits.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limits: self.limits.clone(),
            ip: self.ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().expect("connection limits");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Bucket {
        let burst = burst.max(rate).max(1) as f64;
        Bucket {
            rate: rate as f64,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes `n` tokens, or says how long until they would be there.
    pub fn take(&mut self, n: u32, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(()); // unlimited
        }
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((n.min(self.burst) - self.tokens) / self.rate).max(0.001),
            ))
        }
    }

    fn is_full(&self, now: Instant) -> bool {
        self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate >= self.burst
    }
}

/// Buckets by key (an API key's index, a token's subject, or a client address).
pub struct RateLimiter {
    /// Tokens per second (0: unlimited).
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before full (idle) ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            rate: rate as f64,
            burst: burst.max(rate).max(1) as f64,
            buckets: Mutex::default(),
        }
    }

    /// `n` a minute, all of them at once at most (0: unlimited).
    pub fn per_minute(n: u32) -> RateLimiter {
        RateLimiter {
            rate: n as f64 / 60.0,
            burst: n.max(1) as f64,
            buckets: Mutex::default(),
        }
    }

    pub fn take(&self, key: &str, n: u32) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter");
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(key.to_string())
            .or_insert_with(|| Bucket {
                rate: self.rate,
                burst: self.burst,
                tokens: self.burst,
                at: now,
            })
            .take(n, now)
    }
}

/// Raises this process's open-file limit as far as allowed: to the kernel's `nr_open` when
/// privileged (root may raise the hard limit), else to the hard limit. Returns the new soft
/// limit.
pub fn raise_nofile() -> u64 {
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if ceiling > limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: ceiling,
                rlim_max: ceiling,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return ceiling;
            }
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(2, 3);
        for _ in 0..3 {
            assert_eq!(b.take(1, t0), Ok(()));
        }
        let wait = b.take(1, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(b.take(1, t0 + Duration::from_millis(500)), Ok(()));
        assert!(
            Bucket::new(0, 0).take(1_000_000, t0).is_ok(),
            "rate 0 = unlimited"
        );
    }

    #[test]
    fn connection_permits_count_per_ip_and_total() {
        let limits = ConnectionLimits::new(3, 2, 64);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.acquire(a).unwrap();
        let _p2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refusal::PerIp(2)));
        let _p3 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).err(), Some(Refusal::Total(3)));
        drop(p1);
        assert!(limits.acquire(a).is_ok());
    }

    #[test]
    fn an_ipv6_network_counts_as_one_client() {
        let limits = ConnectionLimits::new(100, 2, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = limits.acquire(ip("2001:db8:1:2::1")).unwrap();
        let _b = limits.acquire(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            limits.acquire(ip("2001:db8:1:2::3")).err(),
            Some(Refusal::PerIp(2)),
            "same /64"
        );
        assert!(limits.acquire(ip("2001:db8:1:3::1")).is_ok(), "next /64");
        assert_eq!(client_of(ip("::ffff:10.1.2.3"), 64), ip("10.1.2.3"));
        assert_eq!(client_of(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(client_of(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(
            client_of(ip("2001:db8:aa:bb:cc::1"), 48),
            ip("2001:db8:aa::")
        );
    }
}
