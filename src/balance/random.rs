//! Weighted random: every pick an independent draw, O(1) from an alias table.
//!
//! Needs no shared state at all (not even round robin's cursor), so many
//! proxies in front of the same replicas never fall into step with each other.

use rand::RngCore;

use super::select::{draw_eligible, scan};
use super::weights::Weights;
use super::{view_matches, LoadView, PickRequest, Strategy};

/// Weighted random choice among eligible backends.
#[derive(Debug)]
pub struct Random {
    weights: Weights,
}

impl Random {
    /// A sampler for these weights (0 counts as 1), in backend order.
    pub fn new(weights: &[u32]) -> Random {
        Random {
            weights: Weights::new(weights),
        }
    }
}

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(
        &self,
        view: &dyn LoadView,
        _: &PickRequest<'_>,
        rng: &mut dyn RngCore,
    ) -> Option<usize> {
        if self.weights.len() == 0 || !view_matches(view, self.weights.len()) {
            return None;
        }
        // Redrawing on an ineligible backend keeps the shares of the others
        // proportional to their weights (rejection sampling).
        draw_eligible(view, &self.weights, rng, None).or_else(|| {
            // Eligible backends are scarce: one weighted reservoir pass over them,
            // every backend scoring the same so each is kept by weight.
            scan(
                view,
                &self.weights,
                rng,
                |_| (),
                |_, _, _, _| std::cmp::Ordering::Equal,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::testing::{count_picks, rng, share_near, TestView};

    #[test]
    fn uniform_within_bounds() {
        let counts = count_picks(&Random::new(&[1, 1, 1]), &TestView::idle(3), 30_000, 7);
        for &c in &counts {
            assert!(share_near(c, 30_000, 1.0 / 3.0, 0.05 / 3.0), "{counts:?}");
        }
        // Chi-square with 2 degrees of freedom: 13.8 is the 0.1% tail.
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - 10_000.0).powi(2) / 10_000.0)
            .sum();
        assert!(chi2 < 13.8, "chi2 = {chi2}, {counts:?}");
    }

    #[test]
    fn weights_respected() {
        let counts = count_picks(&Random::new(&[3, 1, 2]), &TestView::idle(3), 60_000, 8);
        for (c, share) in counts.iter().zip([0.5, 1.0 / 6.0, 1.0 / 3.0]) {
            assert!(share_near(*c, 60_000, share, 0.01), "{counts:?}");
        }
    }

    #[test]
    fn ineligible_never_picked_and_others_keep_proportions() {
        let mut view = TestView::idle(3);
        view.backends[0].eligible = false;
        let counts = count_picks(&Random::new(&[3, 1, 2]), &view, 30_000, 9);
        assert_eq!(counts[0], 0);
        assert!(share_near(counts[2], 30_000, 2.0 / 3.0, 0.02), "{counts:?}");
    }

    #[test]
    fn scarce_eligibility_falls_back_to_a_scan() {
        let mut view = TestView::idle(500);
        for b in &mut view.backends {
            b.eligible = false;
        }
        view.backends[42].eligible = true;
        view.backends[420].eligible = true;
        let counts = count_picks(&Random::new(&[1; 500]), &view, 2_000, 10);
        assert_eq!(counts[42] + counts[420], 2_000);
        assert!(
            counts[42] > 800 && counts[420] > 800,
            "{} {}",
            counts[42],
            counts[420]
        );

        view.backends[42].eligible = false;
        view.backends[420].eligible = false;
        let random = Random::new(&[1; 500]);
        assert_eq!(
            random.pick(&view, &PickRequest::default(), &mut rng(0)),
            None
        );
    }
}
