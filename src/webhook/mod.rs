//! Outgoing webhooks: the third transport. Each endpoint follows the log through a hub
//! subscription from its durable cursor; matching events become durable delivery tasks; a
//! scheduler hands due tasks to delivery workers, which sign (Standard Webhooks), POST, and
//! record every attempt. It never touches the log's writer and never blocks the hub.

pub mod deliver;
mod dispatch;
mod endpoint;
mod enqueue;
mod format;
pub mod guard;
mod health;
pub mod model;
mod notices;
mod pusher;
pub mod queue;
mod record;
mod resolve;
pub mod retry;
mod runtime;
pub mod sign;
mod tools;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WebhooksConfig;
use crate::event::now_ms;
use crate::hub::Hub;
use crate::log::LogError;
use crate::store::StoreError;
use deliver::Deliverer;
use dispatch::InFlight;
use endpoint::{
    validate_channels, validate_description, validate_notifications, validate_rate_limit,
    validate_types, Live, Route,
};
pub use endpoint::{CreateEndpoint, UpdateEndpoint};
use guard::{GuardError, Policy};
pub use model::AttemptStatus;
pub use model::{Attempt, Endpoint};
pub use queue::WebhookStore;
pub use queue::{DeliveryQueue, RedisQueue};
use sign::Secret;

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
    /// The webhook store (endpoints, queue, attempt log) failed.
    #[error("the webhook store failed: {0}")]
    Store(#[from] StoreError),
    /// A batched store write failed (every attempt in the batch shares the error).
    #[error("the webhook store failed: {0}")]
    Recorded(#[from] Arc<StoreError>),
    /// Reading the event log (for a delivery or a replay) failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The owner already has as many endpoints as it may.
    #[error(
        "owner {owner:?} already has {max} webhook endpoints, the most it may have \
         (webhooks.max_endpoints_per_owner); delete one first"
    )]
    OwnerFull { owner: String, max: usize },
    /// The owner creates endpoints faster than it may.
    #[error(
        "owner {owner:?} creates webhook endpoints faster than {per_minute} a minute \
         (webhooks.owner_creations_per_minute)"
    )]
    OwnerRate {
        owner: String,
        per_minute: u32,
        retry_after: Duration,
    },
}

pub struct Webhooks {
    store: Arc<DeliveryQueue>,
    recorder: record::Recorder,
    hub: Arc<Hub>,
    config: WebhooksConfig,
    /// `config.retry_schedule`, unwrapped.
    schedule: Vec<Duration>,
    attempt_retention: Duration,
    deliverer: Deliverer,
    live: RwLock<HashMap<String, Arc<Live>>>,
    health: health::Book,
    in_flight: Mutex<InFlight>,
    wake: Notify,
    shutdown: CancellationToken,
    /// Every webhook task runs on `rt` (see `runtime`), tracked by `tasks`.
    tasks: TaskTracker,
    rt: tokio::runtime::Handle,
    runtime: Mutex<runtime::DeliveryRuntime>,
    /// Looks up endpoint hosts when their URL is set (off the blocking pool, with a timeout).
    resolver: Arc<dyn resolve::Resolve>,
    /// Endpoint creations per owner.
    creations: crate::limits::RateLimiter,
    /// Cluster: the version of the shared endpoint set this node last synced to.
    synced: std::sync::atomic::AtomicU64,
    /// One sync at a time (the refresh timer and the notice path both sync).
    syncing: tokio::sync::Mutex<()>,
}

impl Webhooks {
    /// Loads endpoints and starts their enqueuers and the scheduler.
    pub async fn start(
        store: DeliveryQueue,
        hub: Arc<Hub>,
        config: WebhooksConfig,
        attempt_retention: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Webhooks>, WebhookError> {
        let policy = Policy {
            allow_private: config.allow_private,
            allow_hosts: config.allow_hosts.clone(),
        };
        let runtime =
            runtime::DeliveryRuntime::start(config.threads, config.nice).map_err(|e| {
                WebhookError::Invalid(format!("webhook delivery threads not started: {e}"))
            })?;
        let store = Arc::new(store);
        let recorder = {
            let _on = runtime.handle().enter();
            record::Recorder::start(store.clone(), config.max_in_flight)
        };
        let creations = crate::limits::RateLimiter::per_minute(config.owner_creations_per_minute);
        let service = Arc::new(Webhooks {
            recorder,
            rt: runtime.handle(),
            runtime: Mutex::new(runtime),
            deliverer: Deliverer::new(policy, config.timeout, config.max_in_flight),
            schedule: config.retry_schedule.iter().map(|d| **d).collect(),
            store,
            hub,
            config,
            attempt_retention,
            live: RwLock::default(),
            health: health::Book::default(),
            in_flight: Mutex::default(),
            wake: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
            resolver: Arc::new(resolve::SystemResolver::default()),
            creations,
            synced: std::sync::atomic::AtomicU64::new(u64::MAX),
            syncing: tokio::sync::Mutex::new(()),
        });
        for endpoint in service.store.endpoints().await? {
            service.install(endpoint)?;
        }
        service.spawn(service.clone().schedule());
        if service.store.is_shared() {
            service.spawn(service.clone().refresh());
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
            if let Err(e) = self.sync_endpoints().await {
                tracing::debug!(error = %e, "webhook endpoints not refreshed");
            }
        }
    }

    /// Cluster: brings this node's endpoints up to the shared set when its version moved
    /// since the last sync.
    async fn sync_if_changed(self: &Arc<Self>) -> Result<(), StoreError> {
        match self.store.endpoints_version().await? {
            Some(v) if v != self.synced.load(AtomicOrdering::Acquire) => {
                self.sync_endpoints().await
            }
            _ => Ok(()),
        }
    }

    /// Cluster: installs, updates and stops endpoints to match the shared set.
    async fn sync_endpoints(self: &Arc<Self>) -> Result<(), StoreError> {
        let _one = self.syncing.lock().await;
        // The version first: a change after it moves it again, so none is missed.
        let version = self.store.endpoints_version().await?.unwrap_or(0);
        let stored = self.store.endpoints().await?;
        {
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
        self.synced.store(version, AtomicOrdering::Release);
        Ok(())
    }

    /// On the delivery runtime, tracked for shutdown.
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn_on(task, &self.rt);
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
        self.runtime.lock().expect("delivery runtime").stop();
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
            self.spawn(self.clone().enqueue(live.clone()));
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

    /// The event a delivery to `endpoint` carried, for the portal's payload view: None
    /// unless it is still in the log and is one this endpoint takes (so a consumer sees
    /// only what its own endpoint was sent).
    pub async fn delivered_event(
        &self,
        endpoint: Endpoint,
        seq: u64,
    ) -> Result<Option<crate::event::EventRef>, WebhookError> {
        let live = Live::new(endpoint)?;
        let Some(event) = self.hub.log().get(seq).await? else {
            return Ok(None);
        };
        let (channel, kind) = (&*event.channel, event.kind.as_deref());
        let notice = channel.as_bytes().first() == Some(&crate::event::NOTICE_MARK);
        let taken = live.wants(channel, kind) && (notice || live.filter.matches(channel));
        Ok(taken.then_some(event))
    }

    pub async fn pending(&self, id: &str) -> Result<usize, WebhookError> {
        self.get(id).await?;
        Ok(self.store.pending_count(id).await?)
    }

    pub async fn create(self: &Arc<Self>, req: CreateEndpoint) -> Result<Endpoint, WebhookError> {
        if let Some(owner) = &req.owner {
            self.check_owner(owner).await?;
        }
        self.check_url(&req.url).await?;
        validate_channels(&req.channels)?;
        if let Some(types) = &req.types {
            validate_types(types)?;
        }
        validate_notifications(&req.notifications)?;
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
        validate_rate_limit(req.rate_limit)?;
        if req.owner.as_deref() == Some("") {
            return Err(WebhookError::Invalid("owner must not be empty".into()));
        }
        let endpoint = Endpoint {
            id,
            owner: req.owner,
            url: req.url,
            channels: req.channels,
            types: req.types,
            notifications: req.notifications,
            pusher: None,
            description: validate_description(req.description)?,
            enabled: req.enabled.unwrap_or(true),
            ordered: req.ordered.unwrap_or(false),
            rate_limit: req.rate_limit,
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
        if let Some(kinds) = &req.notifications {
            validate_notifications(kinds)?;
        }
        if let Some(limit) = req.rate_limit {
            validate_rate_limit(limit)?;
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
            if let Some(kinds) = &req.notifications {
                endpoint.notifications = kinds.clone();
            }
            if let Some(d) = &description {
                endpoint.description = d.clone();
            }
            if let Some(ordered) = req.ordered {
                endpoint.ordered = ordered;
            }
            if let Some(limit) = req.rate_limit {
                endpoint.rate_limit = limit;
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
        self.health.forget(id);
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

    /// An endpoint's newest attempts, newest first.
    pub async fn attempts_newest(
        &self,
        id: &str,
        status: Option<AttemptStatus>,
        limit: usize,
    ) -> Result<Vec<Attempt>, WebhookError> {
        Ok(self.store.attempts_newest(id, status, limit).await?)
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
        self.spawn(async move {
            if let Err(e) = service.replay_range(&live, since, until).await {
                tracing::error!(endpoint = %live.endpoint.id, error = %e, "webhook replay failed");
            }
        });
        Ok((since, until))
    }

    /// An owner's endpoint cap and creation rate: a consumer token must not be able to
    /// multiply the delivery work of every event without bound.
    async fn check_owner(&self, owner: &str) -> Result<(), WebhookError> {
        let max = self.config.max_endpoints_per_owner;
        let has = self
            .store
            .endpoints()
            .await?
            .iter()
            .filter(|e| e.owner.as_deref() == Some(owner))
            .count();
        if has >= max {
            return Err(WebhookError::OwnerFull {
                owner: owner.to_string(),
                max,
            });
        }
        self.creations
            .take(owner, 1)
            .map_err(|retry_after| WebhookError::OwnerRate {
                owner: owner.to_string(),
                per_minute: self.config.owner_creations_per_minute,
                retry_after,
            })
    }

    /// Scheme and literal-address checks, plus a DNS check now for a clear early error (the
    /// binding check happens again at every delivery).
    async fn check_url(&self, url: &str) -> Result<(), WebhookError> {
        let parsed = self.deliverer.policy().check_url(url)?;
        if let Some(url::Host::Domain(host)) = parsed.host() {
            let port = parsed.port_or_known_default().unwrap_or(80);
            let timeout = self.config.dns_timeout;
            if let Some(addrs) = resolve::lookup(&*self.resolver, host, port, timeout).await {
                for addr in addrs {
                    self.deliverer.policy().check_addr(host, addr.ip())?;
                }
            }
        }
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
