//! Slow consumers: clients that stop reading are disconnected (WS close 4008, SSE stream
//! ended), the server's memory stays bounded, and a normal subscriber gets everything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const EVENT_BYTES: usize = 4096;
const BATCH: usize = 25;
/// 50 MiB of event data per phase.
const PHASE_EVENTS: usize = 50 * 1024 * 1024 / EVENT_BYTES;

async fn flood(h: &Herald, channel: &str, events: usize, peak_rss: &AtomicU64) {
    let client = http();
    let filler = "x".repeat(EVENT_BYTES - 40);
    for b in 0..events / BATCH {
        let batch: Vec<Value> = (0..BATCH)
            .map(|i| json!({"channel": channel, "data": {"n": b * BATCH + i, "pad": filler}}))
            .collect();
        let r = client
            .post(h.url("/v1/events"))
            .json(&batch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        peak_rss.fetch_max(h.rss_kib(), Ordering::Relaxed);
    }
}

/// A subscriber that reads everything and resumes if it is ever dropped; returns the seqs.
async fn reader(url: String, until: u64) -> Vec<u64> {
    let mut got: Vec<u64> = Vec::new();
    while got.last().copied().unwrap_or(0) < until {
        let cursor = got.last().copied().unwrap_or(0);
        let response = http()
            .get(format!("{url}/v1/sse?channel=flood"))
            .header("Last-Event-ID", cursor.to_string())
            .send()
            .await
            .unwrap();
        let mut reader = herald::cli::SseReader::default();
        let mut body = response.bytes_stream();
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
            got.extend(reader.push(&chunk).into_iter().filter_map(|e| e.id));
            if got.last().copied().unwrap_or(0) >= until {
                break;
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_dropped_and_memory_stays_bounded() {
    let h = Herald::start("[log]\ndurability = \"os\"\n");
    let peak = AtomicU64::new(0);
    // Warm-up: fill the store's memtables and caches to their steady state.
    flood(&h, "warmup", PHASE_EVENTS, &peak).await;
    let baseline = h.rss_kib();

    // Slow WS: subscribes, then never reads.
    let mut slow_ws = ws_connect(&h, "?channel=flood").await;
    // Slow SSE: a raw socket that sends the request and never reads.
    let mut slow_sse = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    slow_sse
        .write_all(b"GET /v1/sse?channel=flood HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    // A normal subscriber on the same channel.
    let head: Value = get_json(h.url("/readyz")).await;
    let first = head["head"].as_u64().unwrap() + 1;
    let last = first + PHASE_EVENTS as u64 - 1;
    let normal = tokio::spawn(reader(h.url(""), last));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let peak = Arc::new(AtomicU64::new(baseline));
    flood(&h, "flood", PHASE_EVENTS, &peak).await;
    let growth_mib = peak.load(Ordering::Relaxed).saturating_sub(baseline) / 1024;
    eprintln!(
        "slow consumers: RSS baseline {} MiB, peak growth {growth_mib} MiB over 50 MiB of events",
        baseline / 1024
    );
    assert!(
        growth_mib < 40,
        "server memory grew {growth_mib} MiB while 50 MiB flowed to stalled clients"
    );

    // The stalled WS client, reading at last, finds what fit in the socket, then close 4008.
    let mut events = 0;
    let close = loop {
        match ws_read(&mut slow_ws).await {
            WsRead::Json(v) if v["op"] == "event" => events += 1,
            WsRead::Json(_) => {}
            WsRead::Closed(close) => break close,
        }
    };
    assert!(
        events < PHASE_EVENTS,
        "the stalled client cannot have received everything"
    );
    let (code, reason) = close.expect("a close frame, not just a dropped connection");
    assert_eq!(code, 4008, "{reason}");

    // The stalled SSE client finds its stream ended (EOF) before everything was sent.
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let eof = tokio::time::timeout(WAIT, async {
        loop {
            match slow_sse.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(
        eof.is_ok(),
        "the server should have ended the stalled SSE stream"
    );
    assert!(
        received < PHASE_EVENTS * EVENT_BYTES,
        "stalled SSE client got {received} bytes"
    );

    // The normal subscriber got every event, in order, once.
    let got = tokio::time::timeout(Duration::from_secs(120), normal)
        .await
        .expect("normal subscriber stalled")
        .unwrap();
    let got: Vec<u64> = got.into_iter().filter(|s| *s >= first).collect();
    assert_eq!(got, (first..=last).collect::<Vec<_>>());
    // Both stalled subscriptions were counted.
    let metrics = get_text(h.url("/metrics")).await;
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("herald_slow_consumer_disconnects_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(dropped.parse::<f64>().unwrap() >= 2.0, "{metrics}");
}
