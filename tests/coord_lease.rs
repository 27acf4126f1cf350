//! Write leases across instances, on a real `redis-server` (one per test):
//! mutual exclusion between independent clients, FIFO across them, fencing
//! tokens, renewal, expiry of a dead holder, waiters that give up, the
//! fallback when Redis is unreachable, and how fast a release wakes the next
//! waiter. Each test returns early, loudly, when `redis-server` is missing
//! (and fails under `LETTA_PROXY_REQUIRE_REDIS=1`).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use letta_proxy::coord::LeaseError;
use support::coord::{redis_config, Inst};
use support::redis::RedisServer;

const KEY: &str = "agent-6f1e3c2a-1b2c-4d5e-8f90-0123456789ab";
const LONG: Duration = Duration::from_secs(30);

fn queue_len(redis: &RedisServer, key: &str) -> usize {
    let mut c = redis.connection();
    redis::cmd("ZCARD")
        .arg(format!("{{letta-proxy:lease:{key}}}:q"))
        .query(&mut c)
        .unwrap()
}

async fn two(redis: &RedisServer, ttl: Duration) -> (Inst, Inst) {
    let c = redis_config(&redis.url(), ttl, Duration::from_millis(500));
    let (a, b) = (Inst::start(&c, "a"), Inst::start(&c, "b"));
    a.ready().await;
    b.ready().await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_clients_never_hold_one_lease_at_once_and_tokens_grow() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = two(&redis, Duration::from_secs(5)).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let coord = if i % 2 == 0 {
            a.coord.clone()
        } else {
            b.coord.clone()
        };
        let (inside, most, tokens) = (inside.clone(), most.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let lease = coord.acquire(KEY, LONG).await.expect("lease");
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            tokens.lock().unwrap().push(lease.token());
            // Hold it across a few scheduler turns and a timer.
            tokio::time::sleep(Duration::from_millis(3)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            assert!(lease.release().await, "still held at release");
        }));
    }
    for t in tasks {
        tokio::time::timeout(LONG, t).await.unwrap().unwrap();
    }
    assert_eq!(most.load(Ordering::SeqCst), 1, "two holders at once");
    let tokens = tokens.lock().unwrap().clone();
    assert_eq!(tokens.len(), 24);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens grow in grant order: {tokens:?}"
    );
    assert_eq!(
        a.metric("letta_proxy_coord_leases_total{outcome=\"fallback\"}"),
        0.0
    );
    assert_eq!(queue_len(&redis, KEY), 0, "nobody left in the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_from_two_clients_are_served_in_arrival_order() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (a, b) = two(&redis, Duration::from_secs(5)).await;
    let holder = a.coord.acquire(KEY, LONG).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let coord = if i % 2 == 0 {
            b.coord.clone()
        } else {
            a.coord.clone()
        };
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let lease = coord.acquire(KEY, LONG).await.expect("lease");
            order.lock().unwrap().push(i);
            lease.release().await;
        }));
        // The next waiter arrives only once this one is queued in Redis.
        support::eventually(Duration::from_secs(5), "waiter queued", || async {
            queue_len(&redis, KEY) == i + 1
        })
        .await;
    }
    holder.release().await;
    for t in tasks {
        tokio::time::timeout(LONG, t).await.unwrap().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_dies_blocks_the_next_waiter_for_at_most_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(1500);
    let (a, b) = two(&redis, ttl).await;
    let held = a.coord.acquire(KEY, LONG).await.unwrap();
    let first = held.token();
    // Let a renewal or two happen: the lease outlives its first TTL.
    tokio::time::sleep(ttl + ttl / 2).await;
    assert!(!held.is_lost());
    let waiter = {
        let coord = b.coord.clone();
        tokio::spawn(async move {
            let lease = coord.acquire(KEY, LONG).await.expect("lease");
            (Instant::now(), lease)
        })
    };
    support::eventually(Duration::from_secs(5), "waiter queued", || async {
        queue_len(&redis, KEY) == 1
    })
    .await;
    // Crash: the instance stops (no renewal) and never releases.
    let died = Instant::now();
    std::mem::forget(held);
    drop(a);
    let (got, lease) = tokio::time::timeout(LONG, waiter).await.unwrap().unwrap();
    let waited = got.duration_since(died);
    println!("lease taken over {waited:?} after its holder died (ttl {ttl:?})");
    assert!(
        waited <= ttl + Duration::from_millis(300),
        "the next waiter proceeds within the TTL: {waited:?}"
    );
    assert!(
        waited >= ttl / 3,
        "it did wait for the dead holder's lease to expire: {waited:?}"
    );
    assert!(lease.token() > first, "fencing token increases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_is_renewed_for_as_long_as_it_is_held() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(900);
    let (a, b) = two(&redis, ttl).await;
    let held = a.coord.acquire(KEY, LONG).await.unwrap();
    // Four TTLs later, another client still cannot get it.
    let t = Instant::now();
    match b.coord.acquire(KEY, ttl * 4).await {
        Err(LeaseError::Timeout) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(t.elapsed() >= ttl * 4);
    assert!(!held.is_lost());
    assert_eq!(
        b.metric("letta_proxy_coord_leases_total{outcome=\"timed_out\"}"),
        1.0
    );
    held.release().await;
    // The one that gave up left the queue: the key is free at once.
    let t = Instant::now();
    let again = b.coord.acquire(KEY, LONG).await.unwrap();
    assert!(t.elapsed() < ttl, "not blocked by a waiter that gave up");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_dropped_mid_wait_leaves_the_queue() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_secs(5);
    let (a, b) = two(&redis, ttl).await;
    let held = a.coord.acquire(KEY, LONG).await.unwrap();
    // The client of this write went away: its future is dropped.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(300), b.coord.acquire(KEY, LONG)).await;
    assert!(gave_up.is_err());
    support::eventually(Duration::from_secs(2), "queue empty", || async {
        queue_len(&redis, KEY) == 0
    })
    .await;
    drop(held);
    let t = Instant::now();
    let next = b.coord.acquire(KEY, LONG).await.unwrap();
    assert!(t.elapsed() < ttl / 2, "took {:?}", t.elapsed());
    drop(next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_acquire_falls_back_at_once_and_says_so() {
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = redis_config(
        &format!("redis://127.0.0.1:{port}"),
        Duration::from_secs(5),
        Duration::from_millis(200),
    );
    let a = Inst::start(&c, "alone");
    let t = Instant::now();
    for _ in 0..5 {
        match a.coord.acquire(KEY, LONG).await {
            Err(LeaseError::Unavailable(_)) => {}
            other => panic!("expected a fallback, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(
        a.metric("letta_proxy_coord_leases_total{outcome=\"fallback\"}"),
        5.0
    );
    assert_eq!(a.metric("letta_proxy_coord_redis_up"), 0.0);
    let s = a.coord.status();
    assert_eq!(s.write_ordering, "local");
    assert!(!s.membership_fresh);
    // Caps are per instance while the registry is out of reach.
    assert_eq!(a.coord.share("letta-1", 4), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_killed_under_a_held_lease_fails_nothing() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let ttl = Duration::from_millis(900);
    let (a, _b) = two(&redis, ttl).await;
    let held = a.coord.acquire(KEY, LONG).await.unwrap();
    redis.kill();
    // Renewals fail for a whole TTL: the lease is marked lost, nothing panics.
    support::eventually(Duration::from_secs(5), "lease marked lost", || async {
        held.is_lost()
    })
    .await;
    assert_eq!(a.metric("letta_proxy_coord_leases_lost_total"), 1.0);
    let t = Instant::now();
    assert!(matches!(
        a.coord.acquire("agent-other", LONG).await,
        Err(LeaseError::Unavailable(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(held);
    // Redis back (empty): leases are taken in Redis again.
    redis.restart();
    support::eventually(Duration::from_secs(15), "leases in Redis again", || async {
        match a.coord.acquire(KEY, Duration::from_secs(1)).await {
            Ok(l) => {
                l.release().await;
                true
            }
            Err(_) => false,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_wakes_the_next_waiter_on_another_client_promptly() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A long TTL: polls (every TTL/3) cannot explain a quick hand-over.
    let ttl = Duration::from_secs(6);
    let (a, b) = two(&redis, ttl).await;
    let mut handovers = Vec::new();
    for _ in 0..40 {
        let held = a.coord.acquire(KEY, LONG).await.unwrap();
        let waiter = {
            let coord = b.coord.clone();
            tokio::spawn(async move {
                let l = coord.acquire(KEY, LONG).await.unwrap();
                let at = Instant::now();
                l.release().await;
                at
            })
        };
        support::eventually(Duration::from_secs(5), "waiter queued", || async {
            queue_len(&redis, KEY) == 1
        })
        .await;
        let released = Instant::now();
        drop(held);
        let got = tokio::time::timeout(LONG, waiter).await.unwrap().unwrap();
        handovers.push(got.duration_since(released));
    }
    handovers.sort();
    let n = handovers.len();
    println!(
        "lease hand-over between two clients (release → next holder), n={n}: p50 {:?}, p90 {:?}, max {:?}",
        handovers[n / 2],
        handovers[n * 9 / 10],
        handovers[n - 1]
    );
    assert!(
        handovers[n / 2] < Duration::from_millis(100),
        "woken by the release, not by a poll (every {:?})",
        ttl / 3
    );
}
