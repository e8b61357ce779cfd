//! README promises that had no test of their own (issue #11, item 8).

use serde_json::{json, Value};

use crate::common::*;
use crate::webhooks::{create_webhook, eventually};

/// "Redirects are not followed": a 302 is a failed attempt, and its target never hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_redirects_are_not_followed() {
    let h = Herald::start("[webhooks]\nallow_private = true\nretry_schedule = [\"1h\"]\n");
    let (target, target_got) = local_app().await;
    let redirect = axum::Router::new().fallback(move || {
        let to = format!("{target}/stolen");
        async move { (axum::http::StatusCode::FOUND, [("location", to)]) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, redirect).await.unwrap() });
    let (status, ep) = create_webhook(
        &h,
        json!({"url": format!("http://{addr}/hook"), "channels": ["r"]}),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    publish_one(&h, "r", json!(1)).await;
    let id = ep["id"].as_str().unwrap().to_string();
    let attempt = eventually("the attempt", WAIT, async || {
        let v = get_json(h.url(&format!("/v1/webhooks/{id}/deliveries"))).await;
        v["deliveries"].as_array().and_then(|d| d.first().cloned())
    })
    .await;
    assert_eq!(attempt["status_code"], 302, "{attempt}");
    assert_eq!(attempt["status"], "retrying", "{attempt}");
    assert!(
        target_got.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
}

/// "`HERALD_*` environment variables override herald.toml, flags override both."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_the_file_and_flags_override_both() {
    let h = Herald::start_with_env(
        "[limits]\nmax_batch = 5\n",
        &[("HERALD_LIMITS_MAX_BATCH", "3")],
    );
    let batch = |n: usize| Value::Array(vec![json!({"channel": "p", "data": 1}); n]);
    let (status, v) = publish(&h, batch(3)).await;
    assert_eq!(status, 201, "{v}");
    let (status, v) = publish(&h, batch(4)).await;
    assert_error(status, &v, 413, "batch_too_large");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit is 3"));
    // `--listen` (a flag, which the harness always passes) wins over HERALD_LISTEN.
    let h = Herald::start_with_env("", &[("HERALD_LISTEN", "127.0.0.1:1")]);
    assert_ne!(h.addr.port(), 1);
}

/// "Keys are never logged": an API key used right and wrong, and a token, leave no trace in
/// the server's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_log() {
    let h = Herald::start_with_env(
        "[auth]\napi_keys = [\"k-secret-4711\"]\n",
        &[("HERALD_LOG", "debug")],
    );
    for key in ["k-secret-4711", "k-wrong-4712"] {
        http()
            .post(h.url("/v1/events"))
            .bearer_auth(key)
            .json(&json!({"channel": "a", "data": 1}))
            .send()
            .await
            .unwrap();
        http()
            .get(h.url(&format!("/v1/sse?channel=a&token={key}")))
            .send()
            .await
            .unwrap();
    }
    // A marker request logged after them: once its line is read, every line before it is.
    http().get(h.url("/marker-4713")).send().await.unwrap();
    let mut lines = h.startup_log.clone();
    let deadline = std::time::Instant::now() + WAIT;
    while !lines.iter().any(|l| l.contains("marker-4713")) {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        lines.push(h.stderr.recv_timeout(wait).expect("the marker's log line"));
    }
    // The level asked for is the level run: debug lines (each request's) are there to check.
    assert!(
        lines.iter().any(|l| l.contains("DEBUG")),
        "no debug line was logged: {lines:?}"
    );
    for line in &lines {
        assert!(
            !line.contains("k-secret-4711") && !line.contains("k-wrong-4712"),
            "{line}"
        );
    }
}

/// "`nbf`: a token is not valid before it" (with 5 s of leeway for clocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refused_before_its_nbf() {
    let h = Herald::start("[auth]\napi_keys = [\"k\"]\njwt_secret = \"s\"\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |nbf: u64| {
        let claims = json!({"sub": "t", "exp": now + 3600, "nbf": nbf, "sub_channels": ["*"]});
        let key = jsonwebtoken::EncodingKey::from_secret(b"s");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let status = |t: String| {
        let url = h.url(&format!("/v1/events?channel=a&token={t}"));
        async move { http().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(token(now + 600)).await, 401);
    assert_eq!(status(token(now.saturating_sub(10))).await, 200);
}

/// "`herald forward` resumes after a disconnect": the server dies and comes back while it
/// runs; what was captured meanwhile is replayed, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_resumes_after_the_server_restarts() {
    let mut h = Herald::start_restartable("[[hooks]]\nchannels = [\"in\"]\nverify = \"none\"\n");
    let hook = |h: &Herald, body: &'static str| {
        let url = h.url("/v1/hooks/in");
        async move {
            let r = http().post(url).body(body).send().await.unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    hook(&h, "one").await;
    let (app, got) = local_app().await;
    let port = h.addr.port();
    let child = spawn_forward(&h.url(""), "in", &format!("{app}/x"), Some(0));
    let bodies = |n: usize| {
        let got = got.clone();
        async move {
            eventually(&format!("{n} forwarded"), WAIT, async || {
                let g = got.lock().unwrap();
                (g.len() >= n).then(|| g.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
            })
            .await
        }
    };
    bodies(1).await;
    h.kill9();
    h.restart_on(port);
    hook(&h, "two").await;
    let seen = bodies(2).await;
    drop(child);
    assert_eq!(seen, ["one", "two"]);
    assert_eq!(got.lock().unwrap().len(), 2, "nothing replayed twice");
}

/// "During a rotation both signatures are sent, for `webhooks.rotation_overlap`": after it,
/// only the new secret signs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_secret_stops_signing_when_the_overlap_ends() {
    use crate::webhooks::{Receiver, Reply};
    let h = Herald::start("[webhooks]\nallow_private = true\nrotation_overlap = \"4s\"\n");
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let (status, ep) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["r"]})).await;
    assert_eq!(status, 201, "{ep}");
    let id = ep["id"].as_str().unwrap().to_string();
    let r = http()
        .post(h.url(&format!("/v1/webhooks/{id}/rotate-secret")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let signatures = |n: usize| {
        let got = receiver.got.lock().unwrap();
        got.get(n)
            .and_then(|r| r.header("webhook-signature"))
            .map(|s| s.split(' ').count())
    };
    publish_one(&h, "r", json!(1)).await;
    let first = eventually("the first delivery", WAIT, async || signatures(0)).await;
    assert_eq!(first, 2, "both secrets sign during the overlap");
    // Publish until a delivery carries one signature: the overlap has ended. 4 s is far above
    // the milliseconds the first two deliveries take, so both fall inside it.
    let mut n = 1;
    let single = eventually(
        "a delivery signed by the new secret only",
        WAIT,
        async || {
            publish_one(&h, "r", json!(n)).await;
            let count = eventually("the delivery", WAIT, async || signatures(n)).await;
            n += 1;
            (count == 1).then_some(n)
        },
    )
    .await;
    assert!(single > 2, "the overlap ended at once");
}

/// "Failed requests log at info (4xx) and warn (5xx); successful ones at debug", each line
/// with its request id, method, path and status. JSON lines make the levels exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_levels_follow_the_outcome() {
    // A connect hook that points nowhere gives a 5xx on demand (503 proxy_unavailable).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/connect", dead.local_addr().unwrap());
    drop(dead);
    let h = Herald::start_with_env(
        &format!(
            "[server]\nlog_format = \"json\"\n[auth]\napi_keys = [\"k\"]\n\
             [proxy]\nconnect_url = \"{dead_url}\"\n"
        ),
        &[("HERALD_LOG", "info,herald::http=debug")],
    );
    publish_as(&h, "k", json!({"channel": "ok", "data": 1})).await; // 201
    http()
        .get(h.url("/no-such-page-4714"))
        .send()
        .await
        .unwrap(); // 404
    let r = http()
        .get(h.url("/v1/sse?channel=c&marker=5xx-4715"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // The 503's line is the last of the three: once it is read, the others are too.
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !lines.iter().any(|l| l["status"] == 503) {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let line = h.stderr.recv_timeout(wait).expect("the 503's log line");
        if let Ok(v) = serde_json::from_str(&line) {
            lines.push(v);
        }
    }
    let level_of = |status: u64| -> String {
        let line = lines
            .iter()
            .find(|l| l["status"] == status)
            .unwrap_or_else(|| panic!("no line for {status}: {lines:#?}"));
        assert!(
            line["request_id"].is_string()
                && line["method"].is_string()
                && line["path"].is_string(),
            "{line}"
        );
        line["level"].as_str().unwrap().to_string()
    };
    assert_eq!(level_of(201), "DEBUG");
    assert_eq!(level_of(404), "INFO");
    assert_eq!(level_of(503), "WARN");
}
