//! The dashboard in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/dashboard.mjs`), against the real binary. It checks what only a browser
//! can: the page loads under its CSP, EventSource receives every event (typed or not), the
//! page publishes through the API, and EventSource's own reconnect resumes with
//! Last-Event-ID after the server was killed and restarted, with nothing lost or doubled.
//!
//! Needs `chromium` and `node` on PATH and `npm --prefix tests/browser install`. Missing
//! ones fail the test, naming what to install.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::*;

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
}

/// Chromium and the driver script (a test without them fails, naming what to install).
pub fn browser() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("HERALD_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| which("chromium"))
        .or_else(|| which("chromium-browser"));
    let ready = chromium.is_some()
        && which("node").is_some()
        && dir.join("node_modules/playwright-core").is_dir();
    if !ready {
        dependency_missing(
            "chromium, node and playwright-core (the browser tests)",
            "apt-get install -y chromium nodejs npm; npm --prefix tests/browser ci",
        );
        return None;
    }
    Some((chromium.unwrap(), dir.join("dashboard.mjs")))
}

/// A Node page driver speaking lines over stdio (`ERROR ...` fails the test).
pub struct Driver {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Driver {
    /// Starts the page driver; `credential` is typed into the page's key field first.
    fn launch(
        script: &std::path::Path,
        h: &Herald,
        chromium: &std::path::Path,
        credential: Option<&str>,
    ) -> Driver {
        let mut args = vec![h.url("/"), chromium.to_str().unwrap().to_string()];
        args.extend(credential.map(String::from));
        Driver::spawn(script, &args)
    }

    /// Starts `node script args...`.
    pub fn spawn(script: &std::path::Path, args: &[String]) -> Driver {
        let mut child = tokio::process::Command::from(tool("node"))
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        Driver {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
        }
    }

    /// Ends the session; any error the page logged fails the test.
    pub async fn finish(mut self) {
        self.stdin.write_all(b"done\n").await.unwrap();
        drop(self.stdin);
        let rest = async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                assert!(!line.starts_with("ERROR"), "{line}");
            }
            let _ = self.child.wait().await;
        };
        tokio::time::timeout(WAIT * 2, rest)
            .await
            .expect("the browser driver did not end after `done`");
    }

    pub async fn line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT * 2, self.lines.next_line())
            .await
            .expect("the browser driver went quiet")
            .expect("driver stdout")
            .expect("the browser driver exited");
        // Shown with a failing test's output: how far the page got.
        eprintln!("driver: {line}");
        assert!(!line.starts_with("ERROR"), "{line}");
        line
    }

    pub async fn send(&mut self, command: &str) -> String {
        eprintln!("driver <- {command}");
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.line().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_events_in_a_real_browser_across_a_server_restart() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    let mut h = Herald::start_restartable("[server]\nsse_retry = \"300ms\"\n");
    publish_one(&h, "demo", json!({"n": 1})).await;
    let (status, _) = publish(
        &h,
        json!({"channel": "chat/room-1", "type": "message.sent", "data": "typed"}),
    )
    .await;
    assert_eq!(status, 201);
    publish_one(&h, "elsewhere", json!("not subscribed")).await;
    // Raw line breaks in published JSON (item 1 of #10): EventSource must still get one
    // event whose data is one whole envelope, or the page's JSON.parse throws.
    let r = http()
        .post(h.url("/v1/events"))
        .header("content-type", "application/json")
        .body("{\"channel\":\"demo\",\r\n\"data\":[1,\n\n2]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mut driver = Driver::launch(&script, &h, &chromium, None);
    assert_eq!(driver.line().await, "READY");
    // History first ("from the start"), typed and untyped alike, only the page's channels.
    assert_eq!(driver.send("3").await, "SEEN 1,2,4");
    let seq = publish_one(&h, "demo", json!({"n": 5})).await;
    assert_eq!(driver.send("4").await, format!("SEEN 1,2,4,{seq}"));
    // The page's own publish form.
    assert_eq!(driver.send("publish").await, "PUBLISHED 6");
    assert_eq!(driver.send("5").await, "SEEN 1,2,4,5,6");
    // The server dies and comes back on the same address: EventSource reconnects by itself
    // with Last-Event-ID 5 and gets what was published meanwhile, nothing twice.
    let port = h.addr.port();
    h.kill9();
    h.restart_on(port);
    let seq = publish_one(&h, "chat/room-2", json!("after the restart")).await;
    assert_eq!(seq, 7);
    assert_eq!(driver.send("6").await, "SEEN 1,2,4,5,6,7");
    // Anything the page logged as an error (a CSP violation, a script error) fails the test.
    driver.finish().await;
}

/// Item 11 of #10: with auth on, the dashboard holds an API key, but no URL it requests
/// (EventSource's above all) ever carries it; it subscribes with a session token instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_never_puts_an_api_key_in_a_url() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    let h = Herald::start("[auth]\napi_keys = [\"k-browser-secret\"]\n");
    for n in 1..=2 {
        publish_as(
            &h,
            "k-browser-secret",
            json!({"channel": "demo", "data": n}),
        )
        .await;
    }
    let mut driver = Driver::launch(&script, &h, &chromium, Some("k-browser-secret"));
    assert_eq!(driver.line().await, "READY");
    assert_eq!(driver.send("2").await, "SEEN 1,2");
    assert_eq!(driver.send("publish").await, "PUBLISHED 3");
    publish_as(
        &h,
        "k-browser-secret",
        json!({"channel": "chat/x", "data": 4}),
    )
    .await;
    assert_eq!(driver.send("4").await, "SEEN 1,2,3,4");
    // The driver reports any request URL holding the key as an ERROR.
    driver.finish().await;
}

/// #16 item 4: the operator console in Chromium. Its charts move while a load runs, the
/// webhook table shows a failing endpoint's streak, and the inspector (Herald's JavaScript
/// client in the page) shows a signed incoming hook's headers and pretty body and replays
/// it. Screenshots go to `reports/browser/` (looked at when the console changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_charts_a_load_and_inspects_incoming_hooks() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    let h = Herald::start(
        "[auth]\napi_keys = [\"console-key\"]\n\
         [webhooks]\nallow_private = true\nretry_schedule = [\"1h\"]\n\
         [[hooks]]\nchannels = [\"gh/*\"]\nverify = \"github\"\nsecret = \"s3cret\"\n",
    );
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    // An endpoint whose receiver refuses everything: the console shows it failing.
    let refused =
        crate::webhooks::Receiver::start(|_, _| crate::webhooks::Reply::Status(503)).await;
    let r = http()
        .post(h.url("/v1/webhooks"))
        .bearer_auth("console-key")
        .json(&json!({"url": refused.url(), "channels": ["load"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut driver = Driver::spawn(
        &script.with_file_name("console.mjs"),
        &[
            h.url("/"),
            chromium.to_str().unwrap().to_string(),
            "console-key".into(),
        ],
    );
    assert_eq!(driver.line().await, "READY");
    let chart = async |driver: &mut Driver, name: &str| -> serde_json::Value {
        let line = driver.send(&format!("chart {name}")).await;
        serde_json::from_str(line.strip_prefix("CHART ").expect(&line)).unwrap()
    };
    let before = chart(&mut driver, "published").await;

    // The load: an SSE subscriber and 20 publishes a second for 4 seconds.
    let token = mint_token(&h, "console-key", json!({"sub_channels": ["load"]})).await;
    let mut sse = Sse::connect(&h, &format!("channel=load&token={token}"), None).await;
    for i in 0..80 {
        publish_as(&h, "console-key", json!({"channel": "load", "data": i})).await;
        sse.next().await.expect("the subscriber's event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The page redraws every 2 s from one-second samples.
    let mut during = chart(&mut driver, "published").await;
    for _ in 0..20 {
        if during["total"].as_f64().unwrap() >= 80.0 + before["total"].as_f64().unwrap() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        during = chart(&mut driver, "published").await;
    }
    assert!(
        during["total"].as_f64().unwrap() >= 80.0,
        "the published chart moved by all 80: {before} -> {during}"
    );
    let delivered = chart(&mut driver, "delivered").await;
    assert!(delivered["total"].as_f64().unwrap() >= 80.0, "{delivered}");
    let connections = chart(&mut driver, "connections").await;
    assert_eq!(connections["latest"]["sse"], 1, "{connections}");
    let webhooks = chart(&mut driver, "webhooks").await;
    assert!(webhooks["total"].as_f64().unwrap() >= 1.0, "{webhooks}");
    let commit = chart(&mut driver, "commit").await;
    assert!(commit["points"].as_u64().unwrap() >= 3, "{commit}");

    // The endpoint table: failing, with every event queued for its retry.
    let mut line = String::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    for _ in 0..40 {
        line = driver.send("webhooks").await;
        rows = serde_json::from_str(line.strip_prefix("WEBHOOKS ").unwrap()).unwrap();
        if rows.len() == 1 && rows[0][4] == "80" && rows[0][2] != "–" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(rows.len(), 1, "{line}");
    assert!(rows[0][0].contains(&refused.url()), "{line}");
    assert_eq!(rows[0][1], "enabled");
    assert!(rows[0][2].starts_with("retrying 503"), "{line}");
    assert!(rows[0][3].parse::<u64>().unwrap() >= 1, "{line}");
    assert_eq!(rows[0][4], "80", "{line}");
    let line = driver.send("channels").await;
    assert!(line.contains(r#"["load","1","0"]"#), "{line}");
    let shot = artifacts.join("console.png");
    assert_eq!(
        driver.send(&format!("screenshot {}", shot.display())).await,
        format!("SHOT {}", shot.display())
    );
    drop(sse);

    // The inspector: a signed GitHub delivery, shown with its headers and pretty body.
    assert_eq!(driver.send("inspect gh/*").await, "WATCHING");
    let body = br#"{"ref":"refs/heads/main","commits":[{"id":"abc"}]}"#;
    let r = http()
        .post(h.url("/v1/hooks/gh/push"))
        .header("x-github-event", "push")
        .header(
            "x-hub-signature-256",
            crate::hooks::github_signature("s3cret", body),
        )
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let line = driver.send("captured 1").await;
    let request: serde_json::Value =
        serde_json::from_str(line.strip_prefix("REQUEST ").unwrap()).unwrap();
    assert_eq!(request["line"], "POST /v1/hooks/gh/push");
    assert_eq!(request["headers"]["x-github-event"], "push");
    assert!(
        request["body"]
            .as_str()
            .unwrap()
            .contains("\n  \"ref\": \"refs/heads/main\""),
        "pretty: {request}"
    );
    let page_before = get_json_as(&h, "/v1/events?channel=gh/push", "console-key").await;
    // Replayed: a new event with the same request.
    let line = driver.send("replay").await;
    let seq: u64 = line.strip_prefix("REPLAYED ").unwrap().parse().unwrap();
    let page = get_json_as(
        &h,
        &format!("/v1/events?channel=gh/push&after={}", seq - 1),
        "console-key",
    )
    .await;
    let replayed = &page["events"][0];
    assert_eq!(replayed["seq"], seq);
    let original = &page_before["events"][0];
    assert_eq!(replayed["type"], "webhook");
    assert_eq!(
        replayed["data"], original["data"],
        "the same request, byte for byte"
    );
    let line = driver.send("captured 2").await;
    assert!(line.contains("POST /v1/hooks/gh/push"), "{line}");
    check_layout(&mut driver, "console", &WIDTHS).await;
    driver.finish().await;
}

/// A consumer token for `owner`, scoped to `channels`, minted with the admin key.
async fn consumer_token(h: &Herald, key: &str, owner: &str, channels: &[&str]) -> String {
    mint_token(
        h,
        key,
        json!({"webhooks": {"owner": owner, "channels": channels}}),
    )
    .await
}

/// #16 item 3: the consumer portal in Chromium with a consumer token only. The customer adds
/// an endpoint (its secret shown once), sees a delivery fail for good, retries it and sees it
/// delivered, sends a test event and rotates the secret; a channel outside the token's scope
/// is refused; the token never appears in a request URL and leaves the address bar at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_lets_a_consumer_fix_a_failed_delivery() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    let h = Herald::start(
        "[auth]\napi_keys = [\"admin-key\"]\n\
         [webhooks]\nallow_private = true\nretry_schedule = [\"100ms\"]\n",
    );
    // Down for the first two attempts (the event fails for good), up after.
    let receiver = crate::webhooks::Receiver::start(|n, _| {
        crate::webhooks::Reply::Status(if n < 2 { 503 } else { 204 })
    })
    .await;
    let token = consumer_token(&h, "admin-key", "acme", &["orders/*"]).await;
    let mut driver = Driver::spawn(
        &script.with_file_name("portal.mjs"),
        &[
            h.url(&format!("/portal#token={token}")),
            chromium.to_str().unwrap().to_string(),
            token.clone(),
        ],
    );
    let ready = driver.line().await;
    assert_eq!(
        ready,
        format!("READY {}", h.url("/portal")),
        "the token left the address bar"
    );

    // Empty, it says so, and says what the token may follow (offered in the channel field).
    let line = driver.send("texts").await;
    let texts: serde_json::Value =
        serde_json::from_str(line.strip_prefix("TEXTS ").expect(&line)).unwrap();
    assert_eq!(
        texts["endpoints"], "No endpoints yet: add one below.",
        "{texts}"
    );
    assert_eq!(texts["scope"], "orders/*", "{texts}");
    assert_eq!(texts["offered"], json!(["orders/*"]), "{texts}");

    let line = driver.send("add http://127.0.0.1:9/x billing").await;
    assert!(
        line.starts_with("REFUSED") && line.contains("channel_out_of_scope"),
        "{line}"
    );
    let line = driver
        .send(&format!("add {} orders/*", receiver.url()))
        .await;
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts[0], "ADDED", "{line}");
    let (id, secret) = (parts[1].to_string(), parts[2].to_string());
    assert!(secret.starts_with("whsec_"), "{line}");
    // Made for the token's owner.
    let endpoint = get_json_as(&h, &format!("/v1/webhooks/{id}"), "admin-key").await;
    assert_eq!(endpoint["owner"], "acme");

    publish_as(
        &h,
        "admin-key",
        json!({"channel": "orders/1", "type": "order.paid", "data": {"total": 5}}),
    )
    .await;
    let line = driver.send("attempts failed").await;
    let rows: Vec<Vec<String>> =
        serde_json::from_str(line.strip_prefix("ATTEMPTS ").unwrap()).unwrap();
    assert_eq!(rows.len(), 2, "{line}");
    assert!(
        rows[0][3].starts_with("failed") && rows[0][4] == "503",
        "{line}"
    );
    assert!(
        rows[1][3].starts_with("retrying") && rows[1][4] == "503",
        "{line}"
    );
    assert_eq!(driver.send("retry").await, "RETRIED retrying 1");
    let line = driver.send("attempts delivered").await;
    let rows: Vec<Vec<String>> =
        serde_json::from_str(line.strip_prefix("ATTEMPTS ").unwrap()).unwrap();
    assert!(rows[0][3] == "delivered" && rows[0][4] == "204", "{line}");
    assert!(
        rows.iter().all(|r| !r[7].contains("Retry")),
        "retried: no Retry button left: {line}"
    );
    // What the attempt carried: the event, with its type.
    let line = driver.send("view").await;
    let payload: serde_json::Value =
        serde_json::from_str(line.strip_prefix("PAYLOAD ").expect(&line)).unwrap();
    assert_eq!(payload["title"], "1 (order.paid) on orders/1", "{payload}");
    let body: serde_json::Value = serde_json::from_str(payload["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"], json!({"total": 5}), "{payload}");
    assert_eq!(receiver.count(), 3);

    let line = driver.send("test").await;
    assert!(
        line.starts_with("TESTED test event: delivered 204 in"),
        "{line}"
    );
    let line = driver.send("rotate").await;
    let rotated = line.strip_prefix("ROTATED ").unwrap();
    assert!(rotated.starts_with("whsec_") && rotated != secret, "{line}");

    // Edit: a new URL, channels and a rate limit, then the limit cleared again.
    let moved = format!("{}/moved", receiver.url());
    let line = driver
        .send(&format!("edit {moved} orders/eu/*,orders/us/* 5"))
        .await;
    assert_eq!(line, "EDITED saved");
    let endpoint = get_json_as(&h, &format!("/v1/webhooks/{id}"), "admin-key").await;
    assert_eq!(endpoint["url"], moved.as_str(), "{endpoint}");
    assert_eq!(endpoint["channels"], json!(["orders/eu/*", "orders/us/*"]));
    assert_eq!(endpoint["rate_limit"], 5, "{endpoint}");
    assert_eq!(
        driver.send(&format!("edit {moved} orders/* -")).await,
        "EDITED saved"
    );
    let endpoint = get_json_as(&h, &format!("/v1/webhooks/{id}"), "admin-key").await;
    assert_eq!(
        endpoint["rate_limit"],
        serde_json::Value::Null,
        "{endpoint}"
    );
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    driver
        .send(&format!(
            "screenshot {}",
            artifacts.join("portal.png").display()
        ))
        .await;
    check_layout(&mut driver, "portal", &PORTAL_WIDTHS).await;

    // Delete (confirmed), then a reload: the token comes back from the tab's session
    // storage, never from the address bar.
    assert_eq!(driver.send("delete").await, "DELETED 0");
    let r = http()
        .get(h.url(&format!("/v1/webhooks/{id}")))
        .bearer_auth("admin-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "deleted");
    assert_eq!(
        driver.send("reload").await,
        format!("RELOADED {}", h.url("/portal"))
    );
    driver.finish().await;
}

/// The portal refuses an API key (it never sends one anywhere), and only the origins in
/// `server.portal_frame_ancestors` may frame it, as Chromium enforces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_refuses_api_keys_and_frames_only_where_allowed() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    // A SaaS page on another origin that embeds the portal.
    let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_origin = format!("http://{}", host.local_addr().unwrap());
    let framed: std::sync::Arc<std::sync::Mutex<String>> = Default::default();
    let page = framed.clone();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let src = page.lock().unwrap().clone();
            async move { axum::response::Html(format!("<iframe src=\"{src}\"></iframe>")) }
        }),
    );
    tokio::spawn(async move { axum::serve(host, app).await.unwrap() });
    let frame = script.with_file_name("frame.mjs");
    let chromium = chromium.to_str().unwrap().to_string();

    for (allowed, want) in [(true, "FRAMED shown"), (false, "FRAMED blocked")] {
        let toml = if allowed {
            format!("[auth]\napi_keys = [\"admin-key\"]\n[server]\nportal_frame_ancestors = [\"{host_origin}\"]\n")
        } else {
            "[auth]\napi_keys = [\"admin-key\"]\n".to_string()
        };
        let h = Herald::start(&toml);
        let csp = http().get(h.url("/portal")).send().await.unwrap().headers()
            ["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        let expected = if allowed {
            host_origin.as_str()
        } else {
            "'none'"
        };
        assert!(
            csp.contains(&format!("frame-ancestors {expected}")),
            "{csp}"
        );
        let token = consumer_token(&h, "admin-key", "acme", &["orders/*"]).await;
        *framed.lock().unwrap() = h.url(&format!("/portal#token={token}"));
        let mut driver = Driver::spawn(&frame, &[format!("{host_origin}/"), chromium.clone()]);
        assert_eq!(driver.line().await, want, "allowed: {allowed}");
    }

    // An API key in the fragment: the page says so and sends nothing with it.
    let h = Herald::start("[auth]\napi_keys = [\"admin-key\"]\n");
    let mut driver = Driver::spawn(
        &script.with_file_name("portal.mjs"),
        &[
            h.url("/portal#token=admin-key"),
            chromium.clone(),
            "admin-key".into(),
        ],
    );
    let line = tokio::time::timeout(WAIT * 2, driver.lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        line,
        "ERROR the page refused: This page needs a consumer token (#token=...), never an API key."
    );
    // No API route at all was called (any of them would have carried the key).
    let log = get_text(h.url("/metrics")).await;
    let api_calls: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("herald_http_requests_total{") && l.contains("route=\"/v1/"))
        .collect();
    assert!(
        api_calls.is_empty(),
        "the page called the API with an API key: {api_calls:?}"
    );
    // A frame-ancestors value that would smuggle a directive is refused at start.
    let dir = tempfile::tempdir().unwrap();
    assert_serve_refuses(
        dir.path(),
        "[server]\nportal_frame_ancestors = [\"https://a.example; script-src *\"]\n",
        "server.portal_frame_ancestors",
    );
}

/// In a cluster the console shows the nodes (this one marked) and whether Redis answers,
/// and says so when Redis goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_cluster_and_a_redis_outage() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    let Some(mut redis) = crate::cluster::Redis::start() else {
        return;
    };
    let cluster = crate::cluster::nodes(&redis, 2, "[auth]\napi_keys = [\"console-key\"]\n");
    let mut driver = Driver::spawn(
        &script.with_file_name("console.mjs"),
        &[
            cluster[0].url("/"),
            chromium.to_str().unwrap().to_string(),
            "console-key".into(),
        ],
    );
    assert_eq!(driver.line().await, "READY");
    let line = driver.send("cluster up").await;
    let rest = line
        .strip_prefix("CLUSTER cluster: 2 nodes, Redis up ")
        .unwrap_or_else(|| panic!("{line}"));
    let rows: Vec<Vec<String>> = serde_json::from_str(rest).unwrap();
    assert_eq!(rows.len(), 2, "{line}");
    assert_eq!(
        rows.iter()
            .filter(|r| r[0].ends_with(" (this one)"))
            .count(),
        1,
        "{line}"
    );
    assert!(rows.iter().all(|r| r[1].ends_with(" s ago")), "{line}");
    redis.kill9();
    let line = driver.send("cluster down").await;
    assert!(line.starts_with("CLUSTER Redis down "), "{line}");
    driver.finish().await;
}

/// The widths a page is checked at: a laptop, a narrow window or tablet, a phone; the portal
/// also at 600 (the iframe a SaaS usually gives it).
const WIDTHS: [u32; 3] = [1280, 720, 390];
const PORTAL_WIDTHS: [u32; 4] = [1280, 720, 600, 390];

/// At each width: a screenshot in `reports/browser/{name}-{width}.png` (looked at when the
/// page changes), and what a person would see wrong (a horizontal scroll, a word broken
/// across lines), all of it reported at once.
async fn check_layout(driver: &mut Driver, name: &str, widths: &[u32]) {
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reports/browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut problems = Vec::new();
    for &width in widths {
        let line = driver.send(&format!("width {width}")).await;
        let layout: serde_json::Value = serde_json::from_str(
            line.strip_prefix("LAYOUT ")
                .unwrap_or_else(|| panic!("{line}")),
        )
        .unwrap();
        if layout["overflow"] != 0 {
            problems.push(format!(
                "{width} px: {} px of horizontal scroll",
                layout["overflow"]
            ));
        }
        if layout["broken"].as_array().is_some_and(|b| !b.is_empty()) {
            problems.push(format!(
                "{width} px: words broken across lines: {}",
                layout["broken"]
            ));
        }
        let shot = artifacts.join(format!("{name}-{width}.png"));
        driver.send(&format!("screenshot {}", shot.display())).await;
    }
    assert!(problems.is_empty(), "{name}: {problems:#?}");
}

/// An empty console says why it is empty: the charts without a key on a server that needs
/// one, tables with nothing in them; the key field says whether a key is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_console_says_why() {
    let Some((chromium, script)) = browser() else {
        return;
    };
    // The console of `h` with no key typed, ready.
    let console = async |h: &Herald| -> Driver {
        let mut driver = Driver::spawn(
            &script.with_file_name("console.mjs"),
            &[
                h.url("/"),
                chromium.to_str().unwrap().to_string(),
                String::new(),
            ],
        );
        assert_eq!(driver.line().await, "READY");
        driver
    };
    let texts = async |h: &Herald| -> serde_json::Value {
        let mut driver = console(h).await;
        let line = driver.send("texts").await;
        let texts = serde_json::from_str(line.strip_prefix("TEXTS ").expect(&line)).unwrap();
        driver.finish().await;
        texts
    };
    let keyed = Herald::start("[auth]\napi_keys = [\"k\"]\n");
    let t = texts(&keyed).await;
    assert_eq!(t["placeholder"], "required: an API key", "{t}");
    assert!(
        t["charts"]
            .as_str()
            .unwrap()
            .contains("until you type an API key"),
        "{t}"
    );
    let open = Herald::start("");
    let t = texts(&open).await;
    assert_eq!(t["placeholder"], "none needed (open server)", "{t}");
    assert_eq!(t["charts"], serde_json::Value::Null, "the charts drew: {t}");
    assert_eq!(t["channels"], "no channel has a subscriber now", "{t}");
    assert!(
        t["webhooks"]
            .as_str()
            .unwrap()
            .starts_with("no webhook endpoints yet"),
        "{t}"
    );
    let mut driver = console(&open).await;
    check_layout(&mut driver, "console-empty", &WIDTHS).await;
    driver.finish().await;
}
