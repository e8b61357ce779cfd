//! A bounded, loopback-only flood: for 20 s or more, connections open and drop
//! mid-handshake while oversized bodies and frames arrive. A normal subscriber must lose
//! nothing, and the server's memory must come back near where it started.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

const FLOOD: Duration = Duration::from_secs(20);

/// Half-open handshakes: connect, send part of a request (or nothing), drop.
async fn handshake_dropper(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) {
    let partials: [&[u8]; 4] = [
        b"",
        b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
        b"GET /v1/sse?channel=flood HTTP/1.1\r\nHo",
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{\"channel\":",
    ];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s.write_all(partials[i % partials.len()]).await;
            count.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Oversized bodies and WebSocket frames, each refused with its documented error.
async fn oversized(
    h_url: String,
    ws_url: String,
    stop: Arc<AtomicBool>,
    refused: Arc<[AtomicUsize; 2]>,
) {
    let big_body = format!(r#"{{"channel":"x","data":"{}"}}"#, "b".repeat(300_000));
    let big_frame = format!(
        r#"{{"op":"publish","channel":"x","data":"{}"}}"#,
        "f".repeat(200_000)
    );
    while !stop.load(Ordering::Relaxed) {
        if let Ok(r) = http()
            .post(format!("{h_url}/v1/events"))
            .header("content-type", "application/json")
            .body(big_body.clone())
            .send()
            .await
        {
            if r.status() == 413 {
                refused[0].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("{ws_url}/v1/ws")).await {
            let _ = ws.send(Message::Text(big_frame.clone().into())).await;
            loop {
                match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws)).await {
                    Ok(Some(Ok(Message::Close(Some(f))))) => {
                        if u16::from(f.code) == 1009 {
                            refused[1].fetch_add(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(Some(Ok(_))) => continue,
                    _ => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_broken_clients_hurts_no_one() {
    let h = Herald::start("[server]\nhandshake_timeout = \"1s\"\n[limits]\nmax_body_bytes = 262144\n[log]\ndurability = \"os\"\n");
    // Warm up, then take the baseline.
    for i in 0..50 {
        publish_one(&h, "warm", json!(i)).await;
    }
    let mut sse = Sse::connect(&h, "channel=flood", Some(0)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = h.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    // Bodies refused with 413, frames with 1009: counted apart, so neither can hide the other.
    let refused = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut attackers = Vec::new();
    for _ in 0..4 {
        attackers.push(tokio::spawn(handshake_dropper(
            h.addr,
            stop.clone(),
            dropped.clone(),
        )));
    }
    attackers.push(tokio::spawn(oversized(
        h.url(""),
        h.ws_url(""),
        stop.clone(),
        refused.clone(),
    )));

    // The normal publisher and subscriber carry on throughout.
    let mut published = Vec::new();
    let started = tokio::time::Instant::now();
    let mut peak = baseline;
    // The flood runs at least FLOOD and until it has done what the assertions below count
    // (a slow box takes longer rather than failing), capped at four times FLOOD.
    let enough = || {
        dropped.load(Ordering::Relaxed) >= 2000
            && refused[0].load(Ordering::Relaxed) >= 10
            && refused[1].load(Ordering::Relaxed) >= 10
    };
    while started.elapsed() < FLOOD || (!enough() && started.elapsed() < 4 * FLOOD) {
        published.push(publish_one(&h, "flood", json!({"at": published.len()})).await);
        peak = peak.max(h.rss_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.await.unwrap();
    }
    let mut received = Vec::new();
    while received.len() < published.len() {
        let event = sse
            .next()
            .await
            .expect("the normal subscriber's stream ended");
        let envelope: Value = serde_json::from_str(&event.data).unwrap();
        received.push(envelope["seq"].as_u64().unwrap());
    }
    assert_eq!(
        received, published,
        "the normal subscriber lost or reordered events"
    );
    let dropped = dropped.load(Ordering::Relaxed);
    assert!(
        dropped >= 2000,
        "only {dropped} half-open connections were made"
    );
    let (bodies, frames) = (
        refused[0].load(Ordering::Relaxed),
        refused[1].load(Ordering::Relaxed),
    );
    assert!(
        bodies >= 10 && frames >= 10,
        "oversized inputs were not refused as documented: {bodies} bodies got 413, {frames} \
         frames got 1009"
    );

    // Memory comes back near the baseline once the broken connections are gone.
    let settle = tokio::time::Instant::now() + WAIT;
    let mut after = h.rss_kib();
    while after > baseline + 16 * 1024 && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = h.rss_kib();
    }
    eprintln!(
        "flood: {dropped} half-open connections; RSS baseline {} KiB, peak {} KiB, after {} KiB",
        baseline, peak, after
    );
    assert!(
        after <= baseline + 16 * 1024,
        "RSS stayed {} KiB above the baseline",
        after - baseline
    );
    assert_eq!(
        http().get(h.url("/healthz")).send().await.unwrap().status(),
        200
    );
}
