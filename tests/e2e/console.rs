//! What the operator console reads: `GET /v1/stats` (the last minutes, one sample a second)
//! and `GET /v1/webhooks/health`, and the same counters on `/metrics`.

use serde_json::{json, Value};

use crate::common::*;
use crate::webhooks::{create_webhook, eventually, Receiver, Reply};

fn sum(stats: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    stats["samples"].as_array().unwrap().iter().map(f).sum()
}

#[tokio::test]
async fn stats_follow_connections_publishes_and_deliveries() {
    let h = Herald::start("[auth]\napi_keys = [\"k\"]\n");
    let stats = async || -> Value {
        let r = http()
            .get(h.url("/v1/stats?seconds=600"))
            .bearer_auth("k")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    };
    let token = mint_token(&h, "k", json!({"sub_channels": ["c"]})).await;
    let mut a = Sse::connect(&h, &format!("channel=c&token={token}"), None).await;
    let mut b = Sse::connect(&h, &format!("channel=c&token={token}"), None).await;
    for i in 0..5 {
        publish_as(&h, "k", json!({"channel": "c", "data": i})).await;
    }
    for s in [&mut a, &mut b] {
        for _ in 0..5 {
            s.next().await.expect("event");
        }
    }
    eventually("a second's samples count it all", WAIT, async || {
        let s = stats().await;
        let last = s["samples"].as_array()?.last()?.clone();
        let ok = sum(&s, |x| x["published"].as_u64().unwrap()) == 5
            && sum(&s, |x| x["delivered"]["sse"].as_u64().unwrap()) == 10
            && sum(&s, |x| x["commits"].as_u64().unwrap()) >= 1
            && last["connections"]["sse"] == 2
            && last["subscriptions"]["sse"] == 2
            && s["samples"]
                .as_array()?
                .iter()
                .any(|x| x["commit_p99_ms"].as_f64().is_some_and(|ms| ms > 0.0));
        ok.then_some(())
    })
    .await;
    let s = stats().await;
    assert_eq!(s["interval_ms"], 1000);
    assert_eq!(s["log"]["head"], 5);
    assert_eq!(s["cluster"], Value::Null, "a single node has no cluster");
    // Admin only, and the window is bounded.
    let r = http().get(h.url("/v1/stats")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http()
        .get(h.url("/v1/stats?seconds=601"))
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 400, "invalid_seconds");

    let metrics = get_text(h.url("/metrics")).await;
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value(r#"herald_deliveries_total{transport="sse"}"#), 10.0);
    assert_eq!(value(r#"herald_subscriptions_open{transport="sse"}"#), 2.0);
    assert_eq!(value(r#"herald_connections{transport="sse"}"#), 2.0);
    assert!(value("herald_commit_seconds_count") >= 1.0);
    assert_eq!(value("herald_commit_group_events_sum"), 5.0);
    // Every group that reached the two streams went through a dispatch thread, timed.
    let dispatches = value("herald_dispatch_seconds_count");
    assert!(dispatches >= 1.0);
    assert_eq!(value("herald_dispatch_wait_seconds_count"), dispatches);
    assert_eq!(value("herald_presence_members"), 0.0);
    drop((a, b));
    eventually(
        "subscriptions end with their connections",
        WAIT,
        async || {
            let last = stats().await["samples"].as_array()?.last()?.clone();
            (last["subscriptions"]["sse"] == 0 && last["connections"]["sse"] == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn webhook_health_shows_the_last_attempt_streak_and_queue() {
    let h = Herald::start(
        "[webhooks]\nallow_private = true\nmax_in_flight_per_endpoint = 1\n\
         retry_schedule = [\"200ms\", \"2s\"]\n",
    );
    // Two failures, then success: the streak grows to 2 and is cleared.
    let receiver = Receiver::start(|n, _| Reply::Status(if n < 2 { 500 } else { 204 })).await;
    let (status, created) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["h"], "ordered": true}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let health = async || -> Value {
        let v = get_json(h.url("/v1/webhooks/health")).await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id.as_str())
            .cloned()
            .unwrap()
    };
    let fresh = health().await;
    assert_eq!(fresh["queue_depth"], 0);
    assert!(fresh.get("last_status").is_none(), "{fresh}");
    publish_one(&h, "h", json!(1)).await;
    publish_one(&h, "h", json!(2)).await;
    eventually("a failure streak of 2 with both queued", WAIT, async || {
        let v = health().await;
        (v["failure_streak"] == 2 && v["queue_depth"] == 2 && v["last_status_code"] == 500)
            .then_some(v)
    })
    .await;
    eventually("delivered: streak cleared, queue empty", WAIT, async || {
        let v = health().await;
        (v["failure_streak"] == 0
            && v["queue_depth"] == 0
            && v["last_status"] == "delivered"
            && v["oldest_pending_seconds"] == 0.0
            && v["url"] == receiver.url().as_str())
        .then_some(())
    })
    .await;
}
