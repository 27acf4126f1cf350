//! Each strategy's distribution over three real stand-in backends, and
//! least_connections steering around long streams.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

async fn spread(proxy: &TestProxy, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = c
            .get(proxy.url(&format!("/v1/agents/{AGENT}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        *counts.entry(backend_of(&r)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_is_exact() {
    let s = standins(3).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1], &s[2]], "round_robin")).await;
    let counts = spread(&proxy, 300).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (name, n) in &counts {
        assert_eq!(*n, 100, "{name}: {counts:?}");
    }
    // The backends saw exactly what the header claims.
    for b in &s {
        assert_eq!(b.stats.requests(), 100, "{}", b.name);
    }
}

#[tokio::test]
async fn round_robin_honours_weights() {
    let s = standins(3).await;
    let mut cfg = config_for(&[&s[0], &s[1], &s[2]], "round_robin");
    cfg.backends[0].weight = 3;
    let proxy = TestProxy::start(cfg).await;
    let counts = spread(&proxy, 500).await;
    assert_eq!(counts["be1"], 300, "{counts:?}");
    assert_eq!(counts["be2"], 100, "{counts:?}");
    assert_eq!(counts["be3"], 100, "{counts:?}");
}

#[tokio::test]
async fn random_stays_within_bounds_and_honours_weights() {
    let s = standins(3).await;
    let mut cfg = config_for(&[&s[0], &s[1], &s[2]], "random");
    cfg.backends[2].weight = 2;
    let proxy = TestProxy::start(cfg).await;
    let counts = spread(&proxy, 800).await;
    // Expected 200 / 200 / 400; the bounds are > 5 standard deviations wide.
    for (name, lo, hi) in [("be1", 130, 270), ("be2", 130, 270), ("be3", 320, 480)] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (lo..=hi).contains(&n),
            "{name}={n} not in {lo}..={hi}: {counts:?}"
        );
    }
}

#[tokio::test]
async fn least_connections_steers_new_requests_away_from_busy_streams() {
    let s = standins(3).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1], &s[2]], "least_connections")).await;
    let c = client();
    // Open four long SSE streams and keep them open: they spread over the backends
    // and each counts as in flight until its body ends.
    // (Distinct agents: writes to one agent would run one after the other.)
    let mut streams = Vec::new();
    for i in 0..4 {
        let agent = format!("agent-00000000-0000-4000-8000-00000000010{i}");
        let r = c
            .post(proxy.url(&format!(
                "/v1/agents/{agent}/messages/stream?events=3&interval_ms=60000"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push((backend_of(&r), r));
    }
    let mut busy: HashMap<String, u64> = HashMap::new();
    for (name, _) in &streams {
        *busy.entry(name.clone()).or_default() += 1;
    }
    // The response headers are long gone, the streams still count.
    for b in &s {
        assert_eq!(
            proxy.in_flight(&b.name),
            busy.get(&b.name).copied().unwrap_or(0),
            "{}",
            b.name
        );
    }
    let least = s
        .iter()
        .map(|b| b.name.clone())
        .min_by_key(|n| busy.get(n).copied().unwrap_or(0))
        .unwrap();
    // Short requests now go to the least busy backend (serially: in flight stays put).
    for _ in 0..20 {
        let r = c
            .get(proxy.url(&format!("/v1/agents/{AGENT}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let got = backend_of(&r);
        let b = busy.get(&got).copied().unwrap_or(0);
        let min = busy.get(&least).copied().unwrap_or(0);
        assert_eq!(
            b, min,
            "request went to {got} (busy {b}) while {least} had {min}"
        );
    }
    drop(streams);
    eventually(
        Duration::from_secs(5),
        "in-flight back to 0 after the clients left",
        || async { proxy.total_in_flight() == 0 },
    )
    .await;
}
