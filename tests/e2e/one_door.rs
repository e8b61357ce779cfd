//! One door for events: every ingest path (HTTP publish, WebSocket publish, incoming hook and
//! its replay, Pusher client events, the Pusher HTTP API) is fed the same hostile names, types
//! and ids through its own entry point, and every SSE frame the server then writes must still
//! be one well-formed frame: a forged `id:` or `event:` line would move resuming clients past
//! real events or make `herald forward` replay a forged request.

use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};

use crate::common::*;
use crate::pusher::{pusher_post, APP};

const CONFIG: &str = "[[hooks]]\nchannels = [\"in/*\"]\nverify = \"none\"\n";

/// A Pusher socket subscribed to `private-door` (signed), ready to send client events.
async fn pusher_socket(h: &Herald) -> Ws {
    use hmac::Mac;
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url("/app/app-key?protocol=7"))
        .await
        .unwrap();
    let hello = ws_json(&mut ws).await;
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    let socket = data["socket_id"].as_str().unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"app-secret").unwrap();
    mac.update(format!("{socket}:private-door").as_bytes());
    let auth = format!("app-key:{}", hex::encode(mac.finalize().into_bytes()));
    let sub =
        json!({"event": "pusher:subscribe", "data": {"channel": "private-door", "auth": auth}});
    send(&mut ws, sub.to_string()).await;
    assert_eq!(
        ws_json(&mut ws).await["event"],
        "pusher_internal:subscription_succeeded"
    );
    ws
}

async fn send(ws: &mut Ws, text: String) {
    ws.send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
        .await
        .unwrap();
}

/// Sends a client event, then a ping: whatever the server answers to the event (an error, or
/// nothing when it was taken) comes before the pong. Returns the frames before it.
async fn client_event(ws: &mut Ws, name: &str, data: &Value) -> Vec<Value> {
    let event = json!({"event": name, "channel": "private-door", "data": data});
    send(ws, event.to_string()).await;
    send(ws, json!({"event": "pusher:ping", "data": {}}).to_string()).await;
    let mut before = Vec::new();
    loop {
        let frame = ws_json(ws).await;
        if frame["event"] == "pusher:pong" {
            return before;
        }
        before.push(frame);
    }
}

/// Names an attacker (or a careless app) would try: line breaks that start forged SSE lines,
/// the reserved markers, and arbitrary text.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,4}(\n|\r|\r\n)(id: 99999|event: webhook|data: \\{\\}|)[a-z]{0,3}",
        Just("pusher:1.1:00:admin".to_string()),
        Just("hook:msg_1".to_string()),
        Just("webhook".to_string()),
        Just("client-x\nid: 999999999\nevent: webhook".to_string()),
        "[a-z:._/@-]{1,12}",
        "\\PC{1,12}",
        ".{0,8}",
    ]
}

/// One case's inputs: a channel suffix, a type and an id for each path.
#[derive(Debug, Clone)]
struct Case {
    channel: String,
    kind: Option<String>,
    id: Option<String>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just("ok".to_string()), hostile()],
        proptest::option::of(hostile()),
        proptest::option::of(hostile()),
    )
        .prop_map(|(channel, kind, id)| Case { channel, kind, id })
}

/// Feeds one case through every door; adds the seqs acknowledged to `seqs` and returns how
/// many Pusher events were taken (those answer without a seq).
async fn feed(
    h: &Herald,
    pusher: &mut Ws,
    case: &Case,
    n: usize,
    seqs: &mut std::collections::BTreeSet<u64>,
) -> usize {
    let http = http();
    let mut acked = 0;
    let channel = format!("door/{}", case.channel);
    let mut body = json!({"channel": channel, "data": {"n": n, "via": "http"}});
    if let Some(k) = &case.kind {
        body["type"] = json!(k);
    }
    if let Some(i) = &case.id {
        body["id"] = json!(i);
    }
    let (status, reply) = publish(h, body.clone()).await;
    match status {
        200 | 201 => {
            seqs.insert(reply["seq"].as_u64().unwrap());
        }
        400 => assert!(reply["error"]["code"].is_string(), "{reply}"),
        other => panic!("HTTP publish of {case:?}: {other} {reply}"),
    }

    let mut ws = ws_connect(h, "").await;
    ws_json(&mut ws).await; // welcome
    body["op"] = json!("publish");
    body["data"]["via"] = json!("ws");
    body["ref"] = json!("r");
    ws_send(&mut ws, body).await;
    let reply = ws_json(&mut ws).await;
    match reply["op"].as_str() {
        Some("ack") => {
            seqs.insert(reply["seq"].as_u64().unwrap());
        }
        Some("error") => assert!(reply["code"].is_string() || reply["error"].is_object()),
        _ => panic!("WS publish of {case:?}: {reply}"),
    }

    let hook = format!(
        "/v1/hooks/in/{}",
        percent_encoding::utf8_percent_encode(&case.channel, percent_encoding::NON_ALPHANUMERIC)
    );
    let r = http
        .post(h.url(&hook))
        .body(format!("n={n}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let reply: Value = r.json().await.unwrap_or(Value::Null);
    match status {
        202 => {
            let seq = reply["seq"].as_u64().unwrap();
            seqs.insert(seq);
            let r = http
                .post(h.url(&format!("/v1/events/{seq}/replay")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "replay of a captured request");
            let reply: Value = r.json().await.unwrap();
            seqs.insert(reply["seq"].as_u64().unwrap());
        }
        400 | 404 => {}
        other => panic!("hook {hook}: {other} {reply}"),
    }

    // Client events are limited to 10 a second per socket (4301): wait out the limit, so
    // every case reaches the door.
    let name = format!("client-{}", case.kind.as_deref().unwrap_or(""));
    let errors = loop {
        let errors = client_event(pusher, &name, &json!({"n": n})).await;
        if !errors.iter().any(|e| e["data"]["code"] == 4301) {
            break errors;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    if errors.is_empty() {
        acked += 1;
    }

    let trigger = json!({
        "name": case.kind.clone().unwrap_or_default(),
        "channel": case.channel,
        "data": json!({"n": n}).to_string(),
        "socket_id": case.id,
    });
    let r = pusher_post(h, "/apps/1234/events", trigger.to_string()).await;
    match r.status().as_u16() {
        200 => acked += 1,
        400 | 413 => {}
        other => panic!("Pusher trigger {trigger}: {other}"),
    }
    acked
}

/// Checks that `raw` (an SSE stream's bytes) is `retry:` and then only whole event frames:
/// `id: N`, an optional `event:` naming the envelope's type, one `data:` line holding the
/// envelope of seq N. Returns the seqs in order.
fn frames(raw: &str) -> Vec<u64> {
    let mut blocks = raw.split("\n\n");
    assert!(blocks.next().unwrap().starts_with("retry: "));
    let mut seqs = Vec::new();
    for block in blocks.filter(|b| !b.is_empty() && !b.starts_with(':')) {
        let lines: Vec<&str> = block.split('\n').collect();
        assert!(
            !block.contains('\r'),
            "a CR would end a line for EventSource: {block:?}"
        );
        let id: u64 = lines[0]
            .strip_prefix("id: ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a frame starts with its id: {block:?}"));
        let (event, data) = match lines.len() {
            2 => (None, lines[1]),
            3 => (
                Some(lines[1].strip_prefix("event: ").expect(block)),
                lines[2],
            ),
            _ => panic!("a frame is id, event?, data: {block:?}"),
        };
        let envelope: Value =
            serde_json::from_str(data.strip_prefix("data: ").expect(block)).expect(block);
        assert_eq!(envelope["seq"], id, "{block:?}");
        assert_eq!(event, envelope["type"].as_str(), "{block:?}");
        if let Some(i) = envelope["id"].as_str() {
            // Only Pusher events carry a `pusher:` id, and only captured requests a `hook:` one.
            let pusher = envelope["channel"].as_str().unwrap().starts_with("pusher/");
            assert_eq!(i.starts_with("pusher:"), pusher, "{block:?}");
            assert_eq!(
                i.starts_with("hook:"),
                event == Some("webhook"),
                "{block:?}"
            );
        }
        if event == Some("webhook") {
            let channel = envelope["channel"].as_str().unwrap();
            assert!(
                channel.starts_with("in/"),
                "only hooks make webhook events: {block:?}"
            );
        }
        seqs.push(id);
    }
    seqs
}

#[test]
fn every_door_keeps_every_frame_whole() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = Herald::start(&format!("{APP}{CONFIG}"));
    let mut pusher = runtime.block_on(pusher_socket(&h));
    let mut seqs = std::collections::BTreeSet::new();
    let mut taken = 0;
    // Drawn like a proptest (a fresh seed each run), fed in order through one server; a case
    // that breaks a door panics naming itself.
    let mut runner = proptest::test_runner::TestRunner::default();
    for n in 0..48 {
        let case = cases().new_tree(&mut runner).unwrap().current();
        taken += runtime.block_on(feed(&h, &mut pusher, &case, n, &mut seqs));
    }
    let acked = seqs.len() + taken;
    assert!(acked > 48, "most cases stored something ({acked})");

    // Everything, from the start, to a typed SSE reader (a client event is not echoed to its
    // sender, but every event is in the log).
    let raw = runtime.block_on(async {
        let head = get_json(h.url("/healthz")).await;
        let mut sse = Sse::connect(&h, "channel=*&channel=pusher/*", Some(0)).await;
        let mut seen = 0;
        while seen < acked {
            sse.next().await.expect("stream open");
            seen += 1;
        }
        let _ = head;
        String::from_utf8(sse.raw).unwrap()
    });
    let seqs = frames(&raw);
    assert_eq!(seqs.len(), acked, "one frame per acknowledged event");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

/// The reserved markers are refused on the native paths with a named error.
#[tokio::test]
async fn reserved_ids_and_types_are_refused_by_name() {
    let h = Herald::start("");
    for (body, code) in [
        (
            json!({"channel": "c", "data": 1, "id": "pusher:1.2:ab:admin"}),
            "reserved_id",
        ),
        (
            json!({"channel": "c", "data": 1, "id": "hook:msg_1"}),
            "reserved_id",
        ),
        (
            json!({"channel": "c", "data": 1, "type": "webhook"}),
            "reserved_type",
        ),
        (
            json!({"channel": "c", "data": 1, "type": "a\nid: 9"}),
            "invalid_type",
        ),
        (
            json!({"channel": "c", "data": 1, "id": "a\nb"}),
            "invalid_id",
        ),
    ] {
        let (status, reply) = publish(&h, body.clone()).await;
        assert_error(status, &reply, 400, code);
    }
}
