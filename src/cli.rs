//! The `herald` command line: `serve`, and small clients (`publish`, `tail`) for trying it out
//! and for scripts. `anyhow` lives here, at the binary's edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "A real-time event hub: publish once; deliver over SSE, WebSocket and webhooks from one durable, ordered log."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded storage in ./herald-data unless told otherwise).
    Serve(ServeArgs),
    /// Publish one event and print its seq.
    Publish(PublishArgs),
    /// Print events of channels as they arrive, one envelope JSON per line; reconnects and
    /// resumes on its own after a disconnect.
    Tail(TailArgs),
    /// Replay requests captured by `/v1/hooks/{channel}` to a local URL, as they arrive
    /// (resumes by itself; `--since` replays earlier ones too).
    Forward(ForwardArgs),
    /// Manage outgoing webhook endpoints.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Mint a subscriber token (JWT) from the server's config (HS256 `auth.jwt_secret`) or a
    /// private key (`--key`, RS256 or ES256).
    Token(TokenArgs),
    /// Load generators against a running server (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args)]
struct TokenArgs {
    /// The token's subject (who it is for).
    #[arg(long)]
    sub: Option<String>,
    /// Channel or pattern the holder may subscribe to (repeat for several).
    #[arg(long = "sub-channel")]
    sub_channels: Vec<String>,
    /// Channel or pattern the holder may publish to (repeat for several).
    #[arg(long = "pub-channel")]
    pub_channels: Vec<String>,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Config file holding auth.jwt_secret [default: ./herald.toml when present; HERALD_AUTH_JWT_SECRET].
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Sign with this private key (PEM) instead of the config's secret.
    #[arg(long)]
    key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Open N connections (SSE, WS or a mix) and hold them: connect rate and the server's
    /// memory per connection (with --server-pid).
    Idle(crate::bench::idle::IdleArgs),
    /// N subscribers on one channel, a publisher at a fixed rate: deliveries/s, publish ->
    /// receive latency percentiles, losses.
    Fanout(crate::bench::fanout::FanoutArgs),
    /// N subscribers each on its own channel, the rate spread across them.
    Channels(crate::bench::fanout::FanoutArgs),
    /// HTTP publish throughput, single events or batches, durable by the server's policy.
    Publish(crate::bench::publish::PublishArgs),
    /// Webhook deliveries/s to a local receiver, with N endpoints on one channel.
    Webhooks(crate::bench::webhooks::WebhooksArgs),
}

#[derive(Subcommand)]
enum WebhookCommand {
    /// Create an endpoint; prints it with its signing secret (shown only here).
    Add {
        /// Where to POST events (http or https).
        url: String,
        /// Channel or pattern to deliver (repeat for several).
        #[arg(long = "channel", required = true)]
        channels: Vec<String>,
        /// Only these event types (repeat for several); default: all.
        #[arg(long = "type")]
        types: Vec<String>,
        /// One delivery in flight, strictly in seq order.
        #[arg(long)]
        ordered: bool,
        #[arg(long)]
        description: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List endpoints (secrets are never listed).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an endpoint's delivery attempts, oldest first.
    Deliveries {
        id: String,
        /// Only attempts with this status: delivered, retrying, failed, disabled.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-send every matching event after a seq.
    Replay {
        id: String,
        #[arg(long)]
        since: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replace the signing secret; the old one keeps signing beside it for a while.
    Rotate {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]; port 0 picks a free one.
    #[arg(long, env = "HERALD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory for the embedded log [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA")]
    data: Option<PathBuf>,
    /// Config file (TOML) [default: ./herald.toml when present].
    #[arg(long, env = "HERALD_CONFIG")]
    config: Option<PathBuf>,
    /// Run as a cluster node sharing this Redis (redis://host:6379).
    #[arg(long, env = "HERALD_REDIS_URL")]
    redis: Option<String>,
}

#[derive(Args)]
struct ClientArgs {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[derive(Args)]
struct PublishArgs {
    /// Channel name, e.g. `orders` or `user:42`.
    channel: String,
    /// Event data: JSON (`'{"total":3}'`, `42`); anything that is not JSON is sent as a string.
    data: String,
    /// Event type, e.g. `order.created` (becomes the SSE `event:` name).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Idempotency key: publishing the same id again returns the original seq.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ForwardArgs {
    /// The channel (or pattern) the hook posts to; repeat for several.
    #[arg(long = "channel", required = true)]
    channels: Vec<String>,
    /// Where to replay each request, e.g. http://localhost:3000/webhooks.
    #[arg(long)]
    to: String,
    /// Replay captured requests after this seq first; default: new ones only.
    #[arg(long)]
    since: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct TailArgs {
    /// Channels or patterns (`user:*`) to follow.
    #[arg(required = true)]
    channels: Vec<String>,
    /// Start after this seq (replays history first); default: live events only.
    #[arg(long)]
    since: Option<u64>,
    /// Exit after printing this many events.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Publish(args) => publish(args).await,
            Command::Tail(args) => tail(args).await,
            Command::Forward(args) => forward(args).await,
            Command::Webhook(command) => webhook(command).await,
            Command::Token(args) => token(args),
            Command::Bench(command) => match command {
                BenchCommand::Idle(args) => crate::bench::idle::run(args).await,
                BenchCommand::Fanout(args) => crate::bench::fanout::run(args, false).await,
                BenchCommand::Channels(args) => crate::bench::fanout::run(args, true).await,
                BenchCommand::Publish(args) => crate::bench::publish::run(args).await,
                BenchCommand::Webhooks(args) => crate::bench::webhooks::run(args).await,
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(data) = args.data {
        config.server.data = data;
    }
    if let Some(redis) = args.redis {
        config.redis.url = redis;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    crate::server::serve(config, shutdown).await?;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn wait_for_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("signal received");
    shutdown.cancel();
}

fn client(args: &ClientArgs) -> anyhow::Result<(reqwest::Client, reqwest::header::HeaderMap)> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().context("API key")?,
        );
    }
    Ok((reqwest::Client::builder().build()?, headers))
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let (http, headers) = client(&args.client)?;
    let data: serde_json::Value =
        serde_json::from_str(&args.data).unwrap_or(serde_json::Value::String(args.data.clone()));
    let mut body = serde_json::json!({"channel": args.channel, "data": data});
    if let Some(kind) = args.kind {
        body["type"] = kind.into();
    }
    if let Some(id) = args.id {
        body["id"] = id.into();
    }
    let url = format!("{}/v1/events", args.client.server.trim_end_matches('/'));
    let response = http
        .post(&url)
        .headers(headers)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    println!("{text}");
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    use crate::auth::{mint, mint_with_pem, now_secs, Claims};
    for name in args.sub_channels.iter().chain(&args.pub_channels) {
        crate::event::Pattern::parse(name)?;
    }
    let claims = Claims {
        sub: args.sub,
        exp: now_secs() + args.ttl.as_secs(),
        nbf: None,
        sub_channels: args.sub_channels,
        pub_channels: args.pub_channels,
    };
    let token = match args.key {
        Some(path) => {
            let pem = std::fs::read(&path).with_context(|| path.display().to_string())?;
            mint_with_pem(&pem, &claims).context("signing with the private key")?
        }
        None => {
            let config = Config::load(args.config.as_deref())?;
            if config.auth.jwt_secret.is_empty() {
                bail!("no auth.jwt_secret in the config (or HERALD_AUTH_JWT_SECRET); or pass --key PRIVATE.pem");
            }
            mint(&config.auth.jwt_secret, &claims)?
        }
    };
    println!("{token}");
    Ok(())
}

async fn webhook(command: WebhookCommand) -> anyhow::Result<()> {
    use serde_json::json;
    let (client, method, path, body) = match command {
        WebhookCommand::Add {
            url,
            channels,
            types,
            ordered,
            description,
            client,
        } => {
            let mut body = json!({"url": url, "channels": channels, "ordered": ordered});
            if !types.is_empty() {
                body["types"] = types.into();
            }
            if let Some(d) = description {
                body["description"] = d.into();
            }
            (
                client,
                reqwest::Method::POST,
                "/v1/webhooks".to_string(),
                Some(body),
            )
        }
        WebhookCommand::List { client } => {
            (client, reqwest::Method::GET, "/v1/webhooks".into(), None)
        }
        WebhookCommand::Deliveries { id, status, client } => {
            let query = status.map(|s| format!("?status={s}")).unwrap_or_default();
            (
                client,
                reqwest::Method::GET,
                format!("/v1/webhooks/{id}/deliveries{query}"),
                None,
            )
        }
        WebhookCommand::Replay { id, since, client } => (
            client,
            reqwest::Method::POST,
            format!("/v1/webhooks/{id}/replay"),
            Some(json!({"since": since})),
        ),
        WebhookCommand::Rotate { id, client } => (
            client,
            reqwest::Method::POST,
            format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        ),
    };
    let (http, headers) = self::client(&client)?;
    let url = format!("{}{path}", client.server.trim_end_matches('/'));
    let mut request = http.request(method, &url).headers(headers);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| url.clone())?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    let pretty = serde_json::from_str::<serde_json::Value>(&text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or(text);
    println!("{pretty}");
    Ok(())
}

async fn tail(args: TailArgs) -> anyhow::Result<()> {
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
async fn follow(
    client_args: &ClientArgs,
    channels: &[String],
    since: Option<u64>,
    mut handle: impl AsyncFnMut(SseEvent) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let (http, headers) = client(client_args)?;
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
                eprintln!(
                    "herald: stream ended; resuming after {}",
                    cursor.map_or("now".into(), |c| c.to_string())
                );
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status.is_client_error() {
                    bail!("{status}: {text}");
                }
                eprintln!("herald: {status}: {text}; retrying");
            }
            Err(e) => eprintln!("herald: {e}; retrying in {backoff:?}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Replays each request captured by `/v1/hooks/{channel}` to a local URL: develop against
/// GitHub or Stripe webhooks from a laptop they cannot reach.
async fn forward(args: ForwardArgs) -> anyhow::Result<()> {
    let to = reqwest::Url::parse(&args.to).context("--to must be a URL")?;
    let local = reqwest::Client::builder()
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
        let request = match crate::http::hooks::restore(envelope.data.get()) {
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
fn frame_name(event: &SseEvent) -> String {
    match event.id {
        Some(id) => format!("seq {id}"),
        None => "a frame without an id".into(),
    }
}

/// One parsed SSE event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub name: Option<String>,
    pub data: String,
}

/// An incremental `text/event-stream` parser (the HTML5 rules that Herald's frames use:
/// `id`, `event`, `data`, comments, blank-line dispatch; lines end in CRLF, LF or a lone CR).
#[derive(Debug, Default)]
pub struct SseReader {
    buffer: Vec<u8>,
    current: SseEvent,
    has_data: bool,
    /// The last chunk ended in CR: an LF starting the next one belongs to that line end.
    after_cr: bool,
}

impl SseReader {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut chunk = chunk;
        if self.after_cr {
            self.after_cr = false;
            chunk = chunk.strip_prefix(b"\n").unwrap_or(chunk);
        }
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(at) = self.buffer[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + at;
            let line = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
            start = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.line(&line, &mut out);
        }
        self.buffer.drain(..start);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.current));
            } else {
                self.current = SseEvent::default();
            }
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.current.id = value.parse().ok(),
            "event" => self.current.name = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_reader_splits_frames_across_chunks() {
        let mut r = SseReader::default();
        assert!(r.push(b"retry: 2000\n\nid: 4\nevent: t\nda").is_empty());
        let got = r.push(b"ta: {\"a\":1}\n\n: heartbeat\n\ndata: x\n\n");
        assert_eq!(
            got,
            vec![
                SseEvent {
                    id: Some(4),
                    name: Some("t".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: None,
                    name: None,
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn sse_reader_takes_every_line_ending() {
        let mut r = SseReader::default();
        let got = r.push(b"id: 1\r\ndata: a\r\n\r\nid: 2\rdata: b\r");
        assert_eq!(got.len(), 1);
        let got2 = r.push(b"\ndata: c\n\n");
        assert_eq!(
            got2[0].data, "b\nc",
            "a CR then LF across chunks is one line end"
        );
        assert_eq!((got[0].id, got2[0].id), (Some(1), Some(2)));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
