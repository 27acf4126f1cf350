//! The cache's shared tier with a real `redis-server` (started per test on a
//! free port): instances share answers, a write through one is seen by all,
//! and Redis trouble is only ever a miss. Each test returns early, loudly, when
//! `redis-server` is missing (and fails under `LETTA_PROXY_REQUIRE_REDIS=1`).

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use support::cache::*;
use support::redis::RedisServer;
use support::standins;

fn with_redis(redis: &RedisServer, extra: &str) -> String {
    format!("redis_url = \"{}\"\n{extra}", redis.url())
}

async fn connected(n: &Node) {
    until(Duration::from_secs(5), "connected to Redis", || async {
        n.cache.redis_connected() && n.cache.flushes() >= 1
    })
    .await;
}

#[tokio::test]
async fn instances_share_answers_and_a_write_on_one_is_seen_by_all() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &with_redis(&redis, ""));
    let (a, b) = (Node::start(config()).await, Node::start(config()).await);
    connected(&a).await;
    connected(&b).await;
    let agent = format!("/v1/agents/{A}");

    // Fill on A, hit on B (from Redis), without another backend call.
    let filled = a.get(&agent, &[]).await;
    assert_eq!(filled.x_cache(), "MISS");
    until(Duration::from_secs(2), "stored in Redis", || async {
        a.metric("letta_proxy_cache_stores_total{tier=\"l2\"}")
            .await
            == 1.0
    })
    .await;
    let shared = b.get(&agent, &[]).await;
    assert_eq!((shared.x_cache(), shared.seq()), ("HIT", filled.seq()));
    assert_eq!(calls(&s[0], &agent), 1);
    assert_eq!(
        b.metric("letta_proxy_cache_lookups_total{result=\"hit\",tier=\"l2\"}")
            .await,
        1.0
    );
    // Not across identities, though.
    let other = b.get(&agent, &[("authorization", "Bearer other")]).await;
    assert_eq!(other.x_cache(), "MISS");

    // Write on B: Redis is cleaned before B answers, so a third instance with
    // an empty L1 misses at once; A's L1 follows over pub/sub.
    let before = a.cache.remote_invalidations();
    let w = b
        .send(Method::PATCH, &agent, &[], Some(r#"{"name":"n"}"#))
        .await;
    assert_eq!(w.status, 200);
    let c = Node::start(config()).await;
    connected(&c).await;
    assert_eq!(
        c.get(&agent, &[]).await.x_cache(),
        "MISS",
        "Redis no longer has it"
    );
    until(
        Duration::from_secs(2),
        "A received the invalidation",
        || async { a.cache.remote_invalidations() > before },
    )
    .await;
    let fresh = a.get(&agent, &[]).await;
    assert!(
        fresh.seq() > filled.seq(),
        "A reads the state after the write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_instance_invalidation_delay() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &with_redis(&redis, ""));
    let (a, b) = (Node::start(config()).await, Node::start(config()).await);
    connected(&a).await;
    connected(&b).await;
    let a = std::sync::Arc::new(a);
    let agent = format!("/v1/agents/{A}");
    // (time from sending the write until B's answer, until A applied the invalidation)
    let mut samples: Vec<(Duration, Duration)> = Vec::new();
    for _ in 0..50 {
        a.get(&agent, &[]).await;
        let before = a.cache.remote_invalidations();
        let watcher = {
            let a = a.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                // Spin (yielding) so the measurement is delivery, not a timer's grain.
                while a.cache.remote_invalidations() == before {
                    assert!(t0.elapsed() < Duration::from_secs(2), "never arrived");
                    tokio::task::yield_now().await;
                }
                Instant::now()
            })
        };
        let sent = Instant::now();
        b.send(Method::PATCH, &agent, &[], Some("{}")).await;
        let answered = sent.elapsed();
        let applied = watcher.await.unwrap().duration_since(sent);
        samples.push((answered, applied));
    }
    let mut after_answer: Vec<f64> = samples
        .iter()
        .map(|(ans, app)| app.as_secs_f64() * 1e6 - ans.as_secs_f64() * 1e6)
        .collect();
    after_answer.sort_by(f64::total_cmp);
    let mut applied: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    applied.sort();
    let n = samples.len();
    let q = |p: usize| (n * p / 100).min(n - 1);
    println!(
        "cross-instance invalidation, n={n}: A's L1 dropped the entry {:?} (p50) / {:?} (p99) / {:?} (max) \
         after B was sent the write; relative to B's answer reaching the client: p50 {:+.0} us, \
         p99 {:+.0} us, max {:+.0} us (negative: before the client had the answer)",
        applied[q(50)],
        applied[q(99)],
        applied[n - 1],
        after_answer[q(50)],
        after_answer[q(99)],
        after_answer[n - 1],
    );
    assert!(applied[q(50)] < Duration::from_millis(100));
}

#[tokio::test]
async fn a_killed_redis_costs_hits_never_requests() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let s = standins(1).await;
    let extra = with_redis(
        &redis,
        "redis_timeout = \"50ms\"\nredis_cooldown = \"300ms\"",
    );
    let a = Node::start(cache_config(&[&s[0]], &extra)).await;
    connected(&a).await;
    let agent = format!("/v1/agents/{A}");
    a.get(&agent, &[]).await;
    assert_eq!(a.get(&agent, &[]).await.x_cache(), "HIT");

    redis.kill();
    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        let r = a.get(&format!("/v1/tools/?i={i}"), &[]).await;
        assert_eq!((r.status, r.x_cache()), (200, "MISS"));
        let w = a
            .send(Method::PATCH, &format!("/v1/blocks/{B}"), &[], Some("{}"))
            .await;
        assert_eq!(w.status, 200, "writes go through with Redis down");
        slowest = slowest.max(t.elapsed());
    }
    println!("with Redis killed: slowest read+write pair {slowest:?}");
    assert!(
        slowest < Duration::from_millis(800),
        "bounded by redis_timeout: {slowest:?}"
    );
    assert!(
        a.metric("letta_proxy_cache_redis_errors_total").await >= 1.0 || {
            // The family is labelled: find any op with errors.
            let text = support::scrape(&a.url("/metrics")).await;
            text.lines().any(|l| {
                l.starts_with("letta_proxy_cache_redis_errors_total{") && !l.ends_with(" 0")
            })
        }
    );
    // L1 still answers what it has (the agent was not written).
    assert_eq!(a.get(&agent, &[]).await.x_cache(), "HIT");

    // Redis comes back (empty): the proxy reconnects and replays what it could
    // not send; the shared tier works again.
    redis.restart();
    until(
        Duration::from_secs(10),
        "pending invalidations replayed",
        || async {
            a.metric("letta_proxy_cache_redis_pending_invalidations")
                .await
                == 0.0
        },
    )
    .await;
    let b = Node::start(cache_config(&[&s[0]], &extra)).await;
    connected(&b).await;
    let path = "/v1/tools/?after=restart";
    until(
        Duration::from_secs(10),
        "A stores in Redis again",
        || async {
            a.get(path, &[]).await;
            b.get(path, &[]).await.x_cache() == "HIT"
        },
    )
    .await;
}

#[tokio::test]
async fn a_redis_that_never_answers_is_a_miss() {
    let s = standins(1).await;
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!("redis_url = \"redis://127.0.0.1:{port}\"");
    let a = Node::start(cache_config(&[&s[0]], &extra)).await;
    let t = Instant::now();
    for _ in 0..3 {
        assert_eq!(a.get("/v1/tools/", &[]).await.status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!a.cache.redis_connected());
}

#[tokio::test]
async fn an_invalidation_redis_missed_is_replayed_before_redis_is_read_again() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &with_redis(&redis, "redis_cooldown = \"200ms\""));
    let a = Node::start(config()).await;
    connected(&a).await;
    let agent = format!("/v1/agents/{A}");
    a.get(&agent, &[]).await;
    until(Duration::from_secs(2), "stored in Redis", || async {
        a.metric("letta_proxy_cache_stores_total{tier=\"l2\"}")
            .await
            == 1.0
    })
    .await;
    // Redis stops answering (alive, data kept) while A forwards a write.
    let mut admin = redis.connection();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("ALL")
        .query::<()>(&mut admin)
        .unwrap();
    let t = Instant::now();
    let w = a.send(Method::PATCH, &agent, &[], Some("{}")).await;
    assert_eq!(w.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the write waited at most the timeout"
    );
    assert_eq!(
        a.metric("letta_proxy_cache_redis_pending_invalidations")
            .await,
        1.0
    );
    until(
        Duration::from_secs(5),
        "replayed once Redis answers",
        || async {
            a.metric("letta_proxy_cache_redis_pending_invalidations")
                .await
                == 0.0
        },
    )
    .await;
    let b = Node::start(config()).await;
    connected(&b).await;
    assert_eq!(
        b.get(&agent, &[]).await.x_cache(),
        "MISS",
        "the stale shared entry is gone"
    );
}

#[tokio::test]
async fn an_agent_turn_on_one_instance_drops_its_block_views_everywhere() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &with_redis(&redis, ""));
    let (a, b) = (Node::start(config()).await, Node::start(config()).await);
    connected(&a).await;
    connected(&b).await;
    // A learns A's blocks (and Redis with it); B knows nothing about the agent.
    a.get(&format!("/v1/agents/{A}/core-memory?blocks={B}"), &[])
        .await;
    let own = format!("/v1/blocks/{B}");
    let other = format!("/v1/blocks/{B2}");
    a.get(&own, &[]).await;
    a.get(&other, &[]).await;
    until(Duration::from_secs(2), "stored in Redis", || async {
        a.metric("letta_proxy_cache_stores_total{tier=\"l2\"}")
            .await
            == 3.0
    })
    .await;
    let before = a.cache.remote_invalidations();
    b.send(
        Method::POST,
        &format!("/v1/agents/{A}/messages"),
        &[],
        Some("{}"),
    )
    .await;
    until(
        Duration::from_secs(2),
        "A received the invalidation",
        || async { a.cache.remote_invalidations() > before },
    )
    .await;
    assert_eq!(
        a.get(&own, &[]).await.x_cache(),
        "MISS",
        "Redis knew A's blocks"
    );
    assert_eq!(a.get(&other, &[]).await.x_cache(), "HIT", "and only those");
}
