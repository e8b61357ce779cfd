//! Auth end to end: API keys, scoped tokens, expiry, public channels, safe defaults.

use serde_json::{json, Value};

use crate::common::*;

const KEYED: &str = "[auth]\napi_keys = [\"k-admin\"]\njwt_secret = \"test-secret\"\npublic_channels = [\"news\"]\n";

/// Signs claims with HS256 by an independent route (the jsonwebtoken crate directly), for
/// tokens the CLI will not make: expired, or signed with the wrong secret.
pub fn signed(secret: &[u8], claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// The status of a GET with a bearer credential.
async fn bearer_status(url: String, credential: &str) -> u16 {
    http()
        .get(url)
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Mints a token with the real CLI (`herald token`), from the server's config file.
pub fn token(h: &Herald, args: &[&str]) -> String {
    let out = herald_command()
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(h.config_path())
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn status_of(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_history_and_management_need_the_right_credential() {
    let h = Herald::start(KEYED);
    let c = http();
    let post = |auth: Option<&str>, channel: &str| {
        let mut r = c
            .post(h.url("/v1/events"))
            .json(&json!({"channel": channel, "data": 1}));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r
    };
    let (s, v) = status_of(post(None, "room:1")).await;
    assert_error(s, &v, 401, "unauthorized");
    let (s, v) = status_of(post(Some("wrong"), "room:1")).await;
    assert_error(s, &v, 401, "unauthorized");
    assert_eq!(status_of(post(Some("k-admin"), "room:1")).await.0, 201);

    let publisher = token(
        &h,
        &[
            "--sub",
            "svc",
            "--pub-channel",
            "room:1",
            "--sub-channel",
            "user:1",
        ],
    );
    assert_eq!(status_of(post(Some(&publisher), "room:1")).await.0, 201);
    let (s, v) = status_of(post(Some(&publisher), "room:2")).await;
    assert_error(s, &v, 403, "forbidden");

    // History follows subscribe scopes, by name and by pattern.
    let get = |q: &str, auth: Option<&str>| {
        let mut r = c.get(h.url(&format!("/v1/events?{q}")));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r
    };
    assert_eq!(
        status_of(get("channel=user:1", Some(&publisher))).await.0,
        200
    );
    let (s, v) = status_of(get("channel=user:2", Some(&publisher))).await;
    assert_error(s, &v, 403, "forbidden");
    let (s, v) = status_of(get("channel=user:*", Some(&publisher))).await;
    assert_error(s, &v, 403, "forbidden");
    let (s, v) = status_of(get("channel=room:1", None)).await;
    assert_error(s, &v, 401, "unauthorized");
    assert_eq!(
        status_of(get("channel=news", None)).await.0,
        200,
        "public channel"
    );
    assert_eq!(
        status_of(get(&format!("channel=user:1&token={publisher}"), None))
            .await
            .0,
        200
    );

    // Management needs an API key.
    let hooks = |auth: Option<&str>| {
        let mut r = c.get(h.url("/v1/webhooks"));
        if let Some(a) = auth {
            r = r.bearer_auth(a);
        }
        r
    };
    let (s, v) = status_of(hooks(None)).await;
    assert_error(s, &v, 401, "unauthorized");
    let (s, v) = status_of(hooks(Some(&publisher))).await;
    assert_error(s, &v, 403, "forbidden");
    assert_eq!(status_of(hooks(Some("k-admin"))).await.0, 200);

    // A token signed with another secret, and an expired one.
    let forged = signed(
        b"not-the-secret",
        json!({"sub": "x", "exp": 4_000_000_000u64, "sub_channels": ["*"]}),
    );
    let (s, v) = status_of(get("channel=user:1", Some(&forged))).await;
    assert_error(s, &v, 401, "unauthorized");
    let expired = signed(
        b"test-secret",
        json!({"sub": "x", "exp": 1_000_000_000u64, "sub_channels": ["*"]}),
    );
    let (s, v) = status_of(get("channel=user:1", Some(&expired))).await;
    assert_error(s, &v, 401, "token_expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_enforce_token_scopes() {
    let h = Herald::start(KEYED);
    let user1 = token(
        &h,
        &[
            "--sub",
            "u1",
            "--sub-channel",
            "user:1",
            "--pub-channel",
            "user:1",
        ],
    );
    // SSE: query token, cookie, refusals.
    for (query, cookie, want) in [
        ("channel=user:1".to_string(), None, 401),
        (format!("channel=user:1&token={user1}"), None, 200),
        (format!("channel=user:2&token={user1}"), None, 403),
        (format!("channel=user:*&token={user1}"), None, 403),
        (
            "channel=user:1".to_string(),
            Some(format!("herald_token={user1}")),
            200,
        ),
        ("channel=news".to_string(), None, 200),
    ] {
        let mut r = http().get(h.url(&format!("/v1/sse?{query}")));
        if let Some(c) = &cookie {
            r = r.header("cookie", c);
        }
        let response = tokio::time::timeout(WAIT, r.send()).await.unwrap().unwrap();
        assert_eq!(response.status().as_u16(), want, "{query} {cookie:?}");
    }

    // WebSocket: refused before the upgrade when the query names a channel out of scope.
    match tokio_tungstenite::connect_async(
        h.ws_url(&format!("/v1/ws?channel=user:2&token={user1}")),
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    match tokio_tungstenite::connect_async(h.ws_url("/v1/ws?channel=user:1")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let expired = signed(
        b"test-secret",
        json!({"sub": "old", "exp": 1_000_000_000u64, "sub_channels": ["*"]}),
    );
    for (path, want) in [
        (format!("/v1/ws?token={expired}"), 401),
        ("/v1/ws?token=garbage".to_string(), 401),
        (format!("/v1/ws?channel=news&token={expired}"), 401),
    ] {
        match tokio_tungstenite::connect_async(h.ws_url(&path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), want, "{path}")
            }
            other => panic!("{path}: expected {want}, got {other:?}"),
        }
    }
    let r = http()
        .get(h.url(&format!("/v1/sse?channel=user:1&token={expired}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "token_expired"
    );
    let mut ws = ws_connect(&h, &format!("?token={user1}")).await;
    assert_eq!(ws_json(&mut ws).await["op"], "welcome");
    for (channel, want) in [
        ("user:2", "forbidden"),
        ("user:*", "forbidden"),
        ("*", "forbidden"),
    ] {
        ws_send(
            &mut ws,
            json!({"op": "subscribe", "channel": channel, "ref": channel}),
        )
        .await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(
            (reply["op"].as_str(), reply["code"].as_str()),
            (Some("error"), Some(want)),
            "{reply}"
        );
        assert_eq!(reply["ref"], channel);
    }
    ws_send(&mut ws, json!({"op": "subscribe", "channel": "user:1"})).await;
    assert_eq!(ws_json(&mut ws).await["op"], "subscribed");
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "user:2", "data": 1, "ref": "p"}),
    )
    .await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        (reply["code"].as_str(), reply["ref"].as_str()),
        (Some("forbidden"), Some("p"))
    );
    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "user:1", "data": 1, "ref": "ok"}),
    )
    .await;
    let mut seen = Vec::new();
    assert_eq!(ws_until_op(&mut ws, "ack", &mut seen).await["ref"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_live_connections() {
    let h = Herald::start(KEYED);
    let short = token(&h, &["--sub", "brief", "--sub-channel", "t", "--ttl", "2s"]);
    let mut ws = ws_connect(&h, &format!("?channel=t&token={short}")).await;
    let mut sse = Sse::connect(&h, &format!("channel=t&token={short}"), None).await;
    let mut messages = Vec::new();
    let close = loop {
        match ws_read(&mut ws).await {
            WsRead::Json(v) => messages.push(v),
            WsRead::Closed(c) => break c,
        }
    };
    assert_eq!(close.map(|c| c.0), Some(1008));
    assert!(
        messages.iter().any(|m| m["code"] == "token_expired"),
        "{messages:?}"
    );
    assert_eq!(sse.next().await, None, "the SSE stream ends at expiry");
}

#[tokio::test]
async fn es256_public_key_verifies_tokens_signed_by_the_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("k.pem");
    let public = dir.path().join("pub.pem");
    let openssl = |args: &[&str]| tool("openssl").args(args).status();
    let generated = openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        private.to_str().unwrap(),
    ]);
    match generated {
        Ok(s) if s.success() => {}
        other => {
            dependency_missing(
                &format!("openssl ({other:?})"),
                "apt-get install -y openssl",
            );
            return;
        }
    }
    assert!(openssl(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap()
    ])
    .unwrap()
    .success());
    let h = Herald::start(&format!(
        "[auth]\napi_keys = [\"k\"]\njwt_public_key = \"{}\"\n",
        public.display()
    ));
    let out = herald_command()
        .args([
            "token",
            "--sub",
            "ec",
            "--sub-channel",
            "ec:*",
            "--key",
            private.to_str().unwrap(),
        ])
        .output_within();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        bearer_status(h.url("/v1/events?channel=ec:1"), &t).await,
        200
    );
    assert_eq!(
        bearer_status(h.url("/v1/events?channel=other"), &t).await,
        403
    );

    // The same public key as a JWKS document verifies the same token.
    let pem = std::fs::read(&private).unwrap();
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    let jwks = dir.path().join("keys.json");
    std::fs::write(&jwks, json!({ "keys": [jwk] }).to_string()).unwrap();
    let h = Herald::start(&format!(
        "[auth]\napi_keys = [\"k\"]\njwt_public_key = \"{}\"\n",
        jwks.display()
    ));
    assert_eq!(
        bearer_status(h.url("/v1/events?channel=ec:1"), &t).await,
        200,
        "JWKS-verified token"
    );
    let hs256 = signed(
        b"k",
        json!({"exp": 4_000_000_000u64, "sub_channels": ["*"]}),
    );
    assert_eq!(
        bearer_status(h.url("/v1/events?channel=ec:1"), &hs256).await,
        401,
        "an HS256 token is not accepted by an ES256 key"
    );
}

#[test]
fn open_mode_refuses_non_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let out = herald_command()
        .args(["serve", "--listen", "0.0.0.0:0", "--data"])
        .arg(dir.path())
        .env_remove("HERALD_API_KEY")
        .current_dir(dir.path())
        .output_within();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 with no API keys"),
        "{stderr}"
    );
}
