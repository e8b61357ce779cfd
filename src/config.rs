//! Configuration: `herald.toml`, overridden by `HERALD_*` environment variables, overridden by
//! command-line flags. Every key has a default, so Herald starts with no file at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub webhooks: WebhooksConfig,
    pub redis: RedisConfig,
    pub presence: PresenceConfig,
    pub websocket: WebSocketConfig,
    /// Pusher Channels protocol 7 apps (`[[pusher.apps]]`).
    pub pusher: PusherConfig,
    /// Incoming webhooks: who may post to `/v1/hooks/{channel}` without an API key.
    pub hooks: Vec<HookConfig>,
    /// Backend hooks: the app decides who connects and what they may do.
    pub proxy: ProxyConfig,
}

/// `[proxy]`: URLs of the app that Herald asks (each optional), signed with `secret`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Asked when an SSE, WebSocket or HTTP publish request carries no Herald credential.
    pub connect_url: String,
    /// Asked when a connection subscribes to a channel in `subscribe_channels`.
    pub subscribe_url: String,
    pub subscribe_channels: Vec<String>,
    /// Asked for each client publish (not API keys) on a channel in `publish_channels`.
    pub publish_url: String,
    pub publish_channels: Vec<String>,
    /// Answers WebSocket `{"op":"rpc"}` calls.
    pub rpc_url: String,
    /// Past it, the action is refused with `proxy_unavailable`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// `whsec_...`: every request is signed with it (Standard Webhooks headers).
    pub secret: String,
    /// Request headers the connect hook sees.
    pub forward_headers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_url: String::new(),
            subscribe_url: String::new(),
            subscribe_channels: Vec::new(),
            publish_url: String::new(),
            publish_channels: Vec::new(),
            rpc_url: String::new(),
            timeout: Duration::from_secs(1),
            secret: String::new(),
            forward_headers: vec!["cookie".into(), "authorization".into()],
        }
    }
}

/// One `[[hooks]]` rule: requests to matching channels are accepted when they carry a valid
/// signature of the named scheme (or from anyone, with `verify = "none"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Channel patterns the rule covers (`github/*`).
    pub channels: Vec<String>,
    pub verify: HookVerify,
    /// The sender's signing secret (github, stripe: as the sender shows it; standard:
    /// `whsec_...`). Unused with `none`.
    #[serde(default)]
    pub secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookVerify {
    /// No signature: anyone who knows the URL may post.
    None,
    /// `X-Hub-Signature-256: sha256=<hex HMAC of the body>`.
    Github,
    /// `Stripe-Signature: t=<unix>,v1=<hex HMAC of "t.body">`.
    Stripe,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// SSE comment / WebSocket ping interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// SSE `retry:` hint sent to EventSource clients.
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
    /// Events buffered per subscription before its connection counts as slow.
    pub send_queue: usize,
    /// Threads that fan events out to subscribers (each connection is served by one of
    /// them); 0: half the cores, at least one.
    pub dispatch_threads: usize,
    /// How long a dispatch thread waits, from a group's commit, for more groups to send
    /// with it: fewer writes per delivery (events published one at a time otherwise cost a
    /// send each) for up to this much more latency. 0: send at once.
    #[serde(with = "humantime_serde")]
    pub dispatch_delay: Duration,
    /// Serve `/v1/ws/echo` for the Autobahn conformance suite.
    pub ws_echo: bool,
    /// Browser origins allowed to call the API and open WebSockets (`*`: any). Empty: the
    /// server's own origin, and while open (no keys) also loopback origins.
    pub allowed_origins: Vec<String>,
    /// While open (no keys), `Host` names accepted besides loopback ones (localhost,
    /// 127.0.0.0/8, [::1]); anything else is refused, which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
    /// A client gets this long to send its request headers (and the WebSocket handshake).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A WebSocket that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long shutdown waits for connections to finish before exiting anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// PEM certificate chain and private key: with both, the listener speaks TLS only, with
    /// HTTP/2 (ALPN `h2`) beside HTTP/1.1. Reloaded on SIGHUP and when the files change.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `text` for people, `json` (one object per line) for log shippers.
    pub log_format: LogFormat,
    /// Origins that may frame the consumer portal (`/portal`), e.g. your app's
    /// `https://app.example.com`; `'self'` for this server. Empty: no framing.
    pub portal_frame_ancestors: Vec<String>,
    /// HTTP/2 (TLS only): requests one connection may have open at once. Every open event
    /// stream also counts against `limits.max_connections_per_ip`, as a connection would.
    pub max_streams_per_connection: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            data: PathBuf::from("./herald-data"),
            heartbeat: Duration::from_secs(15),
            sse_retry: Duration::from_secs(2),
            send_queue: 1024,
            dispatch_threads: 0,
            dispatch_delay: Duration::ZERO,
            ws_echo: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            tls_cert: None,
            tls_key: None,
            log_format: LogFormat::Text,
            portal_frame_ancestors: Vec::new(),
            max_streams_per_connection: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge after fsync.
    Fsync,
    /// Acknowledge once written to the OS (survives a process crash, not a power cut).
    Os,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub durability: Durability,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    pub max_events: u64,
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// How often retention runs.
    #[serde(with = "humantime_serde")]
    pub trim_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            durability: Durability::Fsync,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_events: 10_000_000,
            dedup_window: Duration::from_secs(24 * 3600),
            trim_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest event `data`, in bytes.
    pub max_event_bytes: usize,
    /// Most events in one batch publish.
    pub max_batch: usize,
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Most subscriptions one connection may hold (WebSocket subscriptions, or channels in
    /// one SSE or WebSocket URL).
    pub max_subscriptions: usize,
    /// Most of those that may be patterns: each is tested against every published event.
    pub max_patterns: usize,
    /// How long a client may take to send a request body; a stalled upload is cut off.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// IPv6 clients are counted per network of this prefix length for the per-IP limits (a
    /// single host usually holds a whole /64).
    pub ipv6_prefix: u8,
    /// Largest request head (request line and headers).
    pub max_header_bytes: usize,
    /// Open connections, in total and per client IP.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Events per second per credential (API key, token subject, or client IP when open);
    /// 0 = unlimited. `publish_burst` is the bucket size.
    pub publish_rate: u32,
    pub publish_burst: u32,
    /// Events per second per WebSocket connection.
    pub ws_publish_rate: u32,
    pub ws_publish_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_event_bytes: 65_536,
            max_batch: 1000,
            max_body_bytes: 8 * 1024 * 1024,
            max_subscriptions: 100,
            max_patterns: 10,
            body_timeout: Duration::from_secs(10),
            ipv6_prefix: 64,
            max_header_bytes: 16 * 1024,
            max_connections: 100_000,
            max_connections_per_ip: 10_000,
            publish_rate: 50_000,
            publish_burst: 100_000,
            ws_publish_rate: 1_000,
            ws_publish_burst: 2_000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub api_keys: Vec<String>,
    pub jwt_secret: String,
    pub jwt_public_key: String,
    pub public_channels: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry_schedule: Vec<humantime_serde::Serde<Duration>>,
    pub allow_private: bool,
    pub allow_hosts: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// How long a rotated-out secret keeps signing beside the new one.
    #[serde(with = "humantime_serde")]
    pub rotation_overlap: Duration,
    /// Deliveries in flight, over all endpoints.
    pub max_in_flight: usize,
    /// Deliveries in flight per endpoint (ordered endpoints always have one).
    pub max_in_flight_per_endpoint: usize,
    /// Threads delivering webhooks (0: half the cores).
    pub threads: usize,
    /// How far below the real-time path those threads run (a nice increment, 0 to 19; 0:
    /// same priority).
    pub nice: u8,
    /// Endpoints one owner (a consumer token's `webhooks.owner`) may have; each one
    /// multiplies the delivery work and outbound traffic of every matching event.
    pub max_endpoints_per_owner: usize,
    /// Endpoints one owner may create per minute (per node).
    pub owner_creations_per_minute: u32,
    /// The DNS lookup when an endpoint is created or its URL changed (an early, clear error
    /// for a name that points inward); past it the check is left to delivery time.
    #[serde(with = "humantime_serde")]
    pub dns_timeout: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let h = 3600;
        WebhooksConfig {
            timeout: Duration::from_secs(15),
            retry_schedule: [5, 300, 1800, 2 * h, 5 * h, 10 * h, 10 * h]
                .into_iter()
                .map(|s| Duration::from_secs(s).into())
                .collect(),
            allow_private: false,
            allow_hosts: Vec::new(),
            disable_after: Duration::from_secs(5 * 24 * h),
            rotation_overlap: Duration::from_secs(24 * h),
            max_in_flight: 256,
            max_in_flight_per_endpoint: 16,
            threads: 0,
            nice: 10,
            max_endpoints_per_owner: 100,
            owner_creations_per_minute: 10,
            dns_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Empty: single node on the embedded store. Set: a cluster node sharing this Redis.
    pub url: String,
    /// Prefix of every key Herald writes, so several clusters can share one Redis.
    pub prefix: String,
    /// How long a node owns a claimed webhook delivery before another node may take it over
    /// (it must outlast `webhooks.timeout`).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// PEM file of the CA that signed Redis's certificate, for `rediss://` URLs with a private
    /// CA (empty: the system's trust store, which also honours `SSL_CERT_FILE`).
    pub tls_ca: Option<std::path::PathBuf>,
    /// Redis Sentinels (`host:port`) that say which server is the primary; set, the node is
    /// a cluster node that follows failovers by itself (`url` then only carries the data
    /// nodes' password and database, and may be empty).
    pub sentinels: Vec<String>,
    /// The primary's name in the Sentinels' configuration.
    pub master_name: String,
    /// The Sentinels' own password, when they require AUTH.
    pub sentinel_password: String,
    /// Replicas that must have an append group before it is acknowledged (Redis `WAIT`); 0:
    /// acknowledged once the primary has it.
    pub min_replicas: u32,
    /// How long an append group waits for those replicas; past it the publish is answered
    /// 503 `outcome_unknown` (retry with the same id: never doubled).
    #[serde(with = "humantime_serde")]
    pub replica_timeout: Duration,
}

impl RedisConfig {
    /// Cluster mode: a Redis URL or Sentinels are set.
    pub fn is_cluster(&self) -> bool {
        !self.url.is_empty() || !self.sentinels.is_empty()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            prefix: "herald".into(),
            lease: Duration::from_secs(60),
            tls_ca: None,
            sentinels: Vec::new(),
            master_name: "herald".into(),
            sentinel_password: String::new(),
            min_replicas: 0,
            replica_timeout: Duration::from_secs(2),
        }
    }
}

/// Apps that clients of the Pusher Channels protocol (pusher-js, Laravel Echo, the server
/// SDKs) reach at `/app/{key}` and `/apps/{id}/...`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PusherConfig {
    pub apps: Vec<PusherApp>,
    /// Seconds of silence after which a Pusher client should ping (told on connect).
    pub activity_timeout: u64,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            apps: Vec::new(),
            activity_timeout: 120,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PusherApp {
    /// `[A-Za-z0-9_-]{1,64}`; its channels are `pusher/{id}/...` in Herald.
    pub id: String,
    pub key: String,
    pub secret: String,
    /// Clients may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Webhook URLs that get Pusher-format webhooks (signed with this app's secret).
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Which of `channel_occupied`, `channel_vacated`, `member_added`, `member_removed`,
    /// `client_event` they get (default: all).
    #[serde(default)]
    pub webhook_events: Option<Vec<String>>,
    /// Most bytes of an event's data (Pusher's own limit is 10 KB).
    #[serde(default = "pusher_max_event_bytes")]
    pub max_event_bytes: usize,
}

fn pusher_max_event_bytes() -> usize {
    10 * 1024
}

/// Presence: who is subscribed to a channel as a member, and how changes are told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// Joins and leaves of one channel within this window go out as one notification (a
    /// member who joins and leaves inside it is never announced).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Above this many members a channel's notifications and subscribe replies carry only
    /// the count; the list is paged from `GET /v1/presence`.
    pub list_limit: usize,
    /// Most bytes of a member's `info` (JSON).
    pub max_info_bytes: usize,
    /// Cluster: how often a node tells Redis it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Cluster: a node silent this long is dead; its members leave everywhere.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            window: Duration::from_millis(100),
            list_limit: 100,
            max_info_bytes: 1024,
            heartbeat: Duration::from_secs(5),
            node_timeout: Duration::from_secs(20),
        }
    }
}

/// WebSocket compression (permessage-deflate, RFC 7692) and write coalescing, for both
/// `/v1/ws` and `/app/{key}`.
///
/// Off by default: an uncompressed event is encoded once and shared by every subscriber,
/// while deflate costs CPU per connection and message. Worth it when clients pay for
/// bandwidth (mobile) and events are large, repetitive JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Accept a client's permessage-deflate offer.
    pub compression: bool,
    /// Keep each connection's deflate window between messages: better ratios on similar
    /// messages, but ~300 KiB of state per connection for its whole life. Without it (the
    /// default) a connection borrows deflate state from a shared pool for one message at a
    /// time, so an idle connection holds none.
    pub context_takeover: bool,
    /// zlib level, 0 (store) to 9 (smallest, slowest).
    pub compression_level: u32,
    /// Messages shorter than this many bytes go out uncompressed (deflate rarely shrinks them).
    pub compression_threshold: usize,
    /// How long a connection with an event to send waits for more before writing (0: it
    /// writes at once). Every write is a syscall and a TCP segment, and at a high fan-out
    /// those are most of the server's CPU; waiting a few milliseconds lets events that
    /// arrive close together leave in one write. It adds up to this much latency to every
    /// event, so it is off unless asked for. At most 1 s.
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            compression: false,
            context_takeover: false,
            compression_level: 1,
            compression_threshold: 128,
            write_delay: Duration::ZERO,
        }
    }
}

/// The commented reference config: every key at its default. `herald init` writes it, and
/// the docs point at it; a test holds it to [`Config::default`], so it cannot drift.
pub const REFERENCE: &str = include_str!("../docs/herald.toml");

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

const SECTIONS: [&str; 10] = [
    "proxy",
    "server",
    "log",
    "limits",
    "auth",
    "webhooks",
    "redis",
    "presence",
    "pusher",
    "websocket",
];

/// Maps `HERALD_<SECTION>_<KEY>` to `section.key`; the short forms `HERALD_LISTEN`,
/// `HERALD_DATA` and `HERALD_API_KEY` are handled in [`Config::load`].
fn env_key(key: &str) -> Option<String> {
    let lower = key.to_ascii_lowercase();
    SECTIONS.iter().find_map(|section| {
        lower
            .strip_prefix(section)
            .and_then(|rest| rest.strip_prefix('_'))
            .map(|rest| format!("{section}.{rest}"))
    })
}

impl Config {
    /// Loads defaults, then `file` (or `./herald.toml` when present), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("herald.toml")),
        }
        let sectioned = Env::prefixed("HERALD_")
            .filter_map(|k| env_key(k.as_str()).map(Into::into))
            .split(".");
        figment = figment.merge(sectioned);
        if let Ok(v) = std::env::var("HERALD_LISTEN") {
            figment = figment.merge(("server.listen", v));
        }
        if let Ok(v) = std::env::var("HERALD_DATA") {
            figment = figment.merge(("server.data", v));
        }
        if let Ok(v) = std::env::var("HERALD_REDIS_SENTINELS") {
            let list: Vec<String> = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            figment = figment.merge(("redis.sentinels", list));
        }
        if let Ok(v) = std::env::var("HERALD_API_KEY") {
            let keys: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
            figment = figment.merge(("auth.api_keys", keys));
        }
        figment.extract().map_err(|e| ConfigError(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {

    /// Every key's dotted path in a JSON view of the config (null values left out: those
    /// are optional keys, commented in the reference).
    fn keys(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    serde_json::Value::Object(_) => keys(&path, v, out),
                    serde_json::Value::Null => {}
                    _ => {
                        out.insert(path);
                    }
                }
            }
        }
    }

    #[test]
    fn the_reference_config_is_every_default() {
        // Read alone (no defaults under it), it is exactly the defaults...
        let alone: Config = toml::from_str(REFERENCE).expect("the reference parses");
        let json = |c: &Config| serde_json::to_value(c).unwrap();
        assert_eq!(json(&alone), json(&Config::default()));
        // ...and it names every key, not only the ones that differ from nothing.
        let table: serde_json::Value = toml::from_str(REFERENCE).unwrap();
        let (mut want, mut have) = (Default::default(), Default::default());
        keys("", &json(&Config::default()), &mut want);
        keys("", &table, &mut have);
        // Lists of tables are shown as commented examples.
        want.retain(|k| k != "hooks" && k != "pusher.apps");
        assert_eq!(want, have, "keys in the defaults vs in docs/herald.toml");
        for optional in [
            "tls_cert",
            "tls_key",
            "tls_ca",
            "[[pusher.apps]]",
            "[[hooks]]",
        ] {
            assert!(REFERENCE.contains(&format!("# {optional}")), "{optional}");
        }
    }
    use super::*;

    #[test]
    fn env_keys_map_to_sections() {
        assert_eq!(
            env_key("SERVER_SEND_QUEUE").as_deref(),
            Some("server.send_queue")
        );
        assert_eq!(env_key("LOG_DURABILITY").as_deref(), Some("log.durability"));
        assert_eq!(env_key("URL"), None);
    }

    #[test]
    fn toml_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(
            &path,
            "[server]\nheartbeat = \"250ms\"\n[log]\ndurability = \"os\"\nmax_events = 5\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.server.heartbeat, Duration::from_millis(250));
        assert_eq!(c.log.durability, Durability::Os);
        assert_eq!(c.log.max_events, 5);
        assert_eq!(c.limits.max_event_bytes, 65_536);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.toml");
        std::fs::write(&path, "[server]\nlisten_on = \"x\"\n").unwrap();
        let err = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
    }
}
