//! The stored form of an event: what history needs (time, channel, type) readable without
//! parsing JSON, then the envelope as it was encoded at commit. A version byte leads, so the
//! layout can change.

use super::*;

/// The stored form of an event: what history needs without parsing JSON.
/// `[version u8][time_ms u64][channel_len u16][channel][type_len u16][type][envelope]`
pub(super) struct Record<'a> {
    pub(super) time_ms: u64,
    pub(super) channel: &'a str,
    pub(super) kind: Option<&'a str>,
    pub(super) envelope_at: usize,
}

impl<'a> Record<'a> {
    const VERSION: u8 = 1;

    pub(super) fn encode(event: &Event) -> Vec<u8> {
        let kind = event.kind.as_deref().unwrap_or("");
        let mut out =
            Vec::with_capacity(13 + event.channel.len() + kind.len() + event.envelope().len());
        out.push(Self::VERSION);
        out.extend_from_slice(&event.time_ms.to_be_bytes());
        out.extend_from_slice(&(event.channel.len() as u16).to_be_bytes());
        out.extend_from_slice(event.channel.as_bytes());
        out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(event.envelope());
        out
    }

    pub(super) fn decode(bytes: &'a [u8]) -> Result<Record<'a>, LogError> {
        let corrupt = || LogError::Storage(StoreError::Corrupt("event record".into()));
        if bytes.len() < 13 || bytes[0] != Self::VERSION {
            return Err(corrupt());
        }
        let time_ms = be_u64(&bytes[1..9]);
        let clen = u16::from_be_bytes([bytes[9], bytes[10]]) as usize;
        let cend = 11 + clen;
        let tlen_at = bytes.get(cend..cend + 2).ok_or_else(corrupt)?;
        let tlen = u16::from_be_bytes([tlen_at[0], tlen_at[1]]) as usize;
        let tend = cend + 2 + tlen;
        if bytes.len() < tend {
            return Err(corrupt());
        }
        let text =
            |r: std::ops::Range<usize>| std::str::from_utf8(&bytes[r]).map_err(|_| corrupt());
        Ok(Record {
            time_ms,
            channel: text(11..cend)?,
            kind: (tlen > 0).then(|| text(cend + 2..tend)).transpose()?,
            envelope_at: tend,
        })
    }

    pub(super) fn into_event(self, seq: u64, raw: &[u8]) -> Event {
        Event::from_parts(
            seq,
            self.channel.into(),
            self.kind.map(Into::into),
            self.time_ms,
            Bytes::copy_from_slice(&raw[self.envelope_at..]),
        )
    }
}
