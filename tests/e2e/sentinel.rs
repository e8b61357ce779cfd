//! High availability on Redis: Sentinel failover followed by the node itself, and appends
//! acknowledged only once replicas have them (`redis.min_replicas`). Real redis-server
//! primaries, replicas and Sentinels on loopback.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Redis;
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
        let child = tool("redis-server")
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
        let out = tool("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Sends a signal (`-STOP`, `-CONT`) with kill(1).
    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(tool("kill").args([sig, &pid]).status().unwrap().success());
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

/// A primary, two replicas in sync with it and three Sentinels that know them all.
struct Ha {
    primary: Server,
    replicas: [Server; 2],
    _sentinels: Vec<Server>,
    /// The Sentinels as a TOML list.
    list: String,
}

impl Ha {
    async fn start() -> Ha {
        // The harness's own check of redis-server (version, presence).
        drop(Redis::start());
        // Two replicas: one is promoted, the other then acknowledges the new primary's appends.
        let primary = Server::data(None);
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
        Ha {
            primary,
            replicas,
            _sentinels: sentinels,
            list,
        }
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
    let ha = Ha::start().await;
    let (mut primary, replicas, list) = (ha.primary, ha.replicas, ha.list);
    let toml = format!(
        "[redis]\nsentinels = [{list}]\nmaster_name = \"herald\"\nmin_replicas = 1\nreplica_timeout = \"2s\"\n"
    );
    // Two nodes; the publishers alternate between them, the subscriber is on the second.
    let nodes = [Herald::start(&toml), Herald::start(&toml)];
    let h = &nodes[0];
    let mut sse = Sse::connect(&nodes[1], "channel=ha", Some(0)).await;
    // Sixteen publishers, each retrying a refused publish with its id until it is taken.
    let acked: std::sync::Arc<std::sync::Mutex<Vec<u64>>> = Default::default();
    let refused: std::sync::Arc<std::sync::atomic::AtomicUsize> = Default::default();
    let killed: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>> = Default::default();
    let resumed: std::sync::Arc<std::sync::Mutex<Option<Duration>>> = Default::default();
    let mut publishers = Vec::new();
    for p in 0..16 {
        let (url, acked, refused, killed, resumed) = (
            nodes[p % 2].url("/v1/events"),
            acked.clone(),
            refused.clone(),
            killed.clone(),
            resumed.clone(),
        );
        publishers.push(tokio::spawn(async move {
            let client = http();
            for i in 0..15 {
                let body = json!({"channel": "ha", "data": [p, i], "id": format!("p{p}-{i}")});
                let deadline = tokio::time::Instant::now() + WAIT * 2;
                loop {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no primary came back"
                    );
                    let Ok(r) = client.post(&url).json(&body).send().await else {
                        continue;
                    };
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key("retry-after");
                    let reply: Value = r.json().await.unwrap_or(Value::Null);
                    match status {
                        200 | 201 => {
                            acked.lock().unwrap().push(reply["seq"].as_u64().unwrap());
                            if let Some(at) = *killed.lock().unwrap() {
                                resumed.lock().unwrap().get_or_insert(at.elapsed());
                            }
                            break;
                        }
                        503 => {
                            let code = reply["error"]["code"].as_str().unwrap_or("");
                            assert!(
                                ["log_unavailable", "outcome_unknown"].contains(&code),
                                "{reply}"
                            );
                            assert!(retry_after, "503 says when to retry: {reply}");
                            refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("unexpected {other}: {reply}"),
                    }
                }
            }
        }));
    }
    // Mid-run, the primary dies.
    eventually("some publishes acknowledged", WAIT, async || {
        (acked.lock().unwrap().len() >= 40).then_some(())
    })
    .await;
    primary.kill9();
    *killed.lock().unwrap() = Some(std::time::Instant::now());
    // While there is no writable primary, readiness says so (balancers route elsewhere).
    eventually(
        "/readyz to answer 503 without a primary",
        WAIT,
        async || {
            let r = http().get(h.url("/readyz")).send().await.ok()?;
            (r.status() == 503).then_some(())
        },
    )
    .await;
    for p in publishers {
        p.await.unwrap();
    }
    eventually("/readyz to answer 200 again", WAIT, async || {
        let r = http().get(h.url("/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 240);
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the outage was seen"
    );
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
    // Every acknowledged event is in history with its acknowledged seq, once (a read, like
    // a publish, may get a 503 while a node catches up with the change of primary: retried).
    let url = h.url("/v1/events?channel=ha&limit=1000");
    let page = eventually("a history read", WAIT, async || {
        let page = get_json(&url).await;
        page["events"].is_array().then_some(page)
    })
    .await;
    let stored = page_seqs(&page);
    let mut want = acked.clone();
    want.sort_unstable();
    assert_eq!(stored, want, "history is exactly what was acknowledged");
    // The subscriber from 0 saw each once, in order, across the failover.
    let mut seen = Vec::new();
    while seen.len() < want.len() {
        let e = sse.next().await.expect("the stream stays");
        if e.name.as_deref() == Some("reset") {
            continue;
        }
        seen.push(e.id.unwrap());
    }
    assert_eq!(seen, want, "the subscriber saw each event once, in order");
    let node = &nodes[1];
    let failovers = metric(node, "herald_redis_failovers_total").await;
    assert!(
        failovers >= Some(1.0),
        "the failover is counted: {failovers:?}"
    );
    assert_eq!(metric(node, "herald_redis_primary_up").await, Some(1.0));
    let without = metric(node, "herald_redis_without_primary_seconds_total").await;
    assert!(
        without > Some(0.0),
        "the time without a primary is counted: {without:?}"
    );
    eprintln!(
        "publishing resumed {:?} after the primary was killed",
        resumed.lock().unwrap()
    );
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

/// With both replicas paused (SIGSTOP), a publish is never acknowledged 2xx within the
/// timeout; once they resume, the same id succeeds, stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replicas_hold_acknowledgements_back() {
    drop(Redis::start());
    let primary = Server::data(None);
    let replicas = [
        Server::data(Some(primary.port)),
        Server::data(Some(primary.port)),
    ];
    for r in &replicas {
        eventually("the replica in sync", WAIT, async || {
            let info = r.cli(&["INFO", "replication"])?;
            info.contains("master_link_status:up").then_some(())
        })
        .await;
    }
    let h = Herald::start(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}\"\nmin_replicas = 1\nreplica_timeout = \"500ms\"\n",
        primary.port
    ));
    let first = json!({"channel": "p", "data": 0, "id": "p-0"});
    let (status, _, reply) = publish_with(&h, &first).await;
    assert_eq!(status, 201, "{reply}");
    let signal = |sig: &str| replicas.iter().for_each(|r| r.signal(sig));
    signal("-STOP");
    let body = json!({"channel": "p", "data": 1, "id": "p-1"});
    for _ in 0..3 {
        let (status, _, reply) = publish_with(&h, &body).await;
        assert_eq!(
            status, 503,
            "never acknowledged while no replica has it: {reply}"
        );
        assert_eq!(reply["error"]["code"], "outcome_unknown");
    }
    assert!(
        metric(&h, "herald_redis_unconfirmed_total").await >= Some(3.0),
        "each unconfirmed group is counted"
    );
    signal("-CONT");
    let (status, reply) = eventually("the replicas back", WAIT, async || {
        let (status, _, reply) = publish_with(&h, &body).await;
        (status != 503).then_some((status, reply))
    })
    .await;
    assert!(status == 200 || status == 201, "{reply}");
    let page = get_json(h.url("/v1/events?channel=p")).await;
    assert_eq!(page_seqs(&page).len(), 2, "stored once: {page}");
}

/// Why `min_replicas` exists, shown on the same cluster: the replicas are cut off (paused,
/// and their links to the primary closed, so nothing reaches even their socket buffers) and
/// the primary dies. A node with `min_replicas = 0` acknowledged events the promoted
/// replica never had: they are gone. A node with `min_replicas = 1` never acknowledged its
/// event, and its retry with the same id is stored once on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replica_acknowledgement_a_failover_takes_back_acknowledged_events() {
    let ha = Ha::start().await;
    let (mut primary, replicas, list) = (ha.primary, ha.replicas, ha.list);
    let node = |min_replicas: u32| {
        Herald::start(&format!(
            "[redis]\nsentinels = [{list}]\nmaster_name = \"herald\"\n\
             min_replicas = {min_replicas}\nreplica_timeout = \"500ms\"\n"
        ))
    };
    let (plain, waiting) = (node(0), node(1));
    let before = publish_one(&waiting, "w", json!("before")).await;

    replicas.iter().for_each(|r| r.signal("-STOP"));
    let cut = primary.cli(&["CLIENT", "KILL", "TYPE", "replica"]).unwrap();
    assert_eq!(cut, "2", "both replica links closed");
    for i in 0..5 {
        publish_one(&plain, "w", json!(format!("lost-{i}"))).await;
    }
    let body = json!({"channel": "w", "data": "waited", "id": "waited"});
    let (status, _, reply) = publish_with(&waiting, &body).await;
    assert_eq!(status, 503, "not acknowledged without a replica: {reply}");
    primary.kill9();
    replicas.iter().for_each(|r| r.signal("-CONT"));

    let (status, reply) = eventually("a new primary takes the retry", WAIT * 2, async || {
        let (status, _, reply) = publish_with(&waiting, &body).await;
        if status == 503 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (status != 503).then_some((status, reply))
    })
    .await;
    assert_eq!(
        status, 201,
        "the unacknowledged event was not kept: {reply}"
    );
    let retried = reply["seq"].as_u64().unwrap();
    let url = waiting.url("/v1/events?channel=w&limit=100");
    let page = eventually("a history read", WAIT, async || {
        let page = get_json(&url).await;
        page["events"].is_array().then_some(page)
    })
    .await;
    let stored = page_seqs(&page);
    assert!(stored.contains(&before), "{page}");
    assert_eq!(
        stored.iter().filter(|s| **s == retried).count(),
        1,
        "{page}"
    );
    // By content, not seq: the new primary's counter started below the lost seqs, and
    // nothing told it to skip them (the node that handed them out raises it when it
    // reconnects, which may come after another node's append), so a lost seq can be given
    // again. README says so under `min_replicas`.
    let kept: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"].as_str().is_some_and(|d| d.starts_with("lost-")))
        .collect();
    assert!(
        kept.is_empty(),
        "acknowledged without a replica, and still there after the failover: {kept:?} \
         (were the replicas cut off?)"
    );
}
