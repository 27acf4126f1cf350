//! Least connections: the backend with the fewest requests in flight per unit
//! of weight.
//!
//! In flight counts until the response body ends, so a backend busy with long
//! SSE streams looks busy for as long as they last: the right signal for
//! Letta, where one agent turn can stream for minutes.
//!
//! Up to `scan_threshold` backends it scans them all (exact minimum, ties broken
//! by weighted random draw). Above, it uses power of two choices: O(1) per pick,
//! and picks from concurrent requests do not all rush the one global minimum.

use std::cmp::Ordering;

use rand::RngCore;

use super::select::{p2c, scan};
use super::weights::Weights;
use super::{view_matches, LoadView, PickRequest, Strategy};

/// Least in flight per unit of weight.
#[derive(Debug)]
pub struct LeastConnections {
    weights: Weights,
    /// Sets up to this size are scanned; larger ones use power of two choices.
    scan_threshold: usize,
}

impl LeastConnections {
    /// A strategy for these weights (0 counts as 1), in backend order.
    pub fn new(weights: &[u32], scan_threshold: usize) -> LeastConnections {
        LeastConnections {
            weights: Weights::new(weights),
            scan_threshold,
        }
    }
}

/// Orders `a` before `b` when `in_flight_a / weight_a < in_flight_b / weight_b`,
/// cross-multiplied (u128 cannot overflow) so no float rounding makes a tie.
///
/// Idle backends all score 0 and tie; the weighted tie-break then gives a
/// sequential client shares that follow the weights.
fn by_load(a: &u64, weight_a: u32, b: &u64, weight_b: u32) -> Ordering {
    (u128::from(*a) * u128::from(weight_b)).cmp(&(u128::from(*b) * u128::from(weight_a)))
}

impl Strategy for LeastConnections {
    fn name(&self) -> &'static str {
        "least_connections"
    }

    fn pick(
        &self,
        view: &dyn LoadView,
        _: &PickRequest<'_>,
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 || !view_matches(view, n) {
            return None;
        }
        let in_flight = |i| view.in_flight(i);
        if n <= self.scan_threshold {
            scan(view, &self.weights, rng, in_flight, by_load)
        } else {
            p2c(view, &self.weights, rng, in_flight, by_load)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{count_picks, rng, share_near, TestView};

    #[test]
    fn scan_picks_the_least_loaded() {
        let lc = LeastConnections::new(&[1; 5], 8);
        let view = TestView::with_in_flight(&[4, 2, 9, 1, 3]);
        assert_eq!(count_picks(&lc, &view, 500, 1)[3], 500);
    }

    #[test]
    fn ties_are_broken_randomly_not_by_list_order() {
        let lc = LeastConnections::new(&[1; 4], 8);
        let view = TestView::with_in_flight(&[3, 1, 5, 1]);
        let counts = count_picks(&lc, &view, 10_000, 2);
        assert_eq!(counts[0] + counts[2], 0);
        assert!(share_near(counts[1], 10_000, 0.5, 0.03), "{counts:?}");
        assert!(share_near(counts[3], 10_000, 0.5, 0.03), "{counts:?}");
    }

    #[test]
    fn weights_scale_the_load() {
        // 6 in flight on weight 3 is the same load as 2 on weight 1: a tie,
        // broken 3:1. 5 on weight 3 is lighter than 2 on weight 1.
        let lc = LeastConnections::new(&[3, 1], 8);
        let counts = count_picks(&lc, &TestView::with_in_flight(&[6, 2]), 8_000, 3);
        assert!(share_near(counts[0], 8_000, 0.75, 0.02), "{counts:?}");
        let counts = count_picks(&lc, &TestView::with_in_flight(&[5, 2]), 100, 3);
        assert_eq!(counts, [100, 0]);
        // Idle: sequential clients see the weights.
        let counts = count_picks(&lc, &TestView::idle(2), 8_000, 3);
        assert!(share_near(counts[0], 8_000, 0.75, 0.02), "{counts:?}");
    }

    #[test]
    fn ineligible_least_loaded_is_skipped() {
        let lc = LeastConnections::new(&[1; 3], 8);
        let mut view = TestView::with_in_flight(&[3, 0, 2]);
        view.backends[1].eligible = false;
        assert_eq!(count_picks(&lc, &view, 100, 4), [0, 0, 100]);
    }

    #[test]
    fn steady_state_follows_in_flight() {
        // Requests that never finish: the scan keeps in-flight counts level.
        let lc = LeastConnections::new(&[1; 4], 8);
        let mut view = TestView::idle(4);
        let mut rng = rng(5);
        for _ in 0..1_000 {
            let i = lc.pick(&view, &PickRequest::default(), &mut rng).unwrap();
            view.backends[i].in_flight += 1;
        }
        assert!(view.backends.iter().all(|b| b.in_flight == 250));
    }

    /// P2C over 64: each pick compares two distinct uniform draws, so the
    /// unique most loaded backend can never win, and the picked backend is in
    /// the busier half only when both draws are: 32/64 × 31/63 ≈ 24.6%.
    #[test]
    fn p2c_never_picks_the_most_loaded() {
        let lc = LeastConnections::new(&[1; 64], 8);
        let mut view = TestView::idle(64);
        view.backends[17].in_flight = 100;
        let counts = count_picks(&lc, &view, 20_000, 6);
        assert_eq!(counts[17], 0);
        assert_eq!(counts.iter().filter(|&&c| c > 0).count(), 63);

        let loads: Vec<u64> = (0..64).map(|i| (i * 37 % 64) as u64).collect();
        let view = TestView::with_in_flight(&loads);
        let counts = count_picks(&lc, &view, 40_000, 7);
        let busiest = loads.iter().position(|&l| l == 63).unwrap();
        assert_eq!(counts[busiest], 0);
        let busier_half: u64 = (0..64).filter(|&i| loads[i] >= 32).map(|i| counts[i]).sum();
        assert!(
            share_near(busier_half, 40_000, 32.0 / 64.0 * 31.0 / 63.0, 0.01),
            "{busier_half}"
        );
    }

    #[test]
    fn p2c_respects_eligibility_and_weights() {
        let mut weights = vec![1u32; 64];
        weights[0] = 9;
        let lc = LeastConnections::new(&weights, 8);
        let mut view = TestView::idle(64);
        view.backends[1].eligible = false;
        let counts = count_picks(&lc, &view, 72_000, 8);
        assert_eq!(counts[1], 0);
        // Idle, ties go to the first weighted draw: backend 0 holds 9 of the 71
        // eligible weight units (the ineligible one is redrawn away).
        assert!(
            share_near(counts[0], 72_000, 9.0 / 71.0, 0.01),
            "{}",
            counts[0]
        );
    }
}
