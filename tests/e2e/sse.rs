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
