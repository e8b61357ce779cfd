//! The command line: `herald publish` and `herald tail` against a running server.

use std::process::Stdio;

use serde_json::Value;

use crate::common::*;

fn herald(args: &[&str], server: &Herald) -> std::process::Output {
    herald_command()
        .args(args)
        .env("HERALD_URL", server.url(""))
        .stdin(Stdio::null())
        .output_within()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_tail_with_since() {
    let h = Herald::start("");
    let out = herald(
        &[
            "publish",
            "orders",
            r#"{"total":3}"#,
            "--type",
            "order.created",
            "--id",
            "o-1",
        ],
        &h,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"seq":1}"#);
    let out = herald(&["publish", "orders", "plain text", "--string"], &h);
    assert!(out.status.success());

    let out = herald(&["tail", "orders", "--since", "0", "--count", "2"], &h);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "order.created");
    assert_eq!(lines[0]["data"]["total"], 3);
    assert_eq!(lines[0]["id"], "o-1");
    assert_eq!(lines[1]["data"], "plain text");

    // Errors from the server reach the user with a failing exit code.
    let out = herald(&["publish", "bad name", "1"], &h);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_channel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_resumes_after_a_server_restart() {
    let mut h = Herald::start_restartable("");
    publish_one(&h, "t", serde_json::json!(1)).await;
    let addr = h.url("");
    let mut tail = herald_command()
        .args(["tail", "t", "--since", "0", "--count", "3"])
        .env("HERALD_URL", &addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its lines, as they come, from a reader thread.
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let seq_of = |line: String| -> u64 {
        serde_json::from_str::<Value>(&line).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    // Once tail has printed event 1 it is following: then the server dies and comes back on
    // the same port, so the running tail can find it again.
    let first = lines.recv_timeout(WAIT).expect("tail printed event 1");
    let mut seqs = vec![seq_of(first)];
    h.kill9();
    let port = h.addr.port();
    h.restart_on(port);
    publish_one(&h, "t", serde_json::json!(2)).await;
    publish_one(&h, "t", serde_json::json!(3)).await;
    while seqs.len() < 3 {
        seqs.push(seq_of(lines.recv_timeout(WAIT).expect("tail's next line")));
    }
    let status = tokio::task::spawn_blocking(move || tail.wait())
        .await
        .unwrap();
    assert!(status.unwrap().success(), "tail exits after --count 3");
    assert_eq!(
        seqs,
        vec![1, 2, 3],
        "no loss, no duplicate across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_commands_manage_endpoints() {
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let receiver =
        crate::webhooks::Receiver::start(|_, _| crate::webhooks::Reply::Status(200)).await;
    let out = herald(
        &[
            "webhook",
            "add",
            &receiver.url(),
            "--channel",
            "cli",
            "--description",
            "from the CLI",
            "--owner",
            "acme",
            "--json",
        ],
        &h,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["owner"], "acme");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shown only now"),
        "the secret's one showing is said"
    );

    let out = herald(&["webhook", "list", "--json"], &h);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["webhooks"][0]["id"], id.as_str());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("whsec_"));

    publish_one(&h, "cli", serde_json::json!(1)).await;
    crate::webhooks::eventually("delivery", WAIT, async || {
        (receiver.delivered().len() == 1).then_some(())
    })
    .await;
    let out = herald(&["webhook", "replay", &id, "--since", "0"], &h);
    assert!(out.status.success());
    crate::webhooks::eventually("replayed", WAIT, async || {
        (receiver.count() == 2).then_some(())
    })
    .await;
    let deliveries = crate::webhooks::eventually("attempt log", WAIT, async || {
        let out = herald(
            &[
                "webhook",
                "deliveries",
                &id,
                "--status",
                "delivered",
                "--json",
            ],
            &h,
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["deliveries"].as_array().unwrap().len() == 2).then_some(v)
    })
    .await;
    assert_eq!(deliveries["deliveries"][0]["seq"], 1);
    let out = herald(&["webhook", "rotate", &id, "--json"], &h);
    let rotated: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(rotated["secret"], created["secret"]);
    let out = herald(&["webhook", "deliveries", "wh_missing"], &h);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_webhooks_smoke() {
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let report = bench(
        &h,
        &[
            "webhooks",
            "--endpoints",
            "3",
            "--events",
            "200",
            "--batch",
            "50",
        ],
    )
    .await;
    assert_eq!(report["deliveries"], 600);
    assert_eq!(report["expected"], 600);
    assert!(report["deliveries_per_sec"].as_f64().unwrap() > 0.0);
    // The bench cleans up after itself.
    let list: Value = get_json(h.url("/v1/webhooks")).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 0);
}

/// Runs `herald bench ARGS --json` against `h` and returns its report.
async fn bench(h: &Herald, args: &[&str]) -> Value {
    let (url, pid) = (h.url(""), h.pid().to_string());
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    if args[0] == "idle" || args[0] == "fanout" || args[0] == "channels" {
        args.extend(["--server-pid".to_string(), pid]);
    }
    let out = tokio::task::spawn_blocking(move || {
        herald_command()
            .arg("bench")
            .args(&args)
            .arg("--json")
            .env("HERALD_URL", url)
            .output_within()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_scenarios_smoke() {
    let h = Herald::start(
        "[server]\nidle_timeout = \"1h\"\n[log]\ndurability = \"os\"\n[limits]\npublish_rate = 0\n",
    );
    let idle = bench(
        &h,
        &[
            "idle",
            "--connections",
            "200",
            "--transport",
            "mix",
            "--hold",
            "1s",
        ],
    )
    .await;
    assert_eq!(
        (idle["opened"].clone(), idle["failed"].clone()),
        (serde_json::json!(200), serde_json::json!(0))
    );
    assert!(idle["server_kib_per_connection"].is_number(), "{idle}");
    assert_eq!(idle["still_open_after_hold"], 200);

    for (scenario, transport) in [("fanout", "ws"), ("fanout", "sse"), ("channels", "mix")] {
        let r = bench(
            &h,
            &[
                scenario,
                "--subscribers",
                "20",
                "--transport",
                transport,
                "--rate",
                "200",
                "--duration",
                "2s",
            ],
        )
        .await;
        assert_eq!(r["lost"], 0, "{r}");
        assert_eq!(r["out_of_order"], 0, "{r}");
        assert!(r["published"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["delivered"], r["expected"], "{r}");
        assert!(r["latency"]["samples"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["latency"]["p99_ms"].as_f64().unwrap() >= r["latency"]["p50_ms"].as_f64().unwrap()
        );
    }
    for batch in ["1", "50"] {
        let r = bench(
            &h,
            &[
                "publish",
                "--batch",
                batch,
                "--concurrency",
                "4",
                "--duration",
                "2s",
            ],
        )
        .await;
        assert!(r["events"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["failed_requests"], 0, "{r}");
    }
}

/// Out-of-range settings stop the server at start with the setting named, instead of being
/// clamped to something the operator did not ask for.
#[test]
fn out_of_range_settings_are_refused_at_start() {
    for (toml, expected) in [
        (
            "[websocket]\ncompression_level = 12\n",
            "websocket.compression_level is 12; it must be 0",
        ),
        (
            "[webhooks]\nnice = 25\n",
            "webhooks.nice is 25; it must be 0",
        ),
        (
            "[websocket]\nwrite_delay = \"2s\"\n",
            "websocket.write_delay is 2s; it must be at most 1s",
        ),
        (
            "[server]\ndispatch_delay = \"2s\"\n",
            "server.dispatch_delay is 2s; it must be at most 1s",
        ),
        (
            "[server]\ndispatch_threads = 1000000\n",
            "server.dispatch_threads is 1000000; it must be 0 (half the cores) to 256",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        assert_serve_refuses(dir.path(), toml, expected);
    }
}

/// Without `--json` the webhook commands print for people: tables and `key value` lines, no
/// color when not on a terminal; errors say what went wrong once, with the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_commands_print_tables_for_people() {
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let receiver =
        crate::webhooks::Receiver::start(|_, _| crate::webhooks::Reply::Status(204)).await;
    let run = |args: &[&str]| {
        let out = herald(args, &h);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.success(), stdout, stderr)
    };
    let (ok, added, err) = run(&[
        "webhook",
        "add",
        &receiver.url(),
        "--channel",
        "cli",
        "--type",
        "order.*",
    ]);
    assert!(ok, "{err}");
    let id = added
        .lines()
        .find_map(|l| l.strip_prefix("id"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("{added}"));
    assert!(added.contains("secret       whsec_"), "{added}");
    assert!(added.contains("types        order.*"), "{added}");
    assert!(!added.contains('\x1b'), "no color when piped: {added:?}");

    let (_, listed, _) = run(&["webhook", "list"]);
    let mut lines = listed.lines();
    let head = lines.next().unwrap();
    assert!(
        head.starts_with("ID") && head.contains("STATE") && head.contains("CHANNELS"),
        "{listed}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&id) && row.contains("enabled") && row.contains("cli"),
        "{listed}"
    );

    let (ok, updated, err) = run(&[
        "webhook",
        "update",
        &id,
        "--description",
        "renamed",
        "--rate-limit",
        "7",
    ]);
    assert!(ok, "{err}");
    assert!(
        updated.contains("description  renamed") && updated.contains("rate limit   7"),
        "{updated}"
    );
    let (_, disabled, _) = run(&["webhook", "disable", &id]);
    assert!(disabled.contains("state        disabled"), "{disabled}");
    let (_, enabled, _) = run(&["webhook", "enable", &id]);
    assert!(enabled.contains("state        enabled"), "{enabled}");

    let (ok, tested, err) = run(&["webhook", "test", &id]);
    assert!(ok, "{err}");
    assert!(tested.starts_with("delivered (HTTP 204) in "), "{tested}");
    let (_, attempts, _) = run(&["webhook", "deliveries", &id]);
    assert!(
        attempts.lines().next().unwrap().starts_with("ID") && attempts.contains("delivered"),
        "{attempts}"
    );
    // Pages: two more attempts make three; a page of two says how to get the rest.
    for _ in 0..2 {
        assert!(run(&["webhook", "test", &id]).0);
    }
    let (_, first, _) = run(&["webhook", "deliveries", &id, "--limit", "2"]);
    let more = first
        .lines()
        .find_map(|l| l.strip_prefix("more: "))
        .unwrap_or_else(|| panic!("a full page says there may be more: {first}"));
    assert_eq!(first.lines().count(), 4, "head, two rows, more: {first}");
    let after: Vec<&str> = more.split(' ').collect();
    assert_eq!(after[0], "--after", "{first}");
    let (_, rest, _) = run(&[
        "webhook",
        "deliveries",
        &id,
        "--limit",
        "2",
        "--after",
        after[1],
    ]);
    assert_eq!(rest.lines().count(), 2, "head and the last row: {rest}");
    assert!(!rest.contains("more:"), "{rest}");
    let (ok, recovered, err) = run(&[
        "webhook",
        "recover",
        "--all",
        "--since",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(ok, "{err}");
    assert_eq!(recovered.trim(), "recovering 0 events");

    let (ok, deleted, _) = run(&["webhook", "delete", &id]);
    assert!(ok);
    assert_eq!(deleted.trim(), format!("deleted {id}"));
    let (_, empty, _) = run(&["webhook", "list"]);
    assert!(empty.contains("(none)"), "{empty}");
    let (ok, _, err) = run(&["webhook", "get", &id]);
    assert!(!ok);
    assert_eq!(err.matches("not_found").count(), 1, "said once: {err}");
    assert!(err.contains("404") && err.contains("request "), "{err}");
}

/// Runs `herald` off the async workers (a local app in this runtime must keep answering).
async fn herald_async(args: &[&str], server: &Herald) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let url = server.url("");
    tokio::task::spawn_blocking(move || {
        herald_command()
            .args(&args)
            .env("HERALD_URL", url)
            .stdin(Stdio::null())
            .output_within()
    })
    .await
    .unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_data_that_is_not_json_unless_asked_for_a_string() {
    let h = Herald::start("");
    let out = herald_async(&["publish", "orders", "{total:3}"], &h).await;
    assert!(!out.status.success(), "invalid JSON must fail");
    assert!(stderr(&out).contains("--string"), "{}", stderr(&out));
    let page = get_json(h.url("/v1/events?channel=orders")).await;
    assert_eq!(page_seqs(&page), Vec::<u64>::new(), "nothing was stored");

    let out = herald_async(&["publish", "orders", "{total:3}", "--string"], &h).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let page = get_json(h.url("/v1/events?channel=orders")).await;
    assert_eq!(page["events"][0]["data"], "{total:3}");

    // The same id again: the original seq on stdout, and a note that nothing new was stored.
    for _ in 0..2 {
        let out = herald_async(&["publish", "orders", "1", "--id", "k"], &h).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), r#"{"seq":2}"#);
    }
    let out = herald_async(&["publish", "orders", "1", "--id", "k"], &h).await;
    assert!(
        stderr(&out).contains("already stored as seq 2"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_say_what_to_do() {
    // A server that accepts and never answers: --timeout ends the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let out = tokio::task::spawn_blocking(move || {
        herald_command()
            .args(["publish", "c", "1", "--timeout", "1s", "--server", &url])
            .output_within()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
    drop(silent);

    // Nobody listening: which URL, and how to point elsewhere.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let out = herald_command()
        .args(["publish", "c", "1", "--server", &url])
        .output_within();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(&url) && e.contains("HERALD_URL") && e.contains("herald serve"),
        "{e}"
    );

    // A missing key: where a key goes.
    let h = Herald::start("[auth]\napi_keys = [\"sekret\"]\n");
    let out = herald_async(&["publish", "c", "1"], &h).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--api-key"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_test_fails_when_the_delivery_fails() {
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let app =
        axum::Router::new().fallback(|| async { (axum::http::StatusCode::BAD_GATEWAY, "no") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (ok_url, _) = local_app().await;
    let mut ids = Vec::new();
    for url in [format!("http://{addr}/hook"), format!("{ok_url}/hook")] {
        let (status, endpoint) =
            crate::webhooks::create_webhook(&h, serde_json::json!({"url": url, "channels": ["c"]}))
                .await;
        assert_eq!(status, 201, "{endpoint}");
        ids.push(endpoint["id"].as_str().unwrap().to_string());
    }
    let out = herald_async(&["webhook", "test", &ids[0]], &h).await;
    assert!(!out.status.success(), "a 502 is a failed test");
    assert!(stderr(&out).contains("502"), "{}", stderr(&out));
    let out = herald_async(&["webhook", "test", &ids[1]], &h).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn listen_takes_a_host_name_or_a_bare_port() {
    use std::io::BufRead;
    for listen in ["localhost:0", "0"] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = herald_command()
            .args(["serve", "--listen", listen, "--data"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + WAIT;
        let line = loop {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(line) = rx.recv_timeout(wait) else {
                let _ = child.kill();
                panic!("--listen {listen}: no `listening on` line");
            };
            if line.contains("listening on") {
                break line;
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            line.contains("listening on http://127.0.0.1:"),
            "{listen}: {line}"
        );
    }
}

/// Start-up errors say each cause once, and what to change.
#[test]
fn start_errors_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = herald_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&file)
        .output_within();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("not a directory"), "{err}");
    let last = err.lines().last().unwrap();
    assert_eq!(last.matches("a-file").count(), 1, "said once: {last}");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nlisten = 5\n").unwrap();
    let out = herald_command()
        .args(["serve", "--config"])
        .arg(&config)
        .output_within();
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(!out.status.success());
    assert_eq!(last.matches("invalid type").count(), 1, "said once: {last}");
}

/// `herald bench` says how it is going once a second, and Ctrl-C (SIGINT) ends the run
/// early with the results so far; every subcommand takes `--duration` and `--api-key`, and
/// reports name transports as they are typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_shows_progress_stops_on_ctrl_c_and_takes_the_common_flags() {
    use std::io::{BufRead, BufReader};
    let h = Herald::start(
        "[auth]\napi_keys = [\"bench-key\"]\n[log]\ndurability = \"os\"\n[webhooks]\nallow_private = true\n",
    );
    let mut child = herald_command()
        .args([
            "bench",
            "publish",
            "--concurrency",
            "2",
            "--duration",
            "120s",
        ])
        .args(["--server", &h.url(""), "--api-key", "bench-key", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Two progress lines, then Ctrl-C.
    let stderr = child.stderr.take().unwrap();
    let progress = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let line = lines.next().expect("stderr ended").unwrap();
            if line.starts_with('[') && line.contains("events acknowledged") {
                seen.push(line);
            }
        }
        // Keep reading, as a terminal would.
        std::thread::spawn(move || lines.for_each(drop));
        seen
    });
    let seen = tokio::time::timeout(WAIT, progress).await.unwrap().unwrap();
    assert!(seen[0].contains("1s]"), "{seen:?}");
    let pid = child.id().to_string();
    assert!(tool("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let out = output_of(child, WAIT);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    assert!(report["events"].as_u64().unwrap() > 0, "{report}");
    assert!(report["seconds"].as_f64().unwrap() < 60.0, "{report}");

    // The key goes with every subcommand's requests (the server refuses any without it).
    let (url, pid) = (h.url(""), h.pid().to_string());
    let runs: [&[&str]; 4] = [
        &[
            "idle",
            "--connections",
            "20",
            "--transport",
            "ws",
            "--duration",
            "1s",
        ],
        &[
            "fanout",
            "--subscribers",
            "5",
            "--transport",
            "sse",
            "--rate",
            "50",
            "--duration",
            "1s",
        ],
        &[
            "webhooks",
            "--endpoints",
            "1",
            "--events",
            "20",
            "--duration",
            "30s",
        ],
        &["presence", "--members", "5", "--duration", "1s"],
    ];
    for args in runs {
        let out = herald_command()
            .arg("bench")
            .args(args)
            .args(["--server", &url, "--api-key", "bench-key", "--json"])
            .args(if args[0] == "idle" {
                vec!["--server-pid", pid.as_str()]
            } else {
                vec![]
            })
            .output_within();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(t) = report.get("transport") {
            assert_eq!(t, args[4], "{report}");
        }
    }
    let out = herald_command()
        .args([
            "bench",
            "fanout",
            "--subscribers",
            "2",
            "--transport",
            "ws-deflate",
        ])
        .args([
            "--rate",
            "20",
            "--duration",
            "1s",
            "--server",
            &url,
            "--api-key",
            "bench-key",
        ])
        .output_within();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("WsDeflate"), "{text}");
}
