//! This instance's share of a backend's `max_in_flight`, from the live
//! instances in the registry. Pure, so every instance computes the same split
//! from the same membership.
//!
//! Why shares rather than a shared counter in Redis: a shared counter is exact
//! but costs every request a round trip before it may start (and another when
//! it ends), puts Redis on the path of every request, and needs its own
//! crash recovery (slots held by a dead instance). A share costs nothing per
//! request — the cap stays the lock-free compare-and-swap it is today — and a
//! dead instance's share returns by itself when it leaves the registry. What
//! shares give up is work conservation: an instance with no traffic keeps
//! its share idle while a busy one queues, and membership is seen one
//! heartbeat late, so for a heartbeat after an instance joins the sum of the
//! shares can exceed the cap by the newcomer's share. For what the cap
//! protects (Letta's Postgres pool, a limit of tens) behind a TCP balancer
//! that spreads clients evenly, that is the better trade.
//!
//! The cap is split as evenly as integers allow: every instance gets
//! `cap / n`, and `cap % n` of them one more. Which instances get the extra
//! slots rotates with the backend (by a hash of its name), so with several
//! backends capped below the number of instances every instance still gets a
//! slot somewhere.

/// This instance's cap on `backend`. `cap` 0 means unlimited (→ `None`);
/// `live` are the live instance ids (any order), `me` this instance's id.
/// An instance not (yet) in `live` gets the whole cap (it acts alone). The
/// result may be `Some(0)`: this instance must not use that backend.
pub fn share(cap: u64, backend: &str, live: &[&str], me: &str) -> Option<u64> {
    if cap == 0 {
        return None;
    }
    let mut ids: Vec<&str> = live.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let Some(index) = ids.iter().position(|id| *id == me) else {
        return Some(cap);
    };
    let n = ids.len() as u64;
    let (base, extra) = (cap / n, cap % n);
    let rotation = fnv1a(backend.as_bytes()) % n;
    let rank = (index as u64 + n - rotation) % n;
    Some(base + u64::from(rank < extra))
}

/// FNV-1a: stable across processes and versions (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_sum_to_the_cap_and_differ_by_at_most_one() {
        let ids = ["c", "a", "b"];
        for cap in 1..20 {
            for backend in ["letta-1", "letta-2", "x"] {
                let shares: Vec<u64> = ids
                    .iter()
                    .map(|me| share(cap, backend, &ids, me).unwrap())
                    .collect();
                assert_eq!(shares.iter().sum::<u64>(), cap, "{cap} {backend}");
                let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(hi - lo <= 1, "{shares:?}");
            }
        }
    }

    #[test]
    fn unlimited_stays_unlimited_and_strangers_get_everything() {
        assert_eq!(share(0, "b", &["a", "b"], "a"), None);
        assert_eq!(share(5, "b", &["a", "b"], "z"), Some(5));
        assert_eq!(share(5, "b", &["a"], "a"), Some(5));
        assert_eq!(share(5, "b", &[], "a"), Some(5));
    }

    #[test]
    fn small_caps_rotate_between_backends() {
        // Two backends capped at 2 over three instances: each instance gets
        // at least one slot on some backend (for these names).
        let ids = ["i1", "i2", "i3"];
        for me in ids {
            let total: u64 = ["letta-1", "letta-2"]
                .iter()
                .map(|b| share(2, b, &ids, me).unwrap())
                .sum();
            assert!(total >= 1, "{me} has no slot anywhere");
        }
    }

    #[test]
    fn the_order_of_the_list_does_not_matter() {
        assert_eq!(
            share(7, "b", &["x", "y", "z"], "y"),
            share(7, "b", &["z", "x", "y"], "y")
        );
    }
}
