//! The JavaScript client (`clients/js/`): served at `/v1/client.js`, its Node tests (`node
//! --test`) against the real binary, and real Chromium: a server killed and restarted mid
//! stream, WebSocket blocked (falls back to SSE), a token that expires.
//!
//! Needs `node` and `npm --prefix clients/js ci` (and Chromium for the browser tests);
//! missing ones fail under CI.

use std::path::PathBuf;

use crate::common::*;

pub(crate) fn client_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

pub(crate) fn node_ready() -> bool {
    let ok = tool("node").arg("--version").output().is_ok()
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
    assert_eq!(
        h2["cache-control"], "public, max-age=300, must-revalidate",
        "README: ETag + Cache-Control"
    );
    let body = r.text().await.unwrap();
    let minified = std::fs::read_to_string(client_dir().join("herald.min.js")).unwrap();
    assert_eq!(body, minified, "the committed minified build is served");
    let again = client()
        .get(h.url("/v1/client.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    // A browser (which accepts gzip) gets it gzipped, under a tag of its own; what it
    // downloads is the size the client's README states.
    let r = client()
        .get(h.url("/v1/client.js"))
        .header("accept-encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["vary"], "accept-encoding");
    let gz_tag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_ne!(gz_tag, etag);
    let gz = r.bytes().await.unwrap();
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped)
        .unwrap();
    assert_eq!(unzipped, minified);
    let readme = std::fs::read_to_string(client_dir().join("README.md"))
        .unwrap()
        .replace('\n', " ");
    let stated = readme
        .split(" KB as a browser downloads it")
        .next()
        .and_then(|before| before.rsplit('(').next())
        .and_then(|n| n.parse::<f64>().ok())
        .expect("clients/js/README.md states `(N KB as a browser downloads it`");
    let actual = gz.len() as f64 / 1000.0;
    assert!(
        (stated - actual).abs() < 0.1,
        "clients/js/README.md says {stated} KB; a browser downloads {actual:.1} KB"
    );
    let again = client()
        .get(h.url("/v1/client.js"))
        .header("accept-encoding", "gzip")
        .header("if-none-match", &gz_tag)
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
        let child = tool("node")
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
                let _ = tool("kill").arg(id.to_string()).status();
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
    // Every test of the file ran and passed (node prints `ℹ pass N` and `ℹ fail N`).
    let count = |what: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("ℹ {what} ")))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("pass") >= 12 && count("fail") == 0, "{stdout}");
}

/// The page driver (`tests/browser/client-browser.mjs`).
struct Page(crate::browser::Driver);

impl Page {
    async fn open(h: &Herald, mode: &str, channel: &str, secret: &str) -> Option<Page> {
        let (chromium, dashboard) = crate::browser::browser()?;
        if !node_ready() {
            return None;
        }
        let args = [h.url("/"), chromium.to_str().unwrap().to_string()]
            .into_iter()
            .chain([mode, channel, secret].map(String::from))
            .collect::<Vec<_>>();
        let mut driver =
            crate::browser::Driver::spawn(&dashboard.with_file_name("client-browser.mjs"), &args);
        assert_eq!(driver.line().await, "READY");
        Some(Page(driver))
    }

    async fn line(&mut self) -> String {
        self.0.line().await
    }

    /// Waits for `n` events; returns (seqs seen, states, token calls).
    async fn seen(&mut self, n: usize) -> (Vec<u64>, String, Option<u64>) {
        let seqs = self.0.send(&n.to_string()).await;
        let states = self.0.line().await;
        let seqs = seqs
            .strip_prefix("SEEN ")
            .unwrap()
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect();
        (
            seqs,
            states.strip_prefix("STATES ").unwrap().to_string(),
            None,
        )
    }

    async fn tokens(&mut self) -> u64 {
        self.line()
            .await
            .strip_prefix("TOKENS ")
            .unwrap()
            .parse()
            .unwrap()
    }

    async fn finish(self) {
        self.0.finish().await
    }
}

async fn publish_n(h: &Herald, channel: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        seqs.push(publish_one(h, channel, serde_json::json!(i)).await);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sees_every_event_once_in_order_across_a_server_kill() {
    let mut h = Herald::start_restartable("");
    let port = url::Url::parse(&h.url("/")).unwrap().port().unwrap();
    let Some(mut page) = Page::open(&h, "plain", "c.restart", "").await else {
        return;
    };
    let mut want = publish_n(&h, "c.restart", 15).await;
    h.kill9();
    // Down for a moment: the page is reconnecting with backoff.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    h.restart_on(port);
    want.extend(publish_n(&h, "c.restart", 15).await);
    let (seen, states, _) = page.seen(want.len()).await;
    assert_eq!(seen, want, "every event once, in seq order");
    assert!(states.contains("disconnected"), "{states}");
    page.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_websocket_the_client_falls_back_to_sse_and_misses_nothing() {
    let h = Herald::start("");
    let before = publish_n(&h, "c.fallback", 3).await;
    let Some(mut page) = Page::open(&h, "no-websocket", "c.fallback", "").await else {
        return;
    };
    let mut want = before;
    want.extend(publish_n(&h, "c.fallback", 3).await);
    // A publish from the page goes over HTTP while on SSE.
    let seq: u64 = page
        .0
        .send("publish")
        .await
        .strip_prefix("SEQ ")
        .unwrap()
        .parse()
        .unwrap();
    want.push(seq);
    let (seen, states, _) = page.seen(want.len()).await;
    assert_eq!(seen, want);
    assert!(states.contains("fallback"), "{states}");
    page.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_and_the_stream_goes_on() {
    let secret = "client-token-secret";
    let h = Herald::start(&format!(
        "[auth]\napi_keys = [\"k\"]\njwt_secret = \"{secret}\"\n"
    ));
    let Some(mut page) = Page::open(&h, "token", "c.token", secret).await else {
        return;
    };
    let publish = |i: u64| {
        client()
            .post(h.url("/v1/events"))
            .bearer_auth("k")
            .json(&serde_json::json!({"channel": "c.token", "data": i}))
            .send()
    };
    let mut want = Vec::new();
    // Tokens live 4 s; publish over 10 s so the stream crosses two renewals.
    for i in 0..10 {
        let r = publish(i).await.unwrap();
        assert_eq!(r.status(), 201);
        want.push(
            r.json::<serde_json::Value>().await.unwrap()["seq"]
                .as_u64()
                .unwrap(),
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let (seen, _, _) = page.seen(want.len()).await;
    assert_eq!(seen, want);
    let tokens = page.tokens().await;
    assert!(tokens >= 3, "getToken called {tokens} times");
    page.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_falling_back_the_client_returns_to_websocket() {
    let h = Herald::start("");
    let before = publish_n(&h, "c.back", 2).await;
    let Some(mut page) = Page::open(&h, "websocket-later", "c.back", "").await else {
        return;
    };
    let (seen, states, _) = page.seen(before.len()).await;
    assert_eq!(seen, before);
    assert!(states.contains("fallback"), "{states}");
    // retryWebSocketMs is 1 s in this page: wait for the WebSocket to be back.
    let mut want = before;
    let states = crate::webhooks::eventually("the WebSocket again", WAIT, async || {
        want.extend(publish_n(&h, "c.back", 1).await);
        let (seen, states, _) = page.seen(want.len()).await;
        assert_eq!(seen, want, "nothing lost or doubled across the switch");
        states.contains("via-ws").then_some(states)
    })
    .await;
    let last_sse = states.rfind("via-sse").unwrap();
    assert!(states.rfind("via-ws").unwrap() > last_sse, "{states}");
    page.finish().await;
}

/// The client in Chromium through a network that refuses upgrades, cuts sockets and fails
/// requests (`tests/browser/client-promises.mjs`): publishes before and during outages
/// complete once, a live subscription misses nothing across a drop, `connected` means a
/// stream is open, one unsubscribe leaves another Subscription alone, and a refusal is told
/// with Herald's code while pending publishes reject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_its_word_through_outages_in_chromium() {
    let Some((chromium, dashboard)) = crate::browser::browser() else {
        return;
    };
    if !node_ready() {
        return;
    }
    let open = Herald::start("");
    let keyed = Herald::start("[auth]\napi_keys = [\"only-the-backend\"]\n");
    let args = [
        open.url(""),
        keyed.url(""),
        chromium.to_str().unwrap().to_string(),
    ]
    .map(|a| a.trim_end_matches('/').to_string());
    let mut driver =
        crate::browser::Driver::spawn(&dashboard.with_file_name("client-promises.mjs"), &args);
    let mut results = Vec::new();
    loop {
        let line = driver.line().await;
        if line == "DONE" {
            break;
        }
        results.push(line);
    }
    let failed: Vec<&String> = results.iter().filter(|l| !l.starts_with("OK ")).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(results.len(), 10, "every scenario ran: {results:#?}");
}

/// A live event stream starts with the head it was registered at as its id (no event), so
/// EventSource's own reconnect resumes from there: what was published meanwhile arrives.
#[tokio::test]
async fn a_live_event_stream_names_its_start_so_a_reconnect_loses_nothing() {
    let h = Herald::start("");
    // An acknowledged event may still be on its way through the fan-out; a stream opened
    // then may see it live. Wait until a probe has it, so `before` is behind the head.
    let mut probe = Sse::connect(&h, "channel=c.live", None).await;
    let before = publish_one(&h, "c.live", serde_json::json!(0)).await;
    assert_eq!(probe.next().await.unwrap().id, Some(before));
    let mut sse = Sse::connect(&h, "channel=c.live", None).await;
    let during = publish_one(&h, "c.live", serde_json::json!(1)).await;
    assert_eq!(sse.next().await.unwrap().id, Some(during));
    let raw = String::from_utf8_lossy(&sse.raw).to_string();
    let start = raw
        .split("\n\n")
        .next()
        .and_then(|b| b.lines().find_map(|l| l.strip_prefix("id: ")))
        .and_then(|id| id.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no id in the first frame: {raw:?}"));
    assert_eq!(start, before, "{raw:?}");
    // As EventSource would after a drop before any event: resume from that id.
    drop(sse);
    let missed = publish_one(&h, "c.live", serde_json::json!(2)).await;
    let mut again = Sse::connect(&h, "channel=c.live", Some(start)).await;
    assert_eq!(again.next().await.unwrap().id, Some(during));
    assert_eq!(again.next().await.unwrap().id, Some(missed));
}
