//! One HTTP delivery attempt: POST the envelope, signed, and classify what came back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::guard::{GuardedResolver, Policy};
use super::sign::{signature_header, Secret};

/// Response bodies kept in the attempt log are cut to this many bytes.
pub const MAX_RESPONSE_BODY: usize = 4096;
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const AGENT: HeaderValue =
    HeaderValue::from_static(concat!("herald-webhooks/", env!("CARGO_PKG_VERSION")));
/// Longest `Retry-After` we honour; beyond it the regular schedule applies.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

type Connector = hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>;

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

/// An endpoint's URL, parsed and checked once: where to POST, and the credentials its
/// userinfo carried (`https://user:pass@host/`), sent as HTTP Basic authorization and never
/// in the request line.
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    authorization: Option<HeaderValue>,
}

/// A message ready to send to one endpoint.
pub struct Message<'a> {
    /// The endpoint's URL as `Deliverer::target` checked it (or why it is refused).
    pub url: &'a Result<Target, String>,
    pub webhook_id: &'a str,
    pub body: Bytes,
    pub secrets: Vec<&'a Secret>,
    /// A Pusher app's webhook: Pusher's signature headers as well.
    pub pusher: Option<&'a super::model::PusherFormat>,
}

/// The HTTP client for all deliveries: guarded DNS, no proxy, no redirects, a timeout per
/// attempt. hyper-util's pooled client directly, not reqwest: reqwest re-parsed each
/// request's URL (twice, once for a redirect policy that follows nothing) and cloned its
/// client stack per request; without it deliveries per CPU-second went from ~24k to ~30k
/// (BENCHMARKS.md, "jemalloc, a leaner webhook client, and an opt-in write delay"). What
/// reqwest added here (a timeout, a capped body, Basic credentials) is a few lines.
pub struct Deliverer {
    client: Client<Connector, Full<Bytes>>,
    policy: Arc<Policy>,
    timeout: Duration,
}

impl Deliverer {
    /// `max_in_flight`: the most connections worth keeping open to one host. Fewer, and
    /// endpoints that share a host (one receiver, many URLs) would close and reopen a
    /// connection for most deliveries (measured: a new TCP connection per ~5 deliveries
    /// with 10 endpoints on one host and 32 kept).
    pub fn new(policy: Policy, timeout: Duration, max_in_flight: usize) -> Deliverer {
        let policy = Arc::new(policy);
        let mut http = HttpConnector::new_with_resolver(GuardedResolver {
            policy: policy.clone(),
        });
        // The TLS layer below sees the scheme; this one must accept both.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(tokio_rustls::rustls::crypto::ring::default_provider())
            .expect("TLS client configuration")
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        // No proxy from HTTP(S)_PROXY either: this client never reads them, and a proxy
        // would resolve the target itself, past the guarded resolver.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(max_in_flight.max(1))
            .build(https);
        Deliverer {
            client,
            policy,
            timeout,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Parses and checks an endpoint's URL once (the policy is fixed for the process): IP
    /// literals never reach the resolver, so they are refused here.
    pub fn target(&self, url: &str) -> Result<Target, String> {
        let mut url = self.policy.check_url(url).map_err(|e| e.to_string())?;
        let authorization = basic_credentials(&url);
        // Both only fail for URLs that cannot have userinfo, which check_url refused.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let uri = Uri::try_from(url.as_str()).map_err(|e| format!("invalid webhook URL: {e}"))?;
        Ok(Target { uri, authorization })
    }

    pub async fn send(&self, message: Message<'_>, timestamp: u64) -> Outcome {
        let started = Instant::now();
        let target = match message.url {
            Ok(target) => target,
            Err(e) => return Outcome::failed(e.clone(), started),
        };
        let request = match build(target, &message, timestamp) {
            Ok(r) => r,
            Err(e) => return Outcome::failed(format!("request failed: {e}"), started),
        };
        // One deadline for the whole attempt. A receiver that answered with a status has
        // answered: a body that stalls past the deadline is cut, and the status stands
        // (a retry would deliver the event twice).
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => return Outcome::failed(describe(&e), started),
            Err(_) => return Outcome::failed("timed out".into(), started),
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
        let mut body = Vec::new();
        let _ =
            tokio::time::timeout_at(deadline, read_prefix(response.into_body(), &mut body)).await;
        Outcome {
            status: Some(status),
            error: None,
            duration: started.elapsed(),
            retry_after,
            body: Some(String::from_utf8_lossy(&body).into_owned()),
        }
    }
}

/// The signed POST.
fn build(
    target: &Target,
    message: &Message<'_>,
    timestamp: u64,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let signature = signature_header(
        &message.secrets,
        message.webhook_id,
        timestamp,
        &message.body,
    );
    // Names and the fixed values are made at compile time: nothing parsed per request.
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(target.uri.clone())
        .header(CONTENT_TYPE, JSON)
        .header(USER_AGENT, AGENT)
        .header(WEBHOOK_ID, message.webhook_id)
        .header(WEBHOOK_TIMESTAMP, timestamp)
        .header(WEBHOOK_SIGNATURE, signature);
    if let Some(credentials) = &target.authorization {
        request = request.header(AUTHORIZATION, credentials.clone());
    }
    if let Some(p) = message.pusher {
        for (k, v) in super::format::pusher_headers(p, &message.body) {
            request = request.header(k, v);
        }
    }
    request.body(Full::new(message.body.clone()))
}

/// `Basic` credentials from the URL's userinfo (percent-decoded), if it has any.
fn basic_credentials(url: &url::Url) -> Option<HeaderValue> {
    use base64::Engine;
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut pair = decode(url.username());
    pair.push(b':');
    pair.extend(decode(url.password().unwrap_or_default()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Reads at most `MAX_RESPONSE_BODY` bytes of the body into `out`, then stops. What arrived
/// stays in `out` if the body breaks off or the caller gives up waiting.
async fn read_prefix(mut body: hyper::body::Incoming, out: &mut Vec<u8>) {
    while out.len() < MAX_RESPONSE_BODY {
        let Some(Ok(frame)) = body.frame().await else {
            return;
        };
        if let Ok(chunk) = frame.into_data() {
            let room = MAX_RESPONSE_BODY - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }
}

/// A one-line reason, including the guard's refusal when that is the cause.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = if e.is_connect() {
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
