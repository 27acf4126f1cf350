//! A sliding window of recent request outcomes, for percentiles a person reads
//! (`/-/stats`), as opposed to Prometheus histograms, which are for machines.
//!
//! A fixed ring of the last `CAPACITY` samples (time, latency, error) behind a
//! mutex: recording is one uncontended lock and three stores; percentiles are
//! computed on demand over the samples younger than the window. Exact, bounded
//! memory, and the rare reader pays for the sort, not the request path.

use std::sync::Mutex;
use std::time::Duration;

/// Samples kept per window (the newest win).
const CAPACITY: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Sample {
    at_ns: u64,
    latency_us: u32,
    error: bool,
}

/// Recent outcomes of one backend (or of the whole proxy).
pub struct Window {
    ring: Mutex<Ring>,
}

struct Ring {
    samples: Vec<Sample>,
    next: usize,
    total: u64,
    errors: u64,
}

/// Figures over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Requests completed in the window (capped at the ring size).
    pub requests: u64,
    /// Share of those that failed (5xx or proxy error), 0..1.
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// Requests completed since start (not windowed).
    pub total_requests: u64,
    /// Failed requests since start.
    pub total_errors: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window::new()
    }
}

impl Window {
    pub fn new() -> Window {
        Window {
            ring: Mutex::new(Ring {
                samples: Vec::with_capacity(CAPACITY),
                next: 0,
                total: 0,
                errors: 0,
            }),
        }
    }

    /// Records one finished request at `now_ns` (monotonic).
    pub fn record(&self, now_ns: u64, latency: Duration, error: bool) {
        let s = Sample {
            at_ns: now_ns,
            latency_us: latency.as_micros().min(u32::MAX as u128) as u32,
            error,
        };
        let mut r = self.ring.lock().expect("stats window poisoned");
        r.total += 1;
        r.errors += u64::from(error);
        if r.samples.len() < CAPACITY {
            r.samples.push(s);
        } else {
            let i = r.next;
            r.samples[i] = s;
        }
        r.next = (r.next + 1) % CAPACITY;
    }

    /// Figures over the samples of the last `window` before `now_ns`.
    pub fn summary(&self, now_ns: u64, window: Duration) -> Summary {
        let since = now_ns.saturating_sub(window.as_nanos() as u64);
        let (mut lat, errors, total, total_errors) = {
            let r = self.ring.lock().expect("stats window poisoned");
            let recent: Vec<Sample> = r
                .samples
                .iter()
                .copied()
                .filter(|s| s.at_ns >= since)
                .collect();
            let errors = recent.iter().filter(|s| s.error).count();
            (
                recent.iter().map(|s| s.latency_us).collect::<Vec<_>>(),
                errors,
                r.total,
                r.errors,
            )
        };
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            // Nearest-rank percentile.
            let rank = ((p / 100.0) * lat.len() as f64).ceil().max(1.0) as usize;
            lat[rank.min(lat.len()) - 1] as f64 / 1000.0
        };
        Summary {
            requests: lat.len() as u64,
            error_rate: if lat.is_empty() {
                0.0
            } else {
                errors as f64 / lat.len() as f64
            },
            p50_ms: pct(50.0),
            p95_ms: pct(95.0),
            p99_ms: pct(99.0),
            total_requests: total,
            total_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let w = Window::new();
        // 1..=100 ms, one each.
        for ms in 1..=100u64 {
            w.record(10 * S, Duration::from_millis(ms), ms > 90);
        }
        let s = w.summary(10 * S, Duration::from_secs(60));
        assert_eq!(s.requests, 100);
        assert_eq!((s.p50_ms, s.p95_ms, s.p99_ms), (50.0, 95.0, 99.0));
        assert!((s.error_rate - 0.10).abs() < 1e-9);
    }

    #[test]
    fn old_samples_leave_the_window_and_the_ring_is_bounded() {
        let w = Window::new();
        w.record(0, Duration::from_millis(500), true);
        for _ in 0..(CAPACITY + 10) {
            w.record(100 * S, Duration::from_millis(1), false);
        }
        let s = w.summary(100 * S, Duration::from_secs(60));
        assert_eq!(s.requests, CAPACITY as u64);
        assert_eq!(s.p99_ms, 1.0);
        assert_eq!(s.error_rate, 0.0);
        assert_eq!(s.total_requests, CAPACITY as u64 + 11);
        assert_eq!(s.total_errors, 1);
        assert_eq!(w.summary(1000 * S, Duration::from_secs(60)).requests, 0);
    }
}
