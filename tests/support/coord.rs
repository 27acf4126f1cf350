//! Coordination harness: a [`Coordinator`] per simulated proxy instance, each
//! with its own Redis client (as separate processes would have), on a real
//! Redis (standalone or cluster).

use std::sync::Arc;
use std::time::Duration;

use letta_proxy::coord::{Coordinator, Instance};
use letta_proxy::redis::{Redis, RedisConfig};
use tokio_util::sync::CancellationToken;

/// `[redis]` for `url` (standalone) with the given lease TTL and heartbeat.
pub fn redis_config(url: &str, lease_ttl: Duration, heartbeat: Duration) -> RedisConfig {
    RedisConfig {
        url: Some(url.to_string()),
        lease_ttl,
        heartbeat,
        // Generous: the machine is shared and a debug build is slow; the
        // tests measure waits far longer than a call.
        timeout: Duration::from_millis(200),
        ..RedisConfig::default()
    }
}

/// One simulated instance.
pub struct Inst {
    pub coord: Arc<Coordinator>,
    pub registry: prometheus::Registry,
}

impl Inst {
    pub fn start(c: &RedisConfig, name: &str) -> Inst {
        c.validate().expect("valid [redis]");
        let redis = Arc::new(Redis::new(c).expect("redis client"));
        let registry = prometheus::Registry::new();
        let coord = Coordinator::start(
            redis,
            c,
            Instance::new(name, "127.0.0.1:0"),
            &registry,
            CancellationToken::new(),
        );
        Inst { coord, registry }
    }

    /// Until connected, the wake channel is subscribed and a heartbeat went through.
    pub async fn ready(&self) {
        super::eventually(Duration::from_secs(10), "coordinator ready", || async {
            let s = self.coord.status();
            s.redis_available && s.lease_wakeups && s.membership_fresh
        })
        .await;
    }

    pub fn id(&self) -> String {
        self.coord.registry().me().id.clone()
    }

    /// The value of a metric of this instance (first sample starting with `prefix`).
    pub fn metric(&self, prefix: &str) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        super::sample(&text, prefix).unwrap_or(0.0)
    }
}
