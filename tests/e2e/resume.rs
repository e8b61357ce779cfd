//! Lossless resume under race: publishers run while SSE and WS subscribers (by channel and by
//! pattern) connect, drop and resume. Each must end with exactly its channels' seqs, in order.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const CHANNELS: [&str; 3] = ["race:a", "race:b", "race:c"];
const EVENTS: usize = 5000;
const PUBLISHERS: usize = 4;

/// Tiny deterministic PRNG (xorshift) so runs are reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Sse,
    Ws,
}

struct Subscriber {
    transport: Transport,
    /// Channel names or patterns, as given to the server.
    names: Vec<&'static str>,
}

impl Subscriber {
    fn new(transport: Transport, names: &[&'static str]) -> Subscriber {
        Subscriber {
            transport,
            names: names.to_vec(),
        }
    }

    fn wants(&self, channel: &str) -> bool {
        self.names.iter().any(|n| match n.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => *n == channel,
        })
    }
}

/// Connects, reads a random number of events, drops the connection, resumes from the last
/// seq seen; stops once it has seen the final seq of its channels.
async fn run_subscriber(
    h_url: String,
    ws_url: String,
    sub: Subscriber,
    seed: u64,
    mut done: watch::Receiver<Option<Log>>,
) -> Vec<u64> {
    let mut rng = Rng(seed);
    let mut got: Vec<u64> = Vec::new();
    let mut reconnects = 0;
    loop {
        let cursor = got.last().copied().unwrap_or(0);
        let budget = 20 + rng.next(400) as usize;
        let finished = match sub.transport {
            Transport::Sse => sse_session(&h_url, &sub, cursor, budget, &mut got, &mut done).await,
            Transport::Ws => ws_session(&ws_url, &sub, cursor, budget, &mut got, &mut done).await,
        };
        if finished {
            assert!(
                reconnects > 3,
                "{:?} {:?} should have resumed several times",
                sub.transport,
                sub.names
            );
            return got;
        }
        reconnects += 1;
    }
}

/// The final log: (seq, channel) of every event, known once the publishers are done.
type Log = std::sync::Arc<Vec<(u64, String)>>;

fn finished(sub: &Subscriber, got: &[u64], done: &watch::Receiver<Option<Log>>) -> bool {
    let borrowed = done.borrow();
    let Some(log) = borrowed.as_ref() else {
        return false;
    };
    let last = log
        .iter()
        .rev()
        .find(|(_, c)| sub.wants(c))
        .map_or(0, |(s, _)| *s);
    got.last().copied().unwrap_or(0) >= last
}

async fn sse_session(
    base: &str,
    sub: &Subscriber,
    cursor: u64,
    budget: usize,
    got: &mut Vec<u64>,
    done: &mut watch::Receiver<Option<Log>>,
) -> bool {
    let query: Vec<String> = sub.names.iter().map(|n| format!("channel={n}")).collect();
    let response = http()
        .get(format!("{base}/v1/sse?{}", query.join("&")))
        .header("Last-Event-ID", cursor.to_string())
        .send()
        .await
        .expect("SSE connect");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut reader = herald::cli::SseReader::default();
    let mut read = 0;
    loop {
        if finished(sub, got, done) {
            return true;
        }
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = done.changed() => continue,
        };
        let Some(Ok(chunk)) = chunk else { return false };
        for event in reader.push(&chunk) {
            let envelope: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(event.id, envelope["seq"].as_u64());
            got.push(event.id.unwrap());
            read += 1;
        }
        if read >= budget && !finished(sub, got, done) {
            return false; // drop mid-stream
        }
    }
}

async fn ws_session(
    base: &str,
    sub: &Subscriber,
    cursor: u64,
    budget: usize,
    got: &mut Vec<u64>,
    done: &mut watch::Receiver<Option<Log>>,
) -> bool {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "{base}/v1/ws?channel={}&since={cursor}",
        sub.names[0]
    ))
    .await
    .expect("WS connect");
    let mut read = 0;
    loop {
        if finished(sub, got, done) {
            return true;
        }
        let message = tokio::select! {
            m = ws.next() => m,
            _ = done.changed() => continue,
        };
        match message {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["op"] == "event" {
                    got.push(v["seq"].as_u64().unwrap());
                    read += 1;
                } else {
                    assert!(v["op"] == "welcome" || v["op"] == "subscribed", "{v}");
                }
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
        if read >= budget && !finished(sub, got, done) {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_lossless_while_publishes_race() {
    let h = Herald::start("[log]\ndurability = \"os\"\n");
    let (done_tx, done_rx) = watch::channel(None);
    let subscribers = vec![
        Subscriber::new(Transport::Sse, &["race:a"]),
        Subscriber::new(Transport::Sse, &["race:*"]),
        Subscriber::new(Transport::Sse, &["race:a", "race:c"]),
        Subscriber::new(Transport::Ws, &["race:b"]),
        Subscriber::new(Transport::Ws, &["race:*"]),
        Subscriber::new(Transport::Ws, &["race:c"]),
    ];
    let mut subs = Vec::new();
    for (i, sub) in subscribers.into_iter().enumerate() {
        let names = sub.names.clone();
        let transport = sub.transport;
        let task = tokio::spawn(run_subscriber(
            h.url(""),
            h.ws_url(""),
            sub,
            0x9e37_79b9 + i as u64 * 7919,
            done_rx.clone(),
        ));
        subs.push((transport, names, task));
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let url = h.url("/v1/events");
        publishers.push(tokio::spawn(async move {
            let client = http();
            let mut rng = Rng(0x1234_5678 + p as u64);
            let mut sent = 0;
            while sent < EVENTS / PUBLISHERS {
                let n = (1 + rng.next(4) as usize).min(EVENTS / PUBLISHERS - sent);
                let batch: Vec<Value> =
                    (0..n).map(|k| json!({"channel": CHANNELS[rng.next(3) as usize], "data": {"p": p, "n": sent + k}})).collect();
                let body = if n == 1 { batch[0].clone() } else { Value::Array(batch) };
                let r = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(r.status(), 201);
                sent += n;
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    // The truth: the whole log, as history.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page: Value =
            get_json(h.url(&format!("/v1/events?channel=*&after={after}&limit=1000"))).await;
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            break;
        }
        after = page["next"].as_u64().unwrap();
        all.extend(events);
    }
    assert_eq!(all.len(), EVENTS);
    let log: Vec<(u64, String)> = all
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["channel"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    done_tx.send(Some(std::sync::Arc::new(log))).unwrap();

    for (transport, names, task) in subs {
        let sub = Subscriber { transport, names };
        let expected: Vec<u64> = all
            .iter()
            .filter(|e| sub.wants(e["channel"].as_str().unwrap()))
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        let got = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("subscriber did not finish")
            .unwrap();
        assert_eq!(
            got.len(),
            expected.len(),
            "{transport:?} {:?}: count (dup or loss)",
            sub.names
        );
        assert_eq!(
            got, expected,
            "{transport:?} {:?}: exact seqs in order",
            sub.names
        );
    }
}
