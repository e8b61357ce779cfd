//! Presence on one node: in memory, under one lock. Nothing is persisted: a restart ends
//! every connection, and with them every membership.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::Value;

use super::{Change, ChannelInfo, ChannelsPage, Identity, Member, MembersPage, Notice, Snapshot};

#[derive(Default)]
pub struct LocalState {
    /// In name order, for paging `GET /v1/channels`.
    rooms: BTreeMap<Arc<str>, Room>,
    /// Bumped by every membership change, on every channel.
    version: u64,
}

#[derive(Default)]
struct Room {
    /// In user order, for paging.
    members: BTreeMap<Arc<str>, Present>,
    subscribers: u64,
}

struct Present {
    info: Arc<Value>,
    connections: u64,
}

impl LocalState {
    pub fn join(
        &mut self,
        channel: &Arc<str>,
        member: &Identity,
    ) -> (Option<Change>, Option<Notice>) {
        let room = self.rooms.entry(channel.clone()).or_default();
        if let Some(present) = room.members.get_mut(&member.user) {
            present.connections += 1;
            return (None, None);
        }
        room.members.insert(
            member.user.clone(),
            Present {
                info: member.info.clone(),
                connections: 1,
            },
        );
        self.version += 1;
        let change = Change {
            channel: channel.clone(),
            user: member.user.clone(),
            info: member.info.clone(),
            joined: true,
            version: self.version,
            count: room.members.len() as u64,
        };
        let notice = Notice::Join {
            channel: channel.to_string(),
            user: member.user.to_string(),
            info: (*member.info).clone(),
        };
        (Some(change), Some(notice))
    }

    pub fn leave(
        &mut self,
        channel: &Arc<str>,
        user: &Arc<str>,
    ) -> Option<(Change, Option<Notice>)> {
        let room = self.rooms.get_mut(channel)?;
        let present = room.members.get_mut(user)?;
        present.connections -= 1;
        if present.connections > 0 {
            return None;
        }
        let gone = room.members.remove(user)?;
        let count = room.members.len() as u64;
        if room.members.is_empty() && room.subscribers == 0 {
            self.rooms.remove(channel);
        }
        self.version += 1;
        let change = Change {
            channel: channel.clone(),
            user: user.clone(),
            info: gone.info.clone(),
            joined: false,
            version: self.version,
            count,
        };
        let notice = Notice::Leave {
            channel: channel.to_string(),
            user: user.to_string(),
            info: (*gone.info).clone(),
        };
        Some((change, Some(notice)))
    }

    /// Moves a channel's subscriber count; the first subscriber occupies it, the last
    /// leaving vacates it.
    pub fn occupy(&mut self, channel: &Arc<str>, delta: i64) -> Option<Notice> {
        let room = self.rooms.entry(channel.clone()).or_default();
        let before = room.subscribers;
        room.subscribers = before.saturating_add_signed(delta);
        let after = room.subscribers;
        if after == 0 && room.members.is_empty() {
            self.rooms.remove(channel);
        }
        let channel = channel.to_string();
        match (before, after) {
            (0, 1..) => Some(Notice::Occupied { channel }),
            (1.., 0) => Some(Notice::Vacated { channel }),
            _ => None,
        }
    }

    pub fn snapshot(&self, channel: &Arc<str>, limit: usize) -> Snapshot {
        let room = self.rooms.get(channel);
        let count = room.map_or(0, |r| r.members.len()) as u64;
        let members = (count as usize <= limit).then(|| {
            room.map(|r| r.members.iter().map(member).collect())
                .unwrap_or_default()
        });
        Snapshot {
            channel: channel.clone(),
            count,
            members,
            version: self.version,
        }
    }

    pub fn members(&self, channel: &str, after: Option<&str>, limit: usize) -> MembersPage {
        let Some(room) = self.rooms.get(channel) else {
            return MembersPage {
                count: 0,
                members: Vec::new(),
                next: None,
            };
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let members: Vec<Member> = room
            .members
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .map(member)
            .collect();
        let next = page_end(&members, limit, |m| m.user.to_string());
        MembersPage {
            count: room.members.len() as u64,
            members,
            next,
        }
    }

    pub fn channels(&self, prefix: &str, after: Option<&str>, limit: usize) -> ChannelsPage {
        let from = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let channels: Vec<ChannelInfo> = self
            .rooms
            .range::<str, _>((from, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            .take(limit)
            .map(|(name, room)| ChannelInfo {
                channel: name.to_string(),
                subscribers: room.subscribers,
                members: room.members.len() as u64,
            })
            .collect();
        let next = page_end(&channels, limit, |c| c.channel.clone());
        ChannelsPage { channels, next }
    }
}

fn member((user, present): (&Arc<str>, &Present)) -> Member {
    Member {
        user: user.clone(),
        info: present.info.clone(),
        connections: present.connections,
    }
}

/// The cursor for the next page: the last key of a full page.
pub(super) fn page_end<T>(page: &[T], limit: usize, key: impl Fn(&T) -> String) -> Option<String> {
    (page.len() == limit)
        .then(|| page.last().map(key))
        .flatten()
}
