//! Backend weights and O(1) weighted draws (Vose's alias method).
//!
//! `random` draws from it directly and the power-of-two-choices strategies draw
//! their two candidates from it, so a backend of weight 3 is sampled three times
//! as often as one of weight 1 whatever the size of the set. The table is exact:
//! it is built in integers, so the only error left is the draw of a uniform
//! number, which is below 2^-40 for any realistic set.

use rand::RngCore;

/// A uniform integer in `0..n` (`n > 0`) from one 64-bit draw.
///
/// Lemire's multiply-shift without the rejection step: its bias is at most
/// n / 2^64, far below anything a load balancer can observe, and it costs one
/// multiplication instead of a division or a loop.
pub(super) fn below(rng: &mut dyn RngCore, n: u64) -> u64 {
    debug_assert!(n > 0);
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// Weights of one backend set, with an alias table for weighted draws.
#[derive(Debug, Clone)]
pub(super) struct Weights {
    weights: Box<[u32]>,
    /// All weights equal: draws skip the table.
    uniform: bool,
    /// Column `c` keeps its own index when the second draw is below `keep[c]`
    /// (out of `total`), and yields `alias[c]` otherwise.
    keep: Box<[u64]>,
    alias: Box<[u32]>,
    total: u64,
}

impl Weights {
    /// Builds the table; weights of 0 count as 1.
    pub(super) fn new(weights: &[u32]) -> Weights {
        let weights: Box<[u32]> = weights.iter().map(|&w| w.max(1)).collect();
        let n = weights.len();
        let uniform = weights.windows(2).all(|p| p[0] == p[1]);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let (keep, alias) = if uniform {
            (Box::default(), Box::default())
        } else {
            alias_table(&weights, total)
        };
        debug_assert!(n <= u32::MAX as usize);
        Weights {
            weights,
            uniform,
            keep,
            alias,
            total,
        }
    }

    /// Number of backends.
    pub(super) fn len(&self) -> usize {
        self.weights.len()
    }

    /// Weight of backend `i`.
    pub(super) fn get(&self, i: usize) -> u32 {
        self.weights[i]
    }

    /// Draws a backend index with probability weight / total. The set must not be empty.
    pub(super) fn sample(&self, rng: &mut dyn RngCore) -> usize {
        let column = below(rng, self.len() as u64) as usize;
        if self.uniform || below(rng, self.total) < self.keep[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }
}

/// Vose's construction in integers: every column has height `total`, and
/// backend `i` brings `weight_i * n` of height, so the columns hold exactly the
/// weights and a draw is exact.
fn alias_table(weights: &[u32], total: u64) -> (Box<[u64]>, Box<[u32]>) {
    let n = weights.len();
    let mut height: Vec<u64> = weights.iter().map(|&w| u64::from(w) * n as u64).collect();
    let mut keep = vec![total; n];
    let mut alias: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| height[i] < total);
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        // Column `s` is topped up from `l`, which shrinks by what it gave.
        keep[s] = height[s];
        alias[s] = l as u32;
        height[l] -= total - height[s];
        if height[l] < total {
            large.pop();
            small.push(l);
        }
    }
    // Columns left over are exactly full (integers leave no rounding error), so
    // they keep their own index.
    (keep.into(), alias.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::rng;

    /// Exact probabilities of the table, in units of 1 / (n * total).
    fn exact_mass(w: &Weights) -> Vec<u64> {
        let mut mass = vec![0u64; w.len()];
        for c in 0..w.len() {
            mass[c] += w.keep[c];
            mass[w.alias[c] as usize] += w.total - w.keep[c];
        }
        mass
    }

    #[test]
    fn alias_table_is_exact() {
        for weights in [
            vec![3, 1],
            vec![1, 2, 3, 4],
            vec![10, 1, 1, 1, 1, 1, 7],
            vec![5, 5, 1],
        ] {
            let w = Weights::new(&weights);
            let n = weights.len() as u64;
            let expect: Vec<u64> = weights.iter().map(|&x| u64::from(x) * n).collect();
            assert_eq!(exact_mass(&w), expect, "weights {weights:?}");
        }
    }

    #[test]
    fn draws_follow_weights() {
        let w = Weights::new(&[3, 1]);
        let mut rng = rng(1);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[w.sample(&mut rng)] += 1;
        }
        let share = f64::from(counts[0]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = rng(2);
        for n in [1, 2, 3, 1000, u64::MAX] {
            for _ in 0..1000 {
                assert!(below(&mut rng, n) < n);
            }
        }
    }
}
