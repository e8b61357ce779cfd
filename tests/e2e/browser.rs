//! The dashboard in a real browser: headless Chromium driven by playwright-core
//! (`tests/browser/dashboard.mjs`), against the real binary. It checks what only a browser
//! can: the page loads under its CSP, EventSource receives every event (typed or not), the
//! page publishes through the API, and EventSource's own reconnect resumes with
//! Last-Event-ID after the server was killed and restarted, with nothing lost or doubled.
//!
//! Needs `chromium` and `node` on PATH and `npm --prefix tests/browser install`. Missing
//! ones fail the test under `CI=true` and skip it (with a note) elsewhere.

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

/// Chromium and the driver script, or None (outside CI) when they are not installed.
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
        let mut child = tokio::process::Command::new("node")
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
        while let Ok(Some(line)) = self.lines.next_line().await {
            assert!(!line.starts_with("ERROR"), "{line}");
        }
        let _ = self.child.wait().await;
    }

    pub async fn line(&mut self) -> String {
        let line = tokio::time::timeout(WAIT * 2, self.lines.next_line())
            .await
            .expect("the browser driver went quiet")
            .expect("driver stdout")
            .expect("the browser driver exited");
        assert!(!line.starts_with("ERROR"), "{line}");
        line
    }

    pub async fn send(&mut self, command: &str) -> String {
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
    let mut h = Herald::start("[server]\nsse_retry = \"300ms\"\n");
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
        let r = http()
            .post(h.url("/v1/events"))
            .bearer_auth("k-browser-secret")
            .json(&json!({"channel": "demo", "data": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let mut driver = Driver::launch(&script, &h, &chromium, Some("k-browser-secret"));
    assert_eq!(driver.line().await, "READY");
    assert_eq!(driver.send("2").await, "SEEN 1,2");
    assert_eq!(driver.send("publish").await, "PUBLISHED 3");
    let r = http()
        .post(h.url("/v1/events"))
        .bearer_auth("k-browser-secret")
        .json(&json!({"channel": "chat/x", "data": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(driver.send("4").await, "SEEN 1,2,3,4");
    // The driver reports any request URL holding the key as an ERROR.
    driver.finish().await;
}
