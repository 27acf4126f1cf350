//! Coordination between proxy instances that share a Redis.
//!
//! - [`lease`]: write leases — one writer at a time per agent or block across
//!   every instance, FIFO by arrival at Redis, fencing tokens, renewed while
//!   held, expiring when the holder dies.
//! - [`registry`]: instances announce themselves with a heartbeat; the live
//!   set is watched.
//! - [`share`]: this instance's share of a backend's `max_in_flight`, from
//!   the live set (why shares and not a shared counter: see there).
//! - `scripts.rs`: the Lua behind both (one cluster slot per script).
//! - [`metrics`]: the `letta_proxy_coord_*` families.
//!
//! Nothing here ever fails a request: when Redis is unreachable, `acquire`
//! says [`LeaseError::Unavailable`] (the caller orders the write on this
//! instance alone, as without Redis) and [`Coordinator::share`] gives the
//! whole cap (each instance on its own) once the registry view is stale.

pub mod lease;
pub mod metrics;
pub mod registry;
mod scripts;
pub mod share;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use lease::{LeaseError, LeaseGuard, Leases};
pub use registry::{Instance, Membership, Registry};

use crate::redis::{Redis, RedisConfig};
use metrics::CoordMetrics;

/// Coordination for one proxy instance. Dropping it stops its background
/// tasks without a goodbye (as a crash would: held leases expire, the registry
/// drops the instance after three heartbeats); [`Coordinator::shutdown`]
/// leaves cleanly.
pub struct Coordinator {
    redis: Arc<Redis>,
    leases: Arc<Leases>,
    registry: Arc<Registry>,
    metrics: CoordMetrics,
    stop: CancellationToken,
}

/// What `/-/status` shows about coordination.
#[derive(Debug, Clone, Serialize)]
pub struct CoordStatus {
    /// `standalone` or `cluster`.
    pub redis: &'static str,
    /// Whether Redis answers now (connected, breaker closed).
    pub redis_available: bool,
    /// `redis` (leases) or `local` (Redis unreachable: per-instance ordering).
    pub write_ordering: &'static str,
    /// Whether the wake-up channel of lease waiters is subscribed.
    pub lease_wakeups: bool,
    /// Writes ordered per instance because Redis was unreachable, since start.
    pub lease_fallbacks: u64,
    pub leases_held: i64,
    pub this_instance: Instance,
    /// Live instances as of the last heartbeat (sorted by id).
    pub instances: Vec<Instance>,
    /// Whether that view is recent (else caps are per instance).
    pub membership_fresh: bool,
}

impl Coordinator {
    /// Starts coordination on `redis` (shared with the cache) for this
    /// instance (`me`): connection upkeep, the lease wake-up channel, the
    /// registry heartbeat. Must run inside a tokio runtime.
    pub fn start(
        redis: Arc<Redis>,
        c: &RedisConfig,
        me: Instance,
        registry: &prometheus::Registry,
        stop: CancellationToken,
    ) -> Arc<Coordinator> {
        // Our own token: dropping the coordinator must not stop the caller's tasks.
        let stop = stop.child_token();
        let metrics = CoordMetrics::new(registry);
        let leases = Arc::new(Leases::new(
            redis.clone(),
            me.id.clone(),
            c.lease_ttl,
            metrics.clone(),
            stop.clone(),
        ));
        let registry = Arc::new(Registry::new(
            redis.clone(),
            me,
            c.heartbeat,
            metrics.clone(),
        ));
        tokio::spawn({
            let (redis, leases, registry, stop) = (
                redis.clone(),
                leases.clone(),
                registry.clone(),
                stop.clone(),
            );
            async move {
                crate::redis::keep_connecting(redis, stop).await;
                // Best effort: a failed load only costs the first calls a reload.
                leases.load_scripts().await;
                registry.load_scripts().await;
            }
        });
        tokio::spawn(leases.clone().listen());
        tokio::spawn(registry.clone().run(stop.clone()));
        Arc::new(Coordinator {
            redis,
            leases,
            registry,
            metrics,
            stop,
        })
    }

    /// A default description of this process for the registry: the host (or
    /// pod) name from `HOSTNAME` or `/etc/hostname`, and `address`.
    pub fn this_instance(address: impl Into<String>) -> Instance {
        let name = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default();
        Instance::new(name, address)
    }

    /// Waits (at most `timeout`) for the write lease on `key` (an agent or
    /// block id). `Err(Unavailable)`: order the write on this instance only;
    /// `Err(Timeout)`: earlier writes held the key for the whole wait.
    pub async fn acquire(&self, key: &str, timeout: Duration) -> Result<LeaseGuard, LeaseError> {
        self.leases.acquire(key, timeout).await
    }

    /// This instance's cap on `backend` whose configured cap is `cap` (0 =
    /// unlimited → `None`). `Some(0)`: do not use the backend here. The whole
    /// cap while the registry view is stale (Redis unreachable).
    pub fn share(&self, backend: &str, cap: u64) -> Option<u64> {
        let m = self.registry.membership();
        if !m.is_fresh(self.registry.dead_after()) {
            return (cap > 0).then_some(cap);
        }
        share::share(cap, backend, &m.ids(), &self.registry.me().id)
    }

    /// The registry view; `changed()` fires when the live set changes
    /// (recompute shares then).
    pub fn watch(&self) -> watch::Receiver<Membership> {
        self.registry.watch()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Whether write leases are taken in Redis now (else per instance).
    pub fn is_available(&self) -> bool {
        self.redis.is_available()
    }

    pub fn status(&self) -> CoordStatus {
        let m = self.registry.membership();
        let available = self.redis.is_available();
        CoordStatus {
            redis: self.redis.mode().as_str(),
            redis_available: available,
            write_ordering: if available { "redis" } else { "local" },
            lease_wakeups: self.leases.is_listening(),
            lease_fallbacks: self.metrics.fallbacks.get(),
            leases_held: self.metrics.held.get(),
            this_instance: self.registry.me().clone(),
            membership_fresh: m.is_fresh(self.registry.dead_after()),
            instances: m.instances,
        }
    }

    /// Stops the background tasks (as dropping does) without leaving the
    /// registry: held leases stop being renewed and expire; the others drop
    /// this instance after three heartbeats.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Leaves cleanly: out of the registry at once (others take back this
    /// instance's share on their next heartbeat), background tasks stopped.
    /// Leases still held are released when their guards drop.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.registry.deregister().await;
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
