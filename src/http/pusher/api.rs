//! Pusher's HTTP API, signed as Pusher signs it: `auth_key`, `auth_timestamp` (within 600 s),
//! `auth_version=1.0`, `body_md5` of a body, and `auth_signature` = hex HMAC-SHA256 with the
//! app secret of `METHOD\nPATH\n` + the other query parameters sorted by key as `k=v&...`.
//! Errors are Pusher's: a status and a plain-text reason.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use md5::Digest;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::message::event_data;
use super::{herald_channel, pusher_channel, signature_ok, valid_channel, Kind};
use crate::config::PusherApp;
use crate::event::{NewEvent, Source, NOTICE_MARK};
use crate::http::{query_pairs, AppState};

/// How far `auth_timestamp` may be from the server's clock.
const MAX_SKEW_SECS: u64 = 600;

/// Channels one trigger may name, and events one batch may hold (Pusher's limits).
const MAX_CHANNELS: usize = 100;
const MAX_BATCH: usize = 10;

/// Longest event name.
const MAX_NAME: usize = 200;

/// A refusal as Pusher gives it: status and text.
pub struct PusherError(StatusCode, String);

impl IntoResponse for PusherError {
    fn into_response(self) -> Response {
        (
            self.0,
            [("content-type", "text/plain; charset=utf-8")],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

fn bad(message: impl Into<String>) -> PusherError {
    PusherError(StatusCode::BAD_REQUEST, message.into())
}

/// The channel that carries "end this user's connections" to every node.
pub fn terminate_channel(app: &str, user: &str) -> String {
    // A user id is any text (an email, a URL): its digest is always a valid channel name.
    let user = hex::encode(<sha2::Sha256 as md5::Digest>::digest(user.as_bytes()));
    format!("pusher-terminate/{app}/{user}")
}

/// An authenticated request: its app and its decoded query.
type Checked<'a> = (&'a std::sync::Arc<PusherApp>, Vec<(String, String)>);

/// Checks the signature; returns the app and the decoded query.
fn authenticate<'a>(
    state: &'a AppState,
    app_id: &str,
    method: &Method,
    uri: &Uri,
    query: Option<&str>,
    body: &[u8],
) -> Result<Checked<'a>, PusherError> {
    let Some(app) = state.pusher.by_id(app_id) else {
        return Err(PusherError(
            StatusCode::NOT_FOUND,
            format!("Unknown app id {app_id:?}"),
        ));
    };
    let pairs = query_pairs(query).map_err(|_| bad("Invalid query string"))?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let unauthorized = |m: String| PusherError(StatusCode::UNAUTHORIZED, m);
    if get("auth_key") != Some(app.key.as_str()) {
        return Err(unauthorized("Unknown auth_key".into()));
    }
    if get("auth_version").is_some_and(|v| v != "1.0") {
        return Err(unauthorized("Unsupported auth_version: only 1.0".into()));
    }
    let now = crate::auth::now_secs();
    let ts: u64 = get("auth_timestamp")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| unauthorized("Missing or invalid auth_timestamp".into()))?;
    if ts.abs_diff(now) > MAX_SKEW_SECS {
        return Err(unauthorized(format!(
            "Timestamp expired: Given timestamp ({ts}) not within {MAX_SKEW_SECS}s of server time ({now})"
        )));
    }
    if !body.is_empty() {
        let md5 = hex::encode(md5::Md5::digest(body));
        if get("body_md5") != Some(md5.as_str()) {
            return Err(unauthorized("body_md5 does not match the body".into()));
        }
    }
    let mut signed: Vec<(String, &str)> = pairs
        .iter()
        .filter(|(k, _)| k != "auth_signature")
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    signed.sort();
    let query_text: Vec<String> = signed.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let text = format!(
        "{}\n{}\n{}",
        method.as_str(),
        uri.path(),
        query_text.join("&")
    );
    let given = get("auth_signature").unwrap_or("");
    if !signature_ok(&app.secret, &text, given) {
        return Err(unauthorized(format!(
            "Invalid signature: Expected HMAC SHA256 hex digest of {text:?}"
        )));
    }
    Ok((app, pairs))
}

/// A request of a Pusher app, its signature checked before the handler runs: the app, the
/// decoded query and the body (read within the usual bounds; empty for GET).
pub struct Signed {
    app: std::sync::Arc<PusherApp>,
    pairs: Vec<(String, String)>,
    body: axum::body::Bytes,
}

impl Signed {
    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl axum::extract::FromRequest<AppState> for Signed {
    type Rejection = PusherError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Signed, PusherError> {
        let (parts, body) = req.into_parts();
        // `/apps/{id}/...`
        let app_id = parts.uri.path().split('/').nth(2).unwrap_or("").to_string();
        let bytes = read(body, state).await?;
        let (app, pairs) = authenticate(
            state,
            &app_id,
            &parts.method,
            &parts.uri,
            parts.uri.query(),
            &bytes,
        )?;
        Ok(Signed {
            app: app.clone(),
            pairs,
            body: bytes,
        })
    }
}

/// One trigger: `name`, `data` (a string), `channels` or `channel`, `socket_id`, `info`.
#[derive(Deserialize)]
struct Trigger {
    name: String,
    data: Value,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

#[derive(Deserialize)]
struct Batch {
    batch: Vec<Trigger>,
}

/// Herald events for one trigger (one per channel), checked as Pusher checks them.
fn events_of(app: &PusherApp, t: &Trigger) -> Result<(Vec<NewEvent>, Vec<String>), PusherError> {
    let channels: Vec<String> = match (&t.channels, &t.channel) {
        (Some(c), _) => c.clone(),
        (None, Some(c)) => vec![c.clone()],
        (None, None) => return Err(bad("Missing channels")),
    };
    if channels.is_empty() || channels.len() > MAX_CHANNELS {
        return Err(bad(format!("Between 1 and {MAX_CHANNELS} channels")));
    }
    if t.name.is_empty() || t.name.len() > MAX_NAME {
        return Err(bad(format!("Event name must be 1-{MAX_NAME} characters")));
    }
    if t.name.starts_with("pusher:") || t.name.starts_with("pusher_internal:") {
        return Err(bad("Event names starting with pusher: are reserved"));
    }
    if let Some(c) = channels.iter().find(|c| !valid_channel(c)) {
        return Err(bad(format!(
            "Invalid channel name {:?}",
            crate::event::excerpt(c)
        )));
    }
    if let Some(s) = &t.socket_id {
        let ok = s.split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && (a.to_string() + b).bytes().all(|c| c.is_ascii_digit())
        });
        if !ok {
            return Err(bad(format!(
                "Invalid socket_id {:?}",
                crate::event::excerpt(s)
            )));
        }
    }
    let data = match &t.data {
        Value::String(s) => event_data(s),
        other => serde_json::value::RawValue::from_string(other.to_string()).expect("JSON"),
    };
    if data.get().len() > app.max_event_bytes {
        return Err(PusherError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Event data over {} bytes", app.max_event_bytes),
        ));
    }
    let events = channels
        .iter()
        .map(|c| {
            NewEvent::new(
                Source::Pusher,
                herald_channel(&app.id, c),
                Some(t.name.clone()),
                data.clone(),
                Some(super::origin_id(t.socket_id.as_deref(), None)),
            )
            .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok((events, channels))
}

async fn read(body: Body, state: &AppState) -> Result<axum::body::Bytes, PusherError> {
    let limit = state.config.limits.max_body_bytes.min(1024 * 1024);
    crate::http::api::read_body(body, limit, &state.config.limits)
        .await
        .map_err(|e| PusherError(e.status, e.message))
}

async fn publish(state: &AppState, events: Vec<NewEvent>) -> Result<(), PusherError> {
    state
        .hub
        .publish(events, "pusher")
        .await
        .map(|_| ())
        .map_err(|e| {
            let e = crate::http::ApiError::from(e);
            PusherError(e.status, e.message)
        })
}

/// `POST /apps/{id}/events`.
pub async fn events(
    State(state): State<AppState>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Json<Value>, PusherError> {
    let bytes = read(body, &state).await?;
    let (app, _) = authenticate(&state, &app_id, &method, &uri, query.as_deref(), &bytes)?;
    let t: Trigger =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("Invalid JSON: {e}")))?;
    let (events, channels) = events_of(app, &t)?;
    publish(&state, events).await?;
    match &t.info {
        None => Ok(Json(json!({}))),
        Some(info) => {
            let mut out = Map::new();
            for c in &channels {
                out.insert(c.clone(), channel_info(&state, app, c, info).await?);
            }
            Ok(Json(json!({"channels": out})))
        }
    }
}

/// `POST /apps/{id}/batch_events`: up to 10 triggers, stored atomically.
pub async fn batch_events(
    State(state): State<AppState>,
    req: Signed,
) -> Result<Json<Value>, PusherError> {
    let app = &req.app;
    let b: Batch =
        serde_json::from_slice(&req.body).map_err(|e| bad(format!("Invalid JSON: {e}")))?;
    if b.batch.is_empty() || b.batch.len() > MAX_BATCH {
        return Err(bad(format!("Between 1 and {MAX_BATCH} events per batch")));
    }
    let mut all = Vec::new();
    for t in &b.batch {
        all.extend(events_of(app, t)?.0);
    }
    publish(&state, all).await?;
    if b.batch.iter().all(|t| t.info.is_none()) {
        return Ok(Json(json!({})));
    }
    let mut infos = Vec::new();
    for t in &b.batch {
        let c = t
            .channel
            .clone()
            .or_else(|| t.channels.as_ref().and_then(|c| c.first().cloned()));
        infos.push(match (&t.info, c) {
            (Some(info), Some(c)) => channel_info(&state, app, &c, info).await?,
            _ => json!({}),
        });
    }
    Ok(Json(json!({"batch": infos})))
}

/// `{"user_count"?, "subscription_count"?}` as `info` asks (user_count: presence only).
async fn channel_info(
    state: &AppState,
    app: &PusherApp,
    channel: &str,
    info: &str,
) -> Result<Value, PusherError> {
    let wants = |k: &str| info.split(',').any(|i| i.trim() == k);
    let mapped = herald_channel(&app.id, channel);
    let mut out = Map::new();
    if wants("user_count") || wants("subscription_count") {
        let page = state
            .presence
            .channels(&mapped, None, 1)
            .await
            .map_err(|e| PusherError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let here = page.channels.into_iter().find(|c| c.channel == mapped);
        if wants("user_count") {
            if Kind::of(channel) != Kind::Presence {
                return Err(bad("user_count is only available for presence channels"));
            }
            out.insert(
                "user_count".into(),
                here.as_ref().map_or(0, |c| c.members).into(),
            );
        }
        if wants("subscription_count") {
            out.insert(
                "subscription_count".into(),
                here.as_ref().map_or(0, |c| c.subscribers).into(),
            );
        }
    }
    Ok(Value::Object(out))
}

/// `GET /apps/{id}/channels[?filter_by_prefix=P][&info=user_count]`: occupied channels.
pub async fn channels(
    State(state): State<AppState>,
    req: Signed,
) -> Result<Json<Value>, PusherError> {
    let app = &req.app;
    let prefix = req.get("filter_by_prefix").unwrap_or_default();
    let info = req.get("info").unwrap_or_default();
    let user_count = info.split(',').any(|i| i.trim() == "user_count");
    if user_count && !prefix.starts_with("presence-") {
        return Err(bad("user_count needs filter_by_prefix=presence-"));
    }
    let mapped = herald_channel(&app.id, prefix);
    let mut out = Map::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .presence
            .channels(&mapped, after.as_deref(), crate::presence::MAX_PAGE)
            .await
            .map_err(|e| PusherError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        for c in &page.channels {
            let Some(name) = pusher_channel(&app.id, &c.channel) else {
                continue;
            };
            if c.subscribers == 0 {
                continue;
            }
            let mut v = Map::new();
            if user_count {
                v.insert("user_count".into(), c.members.into());
            }
            out.insert(name, Value::Object(v));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(Json(json!({"channels": out})))
}

/// `GET /apps/{id}/channels/{name}[?info=user_count,subscription_count]`.
pub async fn channel(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    req: Signed,
) -> Result<Json<Value>, PusherError> {
    let app = &req.app;
    if !valid_channel(&name) {
        return Err(bad("Invalid channel name"));
    }
    let info = req.get("info").unwrap_or_default();
    let mut v = channel_info(&state, app, &name, &format!("{info},subscription_count")).await?;
    let subscribers = v["subscription_count"].as_u64().unwrap_or(0);
    if !info.split(',').any(|i| i.trim() == "subscription_count") {
        v.as_object_mut().map(|o| o.remove("subscription_count"));
    }
    v["occupied"] = (subscribers > 0).into();
    Ok(Json(v))
}

/// `GET /apps/{id}/channels/{name}/users`: a presence channel's user ids.
pub async fn users(
    State(state): State<AppState>,
    Path((_, name)): Path<(String, String)>,
    req: Signed,
) -> Result<Json<Value>, PusherError> {
    let app = &req.app;
    if Kind::of(&name) != Kind::Presence || !valid_channel(&name) {
        return Err(bad("Users are only available for presence channels"));
    }
    let mapped = herald_channel(&app.id, &name);
    let mut users = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = state
            .presence
            .members(&mapped, after.as_deref(), crate::presence::MAX_PAGE)
            .await
            .map_err(|e| PusherError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        users.extend(page.members.iter().map(|m| json!({"id": &*m.user})));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(Json(json!({"users": users})))
}

/// `POST /apps/{id}/users/{user}/terminate_connections`: every node ends that user's
/// signed-in connections (the request travels as an event on a notice channel).
pub async fn terminate(
    State(state): State<AppState>,
    Path((_, user)): Path<(String, String)>,
    req: Signed,
) -> Result<Json<Value>, PusherError> {
    let app = &req.app;
    let event = NewEvent::new(
        Source::Internal,
        format!(
            "{}{}",
            char::from(NOTICE_MARK),
            terminate_channel(&app.id, &user)
        ),
        Some("terminate".into()),
        serde_json::value::RawValue::from_string("{}".into()).expect("JSON"),
        None,
    )
    .map_err(|e| bad(e.to_string()))?;
    publish(&state, vec![event]).await?;
    Ok(Json(json!({})))
}
