//! Presence and occupancy end to end, through real sockets: members over WS and SSE, one
//! member per user, join/leave notifications, identity from tokens, the HTTP queries.

use serde_json::{json, Value};

use crate::common::*;

/// Joins `channel` as a member over a new WebSocket; returns it and the subscribe reply.
pub async fn member(h: &Herald, channel: &str, user: &str, info: Value) -> (Ws, Value) {
    let mut ws = ws_connect(h, "").await;
    ws_json(&mut ws).await; // welcome
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": channel, "presence": true, "user": user, "info": info}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["op"], "subscribed", "{reply}");
    (ws, reply)
}

/// The next presence message, as (joined users, left users, count).
pub async fn next_presence(ws: &mut Ws) -> (Vec<String>, Vec<String>, u64) {
    let mut skipped = Vec::new();
    let m = ws_until_op(ws, "presence", &mut skipped).await;
    let users = |side: &str| -> Vec<String> {
        m[side]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["user"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    (
        users("joins"),
        users("leaves"),
        m["count"].as_u64().unwrap(),
    )
}

pub fn users(list: &Value) -> Vec<String> {
    let mut u: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_string())
        .collect();
    u.sort();
    u
}

pub async fn close(mut ws: Ws) {
    let _ = ws.close(None).await;
    // Read to the end so the server sees the close handshake finish.
    while let WsRead::Json(_) = ws_read(&mut ws).await {}
}

#[tokio::test]
async fn two_tabs_of_one_user_are_one_member() {
    let h = Herald::start("");
    let (mut bob, reply) = member(&h, "room:1", "bob", json!({})).await;
    assert_eq!(reply["presence"]["count"], 1);
    assert_eq!(users(&reply["presence"]["members"]), ["bob"]);

    let (tab1, _) = member(&h, "room:1", "alice", json!({"name": "Alice"})).await;
    assert_eq!(
        next_presence(&mut bob).await,
        (vec!["alice".into()], vec![], 2)
    );
    // The second tab says something else about alice: the first connection's info stands.
    let (tab2, reply) = member(&h, "room:1", "alice", json!({"name": "Alice (phone)"})).await;
    assert_eq!(reply["presence"]["count"], 2, "{reply}");
    let page = get_json(h.url("/v1/presence?channel=room:1")).await;
    let alice = page["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"] == "alice")
        .unwrap()
        .clone();
    assert_eq!(alice["connections"], 2, "{page}");
    assert_eq!(alice["info"], json!({"name": "Alice"}), "the first's info");

    // One tab closes: alice is still here. The next thing bob hears is carol's join, not a
    // leave of alice (the second tab's join told nothing either).
    close(tab1).await;
    let (carol, _) = member(&h, "room:1", "carol", json!(null)).await;
    assert_eq!(
        next_presence(&mut bob).await,
        (vec!["carol".into()], vec![], 3)
    );
    close(tab2).await;
    assert_eq!(
        next_presence(&mut bob).await,
        (vec![], vec!["alice".into()], 2)
    );
    drop(carol);
    assert_eq!(
        next_presence(&mut bob).await,
        (vec![], vec!["carol".into()], 1)
    );
}

#[tokio::test]
async fn sse_readers_are_members_while_their_stream_is_open() {
    let h = Herald::start("");
    let (mut ws, _) = member(&h, "room:sse", "wanda", json!({})).await;
    let info = "%7B%22avatar%22%3A%22s.png%22%7D"; // {"avatar":"s.png"}
    let mut sse = Sse::connect(
        &h,
        &format!("channel=room:sse&presence=true&user=sam&info={info}"),
        None,
    )
    .await;
    let first = sse.next().await.unwrap();
    assert_eq!(first.name.as_deref(), Some("presence"));
    assert_eq!(
        first.id, None,
        "presence frames never move the resume cursor"
    );
    let state: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(users(&state["members"]), ["sam", "wanda"]);
    assert_eq!(
        next_presence(&mut ws).await,
        (vec!["sam".into()], vec![], 2)
    );

    // The SSE member hears the WS side, and events still flow with their ids.
    let (other, _) = member(&h, "room:sse", "otto", json!({})).await;
    let heard = sse.next().await.unwrap();
    assert_eq!(heard.name.as_deref(), Some("presence"));
    let diff: Value = serde_json::from_str(&heard.data).unwrap();
    assert_eq!(diff["joins"][0]["user"], "otto", "{diff}");
    assert_eq!(diff["count"], 3);
    let seq = publish_one(&h, "room:sse", json!("hi")).await;
    let event = sse.next().await.unwrap();
    assert_eq!(event.id, Some(seq));
    next_presence(&mut ws).await; // otto

    drop(sse);
    let (_, left, count) = next_presence(&mut ws).await;
    assert_eq!((left, count), (vec!["sam".to_string()], 2));
    drop(other);
}

#[tokio::test]
async fn a_resuming_member_gets_the_list_again() {
    let h = Herald::start("");
    let (stay, _) = member(&h, "room:r", "stay", json!({})).await;
    let (ws, _) = member(&h, "room:r", "roam", json!({})).await;
    close(ws).await;
    let (_ws, reply) = member(&h, "room:r", "roam", json!({})).await;
    assert_eq!(users(&reply["presence"]["members"]), ["roam", "stay"]);
    drop(stay);
}

#[tokio::test]
async fn joins_and_leaves_inside_one_window_are_not_told() {
    // A window wide enough that the blip's join and close (milliseconds apart) share it even
    // on a loaded box.
    let h = Herald::start("[presence]\nwindow = \"3s\"\n");
    let (mut watcher, _) = member(&h, "room:w", "watcher", json!({})).await;
    let (blip, _) = member(&h, "room:w", "blip", json!({})).await;
    close(blip).await;
    let (_stays, _) = member(&h, "room:w", "stays", json!({})).await;
    // One window: blip came and went, only stays is told.
    assert_eq!(
        next_presence(&mut watcher).await,
        (vec!["stays".into()], vec![], 2)
    );
}

#[tokio::test]
async fn above_the_list_limit_only_counts_are_told() {
    let h = Herald::start("[presence]\nlist_limit = 2\n");
    let (mut a, _) = member(&h, "room:big", "a", json!({})).await;
    let (_b, _) = member(&h, "room:big", "b", json!({})).await;
    assert_eq!(next_presence(&mut a).await, (vec!["b".into()], vec![], 2));
    let (_c, reply) = member(&h, "room:big", "c", json!({})).await;
    assert_eq!(reply["presence"]["count"], 3);
    assert!(reply["presence"].get("members").is_none(), "{reply}");
    let mut skipped = Vec::new();
    let m = ws_until_op(&mut a, "presence", &mut skipped).await;
    assert_eq!(
        m,
        json!({"op": "presence", "channel": "room:big", "count": 3})
    );
    // The list is still there, paged.
    let page = get_json(h.url("/v1/presence?channel=room:big&limit=2")).await;
    assert_eq!(users(&page["members"]), ["a", "b"]);
    assert_eq!(page["next"], "b");
    let page = get_json(h.url("/v1/presence?channel=room:big&limit=2&after=b")).await;
    assert_eq!(users(&page["members"]), ["c"]);
    assert_eq!(page["next"], Value::Null);
    assert_eq!(page["count"], 3);
}

#[tokio::test]
async fn open_mode_needs_a_user_and_refuses_patterns_and_bad_info() {
    let h = Herald::start("");
    let mut ws = ws_connect(&h, "").await;
    ws_json(&mut ws).await;
    for (message, code) in [
        (
            json!({"op": "subscribe", "channel": "room:x", "presence": true}),
            "presence_identity",
        ),
        (
            json!({"op": "subscribe", "channel": "room:*", "presence": true, "user": "u"}),
            "presence_pattern",
        ),
        (
            json!({"op": "subscribe", "channel": "room:x", "presence": true, "user": "u", "info": [1]}),
            "invalid_presence",
        ),
        (
            json!({"op": "subscribe", "channel": "room:x", "presence": true, "user": ""}),
            "invalid_presence",
        ),
    ] {
        ws_send(&mut ws, message.clone()).await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(reply["op"], "error", "{message} -> {reply}");
        assert_eq!(reply["code"], code, "{message} -> {reply}");
    }
    let r = client()
        .get(h.url("/v1/sse?channel=room:x&presence=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "presence_identity");
    // Nothing was joined by the refusals.
    let page = get_json(h.url("/v1/presence?channel=room:x")).await;
    assert_eq!(page["count"], 0);
}

const KEYED: &str = "[auth]\napi_keys = [\"k-admin\"]\njwt_secret = \"presence-secret\"\n";

fn token(claims: Value) -> String {
    let mut claims = claims;
    claims["exp"] = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600)
        .into();
    crate::auth::signed(b"presence-secret", claims)
}

#[tokio::test]
async fn tokens_say_who_the_member_is_and_need_a_presence_grant() {
    let h = Herald::start(KEYED);
    let granted = token(json!({
        "sub": "u-42", "sub_channels": ["room:*"], "presence_channels": ["room:*"],
        "info": {"name": "Forty-Two"}
    }));
    let ungranted = token(json!({"sub": "u-7", "sub_channels": ["room:*"]}));

    let mut ws = ws_connect(&h, &format!("?token={ungranted}")).await;
    ws_json(&mut ws).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "room:t", "presence": true}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], "presence_forbidden", "{reply}");
    assert!(reply["message"]
        .as_str()
        .unwrap()
        .contains("presence_channels"));
    let r = client()
        .get(h.url(&format!(
            "/v1/sse?channel=room:t&presence=true&token={ungranted}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "presence_forbidden"
    );
    // Without presence the same token subscribes fine.
    ws_send(&mut ws, json!({"op": "subscribe", "channel": "room:t"})).await;
    assert_eq!(ws_json(&mut ws).await["op"], "subscribed");

    let mut ws = ws_connect(&h, &format!("?token={granted}")).await;
    ws_json(&mut ws).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "room:t", "presence": true, "user": "someone-else"}),
    )
    .await;
    assert_eq!(ws_json(&mut ws).await["code"], "presence_identity");
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "room:t", "presence": true}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        reply["presence"]["members"],
        json!([{"user": "u-42", "info": {"name": "Forty-Two"}, "connections": 1}])
    );
    // The token holder may read presence of what it may subscribe to.
    let r = client()
        .get(h.url("/v1/presence?channel=room:t"))
        .bearer_auth(&granted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Channels (occupancy) need an API key.
    let r = client()
        .get(h.url("/v1/channels"))
        .bearer_auth(&granted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn channels_list_live_subscriber_counts() {
    let h = Herald::start("");
    let _sse = Sse::connect(&h, "channel=occ:a&channel=occ:b", None).await;
    let mut ws = ws_connect(&h, "?channel=occ:a").await;
    ws_json(&mut ws).await;
    ws_json(&mut ws).await; // subscribed
    let _pattern = Sse::connect(&h, "channel=occ:*", None).await;
    let _other = Sse::connect(&h, "channel=elsewhere", None).await;
    let (_m, _) = member(&h, "occ:c", "mia", json!({})).await;

    let page = get_json(h.url("/v1/channels?prefix=occ:")).await;
    assert_eq!(
        page["channels"],
        json!([
            {"channel": "occ:a", "subscribers": 2, "members": 0},
            {"channel": "occ:b", "subscribers": 1, "members": 0},
            {"channel": "occ:c", "subscribers": 1, "members": 1},
        ]),
        "patterns do not occupy a channel; {page}"
    );
    let page = get_json(h.url("/v1/channels?prefix=occ:&limit=2")).await;
    assert_eq!(page["next"], "occ:b");
    let page = get_json(h.url("/v1/channels?prefix=occ:&after=occ:b")).await;
    assert_eq!(page["channels"].as_array().unwrap().len(), 1);

    // Unsubscribing leaves the count at once.
    ws_send(&mut ws, json!({"op": "unsubscribe", "channel": "occ:a"})).await;
    ws_json(&mut ws).await;
    let page = get_json(h.url("/v1/channels?prefix=occ:a")).await;
    assert_eq!(page["channels"][0]["subscribers"], 1, "{page}");
}

/// The notices an endpoint got, in order: (type, channel, user).
pub fn notices(receiver: &crate::webhooks::Receiver) -> Vec<(String, String, Option<String>)> {
    let got = receiver.got.lock().unwrap().clone();
    let mut bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    bodies.sort_by_key(|b| b["seq"].as_u64());
    bodies.dedup_by_key(|b| b["seq"].as_u64());
    bodies
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_string(),
                b["channel"].as_str().unwrap().to_string(),
                b["data"]["user"].as_str().map(String::from),
            )
        })
        .collect()
}

#[tokio::test]
async fn webhooks_opt_in_to_presence_and_occupancy_notices() {
    use crate::webhooks::{
        create_webhook, eventually, verify_with_standardwebhooks, Receiver, Reply,
    };
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let plain = Receiver::start(|_, _| Reply::Status(204)).await;
    let (status, created) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["room:*"], "notifications":
            ["presence.join", "presence.leave", "channel.occupied", "channel.vacated"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["notifications"].as_array().unwrap().len(), 4);
    let (_, _) = create_webhook(&h, json!({"url": plain.url(), "channels": ["*"]})).await;
    let (status, bad) = create_webhook(
        &h,
        json!({"url": receiver.url(), "channels": ["*"], "notifications": ["presence.dance"]}),
    )
    .await;
    assert_error(status, &bad, 400, "invalid_webhook");

    let (ws, _) = member(&h, "room:n", "nina", json!({"role": "host"})).await;
    let (other, _) = member(&h, "lobby", "nina", json!({})).await; // not room:*
    close(ws).await;
    drop(other);
    let want = vec![
        ("channel.occupied".to_string(), "room:n".to_string(), None),
        (
            "presence.join".into(),
            "room:n".into(),
            Some("nina".to_string()),
        ),
        (
            "presence.leave".into(),
            "room:n".into(),
            Some("nina".into()),
        ),
        ("channel.vacated".into(), "room:n".into(), None),
    ];
    eventually("the four notices", WAIT, async || {
        (notices(&receiver).len() >= 4).then_some(())
    })
    .await;
    let got = notices(&receiver);
    // Occupancy is counted before the membership is made, and left after it ends.
    assert_eq!(got.len(), 4, "{got:?}");
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(sorted_got, sorted_want);
    assert!(
        got.iter().position(|n| n.0 == "presence.join")
            < got.iter().position(|n| n.0 == "presence.leave")
    );
    let first: Value = serde_json::from_slice(&receiver.got.lock().unwrap()[0].body).unwrap();
    assert!(first["seq"].as_u64().is_some(), "{first}");
    verify_with_standardwebhooks(
        created["secret"].as_str().unwrap(),
        &receiver.got.lock().unwrap(),
    );
    let join: Value = receiver
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .find(|b| b["type"] == "presence.join")
        .unwrap();
    assert_eq!(
        join["data"],
        json!({"user": "nina", "info": {"role": "host"}})
    );

    // Notices are not events to anyone else: the endpoint on `*` got nothing, history and a
    // `*` subscriber see nothing of them.
    publish_one(&h, "room:n", json!("after")).await;
    eventually("the plain endpoint's delivery", WAIT, async || {
        (plain.delivered().len() == 1).then_some(())
    })
    .await;
    let history = get_json(h.url("/v1/events?channel=*")).await;
    assert_eq!(history["events"].as_array().unwrap().len(), 1, "{history}");
    let mut everything = Sse::connect(&h, "channel=*", Some(0)).await;
    let e = everything.next().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&e.data).unwrap()["data"],
        "after"
    );
}

#[tokio::test]
async fn session_tokens_carry_presence_grants_and_info() {
    let h = Herald::start(KEYED);
    let r = client()
        .post(h.url("/v1/tokens"))
        .bearer_auth("k-admin")
        .json(
            &json!({"sub": "sid", "sub_channels": ["room:*"], "presence_channels": ["room:*"],
                      "info": {"name": "Sid"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut sse = Sse::connect(
        &h,
        &format!("channel=room:s&presence=true&token={token}"),
        None,
    )
    .await;
    let first = sse.next().await.unwrap();
    let state: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        state["members"],
        json!([{"user": "sid", "info": {"name": "Sid"}, "connections": 1}])
    );
}

#[tokio::test]
async fn herald_token_mints_presence_tokens() {
    let h = Herald::start(KEYED);
    let out = herald_command()
        .args(["token", "--sub", "cli-user", "--sub-channel", "room:*"])
        .args(["--presence-channel", "room:*", "--info", r#"{"via":"cli"}"#])
        .arg("--config")
        .arg(h.config_path())
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut ws = ws_connect(&h, &format!("?token={token}")).await;
    ws_json(&mut ws).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "room:cli", "presence": true}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        reply["presence"]["members"],
        json!([{"user": "cli-user", "info": {"via": "cli"}, "connections": 1}])
    );
    let bad = herald_command()
        .args(["token", "--sub", "x", "--info", "[1]", "--config"])
        .arg(h.config_path())
        .output_within();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--info must be a JSON object"));
}
