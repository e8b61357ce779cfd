//! Key and value encodings for fjall. Numbers are big-endian so that byte order is numeric
//! order (range scans by seq); names are followed by a 0 byte, which no channel name or
//! endpoint id holds, so `name 0x00 seq` keys of different names never interleave.

/// The first 8 bytes as a big-endian u64. Callers check the length (stored values are ours).
pub fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// The first 4 bytes as a big-endian u32.
pub fn be_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_be_bytes(b)
}

/// `name 0x00`: the prefix of every `name_seq` key of `name`.
pub fn name_prefix(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 9);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// `name 0x00 seq(BE)`: per-channel indexes, per-endpoint tasks.
pub fn name_seq(name: &str, seq: u64) -> Vec<u8> {
    let mut k = name_prefix(name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The inverse of [`name_seq`] (None if `key` is not one).
pub fn split_name_seq(key: &[u8]) -> Option<(String, u64)> {
    if key.len() < 9 {
        return None;
    }
    let (name, rest) = key.split_at(key.len() - 9);
    (rest[0] == 0).then(|| {
        (
            String::from_utf8_lossy(name).into_owned(),
            be_u64(&rest[1..]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_seq() {
        let k = name_seq("user:1", 258);
        assert_eq!(split_name_seq(&k), Some(("user:1".into(), 258)));
        assert!(name_seq("a", 2) < name_seq("a", 256));
        assert!(
            name_seq("a", u64::MAX) < name_seq("a:", 0),
            "names never interleave"
        );
        assert!(k.starts_with(&name_prefix("user:1")));
        assert_eq!(split_name_seq(b"short"), None);
        assert_eq!(be_u32(&7u32.to_be_bytes()), 7);
    }
}
