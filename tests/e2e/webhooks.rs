//! Outgoing webhooks end to end: a real HTTP receiver on 127.0.0.1 (allowed by config), the
//! real server, signatures checked by the `standardwebhooks` package from PyPI.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::common::*;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn seq(&self) -> u64 {
        serde_json::from_slice::<Value>(&self.body).unwrap()["seq"]
            .as_u64()
            .unwrap()
    }
}

/// What the receiver answers to the n-th request (0-based).
pub enum Reply {
    Status(u16),
    RetryAfter(u16, u64),
    Hang(Duration),
    /// Answers with the status after the delay (requests overlap if Herald sends them so).
    After(Duration, u16),
    /// Sends the status and the start of a body ("ok"), then never finishes the body.
    StallBody(u16),
}

type Plan = Box<dyn Fn(usize, &Received) -> Reply + Send + Sync>;

/// A real HTTP server in the test process that records every request.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    /// Status of each reply, in order.
    pub replies: Arc<Mutex<Vec<(u64, u16)>>>,
    /// Most requests being handled at once.
    pub max_concurrent: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(
        plan: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_on(
            "127.0.0.1:0".parse().unwrap(),
            Arc::default(),
            Arc::default(),
            Box::new(plan),
        )
        .await
    }

    async fn start_on(
        addr: SocketAddr,
        got: Arc<Mutex<Vec<Received>>>,
        replies: Arc<Mutex<Vec<(u64, u16)>>>,
        plan: Plan,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let plan = Arc::new(plan);
        let (g, r) = (got.clone(), replies.clone());
        let now = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_concurrent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let m = max_concurrent.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (got, replies, plan) = (g.clone(), r.clone(), plan.clone());
            let (now, max) = (now.clone(), m.clone());
            async move {
                use std::sync::atomic::Ordering::SeqCst;
                max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
                let received = Received {
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body,
                };
                let n = {
                    let mut got = got.lock().unwrap();
                    got.push(received.clone());
                    got.len() - 1
                };
                // A Pusher app's webhook body carries no seq.
                let seq = serde_json::from_slice::<Value>(&received.body)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .unwrap_or(0);
                let reply = plan(n, &received);
                let (status, response): (u16, Response) = match reply {
                    Reply::Status(s) => (
                        s,
                        (StatusCode::from_u16(s).unwrap(), "boom").into_response(),
                    ),
                    Reply::RetryAfter(s, secs) => (
                        s,
                        (
                            StatusCode::from_u16(s).unwrap(),
                            [("retry-after", secs.to_string())],
                            "later",
                        )
                            .into_response(),
                    ),
                    Reply::Hang(d) => {
                        tokio::time::sleep(d).await;
                        (200, StatusCode::OK.into_response())
                    }
                    Reply::StallBody(s) => {
                        use futures_util::StreamExt;
                        let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(
                            Bytes::from_static(b"ok"),
                        )])
                        .chain(futures_util::stream::pending());
                        (
                            s,
                            (
                                StatusCode::from_u16(s).unwrap(),
                                axum::body::Body::from_stream(chunks),
                            )
                                .into_response(),
                        )
                    }
                    Reply::After(d, s) => {
                        tokio::time::sleep(d).await;
                        (s, StatusCode::from_u16(s).unwrap().into_response())
                    }
                };
                replies.lock().unwrap().push((seq, status));
                now.fetch_sub(1, SeqCst);
                // No keep-alive: a stopped receiver must refuse the next attempt.
                let mut response = response;
                response
                    .headers_mut()
                    .insert("connection", "close".parse().unwrap());
                response
            }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            addr,
            got,
            replies,
            max_concurrent,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    /// Starts again on the same port with a new plan, keeping the records.
    pub async fn restart(
        &mut self,
        plan: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) {
        self.stop();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let bind = tokio::net::TcpListener::bind(self.addr).await;
            if bind.is_ok() {
                drop(bind);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "port did not free up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *self = Self::start_on(
            self.addr,
            self.got.clone(),
            self.replies.clone(),
            Box::new(plan),
        )
        .await;
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Seqs answered with 2xx.
    pub fn delivered(&self) -> BTreeSet<u64> {
        self.replies
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| (200..300).contains(s))
            .map(|(seq, _)| *seq)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns Some, failing the test after WAIT (or `wait`).
pub async fn eventually<T>(
    what: &str,
    wait: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn create_webhook(h: &Herald, body: Value) -> (u16, Value) {
    let r = http()
        .post(h.url("/v1/webhooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Enables or disables an endpoint through the API, asserting it took.
pub async fn set_enabled(h: &Herald, id: &str, enabled: bool) {
    let r = http()
        .patch(h.url(&format!("/v1/webhooks/{id}")))
        .json(&json!({ "enabled": enabled }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

pub async fn attempts(h: &Herald, id: &str, query: &str) -> Vec<Value> {
    let v: Value =
        get_json(h.url(&format!("/v1/webhooks/{id}/deliveries?limit=1000{query}"))).await;
    v["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .clone()
}

/// Verifies each request's signature with the `standardwebhooks` package (PyPI), an
/// implementation independent of ours. Under CI a missing package fails the test.
pub fn verify_with_standardwebhooks(secret: &str, requests: &[Received]) {
    let payload: Vec<Value> = requests
        .iter()
        .map(|r| {
            json!({
                "body": String::from_utf8(r.body.to_vec()).unwrap(),
                "headers": {
                    "webhook-id": r.header("webhook-id").unwrap(),
                    "webhook-timestamp": r.header("webhook-timestamp").unwrap(),
                    "webhook-signature": r.header("webhook-signature").unwrap(),
                }
            })
        })
        .collect();
    let script = r#"
import json, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    print("MISSING"); sys.exit(3)
secret, requests = sys.argv[1], json.load(sys.stdin)
wh = Webhook(secret)
for r in requests:
    wh.verify(r["body"].encode(), r["headers"])
print("OK %d" % len(requests))
"#;
    let mut child = match tool("python3")
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            dependency_missing(&format!("python3 ({e})"), "apt-get install -y python3");
            return;
        }
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&payload).unwrap().as_bytes())
        .unwrap();
    let out = output_of(child, WAIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("MISSING") {
        dependency_missing(
            "the standardwebhooks verifier",
            "python3 -m pip install standardwebhooks",
        );
        return;
    }
    assert!(
        out.status.success(),
        "standardwebhooks rejected a signature: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), format!("OK {}", requests.len()));
}

const OPEN: &str = "[webhooks]\nallow_private = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_signed_envelopes_that_verify_independently() {
    let h = Herald::start(OPEN);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let typed = Receiver::start(|_, _| Reply::Status(200)).await;
    let (status, created) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["orders", "user:*"], "description": "all"}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    let (_, typed_ep) = create_webhook(
        &h,
        json!({"url": typed.url(), "channels": ["*"], "types": ["order.created"]}),
    )
    .await;

    publish(
        &h,
        json!({"channel": "orders", "type": "order.created", "data": {"total": 3}}),
    )
    .await;
    publish_one(&h, "elsewhere", json!(0)).await;
    publish_one(&h, "user:9", json!({"hi": "there"})).await;

    eventually("two deliveries", WAIT, async || {
        (receiver.delivered().len() == 2).then_some(())
    })
    .await;
    eventually("one typed delivery", WAIT, async || {
        (typed.delivered().len() == 1).then_some(())
    })
    .await;
    let got = receiver.got.lock().unwrap().clone();
    let history = get_text(h.url("/v1/events?channel=*")).await;
    for r in &got {
        // Byte-identical to the envelope every other transport carries.
        assert!(
            history.contains(std::str::from_utf8(&r.body).unwrap()),
            "{:?}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("webhook-id"),
            Some(format!("{id}_{}", r.seq()).as_str())
        );
        assert!(r.header("webhook-signature").unwrap().starts_with("v1,"));
    }
    assert_eq!(
        got.iter().map(Received::seq).collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 3])
    );
    assert_eq!(typed.got.lock().unwrap()[0].seq(), 1);
    verify_with_standardwebhooks(&secret, &got);
    verify_with_standardwebhooks(
        typed_ep["secret"].as_str().unwrap(),
        &typed.got.lock().unwrap(),
    );

    // Reads never show the secret.
    let list = get_text(h.url("/v1/webhooks")).await;
    assert!(!list.contains("whsec_"), "{list}");
    let one: Value = get_json(h.url(&format!("/v1/webhooks/{id}"))).await;
    assert!(one.get("secret").is_none());
    assert_eq!(one["pending"], 0);
    let delivered = attempts(&h, &id, "&status=delivered").await;
    assert_eq!(delivered.len(), 2);
    assert_eq!(delivered[0]["status_code"], 204);

    let metrics = get_text(h.url("/metrics")).await;
    assert!(
        metrics.contains("herald_webhook_attempts_total{outcome=\"delivered\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_500_timeout_and_refusal_then_delivers() {
    let h = Herald::start(&format!(
        "{OPEN}timeout = \"300ms\"\nretry_schedule = [\"200ms\", \"200ms\", \"1500ms\", \"1s\"]\n"
    ));
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    let mut receiver = Receiver::start(move |n, _| match n {
        0 => Reply::Status(500),
        _ => {
            stop2.notify_one();
            Reply::Hang(Duration::from_secs(2))
        }
    })
    .await;
    let (_, ep) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["r"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    publish_one(&h, "r", json!("payload")).await;
    // Second attempt hangs past the timeout; take the receiver down so the third is refused.
    stop.notified().await;
    receiver.stop();
    eventually("three attempts", WAIT, async || {
        (attempts(&h, &id, "").await.len() >= 3).then_some(())
    })
    .await;
    receiver.restart(|_, _| Reply::Status(200)).await;
    eventually("delivery", WAIT, async || {
        (!receiver.delivered().is_empty()).then_some(())
    })
    .await;

    let log = eventually("four attempts logged", WAIT, async || {
        let a = attempts(&h, &id, "").await;
        (a.len() == 4).then_some(a)
    })
    .await;
    let statuses: Vec<&str> = log.iter().map(|a| a["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["retrying", "retrying", "retrying", "delivered"]);
    assert_eq!(
        log.iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(log
        .iter()
        .all(|a| a["seq"] == 1 && a["time"].is_string() && a["duration_ms"].is_u64()));
    assert_eq!(log[0]["status_code"], 500);
    assert_eq!(log[0]["response_body"], "boom");
    assert!(
        log[1]["status_code"].is_null() && log[1]["error"].as_str().unwrap().contains("timed out"),
        "{}",
        log[1]
    );
    assert!(
        log[2]["status_code"].is_null() && log[2]["error"].as_str().unwrap().contains("connect"),
        "{}",
        log[2]
    );
    assert_eq!(log[3]["status_code"], 200);
    assert!(log[..3].iter().all(|a| a["next_attempt"].is_string()));
    assert!(log[3]["next_attempt"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_exhausted_retries_fail() {
    let h = Herald::start(&format!("{OPEN}retry_schedule = [\"50ms\", \"50ms\"]\n"));
    let receiver = Receiver::start(|n, r| match (r.seq(), n) {
        (1, 0) => Reply::RetryAfter(429, 2),
        (1, _) => Reply::Status(204),
        _ => Reply::Status(503),
    })
    .await;
    let (_, ep) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["r"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    publish_one(&h, "r", json!(1)).await;
    let log = eventually("delivery after Retry-After", WAIT, async || {
        let a = attempts(&h, &id, "").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let at = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let waited = at(&log[0]["next_attempt"])
        .duration_since(at(&log[0]["time"]))
        .unwrap();
    assert!(
        waited >= Duration::from_millis(1990),
        "Retry-After: 2 must beat the 50ms schedule, got {waited:?}"
    );
    assert_eq!(log[1]["status"], "delivered");

    // A 503 with Retry-After is honoured the same way.
    let busy = Receiver::start(|n, _| {
        if n == 0 {
            Reply::RetryAfter(503, 2)
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let (_, ep503) = create_webhook(&h, json!({"url": busy.url(), "channels": ["r503"]})).await;
    let id503 = ep503["id"].as_str().unwrap().to_string();
    publish_one(&h, "r503", json!(1)).await;
    let log = eventually("delivery after a 503's Retry-After", WAIT, async || {
        let a = attempts(&h, &id503, "").await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let waited = at(&log[0]["next_attempt"])
        .duration_since(at(&log[0]["time"]))
        .unwrap();
    assert_eq!(log[0]["status_code"], 503, "{log:?}");
    assert!(
        waited >= Duration::from_millis(1990),
        "a 503's Retry-After: 2 must beat the 50ms schedule, got {waited:?}"
    );

    // A 503 without Retry-After exhausts the schedule: 3 attempts, then failed (kept, visible).
    let doomed = publish_one(&h, "r", json!(2)).await;
    let failed = eventually("failed", WAIT, async || {
        let a = attempts(&h, &id, "&status=failed").await;
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(
        (failed[0]["seq"].clone(), failed[0]["attempt"].clone()),
        (json!(doomed), json!(3))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failing_past_the_window_is_disabled() {
    let h = Herald::start(&format!("{OPEN}disable_after = \"300ms\"\nretry_schedule = [\"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\", \"100ms\"]\n"));
    let receiver = Receiver::start(|_, _| Reply::Status(500)).await;
    let (_, ep) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["d"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    publish_one(&h, "d", json!(1)).await;
    let v: Value = eventually("disabled", WAIT, async || {
        let v: Value = get_json(h.url(&format!("/v1/webhooks/{id}"))).await;
        (v["enabled"] == false).then_some(v)
    })
    .await;
    assert!(
        v["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("disable_after"),
        "{v}"
    );
    assert_eq!(
        v["pending"], 1,
        "the event stays queued for when the endpoint is re-enabled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_queue_of_1000_loses_no_delivery() {
    let mut h = Herald::start(&format!(
        "{OPEN}max_in_flight_per_endpoint = 4\n[log]\ndurability = \"os\"\n"
    ));
    let receiver = Receiver::start(|_, _| Reply::Hang(Duration::from_millis(5))).await;
    let (_, ep) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["q"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    for b in 0..10 {
        let batch: Vec<Value> = (0..100)
            .map(|i| json!({"channel": "q", "data": b * 100 + i}))
            .collect();
        assert_eq!(publish(&h, Value::Array(batch)).await.0, 201);
    }
    eventually("some deliveries", WAIT, async || {
        (receiver.delivered().len() >= 100).then_some(())
    })
    .await;
    h.kill9();
    let before = receiver.delivered().len();
    assert!(before < 1000, "kill should land mid-queue");
    h.restart();
    eventually("all 1000 delivered", Duration::from_secs(90), async || {
        (receiver.delivered().len() == 1000).then_some(())
    })
    .await;
    assert_eq!(receiver.delivered(), (1..=1000).collect());
    // The attempt log accounts for every event.
    let logged: BTreeSet<u64> = eventually("attempt log complete", WAIT, async || {
        let mut seqs = BTreeSet::new();
        let mut after = 0;
        loop {
            let v: Value = get_json(h.url(&format!(
                "/v1/webhooks/{id}/deliveries?status=delivered&limit=1000&after={after}"
            )))
            .await;
            let page = v["deliveries"].as_array().unwrap();
            if page.is_empty() {
                break;
            }
            seqs.extend(page.iter().map(|a| a["seq"].as_u64().unwrap()));
            after = v["next"].as_u64().unwrap();
        }
        (seqs.len() == 1000).then_some(seqs)
    })
    .await;
    assert_eq!(logged, (1..=1000).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_and_reenabling_delivers_what_waited() {
    let h = Herald::start(OPEN);
    let mut receiver = Receiver::start(|_, _| Reply::Status(410)).await;
    let (_, ep) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["g"]})).await;
    let id = ep["id"].as_str().unwrap().to_string();
    publish_one(&h, "g", json!(1)).await;
    let disabled: Value = eventually("disabled", WAIT, async || {
        let v: Value = get_json(h.url(&format!("/v1/webhooks/{id}"))).await;
        (v["enabled"] == false).then_some(v)
    })
    .await;
    assert!(disabled["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("410"));
    assert_eq!(attempts(&h, &id, "").await[0]["status"], "disabled");
    publish_one(&h, "g", json!(2)).await;
    receiver.restart(|_, _| Reply::Status(200)).await;
    set_enabled(&h, &id, true).await;
    eventually("both delivered", WAIT, async || {
        (receiver.delivered() == BTreeSet::from([1, 2])).then_some(())
    })
    .await;
    assert_eq!(receiver.count(), 3, "one 410, then each event once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_endpoint_delivers_strictly_in_order_under_failures() {
    let h = Herald::start(&format!(
        "{OPEN}retry_schedule = [\"10ms\", \"10ms\", \"10ms\", \"10ms\", \"10ms\"]\n"
    ));
    // Each request is held for 20 ms, so any overlap would be seen.
    let plan = |n: usize, _: &Received| {
        let status = if n % 3 == 1 { 500 } else { 200 };
        Reply::After(Duration::from_millis(20), status)
    };
    let receiver = Receiver::start(plan).await;
    // The control: the same load to an unordered endpoint does overlap, so the check below
    // can see concurrency when there is some.
    let unordered = Receiver::start(plan).await;
    create_webhook(&h, json!({"url": unordered.url(), "channels": ["o"]})).await;
    let (_, _ep) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["o"], "ordered": true}),
    )
    .await;
    let batch: Vec<Value> = (0..40)
        .map(|i| json!({"channel": "o", "data": i}))
        .collect();
    publish(&h, Value::Array(batch)).await;
    eventually("40 delivered", WAIT, async || {
        (receiver.delivered().len() == 40).then_some(())
    })
    .await;
    let replies = receiver.replies.lock().unwrap().clone();
    assert!(
        replies.iter().any(|(_, s)| *s == 500),
        "failures were injected"
    );
    // Never a later seq before the earlier one succeeded; each seq retried until it did.
    let mut expected = 1;
    for (seq, status) in &replies {
        assert_eq!(*seq, expected, "out of order: {replies:?}");
        if *status == 200 {
            expected += 1;
        }
    }
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        receiver.max_concurrent.load(SeqCst),
        1,
        "ordered: one at a time"
    );
    eventually("the unordered endpoint's 40", WAIT, async || {
        (unordered.delivered().len() == 40).then_some(())
    })
    .await;
    assert!(
        unordered.max_concurrent.load(SeqCst) > 1,
        "the control saw no overlap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_resends_history_and_rotation_signs_with_both_secrets() {
    let h = Herald::start(OPEN);
    for i in 1..=4 {
        publish_one(&h, "h", json!(i)).await;
    }
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let old_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (_, ep) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["h"], "secret": old_secret}),
    )
    .await;
    let id = ep["id"].as_str().unwrap().to_string();
    let r = http()
        .post(h.url(&format!("/v1/webhooks/{id}/replay")))
        .json(&json!({"since": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("history delivered", WAIT, async || {
        (receiver.delivered() == BTreeSet::from([1, 2, 3, 4])).then_some(())
    })
    .await;
    let before = receiver.count();
    let r = http()
        .post(h.url(&format!("/v1/webhooks/{id}/replay")))
        .json(&json!({"since": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Counted by seq, not by request: a slow machine may retry a delivery, which is allowed.
    let replayed = || -> BTreeSet<u64> {
        receiver.got.lock().unwrap()[before..]
            .iter()
            .map(Received::seq)
            .collect()
    };
    eventually("replayed again", WAIT, async || {
        (replayed() == BTreeSet::from([3, 4])).then_some(())
    })
    .await;

    let rotated: Value = http()
        .post(h.url(&format!("/v1/webhooks/{id}/rotate-secret")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, old_secret);
    publish_one(&h, "h", json!(5)).await;
    let last = eventually("after rotation", WAIT, async || {
        let got = receiver.got.lock().unwrap();
        got.iter().find(|r| r.seq() == 5).cloned()
    })
    .await;
    assert_eq!(
        last.header("webhook-signature").unwrap().split(' ').count(),
        2
    );
    verify_with_standardwebhooks(&new_secret, std::slice::from_ref(&last));
    verify_with_standardwebhooks(old_secret, std::slice::from_ref(&last));
}

#[tokio::test]
async fn private_and_metadata_destinations_are_refused_by_default() {
    let h = Herald::start("");
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    for (url, kind) in [
        ("http://127.0.0.1:9/hook".to_string(), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data".to_string(),
            "cloud metadata",
        ),
        ("http://10.0.0.8/x".to_string(), "private"),
        (
            format!("http://localhost:{}/hook", receiver.addr.port()),
            "loopback",
        ),
    ] {
        let (status, reply) = create_webhook(&h, json!({"url": url, "channels": ["*"]})).await;
        assert_error(status, &reply, 422, "forbidden_url");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(kind),
            "{reply}"
        );
    }
    for (body, code) in [
        (
            json!({"url": "ftp://example.com/", "channels": ["*"]}),
            "forbidden_url",
        ),
        (
            json!({"url": "https://93.184.216.34/", "channels": []}),
            "invalid_webhook",
        ),
        (
            json!({"url": "https://93.184.216.34/", "channels": ["bad name"]}),
            "invalid_webhook",
        ),
        (
            json!({"url": "https://93.184.216.34/", "channels": ["*"], "secret": "nope"}),
            "invalid_webhook",
        ),
        (json!({"channels": ["*"]}), "invalid_webhook"),
    ] {
        let (status, reply) = create_webhook(&h, body).await;
        let want = if code == "forbidden_url" { 422 } else { 400 };
        assert_error(status, &reply, want, code);
    }
    let r = http()
        .get(h.url("/v1/webhooks/wh_nope"))
        .send()
        .await
        .unwrap();
    assert_error(
        r.status().as_u16(),
        &r.json().await.unwrap(),
        404,
        "not_found",
    );

    // An allowlisted host is permitted.
    let h = Herald::start("[webhooks]\nallow_hosts = [\"127.0.0.1\"]\n");
    let (status, _) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["*"]})).await;
    assert_eq!(status, 201);
    publish_one(&h, "x", json!(1)).await;
    eventually("allowlisted delivery", WAIT, async || {
        (receiver.delivered().len() == 1).then_some(())
    })
    .await;
}

/// Delivery work runs on its own threads, niced below the threads that carry publishes and
/// subscribers (read from the kernel's view of the running process), and still delivers.
#[tokio::test]
async fn delivery_threads_run_below_the_real_time_path() {
    let h = Herald::start(&format!("{OPEN}threads = 2\n"));
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (status, created) =
        create_webhook(&h, json!({"url": receiver.url(), "channels": ["prio"]})).await;
    assert_eq!(status, 201, "{created}");
    let seq = publish_one(&h, "prio", json!({"n": 1})).await;
    eventually("the delivery", Duration::from_secs(10), async || {
        receiver.delivered().contains(&seq).then_some(())
    })
    .await;

    // /proc/<pid>/task/<tid>/stat: "tid (comm) state ..." with nice as the 19th field.
    let mut nice: Vec<(String, i64)> = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", h.pid())).unwrap() {
        let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        nice.push((comm, fields[16].parse().unwrap()));
    }
    let of = |name: &str| -> Vec<i64> {
        nice.iter()
            .filter(|(c, _)| c == name)
            .map(|(_, n)| *n)
            .collect()
    };
    let (delivery, realtime) = (of("herald-webhook"), of("tokio-rt-worker"));
    // Two workers, plus any blocking-pool threads (named alike) they started.
    assert!(delivery.len() >= 2, "webhooks.threads = 2: {nice:?}");
    assert!(!realtime.is_empty(), "{nice:?}");
    let base = realtime[0];
    assert!(realtime.iter().all(|&n| n == base), "{nice:?}");
    assert!(
        delivery.iter().all(|&n| n == (base + 10).min(19)),
        "delivery threads should be 10 nicer than {base}: {nice:?}"
    );
}

/// Credentials in an endpoint's URL (`http://user:pass@host/`) are sent as HTTP Basic
/// authorization, percent-decoded, as receivers behind basic auth expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_url_are_sent_as_basic_auth() {
    let h = Herald::start(OPEN);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let url = format!("http://hook:s%40cret@{}/hook", receiver.addr);
    let (status, created) = create_webhook(&h, json!({"url": url, "channels": ["b"]})).await;
    assert_eq!(status, 201, "{created}");
    publish_one(&h, "b", json!(1)).await;
    let got = eventually("a delivery", WAIT, async || {
        receiver.got.lock().unwrap().first().cloned()
    })
    .await;
    // "hook:s@cret" in base64.
    assert_eq!(got.header("authorization"), Some("Basic aG9vazpzQGNyZXQ="));
}

/// A receiver that sent its status and then stalled the body has answered: the attempt keeps
/// its status once the timeout cuts the body, and the event is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_after_a_2xx_status_still_counts_as_delivered() {
    let h = Herald::start(&format!(
        "{OPEN}timeout = \"300ms\"\nretry_schedule = [\"200ms\", \"200ms\"]\n"
    ));
    let receiver = Receiver::start(|_, _| Reply::StallBody(200)).await;
    let (_, created) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["s"]})).await;
    let id = created["id"].as_str().unwrap().to_string();
    publish_one(&h, "s", json!(1)).await;
    let first = eventually("an attempt logged", WAIT, async || {
        attempts(&h, &id, "").await.into_iter().next()
    })
    .await;
    assert_eq!(first["status"], "delivered", "{first}");
    assert_eq!(first["status_code"], 200, "{first}");
    assert_eq!(first["response_body"], "ok", "{first}");
    // Past the retry schedule: still one request.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 1);
}
