//! The Pusher protocol through the real clients from npm (`tests/browser/pusher-node.mjs`:
//! pusher-js and the `pusher` server SDK), against the real binary, and what a Pusher event is
//! in Herald: an event with a seq, in history, seen by Herald's own SSE subscribers.
//!
//! Needs `node` and `npm --prefix tests/browser ci` (fails without them, naming what to install).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::common::*;

pub const APP: &str = "[[pusher.apps]]\nid = \"1234\"\nkey = \"app-key\"\nsecret = \"app-secret\"\nclient_events = true\n";

/// A Pusher HTTP API path with Pusher's request signature (computed here, not by Herald).
pub fn pusher_signed(path: &str, body: &str) -> String {
    use hmac::Mac;
    use md5::Digest;
    let md5 = hex::encode(md5::Md5::digest(body.as_bytes()));
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let query = format!("auth_key=app-key&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    format!("{path}?{query}&auth_signature={sig}")
}

/// The scenario script (a test without node and the npm packages fails, naming them).
pub fn script() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = tool("node").arg("--version").output().is_ok()
        && dir.join("node_modules/pusher-js").is_dir()
        && dir.join("node_modules/pusher").is_dir();
    if !ready {
        dependency_missing(
            "node with pusher-js and pusher (the Pusher protocol tests)",
            "apt-get install -y nodejs npm; npm --prefix tests/browser ci",
        );
        return None;
    }
    Some(dir.join("pusher-node.mjs"))
}

/// Where the scenarios connect: each node's host and port.
pub fn servers(nodes: &[&Herald]) -> Vec<Value> {
    nodes
        .iter()
        .map(|h| {
            let url = url::Url::parse(&h.url("/")).unwrap();
            json!({"host": url.host_str().unwrap(), "port": url.port().unwrap()})
        })
        .collect()
}

/// Runs the scenarios (off the async workers: it waits for node); returns the lines
/// printed. Fails on any ERROR.
pub async fn run_scenarios(script: PathBuf, servers: Vec<Value>, only: &[&str]) -> Vec<String> {
    let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || run_blocking(&script, servers, &only))
        .await
        .unwrap()
}

fn run_blocking(script: &std::path::Path, servers: Vec<Value>, only: &[String]) -> Vec<String> {
    let cfg = json!({
        "servers": servers,
        "app": {"id": "1234", "key": "app-key", "secret": "app-secret"},
        "only": if only.is_empty() { Value::Null } else { json!(only) },
    });
    // Each scenario waits for what it checks (bounded by its own waits); the whole run gets
    // WAIT per scenario, so a loaded box slows it down without failing it.
    let out = tool("node")
        .arg(script)
        .arg(cfg.to_string())
        .output_within_for(WAIT * 12);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<String> = stdout.lines().map(String::from).collect();
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("ERROR")).collect();
    assert!(errors.is_empty(), "{errors:#?}\nstderr: {stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("DONE"),
        "{stdout}\n{stderr}"
    );
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_and_the_pusher_sdk_work_unchanged() {
    let Some(script) = script() else { return };
    let h = Herald::start(APP);
    // A Herald-native subscriber on the mapped channel of `news;sports=1,x`.
    let mut sse = Sse::connect(&h, "channel=pusher/1234/news:ssports:e1:cx", Some(0)).await;
    let lines = run_scenarios(script, servers(&[&h]), &[]).await;
    for scenario in [
        "public_and_socket_exclusion",
        "private_auth_and_forgery",
        "presence_members",
        "client_events",
        "encrypted_channel",
        "cache_channels",
        "batch_trigger",
        "signin_and_terminate",
        "forged_api_requests",
    ] {
        assert!(
            lines.contains(&format!("OK {scenario}")),
            "{scenario}: {lines:?}"
        );
    }
    // The Pusher trigger is a Herald event: a seq, the type, the data as JSON.
    let e = sse.next().await.unwrap();
    assert_eq!(e.name.as_deref(), Some("goal"));
    let env: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(env["channel"], "pusher/1234/news:ssports:e1:cx");
    assert_eq!(env["data"], json!({"score": "1-0"}));
    assert!(env["seq"].as_u64().unwrap() >= 1);
    let history = get_json(h.url("/v1/events?channel=pusher/1234/*&limit=1000")).await;
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    for kind in [
        "goal",
        "mark",
        "secret",
        "client-typing",
        "sealed",
        "forecast",
        "one",
        "two",
    ] {
        assert!(kinds.contains(&kind), "{kind} not in history: {kinds:?}");
    }
}

/// Verifies Pusher webhooks with the SDK's validator; returns each one's events.
fn verify_with_the_sdk(
    requests: &[crate::webhooks::Received],
    key: &str,
    secret: &str,
) -> Vec<Value> {
    use std::io::Write;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/pusher-webhook-verify.mjs");
    let input: Vec<Value> = requests
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
                .collect();
            json!({"headers": headers, "body": String::from_utf8_lossy(&r.body)})
        })
        .collect();
    let mut child = tool("node")
        .arg(script)
        .args([key, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(input).to_string().as_bytes())
        .unwrap();
    let out = output_of(child, WAIT);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .flat_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["events"].as_array().unwrap().clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_webhooks_are_durable_and_verify_with_the_sdk() {
    use crate::webhooks::{eventually, Receiver, Reply};
    let Some(script) = script() else { return };
    // The app is down while the events happen (every delivery fails and is retried), and the
    // server is killed before it comes back: what was queued survives the restart.
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = down.clone();
    // What was answered 200, decided and recorded in one step.
    let taken: std::sync::Arc<std::sync::Mutex<Vec<crate::webhooks::Received>>> =
        Default::default();
    let delivered = taken.clone();
    let receiver = Receiver::start(move |_, r| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::Status(503)
        } else {
            delivered.lock().unwrap().push(r.clone());
            Reply::Status(200)
        }
    })
    .await;
    let mut h = Herald::start(&format!(
        "{APP}webhooks = [\"{}\"]\n[webhooks]\nallow_private = true\n\
         retry_schedule = [\"100ms\", \"100ms\", \"200ms\", \"500ms\", \"1s\", \"1s\", \"1s\", \"1s\"]\n",
        receiver.url()
    ));
    // The app's webhook is an endpoint like any other (so it is retried and inspectable).
    let list = get_json(h.url("/v1/webhooks")).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1, "{list}");
    run_scenarios(
        script,
        servers(&[&h]),
        &["presence_members", "client_events"],
    )
    .await;
    eventually("a refused delivery (the app is down)", WAIT, async || {
        let replies = receiver.replies.lock().unwrap().clone();
        replies.iter().any(|(_, s)| *s == 503).then_some(())
    })
    .await;
    h.kill9();
    h.restart();
    down.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(
        "member_removed and client_event webhooks",
        WAIT,
        async || {
            let got = taken.lock().unwrap().clone();
            let bodies: Vec<Value> = got
                .iter()
                .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
                .collect();
            let all: Vec<Value> = bodies
                .iter()
                .flat_map(|b| b["events"].as_array().unwrap().clone())
                .collect();
            // Wait for exactly what is asserted below (deliveries arrive in any order, and
            // both presence channels empty out), not for the first of a kind.
            let room = |name: &str, user: Option<&str>| {
                all.iter().any(|e| {
                    e["name"] == name
                        && e["channel"] == "presence-room"
                        && user.is_none_or(|u| e["user_id"] == u)
                })
            };
            (room("channel_occupied", None)
                && room("member_added", Some("alice"))
                && room("member_removed", Some("bob"))
                && room("channel_vacated", None)
                && all.iter().any(|e| e["event"] == "client-typing"))
            .then_some(())
        },
    )
    .await;
    let got = taken.lock().unwrap().clone();
    let events = verify_with_the_sdk(&got, "app-key", "app-secret");
    let find = |name: &str, channel: &str| {
        events
            .iter()
            .find(|e| e["name"] == name && e["channel"] == channel)
            .unwrap_or_else(|| panic!("no {name} on {channel}: {events:#?}"))
            .clone()
    };
    find("channel_occupied", "presence-room");
    // Deliveries to one endpoint run concurrently (it is not `ordered`), so the two joins may
    // arrive either way round: look for each, not for the first.
    let has = |name: &str, user: &str| {
        events
            .iter()
            .any(|e| e["name"] == name && e["channel"] == "presence-room" && e["user_id"] == user)
    };
    assert!(has("member_added", "alice"), "{events:#?}");
    assert!(has("member_removed", "bob"), "{events:#?}");
    let client = events
        .iter()
        .find(|e| e["name"] == "client_event" && e["event"] == "client-typing")
        .unwrap_or_else(|| panic!("no client-typing client_event: {events:#?}"))
        .clone();
    assert_eq!(client["user_id"], "ca");
    assert_eq!(
        serde_json::from_str::<Value>(client["data"].as_str().unwrap()).unwrap(),
        json!({"on": true})
    );
    assert!(client["socket_id"].as_str().unwrap().contains('.'));
    find("channel_vacated", "presence-room");
    // Triggered events are not client events: no webhook for them.
    assert!(
        !events.iter().any(|e| e["event"] == "secret"),
        "{events:#?}"
    );
}

pub async fn pusher_ws(h: &Herald, path: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(h.ws_url(path)))
        .await
        .expect("connect timeout")
        .expect("connect");
    ws
}

/// The next frame's JSON, with `data` parsed when it is a string holding JSON.
pub async fn frame(ws: &mut Ws) -> Value {
    let mut v = ws_json(ws).await;
    if let Some(s) = v["data"].as_str() {
        if let Ok(inner) = serde_json::from_str::<Value>(s) {
            v["data"] = inner;
        }
    }
    v
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_pusher_input_gets_pushers_errors_and_the_connection_survives_where_it_should() {
    let h = Herald::start(APP);
    // Unknown app key: pusher:error 4001, then close 4001.
    let mut ws = pusher_ws(&h, "/app/nope?protocol=7").await;
    let e = frame(&mut ws).await;
    assert_eq!(
        (e["event"].as_str(), e["data"]["code"].as_u64()),
        (Some("pusher:error"), Some(4001))
    );
    assert!(matches!(
        ws_read(&mut ws).await,
        WsRead::Closed(Some((4001, _)))
    ));
    // Unsupported protocol: 4007.
    let mut ws = pusher_ws(&h, "/app/app-key?protocol=3").await;
    assert_eq!(frame(&mut ws).await["data"]["code"], 4007);
    assert!(matches!(
        ws_read(&mut ws).await,
        WsRead::Closed(Some((4007, _)))
    ));

    let mut ws = pusher_ws(&h, "/app/app-key?protocol=7&client=js&version=8.4.0").await;
    let hello = frame(&mut ws).await;
    assert_eq!(hello["event"], "pusher:connection_established");
    let socket_id = hello["data"]["socket_id"].as_str().unwrap().to_string();
    assert_eq!(hello["data"]["activity_timeout"], 120);
    // Malformed frames and unknown events: pusher:error, and the connection goes on.
    for bad in [
        "not json",
        "{\"data\":{}}",
        "{\"event\":\"pusher:subscribe\",\"data\":{}}",
        "{\"event\":\"nonsense\"}",
    ] {
        send_text(&mut ws, bad).await;
        let e = frame(&mut ws).await;
        assert_eq!(e["event"], "pusher:error", "{bad} -> {e}");
    }
    // A bad channel name and a bad signature: subscription errors for that channel only.
    send_text(
        &mut ws,
        &json!({"event": "pusher:subscribe", "data": {"channel": "bad name!"}}).to_string(),
    )
    .await;
    let e = frame(&mut ws).await;
    assert_eq!(e["event"], "pusher:subscription_error");
    send_text(
        &mut ws,
        &json!({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": "app-key:00ff"}}).to_string(),
    )
    .await;
    let e = frame(&mut ws).await;
    assert_eq!(
        (e["event"].as_str(), e["data"]["status"].as_u64()),
        (Some("pusher:subscription_error"), Some(401))
    );
    // Client events: refused on a public channel and without a subscription.
    send_text(
        &mut ws,
        &json!({"event": "client-x", "channel": "public", "data": {}}).to_string(),
    )
    .await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:error");
    // Still alive: ping -> pong.
    send_text(&mut ws, "{\"event\":\"pusher:ping\",\"data\":{}}").await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:pong");
    // A subscription signed for another socket is refused too (the signature covers it).
    let other = auth_signature("app-secret", "1.1", "private-x");
    send_text(
        &mut ws,
        &json!({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": format!("app-key:{other}")}}).to_string(),
    )
    .await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:subscription_error");
    let good = auth_signature("app-secret", &socket_id, "private-x");
    send_text(
        &mut ws,
        &json!({"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": format!("app-key:{good}")}}).to_string(),
    )
    .await;
    assert_eq!(
        frame(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Over-size frame: closed with 1009 (message too big), which pusher-js retries.
    send_text(
        &mut ws,
        &format!(
            "{{\"event\":\"client-x\",\"data\":\"{}\"}}",
            "x".repeat(70_000)
        ),
    )
    .await;
    loop {
        match ws_read(&mut ws).await {
            WsRead::Json(_) => continue,
            WsRead::Closed(c) => {
                assert_eq!(c.map(|c| c.0), Some(1009));
                break;
            }
        }
    }
}

#[tokio::test]
async fn unsigned_stale_and_forged_api_requests_get_401_with_pushers_reason() {
    let h = Herald::start(APP);
    let post = |query: String| {
        client()
            .post(h.url(&format!("/apps/1234/events?{query}")))
            .header("content-type", "application/json")
            .body(r#"{"name":"e","channel":"c","data":"{}"}"#)
    };
    let md5 = "d00e0d9b7e2f2a8d3b1c3bd5f0c1f4f5";
    for (query, reason) in [
        (String::new(), "auth_key"),
        ("auth_key=app-key&auth_timestamp=1&auth_version=1.0".to_string(), "Timestamp expired"),
        (
            format!("auth_key=app-key&auth_timestamp={}&auth_version=1.0&body_md5={md5}&auth_signature=00", herald_now()),
            "body_md5",
        ),
    ] {
        let r = post(query).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let text = r.text().await.unwrap();
        assert!(text.contains(reason), "{text}");
    }
    let r = client()
        .get(h.url("/apps/no-such-app/channels"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

fn herald_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Pusher's channel auth signature, computed independently of Herald's code.
pub fn auth_signature(secret: &str, socket_id: &str, channel: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{socket_id}:{channel}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// PyPI's `pusher` against the HTTP API: trigger (with info), trigger_batch, channels_info,
/// channel_info, users_info; a Herald SSE subscriber sees what it triggered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_drives_the_http_api() {
    let python_ok = tool("python3")
        .args(["-c", "import pusher"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !python_ok {
        dependency_missing(
            "PyPI's pusher (the Python SDK test)",
            "python3 -m pip install pusher",
        );
        return;
    }
    let h = Herald::start(APP);
    let port = url::Url::parse(&h.url("/")).unwrap().port().unwrap();
    // A presence member over the Pusher socket, so the queries have something to show.
    let mut ws = pusher_ws(&h, "/app/app-key?protocol=7").await;
    let socket_id = frame(&mut ws).await["data"]["socket_id"]
        .as_str()
        .unwrap()
        .to_string();
    let channel_data = r#"{"user_id":"py-1","user_info":{"lang":"python"}}"#;
    let sig = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(format!("{socket_id}:presence-py:{channel_data}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    send_text(
        &mut ws,
        &json!({"event": "pusher:subscribe", "data": {"channel": "presence-py",
                "auth": format!("app-key:{sig}"), "channel_data": channel_data}})
        .to_string(),
    )
    .await;
    let ok = frame(&mut ws).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    assert_eq!(ok["data"]["presence"]["count"], 1);
    assert_eq!(
        ok["data"]["presence"]["hash"]["py-1"],
        json!({"lang": "python"})
    );
    let mut sse = Sse::connect(&h, "channel=pusher/1234/presence-py", Some(0)).await;

    let script = format!(
        r#"
import json, pusher
p = pusher.Pusher(app_id="1234", key="app-key", secret="app-secret", host="127.0.0.1", port={port}, ssl=False)
out = {{}}
out["trigger"] = p.trigger("presence-py", "from-python", {{"x": 1}})
out["batch"] = p.trigger_batch([{{"channel": "presence-py", "name": "b1", "data": "one"}}, {{"channel": "presence-py", "name": "b2", "data": "two"}}])
out["channels"] = p.channels_info(prefix_filter="presence-", attributes=["user_count"])
out["channel"] = p.channel_info("presence-py", attributes=["user_count", "subscription_count"])
out["users"] = p.users_info("presence-py")
try:
    pusher.Pusher(app_id="1234", key="app-key", secret="bad", host="127.0.0.1", port={port}, ssl=False).trigger("c", "e", {{}})
    out["forged"] = "accepted"
except Exception as e:
    out["forged"] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"#
    );
    let out = tool("python3").args(["-c", &script]).output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["trigger"], json!({}));
    assert_eq!(
        got["channels"],
        json!({"channels": {"presence-py": {"user_count": 1}}})
    );
    // Two subscriptions: the Pusher socket and the Herald SSE reader share the channel.
    assert_eq!(
        got["channel"],
        json!({"occupied": true, "user_count": 1, "subscription_count": 2})
    );
    assert_eq!(got["users"], json!({"users": [{"id": "py-1"}]}));
    let forged = got["forged"].as_str().unwrap();
    assert!(
        forged.contains("Auth") || forged.contains("401"),
        "{forged}"
    );
    // The Pusher socket and a Herald SSE subscriber both get the triggers, in order.
    for (name, data) in [
        ("from-python", json!({"x": 1})),
        ("b1", json!("one")),
        ("b2", json!("two")),
    ] {
        let f = frame(&mut ws).await;
        assert_eq!(
            (f["event"].as_str(), &f["data"]),
            (Some(name), &data),
            "{f}"
        );
        let e = sse.next().await.unwrap();
        assert_eq!(e.name.as_deref(), Some(name));
    }
}

/// pusher-js's browser build and Laravel Echo in headless Chromium: Echo joins a presence
/// channel and listens on a private one, a second browser joins and leaves, a forged auth
/// gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_js_and_laravel_echo_in_chromium() {
    let Some((chromium, dashboard)) = crate::browser::browser() else {
        return;
    };
    if script().is_none() {
        return;
    }
    let h = Herald::start(APP);
    let driver = dashboard.with_file_name("pusher-browser.mjs");
    let app = json!({"id": "1234", "key": "app-key", "secret": "app-secret"}).to_string();
    let base = h.url("/");
    let out = tokio::task::spawn_blocking(move || {
        tool("node")
            .arg(driver)
            .arg(base)
            .arg(chromium)
            .arg(app)
            .output_within()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && !stdout.contains("ERROR"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "OK echo here",
        "OK member_added across browsers",
        "OK echo private event",
        "OK forged auth refused",
        "OK member_removed when a browser goes",
        "DONE",
    ] {
        assert!(stdout.contains(step), "{step}: {stdout}");
    }
}

/// Two apps share nothing: the same channel name is two channels, and a key opens only its
/// own app.
#[tokio::test]
async fn apps_are_isolated() {
    let h = Herald::start(&format!(
        "{APP}[[pusher.apps]]\nid = \"5678\"\nkey = \"other-key\"\nsecret = \"other-secret\"\n"
    ));
    let mut one = pusher_ws(&h, "/app/app-key?protocol=7").await;
    let mut two = pusher_ws(&h, "/app/other-key?protocol=7").await;
    for ws in [&mut one, &mut two] {
        frame(ws).await;
        send_text(
            ws,
            &json!({"event": "pusher:subscribe", "data": {"channel": "news"}}).to_string(),
        )
        .await;
        assert_eq!(
            frame(ws).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    publish(
        &h,
        json!({"channel": "pusher/1234/news", "type": "for-one", "data": {"n": 1}}),
    )
    .await;
    publish(
        &h,
        json!({"channel": "pusher/5678/news", "type": "for-two", "data": "two"}),
    )
    .await;
    let f = frame(&mut one).await;
    assert_eq!(
        (f["event"].as_str(), &f["data"]),
        (Some("for-one"), &json!({"n": 1}))
    );
    let f = frame(&mut two).await;
    assert_eq!(
        (f["event"].as_str(), &f["data"]),
        (Some("for-two"), &json!("two"))
    );
    // Neither got the other's: the next thing each gets is a pong.
    for ws in [&mut one, &mut two] {
        send_text(ws, "{\"event\":\"pusher:ping\",\"data\":{}}").await;
        assert_eq!(frame(ws).await["event"], "pusher:pong");
    }
}

/// POSTs `body` to the Pusher HTTP API at `path`, signed as the SDKs sign.
pub async fn pusher_post(h: &Herald, path: &str, body: String) -> reqwest::Response {
    client()
        .post(h.url(&pusher_signed(path, &body)))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `pusher:signin`'s auth for `user_data` on `socket_id` (computed here, not by Herald).
fn signin_auth(socket_id: &str, user_data: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
    mac.update(format!("{socket_id}::user::{user_data}").as_bytes());
    format!("app-key:{}", hex::encode(mac.finalize().into_bytes()))
}

/// A client cannot edit Herald's own streams: unsubscribing from the name the terminate
/// stream once had does not save a signed-in user from `terminate_connections`.
#[tokio::test]
async fn a_client_cannot_unsubscribe_from_its_own_termination() {
    let h = Herald::start(APP);
    let mut ws = pusher_ws(&h, "/app/app-key?protocol=7").await;
    let hello = frame(&mut ws).await;
    let socket_id = hello["data"]["socket_id"].as_str().unwrap().to_string();
    let user_data = json!({"id": "u+1@example.com"}).to_string();
    let signin = json!({"event": "pusher:signin", "data": {"auth": signin_auth(&socket_id, &user_data), "user_data": user_data}});
    send_text(&mut ws, &signin.to_string()).await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:signin_success");
    for name in ["#terminate", "pusher-terminate"] {
        let unsub = json!({"event": "pusher:unsubscribe", "data": {"channel": name}});
        send_text(&mut ws, &unsub.to_string()).await;
    }
    send_text(&mut ws, "{\"event\":\"pusher:ping\",\"data\":{}}").await;
    assert_eq!(frame(&mut ws).await["event"], "pusher:pong");
    let path = "/apps/1234/users/u%2B1%40example.com/terminate_connections";
    let path = path.replace("%2B", "+").replace("%40", "@");
    let r = pusher_post(&h, &path, "{}".into()).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    loop {
        match ws_read(&mut ws).await {
            WsRead::Json(_) => continue,
            WsRead::Closed(c) => {
                assert_eq!(c.map(|c| c.0), Some(4009), "terminated");
                break;
            }
        }
    }
}

/// Every name Pusher allows is usable from both sides, however long its Herald name; a name
/// Pusher refuses gets `pusher:subscription_error`, and the connection goes on.
#[tokio::test]
async fn long_pusher_names_are_reachable_from_both_sides() {
    let h = Herald::start(APP);
    let name = "=".repeat(100);
    let mapped = format!("pusher/1234/{}", ":e".repeat(100));
    assert!(mapped.len() > 200);
    let mut sse = Sse::connect(&h, &format!("channel={mapped}"), None).await;
    let mut ws = pusher_ws(&h, "/app/app-key?protocol=7").await;
    frame(&mut ws).await;
    for bad in ["x".repeat(165), "a b".to_string()] {
        let sub = json!({"event": "pusher:subscribe", "data": {"channel": bad}});
        send_text(&mut ws, &sub.to_string()).await;
        let e = frame(&mut ws).await;
        assert_eq!(e["event"], "pusher:subscription_error", "{e}");
    }
    let sub = json!({"event": "pusher:subscribe", "data": {"channel": name}});
    send_text(&mut ws, &sub.to_string()).await;
    assert_eq!(
        frame(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    // Triggered from the Pusher side: both hear it.
    let body = json!({"name": "hello", "channel": name, "data": "{\"n\":1}"}).to_string();
    let r = pusher_post(&h, "/apps/1234/events", body).await;
    assert_eq!(r.status(), 200);
    let e = frame(&mut ws).await;
    assert_eq!(
        (e["event"].as_str(), e["channel"].as_str()),
        (Some("hello"), Some(name.as_str()))
    );
    let got = sse.next().await.unwrap();
    assert_eq!(got.name.as_deref(), Some("hello"));
    // Published from Herald's side on the mapped name: the Pusher client hears it.
    let seq = publish_one(&h, &mapped, json!({"n": 2})).await;
    let e = frame(&mut ws).await;
    assert_eq!(e["data"], json!({"n": 2}), "{e} (seq {seq})");
}

/// `/batch_events` takes up to 10 events, as Pusher's does; more is refused whole.
#[tokio::test]
async fn batch_events_take_up_to_ten() {
    let h = Herald::start(APP);
    let batch = |n: usize| {
        let events: Vec<Value> = (0..n)
            .map(|i| json!({"name": "e", "channel": format!("c{i}"), "data": "{}"}))
            .collect();
        json!({ "batch": events }).to_string()
    };
    for (n, want) in [(10, 200), (11, 400)] {
        let body = batch(n);
        let r = pusher_post(&h, "/apps/1234/batch_events", body).await;
        assert_eq!(r.status().as_u16(), want, "{n} events");
    }
    let page = get_json(h.url("/v1/events?channel=pusher/1234/*&limit=100")).await;
    assert_eq!(
        page_seqs(&page).len(),
        10,
        "the refused batch stored nothing: {page}"
    );
}

/// Pusher's close and error codes as README lists them, each from what causes it: 4301 for
/// client events past 10 a second (the connection stays), 4100 for a presence channel past
/// `presence.list_limit`, 4201 for a client that leaves `pusher:ping` unanswered, 4200 when
/// the server shuts down. (4001, 4007 and 4009 have tests of their own above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_close_and_error_codes_come_from_their_causes() {
    let config = format!("[pusher]\nactivity_timeout = 1\n{APP}[presence]\nlist_limit = 1\n");
    let mut h = Herald::start(&config);
    let subscribe = |channel: &str, socket_id: &str, channel_data: Option<&str>| {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
        let signed = match channel_data {
            Some(d) => format!("{socket_id}:{channel}:{d}"),
            None => format!("{socket_id}:{channel}"),
        };
        mac.update(signed.as_bytes());
        let auth = format!("app-key:{}", hex::encode(mac.finalize().into_bytes()));
        let mut data = json!({"channel": channel, "auth": auth});
        if let Some(d) = channel_data {
            data["channel_data"] = d.into();
        }
        json!({"event": "pusher:subscribe", "data": data}).to_string()
    };
    // One connection that answers pings (each `frame` read is followed by a pong when asked).
    let connect = async || {
        let mut ws = pusher_ws(&h, "/app/app-key?protocol=7").await;
        let hello = frame(&mut ws).await;
        let id = hello["data"]["socket_id"].as_str().unwrap().to_string();
        (ws, id)
    };
    let next_but_pings = async |ws: &mut Ws| loop {
        let f = frame(ws).await;
        if f["event"] == "pusher:ping" {
            send_text(ws, "{\"event\":\"pusher:pong\",\"data\":{}}").await;
            continue;
        }
        return f;
    };

    // 4100: the second member of a presence channel whose list holds one.
    let (mut first, first_id) = connect().await;
    let one = json!({"user_id": "one"}).to_string();
    send_text(
        &mut first,
        &subscribe("presence-room", &first_id, Some(&one)),
    )
    .await;
    let ok = next_but_pings(&mut first).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    let (mut second, second_id) = connect().await;
    let two = json!({"user_id": "two"}).to_string();
    send_text(
        &mut second,
        &subscribe("presence-room", &second_id, Some(&two)),
    )
    .await;
    let refused = next_but_pings(&mut second).await;
    assert_eq!(
        (
            refused["event"].as_str(),
            refused["data"]["status"].as_u64()
        ),
        (Some("pusher:subscription_error"), Some(4100)),
        "{refused}"
    );
    drop(second);

    // 4301: client events past 10 a second are refused one by one; the connection stays.
    send_text(&mut first, &subscribe("private-talk", &first_id, None)).await;
    let ok = next_but_pings(&mut first).await;
    assert_eq!(
        ok["event"], "pusher_internal:subscription_succeeded",
        "{ok}"
    );
    for i in 0..30 {
        let e = json!({"event": "client-say", "channel": "private-talk", "data": {"i": i}});
        send_text(&mut first, &e.to_string()).await;
    }
    let limited = next_but_pings(&mut first).await;
    assert_eq!(
        (limited["event"].as_str(), limited["data"]["code"].as_u64()),
        (Some("pusher:error"), Some(4301)),
        "{limited}"
    );
    send_text(&mut first, "{\"event\":\"pusher:ping\",\"data\":{}}").await;
    loop {
        let f = next_but_pings(&mut first).await;
        if f["event"] == "pusher:pong" {
            break;
        }
        assert_eq!(f["data"]["code"], 4301, "{f}");
    }

    // 4201: a client that never answers the server's ping (activity_timeout = 1 s here).
    let (mut silent, _) = connect().await;
    let ping = frame(&mut silent).await;
    assert_eq!(ping["event"], "pusher:ping", "{ping}");
    match ws_read(&mut silent).await {
        WsRead::Closed(c) => assert_eq!(c.map(|c| c.0), Some(4201), "pong missed"),
        WsRead::Json(m) => panic!("expected the close, got {m}"),
    }

    // 4200: the server shuts down; pusher-js reconnects at once on this code. The client
    // reads (answering pings) while the server stops, so it can finish the close handshake.
    let (last, _) = connect().await;
    let closed = tokio::spawn(close_code_answering_pings(last));
    let status = tokio::task::block_in_place(|| h.terminate());
    assert!(status.success(), "{status:?}");
    assert_eq!(closed.await.unwrap(), Some(4200), "shutdown");
}

/// Reads until the server closes, answering `pusher:ping`; the close code.
async fn close_code_answering_pings(mut ws: Ws) -> Option<u16> {
    loop {
        match ws_read(&mut ws).await {
            WsRead::Json(m) if m["event"] == "pusher:ping" => {
                send_text(&mut ws, "{\"event\":\"pusher:pong\",\"data\":{}}").await
            }
            WsRead::Json(_) => continue,
            WsRead::Closed(c) => return c.map(|c| c.0),
        }
    }
}

/// `/app/{key}` on a plain connection is written by the hub itself, like `/v1/ws`. A Pusher
/// client with a tiny receive window that stops reading while 8 MB of events pile up reads
/// every frame whole and in order afterwards, around its own pings' pongs; and the client
/// event it triggered itself never comes back to it, while another socket gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pusher_socket_keeps_frames_whole_and_in_order() {
    let h = Herald::start(&format!("{APP}[server]\nsend_queue = 100000\n"));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(h.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(
        h.ws_url("/app/app-key?protocol=7"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .unwrap();
    let socket_id = frame(&mut ws).await["data"]["socket_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut other = pusher_ws(&h, "/app/app-key?protocol=7").await;
    let other_id = frame(&mut other).await["data"]["socket_id"]
        .as_str()
        .unwrap()
        .to_string();
    for (ws, id) in [(&mut ws, &socket_id), (&mut other, &other_id)] {
        let auth = format!(
            "app-key:{}",
            auth_signature("app-secret", id, "private-big")
        );
        let sub =
            json!({"event": "pusher:subscribe", "data": {"channel": "private-big", "auth": auth}});
        send_text(ws, &sub.to_string()).await;
        assert_eq!(
            frame(ws).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    // Its own client event first: the other socket gets it, this one never does.
    let mine = json!({"event": "client-mine", "channel": "private-big", "data": {"n": -1}});
    send_text(&mut ws, &mine.to_string()).await;
    assert_eq!(frame(&mut other).await["event"], "client-mine");
    const EVENTS: usize = 500;
    const PAD: usize = 16_000;
    let pad = "p".repeat(PAD);
    for b in 0..EVENTS / 10 {
        let run: Vec<Value> = (0..10)
            .map(|i| json!({"channel": "pusher/1234/private-big", "data": {"n": b * 10 + i, "pad": pad}}))
            .collect();
        assert_eq!(publish(&h, json!(run)).await.0, 201);
        send_text(&mut ws, r#"{"event":"pusher:ping","data":{}}"#).await;
    }
    let (mut got, mut pongs) = (Vec::new(), 0);
    while got.len() < EVENTS || pongs < EVENTS / 10 {
        let m = frame(&mut ws).await;
        match m["event"].as_str() {
            Some("message") => {
                assert_eq!(m["channel"], "private-big");
                assert_eq!(m["data"]["pad"].as_str().map(str::len), Some(PAD), "whole");
                got.push(m["data"]["n"].as_i64().unwrap());
            }
            Some("pusher:pong") => pongs += 1,
            _ => panic!("unexpected {m}"),
        }
    }
    let want: Vec<i64> = (0..EVENTS as i64).collect();
    assert_eq!(
        got, want,
        "every event once, in order, and not its own client event"
    );
}
