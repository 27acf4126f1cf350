//! The cache's Prometheus families, registered on the proxy's registry.
//!
//! Every label combination is resolved once here, so the request path only
//! increments pre-built counters (no label hashing, no formatting). L1 size is
//! read from moka at scrape time by a small collector.

use std::sync::Arc;

use moka::notification::RemovalCause;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::entry::Entry;
use super::key::CacheKey;
use super::policy::NotStored;

const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// A Redis operation, for labels.
#[derive(Debug, Clone, Copy)]
pub enum RedisOp {
    Get,
    Store,
    Invalidate,
    Subscribe,
    Connect,
}

impl RedisOp {
    const ALL: [RedisOp; 5] = [
        RedisOp::Get,
        RedisOp::Store,
        RedisOp::Invalidate,
        RedisOp::Subscribe,
        RedisOp::Connect,
    ];
    fn label(self) -> &'static str {
        match self {
            RedisOp::Get => "get",
            RedisOp::Store => "store",
            RedisOp::Invalidate => "invalidate",
            RedisOp::Subscribe => "subscribe",
            RedisOp::Connect => "connect",
        }
    }
}

/// Pre-resolved handles.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hit_l1: IntCounter,
    pub hit_l2: IntCounter,
    pub miss_l1: IntCounter,
    pub miss_l2: IntCounter,
    /// L2 not consulted: Redis down, breaker open, invalidations pending.
    pub skip_l2: IntCounter,
    pub bypass: IntCounter,
    /// Requests carrying a header no key rule classifies.
    pub unkeyed: IntCounter,
    pub coalesced_hit: IntCounter,
    pub coalesced_fallthrough: IntCounter,
    pub stored_l1: IntCounter,
    pub stored_l2: IntCounter,
    not_stored: IntCounterVec,
    evicted: [IntCounter; 4],
    pub invalidations_local: IntCounter,
    pub invalidations_remote: IntCounter,
    pub flushes: IntCounter,
    pub invalidated_l1: IntCounter,
    pub invalidated_l2: IntCounter,
    redis_errors: [IntCounter; 5],
    redis_seconds: [Histogram; 5],
    pub redis_available: IntGauge,
    pub redis_pending: IntGauge,
    pub suppressed: IntCounter,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    let _ = r.register(Box::new(c.clone()));
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    let _ = r.register(Box::new(c.clone()));
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    let _ = r.register(Box::new(g.clone()));
    g
}

impl CacheMetrics {
    /// Creates and registers the families (a second registration on the same
    /// registry is ignored: the first set stays exposed).
    pub fn new(r: &Registry) -> CacheMetrics {
        let lookups = counter_vec(
            r,
            "letta_proxy_cache_lookups_total",
            "Cache lookups by tier and result (hit, miss; skip: Redis not consulted).",
            &["tier", "result"],
        );
        let outcome = counter_vec(
            r,
            "letta_proxy_cache_requests_total",
            "Cacheable requests by outcome: hit (l1, l2, coalesced), miss, bypass (client no-cache/no-store), unkeyed (a header neither identity, vary nor ignored), coalesced_fallthrough.",
            &["outcome"],
        );
        let stored = counter_vec(
            r,
            "letta_proxy_cache_stores_total",
            "Entries stored, by tier.",
            &["tier"],
        );
        let not_stored = counter_vec(
            r,
            "letta_proxy_cache_not_stored_total",
            "Cacheable answers not stored, by reason.",
            &["reason"],
        );
        let evicted = counter_vec(
            r,
            "letta_proxy_cache_evictions_total",
            "In-process entries removed, by reason (expired, size, invalidated, replaced).",
            &["reason"],
        );
        let invalidations = counter_vec(
            r,
            "letta_proxy_cache_invalidations_total",
            "Invalidations applied, by origin (local: a write through this instance; remote: received over Redis pub/sub; flush: everything dropped).",
            &["origin"],
        );
        let invalidated = counter_vec(
            r,
            "letta_proxy_cache_invalidated_entries_total",
            "Entries dropped by invalidations, by tier.",
            &["tier"],
        );
        let redis_errors = counter_vec(
            r,
            "letta_proxy_cache_redis_errors_total",
            "Failed or timed-out Redis calls, by operation (each one was a miss, never an error to a client).",
            &["op"],
        );
        let redis_seconds = HistogramVec::new(
            HistogramOpts::new(
                "letta_proxy_cache_redis_duration_seconds",
                "Duration of successful Redis calls, by operation.",
            )
            .buckets(REDIS_BUCKETS.to_vec()),
            &["op"],
        )
        .expect("valid metric");
        let _ = r.register(Box::new(redis_seconds.clone()));
        let ops = RedisOp::ALL;
        CacheMetrics {
            hit_l1: lookups.with_label_values(&["l1", "hit"]),
            miss_l1: lookups.with_label_values(&["l1", "miss"]),
            hit_l2: lookups.with_label_values(&["l2", "hit"]),
            miss_l2: lookups.with_label_values(&["l2", "miss"]),
            skip_l2: lookups.with_label_values(&["l2", "skip"]),
            bypass: outcome.with_label_values(&["bypass"]),
            unkeyed: outcome.with_label_values(&["unkeyed"]),
            coalesced_hit: outcome.with_label_values(&["coalesced"]),
            coalesced_fallthrough: outcome.with_label_values(&["coalesced_fallthrough"]),
            stored_l1: stored.with_label_values(&["l1"]),
            stored_l2: stored.with_label_values(&["l2"]),
            not_stored,
            evicted: ["expired", "size", "invalidated", "replaced"]
                .map(|reason| evicted.with_label_values(&[reason])),
            invalidations_local: invalidations.with_label_values(&["local"]),
            invalidations_remote: invalidations.with_label_values(&["remote"]),
            flushes: invalidations.with_label_values(&["flush"]),
            invalidated_l1: invalidated.with_label_values(&["l1"]),
            invalidated_l2: invalidated.with_label_values(&["l2"]),
            redis_errors: ops.map(|op| redis_errors.with_label_values(&[op.label()])),
            redis_seconds: ops.map(|op| redis_seconds.with_label_values(&[op.label()])),
            redis_available: gauge(
                r,
                "letta_proxy_cache_redis_available",
                "1 while Redis is configured, connected and not shed by the circuit breaker.",
            ),
            redis_pending: gauge(
                r,
                "letta_proxy_cache_redis_pending_invalidations",
                "Invalidations waiting for Redis to come back (the shared tier is not read meanwhile).",
            ),
            suppressed: counter(
                r,
                "letta_proxy_cache_suppressed_writes_total",
                "Block writes answered without reaching Letta: same body as the last one, nothing written since.",
            ),
        }
    }

    pub fn not_stored(&self, reason: &'static str) {
        self.not_stored.with_label_values(&[reason]).inc();
    }

    pub fn not_stored_because(&self, r: NotStored) {
        self.not_stored(r.label());
    }

    pub fn evicted(&self, cause: RemovalCause) {
        let i = match cause {
            RemovalCause::Expired => 0,
            RemovalCause::Size => 1,
            RemovalCause::Explicit => 2,
            RemovalCause::Replaced => 3,
        };
        self.evicted[i].inc();
    }

    pub fn redis_error(&self, op: RedisOp) {
        self.redis_errors[op as usize].inc();
    }

    pub fn redis_ok(&self, op: RedisOp, seconds: f64) {
        self.redis_seconds[op as usize].observe(seconds);
    }
}

/// `letta_proxy_cache_l1_entries` and `letta_proxy_cache_l1_bytes`, read at scrape time.
pub struct L1Size {
    cache: moka::future::Cache<CacheKey, Arc<Entry>>,
    entries: IntGauge,
    bytes: IntGauge,
}

impl L1Size {
    pub fn register(r: &Registry, cache: moka::future::Cache<CacheKey, Arc<Entry>>) {
        let c = L1Size {
            cache,
            entries: IntGauge::new(
                "letta_proxy_cache_l1_entries",
                "Entries in the in-process tier (approximate).",
            )
            .expect("valid metric"),
            bytes: IntGauge::new(
                "letta_proxy_cache_l1_bytes",
                "Bytes charged to the in-process tier (approximate).",
            )
            .expect("valid metric"),
        };
        let _ = r.register(Box::new(c));
    }
}

impl Collector for L1Size {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.entries.desc();
        d.extend(self.bytes.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.entries.set(self.cache.entry_count() as i64);
        self.bytes.set(self.cache.weighted_size() as i64);
        let mut m = self.entries.collect();
        m.extend(self.bytes.collect());
        m
    }
}
