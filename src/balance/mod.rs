//! Backend selection: one small trait, one file per strategy.
//!
//! Strategies are pure: they see the backend set only through [`LoadView`]
//! (weights are fixed when the strategy is built, in-flight counts, latency and
//! eligibility are read at pick time) and draw randomness only from the RNG they
//! are handed, so tests seed them and get the same picks every run.
//!
//! A strategy is built for one backend set ([`build`]) and is swapped together
//! with that set, so precomputed tables (weighted schedules, alias tables, hash
//! rings) never disagree with the backends they index.
//!
//! # Layout
//! - [`config`]: the `[balancer]` section and its validation.
//! - [`round_robin`]: a precomputed smooth weighted schedule walked by one atomic.
//! - [`random`]: weighted random draws from an alias table.
//! - [`least_connections`]: fewest in flight per unit of weight; full scan for
//!   small sets, power of two choices above `scan_threshold`.
//! - [`least_latency`]: power of two choices on peak-EWMA latency × load.
//! - [`agent_affinity`]: consistent hashing of agent ids with bounded load.
//! - [`ewma`]: the lock-free peak-EWMA latency estimator each backend owns.
//! - `weights`, `select`, `ring`, `hash`: the shared machinery behind them.

pub mod agent_affinity;
pub mod config;
pub mod ewma;
pub mod least_connections;
pub mod least_latency;
pub mod random;
pub mod round_robin;

mod hash;
mod ring;
mod select;
#[cfg(test)]
mod testing;
mod weights;

use rand::RngCore;

pub use config::{BalancerConfig, StrategyKind};
pub use ewma::PeakEwma;

/// Read-only view of the current backends, indexed `0..len()` in config order.
///
/// Implemented by the live backend set (atomics) and by plain arrays in tests.
pub trait LoadView {
    /// Number of backends in the set.
    fn len(&self) -> usize;
    /// Whether the set is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether backend `i` may take a new request now: healthy, not draining,
    /// below its concurrency cap.
    fn eligible(&self, i: usize) -> bool;
    /// Requests currently in flight on backend `i` (counted until the response body ends).
    fn in_flight(&self, i: usize) -> u64;
    /// Peak-EWMA latency estimate of backend `i`, in nanoseconds (0 when unknown).
    fn latency_ns(&self, i: usize) -> u64;
    /// Requests in flight over all backends.
    ///
    /// `agent_affinity` reads it on every pick to compute the load bound, so the
    /// live set should override this O(n) sum with a shared counter.
    fn total_in_flight(&self) -> u64 {
        (0..self.len()).map(|i| self.in_flight(i)).sum()
    }
    /// Number of backends that are [`eligible`](LoadView::eligible) now.
    ///
    /// Strategies only call this off the fast path (when the first candidate
    /// was refused), so the O(n) default is fine unless a cheaper count exists.
    fn eligible_count(&self) -> usize {
        (0..self.len()).filter(|&i| self.eligible(i)).count()
    }
}

/// What the strategy may know about the request being placed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickRequest<'a> {
    /// The Letta agent the request targets (`/v1/agents/{agent_id}/…` or the
    /// configured header), for affinity strategies.
    pub agent_id: Option<&'a str>,
}

/// A backend selection algorithm.
pub trait Strategy: Send + Sync + 'static {
    /// Config name of the strategy (`round_robin`, …), used in metrics labels.
    fn name(&self) -> &'static str;
    /// Picks an eligible backend index, or `None` when no backend is eligible.
    fn pick(
        &self,
        view: &dyn LoadView,
        req: &PickRequest<'_>,
        rng: &mut dyn RngCore,
    ) -> Option<usize>;
}

/// What a strategy needs to know about one backend when it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSpec<'a> {
    /// Config name; `agent_affinity` hashes it, so a backend keeps its agents
    /// when others are added or removed, whatever its position in the list.
    pub name: &'a str,
    /// Relative share of traffic, at least 1 (0 is treated as 1).
    pub weight: u32,
}

/// Builds the strategy `cfg` names for exactly `backends` (config order = the
/// indices of the [`LoadView`] it will be handed).
///
/// `cfg` is expected to have passed [`BalancerConfig::validate`]; out-of-range
/// values are clamped rather than panicking.
pub fn build(cfg: &BalancerConfig, backends: &[BackendSpec<'_>]) -> Box<dyn Strategy> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight.max(1)).collect();
    match cfg.strategy {
        StrategyKind::AgentAffinity => Box::new(agent_affinity::AgentAffinity::new(
            backends,
            cfg.affinity_epsilon,
            build_plain(cfg.affinity_fallback, cfg, &weights),
        )),
        kind => build_plain(kind, cfg, &weights),
    }
}

/// Builds a strategy that does not wrap another one.
fn build_plain(kind: StrategyKind, cfg: &BalancerConfig, weights: &[u32]) -> Box<dyn Strategy> {
    match kind {
        StrategyKind::RoundRobin => Box::new(round_robin::RoundRobin::new(weights)),
        StrategyKind::Random => Box::new(random::Random::new(weights)),
        StrategyKind::LeastLatency => Box::new(least_latency::LeastLatency::new(weights)),
        // Affinity cannot be its own fallback (validation rejects it): use the
        // default fallback rather than recurse.
        StrategyKind::LeastConnections | StrategyKind::AgentAffinity => Box::new(
            least_connections::LeastConnections::new(weights, cfg.scan_threshold),
        ),
    }
}

/// Whether `view` indexes the set a strategy of `built` backends was made for.
///
/// A mismatch is a wiring bug (set and strategy must be swapped together); in
/// release builds the strategy then answers "nothing eligible" instead of
/// indexing out of bounds.
fn view_matches(view: &dyn LoadView, built: usize) -> bool {
    debug_assert_eq!(view.len(), built, "strategy built for another backend set");
    view.len() == built
}
