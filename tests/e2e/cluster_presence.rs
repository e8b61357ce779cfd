//! Presence across a cluster on a real redis-server: one member per user whatever the node,
//! every node told each change once, a dead node's members leave, no phantom after Redis
//! comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{nodes, Redis};
use crate::common::*;
use crate::presence::{member, next_presence, users};
use crate::webhooks::eventually;

/// Fast heartbeats so a dead node is noticed within seconds, with a timeout thirteen
/// heartbeats long so a live node on a loaded box is never taken for dead.
const FAST: &str = "[presence]\nheartbeat = \"300ms\"\nnode_timeout = \"4s\"\n";

/// What a node says about a channel's members: user -> connections.
async fn members_on(node: &Herald, channel: &str) -> BTreeMap<String, u64> {
    let page = get_json(node.url(&format!("/v1/presence?channel={channel}"))).await;
    page["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"].as_str().unwrap().to_string(),
                m["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn members_on_three_nodes_agree_and_every_node_hears_each_change_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let cluster = nodes(&redis, 3, "");
    let mut watchers = Vec::new();
    for (i, node) in cluster.iter().enumerate() {
        let (ws, _) = member(node, "room:c", &format!("watcher{i}"), json!({})).await;
        watchers.push(ws);
    }
    // Alice in two tabs on two nodes, bob and carol elsewhere.
    let (_a0, _) = member(&cluster[0], "room:c", "alice", json!({"n": 1})).await;
    let (_a1, _) = member(&cluster[1], "room:c", "alice", json!({"n": 1})).await;
    let (_b, _) = member(&cluster[1], "room:c", "bob", json!({})).await;
    let (_c, reply) = member(&cluster[2], "room:c", "carol", json!({})).await;
    assert_eq!(reply["presence"]["count"], 6, "{reply}");

    let mut want = BTreeMap::new();
    for i in 0..3 {
        want.insert(format!("watcher{i}"), 1);
    }
    want.insert("alice".to_string(), 2);
    want.insert("bob".to_string(), 1);
    want.insert("carol".to_string(), 1);
    for node in &cluster {
        assert_eq!(members_on(node, "room:c").await, want);
    }
    // Every watcher hears each join after its own exactly once, and nothing twice: the
    // last joiner's (carol's) join ends what it is told.
    for (i, ws) in watchers.iter_mut().enumerate() {
        let mut joined: Vec<String> = Vec::new();
        while !joined.contains(&"carol".to_string()) {
            let (joins, leaves, _) = next_presence(ws).await;
            assert!(leaves.is_empty(), "{leaves:?}");
            joined.extend(joins);
        }
        let mut expected: Vec<String> = (i + 1..3).map(|j| format!("watcher{j}")).collect();
        expected.extend(["alice", "bob", "carol"].map(String::from));
        joined.sort();
        expected.sort();
        assert_eq!(joined, expected, "watcher{i}");
    }
}

#[tokio::test]
async fn a_killed_node_has_its_members_leave_everywhere() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut cluster = nodes(&redis, 3, FAST);
    let (mut watcher, _) = member(&cluster[0], "room:k", "watcher", json!({})).await;
    let (_v, _) = member(&cluster[2], "room:k", "victim", json!({})).await;
    // Present on the dying node and a live one: stays.
    let (_s1, _) = member(&cluster[2], "room:k", "sturdy", json!({})).await;
    let (_s2, _) = member(&cluster[1], "room:k", "sturdy", json!({})).await;
    let mut joined = Vec::new();
    while joined.len() < 2 {
        joined.extend(next_presence(&mut watcher).await.0);
    }
    let _occupant = Sse::connect(&cluster[2], "channel=room:k", None).await;
    cluster[2].kill9();
    // The bound: node_timeout plus a heartbeat, with room for a slow box; WAIT is far above.
    let (joins, leaves, count) = next_presence(&mut watcher).await;
    assert_eq!(
        (joins, leaves, count),
        (vec![], vec!["victim".to_string()], 2)
    );
    for node in &cluster[..2] {
        let members = members_on(node, "room:k").await;
        assert_eq!(members.get("sturdy"), Some(&1), "{members:?}");
        assert!(!members.contains_key("victim"));
        // The dead node's subscribers no longer occupy the channel (left: the watcher and
        // sturdy on node 1).
        let page = get_json(node.url("/v1/channels?prefix=room:k")).await;
        assert_eq!(page["channels"][0]["subscribers"], 2, "{page}");
    }
}

#[tokio::test]
async fn a_redis_restart_leaves_no_phantom_and_loses_no_member() {
    for persist in [true, false] {
        let Some(mut redis) = Redis::start_with(persist) else {
            return;
        };
        let cluster = nodes(&redis, 2, FAST);
        let (mut stay, _) = member(&cluster[0], "room:p", "stay", json!({})).await;
        let (gone, _) = member(&cluster[1], "room:p", "gone", json!({})).await;
        next_presence(&mut stay).await;
        redis.kill9();
        // While Redis is down, `gone` leaves: its node cannot tell anyone yet.
        drop(gone);
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.restart();
        // With its data back (persist) Redis still lists `gone` until the node re-states
        // what it holds; without (a Redis that lost everything) `stay` must come back.
        for node in &cluster {
            eventually("the members to settle", WAIT, async || {
                let members = get_json(node.url("/v1/presence?channel=room:p")).await;
                (users_of(&members) == ["stay"]).then_some(())
            })
            .await;
        }
        // The watcher's view converges too: a fresh list or a leave, never a phantom.
        let mut view: Vec<String> = vec!["gone".into(), "stay".into()];
        eventually("the watcher's view to settle", WAIT, async || {
            let m = match ws_read(&mut stay).await {
                WsRead::Json(m) => m,
                WsRead::Closed(c) => panic!("watcher closed: {c:?}"),
            };
            if m["op"] == "presence" {
                if let Some(list) = m.get("members") {
                    view = users(list);
                }
                for l in m["leaves"].as_array().into_iter().flatten() {
                    view.retain(|u| u != l["user"].as_str().unwrap());
                }
                for j in m["joins"].as_array().into_iter().flatten() {
                    let u = j["user"].as_str().unwrap().to_string();
                    if !view.contains(&u) {
                        view.push(u);
                    }
                }
            }
            (view == ["stay"]).then_some(())
        })
        .await;
    }
}

fn users_of(page: &Value) -> Vec<String> {
    users(&page["members"])
}

#[tokio::test]
async fn a_cluster_tells_webhooks_each_presence_change_once() {
    use crate::cluster::wait_for_endpoint;
    use crate::presence::{close, notices};
    use crate::webhooks::{create_webhook, Receiver, Reply};
    let Some(redis) = Redis::start() else {
        return;
    };
    let cluster = nodes(&redis, 2, "[webhooks]\nallow_private = true\n");
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (_, created) = create_webhook(
        &cluster[0],
        json!({"url": receiver.url(), "channels": ["team:*"],
               "notifications": ["presence.join", "presence.leave"]}),
    )
    .await;
    wait_for_endpoint(&cluster, created["id"].as_str().unwrap()).await;
    // One user on both nodes: one join, one leave, whichever node made them.
    let (a, _) = member(&cluster[0], "team:x", "una", json!({})).await;
    let (b, _) = member(&cluster[1], "team:x", "una", json!({})).await;
    close(a).await;
    close(b).await;
    eventually("the join and the leave", WAIT, async || {
        (notices(&receiver).len() >= 2).then_some(())
    })
    .await;
    // A later change marks the end: nothing else arrives before it.
    let (_c, _) = member(&cluster[1], "team:x", "vic", json!({})).await;
    eventually("the marker", WAIT, async || {
        (notices(&receiver).len() >= 3).then_some(())
    })
    .await;
    let una = |kind: &str| {
        (
            kind.to_string(),
            "team:x".to_string(),
            Some("una".to_string()),
        )
    };
    assert_eq!(
        notices(&receiver),
        [
            una("presence.join"),
            una("presence.leave"),
            ("presence.join".into(), "team:x".into(), Some("vic".into()))
        ]
    );
}

#[tokio::test]
async fn a_node_taken_for_dead_brings_its_members_back_when_it_returns() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let cluster = nodes(&redis, 2, FAST);
    let (mut watcher, _) = member(&cluster[0], "room:z", "watcher", json!({})).await;
    let (_frozen, _) = member(&cluster[1], "room:z", "frozen", json!({})).await;
    assert_eq!(next_presence(&mut watcher).await.0, ["frozen"]);
    let signal = |sig: &str| {
        let ok = tool("kill")
            .args([sig, &cluster[1].pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    // Node 1 freezes (a GC-like pause, a partition) past node_timeout: the others reap it.
    signal("-STOP");
    let told = next_presence(&mut watcher).await;
    signal("-CONT");
    assert_eq!(told, (vec![], vec!["frozen".to_string()], 1));
    // Back, it finds itself unknown and re-states its members: "frozen" is still connected.
    assert_eq!(
        next_presence(&mut watcher).await,
        (vec!["frozen".to_string()], vec![], 2)
    );
    for node in &cluster {
        assert_eq!(members_on(node, "room:z").await.get("frozen"), Some(&1));
    }
}

/// The whole pusher-js / SDK suite with every client and SDK call spread over three nodes:
/// socket exclusion, presence, client events, channel queries and terminate all cross nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pusher_suite_passes_on_a_three_node_cluster() {
    use crate::pusher::{run_scenarios, script, servers, APP};
    let Some(script) = script() else { return };
    let Some(redis) = Redis::start() else {
        return;
    };
    use crate::webhooks::{Receiver, Reply};
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let config = format!(
        "{APP}webhooks = [\"{}\"]\nwebhook_events = [\"client_event\"]\n[webhooks]\nallow_private = true\n",
        receiver.url()
    );
    let cluster = nodes(&redis, 3, &config);
    let refs: Vec<&Herald> = cluster.iter().collect();
    let lines = run_scenarios(script, servers(&refs), &[]).await;
    assert!(
        lines.iter().filter(|l| l.starts_with("OK ")).count() >= 9,
        "{lines:?}"
    );
    // Two client events were sent (the typing one and the scenario's marker): one webhook
    // each, from one node.
    eventually("the client_event webhooks", WAIT, async || {
        (receiver.got.lock().unwrap().len() >= 2).then_some(())
    })
    .await;
    // A later trigger on a channel the webhook ignores marks time passing; still one.
    crate::pusher::run_scenarios(
        crate::pusher::script().unwrap(),
        servers(&refs),
        &["batch_trigger"],
    )
    .await;
    let got = receiver.got.lock().unwrap().clone();
    let mut events: Vec<String> = got
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["events"][0]["name"], "client_event");
            body["events"][0]["event"].as_str().unwrap().to_string()
        })
        .collect();
    events.sort();
    assert_eq!(events, ["client-mark", "client-typing"], "each once");
}

/// #16 item 4: the console's stats name the cluster's nodes and say whether Redis answers;
/// `herald_presence_members` counts the memberships a node holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_the_nodes_redis_and_presence_members() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let cluster = nodes(&redis, 2, FAST);
    let (_alice, _) = member(&cluster[0], "room", "alice", json!(null)).await;
    let cluster_view = async |node: &Herald| -> Value {
        get_json(node.url("/v1/stats?seconds=1")).await["cluster"].clone()
    };
    let view = eventually("both nodes seen, Redis up", WAIT, async || {
        let c = cluster_view(&cluster[1]).await;
        (c["redis"] == "up" && c["nodes"].as_array()?.len() == 2).then_some(c)
    })
    .await;
    let this = view["this_node"].as_str().unwrap();
    assert!(
        view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == this && n["last_heartbeat_ms_ago"].as_u64().unwrap() < 5_000),
        "{view}"
    );
    let members = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("herald_presence_members "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(members(&get_text(cluster[0].url("/metrics")).await), 1.0);
    assert_eq!(members(&get_text(cluster[1].url("/metrics")).await), 0.0);
    redis.kill9();
    let c = eventually("Redis down", WAIT, async || {
        let c = cluster_view(&cluster[0]).await;
        (c["redis"] == "down").then_some(c)
    })
    .await;
    assert!(c["error"].as_str().is_some_and(|e| !e.is_empty()), "{c}");
}

/// A presence subscribe refused while Redis is down leaves nothing behind: once Redis is
/// back and the node has re-stated what it holds, the refused user is nowhere.
#[tokio::test]
async fn a_join_refused_during_an_outage_leaves_no_phantom() {
    let Some(mut redis) = Redis::start_with(false) else {
        return;
    };
    let cluster = nodes(&redis, 2, FAST);
    let (_stay, _) = member(&cluster[0], "room:r", "stay", json!({})).await;
    redis.kill9();
    let mut ws = ws_connect(&cluster[0], "").await;
    ws_json(&mut ws).await; // welcome
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "room:r", "presence": true, "user": "ghost", "ref": "g"}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("presence_unavailable")),
        "{reply}"
    );
    redis.restart();
    // Redis came back empty: `stay` is listed again only once node 0 has re-stated all it
    // holds, which is when a phantom would appear with it.
    for node in &cluster {
        eventually("node 0 to re-state its members", WAIT, async || {
            let members = get_json(node.url("/v1/presence?channel=room:r")).await;
            (!members["members"].as_array()?.is_empty()).then_some(users_of(&members))
        })
        .await;
        let members = get_json(node.url("/v1/presence?channel=room:r")).await;
        assert_eq!(users_of(&members), ["stay"], "{members}");
        let page = get_json(node.url("/v1/channels?prefix=room:r")).await;
        assert!(!page.to_string().contains("ghost"), "{page}");
    }
    drop(ws);
}

/// An endpoint created on one node wants presence notices from every node at once: joins on
/// another node right after the creation are all told (no refresh window drops them).
#[tokio::test]
async fn a_new_endpoint_hears_every_node_from_its_creation() {
    use crate::presence::notices;
    use crate::webhooks::{create_webhook, Receiver, Reply};
    let Some(redis) = Redis::start() else {
        return;
    };
    let cluster = nodes(&redis, 2, "[webhooks]\nallow_private = true\n");
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (status, created) = create_webhook(
        &cluster[0],
        json!({"url": receiver.url(), "channels": ["lobby:*"], "notifications": ["presence.join"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // At once, on the other node.
    let mut held = Vec::new();
    for i in 0..12 {
        held.push(
            member(&cluster[1], "lobby:a", &format!("u{i:02}"), json!({}))
                .await
                .0,
        );
    }
    eventually("every join", WAIT, async || {
        (notices(&receiver).len() >= 12).then_some(())
    })
    .await;
    let mut told: Vec<String> = notices(&receiver)
        .into_iter()
        .filter_map(|(_, _, user)| user)
        .collect();
    told.sort();
    let want: Vec<String> = (0..12).map(|i| format!("u{i:02}")).collect();
    assert_eq!(told, want);
    drop(held);
}
