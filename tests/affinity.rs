//! Agent-aware balancing over real sockets: agent affinity (stable, bounded,
//! minimal movement) and least_latency steering away from a slow replica.

mod support;

use futures_util::future::join_all;
use letta_proxy::standin::Mode;
use std::collections::HashMap;
use support::*;

fn agent(i: usize) -> String {
    format!("agent-{i:08x}-0000-4000-8000-000000000000")
}

/// Which backend serves each of `n` agents (one GET each, one at a time).
async fn owners(proxy: &TestProxy, n: usize) -> HashMap<String, String> {
    let c = client();
    let mut map = HashMap::new();
    for i in 0..n {
        let a = agent(i);
        let r = c
            .get(proxy.url(&format!("/v1/agents/{a}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        map.insert(a, backend_of(&r));
    }
    map
}

#[tokio::test]
async fn each_agent_stays_on_one_backend_and_only_a_dead_backends_agents_move() {
    let s = standins(3).await;
    let mut cfg = config_for(&[&s[0], &s[1], &s[2]], "agent_affinity");
    cfg.health.passive_failures = 1;
    let proxy = TestProxy::start(cfg).await;
    let first = owners(&proxy, 200).await;
    let again = owners(&proxy, 200).await;
    assert_eq!(
        first, again,
        "every agent lands on the same backend every time"
    );
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for b in first.values() {
        *per_backend.entry(b).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    for (b, n) in &per_backend {
        assert!((30..=110).contains(n), "{b} owns {n} of 200 agents");
    }
    // Kill be2: its agents move, nobody else's do.
    s[1].stop();
    let after = owners(&proxy, 200).await;
    let mut moved = 0;
    for (a, before) in &first {
        let now = &after[a];
        if before == "be2" {
            assert_ne!(now, "be2");
            moved += 1;
        } else {
            assert_eq!(now, before, "{a} moved although its backend is alive");
        }
    }
    println!(
        "agent_affinity over 3 stand-ins: {moved}/200 agents moved when be2 died (its own share)"
    );
    assert_eq!(moved, per_backend["be2"]);
}

#[tokio::test]
async fn no_backend_goes_above_the_load_bound() {
    let s = standins(3).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1], &s[2]], "agent_affinity")).await;
    // Adversarial: 45 agents whose home is be1, all at once, each held 300 ms.
    // Pure affinity would put all 45 on be1; the bound caps it near
    // (1 + 0.25) x 45 / 3 and passes the rest along the ring.
    let homes = owners(&proxy, 300).await;
    let mut on_be1: Vec<&String> = homes
        .iter()
        .filter(|(_, b)| *b == "be1")
        .map(|(a, _)| a)
        .collect();
    on_be1.sort();
    assert!(on_be1.len() >= 45, "{}", on_be1.len());
    let c = client();
    let burst = on_be1[..45].iter().map(|a| {
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{a}?delay_ms=300"));
        async move { c.get(url).send().await.unwrap().status() }
    });
    let statuses = join_all(burst).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let peaks: Vec<u64> = s.iter().map(|b| b.stats.peak()).collect();
    println!(
        "agent_affinity peak in flight per backend, 45 concurrent agents homed on be1: {peaks:?}"
    );
    assert!(peaks[0] <= 20, "be1 above the bound: {peaks:?}");
    assert!(
        peaks[1] + peaks[2] >= 25,
        "the overflow went elsewhere: {peaks:?}"
    );
}

#[tokio::test]
async fn requests_without_an_agent_use_the_fallback_and_the_header_names_an_agent() {
    let s = standins(3).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1], &s[2]], "agent_affinity")).await;
    let c = client();
    // Header-named agent: sticky like a path-named one.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let r = c
            .get(proxy.url("/v1/blocks/"))
            .header("x-agent-id", agent(5))
            .send()
            .await
            .unwrap();
        seen.insert(backend_of(&r));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    // No agent: the fallback (least_connections) spreads them.
    let mut seen = std::collections::HashSet::new();
    let held = (0..9).map(|_| {
        let c = c.clone();
        let url = proxy.url("/v1/tools/?delay_ms=200");
        async move { backend_of(&c.get(url).send().await.unwrap()) }
    });
    for b in join_all(held).await {
        seen.insert(b);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// Share of `n` requests (8 clients) served by `be1` under `strategy` while be1 is slow.
async fn slow_share(strategy: &str) -> f64 {
    let s = standins(3).await;
    s[0].set_mode(Mode::Slow(40));
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1], &s[2]], strategy)).await;
    let c = client();
    let workers = (0..8).map(|w| {
        let (c, url) = (c.clone(), proxy.url(""));
        async move {
            let mut slow = 0;
            for i in 0..30 {
                let r = c
                    .get(format!("{url}/v1/tools/?w={w}&i={i}&delay_ms=2"))
                    .send()
                    .await
                    .unwrap();
                if backend_of(&r) == "be1" {
                    slow += 1;
                }
            }
            slow
        }
    });
    let slow: usize = join_all(workers).await.into_iter().sum();
    slow as f64 / 240.0
}

#[tokio::test]
async fn a_slow_backend_gets_less_traffic_under_least_latency_than_round_robin() {
    let rr = slow_share("round_robin").await;
    let ll = slow_share("least_latency").await;
    println!("share of requests on the slow backend: round_robin {rr:.2}, least_latency {ll:.2}");
    assert!(rr > 0.30, "round robin is blind to speed: {rr}");
    assert!(ll < rr / 2.0, "least_latency {ll} vs round_robin {rr}");
}
