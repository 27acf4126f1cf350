//! Coordination with the other proxy instances sharing the Redis, started
//! with the gateway when `[redis]` is configured and `limits.coordinate` is on
//! (both read at start).
//!
//! The limit layer takes write leases from the coordinator. Here the
//! backends' local caps follow this instance's share of each configured cap:
//! the rule is installed in the backends ([`Upstreams::set_cap_share`], also
//! applied by every config change) and re-applied when the set of live
//! instances changes and once per heartbeat, so a view that went stale
//! (Redis unreachable for three heartbeats) gives the whole caps back.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::backend::Upstreams;
use crate::config::Config;
use crate::coord::Coordinator;
use crate::metrics::Metrics;
use crate::redis::Redis;

/// Starts coordination for this instance and makes the caps follow it.
pub(super) fn start(
    redis: Arc<Redis>,
    config: &Config,
    upstreams: &Arc<Upstreams>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Arc<Coordinator> {
    let me = Coordinator::this_instance(config.server.listen.to_string());
    tracing::info!(
        instance = %me.id,
        name = %me.name,
        "coord: coordinating with the instances on the same Redis (write leases, shared caps)"
    );
    // A token of its own, not a child of the gateway's: `Gateway::shutdown`
    // stops background work before the drain, while requests still draining
    // need their leases renewed. `Gateway::leave` stops it after the drain.
    let coord = Coordinator::start(
        redis,
        &config.redis,
        me,
        metrics.registry(),
        CancellationToken::new(),
    );
    // Weak: the backends must not keep a stopped coordinator alive. Called
    // only when caps are recomputed, never per request.
    let weak = Arc::downgrade(&coord);
    upstreams.set_cap_share(Some(Arc::new(move |backend: &str, cap: u64| {
        match weak.upgrade() {
            Some(c) => c.share(backend, cap),
            None => (cap > 0).then_some(cap),
        }
    })));
    tokio::spawn(follow(
        Arc::downgrade(&coord),
        upstreams.clone(),
        config.redis.heartbeat,
        stop.child_token(),
    ));
    coord
}

/// Re-applies the cap shares on every change of the live set and every
/// heartbeat, until `stop`.
async fn follow(
    coord: Weak<Coordinator>,
    upstreams: Arc<Upstreams>,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let Some(mut view) = coord.upgrade().map(|c| c.watch()) else {
        return;
    };
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut starved = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                let n = view.borrow_and_update().instances.len();
                tracing::info!(instances = n, "coord: the set of live instances changed");
            }
            _ = tick.tick() => {}
        }
        upstreams.apply_cap_shares();
        // Said once per episode: with caps below the number of instances,
        // this instance may have no share of any capped backend.
        let set = upstreams.load();
        let now = !set.backends.is_empty() && set.backends.iter().all(|b| b.has_no_share());
        if now && !starved {
            tracing::warn!(
                "coord: this instance has no share of any backend's max_in_flight (caps below the number of instances); it answers 503 until instances leave or the caps grow"
            );
        }
        starved = now;
    }
}
