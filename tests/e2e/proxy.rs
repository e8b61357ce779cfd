//! Backend hooks: a real app (tests/proxy/app.py, which checks each request's signature
//! with PyPI's `standardwebhooks`) decides who connects, what they may join and say, and
//! answers RPCs.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The app on a free loopback port, killed on drop.
struct App {
    child: Child,
    url: String,
}

impl App {
    fn start() -> Option<App> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy/app.py");
        let ready = tool("python3")
            .args(["-c", "import standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success());
        if !ready {
            dependency_missing(
                "python3 with standardwebhooks (the backend hook tests' app)",
                "pip install standardwebhooks (scripts/test puts it in target/venv)",
            );
            return None;
        }
        let mut child = tool("python3")
            .arg(script)
            .arg(SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("the app's port");
        Some(App {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(connect_url: &str, app: &str) -> String {
    format!(
        "[auth]\napi_keys = [\"k\"]\njwt_secret = \"jwt-secret\"\n\
         [proxy]\nconnect_url = \"{connect_url}\"\nsubscribe_url = \"{app}/subscribe\"\n\
         subscribe_channels = [\"private:*\"]\npublish_url = \"{app}/publish\"\n\
         publish_channels = [\"chat:*\"]\nrpc_url = \"{app}/rpc\"\ntimeout = \"1s\"\n\
         secret = \"{SECRET}\"\n"
    )
}

async fn ws_with_cookie(h: &Herald, query: &str, cookie: &str) -> Ws {
    let mut request = h
        .ws_url(&format!("/v1/ws{query}"))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", format!("session={cookie}").parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("WS connect timeout")
        .expect("WS connect");
    ws
}

async fn sse_status(h: &Herald, query: &str, cookie: &str) -> (u16, Value) {
    let r = client()
        .get(h.url(&format!("/v1/sse?{query}")))
        .header("cookie", format!("session={cookie}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        return (status, Value::Null);
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_decides_who_connects_and_what_they_may_do() {
    let Some(app) = App::start() else { return };
    let h = Herald::start(&config(&format!("{}/connect", app.url), &app.url));

    // Connect by cookie: the app's identity is the member, with its info.
    let mut ws = ws_with_cookie(&h, "", "alice").await;
    assert_eq!(ws_json(&mut ws).await["op"], "welcome");
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "room:1", "presence": true, "ref": 1}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    assert_eq!(reply["presence"]["members"][0]["user"], "alice", "{reply}");
    assert_eq!(
        reply["presence"]["members"][0]["info"],
        json!({"name": "Alice"})
    );
    // Channels the app did not grant are refused as a token's would be.
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "elsewhere", "ref": 2}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["op"], "error");
    // The subscribe hook, per channel.
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "private:secret", "ref": 3}),
    )
    .await;
    let refused = ws_json(&mut ws).await;
    assert_eq!(
        (refused["op"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("proxy_refused")),
        "{refused}"
    );
    assert!(
        refused["message"].as_str().unwrap().contains("not for you"),
        "{refused}"
    );
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "private:ok", "ref": 4}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["op"], "subscribed");

    // Publish: kept, rewritten, refused; checked in history.
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "chat:1", "data": {"text": "hi"}, "ref": 5}),
    )
    .await;
    let mut skipped = Vec::new();
    let ack = ws_until_op(&mut ws, "ack", &mut skipped).await;
    let rewritten = ack["seq"].as_u64().unwrap();
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "chat:1", "data": {"text": "bad"}, "ref": 6}),
    )
    .await;
    let refused = ws_until_op(&mut ws, "error", &mut skipped).await;
    assert_eq!(refused["code"], "proxy_refused", "{refused}");
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "room:1", "data": {"text": "as is"}, "ref": 7}),
    )
    .await;
    let kept = ws_until_op(&mut ws, "ack", &mut skipped).await["seq"]
        .as_u64()
        .unwrap();
    let page = get_json_as(&h, "/v1/events?channel=chat:1&channel=room:1", "k").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "the refused one was never logged: {page}");
    assert_eq!(events[0]["seq"], rewritten);
    assert_eq!(events[0]["data"], json!({"text": "HI", "by": "alice"}));
    assert_eq!(events[1]["seq"], kept);
    assert_eq!(events[1]["data"], json!({"text": "as is"}));

    // RPC round trip.
    ws_send(
        &mut ws,
        json!({"op": "rpc", "method": "add", "data": {"a": 2, "b": 3}, "ref": "r1"}),
    )
    .await;
    let answer = ws_until_op(&mut ws, "rpc", &mut skipped).await;
    assert_eq!(answer, json!({"op": "rpc", "ref": "r1", "data": 5}));

    // Refused at connect: WebSocket closes 1008 with the app's message; SSE gets 403.
    let mut banned = ws_with_cookie(&h, "", "banned").await;
    match ws_read(&mut banned).await {
        WsRead::Closed(Some((1008, reason))) => assert!(reason.contains("banned"), "{reason}"),
        other => panic!("expected close 1008, got {other:?}"),
    }
    let (status, reply) = sse_status(&h, "channel=room:1", "banned").await;
    assert_error(status, &reply, 403, "proxy_refused");
    // SSE naming a refused channel: 403 naming it, before the stream starts.
    let (status, reply) = sse_status(&h, "channel=room:1&channel=private:secret", "alice").await;
    assert_error(status, &reply, 403, "proxy_refused");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private:secret"),
        "{reply}"
    );
    assert_eq!(sse_status(&h, "channel=room:1", "alice").await.0, 200);

    // An HTTP publish with no credential goes through the same hooks.
    let r = client()
        .post(h.url("/v1/events"))
        .header("cookie", "session=alice")
        .json(&json!({"channel": "chat:2", "data": {"text": "via http"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let page = get_json_as(&h, "/v1/events?channel=chat:2", "k").await;
    assert_eq!(
        page["events"][0]["data"],
        json!({"text": "VIA HTTP", "by": "alice"})
    );
    // API-key publishes never ask (the app would rewrite this one).
    publish_as(
        &h,
        "k",
        json!({"channel": "chat:3", "data": {"text": "raw"}}),
    )
    .await;
    let page = get_json_as(&h, "/v1/events?channel=chat:3", "k").await;
    assert_eq!(page["events"][0]["data"], json!({"text": "raw"}));

    // Every call is counted by hook and outcome, and timed by hook.
    let calls = |hook: &str, outcome: &str| {
        format!("herald_proxy_calls_total{{hook=\"{hook}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(metric(&h, &calls("rpc", "ok")).await, Some(1.0));
    assert_eq!(
        metric(&h, "herald_proxy_seconds_count{hook=\"rpc\"}").await,
        Some(1.0)
    );
    assert_eq!(metric(&h, &calls("publish", "refused")).await, Some(1.0));
    let refused = metric(&h, &calls("connect", "refused")).await;
    assert!(refused >= Some(2.0), "banned on WS and SSE: {refused:?}");
}

/// Fails closed, bounded in time: a slow app refuses within the timeout (+1 s) while another
/// connection is served; a dead app refuses; a valid Herald token never asks the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_app_refuses_in_time_and_tokens_skip_it() {
    let Some(app) = App::start() else { return };
    let h = Herald::start(&config(&format!("{}/slow", app.url), &app.url));
    let token = mint_token(&h, "k", json!({"sub": "t", "sub_channels": ["*"]})).await;
    let started = Instant::now();
    let slow = {
        let url = h.url("/v1/sse?channel=room:1");
        tokio::spawn(async move {
            client()
                .get(url)
                .header("cookie", "session=alice")
                .send()
                .await
                .unwrap()
        })
    };
    // Meanwhile a token holder is served at once (and never sent to the app).
    let mut ws = ws_connect(&h, &format!("?token={token}")).await;
    assert_eq!(ws_json(&mut ws).await["op"], "welcome");
    let r = slow.await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "proxy_unavailable", "{body}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(900),
        "refused after {took:?}"
    );

    // The app down: refused, by name.
    drop(app);
    let (status, reply) = sse_status(&h, "channel=room:1", "alice").await;
    assert_error(status, &reply, 503, "proxy_unavailable");
}

/// The JavaScript client's `rpc()`: a round trip to the app, and the app's refusal with its
/// code (Node, with the `ws` package the client's tests use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_calls_the_app() {
    let Some(app) = App::start() else { return };
    if !crate::client::node_ready() {
        return;
    }
    let h = Herald::start(&format!(
        "[proxy]\nrpc_url = \"{}/rpc\"\nsecret = \"{SECRET}\"\n",
        app.url
    ));
    let client = crate::client::client_dir();
    let script = format!(
        r#"import WebSocket from "ws";
        import {{ connect }} from "{}";
        const c = connect("{}", {{ WebSocket, transport: "ws" }});
        await new Promise((r) => c.on("connected", r));
        const sum = await c.rpc("add", {{ a: 20, b: 22 }});
        const refused = await c.rpc("nope", {{}}).then(() => "taken", (e) => e.code);
        console.log(JSON.stringify({{ sum, refused }}));
        c.close();"#,
        client.join("herald.js").display(),
        h.url("").trim_end_matches('/')
    );
    let out = tokio::task::spawn_blocking(move || {
        tool("node")
            .args(["--input-type=module", "-e", &script])
            .current_dir(client)
            .output_within()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v, json!({"sum": 42, "refused": "proxy_refused"}));
}

/// A page on an allowed origin may send cookies to a Herald with a connect hook (CORS with
/// credentials); "*" never gets credentials.
#[tokio::test]
async fn allowed_origins_may_send_cookies_when_the_app_decides() {
    let h = Herald::start(
        "[auth]\napi_keys = [\"k\"]\n[server]\nallowed_origins = [\"https://app.example\"]\n\
         [proxy]\nconnect_url = \"http://127.0.0.1:9/connect\"\n",
    );
    let r = client()
        .get(h.url("/healthz"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let wildcard = Herald::start(
        "[auth]\napi_keys = [\"k\"]\n[server]\nallowed_origins = [\"*\"]\n\
         [proxy]\nconnect_url = \"http://127.0.0.1:9/connect\"\n",
    );
    let r = client()
        .get(wildcard.url("/healthz"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-credentials"));
}

/// An app that answers with something other than the JSON Herald asked for is an app that
/// cannot decide: the request is refused (fail closed) with the reason, never let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_json_refuses() {
    let Some(app) = App::start() else { return };
    let h = Herald::start(&config(&format!("{}/broken", app.url), &app.url));
    let (status, reply) = sse_status(&h, "channel=room:1", "alice").await;
    assert_error(status, &reply, 503, "proxy_unavailable");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{reply}"
    );
    let failed = metric(
        &h,
        "herald_proxy_calls_total{hook=\"connect\",outcome=\"failed\"}",
    )
    .await;
    assert_eq!(failed, Some(1.0));
}

/// Pusher client events go through the publish hook by their Herald name
/// (`pusher/{app}/{channel}`): kept, stored as the app rewrote them, or refused with the
/// app's message as a `pusher:error`, and then not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_client_events_ask_the_publish_hook() {
    use crate::pusher::{auth_signature, frame, pusher_ws, send_text, APP};
    let Some(app) = App::start() else { return };
    let h = Herald::start(&format!(
        "{APP}[proxy]\npublish_url = \"{}/publish\"\n\
         publish_channels = [\"pusher/1234/private-chat*\"]\nsecret = \"{SECRET}\"\n",
        app.url
    ));
    let mut ws = pusher_ws(&h, "/app/app-key?protocol=7").await;
    let hello = frame(&mut ws).await;
    let socket_id = hello["data"]["socket_id"].as_str().unwrap().to_string();
    for channel in ["private-chat", "private-other"] {
        let auth = format!(
            "app-key:{}",
            auth_signature("app-secret", &socket_id, channel)
        );
        let sub = json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}});
        send_text(&mut ws, &sub.to_string()).await;
        assert_eq!(
            frame(&mut ws).await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    let send = |channel: &str, text: &str| {
        json!({"event": "client-msg", "channel": channel, "data": {"text": text}}).to_string()
    };
    send_text(&mut ws, &send("private-chat", "bad")).await;
    let refused = frame(&mut ws).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(
        refused["data"]["message"], "watch your language",
        "{refused}"
    );
    send_text(&mut ws, &send("private-chat", "hello")).await;
    send_text(&mut ws, &send("private-other", "as is")).await;
    let stored = |channel: &str| {
        let url = h.url(&format!("/v1/events?channel=pusher/1234/{channel}"));
        async move {
            let page = get_json(url).await;
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["data"].clone())
                .collect::<Vec<Value>>()
        }
    };
    let chat = crate::webhooks::eventually("the kept event", WAIT, async || {
        let got = stored("private-chat").await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(
        chat,
        [json!({"text": "HELLO", "by": null})],
        "rewritten, once"
    );
    let other = crate::webhooks::eventually("the unasked event", WAIT, async || {
        let got = stored("private-other").await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(
        other,
        [json!({"text": "as is"})],
        "a channel the hook does not cover"
    );
    let calls = metric(
        &h,
        "herald_proxy_calls_total{hook=\"publish\",outcome=\"refused\"}",
    )
    .await;
    assert_eq!(calls, Some(1.0));
}

/// A Pusher client event that the publish hook covers fails closed when the app cannot be
/// reached: the sender gets a `pusher:error` naming the cause, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_client_events_fail_closed_when_the_app_is_down() {
    use crate::pusher::{auth_signature, frame, pusher_ws, send_text, APP};
    // Nothing listens on the discard port: every call is refused at connect.
    let h = Herald::start(&format!(
        "{APP}[proxy]\npublish_url = \"http://127.0.0.1:9/publish\"\n\
         publish_channels = [\"pusher/1234/private-chat*\"]\nsecret = \"{SECRET}\"\n"
    ));
    let mut ws = pusher_ws(&h, "/app/app-key?protocol=7").await;
    let hello = frame(&mut ws).await;
    let socket_id = hello["data"]["socket_id"].as_str().unwrap().to_string();
    let auth = format!(
        "app-key:{}",
        auth_signature("app-secret", &socket_id, "private-chat")
    );
    let sub =
        json!({"event": "pusher:subscribe", "data": {"channel": "private-chat", "auth": auth}});
    send_text(&mut ws, &sub.to_string()).await;
    assert_eq!(
        frame(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let send = json!({"event": "client-msg", "channel": "private-chat", "data": {"text": "hi"}});
    send_text(&mut ws, &send.to_string()).await;
    let refused = frame(&mut ws).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    let message = refused["data"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("proxy_unavailable: the publish hook"),
        "{refused}"
    );
    let failed = metric(
        &h,
        "herald_proxy_calls_total{hook=\"publish\",outcome=\"failed\"}",
    )
    .await;
    assert_eq!(failed, Some(1.0));
    let page = get_json(h.url("/v1/events?channel=pusher/1234/private-chat")).await;
    assert_eq!(page["events"], json!([]), "{page}");
}
