//! Commands that follow channels over SSE and resume by themselves: `tail` prints each
//! envelope, `forward` replays captured webhook requests to a local URL.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;

use super::args::{ClientArgs, ForwardArgs, TailArgs};
use super::client::{refused, stream_client, unreachable};
use super::sse::{SseEvent, SseReader};

pub(super) async fn tail(args: TailArgs) -> anyhow::Result<()> {
    let mut printed = 0u64;
    follow(&args.client, &args.channels, args.since, async |event| {
        // One envelope per line, or nothing: a frame that is not one JSON value would break
        // every consumer of the NDJSON stream, so it is reported and skipped.
        if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(&event.data) {
            eprintln!(
                "herald: {}: not a JSON envelope ({e}); skipped",
                frame_name(&event)
            );
            return Ok(true);
        }
        println!("{}", event.data);
        printed += 1;
        Ok(args.count.is_none_or(|n| printed < n))
    })
    .await
}

/// Follows channels over SSE from `since` (live only without), reconnecting and resuming
/// after the last seq by itself, and hands each event to `handle` until it returns false.
pub(super) async fn follow(
    client_args: &ClientArgs,
    channels: &[String],
    since: Option<u64>,
    mut handle: impl AsyncFnMut(SseEvent) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let (http, headers) = stream_client(client_args)?;
    let mut url = reqwest::Url::parse(&format!(
        "{}/v1/sse",
        client_args.server.trim_end_matches('/')
    ))?;
    for channel in channels {
        url.query_pairs_mut().append_pair("channel", channel);
    }
    let mut cursor = since;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut request = http.get(url.clone()).headers(headers.clone());
        if let Some(c) = cursor {
            request = request.header("Last-Event-ID", c.to_string());
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                backoff = Duration::from_millis(100);
                let mut reader = SseReader::default();
                let mut body = response.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else { break };
                    for event in reader.push(&chunk) {
                        if let Some(id) = event.id {
                            cursor = Some(id);
                        }
                        if event.name.as_deref() == Some("reset") {
                            eprintln!("herald: events were trimmed by retention: {}", event.data);
                            continue;
                        }
                        if !handle(event).await? {
                            return Ok(());
                        }
                    }
                }
                // A live stream names its start (an id without data) before any event.
                cursor = cursor.max(reader.last_id());
                eprintln!(
                    "herald: stream ended; resuming after {}",
                    cursor.map_or("now".into(), |c| c.to_string())
                );
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status.is_client_error() {
                    return Err(refused(status, &text));
                }
                eprintln!("herald: {status}: {text}; retrying");
            }
            Err(e) => eprintln!(
                "herald: {:#}; retrying in {backoff:?}",
                unreachable(e, client_args, url.as_str())
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Replays each request captured by `/v1/hooks/{channel}` to a local URL: develop against
/// GitHub or Stripe webhooks from a laptop they cannot reach.
pub(super) async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let to = reqwest::Url::parse(&args.to).context("--to must be a URL")?;
    let local = reqwest::Client::builder()
        .timeout(args.client.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    follow(&args.client, &args.channels, args.since, async |event| {
        if event.name.as_deref() != Some("webhook") {
            return Ok(true);
        }
        // The data as raw text: a JSON body must go out as the exact bytes that came in.
        #[derive(serde::Deserialize)]
        struct Envelope<'a> {
            seq: u64,
            #[serde(borrow)]
            data: &'a serde_json::value::RawValue,
        }
        let envelope: Envelope = match serde_json::from_str(&event.data) {
            Ok(envelope) => envelope,
            Err(e) => {
                eprintln!(
                    "herald: {}: not a JSON envelope ({e}); skipped",
                    frame_name(&event)
                );
                return Ok(true);
            }
        };
        let seq = envelope.seq;
        let request = match crate::http::incoming::restore(envelope.data.get()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("herald: seq {seq}: {e}; skipped");
                return Ok(true);
            }
        };
        let mut url = to.clone();
        if url.query().is_none() && !request.query.is_empty() {
            url.set_query(Some(&request.query));
        }
        let method =
            reqwest::Method::from_bytes(request.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut req = local.request(method.clone(), url).body(request.body);
        for (k, v) in &request.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            Ok(r) => println!("seq {seq}: {method} {} -> {}", args.to, r.status().as_u16()),
            Err(e) => eprintln!("herald: seq {seq}: {method} {}: {e}", args.to),
        }
        Ok(true)
    })
    .await
}

/// How a frame is named in a warning: by its id when it has one.
pub(super) fn frame_name(event: &SseEvent) -> String {
    match event.id {
        Some(id) => format!("seq {id}"),
        None => "a frame without an id".into(),
    }
}
