//! The JSON API over real HTTP: publish, batch, idempotency, history, and bad input.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn publish_single_and_batch_then_read_history() {
    let h = Herald::start("");
    let (status, reply) = publish(
        &h,
        json!({"channel": "orders", "type": "order.created", "data": {"id": 7}}),
    )
    .await;
    assert_eq!((status, reply.clone()), (201, json!({"seq": 1})));
    let (status, reply) = publish(
        &h,
        json!([{"channel": "orders", "data": 1}, {"channel": "user:42", "data": "x"}]),
    )
    .await;
    assert_eq!((status, reply), (201, json!({"seqs": [2, 3]})));

    let r = http()
        .get(h.url("/v1/events?channel=orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["seq"], 1);
    assert_eq!(events[0]["channel"], "orders");
    assert_eq!(events[0]["type"], "order.created");
    assert_eq!(events[0]["data"], json!({"id": 7}));
    assert!(events[0]["time"].as_str().unwrap().ends_with('Z'));
    assert!(events[1].get("type").is_none() && events[1].get("id").is_none());
    assert_eq!(page["next"], 3);

    // Patterns, several channels, and paging with after/limit.
    let page: serde_json::Value =
        get_json(h.url("/v1/events?channel=user:*&channel=orders&after=1&limit=1")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["seq"], 2);
    let next = page["next"].as_u64().unwrap();
    let page: serde_json::Value = get_json(h.url(&format!(
        "/v1/events?channel=user:*&channel=orders&after={next}&limit=10"
    )))
    .await;
    assert_eq!(page["events"][0]["seq"], 3);
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn data_is_kept_byte_for_byte() {
    let h = Herald::start("");
    let body = r#"{"channel":"raw","data":{"b": 1.50, "a":[ true ,null]}}"#;
    let r = http()
        .post(h.url("/v1/events"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let text = get_text(h.url("/v1/events?channel=raw")).await;
    assert!(
        text.contains(r#""data":{"b": 1.50, "a":[ true ,null]}"#),
        "{text}"
    );
}

#[tokio::test]
async fn same_id_within_window_returns_original_seq() {
    let h = Herald::start("");
    let (s1, r1) = publish(&h, json!({"channel": "pay", "data": 1, "id": "charge-1"})).await;
    let (s2, r2) = publish(&h, json!({"channel": "pay", "data": 2, "id": "charge-1"})).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(r1, r2);
    // Only one event exists.
    let page: serde_json::Value = get_json(h.url("/v1/events?channel=pay")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["id"], "charge-1");
}

#[tokio::test]
async fn batch_is_atomic_all_or_none() {
    let h = Herald::start("");
    // One bad event refuses the whole batch: nothing is written.
    let (status, reply) = publish(
        &h,
        json!([{"channel": "a", "data": 1}, {"channel": "bad name", "data": 2}]),
    )
    .await;
    assert_error(status, &reply, 400, "invalid_channel");
    assert_eq!(publish_one(&h, "a", json!(3)).await, 1);
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let h = Herald::start("[limits]\nmax_batch = 3\n");
    let client = http();
    let cases: Vec<(&str, u16, &str)> = vec![
        ("", 400, "invalid_json"),
        ("{not json", 400, "invalid_json"),
        ("\"a string\"", 400, "invalid_json"),
        (r#"{"data":1}"#, 400, "invalid_event"),
        (r#"{"channel":"a"}"#, 400, "invalid_event"),
        (r#"{"channel":["a"],"data":1}"#, 400, "invalid_event"),
        (
            r#"{"channel":"a","data":1,"surprise":true}"#,
            400,
            "invalid_event",
        ),
        (
            r#"{"channel":"no spaces","data":1}"#,
            400,
            "invalid_channel",
        ),
        (r#"{"channel":"","data":1}"#, 400, "invalid_channel"),
        (
            r#"{"channel":"a","type":"bad\ntype","data":1}"#,
            400,
            "invalid_type",
        ),
        ("[]", 400, "empty_batch"),
        (
            r#"[{"channel":"a","data":1},{"channel":"a","data":1},{"channel":"a","data":1},{"channel":"a","data":1}]"#,
            413,
            "batch_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let r = client
            .post(h.url("/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let got_status = r.status().as_u16();
        let reply: serde_json::Value = r.json().await.unwrap();
        assert_error(got_status, &reply, status, code);
    }
    // Oversize event (default limit 64 KiB of data).
    let big = "x".repeat(70_000);
    let (status, reply) = publish(&h, json!({"channel": "a", "data": big})).await;
    assert_error(status, &reply, 413, "event_too_large");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("65536"));
    // Oversize body.
    let huge = format!(
        r#"{{"channel":"a","data":"{}"}}"#,
        "y".repeat(9 * 1024 * 1024)
    );
    let r = client
        .post(h.url("/v1/events"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 413, "body_too_large");

    // History: missing channel, bad cursor, bad limit.
    for (query, code) in [
        ("", "missing_channel"),
        ("?channel=a&after=-1", "invalid_cursor"),
        ("?channel=a&after=abc", "invalid_cursor"),
        ("?channel=a&limit=0", "invalid_limit"),
        ("?channel=bad%20name", "invalid_channel"),
    ] {
        let r = client
            .get(h.url(&format!("/v1/events{query}")))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_error(status, &r.json().await.unwrap(), 400, code);
    }
    let r = client.get(h.url("/nope")).send().await.unwrap();
    assert_error(
        r.status().as_u16(),
        &r.json().await.unwrap(),
        404,
        "not_found",
    );
    // The server is still fine.
    assert_eq!(publish_one(&h, "a", json!(1)).await, 1);
}

#[tokio::test]
async fn health_and_readiness() {
    let h = Herald::start("");
    let r = http().get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r: serde_json::Value = get_json(h.url("/readyz")).await;
    assert_eq!(r["status"], "ready");
}

/// With `log_format = "json"` every log line is one JSON object, and a failed request's line
/// carries the id that its error body and `x-request-id` header also give.
#[tokio::test]
async fn errors_and_json_log_lines_share_a_request_id() {
    let mut h = Herald::start("[server]\nlog_format = \"json\"\n");
    for line in &h.startup_log {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    let r = http()
        .post(h.url("/v1/events"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let header = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], header.as_str(), "{body}");
    assert_eq!(header.len(), 16);

    let deadline = std::time::Instant::now() + WAIT;
    let line = loop {
        let line = h
            .stderr
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("no log line for the request");
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["request_id"] == header.as_str() {
            break v;
        }
    };
    assert_eq!(
        (&line["status"], &line["method"]),
        (&json!(400), &json!("POST")),
        "{line}"
    );
    assert_eq!(line["path"], "/v1/events");

    // An id from a proxy in front is kept when plain, replaced when not.
    for (sent, kept) in [
        ("edge-7f.1", true),
        ("bad id", false),
        (&*"x".repeat(65), false),
    ] {
        let r = http()
            .get(h.url("/v1/nope"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let got = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(got == sent, kept, "{sent:?} -> {got:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["request_id"], got.as_str());
    }
    h.terminate();
}

/// `/metrics` counts requests by route template, method and status: bounded labels whatever
/// paths and methods clients send.
#[tokio::test]
async fn http_requests_are_counted_by_route_not_by_path() {
    let h = Herald::start("");
    publish_one(&h, "m", json!(1)).await;
    for path in [
        "/v1/webhooks/wh_one",
        "/v1/webhooks/wh_two",
        "/nope/1",
        "/nope/2",
    ] {
        http().get(h.url(path)).send().await.unwrap();
    }
    let odd = reqwest::Method::from_bytes(b"BREW").unwrap();
    http()
        .request(odd, h.url("/v1/events"))
        .send()
        .await
        .unwrap();
    let text = get_text(h.url("/metrics")).await;
    let series = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with("herald_http_requests_total{") && l.contains(needle))
            .unwrap_or_else(|| panic!("no series with {needle}: {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(
        series(r#"route="/v1/events",method="POST",status="201""#),
        1.0
    );
    assert_eq!(
        series(r#"route="/v1/webhooks/{id}",method="GET",status="404""#),
        2.0
    );
    assert_eq!(
        series(r#"route="unmatched",method="GET",status="404""#),
        2.0
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("herald_http_requests_total{") && l.contains(r#"method="other""#)
        ),
        "{text}"
    );
    assert!(!text.contains("wh_one") && !text.contains("/nope") && !text.contains("BREW"));
    assert!(text.contains("herald_http_request_seconds"), "{text}");
}

/// The operator's counters move with what happens: events by way in, auth failures by code,
/// rate-limit refusals.
#[tokio::test]
async fn operator_counters_follow_publishes_refusals_and_limits() {
    let h = Herald::start(
        "[auth]\napi_keys = [\"k\"]\n[limits]\npublish_rate = 1\npublish_burst = 2\n",
    );
    let send = |body: serde_json::Value, key: &'static str| {
        let r = http()
            .post(h.url("/v1/events"))
            .bearer_auth(key)
            .json(&body)
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert_eq!(
        send(
            json!([{"channel": "c", "data": 1}, {"channel": "c", "data": 2}]),
            "k"
        )
        .await,
        201
    );
    // The bucket refills one token a second: a slow box may see a publish or two through
    // before the refusal. Each one that got through is counted below.
    let mut accepted = 2;
    loop {
        match send(json!({"channel": "c", "data": 3}), "k").await {
            201 if accepted < 10 => accepted += 1,
            status => {
                assert_eq!(status, 429, "after {accepted} accepted");
                break;
            }
        }
    }
    assert_eq!(send(json!({"channel": "c", "data": 4}), "wrong").await, 401);
    let text = get_text(h.url("/metrics")).await;
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}: {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value(r#"herald_events_published_total{ingest="http"}"#),
        f64::from(accepted)
    );
    assert_eq!(value(r#"herald_rate_limited_total{limit="publish"}"#), 1.0);
    assert_eq!(
        value(r#"herald_auth_failures_total{code="unauthorized"}"#),
        1.0
    );
}

/// `herald_connections{transport}` follows subscribers as they come and go.
#[tokio::test]
async fn open_connections_are_counted_by_transport() {
    let h = Herald::start("");
    let gauge = |text: &str, transport: &str| -> f64 {
        let prefix = format!("herald_connections{{transport=\"{transport}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    };
    let a = Sse::connect(&h, "channel=c", None).await;
    let b = Sse::connect(&h, "channel=c", None).await;
    let ws = ws_connect(&h, "?channel=c").await;
    crate::webhooks::eventually("2 SSE and 1 WS counted", WAIT, async || {
        let text = get_text(h.url("/metrics")).await;
        (gauge(&text, "sse") == 2.0 && gauge(&text, "ws") == 1.0).then_some(())
    })
    .await;
    drop((a, b, ws));
    crate::webhooks::eventually("all gone", WAIT, async || {
        let text = get_text(h.url("/metrics")).await;
        (gauge(&text, "sse") == 0.0 && gauge(&text, "ws") == 0.0).then_some(())
    })
    .await;
}

/// Every refusal has the JSON error body, a wrong method too (with its Allow header).
#[tokio::test]
async fn a_wrong_method_gets_the_json_error_and_allow() {
    let h = Herald::start("");
    let r = http().put(h.url("/v1/events")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers()["allow"].to_str().unwrap().to_string();
    assert!(allow.contains("POST"), "{allow}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_error(405, &body, 405, "method_not_allowed");
}
