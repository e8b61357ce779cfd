//! Cluster mode: several real `herald` nodes sharing one real `redis-server` on loopback.
//!
//! Needs `redis-server` on PATH (`apt-get install -y redis-server`). Without it these tests
//! fail, naming what to install.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Child, Stdio};
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
    persist: bool,
    /// Extra redis-server arguments (say, `--requirepass`).
    args: Vec<String>,
}

impl Redis {
    /// Starts Redis (a test without redis-server fails, naming the package).
    pub fn start() -> Option<Redis> {
        Self::start_with(true)
    }

    /// `persist: false`: no AOF, so a restart comes back empty (a misconfigured Redis).
    pub fn start_with(persist: bool) -> Option<Redis> {
        Self::start_with_args(persist, &[])
    }

    pub fn start_with_args(persist: bool, args: &[&str]) -> Option<Redis> {
        if let Err(why) = redis_usable() {
            dependency_missing(
                &format!("redis-server 7 or newer (the cluster tests run nodes against a real Redis): {why}"),
                "apt-get install -y redis-server",
            );
            return None;
        }
        let port = free_port();
        let mut redis = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            persist,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let child = tool("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", if self.persist { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
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
        // Up, with or without a password (`-NOAUTH` says it is up and wants one).
        let mut buf = [0u8; 5];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG" || &buf == b"-NOAU")
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

/// Runs one subscriber on `nodes[at]` and, each time its connection fails or ends, again on
/// the next node (as a client behind a balancer would), until `stop`.
fn fail_over<F, Fut>(
    nodes: Arc<Vec<(String, String)>>,
    at: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    mut session: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut((String, String), Arc<std::sync::atomic::AtomicBool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut node = at;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            session(nodes[node].clone(), stop.clone()).await;
            node = (node + 1) % nodes.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// The next item of `stream`, looking at `stop` meanwhile: None once stopped.
async fn next_or_stop<S: futures_util::Stream + Unpin>(
    stream: &mut S,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<Option<S::Item>> {
    use futures_util::StreamExt;
    loop {
        tokio::select! {
            item = stream.next() => return Some(item),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return None;
                }
            }
        }
    }
}

/// Follows `query` over SSE, resuming from the last id on every (re)connect.
fn sse_follower(
    nodes: Arc<Vec<(String, String)>>,
    at: usize,
    query: &'static str,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    fail_over(nodes, at, stop, move |(url, _), stop| {
        let seen = seen.clone();
        async move {
            let last = seen.lock().unwrap().last;
            let req = client()
                .get(format!("{url}/v1/sse?{query}"))
                .header("Last-Event-ID", last.to_string());
            let Ok(Ok(response)) = tokio::time::timeout(WAIT, req.send()).await else {
                return;
            };
            if response.status() != 200 {
                return;
            }
            let mut body = response.bytes_stream();
            let mut reader = herald::cli::SseReader::default();
            while let Some(Some(Ok(chunk))) = next_or_stop(&mut body, &stop).await {
                for event in reader.push(&chunk) {
                    if event.name.as_deref() != Some("reset") {
                        let v: Value = serde_json::from_str(&event.data).unwrap();
                        seen.lock().unwrap().add(&v);
                    }
                }
            }
        }
    })
}

/// Follows `channels` over WebSocket, one subscription each, resuming each with `since`.
fn ws_follower(
    nodes: Arc<Vec<(String, String)>>,
    at: usize,
    channels: &'static [&'static str],
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    fail_over(nodes, at, stop, move |(_, ws_url), stop| {
        let seen = seen.clone();
        async move {
            let last = seen.lock().unwrap().last_of.clone();
            let connect = tokio_tungstenite::connect_async(format!("{ws_url}/v1/ws"));
            let Ok(Ok((mut ws, _))) = tokio::time::timeout(WAIT, connect).await else {
                return;
            };
            for c in channels {
                let since = last.get(*c).copied().unwrap_or(0);
                let msg = json!({"op": "subscribe", "channel": c, "since": since});
                if ws
                    .send(Message::Text(msg.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            while let Some(Some(Ok(msg))) = next_or_stop(&mut ws, &stop).await {
                let Message::Text(t) = msg else { continue };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["op"] == "event" {
                    seen.lock().unwrap().add(&v);
                }
            }
        }
    })
}

/// A subscriber under test: its name, what it saw, its channels, and its task (joined at the
/// end, so a panic inside it fails the test instead of vanishing).
struct Subscriber {
    name: String,
    seen: Arc<Mutex<Seen>>,
    channels: Vec<&'static str>,
    task: tokio::task::JoinHandle<()>,
}

/// Stops every subscriber and joins its task: a follower that panicked fails the test here.
async fn stop_subscribers(subscribers: Vec<Subscriber>, stop: &std::sync::atomic::AtomicBool) {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in subscribers {
        tokio::time::timeout(WAIT * 2, s.task)
            .await
            .unwrap_or_else(|_| panic!("{} did not stop", s.name))
            .unwrap_or_else(|e| panic!("{} failed: {e}", s.name));
    }
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
        .no_proxy()
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
                    refusals
                        .lock()
                        .unwrap()
                        .push(json!({"status": status, "body": v}));
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
    Arc::new(nodes.iter().map(|h| (h.url(""), h.ws_url(""))).collect())
}

/// On each node of `at`: an SSE subscriber to `sse` (one subscription) and a WebSocket
/// subscriber to each of `ws`, all failing over to the next node when theirs dies.
fn subscribers(
    cluster: &[Herald],
    at: impl IntoIterator<Item = usize>,
    sse: &'static [&'static str],
    ws: &'static [&'static str],
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Subscriber> {
    let urls = endpoints(cluster);
    let query: &'static str = Box::leak(
        sse.iter()
            .map(|c| format!("channel={c}"))
            .collect::<Vec<_>>()
            .join("&")
            .into_boxed_str(),
    );
    let mut out = Vec::new();
    for i in at {
        let seen = Arc::new(Mutex::new(Seen::default()));
        out.push(Subscriber {
            name: format!("sse on node {i}"),
            task: sse_follower(urls.clone(), i, query, seen.clone(), stop.clone()),
            seen,
            channels: sse.to_vec(),
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        out.push(Subscriber {
            name: format!("ws on node {i}"),
            task: ws_follower(urls.clone(), i, ws, seen.clone(), stop.clone()),
            seen,
            channels: ws.to_vec(),
        });
    }
    out
}

/// One publisher per node (node i publishes `count` events over `channels`), recording
/// what was acknowledged and what was refused.
struct Load {
    acked: Acked,
    refusals: Arc<Mutex<Vec<Value>>>,
    publishers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `give_up[i]`, when set, lets node i's publisher stop once its node is gone.
    fn start(
        cluster: &[Herald],
        names: &[&'static str],
        count: usize,
        channels: &'static [&'static str],
        give_up: &[Arc<std::sync::atomic::AtomicBool>],
    ) -> Load {
        let acked: Acked = Arc::default();
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let publishers = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let give_up = give_up.get(i).cloned().unwrap_or_else(flag);
                let (acked, refusals) = (acked.clone(), refusals.clone());
                tokio::spawn(publisher(
                    cluster[i].url(""),
                    name,
                    count,
                    channels,
                    acked,
                    refusals,
                    give_up,
                ))
            })
            .collect();
        Load {
            acked,
            refusals,
            publishers,
        }
    }

    async fn reach(&self, n: usize) {
        eventually(&format!("{n} acknowledged events"), WAIT, async || {
            let got: usize = self.acked.lock().unwrap().values().map(BTreeSet::len).sum();
            (got >= n).then_some(())
        })
        .await;
    }

    /// Waits for every publisher; what was acknowledged, and what was refused.
    async fn finish(self) -> (BTreeMap<String, BTreeSet<u64>>, Vec<Value>) {
        for p in self.publishers {
            p.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let refused = self.refusals.lock().unwrap().clone();
        (acked, refused)
    }
}

/// Waits until every subscriber has every acknowledged seq of its channels, then checks that
/// each saw exactly those, per channel in increasing order with no duplicate (SSE: one
/// subscription, so one increasing order across its channels).
async fn assert_complete(subscribers: &[Subscriber], acked: &BTreeMap<String, BTreeSet<u64>>) {
    for Subscriber {
        name,
        seen,
        channels,
        task,
    } in subscribers
    {
        assert!(
            !task.is_finished(),
            "{name} ended early (it runs until stopped)"
        );
        for channel in channels {
            let want = acked.get(*channel).cloned().unwrap_or_default();
            let max = want.iter().copied().max().unwrap_or(0);
            eventually(
                &format!("{name} to reach seq {max} of {channel}"),
                WAIT,
                async || {
                    let s = seen.lock().unwrap();
                    (s.last_of.get(*channel).copied().unwrap_or(0) >= max).then_some(())
                },
            )
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
            assert!(
                missing.is_empty(),
                "{name} missed acknowledged {channel} events {missing:?}"
            );
            let extra: Vec<_> = got.difference(&want).take(10).collect();
            assert!(
                extra.is_empty(),
                "{name} got unacknowledged {channel} events {extra:?}"
            );
        }
        let s = seen.lock().unwrap();
        for (seq, channel) in &s.seqs {
            assert!(
                channels.contains(&channel.as_str()),
                "{name}: got {seq} of {channel}"
            );
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
    let stop = flag();
    let subscribers = subscribers(&cluster, 0..3, &["a", "b"], &["c", "a"], &stop);
    let load = Load::start(&cluster, &["p1", "p2", "p3"], 3334, &["a", "b", "c"], &[]);
    let (acked, refused) = load.finish().await;
    let total: usize = acked.values().map(BTreeSet::len).sum();
    assert_eq!(total, 10_002);
    // One order for the whole cluster: the acknowledged seqs are exactly 1..=N.
    let all: BTreeSet<u64> = acked.values().flatten().copied().collect();
    assert_eq!(all, (1..=total as u64).collect::<BTreeSet<_>>());
    assert_complete(&subscribers, &acked).await;
    // History through any node agrees.
    let page = get_json(cluster[2].url("/v1/events?channel=b&after=0&limit=1000")).await;
    let history = page_seqs(&page);
    let want: Vec<u64> = acked["b"].iter().copied().take(1000).collect();
    assert_eq!(history, want);
    stop_subscribers(subscribers, &stop).await;
    assert!(refused.is_empty(), "{refused:?}");
}

const WEBHOOKS: &str = "[webhooks]\nallow_private = true\ntimeout = \"1s\"\n\
                        retry_schedule = [\"100ms\", \"200ms\", \"300ms\", \"500ms\", \"1s\", \"1s\", \"1s\", \"1s\"]\n";

/// Every seq of `channel` in the log, read through `node`'s history API.
async fn history(node: &Herald, channel: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = get_json(node.url(&format!(
            "/v1/events?channel={channel}&after={after}&limit=1000"
        )))
        .await;
        let events = page["events"].as_array().expect("events");
        out.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
        if events.is_empty() {
            return out;
        }
        after = page["next"].as_u64().unwrap();
    }
}

/// Waits until every node runs the endpoint (and so competes for its deliveries): nodes
/// re-read endpoints each second.
pub async fn wait_for_endpoint(cluster: &[Herald], id: &str) {
    wait_for_endpoints(cluster, &[id]).await
}

/// Waits until every node runs exactly these endpoints.
pub async fn wait_for_endpoints(cluster: &[Herald], ids: &[&str]) {
    let want = format!("herald_webhook_endpoints {}", ids.len());
    for node in cluster {
        for id in ids {
            let v = get_json(node.url(&format!("/v1/webhooks/{id}"))).await;
            assert_eq!(v["id"], *id);
        }
        eventually("the endpoints running on every node", WAIT, async || {
            let text = get_text(node.url("/metrics")).await;
            text.lines().any(|l| l == want).then_some(())
        })
        .await;
    }
}

/// The number of delivered attempts this node made, from its Prometheus metrics.
async fn delivered_by(node: &Herald) -> u64 {
    let text = get_text(node.url("/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix("herald_webhook_attempts_total{outcome=\"delivered\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The seqs with a `delivered` attempt in an endpoint's attempt log (all pages).
async fn recorded_deliveries(node: &Herald, id: &str) -> BTreeSet<u64> {
    let (mut after, mut out) = (0, BTreeSet::new());
    loop {
        let url = format!("/v1/webhooks/{id}/deliveries?status=delivered&after={after}&limit=1000");
        let page = get_json(node.url(&url)).await;
        let list = page["deliveries"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            return out;
        }
        out.extend(list.iter().filter_map(|a| a["seq"].as_u64()));
        after = page["next"].as_u64().unwrap_or(after);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_node_loses_no_acknowledged_event_or_queued_webhook() {
    let Some(redis) = Redis::start() else { return };
    // A short lease, so the dead node's claimed deliveries come due again quickly.
    let mut cluster = nodes(
        &redis,
        3,
        &format!("lease = \"2s\"\n{WEBHOOKS}max_in_flight_per_endpoint = 8\n"),
    );
    // A slow receiver keeps a backlog, so every node (the dying one included) always holds
    // claimed deliveries in flight.
    let receiver = Receiver::start(|_, _| Reply::Hang(Duration::from_millis(100))).await;
    let (status, endpoint) = create_webhook(
        &cluster[0],
        json!({"url": receiver.url(), "channels": ["a"]}),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    wait_for_endpoint(&cluster, endpoint["id"].as_str().unwrap()).await;
    let stop = flag();
    let subscribers = subscribers(&cluster, [0, 2], &["a", "b"], &["a", "b"], &stop);
    let dying = flag();
    let load = Load::start(
        &cluster,
        &["k1", "k2", "k3"],
        1000,
        &["a", "b"],
        &[flag(), flag(), dying.clone()],
    );
    load.reach(1000).await;
    // The dying node takes part in deliveries (so it holds claims when it dies).
    eventually("the dying node delivering", WAIT, async || {
        (delivered_by(&cluster[2]).await > 0).then_some(())
    })
    .await;
    dying.store(true, std::sync::atomic::Ordering::Relaxed);
    cluster[2].kill9();
    let (acked, _) = load.finish().await;
    assert!(acked.values().map(BTreeSet::len).sum::<usize>() > 2000);
    // The log may hold a few events more than were acknowledged: the dead node's last
    // requests could commit without their answer getting out. Subscribers must get exactly
    // what the log holds, which includes everything acknowledged.
    let mut logged = BTreeMap::new();
    for channel in ["a", "b"] {
        let held = history(&cluster[0], channel).await;
        assert!(
            acked[channel].is_subset(&held),
            "acknowledged {channel} events missing from the log"
        );
        logged.insert(channel.to_string(), held);
    }
    assert_complete(&subscribers, &logged).await;
    // Every acknowledged event of the webhook's channel gets delivered, including those the
    // dead node had claimed when it died (their lease ran out and another node took them).
    // Judged by the attempt log, not by the receiver: the receiver also counts requests the
    // dead node sent but never saw answered, and only a live node can record a delivery.
    let want = logged["a"].clone();
    let id = endpoint["id"].as_str().unwrap().to_string();
    eventually(
        "every webhook delivery recorded",
        Duration::from_secs(40),
        async || {
            let recorded = recorded_deliveries(&cluster[0], &id).await;
            want.is_subset(&recorded).then_some(())
        },
    )
    .await;
    assert!(want.is_subset(&receiver.delivered()));
    stop_subscribers(subscribers, &stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_webhook_delivery_is_made_by_exactly_one_node() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(&redis, 3, WEBHOOKS);
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let (status, endpoint) = create_webhook(
        &cluster[1],
        json!({"url": receiver.url(), "channels": ["*"]}),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["id"].as_str().unwrap().to_string();
    wait_for_endpoint(&cluster, &id).await;
    let load = Load::start(&cluster, &["w1", "w2", "w3"], 400, &["x", "y"], &[]);
    let (acked, _) = load.finish().await;
    let want: BTreeSet<u64> = acked.values().flatten().copied().collect();
    assert_eq!(want.len(), 1200);
    eventually("every webhook delivery", WAIT, async || {
        (receiver.delivered() == want).then_some(())
    })
    .await;
    // Give a would-be duplicate time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = receiver.got.lock().unwrap().clone();
    let ids: BTreeSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(got.len(), 1200, "every event exactly once");
    assert_eq!(ids.len(), 1200);
    let mut per_node = Vec::new();
    for node in &cluster {
        per_node.push(delivered_by(node).await);
    }
    assert_eq!(per_node.iter().sum::<u64>(), 1200, "{per_node:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "deliveries should be shared between nodes: {per_node:?}"
    );
    // The attempt log is the cluster's, readable on any node.
    let mut seqs = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = get_json(cluster[2].url(&format!(
            "/v1/webhooks/{id}/deliveries?after={after}&limit=500"
        )))
        .await;
        let items = page["deliveries"].as_array().expect("deliveries");
        if items.is_empty() {
            break;
        }
        for d in items {
            assert_eq!(d["status"], "delivered", "{d}");
            assert!(seqs.insert(d["seq"].as_u64().unwrap()), "twice: {d}");
        }
        after = page["next"].as_u64().unwrap();
    }
    assert_eq!(seqs, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_heals_by_itself_and_loses_no_acknowledged_event() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let cluster = nodes(&redis, 2, "");
    let stop = flag();
    let subscribers = subscribers(&cluster, 0..2, &["a", "b"], &["b"], &stop);
    let load = Load::start(&cluster, &["r1", "r2"], 1500, &["a", "b"], &[]);
    load.reach(1000).await;
    redis.kill9();
    // Down: publishes are refused fast with a clear error, and readiness says so.
    for node in &cluster {
        let r = http().get(node.url("/readyz")).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        if status == 200 {
            // The node may not have noticed yet; it must within its read timeout.
            eventually("readiness to drop", WAIT, async || {
                let r = http().get(node.url("/readyz")).send().await.ok()?;
                (r.status() == 503).then_some(())
            })
            .await;
        } else {
            assert_error(status, &body, 503, "log_unavailable");
        }
    }
    let (status, reply) = publish(&cluster[0], json!({"channel": "a", "data": 0})).await;
    assert_error(status, &reply, 503, "log_unavailable");
    let failures = metric(&cluster[0], "herald_redis_append_failures_total").await;
    assert!(
        failures >= Some(1.0),
        "the refused group is counted: {failures:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    let (acked, refused) = load.finish().await;
    for node in &cluster {
        eventually("readiness to return", WAIT, async || {
            let r = http().get(node.url("/readyz")).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }
    assert_eq!(acked.values().map(BTreeSet::len).sum::<usize>(), 3000);
    assert_complete(&subscribers, &acked).await;
    assert!(
        refused
            .iter()
            .all(|r| r["status"] == 503 && r["body"]["error"]["code"] == "log_unavailable"),
        "{refused:?}"
    );
    stop_subscribers(subscribers, &stop).await;
}

#[tokio::test]
async fn ids_deduplicate_and_retention_trims_across_the_cluster() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(
        &redis,
        2,
        "[log]\nmax_events = 5\ntrim_interval = \"50ms\"\n",
    );
    let first = json!({"channel": "d", "type": "t.x", "data": {"k": [1, "é"]}, "id": "order-1"});
    let (status, reply) = publish(&cluster[0], first.clone()).await;
    assert_eq!(status, 201, "{reply}");
    let seq = reply["seq"].as_u64().unwrap();
    // The same id through the other node: the original seq, nothing new written.
    let (status, again) = publish(&cluster[1], first).await;
    assert_eq!((status, again["seq"].as_u64()), (200, Some(seq)), "{again}");
    // The envelope made by the script is the one the single-node store makes.
    let page = get_json(cluster[1].url("/v1/events?channel=d&after=0")).await;
    let envelope = &page["events"][0];
    assert_eq!(envelope["seq"], seq);
    assert_eq!(envelope["type"], "t.x");
    assert_eq!(envelope["data"], json!({"k": [1, "é"]}));
    assert_eq!(envelope["id"], "order-1");
    // A WebSocket publisher on one node; its ack and the other node's history agree.
    let mut ws = ws_connect(&cluster[1], "").await;
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "d", "data": "ws", "ref": "w1"}),
    )
    .await;
    let ack = ws_until_op(&mut ws, "ack", &mut Vec::new()).await;
    assert_eq!(
        (ack["ref"].clone(), ack["seq"].as_u64()),
        (json!("w1"), Some(seq + 1))
    );
    let page = get_json(cluster[0].url(&format!("/v1/events?channel=d&after={seq}"))).await;
    assert_eq!(page["events"][0]["data"], "ws");
    for i in 0..19 {
        publish_one(&cluster[i % 2], "d", json!(i)).await;
    }
    let head = seq + 20;
    eventually("retention to trim", WAIT, async || {
        let page = get_json(cluster[1].url("/v1/events?channel=d&after=0")).await;
        (page["reset"]["oldest"] == head - 4).then_some(page)
    })
    .await;
    let page = get_json(cluster[0].url("/v1/events?channel=d&after=0")).await;
    assert_eq!(page_seqs(&page), (head - 4..=head).collect::<Vec<_>>());
    // Operators can see what the shared log costs.
    let metrics = get_text(cluster[0].url("/metrics")).await;
    assert!(metrics.contains("herald_commit_seconds_count"), "{metrics}");
    assert!(metrics.contains("herald_log_ready 1"), "{metrics}");
    // A subscriber resuming from before the trim is told of the gap, then gets the rest.
    let mut sse = Sse::connect(&cluster[0], "channel=d", Some(1)).await;
    let reset = sse.next().await.unwrap();
    assert_eq!(reset.name.as_deref(), Some("reset"));
    assert_eq!(
        serde_json::from_str::<Value>(&reset.data).unwrap()["oldest"],
        head - 4
    );
    assert_eq!(sse.next().await.unwrap().id, Some(head - 4));
}

#[tokio::test]
async fn a_redis_that_lost_its_data_never_gets_a_seq_reused() {
    let Some(mut redis) = Redis::start_with(false) else {
        return;
    };
    let cluster = nodes(&redis, 1, "");
    let node = &cluster[0];
    for i in 0..5 {
        publish_one(node, "v", json!(i)).await;
    }
    eventually("the node to see seq 5", WAIT, async || {
        (get_json(node.url("/readyz")).await["head"] == 5).then_some(())
    })
    .await;
    // Live before Redis goes: once event 5 came out of history, the subscription is
    // registered for live events and reads nothing more from Redis.
    let mut sse = Sse::connect(node, "channel=v", Some(4)).await;
    assert_eq!(sse.next().await.unwrap().id, Some(5));
    redis.kill9();
    redis.restart(); // empty: it ran without appendonly
    let seq = eventually("publishing again", WAIT, async || {
        let (status, reply) = publish(node, json!({"channel": "v", "data": "after"})).await;
        (status == 201).then(|| reply["seq"].as_u64().unwrap())
    })
    .await;
    assert_eq!(
        seq, 6,
        "seqs 1-5 were handed out already and must not be reused"
    );
    // A subscriber holding cursor 5 gets the new event.
    assert_eq!(sse.next().await.unwrap().id, Some(6));
    let warned = eventually("the loss to be reported", WAIT, async || {
        node.stderr
            .try_iter()
            .find(|l| l.contains("redis lost acknowledged events"))
    })
    .await;
    assert!(warned.contains("appendonly"), "{warned}");
}

#[tokio::test]
async fn a_node_cut_off_longer_than_retention_sends_its_subscribers_to_resume() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(
        &redis,
        2,
        "[log]\nmax_events = 5\ntrim_interval = \"50ms\"\n",
    );
    let (a, b) = (&cluster[0], &cluster[1]);
    let mut ws = ws_connect(b, "").await;
    ws_send(&mut ws, json!({"op": "subscribe", "channel": "g"})).await;
    let mut skipped = Vec::new();
    ws_until_op(&mut ws, "subscribed", &mut skipped).await;
    let signal = |sig: &str| {
        let ok = tool("kill")
            .args([sig, &b.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    // Node b stops (a long GC-like pause, a frozen VM) while the log moves on without it and
    // retention drops events it never read.
    signal("-STOP");
    for i in 0..20 {
        publish_one(a, "g", json!(i)).await;
    }
    eventually("retention to trim", WAIT, async || {
        let page = get_json(a.url("/v1/events?channel=g&after=0")).await;
        (page["reset"]["oldest"] == 16).then_some(())
    })
    .await;
    signal("-CONT");
    // b notices the hole and drops its live subscribers instead of skipping silently...
    let mut last = 0;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match ws_read(&mut ws).await {
                WsRead::Json(v) if v["op"] == "event" => last = v["seq"].as_u64().unwrap(),
                WsRead::Json(_) => {}
                WsRead::Closed(close) => return close,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("still open after {WAIT:?}, last seq {last}"));
    assert_eq!(closed.map(|c| c.0), Some(4008));
    assert!(last < 16, "got {last} without hearing of the gap");
    // ...which resume from their cursor and are told what was lost.
    let mut ws = ws_connect(b, "").await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "g", "since": last}),
    )
    .await;
    let reset = ws_until_op(&mut ws, "reset", &mut skipped).await;
    assert_eq!(reset["oldest"], 16);
    for seq in 16..=20 {
        assert_eq!(
            ws_until_op(&mut ws, "event", &mut skipped).await["seq"],
            seq
        );
    }
}

#[tokio::test]
async fn an_endpoint_made_on_one_node_is_at_once_visible_and_editable_on_another() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(&redis, 2, WEBHOOKS);
    let (a, b) = (&cluster[0], &cluster[1]);
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let (status, endpoint) =
        create_webhook(a, json!({"url": receiver.url(), "channels": ["e"]})).await;
    assert_eq!(status, 201, "{endpoint}");
    let id = endpoint["id"].as_str().unwrap();
    // No waiting for b to refresh: a client behind a balancer reads its own writes.
    let got = get_json(b.url(&format!("/v1/webhooks/{id}"))).await;
    assert_eq!(got["url"], receiver.url());
    let r = http()
        .patch(b.url(&format!("/v1/webhooks/{id}")))
        .json(&json!({"enabled": false, "description": "paused"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = get_json(a.url(&format!("/v1/webhooks/{id}"))).await;
    assert_eq!(
        (got["enabled"].clone(), got["description"].clone()),
        (json!(false), json!("paused"))
    );
    let list = get_json(a.url("/v1/webhooks")).await;
    assert_eq!(list["webhooks"][0]["id"], id);
    let r = http()
        .delete(b.url(&format!("/v1/webhooks/{id}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = http()
        .get(a.url(&format!("/v1/webhooks/{id}")))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordered_endpoint_gets_one_delivery_at_a_time_from_the_whole_cluster() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(&redis, 3, WEBHOOKS);
    // Every third request fails, so the head is retried while every node is eager to send.
    // Each request is held for 20 ms, so two in flight at once would be seen.
    let plan = |n: usize, _: &crate::webhooks::Received| {
        Reply::After(
            Duration::from_millis(20),
            if n % 3 == 1 { 500 } else { 200 },
        )
    };
    let receiver = Receiver::start(plan).await;
    // The control: the same load to an unordered endpoint does overlap, so the check can see
    // concurrency when there is some.
    let unordered = Receiver::start(plan).await;
    let (status, endpoint) = create_webhook(
        &cluster[0],
        json!({"url": receiver.url(), "channels": ["o"], "ordered": true}),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let (_, control) = create_webhook(
        &cluster[1],
        json!({"url": unordered.url(), "channels": ["o"]}),
    )
    .await;
    let ids = [
        endpoint["id"].as_str().unwrap(),
        control["id"].as_str().unwrap(),
    ];
    wait_for_endpoints(&cluster, &ids).await;
    let mut seqs = Vec::new();
    for i in 0..60 {
        seqs.push(publish_one(&cluster[i % 3], "o", json!(i)).await);
    }
    eventually("60 delivered", WAIT, async || {
        (receiver.delivered().len() == 60).then_some(())
    })
    .await;
    let replies = receiver.replies.lock().unwrap().clone();
    assert!(
        replies.iter().any(|(_, s)| *s == 500),
        "failures were injected"
    );
    // Never a later seq before the earlier one succeeded, whichever node sent it.
    let mut next = 0;
    for (seq, status) in &replies {
        assert_eq!(*seq, seqs[next], "out of order: {replies:?}");
        if *status == 200 {
            next += 1;
        }
    }
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        receiver.max_concurrent.load(SeqCst),
        1,
        "ordered: one delivery at a time from the whole cluster"
    );
    eventually("the unordered endpoint's 60", WAIT, async || {
        (unordered.delivered().len() == 60).then_some(())
    })
    .await;
    assert!(
        unordered.max_concurrent.load(SeqCst) > 1,
        "the control saw no overlap"
    );
    let mut per_node = Vec::new();
    for node in &cluster {
        per_node.push(delivered_by(node).await);
    }
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "deliveries should come from several nodes: {per_node:?}"
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` CLI.
pub fn make_certs(dir: &std::path::Path) -> bool {
    let run = |args: &[&str]| {
        tool("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=herald test CA",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "redis.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ])
}

#[tokio::test]
async fn nodes_reach_redis_over_tls_and_refuse_an_unknown_certificate() {
    let Some(plain) = Redis::start() else { return };
    drop(plain);
    let dir = tempfile::tempdir().unwrap();
    if !make_certs(dir.path()) {
        dependency_missing("openssl (test certificates)", "apt-get install -y openssl");
        return;
    }
    let port = free_port();
    let mut redis = tool("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .args([
            "--tls-cert-file",
            "redis.pem",
            "--tls-key-file",
            "redis.key",
        ])
        .args([
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (tls) did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("rediss://127.0.0.1:{port}");
    let ca = dir.path().join("ca.pem");
    let toml = format!("[redis]\nurl = \"{url}\"\ntls_ca = \"{}\"\n", ca.display());
    let (a, b) = (Herald::start(&toml), Herald::start(&toml));
    let mut sse = Sse::connect(&b, "channel=t", Some(0)).await;
    let seq = publish_one(&a, "t", json!("over tls")).await;
    assert_eq!(sse.next().await.unwrap().id, Some(seq));
    // Without the CA, the certificate is not trusted: the node refuses to start, and says why.
    let bad = tempfile::tempdir().unwrap();
    let config = bad.path().join("herald.toml");
    std::fs::write(&config, format!("[redis]\nurl = \"{url}\"\n")).unwrap();
    let out = herald_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(bad.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output_within();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("redis"), "{stderr}");
    let _ = redis.kill();
    let _ = redis.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_shutting_down_hands_its_unfinished_deliveries_to_the_others() {
    let Some(redis) = Redis::start() else { return };
    // A lease far longer than the test: only a claim handed back can be retried in time.
    let extra = "lease = \"10m\"\n[server]\nshutdown_grace = \"500ms\"\n\
                 [webhooks]\nallow_private = true\ntimeout = \"60s\"\n";
    let mut a = nodes(&redis, 1, extra).remove(0);
    // The first request hangs (node a is stuck on it); later ones succeed.
    let receiver = Receiver::start(|n, _| {
        if n == 0 {
            Reply::Hang(Duration::from_secs(120))
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let (status, endpoint) =
        create_webhook(&a, json!({"url": receiver.url(), "channels": ["h"]})).await;
    assert_eq!(status, 201, "{endpoint}");
    let seq = publish_one(&a, "h", json!("stuck")).await;
    eventually("node a to be stuck on the delivery", WAIT, async || {
        (receiver.count() == 1).then_some(())
    })
    .await;
    let b = nodes(&redis, 1, extra).remove(0);
    wait_for_endpoint(std::slice::from_ref(&b), endpoint["id"].as_str().unwrap()).await;
    // A rolling restart: a is told to stop while its attempt hangs.
    assert!(a.terminate().success());
    eventually("node b to deliver what a left", WAIT, async || {
        receiver.delivered().contains(&seq).then_some(())
    })
    .await;
    // The receiver sees the request before b has read its answer and counted it.
    eventually("node b to count its delivery", WAIT, async || {
        (delivered_by(&b).await == 1).then_some(())
    })
    .await;
    assert_eq!(delivered_by(&b).await, 1);
}

/// One `INFO` field of a Redis server, over a raw connection.
fn redis_info(port: u16, field: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"INFO stats\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains(&format!("{field}:")) || !text.ends_with("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO: {text}"))
}

/// All seqs of `query`, paging with `next`; also the largest page seen.
async fn page_through(node: &Herald, query: &str) -> (Vec<u64>, usize) {
    let (mut after, mut seqs, mut largest) = (0, Vec::new(), 0);
    loop {
        let page =
            get_json(node.url(&format!("/v1/events?{query}&after={after}&limit=1000"))).await;
        let events = page["events"].as_array().unwrap();
        largest = largest.max(events.len());
        seqs.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
        let next = page["next"].as_u64().unwrap();
        if events.is_empty() && next == after {
            return (seqs, largest);
        }
        after = next;
    }
}

/// #10 item 2, on Redis: an id is scoped to its channel across the cluster too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_ids_are_scoped_to_their_channel_on_redis() {
    let Some(redis) = Redis::start() else { return };
    let cluster = nodes(&redis, 2, "");
    let squat = json!({"channel": "chat:eve", "id": "order-1001", "data": "squat"});
    let (status, eve) = publish(&cluster[0], squat).await;
    assert_eq!(status, 201);
    let real = json!({"channel": "orders", "id": "order-1001", "data": {"total": 5}});
    let (status, first) = publish(&cluster[1], real.clone()).await;
    assert_eq!(status, 201, "the real order is written: {first}");
    assert_ne!(first["seq"], eve["seq"]);
    let (status, again) = publish(&cluster[0], real).await;
    assert_eq!((status, &again["seq"]), (200, &first["seq"]));
    let page = get_json(cluster[0].url("/v1/events?channel=orders")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

/// #10 item 13: a pattern read is filtered inside Redis and bounded in bytes, so it never
/// pulls a large log over the connection that appends use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item13_pattern_reads_send_only_what_they_return() {
    let Some(redis) = Redis::start() else { return };
    let node = &nodes(&redis, 1, "")[0];
    // 1,600 events of 5 KB: 8 MB in the log.
    let blob = "x".repeat(5000);
    for _ in 0..8 {
        let batch: Vec<Value> = (0..200)
            .map(|_| json!({"channel": "bulk", "data": blob}))
            .collect();
        let (status, v) = publish(node, Value::Array(batch)).await;
        assert_eq!(status, 201, "{v}");
    }
    // The node's follower has read everything, so the bytes counted below are the read's.
    eventually("the follower to catch up", WAIT, async || {
        (get_json(node.url("/readyz")).await["head"] == 1600).then_some(())
    })
    .await;
    let before = redis_info(redis.port, "total_net_output_bytes");
    let page = get_json(node.url("/v1/events?channel=none:*&after=0&limit=1000")).await;
    let sent = redis_info(redis.port, "total_net_output_bytes") - before;
    assert!(page["events"].as_array().unwrap().is_empty());
    assert_eq!(page["next"], 1600, "{page}");
    assert!(
        sent < 256 * 1024,
        "a read that matched nothing made Redis send {sent} bytes"
    );
    // Matching reads come in pages of at most ~1 MiB of envelopes, and paging gets all.
    for query in ["channel=bul*", "channel=bulk", "channel=bulk&channel=b*"] {
        let (seqs, largest) = page_through(node, query).await;
        assert_eq!(seqs, (1..=1600).collect::<Vec<u64>>(), "{query}");
        assert!(
            largest < 1000 && largest > 100,
            "{query}: page of {largest}"
        );
    }
}

/// #10 item 11: the Redis password never reaches the log, working or failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_the_redis_password_is_never_logged() {
    let Some(redis) = Redis::start_with_args(true, &["--requirepass", "s3cret-pw-42"]) else {
        return;
    };
    let url = format!("redis://:s3cret-pw-42@127.0.0.1:{}", redis.port);
    let node = Herald::start(&format!("[redis]\nurl = \"{url}\"\n"));
    publish_one(&node, "a", json!(1)).await;
    let mut lines = node.startup_log.clone();
    lines.extend(node.stderr.try_iter());
    assert!(
        lines.iter().any(|l| l.contains("redis://***@127.0.0.1")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("s3cret-pw-42")),
        "{lines:?}"
    );
    // A wrong password: startup fails, and says so without quoting it.
    let dir = tempfile::tempdir().unwrap();
    let out = herald_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .args([
            "--redis",
            &format!("redis://:wrong-pw-77@127.0.0.1:{}", redis.port),
        ])
        .output_within();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("wrong-pw-77"), "{err}");
}

/// #11: a webhook store failure is reported as one, not as "the event log is unreachable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_store_outage_is_reported_as_such() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let node = &nodes(&redis, 1, "")[0];
    let r = http().get(node.url("/v1/webhooks")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    redis.kill9();
    let r = http().get(node.url("/v1/webhooks")).send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").cloned();
    let body: Value = r.json().await.unwrap();
    assert_error(status, &body, 503, "webhook_store_unavailable");
    assert!(retry_after.is_some(), "{body}");
    let (status, body) = publish(node, json!({"channel": "c", "data": 1})).await;
    assert_error(status, &body, 503, "log_unavailable");
}

/// `scripts/check-redis` (the one check of the redis-server on PATH, shared with
/// `scripts/test`): Ok, or what it said.
fn redis_usable() -> Result<(), String> {
    redis_check(None)
}

fn redis_check(path: Option<&std::ffi::OsStr>) -> Result<(), String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-redis");
    let mut command = tool("bash");
    command.arg(script);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let out = command.output_within();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Debian 11 and Ubuntu 22.04 ship Redis 6.0, whose Lua runtime Herald's scripts outgrow: the
/// test harness (through a stub `redis-server` that reports 6.0) and Herald itself (through
/// a stub server that answers INFO as 6.0 does) both say so, naming the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_redis_is_refused_by_name() {
    let stub = tempfile::tempdir().unwrap();
    let fake = stub.path().join("redis-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'Redis server v=6.0.16 sha=00000000:0 malloc=jemalloc-5.2.1 bits=64'\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut path = std::ffi::OsString::from(stub.path());
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let why = redis_check(Some(&path)).unwrap_err();
    assert!(why.contains("6.0.16") && why.contains("7.0"), "{why}");

    // A server speaking RESP that says it is 6.0.16: Herald refuses to start on it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(fake_redis(socket, "6.0.16"));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        herald_command()
            .args(["serve", "--listen", "127.0.0.1:0", "--redis"])
            .arg(format!("redis://{addr}"))
            .arg("--data")
            .arg(dir.path())
            .output_within()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("Redis 6.0.16 is too old") && err.contains("7.0"),
        "{err}"
    );
}

/// Just enough of RESP2 for a client to connect: INFO says `version`, GET finds nothing,
/// everything else is OK.
async fn fake_redis(mut socket: tokio::net::TcpStream, version: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Whole commands (arrays of bulk strings) at the front of `buf`.
        while let Some((args, used)) = resp_command(&buf) {
            buf.drain(..used);
            let reply = match args.first().map(|a| a.to_ascii_uppercase()) {
                Some(c) if c == "INFO" => {
                    let body = format!("# Server\r\nredis_version:{version}\r\n");
                    format!("${}\r\n{body}\r\n", body.len())
                }
                Some(c) if c == "GET" => "$-1\r\n".to_string(),
                Some(c) if c == "CONFIG" => "*0\r\n".to_string(),
                _ => "+OK\r\n".to_string(),
            };
            if socket.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        match socket.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
}

/// One RESP array of bulk strings from the start of `buf`: its items and its length.
fn resp_command(buf: &[u8]) -> Option<(Vec<String>, usize)> {
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    };
    let (head, mut at) = line(0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, next) = line(at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        args.push(String::from_utf8_lossy(&buf[next..next + len]).into_owned());
        at = next + len + 2;
    }
    Some((args, at))
}

/// The newest attempts, read back from the end of each endpoint's attempt log (XREVRANGE
/// on Redis), newest first across endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_deliveries_are_read_from_the_end_of_the_log() {
    let Some(redis) = Redis::start() else { return };
    let node = nodes(&redis, 1, "[webhooks]\nallow_private = true\n").remove(0);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let mut ids = Vec::new();
    for channel in ["a", "b"] {
        let (status, e) =
            create_webhook(&node, json!({"url": receiver.url(), "channels": [channel]})).await;
        assert_eq!(status, 201, "{e}");
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let mut made = Vec::new();
    for id in [&ids[0], &ids[1], &ids[0], &ids[0]] {
        let r = http()
            .post(node.url(&format!("/v1/webhooks/{id}/test")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        made.push(id.clone());
    }
    let page = get_json(node.url("/v1/webhooks/deliveries?limit=3")).await;
    let mut listed: Vec<&str> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["endpoint"].as_str().unwrap())
        .collect();
    // The last three made (attempts within one millisecond may list in either order).
    listed.sort_unstable();
    let mut newest: Vec<&str> = made[1..].iter().map(String::as_str).collect();
    newest.sort_unstable();
    assert_eq!(listed, newest, "{page}");
    let one = get_json(node.url(&format!(
        "/v1/webhooks/deliveries?endpoint={}&limit=2",
        ids[0]
    )))
    .await;
    let times: Vec<&str> = one["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["time"].as_str().unwrap())
        .collect();
    assert_eq!(times.len(), 2, "{one}");
    assert!(times[0] >= times[1], "{one}");
    assert!(
        one["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["endpoint"] == ids[0].as_str()),
        "only the endpoint asked for: {one}"
    );
}
