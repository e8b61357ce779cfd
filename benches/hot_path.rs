//! Micro-benchmarks of the hot path: `cargo bench --bench hot_path`.
//! Envelope encoding (once per event), SSE and WS framing (once per event, shared), pattern
//! matching (per event per patterned subscription), and log append (group commit).

use std::sync::Arc;

use divan::Bencher;
use herald::config::{Durability, LogConfig};
use herald::event::{Event, NewEvent, Pattern};
use herald::log::{EmbeddedLog, Log};
use serde_json::value::RawValue;

fn main() {
    divan::main();
}

fn sample(data_bytes: usize) -> NewEvent {
    NewEvent::new(
        herald::event::Source::Publisher,
        "orders:eu-west".into(),
        Some("order.created".into()),
        RawValue::from_string(format!(
            "{{\"id\":7,\"pad\":\"{}\"}}",
            "x".repeat(data_bytes)
        ))
        .unwrap(),
        Some("order-7".into()),
    )
    .unwrap()
}

#[divan::bench(args = [64, 1024, 16384])]
fn envelope_encode(bencher: Bencher, data_bytes: usize) {
    let new = sample(data_bytes);
    bencher
        .counter(divan::counter::BytesCount::new(data_bytes))
        .bench(|| Event::encode(42, 1_764_072_000_123, divan::black_box(&new)));
}

#[divan::bench(args = [64, 1024])]
fn sse_frame(bencher: Bencher, data_bytes: usize) {
    let new = sample(data_bytes);
    // Each iteration builds a fresh event: the frame is cached per event after the first use.
    bencher
        .with_inputs(|| Event::encode(42, 0, &new))
        .bench_values(|e| e.sse_frame());
}

#[divan::bench(args = [64, 1024])]
fn ws_text(bencher: Bencher, data_bytes: usize) {
    let new = sample(data_bytes);
    bencher
        .with_inputs(|| Event::encode(42, 0, &new))
        .bench_values(|e| e.ws_text());
}

/// What every subscriber after the first pays: a refcount bump.
#[divan::bench]
fn shared_frame_clone(bencher: Bencher) {
    let e = Event::encode(42, 0, &sample(1024));
    let _ = e.ws_text();
    bencher.bench(|| divan::black_box(&e).ws_text());
}

#[divan::bench(args = ["orders", "user:*", "*:eu-*", "a*b*c*d"])]
fn pattern_match(bencher: Bencher, pattern: &str) {
    let p = Pattern::parse(pattern).unwrap();
    bencher.bench(|| p.matches(divan::black_box("user:12345:eu-west-1")));
}

/// Appends of 100-event batches with `durability = "os"` (fsync cost depends on the disk, not
/// on Herald: see BENCHMARKS.md for durable figures).
#[divan::bench(sample_count = 20)]
fn log_append_batch_100(bencher: Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let log = rt.block_on(async {
        EmbeddedLog::open(
            dir.path(),
            &LogConfig {
                durability: Durability::Os,
                ..LogConfig::default()
            },
        )
        .unwrap()
    });
    let log: Arc<dyn Log> = log;
    let batch: Vec<NewEvent> = (0..100)
        .map(|_| {
            let s = sample(64);
            NewEvent::new(
                herald::event::Source::Publisher,
                s.channel().into(),
                s.kind().map(Into::into),
                s.data().to_owned(),
                None,
            )
            .unwrap()
        })
        .collect();
    bencher
        .counter(divan::counter::ItemsCount::new(100usize))
        .bench(|| rt.block_on(log.append(batch.clone())).unwrap());
    log.close();
}
