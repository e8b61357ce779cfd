//! An endpoint as requests describe it (create and update bodies, validation) and as the
//! service runs it (`Live`: parsed secrets, compiled filter, the switch for its enqueuer).

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::model::Endpoint;
use super::sign::Secret;
use super::WebhookError;
use crate::event::{Filter, Pattern, NOTICE_MARK};

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// The consumer it belongs to (a consumer token's own, whatever the body says).
    #[serde(default)]
    pub owner: Option<String>,
    pub url: String,
    pub channels: Vec<String>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub notifications: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub ordered: Option<bool>,
    /// Attempts per second at most (none: unlimited).
    #[serde(default)]
    pub rate_limit: Option<u32>,
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
    pub notifications: Option<Vec<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub ordered: Option<bool>,
    /// Attempts per second at most; `null` removes the limit.
    #[serde(default, with = "double_option")]
    pub rate_limit: Option<Option<u32>>,
}

/// Tells a field given as `null` (clear it) from one left out (keep it).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Ok(Some(Option::deserialize(d)?))
    }
}

pub(super) fn validate_rate_limit(limit: Option<u32>) -> Result<(), WebhookError> {
    match limit {
        Some(0) => Err(WebhookError::Invalid(
            "rate_limit must be at least 1 per second (null: no limit)".into(),
        )),
        _ => Ok(()),
    }
}

/// An endpoint as the service holds it: parsed secrets, compiled filter, and the switch that
/// stops its enqueuer.
pub(super) struct Live {
    pub(super) endpoint: Endpoint,
    pub(super) secret: Secret,
    pub(super) previous: Option<Secret>,
    pub(super) filter: Filter,
    /// `endpoint.types` compiled (`order.*` matches `order.paid`); None: every type.
    types: Option<Vec<Pattern>>,
    /// The URL parsed and checked once, at the first delivery.
    pub(super) target: std::sync::OnceLock<Result<super::deliver::Target, String>>,
    pub(super) stop: CancellationToken,
    /// What the running enqueuer was started for; a change means a restart.
    pub(super) route: Route,
}

/// The parts of an endpoint that decide what gets queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Route {
    channels: Vec<String>,
    types: Option<Vec<String>>,
    notifications: Vec<String>,
    enabled: bool,
}

impl Route {
    pub(super) fn of(e: &Endpoint) -> Route {
        Route {
            channels: e.channels.clone(),
            types: e.types.clone(),
            notifications: e.notifications.clone(),
            enabled: e.enabled,
        }
    }
}

impl Live {
    pub(super) fn new(endpoint: Endpoint) -> Result<Live, WebhookError> {
        let secret =
            Secret::parse(&endpoint.secret).map_err(|e| WebhookError::Invalid(e.to_string()))?;
        let previous = endpoint
            .previous_secret
            .as_deref()
            .and_then(|s| Secret::parse(s).ok());
        let mut filter = Filter::parse(endpoint.channels.iter().map(String::as_str))
            .map_err(|e| WebhookError::Invalid(e.to_string()))?;
        if !endpoint.notifications.is_empty() {
            filter = filter.with_notices();
        }
        let types = endpoint
            .types
            .as_ref()
            .map(|t| {
                t.iter()
                    .map(|p| Pattern::parse(p))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| WebhookError::Invalid(e.to_string()))?;
        Ok(Live {
            types,
            route: Route::of(&endpoint),
            endpoint,
            secret,
            previous,
            filter,
            target: Default::default(),
            stop: CancellationToken::new(),
        })
    }

    /// This endpoint's new stored state, keeping the running enqueuer (and what it was
    /// started for). Stops the enqueuer if the endpoint got disabled.
    pub(super) fn updated(&self, endpoint: Endpoint) -> Result<Live, WebhookError> {
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

    /// Whether an event of the endpoint's channels is for it: a notice if it asked for that
    /// kind, any other event by its `types`.
    pub(super) fn wants(&self, channel: &str, kind: Option<&str>) -> bool {
        if channel.as_bytes().first() == Some(&NOTICE_MARK) {
            let n = &self.endpoint.notifications;
            return kind.is_some_and(|k| n.iter().any(|t| t == k));
        }
        if let Some(p) = &self.endpoint.pusher {
            // A Pusher app's webhook tells of client events, not of what its API triggered.
            return p.client_events && kind.is_some_and(|k| k.starts_with("client-"));
        }
        self.wants_type(kind)
    }

    /// Whether a notice of `kind` about `channel` is for this endpoint.
    pub(super) fn wants_notice(&self, channel: &str, kind: &str) -> bool {
        self.endpoint.enabled
            && self.endpoint.notifications.iter().any(|n| n == kind)
            && self.filter.matches(channel)
    }

    fn wants_type(&self, kind: Option<&str>) -> bool {
        match &self.types {
            None => true,
            Some(types) => kind.is_some_and(|k| types.iter().any(|t| t.matches(k))),
        }
    }

    /// Secrets to sign with now: the current one, plus the previous one during its overlap.
    pub(super) fn signing_secrets(&self, now: u64) -> Vec<&Secret> {
        let mut out = vec![&self.secret];
        if let (Some(prev), Some(until)) = (&self.previous, self.endpoint.previous_expires_ms) {
            if now < until {
                out.push(prev);
            }
        }
        out
    }
}

pub(super) fn validate_channels(channels: &[String]) -> Result<(), WebhookError> {
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

/// The notices an endpoint may ask for.
pub const NOTIFICATIONS: [&str; 4] = [
    "presence.join",
    "presence.leave",
    "channel.occupied",
    "channel.vacated",
];

pub(super) fn validate_notifications(kinds: &[String]) -> Result<(), WebhookError> {
    match kinds.iter().find(|k| !NOTIFICATIONS.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(WebhookError::Invalid(format!(
            "unknown notification {:?}; expected some of {}",
            crate::event::excerpt(k),
            NOTIFICATIONS.join(", ")
        ))),
    }
}

/// Event types, or patterns of them (`order.*`), with channel-name syntax.
pub(super) fn validate_types(types: &[String]) -> Result<(), WebhookError> {
    for t in types {
        Pattern::parse(t).map_err(|_| {
            WebhookError::Invalid(format!("type {t:?} is not a valid event type or pattern"))
        })?;
    }
    Ok(())
}

pub(super) fn validate_description(d: Option<String>) -> Result<String, WebhookError> {
    let d = d.unwrap_or_default();
    if d.len() > 1000 {
        return Err(WebhookError::Invalid(
            "description is limited to 1000 bytes".into(),
        ));
    }
    Ok(d)
}
