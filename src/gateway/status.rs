//! `/-/stats`: the [`Snapshot`] filled from the gateway's live parts (the
//! backends and their windows, the metrics, coordination, TLS).

use crate::backend::Upstreams;
use crate::metrics::Metrics;
use crate::stats::window::Window;
use crate::stats::{BackendStats, ProcessStats, Snapshot, WINDOW};

/// Builds the snapshot from the backends, the overall window and the metrics.
pub fn snapshot(upstreams: &Upstreams, overall: &Window, metrics: &Metrics) -> Snapshot {
    let now = upstreams.now_ns();
    let set = upstreams.load();
    let backends: Vec<BackendStats> = set
        .backends
        .iter()
        .map(|b| BackendStats {
            name: b.name.to_string(),
            healthy: b.is_healthy(),
            ejected: b.outlier.is_ejected(now),
            draining: b.is_draining(),
            in_flight: b.in_flight(),
            max_in_flight: b.max_in_flight(),
            share: b.local_cap(),
            window: b.window.summary(now, WINDOW),
        })
        .collect();
    let families = metrics.gather();
    let value = |name: &str| -> Option<f64> {
        families.iter().find(|f| f.name() == name).map(|f| {
            f.get_metric()
                .iter()
                .map(|m| match f.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().value(),
                    _ => m.get_gauge().value(),
                })
                .sum()
        })
    };
    // Sum of a counter family's samples whose labels include every `(name, value)`.
    let counter = |family: &str, labels: &[(&str, &str)]| -> f64 {
        families
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().value())
            .sum()
    };
    // A cacheable request is looked up in memory first: hits are memory hits, Redis
    // hits and requests served by a coalesced miss; the rest went to a backend.
    let lookups = "letta_proxy_cache_lookups_total";
    let l1_hits = counter(lookups, &[("tier", "l1"), ("result", "hit")]);
    let l1_misses = counter(lookups, &[("tier", "l1"), ("result", "miss")]);
    let l2_hits = counter(lookups, &[("tier", "l2"), ("result", "hit")]);
    let coalesced = counter(
        "letta_proxy_cache_requests_total",
        &[("outcome", "coalesced")],
    );
    let looked_up = l1_hits + l1_misses;
    Snapshot {
        window_seconds: WINDOW.as_secs(),
        strategy: set.strategy.name(),
        overall: overall.summary(now, WINDOW),
        in_flight: set.backends.iter().map(|b| b.in_flight()).sum(),
        backends,
        cache_hit_ratio: (looked_up > 0.0)
            .then(|| ((l1_hits + l2_hits + coalesced) / looked_up).min(1.0)),
        process: ProcessStats {
            cpu_seconds: value("process_cpu_seconds_total").unwrap_or(0.0),
            resident_memory_bytes: value("process_resident_memory_bytes").unwrap_or(0.0),
            open_fds: value("process_open_fds").unwrap_or(0.0),
        },
        coordination: None,
        tls: None,
    }
}
