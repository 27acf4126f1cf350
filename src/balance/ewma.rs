//! Peak-EWMA latency estimate: the signal `least_latency` balances on.
//!
//! As in finagle and linkerd (tower `load::PeakEwma`): a sample above the
//! estimate replaces it at once (the *peak*, so a backend that slows down is
//! avoided immediately), a sample below pulls it down with weight
//! `1 - e^(-Δt/τ)` where Δt is the time since the previous sample (time-based,
//! so 1,000 quick requests do not outvote one slow one). Reads decay the
//! estimate toward 0 the same way, so a backend that got no traffic because
//! it looked slow is tried again after a few τ instead of never.
//!
//! Errors are recorded as at least `error_penalty`: a backend answering 502 in
//! a millisecond must look slow, not fast, or it would attract traffic.
//!
//! Time is passed in as nanoseconds from any monotonic origin (the backend set
//! owns one `Instant`), which keeps the estimator pure and testable.
//!
//! Estimate and timestamp live in one `AtomicU64` (an `f32` of nanoseconds and
//! a `u32` of milliseconds) so an update is a single compare-and-swap: no
//! lock on the response path and no torn estimate/timestamp pairs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const NANOS_PER_MILLI: u64 = 1_000_000;

/// Lock-free peak-EWMA round-trip estimate of one backend.
pub struct PeakEwma {
    /// High half: estimate in ns (`f32` bits, 0 = no sample yet). Low half:
    /// time of the last sample in ms since the origin, wrapping every ~49 days.
    state: AtomicU64,
    /// τ in nanoseconds.
    decay_ns: f64,
    /// Smallest latency an error is recorded as, in nanoseconds.
    penalty_ns: u64,
}

impl PeakEwma {
    /// An estimator with time constant `decay` (τ) that records errors as at
    /// least `error_penalty`. Starts unknown (`get` returns 0).
    pub fn new(decay: Duration, error_penalty: Duration) -> PeakEwma {
        PeakEwma {
            state: AtomicU64::new(0),
            // Validation forbids 0; clamping keeps Δt/τ finite regardless.
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            penalty_ns: saturating_nanos(error_penalty),
        }
    }

    /// Records a successful round trip of `rtt` that ended at `now_ns`.
    pub fn observe(&self, rtt: Duration, now_ns: u64) {
        self.record(saturating_nanos(rtt), now_ns);
    }

    /// Records a failed round trip (connect error, 5xx): as `rtt`, but at least
    /// the error penalty.
    pub fn observe_error(&self, rtt: Duration, now_ns: u64) {
        self.record(saturating_nanos(rtt).max(self.penalty_ns), now_ns);
    }

    /// The estimate at `now_ns` in nanoseconds, decayed for the time since the
    /// last sample; 0 when there has been no sample.
    pub fn get(&self, now_ns: u64) -> u64 {
        let (estimate, stamp) = unpack(self.state.load(Ordering::Relaxed));
        let elapsed = elapsed_ms(stamp, millis(now_ns)).unwrap_or(0);
        (f64::from(estimate) * self.decay(elapsed)).round() as u64
    }

    fn record(&self, rtt_ns: u64, now_ns: u64) {
        let rtt = rtt_ns as f64;
        let now = millis(now_ns);
        // A CAS loop: concurrent samples each apply on top of the other, none is lost.
        let _ = self
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |state| {
                let (estimate, stamp) = unpack(state);
                let estimate = f64::from(estimate);
                // A sample stamped before the last one (threads racing) counts
                // as simultaneous and must not move the clock back.
                let (elapsed, stamp) = match elapsed_ms(stamp, now) {
                    Some(elapsed) => (elapsed, now),
                    None if estimate == 0.0 => (0, now),
                    None => (0, stamp),
                };
                let next = if rtt > estimate {
                    rtt
                } else {
                    let keep = self.decay(elapsed);
                    estimate * keep + rtt * (1.0 - keep)
                };
                Some(pack(next as f32, stamp))
            });
    }

    /// Weight the old estimate keeps after `elapsed_ms`: e^(-Δt/τ).
    fn decay(&self, elapsed_ms: u32) -> f64 {
        if elapsed_ms == 0 {
            return 1.0;
        }
        (-(f64::from(elapsed_ms) * NANOS_PER_MILLI as f64) / self.decay_ns).exp()
    }
}

impl fmt::Debug for PeakEwma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (estimate, stamp) = unpack(self.state.load(Ordering::Relaxed));
        f.debug_struct("PeakEwma")
            .field("estimate_ns", &estimate)
            .field("at_ms", &stamp)
            .finish_non_exhaustive()
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Milliseconds since the origin, wrapped to 32 bits.
fn millis(now_ns: u64) -> u32 {
    (now_ns / NANOS_PER_MILLI) as u32
}

/// How far behind a sample's clock may be and still count as simultaneous
/// (threads finishing at the same time race to record).
const SKEW_MS: u32 = 60_000;

/// Milliseconds from `then` to `now` across the 32-bit wrap; `None` when `now`
/// is slightly before `then`. Gaps of 49.7 days or more read modulo 2^32 ms,
/// which at worst leaves an estimate nobody sampled for that long decayed less.
fn elapsed_ms(then: u32, now: u32) -> Option<u32> {
    let d = now.wrapping_sub(then);
    (d <= u32::MAX - SKEW_MS).then_some(d)
}

fn pack(estimate_ns: f32, stamp_ms: u32) -> u64 {
    (u64::from(estimate_ns.to_bits()) << 32) | u64::from(stamp_ms)
}

fn unpack(state: u64) -> (f32, u32) {
    (f32::from_bits((state >> 32) as u32), state as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const TAU: u64 = 10_000 * MS;

    fn ewma() -> PeakEwma {
        PeakEwma::new(Duration::from_nanos(TAU), Duration::from_secs(1))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn assert_near(got: u64, want: f64) {
        let err = (got as f64 - want).abs() / want;
        assert!(err < 1e-4, "got {got}, want {want}");
    }

    #[test]
    fn unknown_until_the_first_sample() {
        let e = ewma();
        assert_eq!(e.get(0), 0);
        assert_eq!(e.get(123 * TAU), 0);
        e.observe(ms(40), 5 * TAU);
        assert_near(e.get(5 * TAU), 40.0 * MS as f64);
    }

    #[test]
    fn peaks_jump_at_once() {
        let e = ewma();
        e.observe(ms(10), 1_000 * MS);
        e.observe(ms(100), 1_001 * MS);
        assert_near(e.get(1_001 * MS), 100.0 * MS as f64);
    }

    #[test]
    fn lower_samples_pull_by_elapsed_time() {
        let e = ewma();
        e.observe(ms(100), 0);
        e.observe(ms(10), TAU);
        let keep = (-1.0f64).exp();
        assert_near(e.get(TAU), (100.0 * keep + 10.0 * (1.0 - keep)) * MS as f64);

        // Many quick samples in one millisecond do not outvote the peak.
        let e = ewma();
        e.observe(ms(100), 0);
        for _ in 0..1_000 {
            e.observe(ms(1), 0);
        }
        assert_near(e.get(0), 100.0 * MS as f64);

        // Sustained low samples converge.
        for s in 1..=100 {
            e.observe(ms(10), s * 1_000 * MS);
        }
        let got = e.get(100_000 * MS);
        assert!((got as f64 / MS as f64 - 10.0).abs() < 0.1, "{got}");
    }

    #[test]
    fn reads_decay_toward_zero() {
        let e = ewma();
        e.observe(ms(100), 2 * TAU);
        assert_near(e.get(3 * TAU), 100.0 * MS as f64 * (-1.0f64).exp());
        assert!(e.get(50 * TAU) < MS);
        // A reader whose clock is a little behind sees no decay, not garbage.
        assert_near(e.get(2 * TAU - 5 * MS), 100.0 * MS as f64);
    }

    #[test]
    fn errors_cost_at_least_the_penalty() {
        let e = ewma();
        e.observe(ms(20), 0);
        e.observe_error(ms(1), MS);
        assert_near(e.get(MS), 1e9);
        let e = ewma();
        e.observe_error(Duration::from_secs(5), 0);
        assert_near(e.get(0), 5e9);
        // A zero penalty records errors as they came.
        let e = PeakEwma::new(Duration::from_nanos(TAU), Duration::ZERO);
        e.observe_error(ms(3), 0);
        assert_near(e.get(0), 3.0 * MS as f64);
    }

    #[test]
    fn survives_the_millisecond_wrap() {
        let e = ewma();
        let before_wrap = (u64::from(u32::MAX) - 500) * MS;
        e.observe(ms(100), before_wrap);
        // One τ later the 32-bit millisecond stamp has wrapped.
        let keep = (-1.0f64).exp();
        assert_near(e.get(before_wrap + TAU), 100.0 * MS as f64 * keep);
        e.observe(ms(10), before_wrap + TAU);
        assert_near(
            e.get(before_wrap + TAU),
            (100.0 * keep + 10.0 * (1.0 - keep)) * MS as f64,
        );
    }

    #[test]
    fn concurrent_samples_stay_within_their_range() {
        let e = std::sync::Arc::new(ewma());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        e.observe(ms(10 + (i + t) % 11), (i * 7 + t) * MS);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The clock never moves back, so it ends at the latest sample's time.
        let got = e.get((9_999 * 7 + 3) * MS);
        assert!((10 * MS..=20 * MS).contains(&got), "{got}");
    }
}
