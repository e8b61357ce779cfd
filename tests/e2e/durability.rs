//! Crash safety (SIGKILL) and clean shutdown (SIGTERM): every acknowledged event survives with
//! its seq and bytes, and seqs continue after a restart.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

/// Reads the whole log through the history API.
async fn read_all(h: &Herald) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let url = h.url(&format!("/v1/events?channel=*&after={after}&limit=1000"));
        let page: Value = get_json(url).await;
        let events = page["events"].as_array().unwrap();
        out.extend(events.iter().cloned());
        let next = page["next"].as_u64().unwrap();
        if events.is_empty() && next == after {
            return out;
        }
        after = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event() {
    let mut h = Herald::start("");
    let acked: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let mut publishers = Vec::new();
    for p in 0..4 {
        let url = h.url("/v1/events");
        let acked = acked.clone();
        publishers.push(tokio::spawn(async move {
            let client = http();
            for i in 0.. {
                let batch = i % 3 == 0;
                let body = if batch {
                    json!([{"channel": format!("c{p}"), "data": {"p": p, "i": i, "k": 0}},
                           {"channel": format!("c{p}"), "data": {"p": p, "i": i, "k": 1}}])
                } else {
                    json!({"channel": format!("c{p}"), "data": {"p": p, "i": i, "k": 0}})
                };
                let Ok(r) = client.post(&url).json(&body).send().await else {
                    return;
                };
                if r.status() != 201 {
                    return;
                }
                let Ok(reply) = r.json::<Value>().await else {
                    return;
                };
                let mut acked = acked.lock().unwrap();
                if batch {
                    for (k, seq) in reply["seqs"].as_array().unwrap().iter().enumerate() {
                        acked.insert(seq.as_u64().unwrap(), body[k]["data"].clone());
                    }
                } else {
                    acked.insert(reply["seq"].as_u64().unwrap(), body["data"].clone());
                }
            }
        }));
    }
    // Let publishes flow, then kill mid-stream.
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing too slow"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.kill9();
    for p in publishers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    h.restart();
    let events = read_all(&h).await;
    let stored: BTreeMap<u64, &Value> = events
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect();
    for (seq, data) in &acked {
        let event = stored
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} lost"));
        assert_eq!(&event["data"], data, "seq {seq} has other bytes");
    }
    // Seqs are contiguous from 1: nothing half-written or skipped shows.
    let seqs: Vec<u64> = stored.keys().copied().collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    // And they keep increasing.
    let next = publish_one(&h, "after", json!("restart")).await;
    assert_eq!(next, seqs.len() as u64 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_drains_and_exits_zero() {
    let mut h = Herald::start("");
    publish_one(&h, "t", json!(1)).await;
    let mut ws = ws_connect(&h, "?channel=t").await;
    assert_eq!(ws_json(&mut ws).await["op"], "welcome");
    assert_eq!(ws_json(&mut ws).await["op"], "subscribed");
    let mut sse = Sse::connect(&h, "channel=t", None).await;

    // Publishes racing the signal: each is either acknowledged (then durable) or refused.
    let url = h.url("/v1/events");
    let racing: Vec<_> = (0..20)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move {
                let r = http()
                    .post(url)
                    .json(&json!({"channel": "t", "data": {"race": i}}))
                    .send()
                    .await
                    .ok()?;
                (r.status() == 201).then_some(())?;
                r.json::<Value>().await.ok()?["seq"].as_u64()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = h.terminate();
    assert_eq!(status.code(), Some(0), "clean exit");

    match ws_read(&mut ws).await {
        WsRead::Json(v) if v["op"] == "event" => loop {
            match ws_read(&mut ws).await {
                WsRead::Json(_) => continue,
                WsRead::Closed(close) => {
                    assert_eq!(close.map(|c| c.0), Some(1001));
                    break;
                }
            }
        },
        WsRead::Closed(close) => assert_eq!(close.map(|c| c.0), Some(1001)),
        other => panic!("unexpected {other:?}"),
    }
    // The SSE stream ends (after any events that were in flight).
    while sse.next().await.is_some() {}

    let mut acked = Vec::new();
    for r in racing {
        if let Some(seq) = r.await.unwrap() {
            acked.push(seq);
        }
    }
    h.restart();
    let events = read_all(&h).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for seq in &acked {
        assert!(seqs.contains(seq), "acknowledged {seq} lost over SIGTERM");
    }
    let next = publish_one(&h, "t", json!("again")).await;
    assert_eq!(
        next,
        seqs.last().copied().unwrap_or(0) + 1,
        "the seq continues where it stopped"
    );
}

/// Counts the fsync-family calls the server makes while `n` events are published one at a
/// time (each acknowledged before the next is sent). strace watches the real process: no
/// test hook stands between the setting and the disk.
async fn syncs_during_publishes(durability: &str, n: usize) -> Option<usize> {
    if tool("strace").arg("-V").output().is_err() {
        dependency_missing("strace", "apt-get install -y strace");
        return None;
    }
    let h = Herald::start(&format!(
        "[log]\ndurability = \"{durability}\"\n[limits]\npublish_rate = 0\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("strace.txt");
    let mut strace = tool("strace")
        .args([
            "-f",
            "-e",
            "trace=fsync,fdatasync,sync_file_range,syncfs",
            "-o",
        ])
        .arg(&out)
        .args(["-p", &h.pid().to_string()])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn strace");
    // strace says "Process N attached with K threads" once it traces them all, and why when
    // it cannot (ptrace refused would read as "0 syncs" otherwise): wait for that line, or
    // fail with strace's words.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = strace.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(wait)
            .expect("strace never said it attached");
        assert!(
            !line.contains("not permitted") && !line.contains("ptrace"),
            "strace cannot trace the server: {line}"
        );
        if line.contains("attached") {
            break;
        }
    }
    let before = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count();
    for i in 0..n {
        publish_one(&h, "d", json!(i)).await;
    }
    let after = std::fs::read_to_string(&out)
        .unwrap_or_default()
        .lines()
        .count();
    let _ = strace.kill();
    wait_within(&mut strace, WAIT);
    Some(after - before)
}

/// `fsync` puts every acknowledged event on disk before the ack (at least one sync per
/// commit, and sequential publishes are one commit each); `os` leaves it to the kernel and
/// the store's once-a-second background sync.
#[tokio::test]
async fn fsync_syncs_before_every_ack_and_os_does_not() {
    const N: usize = 40;
    let Some(fsync) = syncs_during_publishes("fsync", N).await else {
        return;
    };
    let os = syncs_during_publishes("os", N).await.unwrap();
    assert!(
        fsync >= N,
        "fsync: {fsync} syncs for {N} acknowledged publishes"
    );
    assert!(
        os < N / 4,
        "os: {os} syncs for {N} publishes (expected only periodic ones)"
    );
}

/// Two processes on one data directory would each acknowledge publishes into a store only
/// one of them survives in; the second must refuse to start, and a dead holder (SIGKILL)
/// must not block the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_has_one_owner() {
    let mut h = Herald::start("");
    let first = publish_one(&h, "orders", json!(1)).await;
    let out = herald_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&h.data)
        .arg("--config")
        .arg(h.config_path())
        .output_within();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second owner started: {stderr}");
    assert!(
        stderr.contains(&h.data.display().to_string()),
        "names the directory: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {}", h.pid())),
        "names the holder: {stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    // The owner is untouched, and after it dies by SIGKILL (its lock file left behind) a new
    // process takes over with everything acknowledged.
    let second = publish_one(&h, "orders", json!(2)).await;
    h.kill9();
    assert!(h.data.join("herald.lock").exists());
    h.restart();
    let page = get_json(h.url("/v1/events?channel=orders")).await;
    assert_eq!(page_seqs(&page), vec![first, second]);
}
