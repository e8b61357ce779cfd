//! The Pusher protocol through the real clients from npm (`tests/browser/pusher-node.mjs`:
//! pusher-js and the `pusher` server SDK), against the real binary, and what a Pusher event is
//! in Herald: an event with a seq, in history, seen by Herald's own SSE subscribers.
//!
//! Needs `node` and `npm --prefix tests/browser ci` (fails under CI without them).

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::common::*;

pub const APP: &str = "[[pusher.apps]]\nid = \"app-1\"\nkey = \"app-key\"\nsecret = \"app-secret\"\nclient_events = true\n";

/// The scenario script, or None (outside CI) without node and the npm packages.
pub fn script() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let ready = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
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
        "app": {"id": "app-1", "key": "app-key", "secret": "app-secret"},
        "only": if only.is_empty() { Value::Null } else { json!(only) },
    });
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(cfg.to_string())
        .output_within();
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
    let mut sse = Sse::connect(&h, "channel=pusher/app-1/news:ssports:e1:cx", Some(0)).await;
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
    assert_eq!(env["channel"], "pusher/app-1/news:ssports:e1:cx");
    assert_eq!(env["data"], json!({"score": "1-0"}));
    assert!(env["seq"].as_u64().unwrap() >= 1);
    let history = get_json(h.url("/v1/events?channel=pusher/app-1/*&limit=1000")).await;
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
    let mut child = std::process::Command::new("node")
        .arg(script)
        .args([key, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::from(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
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
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let h = Herald::start(&format!(
        "{APP}webhooks = [\"{}\"]\n[webhooks]\nallow_private = true\n",
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
    let names = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    eventually(
        "member_removed and client_event webhooks",
        WAIT,
        async || {
            let got = receiver.got.lock().unwrap().clone();
            let bodies: Vec<Value> = got
                .iter()
                .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
                .collect();
            let all: Vec<Value> = bodies
                .iter()
                .flat_map(|b| b["events"].as_array().unwrap().clone())
                .collect();
            let n = names(&all);
            (n.contains(&"member_removed".to_string())
                && n.contains(&"client_event".to_string())
                && n.contains(&"channel_vacated".to_string()))
            .then_some(())
        },
    )
    .await;
    let got = receiver.got.lock().unwrap().clone();
    let events = verify_with_the_sdk(&got, "app-key", "app-secret");
    let find = |name: &str, channel: &str| {
        events
            .iter()
            .find(|e| e["name"] == name && e["channel"] == channel)
            .unwrap_or_else(|| panic!("no {name} on {channel}: {events:#?}"))
            .clone()
    };
    find("channel_occupied", "presence-room");
    assert_eq!(find("member_added", "presence-room")["user_id"], "alice");
    assert_eq!(find("member_removed", "presence-room")["user_id"], "bob");
    let client = find("client_event", "presence-chat");
    assert_eq!(client["event"], "client-typing");
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
