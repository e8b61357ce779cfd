//! Outgoing webhooks: the third transport. Each endpoint follows the log through a hub
//! subscription from its durable cursor; matching events become durable delivery tasks; a
//! scheduler hands due tasks to delivery workers, which sign (Standard Webhooks), POST, and
//! record every attempt. It never touches the log's writer and never blocks the hub.

pub mod deliver;
pub mod guard;
pub mod queue;
pub mod retry;
pub mod sign;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhooksConfig;
use crate::event::{format_time, now_ms, validate_channel, Filter, Pattern};
use crate::hub::{Hub, Item, SubscriptionError};
use crate::log::LogError;
use deliver::{Deliverer, Message, Outcome};
use guard::{GuardError, Policy};
use queue::Want;
pub use queue::{Queue, RedisQueue};
pub use retry::AttemptStatus;
use retry::Decision;
use sign::Secret;
pub use store::{Attempt, Endpoint, WebhookStore};
use store::{Resolution, Task};

/// Most events folded into one enqueue batch.
const ENQUEUE_BATCH: usize = 1000;
/// Scheduling passes happen at least this often (retries come due without a wake-up).
const POLL: Duration = Duration::from_millis(50);
/// How often a cluster node re-reads the endpoints (other nodes change them).
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("no webhook endpoint {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Storage(#[from] LogError),
}

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    pub channels: Vec<String>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub ordered: Option<bool>,
    #[serde(default)]
    pub secret: Option<String>,
}

/// `PATCH /v1/webhooks/{id}` body; absent fields stay as they are (`types: null` clears).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    pub channels: Option<Vec<String>>,
    #[serde(default, with = "double_option")]
    pub types: Option<Option<Vec<String>>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub ordered: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Vec<String>>>, D::Error> {
        Ok(Some(Option::deserialize(d)?))
    }
}

/// An endpoint as the service holds it: parsed secrets, compiled filter, and the switch that
/// stops its enqueuer.
struct Live {
    endpoint: Endpoint,
    secret: Secret,
    previous: Option<Secret>,
    filter: Filter,
    stop: CancellationToken,
    /// What the running enqueuer was started for; a change means a restart.
    route: Route,
}

/// The parts of an endpoint that decide what gets queued.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    channels: Vec<String>,
    types: Option<Vec<String>>,
    enabled: bool,
}

impl Route {
    fn of(e: &Endpoint) -> Route {
        Route {
            channels: e.channels.clone(),
            types: e.types.clone(),
            enabled: e.enabled,
        }
    }
}

impl Live {
    fn new(endpoint: Endpoint) -> Result<Live, WebhookError> {
        let secret =
            Secret::parse(&endpoint.secret).map_err(|e| WebhookError::Invalid(e.to_string()))?;
        let previous = endpoint
            .previous_secret
            .as_deref()
            .and_then(|s| Secret::parse(s).ok());
        let filter = Filter::parse(endpoint.channels.iter().map(String::as_str))
            .map_err(|e| WebhookError::Invalid(e.to_string()))?;
        Ok(Live {
            route: Route::of(&endpoint),
            endpoint,
            secret,
            previous,
            filter,
            stop: CancellationToken::new(),
        })
    }

    /// This endpoint's new stored state, keeping the running enqueuer (and what it was
    /// started for). Stops the enqueuer if the endpoint got disabled.
    fn updated(&self, endpoint: Endpoint) -> Result<Live, WebhookError> {
        let fresh = Live::new(endpoint)?;
        if !fresh.endpoint.enabled {
            self.stop.cancel();
        }
        Ok(Live {
            filter: self.filter.clone(),
            stop: self.stop.clone(),
            route: self.route.clone(),
            ..fresh
        })
    }

    fn wants_type(&self, kind: Option<&str>) -> bool {
        match &self.endpoint.types {
            None => true,
            Some(types) => kind.is_some_and(|k| types.iter().any(|t| t == k)),
        }
    }

    /// Secrets to sign with now: the current one, plus the previous one during its overlap.
    fn signing_secrets(&self, now: u64) -> Vec<&Secret> {
        let mut out = vec![&self.secret];
        if let (Some(prev), Some(until)) = (&self.previous, self.endpoint.previous_expires_ms) {
            if now < until {
                out.push(prev);
            }
        }
        out
    }
}

#[derive(Default)]
struct InFlight {
    total: usize,
    per_endpoint: HashMap<String, usize>,
    tasks: HashSet<(String, u64)>,
    /// Cluster claims held by running attempts, to hand back at shutdown.
    claims: HashMap<(String, u64), Arc<str>>,
}

pub struct Webhooks {
    store: Queue,
    hub: Arc<Hub>,
    config: WebhooksConfig,
    /// `config.retry_schedule`, unwrapped.
    schedule: Vec<Duration>,
    attempt_retention: Duration,
    deliverer: Deliverer,
    live: RwLock<HashMap<String, Arc<Live>>>,
    in_flight: Mutex<InFlight>,
    wake: Notify,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Webhooks {
    /// Loads endpoints and starts their enqueuers and the scheduler.
    pub async fn start(
        store: Queue,
        hub: Arc<Hub>,
        config: WebhooksConfig,
        attempt_retention: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        let policy = Policy {
            allow_private: config.allow_private,
            allow_hosts: config.allow_hosts.clone(),
        };
        let service = Arc::new(Webhooks {
            deliverer: Deliverer::new(policy, config.timeout),
            schedule: config.retry_schedule.iter().map(|d| **d).collect(),
            store,
            hub,
            config,
            attempt_retention,
            live: RwLock::default(),
            in_flight: Mutex::default(),
            wake: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
        });
        for endpoint in service.store.endpoints().await? {
            service.install(endpoint)?;
        }
        service.tasks.spawn(service.clone().schedule());
        if service.store.is_shared() {
            service.tasks.spawn(service.clone().refresh());
        }
        Ok(service)
    }

    /// Cluster: follows endpoint changes made on other nodes (created, edited, deleted,
    /// disabled), so every node schedules the same endpoints.
    async fn refresh(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH) => {}
            }
            let stored = match self.store.endpoints().await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(error = %e, "webhook endpoints not refreshed");
                    continue;
                }
            };
            let ids: HashSet<String> = stored.iter().map(|e| e.id.clone()).collect();
            let gone: Vec<Arc<Live>> = {
                let mut map = self.live.write().expect("webhook map");
                let gone = map
                    .keys()
                    .filter(|id| !ids.contains(*id))
                    .cloned()
                    .collect::<Vec<_>>();
                gone.iter().filter_map(|id| map.remove(id)).collect()
            };
            for live in gone {
                live.stop.cancel();
            }
            for endpoint in stored {
                let current = self
                    .live
                    .read()
                    .expect("webhook map")
                    .get(&endpoint.id)
                    .cloned();
                match current {
                    Some(live) if live.endpoint == endpoint => {}
                    // Same delivery rules: update in place, keep the enqueuer running.
                    Some(live) if live.route == Route::of(&endpoint) => {
                        if let Ok(updated) = live.updated(endpoint) {
                            self.live
                                .write()
                                .expect("webhook map")
                                .insert(updated.endpoint.id.clone(), Arc::new(updated));
                        }
                    }
                    _ => {
                        if let Err(e) = self.install(endpoint) {
                            tracing::error!(error = %e, "webhook endpoint not installed");
                        }
                    }
                }
            }
        }
    }

    /// Waits (bounded) for in-flight deliveries after shutdown was signalled.
    pub async fn close(&self, grace: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
        // Attempts still running die with the process: hand their claims back so another
        // node retries them now rather than when the lease runs out.
        let claims: Vec<(String, u64, Arc<str>)> = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .claims
            .iter()
            .map(|((id, seq), token)| (id.clone(), *seq, token.clone()))
            .collect();
        if !claims.is_empty() {
            let release = self.store.release(&claims, now_ms());
            match tokio::time::timeout(Duration::from_secs(2), release).await {
                Ok(Ok(())) => tracing::info!(
                    count = claims.len(),
                    "unfinished webhook attempts handed back"
                ),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "webhook claims not handed back; they expire with their lease")
                }
                Err(_) => tracing::warn!(
                    "webhook claims not handed back in time; they expire with their lease"
                ),
            }
        }
    }

    fn install(self: &Arc<Self>, endpoint: Endpoint) -> Result<Arc<Live>, WebhookError> {
        let live = Arc::new(Live::new(endpoint)?);
        let old = self
            .live
            .write()
            .expect("webhook map")
            .insert(live.endpoint.id.clone(), live.clone());
        if let Some(old) = old {
            old.stop.cancel();
        }
        if live.endpoint.enabled {
            self.tasks.spawn(self.clone().enqueue(live.clone()));
        }
        self.wake.notify_one();
        Ok(live)
    }

    /// Endpoints this node is running (in a cluster: as of its last refresh).
    pub fn running(&self) -> usize {
        self.live.read().expect("webhook map").len()
    }

    /// From the store, not this node's copy: in a cluster another node may have just
    /// created or changed an endpoint.
    pub async fn list(&self) -> Result<Vec<Endpoint>, WebhookError> {
        let mut out = self.store.endpoints().await?;
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    pub async fn get(&self, id: &str) -> Result<Endpoint, WebhookError> {
        self.store
            .endpoint(id)
            .await?
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))
    }

    pub async fn pending(&self, id: &str) -> Result<usize, WebhookError> {
        self.get(id).await?;
        Ok(self.store.pending_count(id).await?)
    }

    pub async fn create(self: &Arc<Self>, req: CreateEndpoint) -> Result<Endpoint, WebhookError> {
        self.check_url(&req.url).await?;
        validate_channels(&req.channels)?;
        if let Some(types) = &req.types {
            validate_types(types)?;
        }
        let secret = match req.secret {
            Some(s) => Secret::parse(&s).map_err(|e| WebhookError::Invalid(e.to_string()))?,
            None => Secret::generate(),
        };
        let mut id_bytes = [0u8; 10];
        getrandom::fill(&mut id_bytes).expect("OS random source");
        let id: String = format!(
            "wh_{}",
            id_bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let endpoint = Endpoint {
            id,
            url: req.url,
            channels: req.channels,
            types: req.types,
            description: validate_description(req.description)?,
            enabled: req.enabled.unwrap_or(true),
            ordered: req.ordered.unwrap_or(false),
            secret: secret.as_str().to_string(),
            previous_secret: None,
            previous_expires_ms: None,
            created_ms: now_ms(),
            failing_since_ms: None,
            disabled_reason: None,
        };
        // New endpoints get events from now on; `replay` fetches history.
        let head = self.hub.log().bounds().head;
        self.store.put_endpoint(&endpoint, Some(head)).await?;
        self.install(endpoint.clone())?;
        Ok(endpoint)
    }

    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        req: UpdateEndpoint,
    ) -> Result<Endpoint, WebhookError> {
        if let Some(url) = &req.url {
            self.check_url(url).await?;
        }
        if let Some(channels) = &req.channels {
            validate_channels(channels)?;
        }
        if let Some(Some(types)) = &req.types {
            validate_types(types)?;
        }
        let description = match req.description {
            Some(d) => Some(validate_description(Some(d))?),
            None => None,
        };
        let apply = move |endpoint: &mut Endpoint| {
            if let Some(url) = &req.url {
                endpoint.url = url.clone();
            }
            if let Some(channels) = &req.channels {
                endpoint.channels = channels.clone();
            }
            if let Some(types) = &req.types {
                endpoint.types = types.clone();
            }
            if let Some(d) = &description {
                endpoint.description = d.clone();
            }
            if let Some(ordered) = req.ordered {
                endpoint.ordered = ordered;
            }
            if let Some(enabled) = req.enabled {
                endpoint.enabled = enabled;
                if enabled {
                    endpoint.disabled_reason = None;
                    endpoint.failing_since_ms = None;
                }
            }
        };
        let endpoint = self
            .store
            .modify(id, &apply)
            .await?
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
        self.install(endpoint.clone())?;
        Ok(endpoint)
    }

    pub async fn delete(&self, id: &str) -> Result<(), WebhookError> {
        self.get(id).await?;
        if let Some(live) = self.live.write().expect("webhook map").remove(id) {
            live.stop.cancel();
        }
        self.store.delete_endpoint(id).await?;
        Ok(())
    }

    /// Replaces the secret; the old one keeps signing beside it for `rotation_overlap`.
    pub async fn rotate(self: &Arc<Self>, id: &str) -> Result<Endpoint, WebhookError> {
        let secret = Secret::generate().as_str().to_string();
        let until = now_ms() + self.config.rotation_overlap.as_millis() as u64;
        let endpoint = self
            .store
            .modify(id, &|e: &mut Endpoint| {
                e.previous_secret = Some(std::mem::replace(&mut e.secret, secret.clone()));
                e.previous_expires_ms = Some(until);
            })
            .await?
            .ok_or_else(|| WebhookError::NotFound(id.to_string()))?;
        self.install(endpoint.clone())?;
        Ok(endpoint)
    }

    pub async fn attempts(
        &self,
        id: &str,
        after: u64,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, WebhookError> {
        self.get(id).await?;
        Ok(self.store.attempts(id, after, status, limit).await?)
    }

    /// Re-queues every matching event after `since` up to the endpoint's cursor (later events
    /// are on their way already). Runs in the background; returns the range.
    pub async fn replay(
        self: &Arc<Self>,
        id: &str,
        since: u64,
    ) -> Result<(u64, u64), WebhookError> {
        let live = Arc::new(Live::new(self.get(id).await?)?);
        let until = self.store.cursor(id).await?;
        let service = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = service.replay_range(&live, since, until).await {
                tracing::error!(endpoint = %live.endpoint.id, error = %e, "webhook replay failed");
            }
        });
        Ok((since, until))
    }

    async fn replay_range(&self, live: &Live, since: u64, until: u64) -> Result<(), LogError> {
        let mut after = since;
        while after < until {
            let page = self
                .hub
                .log()
                .read(Arc::new(live.filter.clone()), after, ENQUEUE_BATCH)
                .await?;
            let seqs: Vec<u64> = page
                .events
                .iter()
                .filter(|e| e.seq <= until && live.wants_type(e.kind.as_deref()))
                .map(|e| e.seq)
                .collect();
            self.store
                .enqueue(&live.endpoint.id, &seqs, None, now_ms())
                .await?;
            self.wake.notify_one();
            if page.end || page.next <= after {
                break;
            }
            after = page.next;
        }
        Ok(())
    }

    /// Scheme and literal-address checks, plus a DNS check now for a clear early error (the
    /// binding check happens again at every delivery).
    async fn check_url(&self, url: &str) -> Result<(), WebhookError> {
        let parsed = self.deliverer.policy().check_url(url)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            if let Ok(addrs) =
                tokio::net::lookup_host((host, parsed.port_or_known_default().unwrap_or(80))).await
            {
                for addr in addrs {
                    self.deliverer.policy().check_addr(host, addr.ip())?;
                }
            }
        }
        Ok(())
    }

    /// Follows the log for one endpoint and turns matching events into durable tasks.
    async fn enqueue(self: Arc<Self>, live: Arc<Live>) {
        let id = live.endpoint.id.clone();
        while !live.stop.is_cancelled() && !self.shutdown.is_cancelled() {
            let cursor = match self.store.cursor(&id).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(endpoint = %id, error = %e, "webhook cursor unreadable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut sub =
                self.hub
                    .subscribe(live.filter.clone(), Some(cursor), CancellationToken::new());
            loop {
                let first = tokio::select! {
                    _ = live.stop.cancelled() => return,
                    _ = self.shutdown.cancelled() => return,
                    item = sub.next() => item,
                };
                let mut items = vec![first];
                while items.len() < ENQUEUE_BATCH {
                    match sub.next().now_or_never() {
                        Some(item) => items.push(item),
                        None => break,
                    }
                }
                let mut seqs = Vec::new();
                let mut last = None;
                let mut broken = false;
                for item in items {
                    match item {
                        Ok(Item::Event(event)) => {
                            last = Some(event.seq);
                            if live.wants_type(event.kind.as_deref()) {
                                seqs.push(event.seq);
                            }
                        }
                        Ok(Item::Reset { oldest }) => {
                            tracing::warn!(endpoint = %id, oldest, "events trimmed before they could be queued");
                        }
                        Err(SubscriptionError::Lagged) => broken = true,
                        Err(SubscriptionError::Log(e)) => {
                            tracing::error!(endpoint = %id, error = %e, "webhook enqueue read failed");
                            broken = true;
                        }
                    }
                }
                if last.is_some() {
                    // The stop switch is checked right before writing: a deleted endpoint's
                    // enqueuer must not recreate its tasks.
                    if live.stop.is_cancelled() {
                        return;
                    }
                    if let Err(e) = self.store.enqueue(&id, &seqs, last, now_ms()).await {
                        tracing::error!(endpoint = %id, error = %e, "webhook enqueue failed");
                        broken = true;
                    }
                    self.wake.notify_one();
                }
                if broken {
                    // Resume from the durable cursor.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }

    /// Hands due tasks to delivery workers within the concurrency limits.
    async fn schedule(self: Arc<Self>) {
        let mut last_trim = 0;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            let now = now_ms();
            match self.dispatch_due(now).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("webhook scheduling resumed");
                }
                Ok(()) => {}
                Err(e) => {
                    // Said once per outage; retried each second until the store is back.
                    if !failing {
                        tracing::error!(error = %e, "webhook scheduling failed");
                    }
                    failing = true;
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            if now.saturating_sub(last_trim) > 60_000 {
                last_trim = now;
                let cutoff = now.saturating_sub(self.attempt_retention.as_millis() as u64);
                if let Err(e) = self.store.trim_attempts(cutoff).await {
                    tracing::error!(error = %e, "webhook attempt log trim failed");
                }
            }
            // Let completions accumulate a little instead of rescanning per completion.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn dispatch_due(self: &Arc<Self>, now: u64) -> Result<(), LogError> {
        let live_map = self.live.read().expect("webhook map").clone();
        let max_total = self.config.max_in_flight.max(1);
        let (wants, total, in_flight) = {
            let f = self.in_flight.lock().expect("in-flight lock");
            let wants: HashMap<String, Want> = live_map
                .values()
                .filter(|l| l.endpoint.enabled)
                .filter_map(|l| {
                    let ordered = l.endpoint.ordered;
                    let limit = if ordered {
                        1
                    } else {
                        self.config.max_in_flight_per_endpoint.max(1)
                    };
                    let busy = f.per_endpoint.get(&l.endpoint.id).copied().unwrap_or(0);
                    (busy < limit).then(|| {
                        let want = Want {
                            capacity: limit - busy,
                            ordered,
                        };
                        (l.endpoint.id.clone(), want)
                    })
                })
                .collect();
            (wants, max_total.saturating_sub(f.total), f.tasks.clone())
        };
        if wants.is_empty() || total == 0 {
            return Ok(());
        }
        let claimed = self.store.claim(now, &wants, total, &in_flight).await?;
        for (id, task) in claimed {
            let Some(live) = live_map.get(&id) else {
                continue;
            };
            {
                let mut f = self.in_flight.lock().expect("in-flight lock");
                if !f.tasks.insert((id.clone(), task.seq)) {
                    continue;
                }
                if let Some(token) = &task.claim {
                    f.claims.insert((id.clone(), task.seq), token.clone());
                }
                f.total += 1;
                *f.per_endpoint.entry(id).or_default() += 1;
            }
            self.tasks.spawn(self.clone().attempt(live.clone(), task));
        }
        Ok(())
    }

    async fn attempt(self: Arc<Self>, live: Arc<Live>, task: Task) {
        let id = live.endpoint.id.clone();
        let seq = task.seq;
        if let Err(e) = self.attempt_inner(&live, task).await {
            tracing::error!(endpoint = %id, seq, error = %e, "webhook attempt failed to record");
        }
        {
            let mut f = self.in_flight.lock().expect("in-flight lock");
            f.total -= 1;
            if let Some(n) = f.per_endpoint.get_mut(&id) {
                *n -= 1;
                if *n == 0 {
                    f.per_endpoint.remove(&id);
                }
            }
            f.claims.remove(&(id.clone(), seq));
            f.tasks.remove(&(id, seq));
        }
        self.wake.notify_one();
    }

    async fn attempt_inner(&self, live: &Live, task: Task) -> Result<(), WebhookError> {
        let endpoint = &live.endpoint;
        let event = self.hub.log().get(task.seq).await?;
        let now = now_ms();
        let Some(event) = event else {
            let outcome = Outcome {
                status: None,
                error: Some("the event is no longer in the log (trimmed by retention)".into()),
                duration: Duration::ZERO,
                retry_after: None,
                body: None,
            };
            self.record(live, task, &outcome, Decision::Exhausted)
                .await?;
            return Ok(());
        };
        let webhook_id = format!("{}_{}", endpoint.id, task.seq);
        let message = Message {
            url: &endpoint.url,
            webhook_id: &webhook_id,
            body: event.envelope().clone(),
            secrets: live.signing_secrets(now),
        };
        let outcome = self.deliverer.send(message, now / 1000).await;
        let now = now_ms();
        metrics::histogram!("herald_webhook_delivery_seconds")
            .record(outcome.duration.as_secs_f64());
        let policy = retry::Policy {
            schedule: &self.schedule,
            disable_after: self.config.disable_after,
        };
        let decision = retry::decide(
            &outcome,
            task.attempts,
            endpoint.failing_since_ms,
            &policy,
            now,
            jitter,
        );
        let label = match decision {
            Decision::Delivered => "delivered",
            Decision::Gone => "gone",
            _ => "failed",
        };
        metrics::counter!("herald_webhook_attempts_total", "outcome" => label).increment(1);
        self.record(live, task, &outcome, decision).await?;
        match decision {
            Decision::Delivered if endpoint.failing_since_ms.is_some() => {
                self.mark(endpoint.id.as_str(), &|e: &mut Endpoint| {
                    e.failing_since_ms = None
                })
                .await?;
            }
            Decision::Delivered => {}
            Decision::Gone => {
                self.disable(&endpoint.id, "the endpoint answered 410 Gone")
                    .await?;
            }
            Decision::FailingTooLong => {
                self.disable(
                    &endpoint.id,
                    "failing continuously for longer than webhooks.disable_after",
                )
                .await?;
            }
            Decision::Retry { .. } | Decision::Exhausted => {
                if endpoint.failing_since_ms.is_none() {
                    // Another node may have noticed first: its start of the run stands.
                    self.mark(&endpoint.id, &|e: &mut Endpoint| {
                        e.failing_since_ms.get_or_insert(now);
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Logs the attempt and moves the task on, in one store write.
    async fn record(
        &self,
        live: &Live,
        task: Task,
        outcome: &Outcome,
        decision: Decision,
    ) -> Result<(), WebhookError> {
        let now = now_ms();
        let (next_at, resolution) = match decision {
            Decision::Delivered => (None, Resolution::Delivered),
            Decision::Retry { at_ms } => (Some(at_ms), Resolution::Retry { next_at_ms: at_ms }),
            Decision::Exhausted => (None, Resolution::Failed),
            // The task stays queued for when the endpoint is enabled again.
            Decision::Gone | Decision::FailingTooLong => (None, Resolution::Keep),
        };
        let attempt = Attempt {
            id: 0,
            seq: task.seq,
            attempt: task.attempts + 1,
            status: decision.status(),
            status_code: outcome.status,
            error: outcome.error.clone(),
            duration_ms: outcome.duration.as_millis() as u64,
            time: format_time(now),
            time_ms: now,
            next_attempt: next_at.map(format_time),
            response_body: outcome.body.clone(),
        };
        self.store
            .finish(&live.endpoint.id, task, attempt, resolution)
            .await?;
        Ok(())
    }

    /// Applies a change to the stored endpoint (not restarting its enqueuer).
    async fn mark(
        &self,
        id: &str,
        change: &(dyn Fn(&mut Endpoint) + Send + Sync),
    ) -> Result<(), WebhookError> {
        let Some(endpoint) = self.store.modify(id, change).await? else {
            return Ok(());
        };
        // In place, keeping the enqueuer: if another node changed what the endpoint wants,
        // the next refresh sees the route differ and reinstalls it.
        let mut map = self.live.write().expect("webhook map");
        if let Some(live) = map.get(id) {
            let updated = live.updated(endpoint)?;
            map.insert(id.to_string(), Arc::new(updated));
        }
        Ok(())
    }

    async fn disable(&self, id: &str, reason: &str) -> Result<(), WebhookError> {
        tracing::warn!(endpoint = %id, reason, "webhook endpoint disabled");
        self.mark(id, &|e: &mut Endpoint| {
            e.enabled = false;
            e.disabled_reason = Some(reason.to_string());
        })
        .await?;
        if let Some(live) = self.live.read().expect("webhook map").get(id) {
            live.stop.cancel();
        }
        Ok(())
    }
}

/// ±10% so that endpoints failing together do not retry in lockstep.
fn jitter(delay: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let r = u16::from_le_bytes(b) as f64 / u16::MAX as f64;
    delay.mul_f64(0.9 + 0.2 * r)
}

fn validate_channels(channels: &[String]) -> Result<(), WebhookError> {
    if channels.is_empty() {
        return Err(WebhookError::Invalid(
            "channels must name at least one channel or pattern".into(),
        ));
    }
    for c in channels {
        Pattern::parse(c).map_err(|e| WebhookError::Invalid(e.to_string()))?;
    }
    Ok(())
}

fn validate_types(types: &[String]) -> Result<(), WebhookError> {
    for t in types {
        validate_channel(t)
            .map_err(|_| WebhookError::Invalid(format!("type {t:?} is not a valid event type")))?;
    }
    Ok(())
}

fn validate_description(d: Option<String>) -> Result<String, WebhookError> {
    let d = d.unwrap_or_default();
    if d.len() > 1000 {
        return Err(WebhookError::Invalid(
            "description is limited to 1000 bytes".into(),
        ));
    }
    Ok(d)
}
