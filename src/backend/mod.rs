//! The backends: their live state, the set the balancer picks from, and the
//! in-flight accounting that ends with the response body.
//!
//! [`Upstreams`] holds the current [`BackendSet`] behind an `ArcSwap`: a request
//! loads it once (no lock), and a reload swaps in a whole new set and strategy at
//! once. A backend that survives a reload is the same `Arc<Backend>` in the new set,
//! so it keeps its counters and its connection pool.
//!
//! A backend owns what describes it: its connection [`pool`] (idle connections
//! wait in `idle`, parked to their socket when plain), its active-health
//! verdict ([`health_state`], fed by the prober in `crate::health`), its
//! passive-health state ([`outlier`], fed by real traffic), and the [`queue`] of
//! requests waiting for a slot when every backend is at its cap.
//!
//! Caps across instances: several proxy instances sharing a Redis split a
//! backend's `max_in_flight` between them (`crate::coord::share`). A backend
//! keeps its configured cap and, beside it, the cap this instance enforces
//! ([`Backend::local_cap`]); [`Upstreams::set_cap_share`] installs the rule
//! that derives one from the other, and [`Upstreams::apply_cap_shares`]
//! re-derives every local cap when the set of live instances changes. Without
//! a rule the local cap is the configured one.

mod guard;
pub mod health_state;
mod idle;
pub mod outlier;
pub mod pool;
pub mod queue;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderValue;
use rand::RngCore;

use health_state::{HealthState, Transition};
use outlier::{Outlier, OutlierPolicy};

pub use crate::config::BackendUrl;
pub use guard::InFlight;

use crate::balance::{self, BackendSpec, LoadView, PickRequest, Strategy};
use crate::config::{BackendConfig, Config};
use crate::metrics::{BackendMetrics, Metrics};
use crate::tls::BackendTls;
use pool::{Pool, PoolConfig};
use queue::{Attempt, WaitQueue};

/// One Letta server and its live state.
pub struct Backend {
    /// Config name, shown in metrics and `x-letta-proxy-backend`.
    pub name: Arc<str>,
    /// Where it listens.
    pub url: BackendUrl,
    /// Relative share of traffic (updated in place by a reload).
    weight: AtomicU32,
    /// Most requests in flight at once (0 = no cap; updated in place by a reload).
    max_in_flight: AtomicU64,
    /// The cap this instance enforces: its share of `max_in_flight` when
    /// instances coordinate, else `max_in_flight` itself. [`NO_CAP`] = none;
    /// 0 = this instance must not use the backend.
    local_cap: AtomicU64,
    /// `name` as a ready header value (built once, cloned per response).
    pub name_header: HeaderValue,
    in_flight: AtomicU64,
    /// Set by active health checks; an unhealthy backend is skipped while others are usable.
    healthy: AtomicBool,
    /// The active checks' threshold state (only the prober touches it).
    probe_state: std::sync::Mutex<HealthState>,
    /// Passive health: ejection after consecutive failures of real traffic.
    pub outlier: Outlier,
    /// Woken whenever a slot is released, for requests queued at the caps.
    queue: Arc<WaitQueue>,
    /// A draining backend takes no new requests; in-flight ones finish.
    draining: AtomicBool,
    /// Shared with every backend of the proxy: the total in flight, for bounded-load affinity.
    total_in_flight: Arc<AtomicU64>,
    /// Latency estimate fed by every response, read by `least_latency`.
    pub latency: balance::PeakEwma,
    pub metrics: BackendMetrics,
    /// Recent outcomes, for `/-/stats`.
    pub window: crate::stats::window::Window,
    /// Keep-alive connections to this backend (kept across reloads with the backend).
    pub pool: Arc<Pool>,
}

impl Backend {
    /// Relative share of traffic.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// The in-flight cap (0 = none).
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// The cap this instance enforces (`None`: unlimited). Its share of
    /// [`Backend::max_in_flight`] when instances coordinate through Redis, else
    /// that cap itself. `Some(0)`: this instance does not use the backend.
    pub fn local_cap(&self) -> Option<u64> {
        let cap = self.local_cap.load(Ordering::Relaxed);
        (cap != NO_CAP).then_some(cap)
    }

    /// Sets the cap this instance enforces; returns whether it grew (then
    /// requests queued at the caps may go).
    fn set_local_cap(&self, cap: Option<u64>) -> bool {
        let new = cap.unwrap_or(NO_CAP);
        let old = self.local_cap.swap(new, Ordering::Relaxed);
        new > old
    }

    /// Whether this instance's share of the backend is zero (it has
    /// `max_in_flight` below the number of instances, and others hold it all).
    pub fn has_no_share(&self) -> bool {
        self.local_cap.load(Ordering::Relaxed) == 0
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the last health verdict was "up".
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health verdict.
    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::Relaxed);
    }

    /// Whether the backend is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or stops draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Whether health allows traffic at `now`: up by probes, not ejected by traffic.
    pub fn is_usable(&self, now: u64) -> bool {
        self.is_healthy() && !self.outlier.is_ejected(now)
    }

    /// Whether the backend is below the in-flight cap this instance enforces.
    pub fn has_capacity(&self) -> bool {
        // NO_CAP is never reached: one compare covers "unlimited" too.
        self.in_flight() < self.local_cap.load(Ordering::Relaxed)
    }

    /// Whether the backend may take a new request at `now`: usable, not draining, under its cap.
    pub fn eligible(&self, now: u64) -> bool {
        self.is_usable(now) && !self.is_draining() && self.has_capacity()
    }

    /// Records an active probe result; returns the transition when the verdict flipped.
    pub fn observe_probe(
        &self,
        ok: bool,
        unhealthy_threshold: u32,
        healthy_threshold: u32,
    ) -> Option<Transition> {
        let mut st = self.probe_state.lock().expect("probe state poisoned");
        let t = st.observe(ok, unhealthy_threshold, healthy_threshold);
        self.set_healthy(st.is_up());
        t
    }

    /// Takes one in-flight slot if the cap allows; the slot is released when the
    /// returned guard drops (at the end of the response body).
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.local_cap.load(Ordering::Relaxed);
        if max == NO_CAP {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            // CAS, not check-then-add: two racing requests must not both take the last slot.
            self.in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .ok()?;
        }
        self.total_in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.inc();
        Some(InFlight::new(self.clone()))
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.total_in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.dec();
        self.queue.wake_one();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field("in_flight", &self.in_flight())
            .field("weight", &self.weight())
            .finish_non_exhaustive()
    }
}

/// [`Backend::local_cap`] of an unlimited backend.
const NO_CAP: u64 = u64::MAX;

/// The rule deriving this instance's cap on a backend from its name and
/// configured cap (0 = unlimited): `None` unlimited, `Some(0)` not here.
/// Installed by the gateway when instances coordinate (`Coordinator::share`).
pub type CapShare = Arc<dyn Fn(&str, u64) -> Option<u64> + Send + Sync>;

/// The backends in config order plus the strategy built for exactly them.
pub struct BackendSet {
    pub backends: Vec<Arc<Backend>>,
    pub strategy: Box<dyn Strategy>,
    /// `letta_proxy_balancer_selections_total{strategy, backend}`, resolved per set.
    selections: Vec<prometheus::IntCounter>,
}

impl BackendSet {
    /// Whether at least one backend is usable and not draining at `now` (it may
    /// be busy: requests then queue).
    pub fn any_usable(&self, now: u64) -> bool {
        self.backends
            .iter()
            .any(|b| b.is_usable(now) && !b.is_draining())
    }
}

/// The live backend set, swapped whole on reload.
pub struct Upstreams {
    current: ArcSwap<BackendSet>,
    total_in_flight: Arc<AtomicU64>,
    /// Requests waiting because every usable backend is at its cap.
    pub queue: Arc<WaitQueue>,
    outlier_policy: std::sync::RwLock<OutlierPolicy>,
    /// How local caps derive from configured ones (`None`: equal).
    cap_share: std::sync::RwLock<Option<CapShare>>,
    metrics: Metrics,
    /// Monotonic origin for latency timestamps.
    epoch: Instant,
}

impl Upstreams {
    /// Builds the backend set of `config`.
    pub fn new(config: &Config, metrics: Metrics) -> Upstreams {
        let up = Upstreams {
            current: ArcSwap::from_pointee(BackendSet {
                backends: Vec::new(),
                strategy: balance::build(&config.balancer, &[]),
                selections: Vec::new(),
            }),
            total_in_flight: Arc::new(AtomicU64::new(0)),
            queue: Arc::new(WaitQueue::new(
                config.limits.queue_size,
                config.limits.queue_timeout,
            )),
            outlier_policy: std::sync::RwLock::new(outlier_policy(config)),
            cap_share: std::sync::RwLock::new(None),
            metrics,
            epoch: Instant::now(),
        };
        up.replace(config);
        up
    }

    /// The current set (a cheap, lock-free snapshot).
    pub fn load(&self) -> arc_swap::Guard<Arc<BackendSet>> {
        self.current.load()
    }

    /// The current set, as an owned `Arc` (for long-lived holders).
    pub fn load_full(&self) -> Arc<BackendSet> {
        self.current.load_full()
    }

    /// Swaps in the backends and strategy of `config`. Backends whose name and URL
    /// are unchanged are carried over with their state.
    pub fn replace(&self, config: &Config) {
        let old = self.current.load_full();
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|bc| {
                let url = BackendUrl::parse(&bc.url).expect("validated config");
                let max = bc
                    .max_in_flight
                    .unwrap_or(config.limits.max_in_flight_per_backend);
                // Same name and URL: the same backend, with its pool, counters and health.
                match old
                    .backends
                    .iter()
                    .find(|b| *b.name == *bc.name && b.url == url)
                {
                    Some(b) => {
                        b.weight.store(bc.weight, Ordering::Relaxed);
                        b.max_in_flight.store(max, Ordering::Relaxed);
                        // Re-read: rotated certificates apply to new connections.
                        b.pool.set_tls(backend_tls(bc, &b.url));
                        b.clone()
                    }
                    None => Arc::new(self.new_backend(bc, url, max, config)),
                }
            })
            .collect();
        // Local caps before the set goes live: a new backend never runs on
        // the whole cap while its share is smaller.
        let grew = self.derive_local_caps(&backends);
        let specs: Vec<BackendSpec<'_>> = backends
            .iter()
            .map(|b| BackendSpec {
                name: &b.name,
                weight: b.weight(),
            })
            .collect();
        let strategy = balance::build(&config.balancer, &specs);
        *self.outlier_policy.write().expect("policy lock poisoned") = outlier_policy(config);
        self.queue
            .resize(config.limits.queue_size, config.limits.queue_timeout);
        let selections = backends
            .iter()
            .map(|b| self.metrics.selection(strategy.name(), &b.name))
            .collect();
        self.current.store(Arc::new(BackendSet {
            backends,
            strategy,
            selections,
        }));
        if grew {
            // Raised caps (or shares): requests queued at the old ones may go.
            self.queue.wake_all();
        }
    }

    /// Installs the rule deriving each backend's local cap from its
    /// configured one (`None`: the configured cap), and applies it now.
    pub fn set_cap_share(&self, share: Option<CapShare>) {
        *self.cap_share.write().expect("cap share lock poisoned") = share;
        self.apply_cap_shares();
    }

    /// Re-derives every backend's local cap (the live instances changed, or
    /// their view went stale). Requests queued at the caps are woken when a
    /// cap grew.
    pub fn apply_cap_shares(&self) {
        let set = self.load_full();
        if self.derive_local_caps(&set.backends) {
            self.queue.wake_all();
        }
    }

    /// Sets the local caps of `backends`; returns whether one grew.
    fn derive_local_caps(&self, backends: &[Arc<Backend>]) -> bool {
        let share = self.cap_share.read().expect("cap share lock poisoned");
        let mut grew = false;
        for b in backends {
            let cap = b.max_in_flight();
            let local = match share.as_ref() {
                Some(f) => f(&b.name, cap),
                None => (cap > 0).then_some(cap),
            };
            grew |= b.set_local_cap(local);
        }
        grew
    }

    fn new_backend(
        &self,
        bc: &BackendConfig,
        url: BackendUrl,
        max: u64,
        config: &Config,
    ) -> Backend {
        let bal = &config.balancer;
        let server = &config.server;
        let name = bc.name.as_str();
        let tls = backend_tls(bc, &url);
        Backend {
            name: Arc::from(name),
            url,
            weight: AtomicU32::new(bc.weight),
            max_in_flight: AtomicU64::new(max),
            // Set from `max` and the share rule before the set goes live; from
            // 0, so a new backend's slots count as grown caps (the queue wakes).
            local_cap: AtomicU64::new(0),
            name_header: HeaderValue::from_str(name).expect("validated: printable ASCII"),
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            probe_state: Default::default(),
            outlier: Outlier::default(),
            queue: self.queue.clone(),
            draining: AtomicBool::new(false),
            total_in_flight: self.total_in_flight.clone(),
            latency: balance::PeakEwma::new(bal.ewma_decay, bal.error_penalty),
            metrics: self.metrics.backend(name),
            window: Default::default(),
            pool: Pool::new(
                PoolConfig {
                    connect_timeout: server.connect_timeout,
                    idle_timeout: server.pool_idle_timeout,
                    max_idle: server.pool_max_idle_per_backend,
                },
                tls,
            ),
        }
    }

    /// Nanoseconds since this proxy started (the clock of latency estimates).
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The origin of [`Upstreams::now_ns`].
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// One attempt at picking a backend for `req` and taking an in-flight slot
    /// on it, skipping the backends in `tried`.
    ///
    /// Health is advisory when it would leave nothing: if no backend is usable,
    /// the attempt ignores health and ejections (a proxy that fails everything
    /// because its probes are wrong is worse than one that tries). Draining and
    /// caps are always respected.
    pub fn try_acquire(
        &self,
        req: &PickRequest<'_>,
        tried: &[usize],
        rng: &mut dyn RngCore,
    ) -> Attempt<(usize, InFlight)> {
        let set = self.load();
        let now = self.now_ns();
        let total = self.total_in_flight.load(Ordering::Relaxed);
        let mut view = LiveView {
            set: &set,
            tried,
            total,
            now,
            panic_mode: false,
        };
        if let Some(got) = pick_and_take(&set, &view, req, rng) {
            return Attempt::Got(got);
        }
        // Nothing eligible. Only now (not on every request) ask whether that is
        // because every backend is down by health: then try them anyway.
        if !set.backends.iter().any(|b| b.is_usable(now)) {
            view.panic_mode = true;
            if let Some(got) = pick_and_take(&set, &view, req, rng) {
                return Attempt::Got(got);
            }
        }
        // Busy (worth queueing) only if some backend could take it once a slot
        // frees. Not one whose share on this instance is zero: no slot of it
        // frees here until the instances change, so waiting would mostly end
        // in a queue timeout.
        let could = set.backends.iter().enumerate().any(|(i, b)| {
            !tried.contains(&i)
                && !b.is_draining()
                && !b.has_no_share()
                && (view.panic_mode || b.is_usable(now))
        });
        if could {
            Attempt::Busy
        } else {
            Attempt::Unusable
        }
    }

    /// Records a failed exchange with `backend` for passive health; ejects it
    /// after enough consecutive failures, within the allowed share of the set.
    pub fn record_failure(&self, backend: &Backend) {
        let policy = *self.outlier_policy.read().expect("policy lock poisoned");
        let now = self.now_ns();
        let ejected = backend.outlier.failure(now, &policy, || {
            let set = self.load();
            let n = set.backends.len();
            let ejected = set
                .backends
                .iter()
                .filter(|b| b.outlier.is_ejected(now))
                .count();
            // At least one backend may always be ejected, so a 2-backend set can shed its bad half.
            let allowed = (n * policy.max_ejected_percent as usize / 100).max(1);
            ejected < allowed && ejected + 1 < n.max(2)
        });
        if let Some(length) = ejected {
            backend.metrics.ejections.inc();
            tracing::warn!(backend = %backend.name, cooldown = ?length, "backend ejected after consecutive failures");
        }
    }

    /// Records a good exchange with `backend` for passive health.
    pub fn record_success(&self, backend: &Backend) {
        backend.outlier.success();
    }
}

/// Picks with `view` and takes a slot; a pick can lose a race for a backend's
/// last slot, so it picks again a few times.
fn pick_and_take(
    set: &BackendSet,
    view: &LiveView<'_>,
    req: &PickRequest<'_>,
    rng: &mut dyn RngCore,
) -> Option<(usize, InFlight)> {
    for _ in 0..set.backends.len().clamp(1, 4) {
        let i = set.strategy.pick(view, req, rng)?;
        if let Some(guard) = set.backends[i].try_acquire() {
            set.selections[i].inc();
            return Some((i, guard));
        }
    }
    None
}

/// The TLS settings of an `https://` backend (`None` for `http://`). Files that
/// became unreadable since the config was checked make every connect fail
/// with the reason (so the request moves on to another backend) instead of
/// failing the reload.
fn backend_tls(bc: &BackendConfig, url: &BackendUrl) -> Option<Result<BackendTls, String>> {
    let options = bc.tls_options(url)?;
    Some(BackendTls::new(&options).map_err(|e| {
        tracing::error!(backend = %bc.name, error = %e, "backend TLS settings unusable");
        e.to_string()
    }))
}

fn outlier_policy(config: &Config) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_failures: config.health.passive_failures,
        base_ejection: config.health.ejection_time,
        max_ejection: config.health.max_ejection_time,
        max_ejected_percent: config.health.max_ejected_percent,
    }
}

/// The balancer's view of the live set, minus the backends already tried.
struct LiveView<'a> {
    set: &'a BackendSet,
    tried: &'a [usize],
    total: u64,
    now: u64,
    /// No backend is usable: pick among the unhealthy rather than fail.
    panic_mode: bool,
}

impl LoadView for LiveView<'_> {
    fn len(&self) -> usize {
        self.set.backends.len()
    }
    fn eligible(&self, i: usize) -> bool {
        let b = &self.set.backends[i];
        let health_ok = self.panic_mode || b.is_usable(self.now);
        health_ok && !b.is_draining() && b.has_capacity() && !self.tried.contains(&i)
    }
    fn in_flight(&self, i: usize) -> u64 {
        self.set.backends[i].in_flight()
    }
    fn latency_ns(&self, i: usize) -> u64 {
        self.set.backends[i].latency.get(self.now)
    }
    fn total_in_flight(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(cap_a: u64, cap_b: u64) -> Config {
        let text = format!(
            "[limits]\nqueue_timeout = \"5s\"\n\
             [[backends]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\nmax_in_flight = {cap_a}\n\
             [[backends]]\nname = \"b\"\nurl = \"http://127.0.0.1:2\"\nmax_in_flight = {cap_b}\n"
        );
        Config::from_toml(&text, "test", std::iter::empty()).unwrap()
    }

    fn backend(up: &Upstreams, name: &str) -> Arc<Backend> {
        up.load()
            .backends
            .iter()
            .find(|b| &*b.name == name)
            .unwrap()
            .clone()
    }

    fn attempt(up: &Upstreams) -> Attempt<(usize, InFlight)> {
        up.try_acquire(&PickRequest { agent_id: None }, &[], &mut rand::rng())
    }

    /// A rule giving this instance half of every cap (rounded down).
    fn half() -> CapShare {
        Arc::new(|_: &str, cap: u64| (cap > 0).then_some(cap / 2))
    }

    #[test]
    fn without_a_share_rule_the_local_cap_is_the_configured_one() {
        let up = Upstreams::new(&config(2, 0), Metrics::new());
        let (a, b) = (backend(&up, "a"), backend(&up, "b"));
        assert_eq!((a.max_in_flight(), a.local_cap()), (2, Some(2)));
        assert_eq!((b.max_in_flight(), b.local_cap()), (0, None));
        let held: Vec<_> = (0..2).map(|_| a.try_acquire().unwrap()).collect();
        assert!(!a.has_capacity() && a.try_acquire().is_none());
        drop(held);
        assert!(a.has_capacity());
        // Unlimited stays unlimited.
        let many: Vec<_> = (0..100).map(|_| b.try_acquire().unwrap()).collect();
        assert!(b.has_capacity());
        drop(many);
    }

    #[test]
    fn a_share_rule_sets_the_local_cap_and_the_configured_cap_stays() {
        let up = Upstreams::new(&config(4, 0), Metrics::new());
        up.set_cap_share(Some(half()));
        let (a, b) = (backend(&up, "a"), backend(&up, "b"));
        assert_eq!((a.max_in_flight(), a.local_cap()), (4, Some(2)));
        assert_eq!(b.local_cap(), None, "unlimited is not shared");
        let held: Vec<_> = (0..2).map(|_| a.try_acquire().unwrap()).collect();
        assert!(a.try_acquire().is_none(), "the share is the cap here");
        drop(held);
        // Removing the rule gives the whole cap back.
        up.set_cap_share(None);
        assert_eq!(a.local_cap(), Some(4));
    }

    #[test]
    fn a_zero_share_makes_a_backend_never_eligible_here() {
        let up = Upstreams::new(&config(1, 4), Metrics::new());
        up.set_cap_share(Some(half()));
        let (a, b) = (backend(&up, "a"), backend(&up, "b"));
        assert_eq!(a.local_cap(), Some(0));
        assert!(a.has_no_share() && !a.has_capacity() && a.try_acquire().is_none());
        // Every pick lands on b, up to its share; then b is busy (worth queueing).
        let mut held = Vec::new();
        for _ in 0..2 {
            match attempt(&up) {
                Attempt::Got((i, slot)) => {
                    assert_eq!(i, 1, "never the zero-share backend");
                    held.push(slot);
                }
                _ => panic!("b has room"),
            }
        }
        assert_eq!(b.in_flight(), 2);
        assert!(matches!(attempt(&up), Attempt::Busy));
        drop(held);
        // With every share zero, waiting would not help: unusable at once.
        up.set_cap_share(Some(Arc::new(|_: &str, _| Some(0))));
        assert!(matches!(attempt(&up), Attempt::Unusable));
    }

    #[test]
    fn a_reload_applies_the_rule_to_new_and_kept_backends() {
        let up = Upstreams::new(&config(4, 6), Metrics::new());
        up.set_cap_share(Some(half()));
        let kept = backend(&up, "a");
        let mut next = config(8, 6);
        next.backends
            .push(crate::config::BackendConfig::new("c", "http://127.0.0.1:3"));
        next.backends[2].max_in_flight = Some(10);
        up.replace(&next);
        assert!(Arc::ptr_eq(&kept, &backend(&up, "a")), "same backend kept");
        assert_eq!(kept.local_cap(), Some(4));
        assert_eq!(backend(&up, "b").local_cap(), Some(3));
        assert_eq!(backend(&up, "c").local_cap(), Some(5));
    }

    /// Takes the one slot `a` has, then queues a second request behind it:
    /// the slot to hold, and the queued request (its backend once let go).
    async fn hold_one_and_queue(
        up: &Arc<Upstreams>,
    ) -> ((usize, InFlight), tokio::task::JoinHandle<Option<usize>>) {
        let first = match attempt(up) {
            Attempt::Got(got) => got,
            _ => panic!("a has a slot"),
        };
        let waiter = tokio::spawn({
            let up = up.clone();
            async move {
                up.queue
                    .acquire(|| attempt(&up))
                    .await
                    .map(|(got, _)| got.0)
                    .ok()
            }
        });
        while up.queue.is_empty() {
            tokio::task::yield_now().await;
        }
        (first, waiter)
    }

    #[tokio::test]
    async fn a_reload_that_adds_slots_lets_queued_requests_go() {
        // a: 1 slot, b: none here; then a reload raises a's cap.
        let up = Arc::new(Upstreams::new(&config(1, 1), Metrics::new()));
        up.set_cap_share(Some(Arc::new(|name: &str, cap: u64| {
            Some(if name == "a" { cap } else { 0 })
        })));
        let (first, waiter) = hold_one_and_queue(&up).await;
        up.replace(&config(2, 1));
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken by the reload, not by a release")
            .unwrap();
        assert_eq!(got, Some(0));
        drop(first);
    }

    #[tokio::test]
    async fn a_growing_share_lets_queued_requests_go() {
        let up = Arc::new(Upstreams::new(&config(2, 2), Metrics::new()));
        // One slot on a, none on b: take it, then a second request queues.
        let share = Arc::new(AtomicU64::new(1));
        let rule = share.clone();
        up.set_cap_share(Some(Arc::new(move |name: &str, _| {
            Some(if name == "a" {
                rule.load(Ordering::SeqCst)
            } else {
                0
            })
        })));
        let (first, waiter) = hold_one_and_queue(&up).await;
        // No release: the share grows (another instance left).
        share.store(2, Ordering::SeqCst);
        up.apply_cap_shares();
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken by the grown share, not by a release")
            .unwrap();
        assert_eq!(got, Some(0));
        drop(first);
    }
}
