//! One-shot client commands against a running server: `publish`, `token`; and what every
//! client command shares: the HTTP client (with its timeout) and errors that name the fix.

use anyhow::{anyhow, bail, Context};
use reqwest::StatusCode;
use serde_json::Value;

use crate::config::Config;

use super::args::{ClientArgs, PublishArgs, TokenArgs};

/// The HTTP client for one-shot requests: the whole exchange within `--timeout`.
pub(super) fn client(
    args: &ClientArgs,
) -> anyhow::Result<(reqwest::Client, reqwest::header::HeaderMap)> {
    build(args, reqwest::Client::builder().timeout(args.timeout))
}

/// The HTTP client for streams (`tail`, `forward`): only connecting is timed, as the stream
/// may rightly stay open for days.
pub(super) fn stream_client(
    args: &ClientArgs,
) -> anyhow::Result<(reqwest::Client, reqwest::header::HeaderMap)> {
    build(
        args,
        reqwest::Client::builder().connect_timeout(args.timeout),
    )
}

fn build(
    args: &ClientArgs,
    builder: reqwest::ClientBuilder,
) -> anyhow::Result<(reqwest::Client, reqwest::header::HeaderMap)> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}")
                .parse()
                .context("the API key holds characters a header cannot")?,
        );
    }
    Ok((builder.build()?, headers))
}

/// A failed exchange, said as what to do about it.
pub(super) fn unreachable(e: reqwest::Error, args: &ClientArgs, url: &str) -> anyhow::Error {
    if e.is_timeout() {
        anyhow!(
            "{url} did not answer within {} (--timeout)",
            humantime::format_duration(args.timeout)
        )
    } else if e.is_connect() {
        anyhow!(
            "cannot connect to {url}: is `herald serve` running there? Set --server or \
             HERALD_URL to where it listens"
        )
    } else {
        anyhow!("{url}: {e}")
    }
}

/// Sends a request and reads the whole reply (status and body) within the timeout.
pub(super) async fn exchange(
    args: &ClientArgs,
    request: reqwest::RequestBuilder,
    url: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let response = request
        .send()
        .await
        .map_err(|e| unreachable(e, args, url))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| unreachable(e, args, url))?;
    Ok((status, text))
}

/// A refusal from the server as an error: its message and code, and for a missing or wrong
/// credential, where a key goes.
pub(super) fn refused(status: StatusCode, text: &str) -> anyhow::Error {
    let reply: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let e = &reply["error"];
    let mut line = match (e["code"].as_str(), e["message"].as_str()) {
        (Some(code), Some(message)) => format!(
            "{message} ({status}, {code}{})",
            e["request_id"]
                .as_str()
                .map(|id| format!(", request {id}"))
                .unwrap_or_default()
        ),
        _ => format!("{status}: {text}"),
    };
    if status == StatusCode::UNAUTHORIZED {
        line.push_str("\nGive an API key with --api-key or HERALD_API_KEY.");
    } else if status == StatusCode::FORBIDDEN {
        line.push_str("\nThe API key (--api-key, HERALD_API_KEY) does not allow this.");
    }
    anyhow!(line)
}

pub(super) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let (http, headers) = client(&args.client)?;
    let data: Value = if args.string {
        Value::String(args.data)
    } else {
        serde_json::from_str(&args.data).map_err(|e| {
            anyhow!(
                "the event data is not JSON ({e}): {}\nQuote text as JSON ('\"text\"') or \
                 pass --string to send it as a string",
                crate::event::excerpt(&args.data)
            )
        })?
    };
    let mut body = serde_json::json!({"channel": args.channel, "data": data});
    if let Some(kind) = args.kind {
        body["type"] = kind.into();
    }
    if let Some(id) = &args.id {
        body["id"] = id.clone().into();
    }
    let url = format!("{}/v1/events", args.client.server.trim_end_matches('/'));
    let request = http.post(&url).headers(headers).json(&body);
    let (status, text) = exchange(&args.client, request, &url).await?;
    if !status.is_success() {
        return Err(refused(status, &text));
    }
    // The reply on stdout as it is, for scripts; a note for the person on stderr.
    println!("{text}");
    let seq = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["seq"].as_u64());
    if let (StatusCode::OK, Some(seq)) = (status, seq) {
        eprintln!(
            "herald: already stored as seq {seq}: id {:?} was published on this channel before, \
             so nothing new was stored",
            args.id.unwrap_or_default()
        );
    }
    Ok(())
}

pub(super) fn token(args: TokenArgs) -> anyhow::Result<()> {
    use crate::auth::{mint, mint_with_pem, now_secs, Claims, WebhooksClaim};
    for name in args
        .sub_channels
        .iter()
        .chain(&args.pub_channels)
        .chain(&args.presence_channels)
        .chain(&args.webhook_channels)
    {
        crate::event::Pattern::parse(name)?;
    }
    let claims = Claims {
        sub: args.sub,
        exp: now_secs() + args.ttl.as_secs(),
        nbf: None,
        sub_channels: args.sub_channels,
        pub_channels: args.pub_channels,
        presence_channels: args.presence_channels,
        info: match &args.info {
            None => None,
            Some(text) => Some(serde_json::from_str(text).context("--info must be a JSON object")?),
        },
        webhooks: args.webhook_owner.map(|owner| WebhooksClaim {
            owner,
            channels: args.webhook_channels,
        }),
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
