//! Weighted round robin: a smooth schedule computed once, walked by one atomic.
//!
//! Building the whole cycle up front makes a pick one `fetch_add` and one table
//! read whatever the weights (nginx's smooth WRR is O(n) per pick and needs a
//! lock), and the shares are exact: over every full cycle each backend gets
//! exactly its weight. The cycle is "smooth": a backend's turns are spread
//! evenly (weights 3,1 give `A A B A`, not `A A A B`), so a heavy backend never
//! takes a burst.
//!
//! Ineligible backends are skipped by walking forward, and the skipped slots
//! are consumed, so picks among the remaining backends follow the same
//! schedule with the ineligible ones struck out: their share spreads over the
//! others by weight instead of landing on whichever comes next.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::RngCore;

use super::{view_matches, LoadView, PickRequest, Strategy};

/// Longest schedule built. Weights are first divided by their gcd; sets whose
/// reduced weights still sum above this are scaled down, and only then are
/// shares approximate (e.g. 1,024 backends with co-prime weights around 256).
const MAX_SCHEDULE: u64 = 1 << 18;

/// Weighted round robin over a precomputed schedule.
#[derive(Debug)]
pub struct RoundRobin {
    /// One full cycle of backend indices.
    schedule: Box<[u32]>,
    backends: usize,
    /// Position in the schedule; wrapping after 2^64 picks is harmless.
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// A schedule for these weights (0 counts as 1), in backend order.
    pub fn new(weights: &[u32]) -> RoundRobin {
        RoundRobin {
            schedule: schedule(weights),
            backends: weights.len(),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(&self, view: &dyn LoadView, _: &PickRequest<'_>, _: &mut dyn RngCore) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 || !view_matches(view, self.backends) {
            return None;
        }
        // Relaxed: the cursor only spreads picks; it orders no other memory.
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for step in 0..len {
            let i = self.schedule[start.wrapping_add(step) % len] as usize;
            if view.eligible(i) {
                if step > 0 {
                    self.cursor.fetch_add(step, Ordering::Relaxed);
                }
                return Some(i);
            }
            // A long walk means heavy backends are out; give up early if all are.
            if step + 1 == self.backends && view.eligible_count() == 0 {
                return None;
            }
        }
        None
    }
}

/// One smooth cycle: backend `i` appears `w_i` times, its k-th turn at virtual
/// time (k + ½) / w_i, turns sorted by that time (ties by index).
fn schedule(weights: &[u32]) -> Box<[u32]> {
    let weights = reduce(weights);
    let mut turns: Vec<(u64, u64, u32)> = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        turns.extend((0..w).map(|k| (2 * k + 1, w, i as u32)));
    }
    // (2k + 1) / 2w compared by cross-multiplying: exact, no floats.
    turns.sort_unstable_by(|&(ka, wa, ia), &(kb, wb, ib)| {
        (u128::from(ka) * u128::from(wb))
            .cmp(&(u128::from(kb) * u128::from(wa)))
            .then(ia.cmp(&ib))
    });
    turns.into_iter().map(|(_, _, i)| i).collect()
}

/// Weights divided by their gcd (1,1,1 → a cycle of 3, not of 3,000), then
/// scaled down if the cycle would exceed [`MAX_SCHEDULE`].
fn reduce(weights: &[u32]) -> Vec<u64> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let g = weights.iter().copied().reduce(gcd).unwrap_or(1);
    let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = reduced.iter().sum();
    if total <= MAX_SCHEDULE {
        return reduced;
    }
    reduced
        .iter()
        .map(|&w| (w * MAX_SCHEDULE / total).max(1))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{count_picks, rng, TestView};

    fn picks(rr: &RoundRobin, view: &TestView, n: usize) -> Vec<usize> {
        let mut rng = rng(0);
        (0..n)
            .map(|_| rr.pick(view, &PickRequest::default(), &mut rng).unwrap())
            .collect()
    }

    #[test]
    fn equal_weights_are_exact() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        assert_eq!(count_picks(&rr, &TestView::idle(3), 3_000, 0), [1_000; 3]);
    }

    #[test]
    fn weights_are_exact_and_smooth() {
        let rr = RoundRobin::new(&[3, 1]);
        let seq = picks(&rr, &TestView::idle(2), 4_000);
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 3_000);
        // Every window of one cycle holds exactly 3 A and 1 B, and B never
        // comes twice in a row: the schedule interleaves.
        for window in seq.windows(4) {
            assert_eq!(window.iter().filter(|&&i| i == 1).count(), 1, "{window:?}");
        }
        let rr = RoundRobin::new(&[5, 2, 3]);
        assert_eq!(
            count_picks(&rr, &TestView::idle(3), 10_000, 0),
            [5_000, 2_000, 3_000]
        );
    }

    #[test]
    fn common_factors_do_not_grow_the_cycle() {
        assert_eq!(schedule(&[300, 300, 300]).len(), 3);
        assert_eq!(schedule(&[6, 2]).as_ref(), [0, 0, 1, 0]);
    }

    #[test]
    fn huge_weights_are_capped_but_keep_proportions() {
        let s = schedule(&[u32::MAX, u32::MAX / 3, 7]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        let ones = s.iter().filter(|&&i| i == 1).count() as f64;
        let zeros = s.iter().filter(|&&i| i == 0).count() as f64;
        assert!((zeros / ones - 3.0).abs() < 0.01);
        assert!(s.contains(&2), "every backend keeps at least one turn");
    }

    #[test]
    fn ineligible_share_spreads_by_weight() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut view = TestView::idle(3);
        view.backends[1].eligible = false;
        assert_eq!(count_picks(&rr, &view, 2_000, 0), [1_000, 0, 1_000]);

        // The heavy backend out: the two light ones alternate, none is starved.
        let rr = RoundRobin::new(&[100, 1, 1]);
        let mut view = TestView::idle(3);
        view.backends[0].eligible = false;
        assert_eq!(count_picks(&rr, &view, 1_000, 0), [0, 500, 500]);
    }

    #[test]
    fn none_when_nothing_is_eligible() {
        let rr = RoundRobin::new(&[7, 1, 1]);
        let mut view = TestView::idle(3);
        for b in &mut view.backends {
            b.eligible = false;
        }
        assert_eq!(rr.pick(&view, &PickRequest::default(), &mut rng(0)), None);
        let empty = RoundRobin::new(&[]);
        assert_eq!(
            empty.pick(&TestView::idle(0), &PickRequest::default(), &mut rng(0)),
            None
        );
    }
}
