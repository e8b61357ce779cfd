//! Subscribing: names, signatures, presence (members as Pusher reports them) and cache
//! channels.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use yawc::Frame;

use super::super::message::{self, data_as, ChannelData, ClientFrame, PusherEvent, SubscribeData};
use super::super::{herald_channel, is_cache, signature_ok, valid_channel, Kind};
use super::{items, Close, Session, OVER_CAPACITY};
use crate::event::Filter;
use crate::http::presence::updates;
use crate::http::wire::{Framing, Taker};
use crate::presence::{Identity, Update};

impl Session {
    /// Presence changes as `member_added` / `member_removed` (a fresh list is compared with
    /// what this socket knew).
    pub(super) async fn tell_members(
        &mut self,
        channel: &str,
        update: Update,
    ) -> Result<(), Close> {
        let Some((me, known)) = self.members.get_mut(channel) else {
            return Ok(());
        };
        let mut out = Vec::new();
        match update {
            Update::Diff(d) => {
                for e in &d.entries {
                    let user = e.user.to_string();
                    if e.joined && &user != me && known.insert(user.clone()) {
                        out.push(message::member_added(channel, &user, &e.info));
                    } else if !e.joined && &user != me && known.remove(&user) {
                        out.push(message::member_removed(channel, &user));
                    }
                }
            }
            Update::Sync(s) => {
                let now: HashMap<String, Value> = s
                    .members
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| (m.user.to_string(), (*m.info).clone()))
                    .collect();
                for gone in known.iter().filter(|u| !now.contains_key(*u)) {
                    out.push(message::member_removed(channel, gone));
                }
                for (user, info) in &now {
                    if !known.contains(user) && user != me {
                        out.push(message::member_added(channel, user, info));
                    }
                }
                *known = now.into_keys().collect();
            }
        }
        for m in out {
            self.send(m).await?;
        }
        Ok(())
    }

    pub(super) async fn on_subscribe(&mut self, frame: ClientFrame) -> Result<(), Close> {
        let Some(d) = data_as::<SubscribeData>(frame.data.as_deref()) else {
            return self
                .send(message::error(None, "pusher:subscribe needs data.channel"))
                .await;
        };
        let name = d.channel.clone();
        if !valid_channel(&name) {
            let m = "Invalid channel name: 1-164 of A-Z a-z 0-9 _ - = @ , . ;";
            return self
                .send(message::subscription_error(&name, "InvalidChannel", m, 400))
                .await;
        }
        let kind = Kind::of(&name);
        if kind.needs_auth() {
            let mut signed = format!("{}:{}", self.socket_id, name);
            if kind == Kind::Presence {
                signed.push(':');
                signed.push_str(d.channel_data.as_deref().unwrap_or(""));
            }
            let good = d
                .auth
                .as_deref()
                .and_then(|a| a.split_once(':'))
                .is_some_and(|(key, sig)| {
                    key == self.pusher.key && signature_ok(&self.pusher.secret, &signed, sig)
                });
            if !good {
                let m = "Invalid signature: the auth does not match this socket and channel";
                return self
                    .send(message::subscription_error(&name, "AuthError", m, 401))
                    .await;
            }
        }
        if !self.subs.contains_key(&name)
            && self.subs.len() >= self.app.config.limits.max_subscriptions
        {
            let m = "Too many subscriptions on this connection (limits.max_subscriptions)";
            return self
                .send(message::subscription_error(&name, "LimitReached", m, 403))
                .await;
        }
        let mapped = herald_channel(&self.pusher.id, &name);
        let Ok(filter) = Filter::parse([mapped.as_str()]) else {
            // Every valid Pusher name maps to a valid Herald name (`MAX_MAPPED_LEN`); should
            // that ever break, this channel is refused, not the connection.
            let m = "This channel name cannot be mapped to a Herald channel";
            return self
                .send(message::subscription_error(&name, "InvalidChannel", m, 400))
                .await;
        };
        let data = if kind == Kind::Presence {
            match self
                .join_presence(&name, &mapped, d.channel_data.as_deref())
                .await
            {
                Ok(data) => data,
                Err(m) => return self.send(m).await,
            }
        } else {
            json!({})
        };
        let occupant = self.app.presence.occupy(&mapped);
        // On a plain connection the hub writes caught-up events to the socket itself.
        let direct = self.wire.as_ref().map(|wire| {
            let framing = Framing::Pusher {
                socket_id: self.socket_id.as_str().into(),
                channel: name.as_str().into(),
            };
            Arc::new(Taker::new(wire.clone(), framing)) as Arc<dyn crate::hub::Direct>
        });
        let subscription = self
            .app
            .hub
            .subscribe_direct(filter, None, self.lagged.clone(), direct)
            .counted(crate::stats::Transport::Pusher);
        self.subs
            .insert(name.clone(), items(subscription, occupant));
        self.send(message::subscribed(&name, data)).await?;
        if is_cache(&name) {
            self.send_cached(&name, &mapped).await?;
        }
        Ok(())
    }

    /// Joins Herald presence as the `channel_data` user; the reply's `presence` object.
    pub(super) async fn join_presence(
        &mut self,
        name: &str,
        mapped: &str,
        channel_data: Option<&str>,
    ) -> Result<Value, Frame> {
        let parsed: Option<ChannelData> = channel_data.and_then(|t| serde_json::from_str(t).ok());
        let Some((user, info)) = parsed.and_then(|c| Some((c.user_id()?, c.user_info))) else {
            return Err(message::subscription_error(
                name,
                "AuthError",
                "channel_data must hold a user_id",
                400,
            ));
        };
        let info = info.map(Arc::new);
        let identity = match Identity::new(&user, info, self.app.presence.config()) {
            Ok(i) => i,
            Err(e) => {
                return Err(message::subscription_error(
                    name,
                    "AuthError",
                    &e.to_string(),
                    400,
                ))
            }
        };
        let (watch, snapshot) = match self.app.presence.join(mapped, identity).await {
            Ok(j) => j,
            Err(e) => {
                return Err(message::subscription_error(
                    name,
                    "ServerError",
                    &e.to_string(),
                    503,
                ))
            }
        };
        let Some(members) = snapshot.members else {
            let m = format!(
                "presence channel is over capacity ({} members, presence.list_limit)",
                snapshot.count
            );
            return Err(message::subscription_error(
                name,
                "OverCapacity",
                &m,
                OVER_CAPACITY,
            ));
        };
        let ids: Vec<&str> = members.iter().map(|m| &*m.user).collect();
        let hash: serde_json::Map<String, Value> = members
            .iter()
            .map(|m| (m.user.to_string(), (*m.info).clone()))
            .collect();
        let presence = json!({"presence": {"ids": ids, "hash": hash, "count": members.len()}});
        let known = members.iter().map(|m| m.user.to_string()).collect();
        self.members.insert(name.to_string(), (user, known));
        self.watches.insert(name.to_string(), updates(watch));
        Ok(presence)
    }

    /// A cache channel's last event, or `pusher:cache_miss`.
    pub(super) async fn send_cached(&mut self, name: &str, mapped: &str) -> Result<(), Close> {
        let last = self.app.pusher.cached(mapped);
        let frame = last
            .as_ref()
            .and_then(|e| e.extension(|e| PusherEvent::of(e, name)))
            .and_then(PusherEvent::text);
        match frame {
            Some(f) => self.send(Frame::text(f)).await,
            None => self.send(message::cache_miss(name)).await,
        }
    }
}
