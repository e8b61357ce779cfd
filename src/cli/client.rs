//! One-shot client commands against a running server: `publish`, `token`.

use anyhow::{bail, Context};

use crate::config::Config;

use super::args::{ClientArgs, PublishArgs, TokenArgs};

pub(super) fn client(
    args: &ClientArgs,
) -> anyhow::Result<(reqwest::Client, reqwest::header::HeaderMap)> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().context("API key")?,
        );
    }
    Ok((reqwest::Client::builder().build()?, headers))
}

pub(super) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
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
