//! A circuit breaker for Redis: after `threshold` consecutive failures, Redis is
//! not called at all for `cooldown`; then one probe call is let through, and its
//! success closes the breaker again. While open, a request pays nothing for
//! Redis (not even the timeout).
//!
//! Time is passed in (nanoseconds on any monotonic clock) so the state machine
//! is tested without sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

pub struct Breaker {
    threshold: u32,
    cooldown_ns: u64,
    failures: AtomicU32,
    /// While `now < open_until`, calls are refused. 0 = closed.
    open_until: AtomicU64,
    /// One probe at a time once the cooldown is over.
    probing: AtomicBool,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: std::time::Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ns: cooldown.as_nanos() as u64,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Whether a call may be made at `now`. When it returns true after a
    /// cooldown, the caller is the probe and must report the outcome.
    pub fn allow(&self, now: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        // Cooldown over: exactly one caller probes.
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        self.open_until.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
    }

    /// Records a failure; returns true when this failure opened the breaker.
    pub fn failure(&self, now: u64) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        if n >= self.threshold || was_probe {
            let was_closed = self.open_until.load(Ordering::Acquire) == 0;
            self.open_until.store(
                now.saturating_add(self.cooldown_ns).max(1),
                Ordering::Release,
            );
            return was_closed;
        }
        false
    }

    /// Whether calls are currently let through (for the availability gauge).
    pub fn is_closed(&self) -> bool {
        self.open_until.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_closes_on_success() {
        let b = Breaker::new(3, Duration::from_secs(5));
        assert!(b.allow(0));
        assert!(!b.failure(0));
        assert!(!b.failure(0));
        assert!(b.allow(0), "two failures: still closed");
        assert!(b.failure(S), "third failure opens");
        assert!(!b.allow(S));
        assert!(!b.allow(5 * S), "cooldown not over");
        assert!(b.allow(6 * S), "first caller after the cooldown probes");
        assert!(!b.allow(6 * S), "only one probe at a time");
        b.success();
        assert!(b.is_closed() && b.allow(6 * S));
    }

    #[test]
    fn a_failed_probe_reopens_for_another_cooldown() {
        let b = Breaker::new(1, Duration::from_secs(5));
        b.failure(0);
        assert!(b.allow(5 * S));
        b.failure(5 * S);
        assert!(!b.allow(9 * S));
        assert!(b.allow(10 * S));
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(5));
        b.failure(0);
        b.success();
        b.failure(0);
        assert!(b.allow(0), "failures must be consecutive");
    }
}
