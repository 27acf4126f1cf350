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
//! A key belongs to the first point at or after its hash in a sorted array,
//! found through a bucket index on the hash's top bits: O(1) expected, two or
//! three memory reads instead of a binary search's log2(points).

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
    /// `index[b]` is the first point whose top bits are `>= b`: a lookup
    /// starts in a range of one or two points instead of binary-searching all
    /// of them (17 dependent, mostly cache-missing loads at 1,024 backends).
    index: Box<[u32]>,
    /// 64 minus the number of top bits `index` is keyed by.
    shift: u32,
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
        let (points, owners): (Vec<u64>, Vec<u32>) = entries.into_iter().unzip();
        // One to two points per bucket; the index is a third the size of the points.
        let bits = (points.len().max(2).ilog2()).clamp(1, 31);
        let shift = 64 - bits;
        let mut index = Vec::with_capacity((1 << bits) + 1);
        let mut pos = 0;
        for bucket in 0..1u64 << bits {
            while pos < points.len() && points[pos] >> shift < bucket {
                pos += 1;
            }
            index.push(pos as u32);
        }
        index.push(points.len() as u32);
        Ring {
            points: points.into(),
            owners: owners.into(),
            index: index.into(),
            shift,
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
        let bucket = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[bucket] as usize, self.index[bucket + 1] as usize);
        // Points before `lo` are in lower buckets, points from `hi` on in higher ones.
        let pos = lo + self.points[lo..hi].partition_point(|&p| p < hash);
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
    fn index_agrees_with_binary_search() {
        for n in [1, 3, 64] {
            let names = names(n);
            let ring = Ring::new(&specs(&names, &vec![1; n]));
            for i in 0..5_000 {
                let key = format!("agent-{i}");
                let hash = hash64(key.as_bytes());
                let want = ring.points.partition_point(|&p| p < hash) % ring.len();
                assert_eq!(ring.locate(&key), want, "n={n} {key}");
            }
        }
    }

    #[test]
    fn huge_weights_are_capped() {
        let names = names(2);
        let ring = Ring::new(&specs(&names, &[u32::MAX, 1]));
        assert!(ring.len() as u64 <= MAX_POINTS + 1);
        assert!(ring.owners.contains(&1), "every backend keeps a point");
    }
}
