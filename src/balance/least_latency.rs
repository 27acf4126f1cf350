//! Least latency: power of two choices on peak-EWMA latency × (in flight + 1).
//!
//! The cost is the expected wait of one more request (linkerd, finagle, tower
//! `balance::p2c` over `load::PeakEwma`): a fast backend is preferred until its
//! queue grows, a slow one still gets work when the fast ones are busy, and
//! weights divide the cost. Two random candidates instead of the global
//! minimum keep concurrent picks from stampeding the backend that looked best a
//! moment ago, and keep a pick O(1).
//!
//! Fast failures are handled where latency is recorded ([`super::PeakEwma`]
//! records an error as at least `error_penalty`), so here a failing backend
//! simply looks slow.

use std::cmp::Ordering;

use rand::RngCore;

use super::select::p2c;
use super::weights::Weights;
use super::{view_matches, LoadView, PickRequest, Strategy};

/// Power of two choices on latency × load.
#[derive(Debug)]
pub struct LeastLatency {
    weights: Weights,
}

impl LeastLatency {
    /// A strategy for these weights (0 counts as 1), in backend order.
    pub fn new(weights: &[u32]) -> LeastLatency {
        LeastLatency {
            weights: Weights::new(weights),
        }
    }
}

/// What one candidate costs: latency estimate and in flight.
#[derive(Debug, Clone, Copy)]
struct Cost {
    latency_ns: u64,
    in_flight: u64,
}

/// Orders by `latency × (in_flight + 1) / weight`, cross-multiplied in u128.
///
/// A latency of 0 means "no sample yet" (or fully decayed). Against such a
/// backend only in-flight counts are compared: treating unknown as 0 ns would
/// flood a new backend with everything until its first answer, which for a
/// minutes-long agent turn may be minutes away.
fn by_cost(a: &Cost, weight_a: u32, b: &Cost, weight_b: u32) -> Ordering {
    let known = a.latency_ns != 0 && b.latency_ns != 0;
    let side = |c: &Cost, other_weight: u32| {
        let latency = if known { c.latency_ns } else { 1 };
        u128::from(latency) * (u128::from(c.in_flight) + 1) * u128::from(other_weight)
    };
    side(a, weight_b).cmp(&side(b, weight_a))
}

impl Strategy for LeastLatency {
    fn name(&self) -> &'static str {
        "least_latency"
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
        let cost = |i| Cost {
            latency_ns: view.latency_ns(i),
            in_flight: view.in_flight(i),
        };
        p2c(view, &self.weights, rng, cost, by_cost)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::testing::{count_picks, rng, share_near, TestView};
    use crate::balance::PeakEwma;

    const MS: u64 = 1_000_000;

    fn with_latency(ms: &[u64]) -> TestView {
        let mut view = TestView::idle(ms.len());
        for (b, &l) in view.backends.iter_mut().zip(ms) {
            b.latency_ns = l * MS;
        }
        view
    }

    #[test]
    fn prefers_the_fast_backend() {
        // Idle: the fast one wins whenever drawn, i.e. unless neither draw is
        // it: 1 - (2/3 × 1/2) = 2/3.
        let ll = LeastLatency::new(&[1; 3]);
        let counts = count_picks(&ll, &with_latency(&[50, 10, 50]), 30_000, 1);
        assert!(share_near(counts[1], 30_000, 2.0 / 3.0, 0.01), "{counts:?}");
    }

    #[test]
    fn load_offsets_latency() {
        // 10 ms with 9 in flight costs 100; 50 ms idle costs 50.
        let ll = LeastLatency::new(&[1; 2]);
        let mut view = with_latency(&[10, 50]);
        view.backends[0].in_flight = 9;
        assert_eq!(count_picks(&ll, &view, 200, 2), [0, 200]);
        // Weight 3 divides the fast backend's cost: 100 / 3 < 50.
        let ll = LeastLatency::new(&[3, 1]);
        assert_eq!(count_picks(&ll, &view, 200, 2), [200, 0]);
    }

    #[test]
    fn unknown_latency_competes_on_in_flight() {
        let ll = LeastLatency::new(&[1; 2]);
        let mut view = with_latency(&[0, 30]);
        view.backends[0].in_flight = 2;
        assert_eq!(count_picks(&ll, &view, 100, 3), [0, 100]);
        view.backends[0].in_flight = 0;
        view.backends[1].in_flight = 1;
        assert_eq!(count_picks(&ll, &view, 100, 3), [100, 0]);
    }

    /// Closed-loop simulation: backend 0 answers errors in 1 ms, 1 and 2
    /// answer in 80 ms. Without the penalty backend 0 would look 80× faster
    /// and take almost everything; with it, it takes less than a healthy one.
    #[test]
    fn fast_failing_backend_does_not_attract_traffic() {
        let decay = Duration::from_secs(10);
        let run = |penalty: Duration| {
            let ewmas: Vec<PeakEwma> = (0..3).map(|_| PeakEwma::new(decay, penalty)).collect();
            let ll = LeastLatency::new(&[1; 3]);
            let mut view = TestView::idle(3);
            let mut rng = rng(4);
            let mut counts = [0u64; 3];
            // One request every 5 ms for 100 s, answered at once (in flight 0).
            for step in 0..20_000u64 {
                let now = step * 5 * MS;
                for (b, e) in view.backends.iter_mut().zip(&ewmas) {
                    b.latency_ns = e.get(now);
                }
                let i = ll.pick(&view, &PickRequest::default(), &mut rng).unwrap();
                counts[i] += 1;
                if i == 0 {
                    ewmas[0].observe_error(Duration::from_millis(1), now);
                } else {
                    ewmas[i].observe(Duration::from_millis(80), now);
                }
            }
            counts
        };
        let naive = run(Duration::ZERO);
        assert!(
            naive[0] > 10_000,
            "without a penalty it attracts: {naive:?}"
        );
        let counts = run(Duration::from_secs(1));
        assert!(counts[0] < counts[1] && counts[0] < counts[2], "{counts:?}");
        assert!(counts[0] < 20_000 / 10, "{counts:?}");
    }

    #[test]
    fn ineligible_never_picked() {
        let ll = LeastLatency::new(&[1; 3]);
        let mut view = with_latency(&[1, 50, 60]);
        view.backends[0].eligible = false;
        let counts = count_picks(&ll, &view, 1_000, 5);
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1], 1_000, "50 ms always beats 60 ms");
    }
}
