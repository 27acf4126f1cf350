//! Everything the proxy keeps in Redis, on a real six-node Redis Cluster
//! (three masters, one replica each, `redis-cli --cluster create` on loopback
//! ports): the cache's shared tier and its sharded invalidation channel, write
//! leases, the instance registry — and a master killed mid-test, failing over
//! to its replica, with no request failing because of it. Returns early,
//! loudly, when `redis-server` / `redis-cli` are missing (fails under
//! `LETTA_PROXY_REQUIRE_REDIS=1`).

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use letta_proxy::coord::LeaseError;
use letta_proxy::redis::RedisConfig;
use reqwest::Method;
use support::cache::*;
use support::coord::Inst;
use support::redis::RedisCluster;
use support::standins;

/// The cache's hash tag: every cache key lives in its slot.
const CACHE_TAG: &str = "{letta-proxy}";

fn redis_section(cluster: &RedisCluster) -> String {
    format!(
        "\n[redis]\n{}\ntimeout = \"150ms\"\nbreaker_cooldown = \"300ms\"\nlease_ttl = \"1500ms\"\nheartbeat = \"300ms\"\n",
        cluster.toml_nodes()
    )
}

fn coord_config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig {
        cluster_nodes: cluster.urls(),
        timeout: Duration::from_millis(150),
        breaker_cooldown: Duration::from_millis(300),
        lease_ttl: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(300),
        ..RedisConfig::default()
    }
}

async fn connected(n: &Node) {
    until(
        Duration::from_secs(10),
        "connected to the cluster",
        || async { n.cache.redis_connected() && n.cache.flushes() >= 1 },
    )
    .await;
}

/// Fill on `a`, then a hit on `b` served from Redis (retried while Redis
/// recovers: each try uses a fresh path).
async fn shared_tier_works(a: &Node, b: &Node, within: Duration, label: &str) {
    let mut i = 0;
    until(within, "the shared tier serves a hit", || {
        i += 1;
        let path = format!("/v1/tools/?{label}={i}");
        async move {
            a.get(&path, &[]).await;
            b.get(&path, &[]).await.x_cache() == "HIT"
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_pubsub_leases_and_registry_work_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &redis_section(&cluster));
    let (a, b) = (Node::start(config()).await, Node::start(config()).await);
    connected(&a).await;
    connected(&b).await;

    // Shared tier: fill on A, hit on B, without another backend call.
    let agent = format!("/v1/agents/{A}");
    let filled = a.get(&agent, &[]).await;
    assert_eq!(filled.x_cache(), "MISS");
    until(Duration::from_secs(5), "stored in Redis", || async {
        a.metric("letta_proxy_cache_stores_total{tier=\"l2\"}")
            .await
            == 1.0
    })
    .await;
    let hit = b.get(&agent, &[]).await;
    assert_eq!((hit.x_cache(), hit.seq()), ("HIT", filled.seq()));
    assert_eq!(calls(&s[0], &agent), 1);

    // A write on B: invalidated in Redis (script on the tag's shard) and
    // published on the sharded channel to A.
    let before = a.cache.remote_invalidations();
    assert_eq!(
        b.send(Method::PATCH, &agent, &[], Some("{}")).await.status,
        200
    );
    until(
        Duration::from_secs(5),
        "A received the invalidation",
        || async { a.cache.remote_invalidations() > before },
    )
    .await;
    assert!(a.get(&agent, &[]).await.seq() > filled.seq());

    // An admin purge runs the SCAN on the node that owns the cache's slot.
    assert!(a.cache.purge_everything().await <= 1);

    // Leases and registry, on keys spread over the cluster's slots.
    let c = coord_config(&cluster);
    let (x, y) = (Inst::start(&c, "x"), Inst::start(&c, "y"));
    x.ready().await;
    y.ready().await;
    for k in 0..6 {
        let key = format!("agent-{k}");
        let held = x.coord.acquire(&key, Duration::from_secs(5)).await.unwrap();
        let waiter = {
            let (coord, key) = (y.coord.clone(), key.clone());
            tokio::spawn(async move { coord.acquire(&key, Duration::from_secs(10)).await })
        };
        let first = held.token();
        held.release().await;
        let next = waiter.await.unwrap().unwrap();
        assert!(next.token() > first, "{key}");
    }
    assert_eq!(
        x.metric("letta_proxy_coord_leases_total{outcome=\"fallback\"}"),
        0.0
    );
    // The gateways a and b coordinate too: four instances in all.
    let ids = [x.id(), y.id()];
    support::eventually(Duration::from_secs(5), "both registered", || async {
        [&x, &y].iter().all(|i| {
            let m = i.coord.registry().membership();
            let live = m.ids();
            live.len() == 4 && ids.iter().all(|id| live.contains(&id.as_str()))
        })
    })
    .await;
    assert_eq!(x.coord.status().redis, "cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_test_fails_no_request() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &redis_section(&cluster));
    let (a, b) = (
        Arc::new(Node::start(config()).await),
        Arc::new(Node::start(config()).await),
    );
    connected(&a).await;
    connected(&b).await;
    shared_tier_works(&a, &b, Duration::from_secs(5), "before").await;

    let victim = cluster.master_of(CACHE_TAG);
    // A lease key on the same master, so the failover hits leases too.
    let lease_key = (0..10_000)
        .map(|i| format!("agent-{i}"))
        .find(|k| cluster.master_of(&format!("{{letta-proxy:lease:{k}}}")) == victim)
        .expect("a key on the victim");
    let c = coord_config(&cluster);
    let (x, y) = (Inst::start(&c, "x"), Inst::start(&c, "y"));
    x.ready().await;
    y.ready().await;

    // Traffic through both proxies and leases from both instances, while the
    // master dies. Bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (n, node) in [a.clone(), b.clone()].into_iter().enumerate() {
        let (stop, failed, requests) = (stop.clone(), failed.clone(), requests.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for i in 0..20_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let read = node
                    .get(&format!("/v1/tools/?n={n}&i={}", i % 50), &[])
                    .await;
                let write = node
                    .send(Method::PATCH, &format!("/v1/blocks/{B}"), &[], Some("{}"))
                    .await;
                requests.fetch_add(2, Ordering::Relaxed);
                if read.status != 200 || write.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let leases = Arc::new(AtomicU64::new(0));
    let fallbacks = Arc::new(AtomicU64::new(0));
    for inst in [x.coord.clone(), y.coord.clone()] {
        let (stop, leases, fallbacks, key) = (
            stop.clone(),
            leases.clone(),
            fallbacks.clone(),
            lease_key.clone(),
        );
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..20_000u64 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                match inst.acquire(&key, Duration::from_secs(10)).await {
                    Ok(l) => {
                        leases.fetch_add(1, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                        l.release().await;
                    }
                    Err(LeaseError::Unavailable(_)) => {
                        // What the write path does: order it on this instance.
                        fallbacks.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(LeaseError::Timeout) => {
                        panic!("a lease wait timed out after {:?}", t.elapsed())
                    }
                }
            }
        }));
    }
    // Some traffic first, then the kill.
    until(Duration::from_secs(10), "traffic flowing", || async {
        requests.load(Ordering::Relaxed) > 50 && leases.load(Ordering::Relaxed) > 20
    })
    .await;
    let killed = Instant::now();
    cluster.kill(victim);
    let promoted = tokio::task::block_in_place(|| {
        cluster.wait_failover(CACHE_TAG, victim, Duration::from_secs(30))
    });
    let failover = killed.elapsed();
    // The proxies find the new master: shared tier, channel and leases work again.
    shared_tier_works(&a, &b, Duration::from_secs(30), "after").await;
    let before = a.cache.remote_invalidations();
    let leases_before = leases.load(Ordering::Relaxed);
    until(
        Duration::from_secs(30),
        "invalidations reach A again",
        || async {
            b.send(Method::PATCH, &format!("/v1/agents/{A}"), &[], Some("{}"))
                .await;
            a.cache.remote_invalidations() > before
        },
    )
    .await;
    until(
        Duration::from_secs(30),
        "leases taken in Redis again",
        || async { leases.load(Ordering::Relaxed) > leases_before + 20 },
    )
    .await;
    let recovered = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("load task ends")
            .expect("load task did not panic");
    }
    println!(
        "master {victim} killed: replica {promoted} promoted after {failover:?}; proxies back on the shared tier after {recovered:?}; \
         {} requests, {} failed; {} leases in Redis, {} writes ordered per instance meanwhile",
        requests.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        leases.load(Ordering::Relaxed),
        fallbacks.load(Ordering::Relaxed),
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
}
