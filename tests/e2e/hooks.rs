//! Incoming webhooks: `POST /v1/hooks/{channel}` through the real binary, with signatures made
//! the way senders make them (GitHub's HMAC, and another Herald's outgoing webhooks for
//! Standard Webhooks).

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::common::*;
use crate::webhooks::{create_webhook, eventually};

async fn post_hook(
    h: &Herald,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut r = http().post(h.url(path)).body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// The one event of `channel` (history with `key`, if any).
async fn only_event(h: &Herald, channel: &str, key: Option<&str>) -> (Value, String) {
    let mut r = http().get(h.url(&format!("/v1/events?channel={channel}&after=0")));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let text = r.send().await.unwrap().text().await.unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 1, "{text}");
    (v["events"][0].clone(), text)
}

#[tokio::test]
async fn any_request_becomes_an_event_that_keeps_its_exact_body() {
    let h = Herald::start("[limits]\nmax_event_bytes = 2048\n");
    let mut sse = Sse::connect(&h, "channel=inbox/orders", None).await;
    let body = r#"{"action": "opened", "amount": 1.50}"#;
    let (status, reply) = post_hook(
        &h,
        "/v1/hooks/inbox/orders?source=test",
        &[("content-type", "application/json"), ("x-custom", "yes")],
        body,
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    let seq = reply["seq"].as_u64().unwrap();
    let live = sse.next().await.unwrap();
    assert_eq!(
        (live.id, live.name.as_deref()),
        (Some(seq), Some("webhook"))
    );
    // Embedded byte for byte (spacing, `1.50`), so a signature over it still verifies.
    assert!(
        live.data.contains(&format!("\"body\":{body}}}")),
        "{}",
        live.data
    );
    let (event, _) = only_event(&h, "inbox/orders", None).await;
    let data = &event["data"];
    assert_eq!(event["type"], "webhook");
    assert_eq!(data["method"], "POST");
    assert_eq!(data["path"], "/v1/hooks/inbox/orders");
    assert_eq!(data["query"], "source=test");
    assert_eq!(data["headers"]["x-custom"], "yes");
    assert_eq!(data["encoding"], "json");
    // Not JSON but UTF-8: text. Anything else: base64, recoverable exactly.
    post_hook(&h, "/v1/hooks/inbox/form", &[], "a=1&b=2").await;
    let (event, _) = only_event(&h, "inbox/form", None).await;
    assert_eq!(
        (
            event["data"]["encoding"].clone(),
            event["data"]["body"].clone()
        ),
        (json!("text"), json!("a=1&b=2"))
    );
    let bytes = vec![0u8, 0xff, 0x80, b'x'];
    post_hook(&h, "/v1/hooks/inbox/bin", &[], bytes.clone()).await;
    let (event, _) = only_event(&h, "inbox/bin", None).await;
    assert_eq!(event["data"]["encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(event["data"]["body"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, bytes);
    // Bounded like any event, with a clear error: a body larger than an event is not even
    // read whole; one that only grows past the limit as event data (escaped) is refused too.
    let (status, reply) = post_hook(&h, "/v1/hooks/inbox/big", &[], "x".repeat(4000)).await;
    assert_error(status, &reply, 413, "body_too_large");
    let (status, reply) = post_hook(&h, "/v1/hooks/inbox/big", &[], "\"".repeat(1500)).await;
    assert_error(status, &reply, 413, "event_too_large");
    let (status, reply) = post_hook(&h, "/v1/hooks/bad%20name", &[], "x").await;
    assert_error(status, &reply, 400, "invalid_channel");
}

pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test]
async fn signed_hooks_need_a_valid_signature_and_the_rest_an_api_key() {
    let h = Herald::start(
        "[auth]\napi_keys = [\"admin-key\"]\n\
         [[hooks]]\nchannels = [\"gh/*\"]\nverify = \"github\"\nsecret = \"It's a secret\"\n\
         [[hooks]]\nchannels = [\"public/*\"]\nverify = \"none\"\n",
    );
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    let sig = github_signature("It's a secret", body);
    let signed = [
        ("x-hub-signature-256", sig.as_str()),
        ("x-github-delivery", "d-1"),
        ("authorization", "Bearer not-for-subscribers"),
    ];
    let (status, first) = post_hook(&h, "/v1/hooks/gh/ping", &signed, body.to_vec()).await;
    assert_eq!(status, 202, "{first}");
    // GitHub redelivers with the same delivery id: the same event, not a second one.
    let (status, again) = post_hook(&h, "/v1/hooks/gh/ping", &signed, body.to_vec()).await;
    assert_eq!((status, again["seq"].clone()), (202, first["seq"].clone()));
    let (event, _) = only_event(&h, "gh/ping", Some("admin-key")).await;
    assert_eq!(event["data"]["headers"]["x-github-delivery"], "d-1");
    assert!(
        event["data"]["headers"].get("authorization").is_none(),
        "{event}"
    );
    // Tampered, unsigned, or signed with another secret: 401, nothing written.
    let tampered = br#"{"zen":"Keep it logically awesome!"}"#;
    let (status, reply) = post_hook(&h, "/v1/hooks/gh/ping", &signed[..1], tampered.to_vec()).await;
    assert_error(status, &reply, 401, "invalid_signature");
    let (status, reply) = post_hook(&h, "/v1/hooks/gh/ping", &[], body.to_vec()).await;
    assert_error(status, &reply, 401, "invalid_signature");
    let other = github_signature("another secret", body);
    let (status, reply) = post_hook(
        &h,
        "/v1/hooks/gh/ping",
        &[("x-hub-signature-256", &other)],
        body.to_vec(),
    )
    .await;
    assert_error(status, &reply, 401, "invalid_signature");
    only_event(&h, "gh/ping", Some("admin-key")).await;
    // No rule: the usual publish credentials.
    let (status, reply) = post_hook(&h, "/v1/hooks/internal/x", &[], "{}").await;
    assert_error(status, &reply, 401, "unauthorized");
    let (status, _) = post_hook(
        &h,
        "/v1/hooks/internal/x",
        &[("authorization", "Bearer admin-key")],
        "{}",
    )
    .await;
    assert_eq!(status, 202);
    // An explicitly open rule.
    let (status, _) = post_hook(&h, "/v1/hooks/public/form", &[], "hello").await;
    assert_eq!(status, 202);
    // Replay (the console's inspector): the captured request stored again, byte for byte,
    // as a new event; an API key only, and only for captured requests.
    let replay = async |seq: &str, key: &str| -> (u16, Value) {
        let r = http()
            .post(h.url(&format!("/v1/events/{seq}/replay")))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    let original = first["seq"].as_u64().unwrap();
    let (status, reply) = replay(&original.to_string(), "not-a-key").await;
    assert_error(status, &reply, 401, "unauthorized");
    let (status, reply) = replay(&original.to_string(), "admin-key").await;
    assert_eq!(
        (status, &reply["replayed"]),
        (201, &json!(original)),
        "{reply}"
    );
    let history = get_json_as(&h, "/v1/events?channel=gh/ping", "admin-key").await;
    let events = history["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{history}");
    assert_eq!(events[1]["seq"], reply["seq"]);
    assert_eq!(events[1]["type"], "webhook");
    assert_eq!(events[1]["data"], events[0]["data"]);
    let (status, reply) = replay("999", "admin-key").await;
    assert_error(status, &reply, 404, "not_found");
    let internal = {
        let (_, r) = post_hook(
            &h,
            "/v1/hooks/internal/x",
            &[("authorization", "Bearer admin-key")],
            "{}",
        )
        .await;
        r["seq"].as_u64().unwrap()
    };
    let plain = http()
        .post(h.url("/v1/events"))
        .bearer_auth("admin-key")
        .json(&json!({"channel": "internal/y", "data": 1}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(plain["seq"].as_u64().unwrap() > internal);
    let (status, reply) = replay(&plain["seq"].to_string(), "admin-key").await;
    assert_error(status, &reply, 400, "not_a_hook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_heralds_outgoing_webhooks_feed_anothers_incoming_hook() {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let receiver = Herald::start(&format!(
        "[[hooks]]\nchannels = [\"relay/*\"]\nverify = \"standard\"\nsecret = \"{secret}\"\n"
    ));
    let sender = Herald::start("[webhooks]\nallow_private = true\n");
    let url = receiver.url("/v1/hooks/relay/orders");
    let (status, ep) = create_webhook(
        &sender,
        json!({"url": url, "channels": ["orders"], "secret": secret}),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    let seq = publish_one(&sender, "orders", json!({"id": 7, "total": "9.90"})).await;
    let (event, _) = eventually("the relayed event", WAIT, async || {
        let page = get_json(receiver.url("/v1/events?channel=relay/orders&after=0")).await;
        (page["events"].as_array()?.len() == 1).then(|| (page["events"][0].clone(), ()))
    })
    .await;
    let data = &event["data"];
    assert_eq!(data["encoding"], "json");
    assert_eq!(data["body"]["seq"], seq);
    assert_eq!(data["body"]["data"], json!({"id": 7, "total": "9.90"}));
    assert_eq!(
        data["headers"]["webhook-id"],
        format!("{}_{seq}", ep["id"].as_str().unwrap())
    );
    // The sender's delivery was accepted (a 2xx), so it is not retried.
    let deliveries = get_json(sender.url(&format!(
        "/v1/webhooks/{}/deliveries",
        ep["id"].as_str().unwrap()
    )))
    .await;
    assert_eq!(
        deliveries["deliveries"][0]["status"], "delivered",
        "{deliveries}"
    );
    assert_eq!(deliveries["deliveries"][0]["status_code"], 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_replays_captured_requests_to_a_local_app_and_signatures_still_verify() {
    let h = Herald::start(
        "[[hooks]]\nchannels = [\"gh/*\"]\nverify = \"github\"\nsecret = \"dev secret\"\n",
    );
    // The developer's app on localhost.
    let (local, got) = local_app().await;
    // Captured before forward runs; `--since 0` replays it.
    let body = br#"{"ref": "refs/heads/main", "n": 1.0}"#;
    let sig = github_signature("dev secret", body);
    let headers = [
        ("x-hub-signature-256", sig.as_str()),
        ("x-github-event", "push"),
    ];
    let (status, _) = post_hook(&h, "/v1/hooks/gh/push?x=1", &headers, body.to_vec()).await;
    assert_eq!(status, 202);
    let child = spawn_forward(&h.url(""), "gh/*", &format!("{local}/webhooks"), Some(0));
    // And one that arrives while it runs.
    let later = br#"{"ref":"refs/heads/dev"}"#;
    let sig2 = github_signature("dev secret", later);
    post_hook(
        &h,
        "/v1/hooks/gh/push",
        &[("x-hub-signature-256", &sig2)],
        later.to_vec(),
    )
    .await;
    let seen = eventually("two forwarded requests", WAIT, async || {
        let g = got.lock().unwrap();
        (g.len() == 2).then(|| g.clone())
    })
    .await;
    drop(child);
    let (method, uri, headers, received) = &seen[0];
    assert_eq!((method.as_str(), uri.as_str()), ("POST", "/webhooks?x=1"));
    assert_eq!(received.as_ref(), body);
    assert_eq!(headers["x-github-event"], "push");
    // The sender's signature verifies against what the local app got.
    let sig = headers["x-hub-signature-256"].to_str().unwrap();
    assert_eq!(sig, github_signature("dev secret", received));
    assert_eq!(seen[1].3.as_ref(), later);
}
