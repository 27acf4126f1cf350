//! What a write pays for its cross-instance lease, against a real local
//! `redis-server` (started on a free loopback port; the bench is skipped,
//! loudly, when it is not installed).
//!
//! - `redis_ping`: one bare round trip through the same client, for scale.
//! - `lease_acquire`: the part a write waits for (one script call); the
//!   release happens when its response body ends, off the request's path.
//! - `lease_acquire_release`: both calls, back to back.
//!
//! Uncontended key: this is the price of coordination itself, not of waiting
//! behind another writer. Medians are in
//! `target/criterion/coord/*/new/estimates.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use letta_proxy::coord::{Coordinator, Instance};
use letta_proxy::redis::{Redis, RedisConfig};
use tokio_util::sync::CancellationToken;

#[path = "../tests/support/port.rs"]
mod port;
#[allow(dead_code)]
#[path = "../tests/support/redis.rs"]
mod redis_support;

const KEY: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";

fn bench_lease(c: &mut Criterion) {
    let Some(server) = redis_support::RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = RedisConfig {
        url: Some(server.url()),
        ..RedisConfig::default()
    };
    let coord = rt.block_on(async {
        let redis = Arc::new(Redis::new(&config).unwrap());
        let coord = Coordinator::start(
            redis,
            &config,
            Instance::new("bench", "127.0.0.1:0"),
            &prometheus::Registry::new(),
            CancellationToken::new(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(coord.status().redis_available && coord.status().lease_wakeups) {
            assert!(Instant::now() < deadline, "coordinator not ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Warm: scripts loaded, connection established.
        coord
            .acquire(KEY, Duration::from_secs(1))
            .await
            .unwrap()
            .release()
            .await;
        coord
    });
    let mut g = c.benchmark_group("coord");
    g.bench_function("redis_ping", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    coord
                        .redis()
                        .call(|mut c| async move {
                            redis::cmd("PING").query_async::<String>(&mut c).await
                        })
                        .await
                        .unwrap();
                }
                t.elapsed()
            })
        })
    });
    g.bench_function("lease_acquire", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut waited = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let lease = coord.acquire(KEY, Duration::from_secs(1)).await.unwrap();
                    waited += t.elapsed();
                    lease.release().await;
                }
                waited
            })
        })
    });
    g.bench_function("lease_acquire_release", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..iters {
                    let lease = coord.acquire(KEY, Duration::from_secs(1)).await.unwrap();
                    lease.release().await;
                }
                t.elapsed()
            })
        })
    });
    g.finish();
    assert_eq!(
        coord.status().lease_fallbacks,
        0,
        "every lease came from Redis"
    );
    drop(server);
}

criterion_group!(benches, bench_lease);
criterion_main!(benches);
