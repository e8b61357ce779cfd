//! `herald bench`: load generators that drive a running Herald (or any server speaking its
//! protocol) over real sockets, and report what they measured. One scenario per file; this
//! module holds what they share: many client sockets (spread over 127.0.0.x source addresses
//! to pass one address's ~28k ephemeral ports), the file-descriptor limit, the server's RSS,
//! and latency histograms.

pub mod fanout;
pub mod flood;
mod head;
pub mod idle;
pub mod presence;
pub mod publish;
mod sse;
pub mod webhooks;
mod ws;

use head::exchange;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};

pub use crate::limits::raise_nofile;

/// Where to connect, parsed from `--server http://host:port`.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    pub addr: SocketAddr,
    pub host: String,
}

impl Target {
    /// `--server` may list several nodes of a cluster, comma-separated: connections and
    /// publishes are spread over them in turn.
    pub fn parse_list(servers: &str) -> anyhow::Result<Vec<Target>> {
        servers
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| Target::parse(s.trim()))
            .collect::<anyhow::Result<Vec<_>>>()
            .and_then(|t| {
                if t.is_empty() {
                    bail!("--server names no server");
                }
                Ok(t)
            })
    }

    pub fn parse(server: &str) -> anyhow::Result<Target> {
        let url = reqwest::Url::parse(server)
            .context("--server must be a URL like http://127.0.0.1:8080")?;
        let host = url.host_str().context("--server needs a host")?.to_string();
        let port = url.port_or_known_default().unwrap_or(80);
        let ip: IpAddr = match host.as_str() {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h
                .parse()
                .context("--server must name an IP address (load runs on loopback)")?,
        };
        if !ip.is_loopback() {
            bail!("herald bench only targets loopback addresses (127.0.0.0/8), got {ip}");
        }
        Ok(Target {
            base: server.trim_end_matches('/').to_string(),
            addr: SocketAddr::new(ip, port),
            host: format!("{host}:{port}"),
        })
    }
}

/// Hands out client sockets bound to 127.0.0.1, 127.0.0.2, ... in turn.
pub struct Sources {
    count: usize,
    next: AtomicUsize,
}

impl Sources {
    /// Enough source addresses for `connections` (about 25,000 per address).
    pub fn for_connections(connections: usize, at_least: usize) -> Sources {
        Sources {
            count: connections.div_ceil(25_000).max(at_least).max(1),
            next: AtomicUsize::new(0),
        }
    }

    pub async fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)),
            0,
        ))?;
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A server's resident set size in KiB, from /proc: the process and its children (a peer
/// such as nginx serves from worker processes under its master).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let own = |pid: u32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(own(pid)? + children(pid).into_iter().filter_map(own).sum::<u64>())
}

/// A server's user + system CPU time, from /proc/<pid>/stat: the process and its children.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let own = |pid: u32| -> Option<u64> {
        let fields = stat_fields(pid)?;
        // utime and stime, the 14th and 15th fields of stat.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    };
    let ticks = own(pid)? + children(pid).into_iter().filter_map(own).sum::<u64>();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / hz.max(1) as f64)
}

/// The fields of /proc/<pid>/stat after the parenthesised command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            stat_fields(p)
                .and_then(|f| f.get(1)?.parse::<u32>().ok())
                .is_some_and(|ppid| ppid == pid)
        })
        .collect()
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds")
}

/// Finds `"key":<digits>` in a JSON text without parsing it (the hot loop of a subscriber:
/// a byte-by-byte search here was a tenth of the subscriber side's CPU; memchr's is SIMD).
pub fn find_u64(text: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<u64> {
    let at = key.find(text)? + key.needle().len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        any = true;
    }
    any.then_some(n)
}

/// How a measured phase ends: at its deadline, or early at Ctrl-C, after which the scenario
/// reports what it measured so far (marked `interrupted`). Meanwhile a progress line goes to
/// stderr once a second, so a long run shows it is alive and how it is going.
#[derive(Clone)]
pub struct Run {
    over: tokio_util::sync::CancellationToken,
    interrupted: Arc<AtomicBool>,
}

impl Run {
    pub fn start(duration: Duration, progress: impl Fn() -> String + Send + 'static) -> Run {
        let run = Run {
            over: tokio_util::sync::CancellationToken::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
        };
        let r = run.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            let second = Duration::from_secs(1);
            let mut tick = tokio::time::interval_at(started + second, second);
            let ctrl_c = tokio::signal::ctrl_c();
            tokio::pin!(ctrl_c);
            loop {
                tokio::select! {
                    _ = r.over.cancelled() => return,
                    _ = tokio::time::sleep_until(started + duration) => break,
                    _ = &mut ctrl_c => {
                        r.interrupted.store(true, Ordering::Relaxed);
                        say("interrupted: reporting what was measured so far");
                        break;
                    }
                    _ = tick.tick() => {
                        say(&format!("[{:>4}s] {}", started.elapsed().as_secs(), progress()));
                    }
                }
            }
            r.over.cancel();
        });
        run
    }

    pub fn is_over(&self) -> bool {
        self.over.is_cancelled()
    }

    /// Resolves when the phase is over.
    pub async fn over(&self) {
        self.over.cancelled().await
    }

    /// Ends the phase (and its progress lines) before its deadline.
    pub fn end(&self) {
        self.over.cancel();
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }
}

/// A line to stderr that never fails the run (`eprintln!` panics once nobody reads stderr).
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// p50/p90/p99/p99.9/max in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |us: u64| (us as f64) / 1000.0;
    serde_json::json!({
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p90_ms": ms(h.value_at_quantile(0.9)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "p999_ms": ms(h.value_at_quantile(0.999)),
        "max_ms": ms(h.max()),
        "samples": h.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_without_parsing() {
        let text =
            br#"{"op":"event","seq":42,"channel":"c","data":{"t":1700000000123456789,"p":"xx"}}"#;
        let key = |k: &'static [u8]| memchr::memmem::Finder::new(k);
        assert_eq!(find_u64(text, &key(b"\"seq\":")), Some(42));
        assert_eq!(
            find_u64(text, &key(b"\"t\":")),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(find_u64(text, &key(b"\"nope\":")), None);
    }

    #[test]
    fn only_loopback_targets() {
        assert!(Target::parse("http://127.0.0.1:8080").is_ok());
        assert!(Target::parse("http://localhost:9").is_ok());
        assert!(Target::parse("http://10.0.0.1:8080").is_err());
    }
}
