//! Server-Sent Events over a real HTTP response, read as raw `text/event-stream` bytes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn frames_headers_and_live_delivery() {
    let h = Herald::start("");
    let mut sse = Sse::connect(&h, "channel=orders", None).await;
    assert_eq!(sse.headers["content-type"], "text/event-stream");
    assert_eq!(sse.headers["cache-control"], "no-cache");
    assert_eq!(sse.headers["x-accel-buffering"], "no");
    // A live-only subscription is registered before the response headers are sent.
    let (status, _) = publish(
        &h,
        json!({"channel": "orders", "type": "order.created", "data": {"n": 1}}),
    )
    .await;
    assert_eq!(status, 201);
    publish_one(&h, "other", json!(0)).await;
    publish_one(&h, "orders", json!(2)).await;

    let first = sse.next().await.unwrap();
    assert_eq!(first.id, Some(1));
    assert_eq!(first.name.as_deref(), Some("order.created"));
    let envelope: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(envelope["seq"], 1);
    assert_eq!(envelope["data"], json!({"n": 1}));
    let second = sse.next().await.unwrap();
    assert_eq!((second.id, second.name), (Some(3), None));

    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    assert!(raw.starts_with("retry: "), "{raw}");
    assert!(
        raw.contains("id: 1\nevent: order.created\ndata: {\"seq\":1,\"channel\":\"orders\""),
        "{raw}"
    );
    assert!(raw.contains("id: 3\ndata: {\"seq\":3,"), "{raw}");

    // The SSE data is byte-identical to the history envelope.
    let history = get_text(h.url("/v1/events?channel=orders")).await;
    assert!(history.contains(&first.data), "{history}");
}

#[tokio::test]
async fn resumes_from_last_event_id_header_or_query() {
    let h = Herald::start("");
    for i in 1..=5 {
        publish_one(&h, "c", json!(i)).await;
    }
    let mut by_header = Sse::connect(&h, "channel=c&last_event_id=1", Some(3)).await;
    assert_eq!(
        by_header.next().await.unwrap().id,
        Some(4),
        "header wins over the query"
    );
    assert_eq!(by_header.next().await.unwrap().id, Some(5));
    let mut by_query = Sse::connect(&h, "channel=c&last_event_id=2", None).await;
    for want in 3..=5 {
        assert_eq!(by_query.next().await.unwrap().id, Some(want));
    }
    // Then live, with no duplicate at the hand-over.
    publish_one(&h, "c", json!(6)).await;
    assert_eq!(by_query.next().await.unwrap().id, Some(6));
    assert_eq!(by_header.next().await.unwrap().id, Some(6));
}

#[tokio::test]
async fn several_channels_and_patterns_in_seq_order() {
    let h = Herald::start("");
    for (i, channel) in ["a", "user:1", "b", "user:2", "a", "zzz"]
        .iter()
        .enumerate()
    {
        publish_one(&h, channel, json!(i)).await;
    }
    let mut sse = Sse::connect(&h, "channel=a&channel=user:*", Some(0)).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sse.next().await.unwrap().id.unwrap());
    }
    assert_eq!(got, vec![1, 2, 4, 5]);
    publish_one(&h, "b", json!(0)).await;
    publish_one(&h, "user:9", json!(0)).await;
    assert_eq!(sse.next().await.unwrap().id, Some(8));
}

#[tokio::test]
async fn heartbeat_comments_keep_idle_streams_alive() {
    let h = Herald::start("[server]\nheartbeat = \"100ms\"\n");
    let mut sse = Sse::connect(&h, "channel=quiet", None).await;
    assert!(
        sse.next_within(Duration::from_millis(600)).await.is_err(),
        "no events expected"
    );
    let raw = String::from_utf8(sse.raw.clone()).unwrap();
    assert!(raw.matches(": heartbeat\n\n").count() >= 2, "{raw:?}");
}

#[tokio::test]
async fn reset_when_retention_dropped_part_of_the_gap() {
    let h = Herald::start("[log]\nmax_events = 3\ntrim_interval = \"50ms\"\n");
    for i in 1..=10 {
        publish_one(&h, "r", json!(i)).await;
    }
    // Wait for retention to run.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r: Value = get_json(h.url("/readyz")).await;
        if r["oldest"] == 8 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sse = Sse::connect(&h, "channel=r", Some(2)).await;
    let reset = sse.next().await.unwrap();
    assert_eq!(reset.name.as_deref(), Some("reset"));
    assert_eq!(
        serde_json::from_str::<Value>(&reset.data).unwrap(),
        json!({"oldest": 8})
    );
    assert_eq!(
        reset.id,
        Some(7),
        "reset moves EventSource's cursor past the gap"
    );
    for want in 8..=10 {
        assert_eq!(sse.next().await.unwrap().id, Some(want));
    }
}

#[tokio::test]
async fn bad_sse_requests_get_clear_errors() {
    let h = Herald::start("");
    for (query, header, code) in [
        ("channel=a", Some("abc"), "invalid_cursor"),
        ("channel=a", Some("-4"), "invalid_cursor"),
        ("channel=a&last_event_id=1.5", None, "invalid_cursor"),
        ("", None, "missing_channel"),
        ("channel=bad%20name", None, "invalid_channel"),
    ] {
        let mut req = http().get(h.url(&format!("/v1/sse?{query}")));
        if let Some(v) = header {
            req = req.header("Last-Event-ID", v);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        assert_error(status, &r.json().await.unwrap(), 400, code);
    }
}

#[tokio::test]
async fn typed_false_leaves_out_event_lines_for_onmessage_clients() {
    let h = Herald::start("");
    publish(
        &h,
        json!({"channel": "t", "type": "order.created", "data": 1}),
    )
    .await;
    publish_one(&h, "t", json!(2)).await;
    let mut sse = Sse::connect(&h, "channel=t&typed=false", Some(0)).await;
    let first = sse.next().await.unwrap();
    assert_eq!((first.id, first.name.as_deref()), (Some(1), None));
    // The type is still in the envelope.
    assert_eq!(
        serde_json::from_str::<Value>(&first.data).unwrap()["type"],
        "order.created"
    );
    assert_eq!(sse.next().await.unwrap().id, Some(2));
    assert!(!String::from_utf8_lossy(&sse.raw).contains("event:"));
    let r = http()
        .get(h.url("/v1/sse?channel=t&typed=maybe"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.json().await.unwrap(), 400, "invalid_query");
}

/// Reads from a raw socket until `needle` shows up (or the server closes).
async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("timed out on a raw SSE socket")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn raw_http_1_1_and_1_0_clients_get_well_framed_streams() {
    use tokio::io::AsyncWriteExt;
    let h = Herald::start("");
    publish_one(&h, "raw", json!("x")).await;
    // HTTP/1.1: chunked; each frame is one chunk with its exact length.
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/sse?channel=raw&last_event_id=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut s, "\"data\":\"x\"").await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let (size, rest) = body.split_once("\r\n").unwrap();
    let size = usize::from_str_radix(size, 16).unwrap();
    assert!(rest[..size].starts_with("retry: "), "{body}");
    assert_eq!(&rest[size..size + 2], "\r\n", "{body}");
    // HTTP/1.0: no chunking, the stream is delimited by the connection.
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/sse?channel=raw&last_event_id=0 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut s, "\"data\":\"x\"").await;
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("\r\n\r\nretry: "), "{text}");
    // Errors on this path are ordinary JSON replies with a length.
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /v1/sse?nochannel=1 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let text = read_until(&mut s, "}}").await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("content-length: "), "{text}");
    assert!(text.contains("\"code\":\"missing_channel\""), "{text}");
    // A keep-alive connection that asks for SSE after another request is served too.
    let client = client();
    assert_eq!(
        client.get(h.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let r = client
        .get(h.url("/v1/sse?channel=raw&last_event_id=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/event-stream");
}

/// Reads a raw SSE response until `count` events arrived, undoing HTTP/1.1 chunking
/// strictly (every chunk's size line, its exact length, its CRLF) when `chunked`.
async fn raw_events(
    s: &mut tokio::net::TcpStream,
    chunked: bool,
    count: usize,
) -> Vec<herald::cli::SseEvent> {
    use tokio::io::AsyncReadExt;
    let mut buf: Vec<u8> = Vec::new();
    let mut reader = herald::cli::SseReader::default();
    let mut events = Vec::new();
    let mut head_done = false;
    let mut chunk = vec![0u8; 64 * 1024];
    while events.len() < count {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the stream went quiet")
            .unwrap();
        assert!(n > 0, "the stream ended after {} events", events.len());
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            buf.drain(..end + 4);
            head_done = true;
        }
        if !chunked {
            events.extend(reader.push(&buf));
            buf.clear();
            continue;
        }
        while let Some(line) = buf.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&buf[..line]).expect("a chunk-size line");
            let size = usize::from_str_radix(size, 16).expect("a chunk size in hex");
            if buf.len() < line + 2 + size + 2 {
                break;
            }
            let body = line + 2;
            assert_eq!(
                &buf[body + size..body + size + 2],
                b"\r\n",
                "a chunk ends in CRLF"
            );
            events.extend(reader.push(&buf[body..body + size]));
            buf.drain(..body + size + 2);
        }
    }
    events
}

/// Events written to a caught-up stream straight from the fan-out and the stream's own
/// frames share one socket. Readers with a tiny receive window that stop reading while
/// 8 MB of events pile up (so most writes find the socket full or take only part of a
/// chunk) must still read every event whole, once and in order, chunked or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_socket_keeps_events_whole_and_in_order() {
    use tokio::io::AsyncWriteExt;
    let h = Herald::start("[server]\nsend_queue = 100000\n");
    let mut readers = Vec::new();
    for request in [
        &b"GET /v1/sse?channel=f HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..],
        &b"GET /v1/sse?channel=f&typed=false HTTP/1.0\r\n\r\n"[..],
    ] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(h.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        readers.push(s);
    }
    // Both streams are live before the first publish.
    let open = r#"herald_subscriptions_open{transport="sse"} 2"#;
    crate::webhooks::eventually("two SSE subscribers", WAIT, async || {
        let metrics = get_text(h.url("/metrics")).await;
        metrics.lines().any(|l| l == open).then_some(())
    })
    .await;
    const BATCHES: usize = 50;
    const PER_BATCH: usize = 10;
    const PAD: usize = 16_000;
    let pad = "p".repeat(PAD);
    for b in 0..BATCHES {
        // One event alone, then a run of them (one vectored write).
        let one = json!({"channel": "f", "type": "t", "data": {"n": b * PER_BATCH, "pad": pad}});
        assert_eq!(publish(&h, one).await.0, 201);
        let run: Vec<Value> = (1..PER_BATCH)
            .map(|i| json!({"channel": "f", "type": "t", "data": {"n": b * PER_BATCH + i, "pad": pad}}))
            .collect();
        assert_eq!(publish(&h, json!(run)).await.0, 201);
    }
    let want: Vec<u64> = (0..(BATCHES * PER_BATCH) as u64).collect();
    for (i, mut s) in readers.into_iter().enumerate() {
        let chunked = i == 0;
        let events = raw_events(&mut s, chunked, want.len()).await;
        let mut got = Vec::new();
        for e in events {
            assert_eq!(
                e.name.as_deref(),
                chunked.then_some("t"),
                "typed only when asked"
            );
            let envelope: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(envelope["seq"].as_u64(), e.id);
            assert_eq!(envelope["data"]["pad"].as_str().map(str::len), Some(PAD));
            got.push(envelope["data"]["n"].as_u64().unwrap());
        }
        assert_eq!(got, want, "every event once, in order (chunked: {chunked})");
    }
}

/// With `server.dispatch_delay`, events committed apart within the delay go out to a
/// subscriber together, one batch of the dispatch thread; without it, each commit is a batch
/// of its own. Either way every event arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_delay_sends_events_published_apart_together() {
    for (delay, batches) in [("1s", 1.0), ("0s", 3.0)] {
        let h = Herald::start(&format!(
            "[server]\ndispatch_threads = 1\ndispatch_delay = \"{delay}\"\n"
        ));
        let mut sse = Sse::connect(&h, "channel=linger", None).await;
        let mut received = Vec::new();
        // Each publish is acknowledged, so committed, before the next is sent. Without a
        // delay each event is also received before the next publish, so no two commits can
        // share a batch by the thread being late.
        for i in 0..3 {
            let (status, _) = publish(&h, json!({"channel": "linger", "data": i})).await;
            assert_eq!(status, 201);
            if delay == "0s" {
                received.push(sse.next().await.expect("event"));
            }
        }
        while received.len() < 3 {
            received.push(sse.next().await.expect("event"));
        }
        for (i, event) in received.iter().enumerate() {
            let data: Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(data["data"], i, "delay {delay}");
        }
        // The batch is timed once its last write is done, just after the event went out.
        let counted = async || {
            let n = metric(&h, "herald_dispatch_seconds_count").await?;
            (n >= batches).then_some(n)
        };
        let dispatched = crate::webhooks::eventually("the batch counted", WAIT, counted).await;
        assert_eq!(dispatched, batches, "delay {delay}");
    }
}
