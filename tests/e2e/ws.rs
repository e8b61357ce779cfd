//! WebSocket protocol (DESIGN §4) with a real client.

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

#[tokio::test]
async fn welcome_subscribe_since_publish_ack_ping_unsubscribe() {
    let h = Herald::start("");
    publish_one(&h, "orders", json!(1)).await;
    publish_one(&h, "orders", json!(2)).await;
    let mut ws = ws_connect(&h, "").await;
    assert_eq!(ws_json(&mut ws).await, json!({"op": "welcome", "head": 2}));

    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "orders", "since": 1, "ref": "s1"}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"op": "subscribed", "channel": "orders", "ref": "s1"})
    );
    let event = ws_json(&mut ws).await;
    assert_eq!(
        (
            event["op"].clone(),
            event["seq"].clone(),
            event["data"].clone()
        ),
        (json!("event"), json!(2), json!(2))
    );

    ws_send(
        &mut ws,
        json!({"op": "publish", "channel": "orders", "type": "t", "data": {"x": 1}, "ref": "c1"}),
    )
    .await;
    let mut seen = Vec::new();
    let ack = ws_until_op(&mut ws, "ack", &mut seen).await;
    assert_eq!(ack, json!({"op": "ack", "ref": "c1", "seq": 3}));
    let mut rest = seen;
    if rest.is_empty() {
        rest.push(ws_json(&mut ws).await);
    }
    assert_eq!(rest[0]["op"], "event");
    assert_eq!(rest[0]["seq"], 3);
    assert_eq!(rest[0]["type"], "t");

    // The WS event carries exactly the envelope's fields, byte for byte after `op`.
    let history = get_text(h.url("/v1/events?channel=orders&after=2")).await;
    let envelope = serde_json::to_string(&rest[0]).unwrap();
    let mut fields: Value = serde_json::from_str(&envelope).unwrap();
    fields.as_object_mut().unwrap().remove("op");
    let stored: Value = serde_json::from_str::<Value>(&history).unwrap()["events"][0].clone();
    assert_eq!(fields, stored);

    ws_send(&mut ws, json!({"op": "ping", "ref": 7})).await;
    assert_eq!(ws_json(&mut ws).await, json!({"op": "pong", "ref": 7}));

    ws_send(
        &mut ws,
        json!({"op": "unsubscribe", "channel": "orders", "ref": "u"}),
    )
    .await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"op": "unsubscribed", "channel": "orders", "ref": "u"})
    );
    publish_one(&h, "orders", json!(4)).await;
    ws_send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"op": "pong"}),
        "no event after unsubscribe"
    );
}

#[tokio::test]
async fn subscribe_by_query_string_and_pattern() {
    let h = Herald::start("");
    publish_one(&h, "user:1", json!("a")).await;
    publish_one(&h, "room", json!("b")).await;
    publish_one(&h, "user:2", json!("c")).await;
    let mut ws = ws_connect(&h, "?channel=user:*&since=0").await;
    assert_eq!(ws_json(&mut ws).await["op"], "welcome");
    assert_eq!(
        ws_json(&mut ws).await,
        json!({"op": "subscribed", "channel": "user:*"})
    );
    assert_eq!(ws_json(&mut ws).await["seq"], 1);
    assert_eq!(ws_json(&mut ws).await["seq"], 3);
    publish_one(&h, "user:3", json!("d")).await;
    assert_eq!(ws_json(&mut ws).await["seq"], 4);
}

#[tokio::test]
async fn bad_messages_get_errors_with_ref_and_the_connection_survives() {
    let h = Herald::start("[limits]\nmax_subscriptions = 2\n");
    let mut ws = ws_connect(&h, "").await;
    ws_json(&mut ws).await;
    let cases = vec![
        (json!({"op": "dance", "ref": "r1"}), "unknown_op"),
        (json!({"op": "subscribe", "ref": "r2"}), "missing_channel"),
        (
            json!({"op": "subscribe", "channel": "no spaces", "ref": "r3"}),
            "invalid_channel",
        ),
        (
            json!({"op": "subscribe", "channel": "a", "since": "x", "ref": "r4"}),
            "invalid_message",
        ),
        (
            json!({"op": "unsubscribe", "channel": "never", "ref": "r5"}),
            "not_subscribed",
        ),
        (
            json!({"op": "publish", "channel": "a", "ref": "r6"}),
            "invalid_event",
        ),
        (
            json!({"op": "publish", "channel": "a b", "data": 1, "ref": "r7"}),
            "invalid_channel",
        ),
        (
            json!({"op": "publish", "channel": "a", "data": "x".repeat(66_000), "ref": "r8"}),
            "event_too_large",
        ),
        (json!({"ref": "r9"}), "invalid_message"),
    ];
    for (message, code) in cases {
        let reference = message["ref"].clone();
        ws_send(&mut ws, message).await;
        let reply = ws_json(&mut ws).await;
        assert_eq!(reply["op"], "error", "{reply}");
        assert_eq!(reply["code"], code, "{reply}");
        assert_eq!(reply["ref"], reference, "{reply}");
        assert!(reply["message"].as_str().unwrap().len() > 10, "{reply}");
    }
    ws_send(&mut ws, json!({"op": "subscribe", "channel": "one"})).await;
    ws_send(&mut ws, json!({"op": "subscribe", "channel": "two"})).await;
    ws_send(
        &mut ws,
        json!({"op": "subscribe", "channel": "three", "ref": 3}),
    )
    .await;
    ws_json(&mut ws).await;
    ws_json(&mut ws).await;
    let reply = ws_json(&mut ws).await;
    assert_eq!(
        (reply["code"].clone(), reply["ref"].clone()),
        (json!("too_many_subscriptions"), json!(3))
    );

    ws.send(Message::Text("{oops".into())).await.unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], "invalid_json");
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    let reply = ws_json(&mut ws).await;
    assert_eq!(reply["code"], "unsupported_frame");
    ws_send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(ws_json(&mut ws).await["op"], "pong");
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let h = Herald::start("");
    let mut ws = ws_connect(&h, "").await;
    ws_json(&mut ws).await;
    let huge = format!(
        r#"{{"op":"publish","channel":"a","data":"{}"}}"#,
        "z".repeat(200_000)
    );
    ws.send(Message::Text(huge.into())).await.unwrap();
    match ws_read(&mut ws).await {
        WsRead::Closed(Some((code, reason))) => {
            assert_eq!(code, 1009);
            assert!(!reason.is_empty());
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_query_is_refused_before_upgrade() {
    let h = Herald::start("");
    for (query, code) in [
        ("?channel=a&since=x", "invalid_cursor"),
        ("?channel=a%20b", "invalid_channel"),
    ] {
        let r = tokio_tungstenite::connect_async(h.ws_url(&format!("/v1/ws{query}"))).await;
        match r {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400);
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], code);
            }
            other => panic!("expected HTTP 400, got {other:?}"),
        }
    }
    // A plain GET (no upgrade) gets a JSON error too.
    let r = http().get(h.url("/v1/ws")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert!(status == 400 || status == 426, "{status}");
    assert_eq!(body["error"]["code"], "websocket_required");
}

/// Counts the reads that brought bytes, so a test can see how many writes the server made.
struct CountingStream {
    inner: tokio::net::TcpStream,
    reads: std::sync::Arc<std::sync::Mutex<usize>>,
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            *self.reads.lock().unwrap() += 1;
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `websocket.write_delay`: events published one after another (each acknowledged before
/// the next is sent) reach the subscriber in one write, because the connection waits that
/// long for more before writing. Without the delay the first is written before the second
/// is even published. It also shows a delay turns off the fan-out's direct write (README):
/// that path would write each event as it is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_delay_sends_events_close_together_in_one_write() {
    // Three acknowledged publishes take milliseconds; the delay (the largest allowed) leaves
    // a wide margin.
    let h = Herald::start("[websocket]\nwrite_delay = \"1s\"\n");
    let reads = std::sync::Arc::new(std::sync::Mutex::new(0));
    let stream = CountingStream {
        inner: tokio::net::TcpStream::connect(h.addr()).await.unwrap(),
        reads: reads.clone(),
    };
    let (mut ws, _) = tokio_tungstenite::client_async(h.ws_url("/v1/ws"), stream)
        .await
        .unwrap();
    assert_eq!(text_json(&mut ws).await["op"], "welcome");
    ws.send(Message::Text(
        json!({"op": "subscribe", "channel": "d"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    assert_eq!(text_json(&mut ws).await["op"], "subscribed");
    let before = *reads.lock().unwrap();
    // Read while publishing, so each write is seen as it lands.
    let publish = async {
        for i in 1..=3 {
            publish_one(&h, "d", json!(i)).await;
        }
    };
    let read = async {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(text_json(&mut ws).await["data"].clone());
        }
        got
    };
    let ((), got) = tokio::join!(publish, read);
    assert_eq!(got, [json!(1), json!(2), json!(3)]);
    assert_eq!(
        *reads.lock().unwrap() - before,
        1,
        "one write for the three events"
    );
}

async fn text_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt;
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Events written to a caught-up subscriber straight from the fan-out and the session's own
/// replies share one socket. A subscriber with a tiny receive window that stops reading
/// while events and its own pings pile up (so most writes find the socket full or take only
/// part of a frame) must still read every frame whole: every event once, in order, and a
/// pong for every ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_socket_keeps_events_whole_and_in_order_around_replies() {
    let h = Herald::start("[server]\nsend_queue = 100000\n");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(h.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(h.ws_url("/v1/ws?channel=w"), stream)
        .await
        .unwrap();
    assert_eq!(text_json(&mut ws).await["op"], "welcome");
    assert_eq!(text_json(&mut ws).await["op"], "subscribed");
    // 8 MB: more than the kernel's socket buffers on both sides hold.
    const BATCHES: usize = 50;
    const PER_BATCH: usize = 10;
    const PAD: usize = 16_000;
    let pad = "p".repeat(PAD);
    for b in 0..BATCHES {
        // One event alone (a single frame), then a run of them (one vectored write).
        publish_one(&h, "w", json!({"n": b * PER_BATCH, "pad": pad})).await;
        let run: Vec<Value> = (1..PER_BATCH)
            .map(|i| json!({"channel": "w", "data": {"n": b * PER_BATCH + i, "pad": pad}}))
            .collect();
        assert_eq!(publish(&h, json!(run)).await.0, 201);
        let ping = json!({"op": "ping", "ref": b}).to_string();
        ws.send(Message::Text(ping.into())).await.unwrap();
    }
    let (mut events, mut pongs) = (Vec::new(), Vec::new());
    while events.len() < BATCHES * PER_BATCH || pongs.len() < BATCHES {
        let m = text_json(&mut ws).await;
        match m["op"].as_str() {
            Some("event") => {
                assert_eq!(m["data"]["pad"].as_str().map(str::len), Some(PAD));
                events.push(m["data"]["n"].as_u64().unwrap());
            }
            Some("pong") => pongs.push(m["ref"].as_u64().unwrap()),
            _ => panic!("unexpected message {m}"),
        }
    }
    let want: Vec<u64> = (0..(BATCHES * PER_BATCH) as u64).collect();
    assert_eq!(events, want, "every event once, in order");
    assert_eq!(pongs, (0..BATCHES as u64).collect::<Vec<_>>());
}

/// Sharded dispatch (`dispatch_threads = 4`) with many channels and full sockets: four
/// WebSocket connections, each subscribed to 12 of 24 channels (a subscription each, so a
/// connection's subscriptions must share one writer) with a tiny receive window, and two
/// SSE streams of 12 channels each, all stop reading while 11 MB of events pile up. Then
/// every frame reads whole and every channel's events arrive once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_dispatch_keeps_each_channel_in_order_over_full_sockets() {
    const CHANNELS: usize = 24;
    const BATCHES: u64 = 30;
    const PAD: usize = 16_000;
    // Without fsync the log commits groups back to back, so dispatch threads overlap.
    let h = Herald::start(
        "[server]\nsend_queue = 100000\ndispatch_threads = 4\n[log]\ndurability = \"os\"\n",
    );
    let mine = |c: usize| -> Vec<String> {
        (0..CHANNELS)
            .filter(|i| i % 2 == c % 2)
            .map(|i| format!("m{i}"))
            .collect()
    };
    let mut sockets = Vec::new();
    for c in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(h.addr()).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(h.ws_url("/v1/ws"), stream)
            .await
            .unwrap();
        assert_eq!(text_json(&mut ws).await["op"], "welcome");
        for channel in mine(c) {
            let sub = json!({"op": "subscribe", "channel": channel}).to_string();
            ws.send(Message::Text(sub.into())).await.unwrap();
            assert_eq!(text_json(&mut ws).await["op"], "subscribed");
        }
        sockets.push(ws);
    }
    let mut streams = Vec::new();
    for c in 0..2 {
        let query: Vec<String> = mine(c).iter().map(|m| format!("channel={m}")).collect();
        streams.push(Sse::connect(&h, &query.join("&"), None).await);
    }
    // All at once, so the log commits groups back to back and every dispatch thread has
    // work queued while the others write.
    let pad = "p".repeat(PAD);
    let publishers: Vec<_> = (0..BATCHES)
        .map(|n| {
            let batch: Vec<Value> = (0..CHANNELS)
                .map(|i| json!({"channel": format!("m{i}"), "data": {"n": n, "pad": pad}}))
                .collect();
            let url = h.url("/v1/events");
            tokio::spawn(async move {
                let r = http().post(url).json(&batch).send().await.unwrap();
                assert_eq!(r.status(), 201);
            })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    // Per channel: seqs rising (each channel's order), and every batch once.
    let check = |c: usize, got: &std::collections::BTreeMap<String, Vec<(u64, u64)>>| {
        for m in mine(c) {
            let events = got.get(&m).cloned().unwrap_or_default();
            assert!(
                events.windows(2).all(|w| w[0].0 < w[1].0),
                "connection {c}, channel {m} out of order: {events:?}"
            );
            let mut batches: Vec<u64> = events.iter().map(|e| e.1).collect();
            batches.sort_unstable();
            assert_eq!(
                batches,
                (0..BATCHES).collect::<Vec<_>>(),
                "connection {c}, {m}"
            );
        }
    };
    for (c, ws) in sockets.iter_mut().enumerate() {
        let mut got: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
        // One deadline for the whole read: heartbeat pings must not keep a reader waiting
        // for events that will never come.
        let deadline = tokio::time::Instant::now() + WAIT;
        for k in 0..BATCHES as usize * CHANNELS / 2 {
            let m = loop {
                use futures_util::StreamExt;
                match tokio::time::timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        break serde_json::from_str::<Value>(t.as_str()).unwrap()
                    }
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    other => panic!("connection {c}: {k} events, then {other:?}; got {got:?}"),
                }
            };
            assert_eq!(m["op"], "event", "{m}");
            assert_eq!(m["data"]["pad"].as_str().map(str::len), Some(PAD));
            let channel = m["channel"].as_str().unwrap().to_string();
            let seq = m["seq"].as_u64().unwrap();
            got.entry(channel)
                .or_default()
                .push((seq, m["data"]["n"].as_u64().unwrap()));
        }
        check(c, &got);
    }
    for (c, sse) in streams.iter_mut().enumerate() {
        let mut got: std::collections::BTreeMap<String, Vec<(u64, u64)>> = Default::default();
        for _ in 0..BATCHES as usize * CHANNELS / 2 {
            let e = sse.next().await.expect("the stream stays");
            let envelope: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(envelope["data"]["pad"].as_str().map(str::len), Some(PAD));
            let channel = envelope["channel"].as_str().unwrap().to_string();
            let seq = envelope["seq"].as_u64().unwrap();
            got.entry(channel)
                .or_default()
                .push((seq, envelope["data"]["n"].as_u64().unwrap()));
        }
        check(c, &got);
    }
}

/// Events published one after another while the hub writes to 300 subscribers of one channel:
/// a pass over them takes long enough for more groups to commit, and the pass gives those
/// to the subscribers it has not reached yet (the next pass skipping what a subscriber
/// already has). Every subscriber still gets each event once, whole, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_publishes_during_long_passes_reach_every_subscriber_once_in_order() {
    const SUBSCRIBERS: usize = 300;
    const EVENTS: u64 = 80;
    let h = Herald::start(
        "[server]\nsend_queue = 10000\n[log]\ndurability = \"os\"\n\
         [limits]\nmax_connections_per_ip = 1000\npublish_rate = 0\n",
    );
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut ws = ws_connect(&h, "?channel=one").await;
        ws_until_op(&mut ws, "subscribed", &mut Vec::new()).await;
        subscribers.push(ws);
    }
    // One after another, each acknowledged before the next: each is a group of its own,
    // committed while the hub is still writing the one before to 300 sockets.
    let pad = "p".repeat(512);
    let client = http();
    for n in 0..EVENTS {
        let body = json!({"channel": "one", "data": {"n": n, "pad": pad}});
        let r = client
            .post(h.url("/v1/events"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    for (i, ws) in subscribers.iter_mut().enumerate() {
        let mut seqs = Vec::new();
        let mut ns = Vec::new();
        for _ in 0..EVENTS {
            let m = ws_json(ws).await;
            assert_eq!(m["op"], "event", "subscriber {i}: {m}");
            assert_eq!(m["data"]["pad"].as_str().map(str::len), Some(512));
            seqs.push(m["seq"].as_u64().unwrap());
            ns.push(m["data"]["n"].as_u64().unwrap());
        }
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i} out of order or twice: {seqs:?}"
        );
        ns.sort_unstable();
        assert_eq!(ns, (0..EVENTS).collect::<Vec<_>>(), "subscriber {i}");
    }
}
