//! `rediss://`: the cache's shared tier, its invalidation channel and write
//! leases over TLS to a real `redis-server --tls-port`, trusting the test's
//! CA through `redis.ca_file`; a proxy that does not trust that CA never
//! connects and only misses. Returns early, loudly, when `redis-server` is
//! missing (fails under `LETTA_PROXY_REQUIRE_REDIS=1`).

mod support;

use std::time::Duration;

use reqwest::Method;
use support::cache::*;
use support::coord::{redis_config, Inst};
use support::redis::RedisServer;
use support::standins;

fn tls_section(redis: &RedisServer) -> String {
    format!(
        "\n[redis]\nurl = \"{}\"\nca_file = \"{}\"\n",
        redis.url(),
        redis.ca_file().unwrap().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_tier_works_over_tls_with_a_ca_file() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    assert!(redis.url().starts_with("rediss://"));
    let s = standins(1).await;
    let config = || cache_config(&[&s[0]], &tls_section(&redis));
    let (a, b) = (Node::start(config()).await, Node::start(config()).await);
    for n in [&a, &b] {
        until(Duration::from_secs(10), "connected over TLS", || async {
            n.cache.redis_connected() && n.cache.flushes() >= 1
        })
        .await;
    }
    let agent = format!("/v1/agents/{A}");
    let filled = a.get(&agent, &[]).await;
    assert_eq!(filled.x_cache(), "MISS");
    until(Duration::from_secs(5), "stored in Redis", || async {
        a.metric("letta_proxy_cache_stores_total{tier=\"l2\"}")
            .await
            == 1.0
    })
    .await;
    let shared = b.get(&agent, &[]).await;
    assert_eq!((shared.x_cache(), shared.seq()), ("HIT", filled.seq()));
    // The invalidation channel runs over TLS too.
    let before = a.cache.remote_invalidations();
    let w = b.send(Method::PATCH, &agent, &[], Some("{}")).await;
    assert_eq!(w.status, 200);
    until(
        Duration::from_secs(5),
        "A received the invalidation",
        || async { a.cache.remote_invalidations() > before },
    )
    .await;
    // The server really only speaks TLS: the same port over plain TCP fails.
    let plain = redis::Client::open(format!("redis://127.0.0.1:{}", redis.port).as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_millis(500))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    assert!(plain.is_err(), "plain TCP must not work on the TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_trust_the_ca_only_misses() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let s = standins(1).await;
    // No ca_file: the system roots do not know the test's CA.
    let extra = format!("\n[redis]\nurl = \"{}\"\n", redis.url());
    let a = Node::start(cache_config(&[&s[0]], &extra)).await;
    for i in 0..5 {
        let r = a.get(&format!("/v1/tools/?i={i}"), &[]).await;
        assert_eq!((r.status, r.x_cache()), (200, "MISS"));
    }
    // It tried (and failed) the handshake a few times by now.
    until(
        Duration::from_secs(10),
        "connection attempts refused",
        || async {
            a.metric("letta_proxy_cache_redis_errors_total{op=\"connect\"}")
                .await
                >= 2.0
        },
    )
    .await;
    assert!(!a.cache.redis_connected(), "an untrusted server is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_leases_work_over_tls() {
    let Some(redis) = RedisServer::start_tls() else {
        return;
    };
    let mut c = redis_config(
        &redis.url(),
        Duration::from_secs(5),
        Duration::from_millis(300),
    );
    c.ca_file = redis.ca_file().map(|p| p.to_path_buf());
    let (a, b) = (Inst::start(&c, "a"), Inst::start(&c, "b"));
    a.ready().await;
    b.ready().await;
    let held = a
        .coord
        .acquire("agent-tls", Duration::from_secs(5))
        .await
        .unwrap();
    let waiter = {
        let coord = b.coord.clone();
        tokio::spawn(async move { coord.acquire("agent-tls", Duration::from_secs(10)).await })
    };
    support::eventually(Duration::from_secs(5), "b queued in Redis", || async {
        let mut c = redis.connection();
        redis::cmd("ZCARD")
            .arg("{letta-proxy:lease:agent-tls}:q")
            .query::<usize>(&mut c)
            .unwrap()
            == 1
    })
    .await;
    assert!(!waiter.is_finished(), "b waits while a holds");
    let first = held.token();
    held.release().await;
    let next = waiter.await.unwrap().unwrap();
    assert!(next.token() > first);
}
