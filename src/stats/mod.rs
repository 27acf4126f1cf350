//! Live statistics a person can read: `GET /-/stats` (JSON) and `GET /-/status`
//! (a small self-refreshing HTML page rendering the same JSON).
//!
//! Latency percentiles and error rates come from sliding windows ([`window`]);
//! CPU and memory from the Prometheus process collector; the cache hit ratio
//! from the cache's counters. Backends are shown by name only: this is served on
//! the main listener, which must not reveal internal addresses.
//!
//! This module holds the document's shape and the window; the gateway fills
//! it from its live parts (`gateway::status`), so the backends can keep a
//! window each without a cycle.

pub mod window;

use std::time::Duration;

use serde::Serialize;

use window::Summary;

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

/// The `/-/status` page: no build step, no external assets.
pub const STATUS_PAGE: &str = include_str!("status.html");
