//! Backend hooks: Herald asks the app who connects, what they may join, what they may say,
//! and answers RPCs, instead of the app minting tokens.
//!
//! Every request is a signed POST (Standard Webhooks headers with `proxy.secret`) bounded by
//! `proxy.timeout`; anything but a clear answer (down, slow, non-2xx, bad JSON) refuses the
//! action with `proxy_unavailable`: it fails closed. A circuit breaker stops calling an app
//! that keeps failing, and a semaphore bounds the calls in flight, so a dead app costs
//! nothing but fast refusals.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::auth::Principal;
use crate::config::ProxyConfig;
use crate::event::Pattern;
use crate::webhook::sign::Secret;

/// Failures in a row that open the circuit, and how long it stays open.
const BREAK_AFTER: u32 = 5;
const BREAK_FOR: Duration = Duration::from_secs(5);
/// Calls in flight at once; past it, refused at once.
const MAX_IN_FLIGHT: usize = 256;

/// Why an action was not allowed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    /// The app said no, with its own code and message.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// The app could not be asked (down, slow, a bad answer): refused all the same.
    #[error("{0}")]
    Unavailable(String),
}

/// Which hook a request goes to.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Connect,
    Subscribe,
    Publish,
    Rpc,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::Rpc => "rpc",
        }
    }
}

/// The configured hooks and what calling them needs.
pub struct Proxy {
    config: ProxyConfig,
    secret: Option<Secret>,
    subscribe_channels: Vec<Pattern>,
    publish_channels: Vec<Pattern>,
    client: reqwest::Client,
    in_flight: tokio::sync::Semaphore,
    failures: AtomicU32,
    /// Milliseconds since `started` until which the circuit is open (0: closed).
    open_until: AtomicU64,
    started: Instant,
}

/// Why the `[proxy]` settings were refused at start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    #[error("proxy.secret: {0}")]
    Secret(#[from] crate::webhook::sign::SecretError),
    #[error("proxy.{0}: {1}")]
    Pattern(&'static str, crate::event::NameError),
    #[error("proxy: {0}")]
    Client(String),
}

impl Proxy {
    /// None when no hook URL is set.
    pub fn from_config(config: &ProxyConfig) -> Result<Option<Arc<Proxy>>, ProxyConfigError> {
        let any = [
            &config.connect_url,
            &config.subscribe_url,
            &config.publish_url,
            &config.rpc_url,
        ]
        .iter()
        .any(|u| !u.is_empty());
        if !any {
            return Ok(None);
        }
        let patterns = |key, list: &[String]| {
            list.iter()
                .map(|p| Pattern::parse(p).map_err(|e| ProxyConfigError::Pattern(key, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let secret = match config.secret.as_str() {
            "" => None,
            s => Some(Secret::parse(s)?),
        };
        // Operator-set URLs: no SSRF guard (loopback and private apps are the point), and
        // no proxy from the environment.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(config.timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| ProxyConfigError::Client(e.to_string()))?;
        Ok(Some(Arc::new(Proxy {
            subscribe_channels: patterns("subscribe_channels", &config.subscribe_channels)?,
            publish_channels: patterns("publish_channels", &config.publish_channels)?,
            config: config.clone(),
            secret,
            client,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            started: Instant::now(),
        })))
    }

    pub fn asks_connect(&self) -> bool {
        !self.config.connect_url.is_empty()
    }

    pub fn asks_rpc(&self) -> bool {
        !self.config.rpc_url.is_empty()
    }

    /// Whether a subscription to `channel` asks the app.
    pub fn asks_subscribe(&self, channel: &str) -> bool {
        !self.config.subscribe_url.is_empty()
            && self.subscribe_channels.iter().any(|p| p.matches(channel))
    }

    /// Whether a client publish on `channel` asks the app.
    pub fn asks_publish(&self, channel: &str) -> bool {
        !self.config.publish_url.is_empty()
            && self.publish_channels.iter().any(|p| p.matches(channel))
    }

    /// The headers the app sees of a connecting request (`proxy.forward_headers` only).
    pub fn forwarded(&self, headers: &axum::http::HeaderMap) -> Value {
        let mut out = serde_json::Map::new();
        for name in &self.config.forward_headers {
            if let Some(v) = headers.get(name.as_str()).and_then(|v| v.to_str().ok()) {
                out.insert(name.to_ascii_lowercase(), v.into());
            }
        }
        Value::Object(out)
    }

    /// Who connects: the identity the app vouches for, as the principal a token with the
    /// same claims would be.
    pub async fn connect(
        &self,
        transport: &str,
        headers: Value,
        remote: std::net::SocketAddr,
        channels: &[&str],
    ) -> Result<Principal, ProxyError> {
        let body = json!({
            "transport": transport,
            "headers": headers,
            "remote_addr": remote.to_string(),
            "channels": channels,
        });
        let result = self.call(Hook::Connect, &body).await?;
        identity(&result)
    }

    pub async fn subscribe(
        &self,
        user: Option<&str>,
        channel: &str,
        transport: &str,
        info: Option<&Value>,
    ) -> Result<(), ProxyError> {
        let body = json!({"user": user, "channel": channel, "transport": transport, "info": info});
        self.call(Hook::Subscribe, &body).await.map(|_| ())
    }

    /// Keeps the event (None) or replaces its data (Some).
    pub async fn publish(
        &self,
        user: Option<&str>,
        channel: &str,
        kind: Option<&str>,
        data: &serde_json::value::RawValue,
    ) -> Result<Option<Box<serde_json::value::RawValue>>, ProxyError> {
        let body = json!({"user": user, "channel": channel, "type": kind, "data": data});
        let result = self.call(Hook::Publish, &body).await?;
        match result.get("data") {
            None => Ok(None),
            Some(v) => serde_json::value::to_raw_value(v)
                .map(Some)
                .map_err(|e| ProxyError::Unavailable(format!("the publish hook's data: {e}"))),
        }
    }

    /// The app's answer to an RPC (`result.data`).
    pub async fn rpc(
        &self,
        user: Option<&str>,
        method: &str,
        data: &Value,
    ) -> Result<Value, ProxyError> {
        let body = json!({"user": user, "method": method, "data": data});
        let result = self.call(Hook::Rpc, &body).await?;
        Ok(result.get("data").cloned().unwrap_or(Value::Null))
    }

    fn url(&self, hook: Hook) -> &str {
        match hook {
            Hook::Connect => &self.config.connect_url,
            Hook::Subscribe => &self.config.subscribe_url,
            Hook::Publish => &self.config.publish_url,
            Hook::Rpc => &self.config.rpc_url,
        }
    }

    /// One signed call: the `result` object, the app's refusal, or unavailable.
    async fn call(&self, hook: Hook, body: &Value) -> Result<Value, ProxyError> {
        let name = hook.name();
        let now_ms = self.started.elapsed().as_millis() as u64;
        if self.open_until.load(Ordering::Acquire) > now_ms {
            metrics::counter!("herald_proxy_calls_total", "hook" => name, "outcome" => "circuit_open").increment(1);
            return Err(ProxyError::Unavailable(format!(
                "the {name} hook is failing; not asked for a few seconds (circuit open)"
            )));
        }
        let Ok(_permit) = self.in_flight.try_acquire() else {
            metrics::counter!("herald_proxy_calls_total", "hook" => name, "outcome" => "busy")
                .increment(1);
            return Err(ProxyError::Unavailable(format!(
                "too many {name} hook calls in flight"
            )));
        };
        let started = Instant::now();
        let outcome = self.send(hook, body).await;
        metrics::histogram!("herald_proxy_seconds", "hook" => name)
            .record(started.elapsed().as_secs_f64());
        let label = match &outcome {
            Ok(_) => "ok",
            Err(ProxyError::Refused { .. }) => "refused",
            Err(ProxyError::Unavailable(_)) => "failed",
        };
        metrics::counter!("herald_proxy_calls_total", "hook" => name, "outcome" => label)
            .increment(1);
        match &outcome {
            Err(ProxyError::Unavailable(why)) => {
                tracing::warn!(hook = name, error = %why, "backend hook failed; refusing");
                if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= BREAK_AFTER {
                    let until = self.started.elapsed() + BREAK_FOR;
                    self.open_until
                        .store(until.as_millis() as u64, Ordering::Release);
                    self.failures.store(0, Ordering::Release);
                }
            }
            _ => self.failures.store(0, Ordering::Release),
        }
        outcome
    }

    async fn send(&self, hook: Hook, body: &Value) -> Result<Value, ProxyError> {
        let name = hook.name();
        let bytes = serde_json::to_vec(body).map_err(|e| ProxyError::Unavailable(e.to_string()))?;
        let mut request = self
            .client
            .post(self.url(hook))
            .header("content-type", "application/json");
        if let Some(secret) = &self.secret {
            let mut id = [0u8; 12];
            getrandom::fill(&mut id).map_err(|e| ProxyError::Unavailable(e.to_string()))?;
            let id = format!("msg_{}", hex::encode(id));
            let ts = crate::event::now_ms() / 1000;
            request = request
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", secret.sign(&id, ts, &bytes));
        }
        let unavailable = |why: String| ProxyError::Unavailable(format!("the {name} hook: {why}"));
        let response = request.body(bytes).send().await.map_err(|e| {
            if e.is_timeout() {
                unavailable(format!(
                    "no answer within {} (proxy.timeout)",
                    humantime::format_duration(self.config.timeout)
                ))
            } else {
                unavailable(e.to_string())
            }
        })?;
        let status = response.status();
        let text = response
            .bytes()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !status.is_success() {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let reply: Value = serde_json::from_slice(&text)
            .map_err(|e| unavailable(format!("the answer is not JSON: {e}")))?;
        if let Some(error) = reply.get("error") {
            return Err(ProxyError::Refused {
                code: error["code"].as_str().unwrap_or("refused").to_string(),
                message: error["message"]
                    .as_str()
                    .unwrap_or("refused by the app")
                    .to_string(),
            });
        }
        match reply.get("result") {
            Some(result @ Value::Object(_)) => Ok(result.clone()),
            _ => Err(unavailable(
                "the answer has neither result (an object) nor error".into(),
            )),
        }
    }
}

/// The connect hook's `result` as the principal a token with those claims would be.
fn identity(result: &Value) -> Result<Principal, ProxyError> {
    let bad = |why: String| ProxyError::Unavailable(format!("the connect hook's result: {why}"));
    let patterns = |key: &str| -> Result<Vec<Pattern>, ProxyError> {
        match result.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    let text = v
                        .as_str()
                        .ok_or_else(|| bad(format!("{key} holds a non-string")))?;
                    Pattern::parse(text).map_err(|e| bad(format!("{key}: {e}")))
                })
                .collect(),
            Some(_) => Err(bad(format!("{key} must be a list of channel patterns"))),
        }
    };
    let sub = match result.get("user") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        None | Some(Value::Null) => None,
        Some(_) => return Err(bad("user must be a string".into())),
    };
    let info = match result.get("info") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(Arc::new(v.clone())),
        Some(_) => return Err(bad("info must be an object".into())),
    };
    // No expiry from the app: the connection lives until it ends (ten years, as a number a
    // deadline can hold).
    let exp = result
        .get("expire_at")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| crate::event::now_ms() / 1000 + 10 * 365 * 24 * 3600);
    Ok(Principal::Token {
        sub,
        exp,
        subscribe: patterns("channels")?,
        publish: patterns("pub_channels")?,
        presence: patterns("presence_channels")?,
        info,
        consumer: None,
    })
}
