//! Hostile and unusual input (issue #10): each test names the item it covers and failed
//! before that item was fixed. Everything goes through the real binary over real sockets;
//! raw TCP where no well-behaved client would send what an attacker sends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::common::*;
use crate::webhooks::{create_webhook, eventually};

const KEYED: &str = "[auth]\napi_keys = [\"k-admin\"]\njwt_secret = \"test-secret\"\n";

fn signed(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(b"test-secret");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn in_an_hour() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600
}

async fn reply(r: reqwest::RequestBuilder) -> (u16, Value) {
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn post_json(h: &Herald, path: &str, body: &str) -> reqwest::RequestBuilder {
    http()
        .post(h.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
}

fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// Runs the CLI and returns (stdout, stderr).
fn herald_cli(args: &[&str]) -> (String, String) {
    let out = herald_command()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output_within();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stand-in server whose `/v1/sse` sends `stream` once and then stays open: for frames a
/// real Herald never sends (a broken one, a forged one), to see what `tail` and `forward` do.
async fn fake_sse(stream: &'static str) -> String {
    let app = axum::Router::new().route(
        "/v1/sse",
        axum::routing::get(move || async move {
            let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                bytes::Bytes::from_static(stream.as_bytes()),
            )])
            .chain(futures_util::stream::pending());
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(body),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A captured request as `/v1/hooks` stores it, with the given headers and JSON body.
fn captured(seq: u64, headers: Value, body: &str) -> String {
    let data = json!({"method": "POST", "path": "/v1/hooks/c", "query": "", "headers": headers,
        "encoding": "text", "body": body});
    json!({"seq": seq, "channel": "c", "type": "webhook", "data": data,
        "time": "2026-11-26T00:00:00.000Z"})
    .to_string()
}

// ---------------------------------------------------------------------------------------
// 1. Raw CR/LF in JSON never splits an envelope.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item01_raw_line_breaks_in_published_json_never_split_an_envelope() {
    let h = Herald::start("");
    let bodies = [
        "{\"channel\":\"x\",\"data\":[1,\n\n2]}",
        "{\"channel\":\"x\",\r\"data\":{\"a\":\r\n\"b\\nc\"}}",
        "[{\"channel\":\"x\",\"data\":\n3\r}]",
    ];
    for body in bodies {
        let (status, v) = reply(post_json(&h, "/v1/events", body)).await;
        assert_eq!(status, 201, "{v}");
    }
    let want = vec![json!([1, 2]), json!({"a": "b\nc"}), json!(3)];
    // SSE, read raw: every line is a field line, every data line one whole envelope.
    let mut sse = Sse::connect(&h, "channel=x&last_event_id=0", None).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = sse.next().await.unwrap();
        let v: Value = serde_json::from_str(&e.data).expect("one whole envelope per frame");
        assert_eq!(v["seq"], e.id.unwrap());
        got.push(v["data"].clone());
    }
    assert_eq!(got, want);
    let raw = String::from_utf8_lossy(&sse.raw).into_owned();
    assert!(!raw.contains('\r'), "{raw:?}");
    for line in raw.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["retry: ", "id: ", "data: {\"seq\":", ":"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a stray line in the stream: {line:?}"
        );
    }
    // History and WebSocket carry the same single-line envelopes.
    let history = get_text(h.url("/v1/events?channel=x")).await;
    assert!(!history.contains('\n') && !history.contains('\r'));
    let page: Value = serde_json::from_str(&history).unwrap();
    let data: Vec<Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].clone())
        .collect();
    assert_eq!(data, want);
    let mut ws = ws_connect(&h, "?channel=x&since=0").await;
    let mut events = Vec::new();
    while events.len() < 3 {
        let v = ws_json(&mut ws).await;
        if v["op"] == "event" {
            events.push(v["data"].clone());
        }
    }
    assert_eq!(events, want);
    // `herald tail` prints one envelope per line.
    let (out, err) = herald_cli(&[
        "tail",
        "x",
        "--since",
        "0",
        "--count",
        "3",
        "--server",
        &h.url(""),
    ]);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one envelope per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item01_a_pretty_printed_signed_hook_is_forwarded_byte_for_byte() {
    let h = Herald::start(
        "[[hooks]]\nchannels = [\"gh/*\"]\nverify = \"github\"\nsecret = \"dev secret\"\n",
    );
    // How GitHub and Stripe send JSON: indented, with CRLF or LF line breaks (and no
    // trailing newline, so it is one JSON value, byte for byte).
    let body = "{\r\n  \"ref\": \"refs/heads/main\",\n  \"commits\": [\n    {\"id\": 1}\n  ]\n}";
    let sig = format!("sha256={}", hmac_hex(b"dev secret", &[body.as_bytes()]));
    let (status, v) = reply(
        http()
            .post(h.url("/v1/hooks/gh/push"))
            .header("x-hub-signature-256", &sig)
            .header("x-github-event", "push")
            .body(body),
    )
    .await;
    assert_eq!(status, 202, "{v}");
    // Stored recoverably (as text), on one line.
    let history = get_text(h.url("/v1/events?channel=gh/push")).await;
    assert!(!history.contains('\n'));
    let page: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(page["events"][0]["data"]["encoding"], "text");
    assert_eq!(page["events"][0]["data"]["body"], body);
    // `herald forward` replays the exact bytes, and the signature still verifies.
    let (app, got) = local_app().await;
    let child = spawn_forward(&h.url(""), "gh/*", &format!("{app}/hooks"), Some(0));
    let seen = eventually("the forwarded request", WAIT, async || {
        let g = got.lock().unwrap();
        (!g.is_empty()).then(|| g[0].clone())
    })
    .await;
    let out = child.stop();
    let (_, _, headers, received) = seen;
    assert_eq!(
        received.as_ref(),
        body.as_bytes(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(headers["x-hub-signature-256"].to_str().unwrap(), sig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item01_tail_and_forward_report_a_bad_frame_and_go_on() {
    // Frame 1 is broken (a JSON envelope cut by a blank line); frame 2 is good.
    static STREAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stream = STREAM.get_or_init(|| {
        format!(
            "retry: 100\n\nid: 1\nevent: webhook\ndata: {{\"seq\":1,\"data\":[1,\n\n\
             id: 2\nevent: webhook\ndata: {}\n\n",
            captured(2, json!({"x-good": "yes"}), "{\"ok\":true}")
        )
    });
    let server = fake_sse(stream).await;
    let (out, err) = herald_cli(&["tail", "c", "--count", "1", "--server", &server]);
    let line: Value = serde_json::from_str(out.trim()).expect("the good frame, printed");
    assert_eq!(line["seq"], 2);
    assert!(
        err.contains("seq 1") && err.contains("skipped"),
        "stderr: {err}"
    );

    let (app, got) = local_app().await;
    let child = spawn_forward(&server, "c", &format!("{app}/hooks"), None);
    let seen = eventually("the good frame, forwarded", WAIT, async || {
        let g = got.lock().unwrap();
        (!g.is_empty()).then(|| g[0].clone())
    })
    .await;
    let out = child.stop();
    assert_eq!(seen.3.as_ref(), b"{\"ok\":true}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("seq 1") && err.contains("skipped"), "{err}");
}

// ---------------------------------------------------------------------------------------
// 2. Idempotency keys are scoped to the channel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item02_an_id_on_one_channel_never_shadows_another_channel() {
    let h = Herald::start(KEYED);
    let eve = signed(json!({"sub": "eve", "exp": in_an_hour(), "pub_channels": ["chat:eve"]}));
    let (status, v) = reply(
        post_json(
            &h,
            "/v1/events",
            r#"{"channel":"chat:eve","id":"order-1001","data":"squatting"}"#,
        )
        .bearer_auth(&eve),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let eves = v["seq"].as_u64().unwrap();
    let real = r#"{"channel":"orders","id":"order-1001","data":{"total":5}}"#;
    let (status, v) = reply(post_json(&h, "/v1/events", real).bearer_auth("k-admin")).await;
    assert_eq!(status, 201, "the real order is written: {v}");
    let seq = v["seq"].as_u64().unwrap();
    assert_ne!(seq, eves);
    // Within the channel, the id still deduplicates.
    let (status, v) = reply(post_json(&h, "/v1/events", real).bearer_auth("k-admin")).await;
    assert_eq!((status, v["seq"].as_u64()), (200, Some(seq)));
    let page: Value = serde_json::from_str(
        &http()
            .get(h.url("/v1/events?channel=orders"))
            .bearer_auth("k-admin")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert_eq!(page["events"][0]["data"]["total"], 5);
}

// ---------------------------------------------------------------------------------------
// 3. A failed sync halts the log; nothing it wrote appears without being delivered.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item03_a_failed_sync_halts_writes_and_tells_the_truth() {
    let mut h = Herald::start_with_env("", &[("HERALD_TEST_FAIL_SYNC_AFTER", "2")]);
    let mut live = Sse::connect(&h, "channel=f", None).await;
    for n in 1..=2 {
        let (status, _) = reply(post_json(
            &h,
            "/v1/events",
            &format!(r#"{{"channel":"f","id":"e{n}","data":{n}}}"#),
        ))
        .await;
        assert_eq!(status, 201);
    }
    // The third commit's sync fails: the publisher hears that the outcome is unknown.
    let third = r#"{"channel":"f","id":"e3","data":3}"#;
    let (status, v) = reply(post_json(&h, "/v1/events", third)).await;
    assert_error(status, &v, 503, "outcome_unknown");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("may or may not"));
    // From then on the log takes nothing, says why, and readiness fails.
    let (status, v) = reply(post_json(&h, "/v1/events", r#"{"channel":"f","data":4}"#)).await;
    assert_error(status, &v, 503, "log_failed");
    let r = http().get(h.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let mut ws = ws_connect(&h, "").await;
    ws_json(&mut ws).await; // welcome
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "f", "data": 5, "ref": "r"}),
    )
    .await;
    let v = ws_until_op(&mut ws, "error", &mut Vec::new()).await;
    assert_eq!(v["code"], "log_failed");
    // Nothing undelivered ever became readable here: history and live agree on 1, 2.
    let page = get_json(h.url("/v1/events?channel=f")).await;
    assert_eq!(page_seqs(&page), vec![1, 2]);
    assert_eq!(live.next().await.unwrap().id, Some(1));
    assert_eq!(live.next().await.unwrap().id, Some(2));
    assert!(
        live.next_within(Duration::from_millis(300)).await.is_err(),
        "nothing after 2 reached a live subscriber"
    );
    // After a restart, whatever did land is delivered to a resuming subscriber like any
    // event, and the publisher's retry with the same id is not doubled.
    h.kill9();
    h.env.clear();
    h.restart();
    // (The injected failure comes after the write reached the disk, so it did land.)
    let (status, v) = reply(post_json(&h, "/v1/events", third)).await;
    assert_eq!((status, v["seq"].as_u64()), (200, Some(3)), "{v}");
    let mut resumed = Sse::connect(&h, "channel=f", Some(2)).await;
    let e = resumed.next().await.unwrap();
    assert_eq!(e.id, Some(3));
    assert_eq!(serde_json::from_str::<Value>(&e.data).unwrap()["data"], 3);
}

// ---------------------------------------------------------------------------------------
// 4. Subscription caps hold for URLs too.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item04_urls_cannot_exceed_the_subscription_and_pattern_caps() {
    let h = Herald::start("");
    let many: Vec<String> = (0..101).map(|i| format!("channel=c{i}")).collect();
    let patterns: Vec<String> = (0..11).map(|i| format!("channel=p{i}:*")).collect();
    for (query, code, limit) in [
        (many.join("&"), "too_many_subscriptions", "100"),
        (patterns.join("&"), "too_many_patterns", "10"),
    ] {
        let (status, v) = reply(http().get(h.url(&format!("/v1/sse?{query}")))).await;
        assert_error(status, &v, 400, code);
        assert!(v["error"]["message"].as_str().unwrap().contains(limit));
        let (status, v) = reply(http().get(h.url(&format!("/v1/ws?{query}")))).await;
        assert_error(status, &v, 400, code);
    }
    // At the caps, accepted.
    let ok: Vec<String> = (0..100).map(|i| format!("channel=c{i}")).collect();
    let r = http()
        .get(h.url(&format!("/v1/sse?{}", ok.join("&"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Over WebSocket, one subscribe at a time: the pattern cap counts across them.
    let mut ws = ws_connect(&h, "?channel=a:*").await;
    let mut refused = None;
    for i in 0..12 {
        ws_send(
            &mut ws,
            json!({"op": "subscribe", "channel": format!("q{i}:*"), "ref": i}),
        )
        .await;
        let v = loop {
            let v = ws_json(&mut ws).await;
            if v["ref"] == i {
                break v;
            }
        };
        if v["op"] == "error" {
            refused = Some((i, v));
            break;
        }
    }
    let (i, v) = refused.expect("the 11th pattern is refused");
    assert_eq!((i, v["code"].as_str()), (9, Some("too_many_patterns")));
}

// ---------------------------------------------------------------------------------------
// 5. Incoming-hook signatures cannot be turned into a CPU weapon.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item05_hook_signatures_are_checked_before_the_body_and_bounded() {
    let h =
        Herald::start("[[hooks]]\nchannels = [\"stripe\"]\nverify = \"stripe\"\nsecret = \"sk\"\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let fake = "ab".repeat(32);
    // A stale signature is refused from its headers: the 8 MiB body is never sent.
    let request = format!(
        "POST /v1/hooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: t=1,v1={fake}\r\n\
         Content-Length: 8388000\r\n\r\n"
    );
    let response = raw_http(&h, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 401, "{response}");
    assert!(response.contains("5 minutes"), "{response}");
    // A fresh one still cannot make Herald read more than an event can hold.
    let mut request = format!(
        "POST /v1/hooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: t={now},v1={fake}\r\n\
         Content-Length: 8388000\r\n\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'x', 65_537));
    let response = raw_http(&h, &request, WAIT).await;
    assert_eq!(raw_status(&response), 413, "{response}");
    assert!(response.contains("body_too_large"), "{response}");
    // Many candidates are refused without a MAC each; empty ones are skipped; a handful is
    // fine (one MAC, compared with each).
    let body = r#"{"id":"evt_1"}"#;
    let good = hmac_hex(b"sk", &[now.to_string().as_bytes(), b".", body.as_bytes()]);
    let post = |sig: String| {
        http()
            .post(h.url("/v1/hooks/stripe"))
            .header("stripe-signature", sig)
            .body(body)
    };
    let flood = format!("t={now}{},v1={good}", format!(",v1={fake}").repeat(100));
    let (status, v) = reply(post(flood)).await;
    assert_error(status, &v, 401, "invalid_signature");
    let (status, v) = reply(post(format!("t={now}{},v1={good}", ",v1=".repeat(3000)))).await;
    assert_eq!(status, 202, "empty entries are skipped, not MACed: {v}");
    let (status, v) = reply(post(format!("t={now},v1={fake},v1={good}"))).await;
    assert_eq!(status, 202, "{v}");
}

// ---------------------------------------------------------------------------------------
// 6. Bodies have a deadline; a credential that decides is checked before any body is read.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item06_stalled_bodies_are_cut_off_and_refusals_come_before_reading() {
    let h = Herald::start(&format!("{KEYED}[limits]\nbody_timeout = \"1s\"\n"));
    let head = |extra: &str, length: usize| {
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             {extra}Content-Length: {length}\r\n\r\n"
        )
    };
    // Part of a body, then nothing: cut off with 408.
    let request = format!(
        "{}{{\"channel\":",
        head("Authorization: Bearer k-admin\r\n", 100)
    );
    let response = raw_http(&h, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 408, "{response}");
    assert!(response.contains("body_timeout"), "{response}");
    // A token that may publish nowhere is refused before its body (never sent) is read.
    let reader = signed(json!({"sub": "r", "exp": in_an_hour(), "sub_channels": ["*"]}));
    let request = head(&format!("Authorization: Bearer {reader}\r\n"), 1_000_000);
    let response = raw_http(&h, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 403, "{response}");
    // No credential at all: the same.
    let response = raw_http(&h, head("", 1_000_000).as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 401, "{response}");
    // Webhook management without a key: refused before reading.
    let request =
        "POST /v1/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                   Content-Length: 60000\r\n\r\n";
    let response = raw_http(&h, request.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 401, "{response}");
    // The server is fine afterwards.
    let (status, _) =
        reply(post_json(&h, "/v1/events", r#"{"channel":"a","data":1}"#).bearer_auth("k-admin"))
            .await;
    assert_eq!(status, 201);
}

// ---------------------------------------------------------------------------------------
// 7. A far-future `exp` cannot panic a handler.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item07_a_token_that_never_expires_works_on_every_transport() {
    let h = Herald::start(KEYED);
    let token = signed(
        json!({"sub": "forever", "exp": u64::MAX, "sub_channels": ["*"],
        "pub_channels": ["*"]}),
    );
    let mut sse = Sse::connect(&h, &format!("channel=t&token={token}"), None).await;
    // From seq 0: the WebSocket's subscription may register after the publish below.
    let mut ws = ws_connect(&h, &format!("?channel=t&since=0&token={token}")).await;
    let (status, v) =
        reply(post_json(&h, "/v1/events", r#"{"channel":"t","data":"x"}"#).bearer_auth(&token))
            .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(sse.next().await.unwrap().id, Some(1));
    let v = ws_until_op(&mut ws, "event", &mut Vec::new()).await;
    assert_eq!(v["seq"], 1);
    let r = http()
        .get(h.url("/v1/events?channel=t"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---------------------------------------------------------------------------------------
// 8. No cross-site request forgery through the cookie, a URL or a form.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item08_cookies_urls_and_forms_cannot_write() {
    let h = Herald::start(KEYED);
    let publisher = signed(
        json!({"sub": "p", "exp": in_an_hour(), "sub_channels": ["*"],
        "pub_channels": ["*"]}),
    );
    let body = r#"{"channel":"a","data":1}"#;
    // The cookie never authorizes a write, whatever it holds.
    for cookie in ["k-admin", publisher.as_str()] {
        let (status, v) = reply(
            post_json(&h, "/v1/events", body).header("cookie", format!("herald_token={cookie}")),
        )
        .await;
        assert_error(status, &v, 401, "unauthorized");
        let (status, _) = reply(
            post_json(
                &h,
                "/v1/webhooks",
                r#"{"url":"https://example.com/x","channels":["*"]}"#,
            )
            .header("cookie", format!("herald_token={cookie}")),
        )
        .await;
        assert_eq!(status, 401);
    }
    // An API key counts only in the Authorization header: not in a URL, not in a cookie.
    let (status, v) = reply(http().get(h.url("/v1/sse?channel=a&token=k-admin"))).await;
    assert_error(status, &v, 401, "unauthorized");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Authorization header"));
    let (status, _) = reply(
        http()
            .get(h.url("/v1/events?channel=a"))
            .header("cookie", "herald_token=k-admin"),
    )
    .await;
    assert_eq!(status, 401);
    // A form (text/plain, urlencoded) cannot post JSON, even with a real credential.
    for kind in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, v) = reply(
            http()
                .post(h.url("/v1/events"))
                .header("content-type", kind)
                .bearer_auth("k-admin")
                .body(body),
        )
        .await;
        assert_error(status, &v, 415, "unsupported_media_type");
    }
    // A foreign page's Origin (or a cross-site fetch without one) may not write.
    let (status, v) = reply(
        post_json(&h, "/v1/events", body)
            .bearer_auth("k-admin")
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_error(status, &v, 403, "forbidden_origin");
    let (status, _) = reply(
        post_json(&h, "/v1/events", body)
            .bearer_auth("k-admin")
            .header("sec-fetch-site", "cross-site"),
    )
    .await;
    assert_eq!(status, 403);
    // Reads still take the cookie (EventSource cannot send headers), and a same-origin
    // page may write.
    let r = http()
        .get(h.url("/v1/sse?channel=a"))
        .header("cookie", format!("herald_token={publisher}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = reply(
        post_json(&h, "/v1/events", body)
            .bearer_auth("k-admin")
            .header("origin", h.url(""))
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(status, 201);
}

// ---------------------------------------------------------------------------------------
// 9. Open mode answers only loopback hosts and origins.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item09_open_mode_refuses_foreign_hosts_and_origins() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let h = Herald::start("[server]\nallowed_hosts = [\"herald.test\"]\n");
    let get = |host: &str| format!("GET /v1/events?channel=a HTTP/1.1\r\nHost: {host}\r\n\r\n");
    // DNS rebinding: a page on evil.example whose name now points at 127.0.0.1.
    let response = raw_http(&h, get("evil.example:8080").as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 403, "{response}");
    assert!(response.contains("forbidden_host"), "{response}");
    for host in ["127.0.0.1", "localhost:8080", "[::1]:80", "herald.test"] {
        let response = raw_http(&h, get(host).as_bytes(), WAIT).await;
        assert_eq!(raw_status(&response), 200, "{host}: {response}");
    }
    // Any other page in the developer's browser: no writes, no WebSocket, no CORS.
    let body = r#"{"channel":"a","data":1}"#;
    let (status, v) =
        reply(post_json(&h, "/v1/events", body).header("origin", "https://evil.example")).await;
    assert_error(status, &v, 403, "forbidden_origin");
    let (status, _) = reply(
        http()
            .post(h.url("/v1/hooks/a"))
            .header("origin", "https://evil.example")
            .body("x"),
    )
    .await;
    assert_eq!(status, 403);
    let mut request = h.ws_url("/v1/ws?channel=a").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(refused.is_err(), "a foreign page opened a WebSocket");
    let r = http()
        .request(reqwest::Method::OPTIONS, h.url("/v1/events"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // A page served by Herald itself under an allowed name may use it (same origin).
    let body_len = body.len();
    let post = format!(
        "POST /v1/events HTTP/1.1\r\nHost: herald.test\r\nOrigin: http://herald.test\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n{body}"
    );
    let response = raw_http(&h, post.as_bytes(), WAIT).await;
    assert_eq!(raw_status(&response), 201, "{response}");
    // A page served from loopback (a dev server) is welcome.
    let (status, _) =
        reply(post_json(&h, "/v1/events", body).header("origin", "http://localhost:3000")).await;
    assert_eq!(status, 201);
    let r = http()
        .request(reqwest::Method::OPTIONS, h.url("/v1/events"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
}

// ---------------------------------------------------------------------------------------
// 10. SSRF: more refused ranges, and no system proxy.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item10_embedded_and_reserved_addresses_are_refused_at_creation() {
    let h = Herald::start("");
    let (status, ok) = create_webhook(
        &h,
        // A public literal: no DNS, and no event is published, so nothing is ever sent.
        json!({"url": "https://93.184.216.34/in", "channels": ["*"]}),
    )
    .await;
    assert_eq!(status, 201, "{ok}");
    let id = ok["id"].as_str().unwrap();
    for url in [
        "http://198.18.0.1/",
        "http://192.0.0.170/",
        "http://240.0.0.1/",
        "http://[fec0::1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b::a9fe:a9fe]/latest",
        "http://[64:ff9b:1::1]/",
        "http://[2002:7f00:1::1]/",
        "http://[2002:a00:1::1]/",
        "http://[::127.0.0.1]/",
    ] {
        let (status, v) = create_webhook(&h, json!({"url": url, "channels": ["*"]})).await;
        assert_error(status, &v, 422, "forbidden_url");
        let (status, v) = reply(
            http()
                .patch(h.url(&format!("/v1/webhooks/{id}")))
                .json(&json!({"url": url})),
        )
        .await;
        assert_error(status, &v, 422, "forbidden_url");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item10_deliveries_never_go_through_a_proxy_from_the_environment() {
    // A "proxy" that counts connections: a proxy resolves the target itself, past the guard.
    // The endpoint is localhost:9 (allowed by name here, so the test stays on loopback):
    // without a proxy the delivery goes straight there and is refused.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = proxy.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .iter()
    .map(|k| (*k, proxy_url.as_str()))
    .collect();
    let h = Herald::start_with_env(
        "[webhooks]\nretry_schedule = [\"1h\"]\nallow_hosts = [\"localhost\"]\n",
        &env,
    );
    let (status, ep) = create_webhook(
        &h,
        json!({"url": "http://localhost:9/hook", "channels": ["p"]}),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    let id = ep["id"].as_str().unwrap().to_string();
    publish_one(&h, "p", json!(1)).await;
    let attempt = eventually("a delivery attempt", WAIT, async || {
        let v = get_json(h.url(&format!("/v1/webhooks/{id}/deliveries"))).await;
        v["deliveries"]
            .as_array()
            .filter(|d| !d.is_empty())
            .map(|d| d[0].clone())
    })
    .await;
    assert_ne!(attempt["status"], "delivered", "{attempt}");
    assert_eq!(connections.load(Ordering::SeqCst), 0, "the proxy was used");
}

// ---------------------------------------------------------------------------------------
// 11. Secrets stay out of URLs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item11_browsers_trade_an_api_key_for_a_short_lived_session_token() {
    let h = Herald::start("[auth]\napi_keys = [\"k-admin\"]\n");
    let (status, v) = reply(
        post_json(
            &h,
            "/v1/tokens",
            r#"{"sub_channels":["s:*"],"ttl_secs":60}"#,
        )
        .bearer_auth("k-admin"),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    assert!(!token.contains("k-admin"));
    // It works where the key may not go: in the EventSource URL.
    let r = http()
        .get(h.url(&format!("/v1/sse?channel=s:1&token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Within its grant only, and it manages nothing.
    let (status, _) =
        reply(http().get(h.url(&format!("/v1/sse?channel=other&token={token}")))).await;
    assert_eq!(status, 403);
    let (status, _) = reply(http().get(h.url("/v1/webhooks")).bearer_auth(&token)).await;
    assert_eq!(status, 403);
    // Only an admin mints them, for at most an hour.
    let (status, _) = reply(post_json(&h, "/v1/tokens", "{}").bearer_auth(&token)).await;
    assert_eq!(status, 403);
    let (status, v) =
        reply(post_json(&h, "/v1/tokens", r#"{"ttl_secs":4000}"#).bearer_auth("k-admin")).await;
    assert_error(status, &v, 400, "invalid_ttl");
}

// ---------------------------------------------------------------------------------------
// 12. `herald forward` cannot be driven by an ordinary publisher.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item12_only_hooks_make_webhook_events_and_forward_replays_no_credentials() {
    let h = Herald::start("[[hooks]]\nchannels = [\"gh\"]\nverify = \"github\"\nsecret = \"s\"\n");
    // The type is reserved on every publish path.
    let (status, v) = reply(post_json(
        &h,
        "/v1/events",
        r#"{"channel":"c","type":"webhook","data":{"method":"DELETE"}}"#,
    ))
    .await;
    assert_error(status, &v, 400, "reserved_type");
    let (status, v) = reply(post_json(
        &h,
        "/v1/events",
        r#"[{"channel":"c","data":1},{"channel":"c","type":"webhook","data":2}]"#,
    ))
    .await;
    assert_error(status, &v, 400, "reserved_type");
    let mut ws = ws_connect(&h, "").await;
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "c", "type": "webhook", "data": 1, "ref": 1}),
    )
    .await;
    let v = ws_until_op(&mut ws, "error", &mut Vec::new()).await;
    assert_eq!(v["code"], "reserved_type");
    // A GitHub delivery replayed under a new delivery id is still the same delivery.
    let body = r#"{"zen":"Keep it logically awesome."}"#;
    let sig = format!("sha256={}", hmac_hex(b"s", &[body.as_bytes()]));
    let mut seqs = Vec::new();
    for delivery in ["d-1", "d-2-replayed"] {
        let (status, v) = reply(
            http()
                .post(h.url("/v1/hooks/gh"))
                .header("x-hub-signature-256", &sig)
                .header("x-github-delivery", delivery)
                .body(body),
        )
        .await;
        assert_eq!(status, 202, "{v}");
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs[0], seqs[1]);
    let page = get_json(h.url("/v1/events?channel=gh")).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);

    // Whatever an event says, forward never sends credentials to the local app.
    static FORGED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let stream = FORGED.get_or_init(|| {
        let headers = json!({"authorization": "Bearer stolen", "Cookie": "session=1",
            "proxy-authorization": "Basic x", "x-custom": "kept"});
        format!(
            "id: 1\nevent: webhook\ndata: {}\n\n",
            captured(1, headers, "{}")
        )
    });
    let server = fake_sse(stream).await;
    let (app, got) = local_app().await;
    let child = spawn_forward(&server, "c", &format!("{app}/hooks"), None);
    let (_, _, headers, _) = eventually("the forwarded request", WAIT, async || {
        let g = got.lock().unwrap();
        (!g.is_empty()).then(|| g[0].clone())
    })
    .await;
    drop(child);
    assert_eq!(headers["x-custom"], "kept");
    for name in ["authorization", "cookie", "proxy-authorization"] {
        assert!(headers.get(name).is_none(), "{name} was replayed");
    }
}
