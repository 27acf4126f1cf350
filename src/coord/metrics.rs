//! The `letta_proxy_coord_*` families: leases, fallbacks, the registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

const WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Pre-resolved handles.
#[derive(Clone)]
pub struct CoordMetrics {
    /// 1 while Redis answers coordination calls (leases, heartbeats).
    pub redis_up: IntGauge,
    pub acquired: IntCounter,
    pub timed_out: IntCounter,
    /// Writes ordered by this instance alone because Redis was unreachable.
    pub fallbacks: IntCounter,
    pub lost: IntCounter,
    pub held: IntGauge,
    pub wait: Histogram,
    pub instances: IntGauge,
    pub heartbeat_failures: IntCounter,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // A second registration on one registry is ignored: the first set stays exposed.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl CoordMetrics {
    pub fn new(r: &Registry) -> CoordMetrics {
        let leases = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "letta_proxy_coord_leases_total",
                    "Write leases asked of Redis, by outcome: acquired, timed_out (waited agent_write_timeout), fallback (Redis unreachable: ordered by this instance only).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        );
        CoordMetrics {
            redis_up: register(
                r,
                IntGauge::new(
                    "letta_proxy_coord_redis_up",
                    "1 while Redis answers coordination calls (write leases, and the registry heartbeat every redis.heartbeat); 0: writes are ordered per instance and caps are per instance.",
                )
                .expect("valid metric"),
            ),
            acquired: leases.with_label_values(&["acquired"]),
            timed_out: leases.with_label_values(&["timed_out"]),
            fallbacks: leases.with_label_values(&["fallback"]),
            lost: register(
                r,
                IntCounter::new(
                    "letta_proxy_coord_leases_lost_total",
                    "Held leases that expired in Redis before their write ended (renewals failed): another instance may have written meanwhile.",
                )
                .expect("valid metric"),
            ),
            held: register(
                r,
                IntGauge::new(
                    "letta_proxy_coord_leases_held",
                    "Write leases this instance holds now.",
                )
                .expect("valid metric"),
            ),
            wait: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "letta_proxy_coord_lease_wait_seconds",
                        "Time from asking for a write lease to holding it (acquired leases).",
                    )
                    .buckets(WAIT_BUCKETS.to_vec()),
                )
                .expect("valid metric"),
            ),
            instances: register(
                r,
                IntGauge::new(
                    "letta_proxy_coord_instances",
                    "Live proxy instances in the registry, as of this instance's last heartbeat.",
                )
                .expect("valid metric"),
            ),
            heartbeat_failures: register(
                r,
                IntCounter::new(
                    "letta_proxy_coord_heartbeat_failures_total",
                    "Registry heartbeats that did not reach Redis.",
                )
                .expect("valid metric"),
            ),
        }
    }
}
