//! The consistent-hash ring behind `agent_affinity`.
//!
//! Each backend owns `100 × weight` points (virtual nodes) placed by hashing
//! its *name*, so a backend's points do not depend on which other backends
//! exist or in what order the config lists them: adding or removing one
//! backend only moves the keys that land on its own points, about 1/N of them.
//! Many points per backend even out the arcs (a backend's share varies by
//! about 1/√100 = 10%) and scatter a removed backend's keys over all the
//! others instead of dumping them on one neighbour.
//!
//! A key belongs to the first point at or after its hash, found by binary
//! search over a sorted array: O(log(points)), no pointers to chase.

use super::hash::{hash64, vnode};
use super::BackendSpec;

/// Points per unit of weight.
const POINTS_PER_WEIGHT: u64 = 100;
/// Ring size cap (8 MiB of points). Beyond it the points per weight are scaled
/// down for the whole ring, which re-homes agents: only absurd weights get here.
const MAX_POINTS: u64 = 1 << 20;

/// Sorted ring points and the backend (config index) owning each.
#[derive(Debug, Clone)]
pub(super) struct Ring {
    points: Box<[u64]>,
    owners: Box<[u32]>,
}

impl Ring {
    /// The ring of `backends` (weights of 0 count as 1).
    pub(super) fn new(backends: &[BackendSpec<'_>]) -> Ring {
        let weights: Vec<u64> = backends
            .iter()
            .map(|b| u64::from(b.weight.max(1)))
            .collect();
        let total_weight: u64 = weights.iter().sum();
        let per_backend = |w: u64| {
            if total_weight * POINTS_PER_WEIGHT <= MAX_POINTS {
                w * POINTS_PER_WEIGHT
            } else {
                (w * MAX_POINTS / total_weight).max(1)
            }
        };
        let mut entries: Vec<(u64, u32)> = Vec::new();
        for (i, (b, &w)) in backends.iter().zip(&weights).enumerate() {
            let name_hash = hash64(b.name.as_bytes());
            entries.extend((0..per_backend(w)).map(|r| (vnode(name_hash, r), i as u32)));
        }
        // Ties between points (astronomically rare) resolve by name, not by
        // config position, so reordering the config moves nothing.
        entries.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| backends[a.1 as usize].name.cmp(backends[b.1 as usize].name))
        });
        let (points, owners) = entries.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Ring {
            points: points.into(),
            owners: owners.into(),
        }
    }

    /// Number of points.
    pub(super) fn len(&self) -> usize {
        self.points.len()
    }

    /// Position of the first point at or after `key`'s hash, wrapping past the
    /// last point to the first (0 on an empty ring).
    pub(super) fn locate(&self, key: &str) -> usize {
        let hash = hash64(key.as_bytes());
        let pos = self.points.partition_point(|&p| p < hash);
        if pos == self.points.len() {
            0
        } else {
            pos
        }
    }

    /// Owners of the points from `start` on, once around the ring (backends
    /// repeat: each owns many points).
    pub(super) fn walk(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let (head, tail) = self.owners.split_at(start);
        tail.iter().chain(head).map(|&i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{names, specs};

    #[test]
    fn points_follow_weights() {
        let names = names(3);
        let ring = Ring::new(&specs(&names, &[1, 2, 0]));
        assert_eq!(ring.len(), 400);
        let owned = |i| ring.owners.iter().filter(|&&o| o == i).count();
        assert_eq!((owned(0), owned(1), owned(2)), (100, 200, 100));
        assert!(ring.points.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn walk_starts_at_the_located_point_and_wraps() {
        let names = names(4);
        let ring = Ring::new(&specs(&names, &[1; 4]));
        let start = ring.locate("agent-x");
        let walked: Vec<usize> = ring.walk(start).collect();
        assert_eq!(walked.len(), ring.len());
        assert_eq!(walked[0], ring.owners[start] as usize);
        assert_eq!(walked[ring.len() - start], ring.owners[0] as usize);
    }

    #[test]
    fn huge_weights_are_capped() {
        let names = names(2);
        let ring = Ring::new(&specs(&names, &[u32::MAX, 1]));
        assert!(ring.len() as u64 <= MAX_POINTS + 1);
        assert!(ring.owners.contains(&1), "every backend keeps a point");
    }
}
