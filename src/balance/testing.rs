//! Test helpers: a plain-array [`LoadView`], seeded RNGs, pick counters.
//!
//! `TestView` keeps the trait's default `total_in_flight` / `eligible_count`,
//! so the strategies' tests also exercise those defaults.

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::{BackendSpec, LoadView, PickRequest, Strategy};

/// One backend as a test sees it.
#[derive(Debug, Clone, Copy)]
pub struct TestBackend {
    pub eligible: bool,
    pub in_flight: u64,
    pub latency_ns: u64,
}

/// A backend set as plain values.
#[derive(Debug, Clone)]
pub struct TestView {
    pub backends: Vec<TestBackend>,
}

impl TestView {
    /// `n` eligible backends, nothing in flight, latency unknown.
    pub fn idle(n: usize) -> TestView {
        let idle = TestBackend {
            eligible: true,
            in_flight: 0,
            latency_ns: 0,
        };
        TestView {
            backends: vec![idle; n],
        }
    }

    /// Eligible backends with these in-flight counts.
    pub fn with_in_flight(in_flight: &[u64]) -> TestView {
        let mut view = TestView::idle(in_flight.len());
        for (b, &n) in view.backends.iter_mut().zip(in_flight) {
            b.in_flight = n;
        }
        view
    }
}

impl LoadView for TestView {
    fn len(&self) -> usize {
        self.backends.len()
    }
    fn eligible(&self, i: usize) -> bool {
        self.backends[i].eligible
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.backends[i].in_flight
    }
    fn latency_ns(&self, i: usize) -> u64 {
        self.backends[i].latency_ns
    }
}

/// A deterministic RNG for `seed`.
pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// Names `backend-0`, `backend-1`, … (kept by the caller: specs borrow them).
pub fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("backend-{i}")).collect()
}

/// Specs for `names` with the given weights.
pub fn specs<'a>(names: &'a [String], weights: &[u32]) -> Vec<BackendSpec<'a>> {
    names
        .iter()
        .zip(weights)
        .map(|(name, &weight)| BackendSpec { name, weight })
        .collect()
}

/// How often each backend is picked over `picks` picks with nothing changing.
pub fn count_picks(strategy: &dyn Strategy, view: &TestView, picks: usize, seed: u64) -> Vec<u64> {
    let mut rng = rng(seed);
    let mut counts = vec![0u64; view.len()];
    for _ in 0..picks {
        let i = strategy
            .pick(view, &PickRequest::default(), &mut rng)
            .expect("an eligible backend");
        counts[i] += 1;
    }
    counts
}

/// Whether `count` out of `total` is within `tolerance` (absolute share) of `share`.
pub fn share_near(count: u64, total: u64, share: f64, tolerance: f64) -> bool {
    (count as f64 / total as f64 - share).abs() <= tolerance
}
