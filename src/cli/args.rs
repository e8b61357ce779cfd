//! What the command line accepts: every subcommand and flag, with its env var and help.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald",
    version = concat!(env!("CARGO_PKG_VERSION"), env!("HERALD_VERSION_SUFFIX")),
    about = "A real-time event hub: publish once; deliver over SSE, WebSocket and webhooks from one durable, ordered log."
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
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
    /// Write a commented herald.toml with every setting at its default.
    Init(InitArgs),
    /// Print a shell completion script: `herald completions bash > /etc/bash_completion.d/herald`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `herald man | man -l -`.
    Man,
}

#[derive(Args)]
pub(super) struct InitArgs {
    /// Where to write it (`-` for standard output).
    #[arg(default_value = "herald.toml")]
    pub(super) path: PathBuf,
    /// Replace the file if it exists.
    #[arg(long)]
    pub(super) force: bool,
}

#[derive(Args)]
pub(super) struct TokenArgs {
    /// The token's subject (who it is for).
    #[arg(long)]
    pub(super) sub: Option<String>,
    /// Channel or pattern the holder may subscribe to (repeat for several).
    #[arg(long = "sub-channel")]
    pub(super) sub_channels: Vec<String>,
    /// Channel or pattern the holder may publish to (repeat for several).
    #[arg(long = "pub-channel")]
    pub(super) pub_channels: Vec<String>,
    /// Channel or pattern the holder may join as a presence member, as --sub (repeat).
    #[arg(long = "presence-channel")]
    pub(super) presence_channels: Vec<String>,
    /// What other presence members see about the holder: a JSON object.
    #[arg(long)]
    pub(super) info: Option<String>,
    /// Make it a webhook consumer's token: it manages this owner's endpoints only.
    #[arg(long)]
    pub(super) webhook_owner: Option<String>,
    /// Channel or pattern the consumer's endpoints may follow (repeat; needs --webhook-owner).
    #[arg(long = "webhook-channel", requires = "webhook_owner")]
    pub(super) webhook_channels: Vec<String>,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(super) ttl: Duration,
    /// Config file holding auth.jwt_secret [default: ./herald.toml when present; HERALD_AUTH_JWT_SECRET].
    #[arg(long, env = "HERALD_CONFIG")]
    pub(super) config: Option<PathBuf>,
    /// Sign with this private key (PEM) instead of the config's secret.
    #[arg(long)]
    pub(super) key: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(super) enum BenchCommand {
    /// Open N connections (SSE, WS or a mix) and hold them: connect rate and the server's
    /// memory per connection (with --server-pid).
    Idle(crate::bench::idle::IdleArgs),
    /// N subscribers on one channel, a publisher at a fixed rate: deliveries/s, publish ->
    /// receive latency percentiles, losses.
    Fanout(crate::bench::fanout::FanoutArgs),
    /// N subscribers each on its own channel, the rate spread across them.
    Channels(crate::bench::fanout::FanoutArgs),
    /// N subscribers that never read, one that does, a burst of large events: what the
    /// stuck ones cost, and whether memory comes back once they are cut.
    Flood(crate::bench::flood::FloodArgs),
    /// HTTP publish throughput, single events or batches, durable by the server's policy.
    Publish(crate::bench::publish::PublishArgs),
    /// Webhook deliveries/s to a local receiver, with N endpoints on one channel.
    Webhooks(crate::bench::webhooks::WebhooksArgs),
    /// N WebSocket members join one presence channel over a window: time until every
    /// member's view of the count agrees, server CPU and memory per member.
    Presence(crate::bench::presence::PresenceArgs),
}

#[derive(Subcommand)]
pub(super) enum WebhookCommand {
    /// Create an endpoint; prints it with its signing secret (shown only here).
    Add {
        /// Where to POST events (http or https).
        url: String,
        /// Channel or pattern to deliver (repeat for several).
        #[arg(long = "channel", required = true)]
        channels: Vec<String>,
        /// The consumer the endpoint belongs to (managed with that owner's token, counted
        /// against its endpoint cap).
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        settings: EndpointSettings,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// List endpoints (secrets are never listed).
    List {
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Show one endpoint, with how many deliveries it has pending.
    Get {
        /// The endpoint's id (`wh_...`).
        id: String,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Change an endpoint: only what is given changes.
    Update {
        /// The endpoint's id (`wh_...`).
        id: String,
        /// Where to POST events from now on.
        #[arg(long)]
        url: Option<String>,
        /// Replaces the channels (repeat for several).
        #[arg(long = "channel")]
        channels: Vec<String>,
        #[command(flatten)]
        settings: EndpointSettings,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Delete an endpoint with its queue and attempt log.
    Delete {
        /// The endpoint's id (`wh_...`).
        id: String,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Start delivering again (clears the reason it was disabled).
    Enable {
        /// The endpoint's id (`wh_...`).
        id: String,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Stop delivering; events keep queueing from where it stopped when enabled again.
    Disable {
        /// The endpoint's id (`wh_...`).
        id: String,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Send one signed test event now and show what came back.
    Test {
        /// The endpoint's id (`wh_...`).
        id: String,
        /// The test event's type [default: webhook.test].
        #[arg(long = "type")]
        kind: Option<String>,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Show an endpoint's delivery attempts, oldest first, a page at a time.
    Deliveries {
        /// The endpoint's id (`wh_...`).
        id: String,
        /// Only attempts with this status: delivered, retrying, failed, disabled.
        #[arg(long)]
        status: Option<String>,
        /// Attempts after this attempt id (the previous page says which to give).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Attempts per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Re-send every matching event after a seq.
    Replay {
        /// The endpoint's id (`wh_...`).
        id: String,
        /// Re-send events after this seq.
        #[arg(long)]
        since: u64,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Re-queue the events whose delivery failed for good since a time (one endpoint, or
    /// every endpoint with --all).
    Recover {
        /// The endpoint (omit with --all).
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every endpoint.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// RFC 3339 time, e.g. 2026-11-26T10:00:00Z.
        #[arg(long)]
        since: String,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
    /// Replace the signing secret; the old one keeps signing beside it for a while.
    Rotate {
        /// The endpoint's id (`wh_...`).
        id: String,
        #[command(flatten)]
        client: WebhookClientArgs,
    },
}

/// Settings shared by `webhook add` and `webhook update`.
#[derive(Args)]
pub(super) struct EndpointSettings {
    /// Only these event types or patterns, e.g. `order.*` (repeat for several); default: all.
    #[arg(long = "type")]
    pub(super) types: Vec<String>,
    /// One delivery in flight, strictly in seq order (`--ordered false` to undo).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub(super) ordered: Option<bool>,
    /// A note for people (shown in lists, the console and the portal).
    #[arg(long)]
    pub(super) description: Option<String>,
    /// At most this many attempts per second.
    #[arg(long)]
    pub(super) rate_limit: Option<u32>,
}

#[derive(Args)]
pub(super) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080]: `HOST:PORT` (`localhost:8080`,
    /// `0.0.0.0:8080`, `[::1]:8080`), `:PORT` (every interface) or `PORT` (loopback); port 0
    /// picks a free one.
    #[arg(long, env = "HERALD_LISTEN", value_parser = parse_listen)]
    pub(super) listen: Option<SocketAddr>,
    /// Data directory for the embedded log [default: ./herald-data].
    #[arg(long, env = "HERALD_DATA")]
    pub(super) data: Option<PathBuf>,
    /// Config file (TOML) [default: ./herald.toml when present].
    #[arg(long, env = "HERALD_CONFIG")]
    pub(super) config: Option<PathBuf>,
    /// Run as a cluster node sharing this Redis (redis://host:6379).
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub(super) redis: Option<String>,
}

/// How `herald webhook ...` talks to the server and prints its answer.
#[derive(Args)]
pub(super) struct WebhookClientArgs {
    #[command(flatten)]
    pub(super) client: ClientArgs,
    /// Print the server's JSON reply as is (for scripts) instead of a table.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub(super) struct ClientArgs {
    /// Herald's base URL.
    #[arg(long, env = "HERALD_URL", default_value = "http://127.0.0.1:8080")]
    pub(super) server: String,
    /// API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub(super) api_key: Option<String>,
    /// Give up on a request the server has not answered in this long (`tail` and `forward`:
    /// on connecting, not on the stream).
    #[arg(long, env = "HERALD_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) timeout: Duration,
}

/// `--listen`: `HOST:PORT` (names resolved, the first address taken), `:PORT` for every
/// interface, or a bare `PORT` on loopback (as the default is).
pub(super) fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    use std::net::{Ipv4Addr, ToSocketAddrs};
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    if let Some(port) = text.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = || {
        format!("{text:?} is not an address to listen on: give HOST:PORT (localhost:8080), :PORT or PORT")
    };
    if !text.contains(':') {
        return Err(bad());
    }
    text.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

#[derive(Args)]
pub(super) struct PublishArgs {
    /// Channel name, e.g. `orders` or `user:42`.
    pub(super) channel: String,
    /// Event data as JSON (`'{"total":3}'`, `42`, `'"text"'`); anything else is refused
    /// unless --string says to send it as a string.
    pub(super) data: String,
    /// Send DATA as a JSON string, as it is (no quoting needed).
    #[arg(long)]
    pub(super) string: bool,
    /// Event type, e.g. `order.created` (becomes the SSE `event:` name).
    #[arg(long = "type")]
    pub(super) kind: Option<String>,
    /// Idempotency key: publishing the same id again returns the original seq.
    #[arg(long)]
    pub(super) id: Option<String>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Args)]
pub(super) struct ForwardArgs {
    /// The channel (or pattern) the hook posts to; repeat for several.
    #[arg(long = "channel", required = true)]
    pub(super) channels: Vec<String>,
    /// Where to replay each request, e.g. http://localhost:3000/webhooks.
    #[arg(long)]
    pub(super) to: String,
    /// Replay captured requests after this seq first; default: new ones only.
    #[arg(long)]
    pub(super) since: Option<u64>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Args)]
pub(super) struct TailArgs {
    /// Channels or patterns (`user:*`) to follow.
    #[arg(required = true)]
    pub(super) channels: Vec<String>,
    /// Start after this seq (replays history first); default: live events only.
    #[arg(long)]
    pub(super) since: Option<u64>,
    /// Exit after printing this many events.
    #[arg(long)]
    pub(super) count: Option<u64>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn listen_takes_the_forms_people_type() {
        assert_eq!(
            parse_listen("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen(":9000").unwrap(),
            "0.0.0.0:9000".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen("localhost:8080").unwrap().ip().is_loopback());
        for bad in ["localhost", "http://x:1", "1.2.3.4:99999", ""] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod help {
    use clap::CommandFactory;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "herald", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
