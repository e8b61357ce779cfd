//! One HTTP delivery attempt: POST the envelope, signed, and classify what came back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::guard::{GuardedResolver, Policy};
use super::sign::{signature_header, Secret};

/// Response bodies kept in the attempt log are cut to this many bytes.
pub const MAX_RESPONSE_BODY: usize = 4096;
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// Longest `Retry-After` we honour; beyond it the regular schedule applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    pub retry_after: Option<Duration>,
    pub body: Option<String>,
}

impl Outcome {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }

    fn failed(error: String, started: Instant) -> Outcome {
        Outcome {
            status: None,
            error: Some(error),
            duration: started.elapsed(),
            retry_after: None,
            body: None,
        }
    }
}

/// A message ready to send to one endpoint.
pub struct Message<'a> {
    /// The endpoint's URL as `Deliverer::target` checked it (or why it is refused).
    pub url: &'a Result<reqwest::Url, String>,
    pub webhook_id: &'a str,
    pub body: Bytes,
    pub secrets: Vec<&'a Secret>,
    /// A Pusher app's webhook: Pusher's signature headers as well.
    pub pusher: Option<&'a super::store::PusherFormat>,
}

/// The HTTP client for all deliveries: guarded DNS, no redirects, a timeout per attempt.
pub struct Deliverer {
    client: reqwest::Client,
    policy: Arc<Policy>,
}

impl Deliverer {
    /// `max_in_flight`: the most connections worth keeping open to one host. Fewer, and
    /// endpoints that share a host (one receiver, many URLs) would close and reopen a
    /// connection for most deliveries (measured: a new TCP connection per ~5 deliveries
    /// with 10 endpoints on one host and 32 kept).
    pub fn new(policy: Policy, timeout: Duration, max_in_flight: usize) -> Deliverer {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            // Never a proxy from HTTP(S)_PROXY/ALL_PROXY: a proxy resolves the target
            // itself, past the guarded resolver, so any destination would be reachable.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(max_in_flight.max(1))
            .user_agent(concat!("herald-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client");
        Deliverer { client, policy }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Parses and checks an endpoint's URL once (the policy is fixed for the process): IP
    /// literals never reach the resolver, so they are refused here.
    pub fn target(&self, url: &str) -> Result<reqwest::Url, String> {
        self.policy.check_url(url).map_err(|e| e.to_string())
    }

    pub async fn send(&self, message: Message<'_>, timestamp: u64) -> Outcome {
        let started = Instant::now();
        let url = match message.url {
            Ok(url) => url.clone(),
            Err(e) => return Outcome::failed(e.clone(), started),
        };
        let signature = signature_header(
            &message.secrets,
            message.webhook_id,
            timestamp,
            &message.body,
        );
        // Names and the fixed value pre-validated: no parsing per request.
        let request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(WEBHOOK_ID, message.webhook_id)
            .header(WEBHOOK_TIMESTAMP, timestamp)
            .header(WEBHOOK_SIGNATURE, signature);
        let request = match message.pusher {
            Some(p) => super::format::pusher_headers(p, &message.body)
                .into_iter()
                .fold(request, |r, (k, v)| r.header(k, v)),
            None => request,
        };
        let request = request.body(message.body);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::failed(describe(&e), started),
        };
        let status = response.status().as_u16();
        let retry_after = match status {
            429 | 503 => response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER)),
            _ => None,
        };
        let body = read_prefix(response).await;
        Outcome {
            status: Some(status),
            error: None,
            duration: started.elapsed(),
            retry_after,
            body: Some(body),
        }
    }
}

/// Reads at most `MAX_RESPONSE_BODY` bytes of the body, then stops.
async fn read_prefix(response: reqwest::Response) -> String {
    if response.content_length() == Some(0) {
        return String::new();
    }
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        let room = MAX_RESPONSE_BODY - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_RESPONSE_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A one-line reason, including the guard's refusal when that is the cause.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
