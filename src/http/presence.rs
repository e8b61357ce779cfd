//! Presence over HTTP: joining (for the SSE and WS transports), `GET /v1/presence` (a
//! channel's members, paged) and `GET /v1/channels` (occupancy).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::Json;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{query_get, query_pairs, query_token, ApiError, AppState};
use crate::auth::{Principal, Via};
use crate::event::validate_channel;
use crate::presence::{Identity, Snapshot, Update, Watch};

/// Members or channels per page unless `limit` says otherwise.
const DEFAULT_PAGE: usize = 100;

impl AppState {
    /// Makes the caller a member of `channel`: who they are comes from the credential (or,
    /// in open mode and with an API key, from `user`/`info`).
    pub async fn join_presence(
        &self,
        principal: &Principal,
        channel: &str,
        user: Option<&str>,
        info: Option<Value>,
    ) -> Result<(Watch, Snapshot), ApiError> {
        if channel.contains('*') {
            return Err(crate::presence::PresenceError::Pattern(channel.into()).into());
        }
        let (user, info) =
            self.auth
                .presence_identity(principal, channel, user, info.map(Arc::new))?;
        let identity = Identity::new(&user, info, self.presence.config())?;
        Ok(self.presence.join(channel, identity).await?)
    }
}

/// A watch as a stream of updates (ends if the presence store fails on a resync).
pub fn updates(watch: Watch) -> BoxStream<'static, Update> {
    futures_util::stream::unfold(watch, |mut w| async move {
        let update = w.next().await?;
        Some((update, w))
    })
    .boxed()
}

/// `GET /v1/presence?channel=C[&after=USER][&limit=N]`: whoever may subscribe to the channel
/// may see who is in it.
pub async fn members(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(query.as_deref())?;
    let get = |name: &str| query_get(&pairs, name);
    let Some(channel) = get("channel") else {
        return Err(ApiError::bad_request(
            "missing_channel",
            "give channel=NAME (one channel, not a pattern)",
        ));
    };
    validate_channel(channel)?;
    let principal = app.principal(&headers, query_token(&pairs), Via::Read)?;
    app.auth.check_subscribe(&principal, channel)?;
    let limit = page_limit(get("limit"))?;
    let page = app.presence.members(channel, get("after"), limit).await?;
    Ok(Json(json!({
        "channel": channel,
        "count": page.count,
        "members": page.members.iter().map(|m| m.json()).collect::<Vec<_>>(),
        "next": page.next,
    })))
}

/// `GET /v1/channels[?prefix=P][&after=C][&limit=N]`: channels with subscribers or members,
/// in name order. Names alone say a lot, so this needs an admin credential.
pub async fn channels(
    State(app): State<AppState>,
    _: super::Admin,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(query.as_deref())?;
    let get = |name: &str| query_get(&pairs, name);
    let limit = page_limit(get("limit"))?;
    let page = app
        .presence
        .channels(get("prefix").unwrap_or(""), get("after"), limit)
        .await?;
    let channels: Vec<Value> = page
        .channels
        .iter()
        .map(|c| json!({"channel": c.channel, "subscribers": c.subscribers, "members": c.members}))
        .collect();
    Ok(Json(json!({"channels": channels, "next": page.next})))
}

fn page_limit(text: Option<&str>) -> Result<usize, ApiError> {
    let max = crate::presence::MAX_PAGE;
    match text {
        None => Ok(DEFAULT_PAGE),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be 1-{max}"),
            )),
        },
    }
}
