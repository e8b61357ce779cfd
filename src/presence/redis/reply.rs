//! What the presence script returns and publishes, parsed.

use std::sync::Arc;

use redis::Value as RedisValue;
use serde::Deserialize;
use serde_json::Value;

use super::super::notify::Change;
use super::super::{Member, Notice};

/// A change as published by the script.
#[derive(Deserialize)]
pub(super) struct Published {
    c: String,
    u: String,
    j: bool,
    v: u64,
    n: u64,
    i: Value,
}

/// What a write returns for the webhook side: a published change or an occupancy notice.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Told {
    Change(Published),
    Occupancy { o: String, c: String },
}

pub(super) fn change(p: Published) -> Change {
    Change {
        channel: p.c.into(),
        user: p.u.into(),
        info: Arc::new(p.i),
        joined: p.j,
        version: p.v,
        count: p.n,
    }
}

pub(super) fn notice(t: Told) -> Option<Notice> {
    Some(match t {
        Told::Change(p) if p.j => Notice::Join {
            channel: p.c,
            user: p.u,
            info: p.i,
        },
        Told::Change(p) => Notice::Leave {
            channel: p.c,
            user: p.u,
            info: p.i,
        },
        Told::Occupancy { o, c } if o == "occupied" => Notice::Occupied { channel: c },
        Told::Occupancy { c, .. } => Notice::Vacated { channel: c },
    })
}

/// `user, info, connections` triples.
pub(super) fn members(flat: &[RedisValue]) -> Vec<Member> {
    flat.chunks_exact(3)
        .map(|m| Member {
            user: text(&m[0]).into(),
            info: Arc::new(serde_json::from_str(&text(&m[1])).unwrap_or(Value::Null)),
            connections: int(m.get(2)),
        })
        .collect()
}

pub(super) fn int(v: Option<&RedisValue>) -> u64 {
    match v {
        Some(RedisValue::Int(n)) => (*n).max(0) as u64,
        Some(v) => text(v).parse().unwrap_or(0),
        None => 0,
    }
}

pub(super) fn text(v: &RedisValue) -> String {
    match v {
        RedisValue::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        RedisValue::SimpleString(s) => s.clone(),
        RedisValue::Int(n) => n.to_string(),
        _ => String::new(),
    }
}
