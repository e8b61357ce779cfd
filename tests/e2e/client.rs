//! The JavaScript client (`clients/js/`): served at `/v1/client.js`, its Node tests (`node
//! --test`) against the real binary, and real Chromium: a server killed and restarted mid
//! stream, WebSocket blocked (falls back to SSE), a token that expires.
//!
//! Needs `node` and `npm --prefix clients/js ci` (and Chromium for the browser tests);
//! missing ones fail under CI.

use std::path::PathBuf;

use crate::common::*;

fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

fn node_ready() -> bool {
    let ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok()
        && client_dir().join("node_modules/ws").is_dir();
    if !ok {
        dependency_missing(
            "node and the client's test packages",
            "apt-get install -y nodejs npm; npm --prefix clients/js ci",
        );
    }
    ok
}

#[tokio::test]
async fn the_server_serves_its_client_cacheably() {
    let h = Herald::start("");
    let r = client().get(h.url("/v1/client.js")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h2 = r.headers().clone();
    assert!(h2["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(h2["access-control-allow-origin"], "*");
    let etag = h2["etag"].to_str().unwrap().to_string();
    assert!(etag.contains(env!("CARGO_PKG_VERSION")), "{etag}");
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        std::fs::read_to_string(client_dir().join("herald.js")).unwrap()
    );
    let again = client()
        .get(h.url("/v1/client.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let dts = client().get(h.url("/v1/client.d.ts")).send().await.unwrap();
    assert_eq!(dts.status(), 200);
    assert!(dts
        .text()
        .await
        .unwrap()
        .contains("export function connect"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tests_of_the_client() {
    if !node_ready() {
        return;
    }
    let h = Herald::start("");
    let small = Herald::start("[log]\nmax_events = 5\ntrim_interval = \"50ms\"\n");
    let (url, small_url) = (h.url(""), small.url(""));
    let out = tokio::task::spawn_blocking(move || {
        let child = std::process::Command::new("node")
            .args(["--test", "--test-reporter=spec", "test/client.test.mjs"])
            .current_dir(client_dir())
            .env("HERALD_URL", url.trim_end_matches('/'))
            .env("HERALD_SMALL_URL", small_url.trim_end_matches('/'))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("node");
        // The suite takes several seconds (reconnect backoffs); bounded all the same.
        let (tx, rx) = std::sync::mpsc::channel();
        let id = child.id();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| {
                let _ = std::process::Command::new("kill")
                    .arg(id.to_string())
                    .status();
                panic!("the client's Node tests ran over 120 s")
            })
            .expect("node output")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pass 10") && stdout.contains("fail 0"),
        "{stdout}"
    );
}
