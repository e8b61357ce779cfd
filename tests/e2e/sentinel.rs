//! High availability on Redis: Sentinel failover followed by the node itself, and appends
//! acknowledged only once replicas have them (`redis.min_replicas`). Real redis-server
//! primaries, replicas and Sentinels on loopback.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{free_port, Redis};
use crate::common::*;
use crate::webhooks::eventually;

/// A redis-server (data node or Sentinel) on a free loopback port, killed on drop.
struct Server {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Server {
    fn data(replica_of: Option<u16>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        .map(String::from)
        .to_vec();
        args.extend(["--dir".into(), dir.path().display().to_string()]);
        if let Some(p) = replica_of {
            args.extend(["--replicaof".into(), "127.0.0.1".into(), p.to_string()]);
        }
        Server::spawn(&args, port, dir)
    }

    fn sentinel(primary: u16) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor herald 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds herald 1000\n\
                 sentinel failover-timeout herald 4000\n\
                 sentinel parallel-syncs herald 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let args = vec![conf.display().to_string(), "--sentinel".to_string()];
        Server::spawn(&args, port, dir)
    }

    fn spawn(args: &[String], port: u16, dir: tempfile::TempDir) -> Server {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = Server {
            child: Some(child),
            port,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while server.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A command through redis-cli; its output, trimmed.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// POSTs an event; (status, Retry-After present, reply).
async fn publish_with(h: &Herald, body: &Value) -> (u16, bool, Value) {
    let r = http()
        .post(h.url("/v1/events"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    (status, retry_after, r.json().await.unwrap_or(Value::Null))
}

/// The primary's death is followed without a restart: while there is none, publishes get
/// 503 `log_unavailable` (with Retry-After), then go through on the promoted replica, and
/// every event acknowledged (each on a replica too, `min_replicas = 1`) is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_a_sentinel_failover_and_loses_nothing_acknowledged() {
    // The harness's own check of redis-server (version, presence).
    drop(Redis::start());
    // Two replicas: one is promoted, the other then acknowledges the new primary's appends.
    let mut primary = Server::data(None);
    let replicas = [
        Server::data(Some(primary.port)),
        Server::data(Some(primary.port)),
    ];
    let sentinels: Vec<Server> = (0..3).map(|_| Server::sentinel(primary.port)).collect();
    let list = sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port))
        .collect::<Vec<_>>()
        .join(", ");
    // The replica in sync, and known to the Sentinels (they learn of replicas from the
    // primary's INFO, every 10 s), before anything depends on it.
    for (replica, s) in replicas
        .iter()
        .flat_map(|r| sentinels.iter().map(move |s| (r, s)))
    {
        eventually("the replica in sync", WAIT, async || {
            let info = replica.cli(&["INFO", "replication"])?;
            info.contains("master_link_status:up").then_some(())
        })
        .await;
        eventually("the Sentinels to know the replica", WAIT * 2, async || {
            let listed = s.cli(&["SENTINEL", "replicas", "herald"])?;
            let known = listed.contains(&replica.port.to_string());
            if !known {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            known.then_some(())
        })
        .await;
    }
    let h = Herald::start(&format!(
        "[redis]\nsentinels = [{list}]\nmaster_name = \"herald\"\nmin_replicas = 1\nreplica_timeout = \"2s\"\n"
    ));
    let mut acked = Vec::new();
    for i in 0..20 {
        let (status, _, reply) = publish_with(
            &h,
            &json!({"channel": "ha", "data": i, "id": format!("before-{i}")}),
        )
        .await;
        assert_eq!(status, 201, "{reply}");
        acked.push(reply["seq"].as_u64().unwrap());
    }
    primary.kill9();
    // Until a replica is promoted: 503 with Retry-After, then 201, each retry with its id.
    let mut refused = 0;
    for i in 0..10 {
        let body = json!({"channel": "ha", "data": 100 + i, "id": format!("during-{i}")});
        let seq = eventually("a writable primary", WAIT * 2, async || {
            let (status, retry_after, reply) = publish_with(&h, &body).await;
            match status {
                200 | 201 => reply["seq"].as_u64(),
                503 => {
                    let code = reply["error"]["code"].as_str().unwrap_or("");
                    assert!(
                        ["log_unavailable", "outcome_unknown"].contains(&code),
                        "{reply}"
                    );
                    assert!(retry_after, "503 says when to retry: {reply}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    None
                }
                other => panic!("unexpected {other}: {reply}"),
            }
        })
        .await;
        acked.push(seq);
    }
    assert!(refused > 0, "the outage was seen");
    let roles: Vec<String> = replicas
        .iter()
        .map(|r| {
            r.cli(&["ROLE"])
                .unwrap()
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        roles.contains(&"master".to_string()),
        "a replica was promoted: {roles:?}"
    );
    let page = get_json(h.url("/v1/events?channel=ha&limit=1000")).await;
    let stored = page_seqs(&page);
    for seq in &acked {
        assert!(
            stored.contains(seq),
            "acknowledged seq {seq} lost: {stored:?}"
        );
    }
    assert_eq!(stored.len(), acked.len(), "nothing doubled: {stored:?}");
}

/// With `min_replicas = 1` and no replica, an append cannot be confirmed: 503
/// `outcome_unknown`, never 201, and subscribers are not handed the event. Once a replica
/// has it, the same id is answered with the original seq (never doubled) and the event is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_wait_for_replicas_and_unconfirmed_ones_are_not_acknowledged() {
    drop(Redis::start());
    let primary = Server::data(None);
    let h = Herald::start(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\nmin_replicas = 1\nreplica_timeout = \"300ms\"\n",
        primary.port
    ));
    let mut sse = Sse::connect(&h, "channel=rep", None).await;
    let body = json!({"channel": "rep", "data": "x", "id": "only-once"});
    let (status, retry_after, reply) = publish_with(&h, &body).await;
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["error"]["code"], "outcome_unknown", "{reply}");
    assert!(retry_after);
    let replica = Server::data(Some(primary.port));
    let (status, reply) = eventually("the replica to confirm", WAIT, async || {
        let (status, _, reply) = publish_with(&h, &body).await;
        (status != 503).then_some((status, reply))
    })
    .await;
    assert_eq!(
        status, 200,
        "the first attempt stored it; the retry confirms it: {reply}"
    );
    let seq = reply["seq"].as_u64().unwrap();
    let got = sse.next().await.unwrap();
    assert_eq!(got.id, Some(seq));
    let page = get_json(h.url("/v1/events?channel=rep")).await;
    assert_eq!(page_seqs(&page), vec![seq], "never doubled");
    drop(replica);
}
