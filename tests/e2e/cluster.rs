//! Cluster mode: several real `herald` nodes sharing one real `redis-server` on loopback.
//!
//! Needs `redis-server` on PATH (`apt-get install -y redis-server`). Without it these tests
//! fail under `CI=true` and are skipped (with a note) elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::webhooks::{create_webhook, eventually, Receiver, Reply};

/// A real redis-server on a free loopback port, persisting to a temp dir with an fsync per
/// write (the durability a cluster needs for `log.durability = "fsync"`).
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts Redis, or returns None (outside CI) when redis-server is not installed.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            let msg = "redis-server is not installed: `apt-get install -y redis-server` \
                       (the cluster tests run Herald nodes against a real Redis)";
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts again on the same port and data (its AOF).
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `n` nodes on `redis`, each with `extra` config.
pub fn nodes(redis: &Redis, n: usize, extra: &str) -> Vec<Herald> {
    let toml = format!("[redis]\nurl = \"{}\"\n{extra}", redis.url());
    (0..n).map(|_| Herald::start(&toml)).collect()
}

/// One subscriber's view: the seqs it received, in arrival order, and the last per channel.
#[derive(Default, Clone)]
struct Seen {
    seqs: Vec<(u64, String)>,
    last: u64,
    last_of: BTreeMap<String, u64>,
}

impl Seen {
    fn add(&mut self, v: &Value) {
        let seq = v["seq"].as_u64().unwrap();
        let channel = v["channel"].as_str().unwrap().to_string();
        self.last = seq;
        self.last_of.insert(channel.clone(), seq);
        self.seqs.push((seq, channel));
    }
}

/// Follows `query` over SSE on `nodes[at]` (moving to the next node if that one dies),
/// resuming from the last id, until `stop`.
fn sse_follower(
    nodes: Arc<Vec<(String, String)>>,
    at: usize,
    channels: &'static str,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut node = at;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let last = seen.lock().unwrap().last;
            let url = format!("{}/v1/sse?{channels}", nodes[node].0);
            let req = reqwest::Client::new()
                .get(&url)
                .header("Last-Event-ID", last.to_string());
            let Ok(Ok(response)) = tokio::time::timeout(WAIT, req.send()).await else {
                node = (node + 1) % nodes.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            if response.status() != 200 {
                node = (node + 1) % nodes.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let mut body = response.bytes_stream();
            let mut reader = herald::cli::SseReader::default();
            use futures_util::StreamExt;
            loop {
                let chunk = tokio::select! {
                    c = body.next() => c,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) { return; }
                        continue;
                    }
                };
                let Some(Ok(chunk)) = chunk else { break };
                for event in reader.push(&chunk) {
                    if event.name.as_deref() == Some("reset") {
                        continue;
                    }
                    let v: Value = serde_json::from_str(&event.data).unwrap();
                    seen.lock().unwrap().add(&v);
                }
            }
            // The stream ended (node died): resume elsewhere.
            node = (node + 1) % nodes.len();
        }
    })
}

/// Follows `channels` over WebSocket on `nodes[at]`, resuming with `since` on another node
/// if the connection drops.
fn ws_follower(
    nodes: Arc<Vec<(String, String)>>,
    at: usize,
    channels: &'static [&'static str],
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    tokio::spawn(async move {
        let mut node = at;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let last = seen.lock().unwrap().last_of.clone();
            let url = format!("{}/v1/ws", nodes[node].1);
            let Ok(Ok((mut ws, _))) =
                tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url)).await
            else {
                node = (node + 1) % nodes.len();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            for c in channels {
                let since = last.get(*c).copied().unwrap_or(0);
                let msg = json!({"op": "subscribe", "channel": c, "since": since});
                if ws.send(Message::Text(msg.to_string().into())).await.is_err() {
                    break;
                }
            }
            loop {
                let msg = tokio::select! {
                    m = ws.next() => m,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) { return; }
                        continue;
                    }
                };
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["op"] == "event" {
                    seen.lock().unwrap().add(&v);
                }
            }
            node = (node + 1) % nodes.len();
        }
    })
}

/// Acknowledged seqs by channel.
type Acked = Arc<Mutex<BTreeMap<String, BTreeSet<u64>>>>;

/// Publishes `count` events over HTTP to `url`, in batches of 1..=7 across `channels`,
/// retrying a failed request with the same ids (so a retry is never doubled). Records what
/// was acknowledged. Stops early (without error) when `give_up` is set and the node is gone.
async fn publisher(
    url: String,
    name: &'static str,
    count: usize,
    channels: &'static [&'static str],
    acked: Acked,
    refusals: Arc<Mutex<Vec<Value>>>,
    give_up: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut sent = 0;
    let mut batch_no = 0usize;
    while sent < count {
        let n = (batch_no % 7 + 1).min(count - sent);
        let events: Vec<Value> = (0..n)
            .map(|i| {
                let k = sent + i;
                json!({"channel": channels[k % channels.len()], "data": {"n": k},
                       "id": format!("{name}-{k}")})
            })
            .collect();
        let body = if n == 1 {
            events[0].clone()
        } else {
            Value::Array(events.clone())
        };
        loop {
            let reply = client
                .post(format!("{url}/v1/events"))
                .json(&body)
                .send()
                .await;
            match reply {
                Ok(r) if r.status() == 201 || r.status() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    let seqs: Vec<u64> = match v.get("seqs") {
                        Some(s) => s
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_u64().unwrap())
                            .collect(),
                        None => vec![v["seq"].as_u64().unwrap()],
                    };
                    let mut a = acked.lock().unwrap();
                    for (e, seq) in events.iter().zip(seqs) {
                        a.entry(e["channel"].as_str().unwrap().to_string())
                            .or_default()
                            .insert(seq);
                    }
                    break;
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    refusals.lock().unwrap().push(json!({"status": status, "body": v}));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    if give_up.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        sent += n;
        batch_no += 1;
    }
}

fn endpoints(nodes: &[Herald]) -> Arc<Vec<(String, String)>> {
    Arc::new(
        nodes
            .iter()
            .map(|h| (h.url(""), h.ws_url("")))
            .collect(),
    )
}

/// Waits until every subscriber has every acknowledged seq of its channels, then checks that
/// each saw exactly those, per channel in increasing order with no duplicate (SSE: one
/// subscription, so one increasing order across its channels).
async fn assert_complete(
    subscribers: &[(&str, Arc<Mutex<Seen>>, Vec<&str>)],
    acked: &BTreeMap<String, BTreeSet<u64>>,
) {
    for (name, seen, channels) in subscribers {
        for channel in channels {
            let want = acked.get(*channel).cloned().unwrap_or_default();
            let max = want.iter().copied().max().unwrap_or(0);
            eventually(&format!("{name} to reach seq {max} of {channel}"), WAIT, async || {
                let s = seen.lock().unwrap();
                (s.last_of.get(*channel).copied().unwrap_or(0) >= max).then_some(())
            })
            .await;
            let s = seen.lock().unwrap();
            let got: Vec<u64> = s
                .seqs
                .iter()
                .filter(|(q, c)| c == channel && *q <= max)
                .map(|(q, _)| *q)
                .collect();
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{name}: {channel} out of order or duplicated"
            );
            let got: BTreeSet<u64> = got.into_iter().collect();
            let missing: Vec<_> = want.difference(&got).take(10).collect();
            assert!(missing.is_empty(), "{name} missed acknowledged {channel} events {missing:?}");
            let extra: Vec<_> = got.difference(&want).take(10).collect();
            assert!(extra.is_empty(), "{name} got unacknowledged {channel} events {extra:?}");
        }
        let s = seen.lock().unwrap();
        for (seq, channel) in &s.seqs {
            assert!(channels.contains(&channel.as_str()), "{name}: got {seq} of {channel}");
        }
        if name.starts_with("sse") {
            assert!(
                s.seqs.windows(2).all(|w| w[0].0 < w[1].0),
                "{name}: not one increasing order"
            );
        }
    }
}

fn flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_deliver_one_contiguous_order_to_every_subscriber() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(&redis, 3, "");
    let urls = endpoints(&cluster);
    let stop = flag();
    let mut subscribers = Vec::new();
    let mut handles = Vec::new();
    for i in 0..3 {
        let sse = Arc::new(Mutex::new(Seen::default()));
        handles.push(sse_follower(urls.clone(), i, "channel=a&channel=b", sse.clone(), stop.clone()));
        subscribers.push(("sse a+b", sse, vec!["a", "b"]));
        let ws = Arc::new(Mutex::new(Seen::default()));
        handles.push(ws_follower(urls.clone(), i, &["c", "a"], ws.clone(), stop.clone()));
        subscribers.push(("ws c+a", ws, vec!["c", "a"]));
    }
    let acked: Acked = Arc::default();
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let publishers: Vec<_> = ["p1", "p2", "p3"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            tokio::spawn(publisher(
                cluster[i].url(""),
                name,
                3334,
                &["a", "b", "c"],
                acked.clone(),
                refusals.clone(),
                flag(),
            ))
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert_eq!(total, 10_002);
    // One order for the whole cluster: the acknowledged seqs are exactly 1..=N.
    let all: BTreeSet<u64> = acked.values().flatten().copied().collect();
    assert_eq!(all, (1..=total as u64).collect::<BTreeSet<_>>());
    assert_complete(&subscribers, &acked).await;
    // History through any node agrees.
    let page = get_json(cluster[2].url("/v1/events?channel=b&after=0&limit=1000")).await;
    let history: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let want: Vec<u64> = acked["b"].iter().copied().take(1000).collect();
    assert_eq!(history, want);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(refusals.lock().unwrap().is_empty(), "{:?}", refusals.lock().unwrap());
}
