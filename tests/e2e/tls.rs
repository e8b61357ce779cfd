//! TLS and HTTP/2 on the listener (`server.tls_cert`/`tls_key`): a real client negotiates
//! h2 by ALPN (and HTTP/1.1 when it asks for it), the API, SSE and WebSocket work the same,
//! plain HTTP gets nothing, and a new certificate is taken on SIGHUP without a restart.
//!
//! Needs `openssl` to make the certificates (fails without it, naming the package).

use std::path::Path;

use serde_json::{json, Value};

use crate::cluster::make_certs;
use crate::common::*;

/// A Herald on TLS with a certificate for 127.0.0.1 signed by a fresh CA in `dir`.
fn tls_herald(dir: &Path) -> Option<Herald> {
    if !make_certs(dir) {
        dependency_missing(
            "openssl (the TLS tests make certificates with it)",
            "apt-get install -y openssl",
        );
        return None;
    }
    Some(Herald::start(&format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        dir.join("redis.pem").display(),
        dir.join("redis.key").display()
    )))
}

fn https_client(ca: &Path, http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .use_rustls_tls();
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_speaks_http2_and_http1_with_the_same_api() {
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = tls_herald(dir.path()) else {
        return;
    };
    let base = format!("https://{}", h.addr());
    let h2 = https_client(&dir.path().join("ca.pem"), false);
    // Publish over h2.
    let r = h2
        .post(format!("{base}/v1/events"))
        .json(&json!({"channel": "tls", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 201);
    // Several SSE streams on one h2 connection, each gets its events.
    let mut streams = Vec::new();
    for i in 0..8 {
        let r = h2
            .get(format!("{base}/v1/sse?channel=tls.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        streams.push(r.bytes_stream());
    }
    for i in 0..8 {
        let r = h2
            .post(format!("{base}/v1/events"))
            .json(&json!({"channel": format!("tls.{i}"), "data": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    use futures_util::StreamExt;
    for (i, s) in streams.iter_mut().enumerate() {
        let mut text = String::new();
        while !text.contains(&format!("\"channel\":\"tls.{i}\"")) {
            let chunk = tokio::time::timeout(WAIT, s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    // HTTP/1.1 when the client asks for it; history the same.
    let h1 = https_client(&dir.path().join("ca.pem"), true);
    let r = h1
        .get(format!("{base}/v1/events?channel=tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["events"][0]["data"], json!({"n": 1}));
    // Limits and errors are the same: a bad channel is a 400 with the JSON error.
    let r = h2
        .get(format!("{base}/v1/sse?channel=bad%20name"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client().get(h.url("/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_upgrade_over_tls() {
    use futures_util::SinkExt;
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = tls_herald(dir.path()) else {
        return;
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_file_iter(dir.path().join("ca.pem")).unwrap()
    {
        let cert: rustls_pki_types::CertificateDer = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(h.addr()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url = format!("wss://{}/v1/ws?channel=tls.ws", h.addr());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let welcome = next_frame(&mut ws).await;
    assert!(welcome.to_text().unwrap().contains("welcome"));
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"op": "publish", "channel": "tls.ws", "data": 1, "ref": 1})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut saw = Vec::new();
    while saw.len() < 2 {
        let m = next_frame(&mut ws).await;
        if let Ok(v) = serde_json::from_str::<Value>(m.to_text().unwrap_or("")) {
            if v["op"] == "ack" || v["op"] == "event" {
                saw.push(v["op"].as_str().unwrap().to_string());
            }
        }
    }
    saw.sort();
    assert_eq!(saw, ["ack", "event"]);
}

async fn next_frame<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> tokio_tungstenite::tungstenite::Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no frame over TLS")
        .expect("the socket closed")
        .unwrap()
}

/// A second CA and certificate (in the returned dir), and a client that trusts only it;
/// checks the server does not serve it yet.
async fn next_certificate(h: &Herald) -> (tempfile::TempDir, reqwest::Client) {
    let next = tempfile::tempdir().unwrap();
    assert!(make_certs(next.path()));
    let new_client = https_client(&next.path().join("ca.pem"), false);
    let url = format!("https://{}/healthz", h.addr());
    assert!(new_client.get(&url).send().await.is_err(), "not yet");
    (next, new_client)
}

/// Waits until the server answers a client that trusts only the new certificate.
async fn serves_the_new_certificate(h: &Herald, new_client: &reqwest::Client) {
    let url = format!("https://{}/healthz", h.addr());
    crate::webhooks::eventually("the new certificate", WAIT, async || {
        let r = new_client.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_taken_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = tls_herald(dir.path()) else {
        return;
    };
    let (next, new_client) = next_certificate(&h).await;
    // Written with the old files' modification times, so the file watch sees no change:
    // only the SIGHUP can make the server take them.
    for f in ["redis.pem", "redis.key"] {
        let path = dir.path().join(f);
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::copy(next.path().join(f), &path).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(before)
            .unwrap();
    }
    let ok = tool("kill")
        .args(["-HUP", &h.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    serves_the_new_certificate(&h, &new_client).await;
}

/// Ten EventSource streams from one page over h2, all open at once and all receiving
/// (HTTP/1.1 would hold the seventh back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_holds_ten_event_streams_to_one_origin_over_http2() {
    use tokio::io::AsyncBufReadExt;
    let Some((chromium, dashboard)) = crate::browser::browser() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = tls_herald(dir.path()) else {
        return;
    };
    let base = format!("https://{}/", h.addr());
    let mut child = tokio::process::Command::from(tool("node"))
        .arg(dashboard.with_file_name("h2-browser.mjs"))
        .args([base.as_str(), chromium.to_str().unwrap(), "10"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(WAIT * 2, lines.next_line())
            .await
            .expect("the driver went quiet")
            .unwrap()
            .expect("the driver exited")
    };
    assert_eq!(next().await, "READY");
    let h2 = https_client(&dir.path().join("ca.pem"), false);
    for i in 0..10 {
        let r = h2
            .post(format!("https://{}/v1/events", h.addr()))
            .json(&json!({"channel": format!("h2.{i}"), "data": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(next().await, "OK");
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
}

/// A half or broken TLS configuration stops the start with a reason naming what is wrong.
#[test]
fn bad_tls_settings_refuse_to_start_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
    let junk = dir.path().join("junk.pem").display().to_string();
    for (toml, reason) in [
        (
            format!("[server]\ntls_cert = \"{junk}\"\n"),
            "go together".to_string(),
        ),
        (
            format!("[server]\ntls_cert = \"{junk}\"\ntls_key = \"{junk}\"\n"),
            junk.clone(),
        ),
        (
            format!(
                "[server]\ntls_cert = \"{0}/missing.pem\"\ntls_key = \"{junk}\"\n",
                dir.path().display()
            ),
            "missing.pem".to_string(),
        ),
    ] {
        assert_serve_refuses(dir.path(), &toml, &reason);
    }
}

/// An `https://` webhook is spoken to over TLS and its certificate is checked: a receiver
/// whose certificate no public root signed is refused at the handshake, and the attempt log
/// says why. (Plain HTTP sent to a TLS port would fail differently: no certificate error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_verify_the_receivers_certificate() {
    use crate::webhooks::{attempts, create_webhook, eventually};
    let dir = tempfile::tempdir().unwrap();
    let Some(receiver) = tls_herald(dir.path()) else {
        return;
    };
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let (status, created) = create_webhook(
        &h,
        json!({"url": format!("https://{}/v1/health", receiver.addr()), "channels": ["t"]}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    publish_one(&h, "t", json!(1)).await;
    let first = eventually("an attempt logged", WAIT, async || {
        attempts(&h, &id, "").await.into_iter().next()
    })
    .await;
    let error = first["error"].as_str().unwrap_or_default();
    assert!(first["status_code"].is_null(), "{first}");
    assert!(error.contains("certificate"), "{first}");
}

/// Over HTTP/2 one TCP connection carries many requests: each open event stream takes a
/// connection's slot in the per-client limit, so a few sockets cannot hold thousands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_event_streams_count_against_the_per_client_limit() {
    let dir = tempfile::tempdir().unwrap();
    if !make_certs(dir.path()) {
        dependency_missing("openssl (test certificates)", "apt-get install -y openssl");
        return;
    }
    let h = Herald::start(&format!(
        "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[limits]\nmax_connections_per_ip = 3\n",
        dir.path().join("redis.pem").display(),
        dir.path().join("redis.key").display()
    ));
    let client = https_client(&dir.path().join("ca.pem"), false);
    let url = format!("https://127.0.0.1:{}/v1/sse?channel=c", h.addr().port());
    let open = || async {
        tokio::time::timeout(WAIT, client.get(&url).send())
            .await
            .expect("answered")
            .expect("response")
    };
    // The connection is one slot; two streams take the other two.
    let first = open().await;
    assert_eq!(
        (first.status().as_u16(), first.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let second = open().await;
    assert_eq!(second.status(), 200);
    let third = open().await;
    assert_eq!(third.status(), 429);
    let body: serde_json::Value = third.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    // A stream that ends gives its slot back.
    drop(first);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let again = open().await;
        if again.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(second);
}

/// Renewed certificate files are taken without a signal too (the files are watched).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_is_taken_when_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let Some(h) = tls_herald(dir.path()) else {
        return;
    };
    let (next, new_client) = next_certificate(&h).await;
    for f in ["redis.pem", "redis.key"] {
        std::fs::copy(next.path().join(f), dir.path().join(f)).unwrap();
    }
    serves_the_new_certificate(&h, &new_client).await;
}
