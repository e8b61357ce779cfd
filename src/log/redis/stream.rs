//! Parsing Redis replies: stream entries `[id, [field, value, ...]]` into events, integers and
//! bulk strings.

use super::*;

pub(super) fn corrupt(what: &str) -> LogError {
    LogError::Storage(StoreError::Corrupt(format!("redis reply ({what})")))
}

pub(super) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// One stream entry `[id, [field, value, ...]]` as an event.
pub(super) fn entry(v: &Value) -> Result<EventRef, LogError> {
    let Value::Array(pair) = v else {
        return Err(corrupt("stream entry"));
    };
    let id = pair
        .first()
        .and_then(bytes_of)
        .ok_or_else(|| corrupt("id"))?;
    let seq = std::str::from_utf8(id)
        .ok()
        .and_then(|s| s.split('-').next())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| corrupt("id"))?;
    let Some(Value::Array(fields)) = pair.get(1) else {
        return Err(corrupt("entry fields"));
    };
    let (mut channel, mut kind, mut time, mut envelope) = (None, None, 0, None);
    for kv in fields.chunks(2) {
        let (Some(k), Some(val)) = (bytes_of(&kv[0]), kv.get(1).and_then(bytes_of)) else {
            continue;
        };
        let text = || std::str::from_utf8(val).map_err(|_| corrupt("text field"));
        match k {
            b"c" => channel = Some(text()?.into()),
            b"k" if !val.is_empty() => kind = Some(text()?.into()),
            b"t" => time = text()?.parse().unwrap_or(0),
            b"e" => envelope = Some(Bytes::copy_from_slice(val)),
            _ => {}
        }
    }
    let (Some(channel), Some(envelope)) = (channel, envelope) else {
        return Err(corrupt("entry without channel or envelope"));
    };
    Ok(Arc::new(Event::from_parts(
        seq, channel, kind, time, envelope,
    )))
}

pub(super) fn int_of(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Int(n)) => (*n).max(0) as u64,
        Some(other) => bytes_of(other)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
            .unwrap_or(0),
        None => 0,
    }
}
