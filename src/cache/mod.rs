//! The response cache: a tower layer in front of the proxy service, with an
//! in-process tier (moka) and an optional shared tier (Redis) invalidated by
//! writes across every proxy instance.
//!
//! # Layout
//!
//! - [`policy`]: pure decisions: is a request cacheable (route rules), may a
//!   response be stored and for how long.
//! - [`key`]: SHA-256 keys over method, path, sorted query, the caller's
//!   identity and the `vary_headers`: two callers never share an entry.
//! - [`tags`]: which Letta ids an entry depends on and which a write changes.
//! - [`relations`]: which blocks each agent has, so a turn invalidates the
//!   views of the blocks it may have edited.
//! - [`epochs`]: keeps a slow answer from being stored after a write made it stale.
//! - [`l1`]: moka bounded by bytes, per-entry TTL, tag index.
//! - [`l2`]: Redis (standalone or cluster, through [`crate::redis`]: one
//!   timeout, a circuit breaker) with atomic Lua scripts; [`pubsub`] carries
//!   invalidations to the other instances; the Lua scripts live in `scripts.rs`.
//! - [`coalesce`]: concurrent misses for one key make one backend request.
//! - [`tee`]: body observers that copy a miss while it streams to the client.
//! - [`service`]: the layer and the read path: lookup, coalesce, fill.
//! - [`write`]: the write path: invalidate, hold, suppress unchanged writes.
//! - [`metrics`]: the `letta_proxy_cache_*` families.
//!
//! Correctness rules, in one place: an entry is only served to the identity
//! that caused it (the key); a successful write drops every entry tagged with
//! what it touched, locally before its response is returned, in Redis before
//! its response is returned, and on other instances when the pub/sub message
//! arrives; a fill overtaken by a write is not stored (epochs, locally and in
//! Redis); Redis trouble is a miss, never an error.

pub mod coalesce;
pub mod entry;
pub mod epochs;
pub mod key;
pub mod l1;
pub mod l2;
pub mod metrics;
pub mod policy;
pub mod pubsub;
pub mod relations;
mod scripts;
pub mod service;
pub mod tags;
pub mod tee;
pub mod write;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::CacheConfig;

pub use service::{CacheLayer, CacheService};

use coalesce::Coalescer;
use entry::Entry;
use epochs::Epochs;
use key::CacheKey;
use l1::L1;
use l2::{Invalidation, L2};
use metrics::CacheMetrics;
use policy::Policy;
use relations::Relations;
use tags::WritePlan;

/// Everything the layer and the background tasks share.
pub struct Shared {
    /// The policy in force (rules, TTLs, vary; follows reloads).
    policy: ArcSwap<Policy>,
    pub(crate) l1: L1,
    pub(crate) l2: Option<L2>,
    pub(crate) epochs: Epochs,
    pub(crate) relations: Relations,
    pub(crate) coalescer: Arc<Coalescer>,
    pub(crate) metrics: CacheMetrics,
    pub(crate) fill_timeout: Duration,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) max_scan_body: u64,
    pub(crate) suppress_ttl: Duration,
    /// Remembered writes between their body's end and their L1 insert.
    pub(crate) remembering:
        std::sync::Mutex<std::collections::HashMap<CacheKey, (Arc<Entry>, u64)>>,
    /// Remote invalidations applied (tests measure propagation with it).
    remote_applied: AtomicU64,
    /// Local flushes (pub/sub (re)subscriptions and remote flushes).
    flushes: AtomicUsize,
}

/// A fill's starting point: what it must not have been overtaken by.
#[derive(Debug, Clone, Copy)]
pub struct FillStart {
    pub local: u64,
    /// Redis's epoch, read with the lookup; `None`: not stored in Redis.
    pub redis: Option<u64>,
    pub at: Instant,
}

/// The cache of one proxy instance. Dropping it stops its background tasks.
pub struct Cache {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Cache {
    /// Builds the cache for a validated `config` and starts its background
    /// tasks (Redis connection, invalidation channel) until `stop` or drop.
    /// `redis` is the client the proxy shares (`None`: in memory only).
    /// Must run inside a tokio runtime.
    pub fn start(
        c: &CacheConfig,
        redis: Option<Arc<crate::redis::Redis>>,
        registry: &prometheus::Registry,
        stop: CancellationToken,
    ) -> Arc<Cache> {
        let metrics = CacheMetrics::new(registry);
        let l1 = L1::new(c.max_bytes, &metrics);
        metrics::L1Size::register(registry, l1.handle());
        let longest = c
            .rules
            .iter()
            .filter_map(|r| r.ttl)
            .fold(c.ttl.max(c.suppress_ttl), Duration::max);
        let l2 = redis.map(|redis| L2::new(c, redis, longest, metrics.clone()));
        let shared = Arc::new(Shared {
            policy: ArcSwap::from_pointee(Policy::new(c, None)),
            l1,
            l2,
            epochs: Epochs::new(c.fill_timeout),
            relations: Relations::default(),
            coalescer: Arc::new(Coalescer::default()),
            metrics,
            fill_timeout: c.fill_timeout,
            coalesce_timeout: c.coalesce_timeout,
            max_scan_body: c.max_scan_body,
            suppress_ttl: c.suppress_ttl,
            remembering: Default::default(),
            remote_applied: AtomicU64::new(0),
            flushes: AtomicUsize::new(0),
        });
        if shared.l2.is_some() {
            tokio::spawn(maintain(shared.clone(), stop.clone()));
            tokio::spawn(pubsub::run(shared.clone(), stop.clone()));
        }
        Arc::new(Cache { shared, stop })
    }

    /// Stops the background tasks (the server does at shutdown).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The tower layer to put in front of the proxy service.
    pub fn layer(&self) -> CacheLayer {
        CacheLayer::new(self.shared.clone())
    }

    /// Follows a reloaded configuration: rules, TTLs, vary and ignored
    /// headers, size cap, `enabled` and suppression apply at once; tiers and
    /// Redis settings at restart.
    pub fn follow(&self, config: &crate::Config) {
        self.shared.policy.store(Arc::new(Policy::new(
            &config.cache,
            Some(&config.balancer.affinity_header),
        )));
    }

    /// Remote invalidations applied so far.
    pub fn remote_invalidations(&self) -> u64 {
        self.shared.remote_applied.load(Ordering::SeqCst)
    }

    /// Times the in-process tier was emptied (each invalidation-channel subscription).
    pub fn flushes(&self) -> usize {
        self.shared.flushes.load(Ordering::SeqCst)
    }

    /// Whether Redis is configured and its connection is open.
    pub fn redis_connected(&self) -> bool {
        self.shared.l2.as_ref().is_some_and(|l2| l2.is_connected())
    }

    /// Entries in the in-process tier, after moka's pending bookkeeping.
    pub async fn l1_entries(&self) -> u64 {
        self.shared.l1.sync().await;
        self.shared.l1.entry_count()
    }

    /// Drops every entry tagged `tag` here, in Redis and on every instance.
    pub async fn purge_tag(&self, tag: &str) -> usize {
        let plan = WritePlan {
            tags: vec![Arc::from(tag)],
            agent: None,
            forget_agent: false,
            turn: false,
        };
        self.shared.invalidate(&plan).await
    }
}

impl Cache {
    /// Drops every entry that mentions the Letta id `id`; returns how many here.
    pub async fn purge_id(&self, id: &str) -> usize {
        self.purge_tag(id).await
    }

    /// Drops every entry whose path starts with `prefix`; returns how many here.
    pub async fn purge_prefix(&self, prefix: &str) -> usize {
        // Entries are indexed by tag: a prefix naming an id maps to that id, a
        // collection (`/v1/tools`) to its path tag; anything else is not
        // indexed, so everything goes rather than leave a stale answer.
        let ids = tags::scan_ids(prefix.as_bytes());
        let depth = prefix.trim_end_matches('/').matches('/').count();
        match (ids.first(), tags::path_tag(prefix)) {
            (Some(id), _) => self.purge_tag(id).await,
            (None, Some(p)) if depth == 2 => self.purge_tag(&p).await,
            _ => self.purge_everything().await,
        }
    }
}

impl Cache {
    /// Drops every entry here, in Redis, and on every instance.
    pub async fn purge_everything(&self) -> usize {
        let n = self.shared.l1.entry_count() as usize;
        self.shared.flush_local("purge");
        if let Some(l2) = &self.shared.l2 {
            l2.purge_all().await;
        }
        n
    }
}

impl Shared {
    pub(crate) fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Where a fill starts (read before anything is fetched).
    pub(crate) fn fill_start(&self, redis: Option<u64>) -> FillStart {
        FillStart {
            local: self.epochs.current(),
            redis,
            at: Instant::now(),
        }
    }

    /// Stores a completed answer in both tiers unless a write overtook it.
    /// `teach`: the agent's blocks this answer lists (learned only if stored).
    pub(crate) async fn store(
        &self,
        key: CacheKey,
        entry: Arc<Entry>,
        start: FillStart,
        teach: Option<relations::Taught>,
        shared_tier: bool,
    ) -> bool {
        if start.at.elapsed() > self.fill_timeout {
            self.metrics.not_stored(metrics::NotStored::TooSlow);
            return false;
        }
        if !self.epochs.still_valid(start.local, &entry.tags) {
            self.metrics.not_stored(metrics::NotStored::RacedWrite);
            return false;
        }
        if let Some((agent, blocks)) = &teach {
            self.relations.learn(agent, blocks.clone());
        }
        self.l1.insert(key, entry.clone()).await;
        // Checked again: an invalidation between the first check and the insert
        // did not see this entry in the index.
        if !self.epochs.still_valid(start.local, &entry.tags) {
            self.l1.remove(&key).await;
            if let Some((agent, _)) = &teach {
                self.relations.forget(agent);
            }
            self.metrics.not_stored(metrics::NotStored::RacedWrite);
            return false;
        }
        self.metrics.stored_l1.inc();
        if let (true, Some(l2), Some(redis_start)) = (shared_tier, &self.l2, start.redis) {
            let teach = teach.as_ref().map(|(a, b)| (a.as_str(), &b[..]));
            if l2.store(&key, &entry, redis_start, teach).await {
                self.metrics.stored_l2.inc();
            }
        }
        true
    }

    /// Puts an entry read from Redis into L1 (unless a write overtook the read).
    pub(crate) async fn fill_from_l2(&self, key: CacheKey, entry: Entry, local: u64) -> Arc<Entry> {
        let entry = Arc::new(entry);
        if self.epochs.still_valid(local, &entry.tags) {
            self.l1.insert(key, entry.clone()).await;
            if !self.epochs.still_valid(local, &entry.tags) {
                self.l1.remove(&key).await;
            }
        }
        entry
    }

    /// Applies a successful write: local tier now, Redis (and through it every
    /// instance) before returning. Returns the local entries dropped.
    pub(crate) async fn invalidate(&self, plan: &WritePlan) -> usize {
        let known = plan.agent.as_ref().and_then(|a| self.relations.get(a));
        let local_tags = tags::expand(plan, known.as_deref());
        if let (true, Some(a)) = (plan.forget_agent, &plan.agent) {
            self.relations.forget(a);
        }
        self.epochs.invalidate(&local_tags);
        let n = self.l1.invalidate(&local_tags).await;
        self.metrics.invalidations_local.inc();
        self.metrics.invalidated_l1.inc_by(n as u64);
        if let Some(l2) = &self.l2 {
            // Redis expands an agent this instance knows nothing about with what
            // it knows (or the every-block fallback); known blocks go as tags.
            let mut inv = Invalidation {
                tags: plan.tags.clone(),
                ..Invalidation::default()
            };
            if let Some(a) = &plan.agent {
                match &known {
                    Some(blocks) => inv.tags.extend(blocks.iter().cloned()),
                    None => inv.expand.push(a.clone()),
                }
                if plan.forget_agent {
                    inv.forget.push(a.clone());
                }
            }
            if let Some(deleted) = l2.invalidate(inv).await {
                self.metrics.invalidated_l2.inc_by(deleted);
            }
        }
        n
    }

    /// Applies an invalidation published by another instance.
    pub(crate) async fn apply_remote(&self, m: pubsub::Message) {
        for a in &m.forget {
            self.relations.forget(a);
        }
        if m.flush {
            self.flush_local("another instance flushed the shared tier");
        } else {
            self.epochs.invalidate(&m.tags);
            let n = self.l1.invalidate(&m.tags).await;
            self.metrics.invalidated_l1.inc_by(n as u64);
        }
        self.metrics.invalidations_remote.inc();
        self.remote_applied.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets everything held in this instance.
    pub(crate) fn flush_local(&self, why: &str) {
        self.epochs.flush();
        self.l1.clear();
        self.relations.forget_all();
        self.metrics.flushes.inc();
        self.flushes.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(why, "cache: in-process tier flushed");
    }
}

/// Keeps the Redis connection open and replays invalidations Redis missed.
async fn maintain(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(l2) = shared.l2.as_ref() else { return };
    let mut backoff = Duration::from_millis(100);
    loop {
        if l2.connect().await {
            backoff = Duration::from_millis(250);
            if l2.has_pending() {
                l2.replay().await;
            }
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}
