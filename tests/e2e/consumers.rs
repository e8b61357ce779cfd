//! Webhook consumers: a token with a `webhooks` claim manages its owner's endpoints only, on
//! channels within its scope, and nothing else; admin keys still see everything.

use serde_json::{json, Value};

use crate::auth::token;
use crate::common::*;
use crate::webhooks::{eventually, Receiver, Reply};

const KEYED: &str = "[auth]\napi_keys = [\"k-admin\"]\njwt_secret = \"test-secret\"\n\
                     [webhooks]\nallow_private = true\n";

/// A request with a bearer credential: (status, JSON body or null).
async fn call(method: &str, url: String, credential: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = http()
        .request(method.parse().unwrap(), url)
        .bearer_auth(credential);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn acme_token(h: &Herald) -> String {
    token(
        h,
        &[
            "--webhook-owner",
            "acme",
            "--webhook-channel",
            "orders.acme.*",
        ],
    )
}

#[tokio::test]
async fn a_consumer_token_manages_only_its_owners_endpoints_within_its_channels() {
    let h = Herald::start(KEYED);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let acme = acme_token(&h);
    let hooks = h.url("/v1/webhooks");

    // Created for its owner, whatever else the body says.
    let body = json!({"url": receiver.url(), "channels": ["orders.acme.*"]});
    let (status, own) = call("POST", hooks.clone(), &acme, Some(body)).await;
    assert_eq!(status, 201, "{own}");
    assert_eq!(own["owner"], "acme");
    let own_id = own["id"].as_str().unwrap().to_string();
    let body = json!({"url": receiver.url(), "channels": ["orders.acme.*"], "owner": "beta"});
    let (status, reply) = call("POST", hooks.clone(), &acme, Some(body)).await;
    assert_error(status, &reply, 403, "not_your_owner");
    for outside in ["orders.*", "orders.beta.eu", "*"] {
        let body = json!({"url": receiver.url(), "channels": [outside]});
        let (status, reply) = call("POST", hooks.clone(), &acme, Some(body)).await;
        assert_error(status, &reply, 403, "channel_out_of_scope");
    }

    // Another owner's endpoint, made with the admin key.
    let body = json!({"url": receiver.url(), "channels": ["orders.beta.*"], "owner": "beta"});
    let (status, beta) = call("POST", hooks.clone(), "k-admin", Some(body)).await;
    assert_eq!(status, 201, "{beta}");
    let beta_id = beta["id"].as_str().unwrap().to_string();

    let (_, listed) = call("GET", hooks.clone(), &acme, None).await;
    let ids: Vec<&str> = listed["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own_id.as_str()], "{listed}");
    let (_, all) = call("GET", hooks.clone(), "k-admin", None).await;
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 2, "{all}");

    // Every operation on the other owner's endpoint is refused as if it did not exist (a 403
    // would confirm it does), and changes nothing.
    let other = |path: &str| h.url(&format!("/v1/webhooks/{beta_id}{path}"));
    for (method, url, body) in [
        ("GET", other(""), None),
        ("PATCH", other(""), Some(json!({"description": "mine now"}))),
        ("DELETE", other(""), None),
        ("POST", other("/rotate-secret"), None),
        ("POST", other("/replay"), Some(json!({"since": 0}))),
        ("GET", other("/deliveries"), None),
    ] {
        let (status, reply) = call(method, url.clone(), &acme, body.clone()).await;
        assert_error(status, &reply, 404, "not_found");
        let none = url.replace(&beta_id, "wh_00000000000000000000");
        let (_, unknown) = call(method, none, &acme, body).await;
        assert_eq!(
            reply["error"]["message"]
                .as_str()
                .map(|m| m.replace(&beta_id, "ID")),
            unknown["error"]["message"]
                .as_str()
                .map(|m| m.replace("wh_00000000000000000000", "ID")),
            "the same answer as for no endpoint at all"
        );
    }
    let (status, still) = call("GET", other(""), "k-admin", None).await;
    assert_eq!(
        (status, &still["description"], &still["secret"]),
        (200, &json!(""), &Value::Null)
    );
    assert_eq!(still["channels"], json!(["orders.beta.*"]));

    // Its own endpoint: edits stay within scope.
    let mine = h.url(&format!("/v1/webhooks/{own_id}"));
    let (status, reply) = call(
        "PATCH",
        mine.clone(),
        &acme,
        Some(json!({"channels": ["billing.*"]})),
    )
    .await;
    assert_error(status, &reply, 403, "channel_out_of_scope");
    let (status, reply) = call(
        "PATCH",
        mine.clone(),
        &acme,
        Some(json!({"description": "ours"})),
    )
    .await;
    assert_eq!(
        (status, &reply["description"]),
        (200, &json!("ours")),
        "{reply}"
    );

    // Deliveries: its events arrive, and it reads its own attempt log.
    let (status, published) = call(
        "POST",
        h.url("/v1/events"),
        "k-admin",
        Some(json!({"channel": "orders.acme.eu", "data": {"n": 1}})),
    )
    .await;
    assert_eq!(status, 201, "{published}");
    let seq = published["seq"].as_u64().unwrap();
    eventually("acme's delivery", WAIT, async || {
        let (_, log) = call("GET", format!("{mine}/deliveries"), &acme, None).await;
        log["deliveries"].as_array().and_then(|d| {
            d.iter()
                .find(|a| a["seq"] == seq && a["status"] == "delivered")
                .cloned()
        })
    })
    .await;

    // The list across endpoints shows only its own, though beta has deliveries too.
    let (status, _) = call(
        "POST",
        h.url("/v1/events"),
        "k-admin",
        Some(json!({"channel": "orders.beta.eu", "data": {"n": 2}})),
    )
    .await;
    assert_eq!(status, 201);
    eventually("beta's delivery", WAIT, async || {
        let (_, all) = call("GET", h.url("/v1/webhooks/deliveries"), "k-admin", None).await;
        let all = all["deliveries"].as_array()?.clone();
        all.iter()
            .any(|a| a["endpoint"] == beta_id.as_str())
            .then_some(())
    })
    .await;
    let (status, mine_only) = call("GET", h.url("/v1/webhooks/deliveries"), &acme, None).await;
    assert_eq!(status, 200);
    let listed = mine_only["deliveries"].as_array().unwrap();
    assert!(
        !listed.is_empty() && listed.iter().all(|a| a["endpoint"] == own_id.as_str()),
        "{mine_only}"
    );

    // The token is only that: it can neither publish nor subscribe.
    let (status, reply) = call(
        "POST",
        h.url("/v1/events"),
        &acme,
        Some(json!({"channel": "orders.acme.eu", "data": {}})),
    )
    .await;
    assert_error(status, &reply, 403, "forbidden");
    let (status, _) = call("GET", h.url("/v1/sse?channel=orders.beta.eu"), &acme, None).await;
    assert_eq!(status, 403);

    // A subscriber token without the claim manages nothing.
    let plain = token(&h, &["--sub-channel", "orders.acme.*"]);
    let (status, reply) = call("GET", hooks.clone(), &plain, None).await;
    assert_error(status, &reply, 403, "forbidden");

    // Deleting its own works.
    let (status, _) = call("DELETE", mine, &acme, None).await;
    assert_eq!(status, 204);
}

/// A SaaS backend trades its API key for a consumer's session token (for the portal): the
/// same rules hold, and it subscribes to nothing unless asked.
#[tokio::test]
async fn a_session_token_can_carry_a_consumer_scope() {
    let h = Herald::start(KEYED);
    let (status, minted) = call(
        "POST",
        h.url("/v1/tokens"),
        "k-admin",
        Some(json!({"webhooks": {"owner": "acme", "channels": ["orders.acme.*"]}})),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let session = minted["token"].as_str().unwrap().to_string();
    let body = json!({"url": "http://127.0.0.1:9/hook", "channels": ["orders.acme.*"]});
    let (status, created) = call("POST", h.url("/v1/webhooks"), &session, Some(body)).await;
    assert_eq!(
        (status, &created["owner"]),
        (201, &json!("acme")),
        "{created}"
    );
    let (status, _) = call(
        "GET",
        h.url("/v1/sse?channel=orders.acme.eu"),
        &session,
        None,
    )
    .await;
    assert_eq!(
        status, 403,
        "a consumer session token subscribes to nothing by default"
    );
    let (status, reply) = call(
        "POST",
        h.url("/v1/tokens"),
        "k-admin",
        Some(json!({"webhooks": {"owner": "", "channels": []}})),
    )
    .await;
    assert_error(status, &reply, 400, "invalid_webhooks_claim");
}

/// Each endpoint multiplies the delivery work of every matching event: an owner has at most
/// `max_endpoints_per_owner`, created at most `owner_creations_per_minute`, each refused by
/// name.
#[tokio::test]
async fn an_owner_has_a_capped_number_of_endpoints_made_at_a_capped_rate() {
    let h = Herald::start(&format!(
        "{KEYED}max_endpoints_per_owner = 3\nowner_creations_per_minute = 100\n"
    ));
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let acme = acme_token(&h);
    let body = json!({"url": receiver.url(), "channels": ["orders.acme.*"]});
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, e) = call("POST", h.url("/v1/webhooks"), &acme, Some(body.clone())).await;
        assert_eq!(status, 201, "{e}");
        ids.push(e["id"].as_str().unwrap().to_string());
    }
    let (status, reply) = call("POST", h.url("/v1/webhooks"), &acme, Some(body.clone())).await;
    assert_error(status, &reply, 409, "endpoint_limit");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_endpoints_per_owner"));
    // Room again once one is deleted.
    let (status, _) = call(
        "DELETE",
        h.url(&format!("/v1/webhooks/{}", ids[0])),
        &acme,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call("POST", h.url("/v1/webhooks"), &acme, Some(body.clone())).await;
    assert_eq!(status, 201);

    let h = Herald::start(&format!(
        "{KEYED}max_endpoints_per_owner = 100\nowner_creations_per_minute = 2\n"
    ));
    let acme = acme_token(&h);
    for _ in 0..2 {
        let (status, e) = call("POST", h.url("/v1/webhooks"), &acme, Some(body.clone())).await;
        assert_eq!(status, 201, "{e}");
    }
    let r = http()
        .post(h.url("/v1/webhooks"))
        .bearer_auth(&acme)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let reply: Value = r.json().await.unwrap();
    assert_error(429, &reply, 429, "rate_limited");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("owner_creations_per_minute"));
    // The admin key (no owner) is not an owner's creation.
    let (status, _) = call("POST", h.url("/v1/webhooks"), "k-admin", Some(body)).await;
    assert_eq!(status, 201);
}

/// "`null` removes" a rate limit; `/v1/webhooks/health` shows a consumer token its owner's
/// endpoints only (an API key, every one).
#[tokio::test]
async fn rate_limits_come_off_with_null_and_health_is_scoped_to_the_owner() {
    let h = Herald::start(KEYED);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let acme = acme_token(&h);
    let body = json!({"url": receiver.url(), "channels": ["orders.acme.*"], "rate_limit": 5});
    let (status, mine) = call("POST", h.url("/v1/webhooks"), &acme, Some(body)).await;
    assert_eq!((status, &mine["rate_limit"]), (201, &json!(5)), "{mine}");
    let id = mine["id"].as_str().unwrap().to_string();
    let (status, other) = call(
        "POST",
        h.url("/v1/webhooks"),
        "k-admin",
        Some(json!({"url": receiver.url(), "channels": ["orders.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{other}");
    let url = h.url(&format!("/v1/webhooks/{id}"));
    let (status, patched) = call(
        "PATCH",
        url.clone(),
        &acme,
        Some(json!({"rate_limit": null})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    let (_, now) = call("GET", url, &acme, None).await;
    assert_eq!(now["rate_limit"], Value::Null, "{now}");

    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, health) = call("GET", h.url("/v1/webhooks/health"), &acme, None).await;
    assert_eq!(ids(&health), vec![id.clone()], "{health}");
    let (_, all) = call("GET", h.url("/v1/webhooks/health"), "k-admin", None).await;
    assert_eq!(ids(&all).len(), 2, "{all}");
}

/// `GET /v1/webhooks/{id}/events/{seq}` shows a consumer the event its endpoint was sent,
/// and nothing else: not an event on a channel it does not take, not another owner's
/// endpoint, and a seq that is not a number gets the JSON error.
#[tokio::test]
async fn an_endpoint_shows_only_the_events_it_takes() {
    let h = Herald::start(KEYED);
    let acme = acme_token(&h);
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (status, ep) = call(
        "POST",
        h.url("/v1/webhooks"),
        &acme,
        Some(json!({"url": receiver.url(), "channels": ["orders.acme.*"]})),
    )
    .await;
    assert_eq!(status, 201, "{ep}");
    let id = ep["id"].as_str().unwrap().to_string();
    let mine = publish_as(
        &h,
        "k-admin",
        json!({"channel": "orders.acme.1", "type": "paid", "data": 1}),
    )
    .await;
    let other = publish_as(
        &h,
        "k-admin",
        json!({"channel": "orders.globex.1", "data": 2}),
    )
    .await;
    let event = |seq: &str| {
        call(
            "GET",
            h.url(&format!("/v1/webhooks/{id}/events/{seq}")),
            &acme,
            None,
        )
    };
    let (status, body) = event(&mine.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["seq"].as_u64(), body["type"].as_str()),
        (Some(mine), Some("paid"))
    );
    let (status, body) = event(&other.to_string()).await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = event("not-a-seq").await;
    assert_error(status, &body, 400, "invalid_seq");
    // Another owner's token: as if the endpoint did not exist.
    let globex = token(
        &h,
        &[
            "--webhook-owner",
            "globex",
            "--webhook-channel",
            "orders.globex.*",
        ],
    );
    let (status, body) = call(
        "GET",
        h.url(&format!("/v1/webhooks/{id}/events/{mine}")),
        &globex,
        None,
    )
    .await;
    assert_error(status, &body, 404, "not_found");
}
