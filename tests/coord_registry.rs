//! The instance registry on a real `redis-server`: instances appear, one that
//! dies disappears within a few heartbeats, one that shuts down leaves at
//! once, and each instance's share of a backend cap follows. Returns early,
//! loudly, when `redis-server` is missing (fails under
//! `LETTA_PROXY_REQUIRE_REDIS=1`).

mod support;

use std::time::{Duration, Instant};

use support::coord::{redis_config, Inst};
use support::redis::RedisServer;

const HEARTBEAT: Duration = Duration::from_millis(300);

fn live(i: &Inst) -> Vec<String> {
    i.coord
        .registry()
        .membership()
        .instances
        .iter()
        .map(|x| x.id.clone())
        .collect()
}

fn shares(insts: &[&Inst], backend: &str, cap: u64) -> Vec<u64> {
    insts
        .iter()
        .map(|i| i.coord.share(backend, cap).expect("a capped backend"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_come_and_go_and_shares_follow() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let c = redis_config(&redis.url(), Duration::from_secs(5), HEARTBEAT);
    let a = Inst::start(&c, "a");
    let b = Inst::start(&c, "b");
    let d = Inst::start(&c, "d");
    for i in [&a, &b, &d] {
        i.ready().await;
    }
    support::eventually(Duration::from_secs(5), "everyone sees three", || async {
        [&a, &b, &d].iter().all(|i| live(i).len() == 3)
    })
    .await;
    let mut ids = vec![a.id(), b.id(), d.id()];
    ids.sort();
    assert_eq!(live(&a), ids, "sorted by id, the same view everywhere");
    let status = a.coord.status();
    assert_eq!(status.instances.len(), 3);
    assert_eq!(status.this_instance.name, "a");
    assert_eq!(a.metric("letta_proxy_coord_instances"), 3.0);
    // A cap of 5 over three instances: 2 + 2 + 1, whichever gets what.
    let s = shares(&[&a, &b, &d], "letta-1", 5);
    assert_eq!(s.iter().sum::<u64>(), 5, "{s:?}");
    assert!(s.iter().all(|&x| x == 1 || x == 2), "{s:?}");
    assert_eq!(
        a.coord.share("letta-1", 0),
        None,
        "unlimited stays unlimited"
    );

    // d dies (no goodbye): gone from both views within three heartbeats
    // (its deadline) plus one of theirs.
    let died = Instant::now();
    drop(d);
    support::eventually(
        Duration::from_secs(5),
        "the dead one is dropped",
        || async { live(&a).len() == 2 && live(&b).len() == 2 },
    )
    .await;
    let gone = died.elapsed();
    println!("a dead instance left the others' view after {gone:?} (heartbeat {HEARTBEAT:?})");
    assert!(
        gone <= HEARTBEAT * 4 + Duration::from_millis(300),
        "within a few heartbeats: {gone:?}"
    );
    assert!(gone >= HEARTBEAT * 2, "not before its deadline: {gone:?}");
    assert_eq!(shares(&[&a, &b], "letta-1", 5).iter().sum::<u64>(), 5);
    assert!(shares(&[&a, &b], "letta-1", 5).contains(&3));

    // b shuts down cleanly: out at a's next heartbeat.
    let left = Instant::now();
    b.coord.shutdown().await;
    support::eventually(Duration::from_secs(5), "b left", || async {
        live(&a).len() == 1
    })
    .await;
    assert!(
        left.elapsed() <= HEARTBEAT + Duration::from_millis(300),
        "{:?}",
        left.elapsed()
    );
    assert_eq!(a.coord.share("letta-1", 5), Some(5), "alone: the whole cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_view_gives_each_instance_the_whole_cap() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let c = redis_config(&redis.url(), Duration::from_secs(5), HEARTBEAT);
    let (a, b) = (Inst::start(&c, "a"), Inst::start(&c, "b"));
    a.ready().await;
    b.ready().await;
    support::eventually(Duration::from_secs(5), "both see two", || async {
        live(&a).len() == 2 && live(&b).len() == 2
    })
    .await;
    assert_eq!(shares(&[&a, &b], "x", 4), vec![2, 2]);
    redis.kill();
    // Once the view is older than three heartbeats, each acts alone.
    support::eventually(Duration::from_secs(5), "view stale", || async {
        !a.coord.status().membership_fresh
    })
    .await;
    assert_eq!(a.coord.share("x", 4), Some(4));
    assert!(a.metric("letta_proxy_coord_heartbeat_failures_total") >= 1.0);
}
