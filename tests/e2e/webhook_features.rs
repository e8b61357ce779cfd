//! What webhook consumers expect beyond delivery: type patterns, a test event, recovering
//! failed deliveries in one call, and a per-endpoint rate limit.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;
use crate::webhooks::{
    attempts, create_webhook, eventually, set_enabled, verify_with_standardwebhooks, Receiver,
    Reply,
};

const OPEN: &str = "[webhooks]\nallow_private = true\n";

async fn post(h: &Herald, path: &str, body: Value) -> (u16, Value) {
    let r = http().post(h.url(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn type_patterns_pick_events_by_type() {
    let h = Herald::start(OPEN);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (status, created) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["shop"], "types": ["order.*", "refund.issued"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, reply) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["shop"], "types": ["order .*"]}),
    )
    .await;
    assert_error(status, &reply, 400, "invalid_webhook");
    for kind in [
        "order.paid",
        "user.created",
        "order.created",
        "refund.issued",
        "refund.denied",
    ] {
        publish(&h, json!({"channel": "shop", "type": kind, "data": {}})).await;
    }
    publish_one(&h, "shop", json!("untyped")).await;
    eventually("three typed deliveries", WAIT, async || {
        (receiver.delivered().len() == 3).then_some(())
    })
    .await;
    // Give the others every chance to arrive (they must not).
    let marker = publish(
        &h,
        json!({"channel": "shop", "type": "order.last", "data": {}}),
    )
    .await;
    assert_eq!(marker.0, 201);
    eventually("the marker", WAIT, async || {
        (receiver.delivered().len() == 4).then_some(())
    })
    .await;
    let kinds: Vec<String> = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    for k in ["order.paid", "order.created", "refund.issued", "order.last"] {
        assert!(kinds.iter().any(|x| x == k), "{kinds:?}");
    }
}

#[tokio::test]
async fn a_test_event_is_sent_now_signed_and_logged() {
    let h = Herald::start(OPEN);
    let ok = Receiver::start(|_, _| Reply::Status(204)).await;
    let broken = Receiver::start(|_, _| Reply::Status(500)).await;
    let (_, good) = create_webhook(&h, json!({"url": ok.url(), "channels": ["orders"]})).await;
    let (_, bad) = create_webhook(&h, json!({"url": broken.url(), "channels": ["orders"]})).await;
    let (good_id, bad_id) = (good["id"].as_str().unwrap(), bad["id"].as_str().unwrap());

    let (status, sent) = post(&h, &format!("/v1/webhooks/{good_id}/test"), json!({})).await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(
        (&sent["status"], &sent["status_code"], &sent["seq"]),
        (&json!("delivered"), &json!(204), &json!(0))
    );
    let got = ok.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (&body["test"], &body["type"], &body["channel"]),
        (&json!(true), &json!("webhook.test"), &json!("orders"))
    );
    verify_with_standardwebhooks(good["secret"].as_str().unwrap(), &got);

    let custom = json!({"type": "order.paid", "data": {"total": 9}});
    let (status, failed) = post(&h, &format!("/v1/webhooks/{bad_id}/test"), custom).await;
    assert_eq!(status, 200, "{failed}");
    assert_eq!(
        (
            &failed["status"],
            &failed["status_code"],
            &failed["response_body"]
        ),
        (&json!("failed"), &json!(500), &json!("boom"))
    );
    let body: Value = serde_json::from_slice(&broken.got.lock().unwrap()[0].body).unwrap();
    assert_eq!(
        (&body["type"], &body["data"]),
        (&json!("order.paid"), &json!({"total": 9}))
    );
    // No retry is scheduled for a test, and the attempt log keeps it.
    let log = attempts(&h, bad_id, "").await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (&log[0]["seq"], &log[0]["status_code"]),
        (&json!(0), &json!(500))
    );
    assert_eq!(broken.count(), 1);
    // Nothing entered the event log.
    assert_eq!(
        get_json(h.url("/v1/events?channel=*")).await["events"],
        json!([])
    );
}

#[tokio::test]
async fn failed_deliveries_are_recovered_in_one_call() {
    let h = Herald::start(&format!("{OPEN}retry_schedule = []\n"));
    // Fails everything until told otherwise.
    let healthy = Arc::new(Mutex::new(false));
    let flag = healthy.clone();
    let receiver = Receiver::start(move |_, _| {
        if *flag.lock().unwrap() {
            Reply::Status(204)
        } else {
            Reply::Status(500)
        }
    })
    .await;
    let (_, a) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["a"]})).await;
    let (_, b) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["b"]})).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    for ch in ["a", "a", "a", "b"] {
        publish_one(&h, ch, json!({})).await;
    }
    eventually("four failed attempts", WAIT, async || {
        let n = attempts(&h, a_id, "&status=failed").await.len()
            + attempts(&h, b_id, "&status=failed").await.len();
        (n == 4).then_some(())
    })
    .await;
    // Listed together first: every endpoint's failures, newest first, each naming its endpoint.
    let all = get_json(h.url("/v1/webhooks/deliveries?status=failed")).await;
    let listed = all["deliveries"].as_array().unwrap();
    assert_eq!(listed.len(), 4, "{all}");
    assert_eq!(
        listed.iter().filter(|a| a["endpoint"] == a_id).count(),
        3,
        "{all}"
    );
    assert!(
        listed
            .windows(2)
            .all(|w| w[0]["time"].as_str() >= w[1]["time"].as_str()),
        "{all}"
    );
    *healthy.lock().unwrap() = true;
    let (status, reply) = post(
        &h,
        &format!("/v1/webhooks/{a_id}/recover"),
        json!({"since": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!((status, &reply["recovering"]), (202, &json!(3)), "{reply}");
    eventually("a's three delivered", WAIT, async || {
        (attempts(&h, a_id, "&status=delivered").await.len() == 3).then_some(())
    })
    .await;
    // Everything the caller manages, at once; what was delivered since is not sent again.
    let (status, reply) = post(&h, "/v1/webhooks/recover", json!({"since": 0})).await;
    assert_eq!((status, &reply["recovering"]), (202, &json!(1)), "{reply}");
    assert_eq!(reply["endpoints"][a_id], 0);
    eventually("b's delivered", WAIT, async || {
        (attempts(&h, b_id, "&status=delivered").await.len() == 1).then_some(())
    })
    .await;
    let (status, reply) = post(&h, "/v1/webhooks/recover", json!({"since": "yesterday"})).await;
    assert_error(status, &reply, 400, "invalid_since");
}

/// A receiver back from an outage gets its backlog at the endpoint's rate, not all at once.
#[tokio::test]
async fn a_rate_limit_paces_a_backlog() {
    let h = Herald::start(OPEN);
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = arrivals.clone();
    let receiver = Receiver::start(move |_, _| {
        log.lock().unwrap().push(Instant::now());
        Reply::Status(204)
    })
    .await;
    let (status, created) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["burst"], "rate_limit": 5, "enabled": false}),
    )
    .await;
    assert_eq!(
        (status, &created["rate_limit"]),
        (201, &json!(5)),
        "{created}"
    );
    let id = created["id"].as_str().unwrap();
    let (status, reply) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["x"], "rate_limit": 0}),
    )
    .await;
    assert_error(status, &reply, 400, "invalid_webhook");
    let batch: Vec<Value> = (0..20)
        .map(|i| json!({"channel": "burst", "data": {"i": i}}))
        .collect();
    assert_eq!(publish(&h, Value::Array(batch)).await.0, 201);
    // Disabled endpoints do not queue; enable it and replay the backlog instead.
    set_enabled(&h, id, true).await;
    let (status, _) = post(
        &h,
        &format!("/v1/webhooks/{id}/replay"),
        json!({"since": 0}),
    )
    .await;
    assert_eq!(status, 202);
    eventually("all 20", Duration::from_secs(30), async || {
        (receiver.delivered().len() == 20).then_some(())
    })
    .await;
    let times = arrivals.lock().unwrap().clone();
    // A bucket of at most 5 tokens refilled at 5/s: no second can hold more than 10, and 20
    // cannot all arrive in under (20 - 5 - 1) / 5 s.
    let most = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(most <= 10, "{most} deliveries within one second");
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(2800),
        "20 deliveries in {span:?}"
    );
}

/// `/metrics` shows the queue an operator would worry about: how many deliveries wait, and
/// how long the most overdue one has been waiting.
#[tokio::test]
async fn queue_depth_and_overdue_age_are_exported() {
    let h = Herald::start(&format!("{OPEN}max_in_flight = 1\n"));
    let receiver = Receiver::start(|_, _| Reply::Hang(Duration::from_secs(30))).await;
    let (status, _) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["q"]})).await;
    assert_eq!(status, 201);
    for i in 0..3 {
        publish_one(&h, "q", json!(i)).await;
    }
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    eventually("three queued, the oldest overdue", WAIT, async || {
        let text = get_text(h.url("/metrics")).await;
        let depth = gauge(&text, "herald_webhook_queue_depth")?;
        let overdue = gauge(&text, "herald_webhook_oldest_due_seconds")?;
        (depth == 3.0 && overdue >= 0.5).then_some(())
    })
    .await;
}
