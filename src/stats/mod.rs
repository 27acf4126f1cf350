//! Live statistics a person can read: `GET /-/stats` (JSON) and `GET /-/status`
//! (a small self-refreshing HTML page rendering the same JSON).
//!
//! Latency percentiles and error rates come from sliding windows ([`window`]);
//! CPU and memory from the Prometheus process collector; the cache hit ratio
//! from the cache's counters. Backends are shown by name only: this is served on
//! the main listener, which must not reveal internal addresses.

pub mod window;

use std::time::Duration;

use serde::Serialize;

use crate::backend::Upstreams;
use crate::metrics::Metrics;
use window::{Summary, Window};

/// Window the percentiles are computed over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The `/-/stats` document.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub window_seconds: u64,
    pub strategy: &'static str,
    pub overall: Summary,
    pub in_flight: u64,
    pub backends: Vec<BackendStats>,
    /// Share of cache lookups answered without a backend since start (memory,
    /// Redis or a coalesced miss); `null` before any cacheable request or with the cache off.
    pub cache_hit_ratio: Option<f64>,
    pub process: ProcessStats,
    /// Coordination with other instances on the same Redis (write leases,
    /// live instances); `null` when off (no `[redis]`, or `limits.coordinate = false`).
    pub coordination: Option<crate::coord::CoordStatus>,
    /// The HTTPS listener's certificate, when `[server.tls]` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// The certificate served to new HTTPS connections.
#[derive(Debug, Serialize)]
pub struct TlsStatus {
    #[serde(flatten)]
    pub certificate: crate::tls::CertInfo,
    /// What is wrong with it now (expired, expiring within 14 days), if anything.
    pub problem: Option<String>,
}

/// One backend's line.
#[derive(Debug, Serialize)]
pub struct BackendStats {
    pub name: String,
    pub healthy: bool,
    pub ejected: bool,
    pub draining: bool,
    pub in_flight: u64,
    pub max_in_flight: u64,
    /// The cap this instance enforces: its share of `max_in_flight` when
    /// instances coordinate, else `max_in_flight`; `null`: unlimited.
    pub share: Option<u64>,
    #[serde(flatten)]
    pub window: Summary,
}

/// CPU and memory of the proxy process.
#[derive(Debug, Default, Serialize)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_memory_bytes: f64,
    pub open_fds: f64,
}

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

/// The `/-/status` page: no build step, no external assets.
pub const STATUS_PAGE: &str = include_str!("status.html");
