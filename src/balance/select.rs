//! The two ways a load-aware strategy chooses among eligible backends: a full
//! scan for the best score, and power of two choices (P2C).
//!
//! Shared so that `least_connections`, `least_latency` and `random`'s fallback
//! differ only in how they score a backend. Scores are compared through a
//! caller-given `cmp(a, weight_a, b, weight_b)` so weights can be
//! cross-multiplied in integers instead of divided in floats.
//!
//! P2C (Mitzenmacher; tower `balance::p2c`): draw two distinct eligible
//! backends, keep the better. The expected maximum load drops from
//! Θ(log n / log log n) for one random choice to Θ(log log n), at O(1) cost and
//! without the herd effect of every proxy choosing the same global minimum.

use std::cmp::Ordering;

use rand::RngCore;

use super::weights::{below, Weights};
use super::LoadView;

/// Weighted draws tried before concluding that eligible backends are scarce
/// and scanning instead. With half the set ineligible, 8 misses in a row
/// happen on 0.4% of picks.
pub(super) const MAX_DRAWS: usize = 8;

/// The best eligible backend by `cmp`, scanning all of them (O(n)).
///
/// Ties are broken by a weighted random draw (reservoir sampling over the tied
/// backends), never by list order: with equal loads, the first backend in the
/// config must not take every request.
pub(super) fn scan<K>(
    view: &dyn LoadView,
    weights: &Weights,
    rng: &mut dyn RngCore,
    key: impl Fn(usize) -> K,
    cmp: impl Fn(&K, u32, &K, u32) -> Ordering,
) -> Option<usize> {
    let mut best: Option<(usize, K, u32)> = None;
    // Sum of the weights tied with `best` so far.
    let mut tied = 0u64;
    for i in 0..weights.len() {
        if !view.eligible(i) {
            continue;
        }
        let (k, w) = (key(i), weights.get(i));
        let order = match &best {
            None => Ordering::Less,
            Some((_, best_k, best_w)) => cmp(&k, w, best_k, *best_w),
        };
        match order {
            Ordering::Less => {
                best = Some((i, k, w));
                tied = u64::from(w);
            }
            Ordering::Equal => {
                // Keeps each tied backend with probability weight / tied weight.
                tied += u64::from(w);
                if below(rng, tied) < u64::from(w) {
                    best = Some((i, k, w));
                }
            }
            Ordering::Greater => {}
        }
    }
    best.map(|(i, _, _)| i)
}

/// Power of two choices: the better by `cmp` of two distinct eligible backends
/// drawn by weight. O(1) unless eligible backends are scarce, then [`scan`].
///
/// On a tie the first draw wins; it is itself a weighted random draw, so ties
/// are broken randomly and, on an idle set, picks follow the weights exactly.
pub(super) fn p2c<K>(
    view: &dyn LoadView,
    weights: &Weights,
    rng: &mut dyn RngCore,
    key: impl Fn(usize) -> K,
    cmp: impl Fn(&K, u32, &K, u32) -> Ordering,
) -> Option<usize> {
    match weights.len() {
        0 => None,
        1 => view.eligible(0).then_some(0),
        _ => {
            let Some(a) = draw_eligible(view, weights, rng, None) else {
                return scan(view, weights, rng, key, cmp);
            };
            let Some(b) = draw_eligible(view, weights, rng, Some(a)) else {
                return scan(view, weights, rng, key, cmp);
            };
            let (wa, wb) = (weights.get(a), weights.get(b));
            match cmp(&key(b), wb, &key(a), wa) {
                Ordering::Less => Some(b),
                Ordering::Equal | Ordering::Greater => Some(a),
            }
        }
    }
}

/// A weighted draw that is eligible and not `other`, or `None` after
/// [`MAX_DRAWS`] misses.
pub(super) fn draw_eligible(
    view: &dyn LoadView,
    weights: &Weights,
    rng: &mut dyn RngCore,
    other: Option<usize>,
) -> Option<usize> {
    (0..MAX_DRAWS)
        .map(|_| weights.sample(rng))
        .find(|&i| Some(i) != other && view.eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{rng, TestView};

    fn by_in_flight(view: &TestView) -> impl Fn(usize) -> u64 + '_ {
        move |i| view.backends[i].in_flight
    }

    fn plain(a: &u64, _: u32, b: &u64, _: u32) -> Ordering {
        a.cmp(b)
    }

    #[test]
    fn scan_finds_the_minimum_among_eligible() {
        let mut view = TestView::with_in_flight(&[5, 1, 0, 3]);
        view.backends[2].eligible = false;
        let w = Weights::new(&[1; 4]);
        let mut rng = rng(3);
        for _ in 0..100 {
            assert_eq!(
                scan(&view, &w, &mut rng, by_in_flight(&view), plain),
                Some(1)
            );
        }
    }

    #[test]
    fn scan_breaks_ties_by_weight() {
        let view = TestView::idle(3);
        let w = Weights::new(&[1, 2, 1]);
        let mut rng = rng(4);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[scan(&view, &w, &mut rng, by_in_flight(&view), plain).unwrap()] += 1;
        }
        for (i, share) in [0.25, 0.5, 0.25].into_iter().enumerate() {
            let got = f64::from(counts[i]) / 40_000.0;
            assert!((got - share).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn p2c_with_scarce_eligibility_still_finds_the_one() {
        let mut view = TestView::idle(200);
        for b in &mut view.backends {
            b.eligible = false;
        }
        view.backends[137].eligible = true;
        let w = Weights::new(&[1; 200]);
        let mut rng = rng(5);
        for _ in 0..50 {
            assert_eq!(
                p2c(&view, &w, &mut rng, by_in_flight(&view), plain),
                Some(137)
            );
        }
        view.backends[137].eligible = false;
        assert_eq!(p2c(&view, &w, &mut rng, by_in_flight(&view), plain), None);
    }
}
