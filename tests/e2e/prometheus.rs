//! A real Prometheus (Debian's `prometheus`) scrapes a running Herald after a known load: its
//! query API returns the documented series with the values the load implies, the alert rules
//! in `contrib/prometheus/` load and evaluate cleanly, and every query of the Grafana
//! dashboard in `contrib/grafana/` is valid PromQL over series Herald exports.

use std::process::{Child, Stdio};

use serde_json::{json, Value};

use crate::browser::which;
use crate::common::*;
use crate::webhooks::{create_webhook, eventually, Receiver, Reply};

struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contrib(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

fn start_prometheus(target: std::net::SocketAddr) -> Option<Prometheus> {
    let Some(bin) = which("prometheus") else {
        dependency_missing(
            "prometheus (the metrics test)",
            "apt-get install -y prometheus",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: herald\n    static_configs:\n      - targets: ['{target}']\n",
            contrib("prometheus/herald-alerts.yml").display()
        ),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let child = tool(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Some(Prometheus {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    })
}

impl Prometheus {
    /// An instant query's result vector (None while Prometheus is not up yet).
    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let r = http()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        assert_eq!(v["status"], "success", "{promql}: {v}");
        Some(v["data"]["result"].as_array()?.clone())
    }

    /// The single value of a query that yields one series.
    async fn value(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_documented_series_after_a_known_load() {
    let h = Herald::start("[webhooks]\nallow_private = true\n");
    let Some(prom) = start_prometheus(h.addr) else {
        return;
    };
    // The load: one SSE subscriber, one webhook endpoint, 30 events, 2 bad requests.
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let (status, _) = create_webhook(&h, json!({"url": receiver.url(), "channels": ["m"]})).await;
    assert_eq!(status, 201);
    let mut sse = Sse::connect(&h, "channel=m", None).await;
    for i in 0..30 {
        publish_one(&h, "m", json!(i)).await;
    }
    for _ in 0..30 {
        sse.next().await.expect("event");
    }
    for _ in 0..2 {
        let (status, _) = publish(&h, json!({"channel": "bad name", "data": 1})).await;
        assert_eq!(status, 400);
    }
    eventually("30 webhook deliveries", WAIT, async || {
        (receiver.count() == 30).then_some(())
    })
    .await;

    let wants: [(&str, f64); 9] = [
        (r#"up{job="herald"}"#, 1.0),
        (r#"herald_events_published_total{ingest="http"}"#, 30.0),
        (r#"herald_deliveries_total{transport="sse"}"#, 30.0),
        (r#"herald_deliveries_total{transport="webhook"}"#, 30.0),
        (r#"herald_connections{transport="sse"}"#, 1.0),
        (r#"herald_subscriptions_open{transport="webhook"}"#, 1.0),
        (
            r#"sum(herald_http_requests_total{route="/v1/events",method="POST",status="201"})"#,
            30.0,
        ),
        (
            r#"sum(herald_http_requests_total{route="/v1/events",status="400"})"#,
            2.0,
        ),
        ("herald_commit_group_events_sum", 30.0),
    ];
    for (promql, want) in wants {
        eventually(
            &format!("Prometheus says {promql} = {want}"),
            WAIT * 2,
            async || (prom.value(promql).await? == want).then_some(()),
        )
        .await;
    }
    // Histograms: a p99 commit latency that is a time, and webhook attempts by outcome.
    let p99 = prom
        .value("histogram_quantile(0.99, sum by (le) (herald_commit_seconds_bucket))")
        .await
        .unwrap();
    assert!(p99 > 0.0 && p99 < 10.0, "p99 commit latency {p99}");
    assert_eq!(
        prom.value(r#"herald_webhook_attempts_total{outcome="delivered"}"#)
            .await,
        Some(30.0)
    );
    assert_eq!(prom.value("herald_webhook_queue_depth").await, Some(0.0));
    assert_eq!(prom.value("herald_log_head").await, Some(30.0));
    assert_eq!(prom.value("herald_log_oldest").await, Some(1.0));
    assert_eq!(
        prom.value("herald_webhook_delivery_seconds_count").await,
        Some(30.0)
    );

    // The alert rules loaded, evaluate without error, and none fires on a healthy server.
    let rules: Value = eventually("the alert rules evaluated", WAIT, async || {
        let v: Value = http()
            .get(format!("{}/api/v1/rules", prom.base))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let rules = v["data"]["groups"][0]["rules"].as_array()?.clone();
        rules
            .iter()
            .all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
            .then_some(Value::from(rules))
    })
    .await;
    let rules = rules.as_array().unwrap();
    assert_eq!(rules.len(), 8, "{rules:?}");
    for r in rules {
        assert_eq!(r["health"], "ok", "{r}");
        assert_eq!(r["state"], "inactive", "{r}");
    }

    // Every dashboard query is valid PromQL over series Herald exports.
    let exported = get_text(h.url("/metrics")).await;
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana/herald.json")).unwrap())
            .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            prom.query(&expr.replace("$__rate_interval", "1m"))
                .await
                .expect("prometheus answers");
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    exported.contains(&format!("# TYPE {base} "))
                        || exported.contains(&format!("# TYPE {name} "))
                        || lazily_exported(base),
                    "the dashboard uses {name}, which Herald does not export"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 12, "{queries}");
}

/// Counters that appear on the first increment (this load refuses no credential, rate-limits
/// nobody and cuts no slow consumer); the README lists them with the rest.
fn lazily_exported(name: &str) -> bool {
    [
        "herald_auth_failures_total",
        "herald_rate_limited_total",
        "herald_slow_consumer_disconnects_total",
    ]
    .contains(&name)
}

/// The `herald_*` names a PromQL expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("herald_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
