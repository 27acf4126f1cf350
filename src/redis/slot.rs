//! Redis Cluster slots and hash tags.
//!
//! A cluster stores a key in one of 16,384 slots, by CRC16 of the key — or of
//! the part between the first `{` and the next `}` (the hash tag) when there
//! is one. A Lua script may only touch keys of one slot, so every group of keys
//! a script touches shares a hash tag: `{prefix}` for the whole cache,
//! `{prefix:lease:<key>}` for one lease, `{prefix:instances}` for the registry.
//! The slot number is needed to send a command to "the node that owns this
//! tag" (a SCAN of the cache's keys, the sharded pub/sub subscription).

/// Number of slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The slot of `key`, as Redis Cluster computes it.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            // An empty tag `{}` does not count: the whole key is hashed.
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// `{tag}`: a hash tag, so keys starting with it share one slot.
pub fn tag(tag: &str) -> String {
    format!("{{{tag}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{lp}:epoch"), 12496);
        assert_eq!(slot(b"{lp}:e:abc"), slot(b"{lp}"));
        assert_eq!(slot(b"{}x"), slot(b"{}x"));
        assert_ne!(slot(b"{}foo"), slot(b"foo"));
        assert_eq!(tag("letta-proxy"), "{letta-proxy}");
    }
}
