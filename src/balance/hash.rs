//! A small, fast, *stable* 64-bit string hash for the affinity ring.
//!
//! Stable means the same bytes hash the same on every build, platform and
//! release: two proxies in front of the same replicas, or one proxy before
//! and after an upgrade, must send an agent to the same backend. std's
//! `DefaultHasher` promises none of that, so this is spelled out here and
//! pinned by a test.
//!
//! The shape is modelled on MurmurHash3 x64: one lane of its block step over
//! 8-byte little-endian words, then its `fmix64` finaliser for full avalanche,
//! so similar names (`backend-1`, `backend-2`) and similar agent ids spread
//! evenly over the ring. It is not meant to resist chosen inputs; the load
//! bound does that.

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;
/// Start value, so that the empty string does not hash to 0.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hash of `bytes`.
pub(super) fn hash64(bytes: &[u8]) -> u64 {
    let mut h = SEED ^ (bytes.len() as u64).wrapping_mul(C1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(word);
        h ^= scramble(u64::from_le_bytes(buf));
        h = h.rotate_left(27).wrapping_mul(5).wrapping_add(0x52dc_e729);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut buf = [0u8; 8];
        buf[..tail.len()].copy_from_slice(tail);
        h ^= scramble(u64::from_le_bytes(buf));
    }
    fmix64(h)
}

/// Point of virtual node `replica` of a backend whose name hashes to `name_hash`.
pub(super) fn vnode(name_hash: u64, replica: u64) -> u64 {
    fmix64(name_hash ^ fmix64(replica.wrapping_add(1).wrapping_mul(C2)))
}

fn scramble(word: u64) -> u64 {
    word.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2)
}

/// MurmurHash3's finaliser: a bijection where each input bit flips each output
/// bit with probability about ½.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Changing these values re-homes every agent of every deployment: only
    /// do it on purpose, with a release note.
    #[test]
    fn values_are_pinned() {
        let got = [
            hash64(b""),
            hash64(b"backend-1"),
            hash64(b"agent-00000000-0000-4000-8000-000000000000"),
            vnode(hash64(b"letta-a"), 99),
        ];
        assert_eq!(got, PINNED, "pinned hashes changed: {got:#018x?}");
    }

    const PINNED: [u64; 4] = [
        0x9ca0_66f1_a4ab_2eea,
        0xb2ee_0bd7_1a3c_c7f7,
        0x4d23_26a6_8960_f60a,
        0x3d00_7308_3dc5_5616,
    ];

    #[test]
    fn every_byte_and_the_length_matter() {
        let base = hash64(b"agent-1234567890abcdef");
        assert_ne!(base, hash64(b"agent-1234567890abcdeg"));
        assert_ne!(base, hash64(b"bgent-1234567890abcdef"));
        assert_ne!(hash64(b"ab"), hash64(b"ab\0"));
        assert_ne!(hash64(b""), hash64(b"\0"));
    }

    #[test]
    fn similar_keys_spread_evenly() {
        // 64k sequential ids into 16 buckets by the top bits: each within 5%.
        let mut buckets = [0u32; 16];
        for i in 0..65_536u32 {
            buckets[(hash64(format!("agent-{i}").as_bytes()) >> 60) as usize] += 1;
        }
        for &b in &buckets {
            assert!((3_891..=4_301).contains(&b), "{buckets:?}");
        }
    }
}
