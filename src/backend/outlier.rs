//! Passive health: outlier detection from real traffic.
//!
//! Consecutive connection errors, timeouts and 5xx answers from one backend eject
//! it for a cooldown that doubles on every repeat ejection (up to a maximum) and
//! resets after a clean period. Never more than `max_ejected_percent` of the
//! backends are ejected at once, so a systemic failure (Postgres down behind
//! every replica) does not empty the pool.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Passive-health knobs (from `[health]`).
#[derive(Debug, Clone, Copy)]
pub struct OutlierPolicy {
    /// Consecutive failures that eject (0 disables passive ejection).
    pub consecutive_failures: u32,
    /// First ejection's length; doubled on each repeat.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Share of backends that may be ejected at once, in percent.
    pub max_ejected_percent: u32,
}

/// One backend's passive-health state, updated lock-free from the request path.
#[derive(Debug, Default)]
pub struct Outlier {
    failures: AtomicU32,
    /// Ejections in a row without a clean period in between.
    ejections: AtomicU32,
    /// Monotonic nanoseconds until which the backend is ejected (0 = not).
    ejected_until: AtomicU64,
    /// Total ejections, for metrics.
    pub ejected_total: AtomicU64,
}

impl Outlier {
    /// Whether the backend is ejected at `now` (monotonic ns).
    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    /// A good answer: the failure streak ends. After a full base period with no
    /// ejection, the repeat counter resets too.
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failed exchange at `now`. Returns the ejection length when this failure
    /// ejected the backend. `may_eject` says whether the set still allows one more
    /// ejection (the caller counts ejected backends).
    pub fn failure(
        &self,
        now: u64,
        policy: &OutlierPolicy,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        if policy.consecutive_failures == 0 {
            return None;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n < policy.consecutive_failures || self.is_ejected(now) || !may_eject() {
            return None;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        // A clean stretch as long as the base ejection since the last one: start over.
        let base = policy.base_ejection.as_nanos() as u64;
        if until != 0 && now.saturating_sub(until) > base.saturating_mul(4) {
            self.ejections.store(0, Ordering::Relaxed);
        }
        let k = self.ejections.fetch_add(1, Ordering::AcqRel).min(16);
        let length = policy
            .base_ejection
            .saturating_mul(1u32 << k)
            .min(policy.max_ejection);
        self.ejected_until
            .store(now + length.as_nanos() as u64, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.ejected_total.fetch_add(1, Ordering::Relaxed);
        Some(length)
    }

    /// Lifts an ejection (an active probe saw the backend recover).
    pub fn readmit(&self) {
        self.ejected_until.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(35),
            max_ejected_percent: 50,
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_cooldown() {
        let o = Outlier::default();
        let p = policy();
        assert_eq!(o.failure(0, &p, || true), None);
        o.success();
        assert_eq!(o.failure(0, &p, || true), None);
        assert_eq!(o.failure(0, &p, || true), None);
        assert_eq!(o.failure(0, &p, || true), Some(Duration::from_secs(10)));
        assert!(o.is_ejected(9 * S) && !o.is_ejected(10 * S));
        for _ in 0..2 {
            assert_eq!(o.failure(11 * S, &p, || true), None);
        }
        assert_eq!(
            o.failure(11 * S, &p, || true),
            Some(Duration::from_secs(20))
        );
        for _ in 0..2 {
            o.failure(40 * S, &p, || true);
        }
        assert_eq!(
            o.failure(40 * S, &p, || true),
            Some(Duration::from_secs(35)),
            "capped"
        );
    }

    #[test]
    fn no_ejection_beyond_the_allowed_share() {
        let o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.failure(0, &policy(), || false), None);
        }
        assert!(!o.is_ejected(0));
    }
}
