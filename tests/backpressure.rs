//! Backpressure over real sockets: per-backend caps with a bounded queue,
//! per-agent write ordering, the proxy-wide cap.

mod support;

use std::time::Duration;

use futures_util::future::join_all;
use support::*;

fn agent(i: usize) -> String {
    format!("agent-00000000-0000-4000-8000-{i:012}")
}

#[tokio::test]
async fn a_backend_never_sees_more_than_its_cap_and_excess_is_shed_with_retry_after() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "least_connections");
    cfg.backends[0].max_in_flight = Some(4);
    cfg.limits.queue_size = 8;
    cfg.limits.queue_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    // A burst 10x the cap, each request holding its slot for 200 ms.
    let burst = (0..40).map(|i| {
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{}?delay_ms=200", agent(i)));
        async move { c.get(url).send().await.unwrap() }
    });
    let answers = join_all(burst).await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    let shed: Vec<_> = answers.iter().filter(|r| r.status() == 503).collect();
    assert_eq!(ok + shed.len(), 40, "only 200 or 503");
    assert!(
        s[0].stats.peak() <= 4,
        "backend saw {} at once",
        s[0].stats.peak()
    );
    // 4 run at once, 8 wait: 4 of those get a slot at 200 ms, 4 time out at 300 ms.
    assert!((8..=12).contains(&ok), "{ok} served");
    assert!(shed.iter().all(|r| r.headers()["retry-after"] == "1"));
    let full = metric(
        &proxy,
        "letta_proxy_rejections_total{reason=\"queue_full\"}",
    )
    .await;
    let timed_out = metric(
        &proxy,
        "letta_proxy_rejections_total{reason=\"queue_timeout\"}",
    )
    .await;
    assert!(full.unwrap_or(0.0) >= 20.0, "{full:?}");
    assert!(timed_out.unwrap_or(0.0) >= 1.0, "{timed_out:?}");
    assert!(
        metric(&proxy, "letta_proxy_queue_wait_seconds_count")
            .await
            .unwrap_or(0.0)
            >= 4.0
    );
    assert_eq!(proxy.total_in_flight(), 0);
}

#[tokio::test]
async fn queued_requests_are_all_served_when_slots_free_up() {
    let s = standins(2).await;
    let mut cfg = config_for(&[&s[0], &s[1]], "round_robin");
    cfg.limits.max_in_flight_per_backend = 1;
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    let all = (0..12).map(|i| {
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{}?delay_ms=30", agent(i)));
        async move { c.get(url).send().await.unwrap().status() }
    });
    let statuses = join_all(all).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(s[0].stats.peak(), 1);
    assert_eq!(s[1].stats.peak(), 1);
    assert_eq!(s[0].stats.requests() + s[1].stats.requests(), 12);
}

#[tokio::test]
async fn writes_to_one_agent_reach_the_backend_one_at_a_time_in_arrival_order() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    let c = client();
    let a = agent(1);
    let mut tasks = Vec::new();
    for seq in 0..20 {
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{a}/messages?seq={seq}&delay_ms=20"));
        tasks.push(tokio::spawn(async move {
            c.post(url).body("{}").send().await.unwrap().status()
        }));
        // Arrival order is the order we send in: wait until this one is inside the proxy.
        eventually(Duration::from_secs(5), "request arrived", || async {
            metric(&proxy, "http_server_active_requests").await == Some(seq as f64 + 1.0)
                || s[0].stats.requests() + s[1].stats.requests() > seq as u64
        })
        .await;
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        s[0].stats.peak().max(s[1].stats.peak()),
        1,
        "one write at a time"
    );
    // Round robin alternated the replicas; with one write at a time, each
    // replica's log is increasing and together they hold every write once.
    let seq_of = |uri: &str| -> u32 {
        uri.split("seq=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut all = Vec::new();
    for b in &s {
        let seqs: Vec<u32> = b
            .stats
            .log()
            .iter()
            .map(|(_, uri, _)| seq_of(uri))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{}: {seqs:?}", b.name);
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
    assert_eq!(proxy.proxy.agents_being_written(), 0);
}

#[tokio::test]
async fn writes_to_different_agents_and_reads_run_in_parallel() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let c = client();
    let writes = (0..5).map(|i| {
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{}/messages?delay_ms=300", agent(i)));
        async move { c.post(url).body("{}").send().await.unwrap().status() }
    });
    // Reads of an agent being written are never held.
    let reads = (0..5).map(|_| {
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{}?delay_ms=300", agent(0)));
        async move { c.get(url).send().await.unwrap().status() }
    });
    let (w, r) = tokio::join!(join_all(writes), join_all(reads));
    assert!(w.iter().chain(r.iter()).all(|s| *s == 200));
    assert_eq!(s[0].stats.peak(), 10, "all ten ran at once");
}

#[tokio::test]
async fn a_streamed_message_holds_its_agent_until_the_stream_ends() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let c = client();
    let a = agent(7);
    let stream = c
        .post(proxy.url(&format!(
            "/v1/agents/{a}/messages/stream?events=3&interval_ms=200"
        )))
        .send()
        .await
        .unwrap();
    let second = tokio::spawn({
        let c = c.clone();
        let url = proxy.url(&format!("/v1/agents/{a}/messages"));
        async move { c.post(url).body("{}").send().await.unwrap().status() }
    });
    // Once the second write is inside the proxy, it must be waiting, not at the backend.
    eventually(Duration::from_secs(5), "second write arrived", || async {
        metric(&proxy, "http_server_active_requests").await == Some(2.0)
    })
    .await;
    assert_eq!(
        s[0].stats.requests(),
        1,
        "the second write waits for the stream"
    );
    let text = stream.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(second.await.unwrap(), 200);
    assert_eq!(s[0].stats.requests(), 2);
}

#[tokio::test]
async fn the_proxy_wide_cap_sheds_at_once() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.limits.max_in_flight = 2;
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    let held: Vec<_> = (0..2)
        .map(|i| {
            let c = c.clone();
            let url = proxy.url(&format!("/v1/agents/{}?delay_ms=500", agent(i)));
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    eventually(Duration::from_secs(5), "two in flight", || async {
        s[0].stats.active() == 2
    })
    .await;
    let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        c.get(proxy.url("/v1/agents/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_proxy_wide_cap_holds_across_a_reload() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.limits.max_in_flight = 3;
    let proxy = TestProxy::start(cfg.clone()).await;
    let c = client();
    let held: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            let url = proxy.url(&format!("/v1/agents/{}?delay_ms=1500", agent(i)));
            tokio::spawn(async move { c.get(url).send().await.unwrap().status() })
        })
        .collect();
    eventually(Duration::from_secs(5), "three in flight", || async {
        s[0].stats.active() == 3
    })
    .await;
    // A reload (same cap) must not forget the three requests in flight.
    proxy.proxy.apply(cfg.clone());
    let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "the cap still counts requests from before the reload"
    );
    // A reload that raises the cap by one admits exactly one more.
    cfg.limits.max_in_flight = 4;
    proxy.proxy.apply(cfg);
    let c2 = c.clone();
    let fourth_url = proxy.url(&format!("/v1/agents/{}?delay_ms=1500", agent(3)));
    let fourth = tokio::spawn(async move { c2.get(fourth_url).send().await.unwrap().status() });
    eventually(Duration::from_secs(5), "four in flight", || async {
        s[0].stats.active() == 4
    })
    .await;
    let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(r.status(), 503, "3 from before + 1 = the new cap");
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(fourth.await.unwrap(), 200);
}
