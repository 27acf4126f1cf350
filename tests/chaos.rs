//! Failure handling over real sockets: a backend killed under load, a backend
//! that hangs, safe retries and their limits, health checks, draining.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use letta_proxy::standin::Mode;
use support::*;

#[tokio::test]
async fn killing_a_backend_under_load_loses_no_get_and_duplicates_no_post() {
    let s = standins(3).await;
    let mut cfg = config_for(&[&s[0], &s[1], &s[2]], "round_robin");
    cfg.health.passive_failures = 3;
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // 8 workers, 60 requests each, alternating GET and POST, each with its own request id.
    let workers = (0..8).map(|w| {
        let (c, sent, url) = (c.clone(), sent.clone(), proxy.url(""));
        async move {
            let mut out = Vec::new();
            for i in 0..60 {
                let rid = format!("w{w}-{i}");
                let is_post = i % 2 == 1;
                let req = if is_post {
                    c.post(format!(
                        "{url}/v1/agents/agent-0000000{w}-aaaa/messages?delay_ms=5"
                    ))
                    .body("{}")
                } else {
                    c.get(format!("{url}/v1/agents/agent-0000000{w}-aaaa?delay_ms=5"))
                };
                let status = req
                    .header("x-request-id", &rid)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                out.push((rid, is_post, status));
            }
            out
        }
    });
    let killer = async {
        eventually(Duration::from_secs(10), "load under way", || async {
            sent.load(std::sync::atomic::Ordering::SeqCst) >= 120
        })
        .await;
        s[1].stop();
    };
    let (results, ()) = tokio::join!(join_all(workers), killer);
    let results: Vec<_> = results.into_iter().flatten().collect();
    let gets: Vec<_> = results.iter().filter(|r| !r.1).collect();
    let posts: Vec<_> = results.iter().filter(|r| r.1).collect();
    let get_ok = gets.iter().filter(|r| r.2 == 200).count();
    let post_ok = posts.iter().filter(|r| r.2 == 200).count();
    let post_502 = posts.iter().filter(|r| r.2 == 502).count();
    println!(
        "kill-a-backend: GET {get_ok}/{} ok; POST {post_ok}/{} ok, {post_502} x 502, {} other",
        gets.len(),
        posts.len(),
        posts.len() - post_ok - post_502
    );
    assert_eq!(get_ok, gets.len(), "every GET succeeds");
    assert_eq!(
        post_ok + post_502,
        posts.len(),
        "every POST succeeds or fails with 502"
    );
    // No POST reached two backends: each request id appears at most once overall.
    let mut seen = HashSet::new();
    for b in &s {
        for (method, _, rid) in b.stats.log() {
            if method == "POST" {
                assert!(seen.insert(rid.clone()), "POST {rid} reached two backends");
            }
        }
    }
    // Every POST that succeeded really reached a backend.
    for (rid, _, status) in &posts {
        if *status == 200 {
            assert!(
                seen.contains(rid.as_str()),
                "{rid} answered 200 but no backend saw it"
            );
        }
    }
    eventually(Duration::from_secs(5), "in-flight back to 0", || async {
        proxy.total_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn a_hanging_backend_gives_504_in_time_and_gets_ejected() {
    let s = standins(2).await;
    let mut cfg = config_for(&[&s[0], &s[1]], "round_robin");
    cfg.server.response_header_timeout = Duration::from_millis(300);
    cfg.health.passive_failures = 2;
    cfg.health.ejection_time = Duration::from_secs(30);
    cfg.limits.serialize_agent_writes = false;
    let proxy = TestProxy::start(cfg).await;
    s[0].set_mode(Mode::Hang);
    let c = client();
    // POSTs are never retried: the ones placed on the hanging backend get 504 in time.
    let mut timeouts = 0;
    for _ in 0..4 {
        let started = Instant::now();
        let r = c
            .post(proxy.url("/v1/agents/agent-1/messages"))
            .body("{}")
            .send()
            .await
            .unwrap();
        if r.status() == 504 {
            timeouts += 1;
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "504 within the configured time"
            );
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["kind"], "upstream_timeout");
        } else {
            assert_eq!(r.status(), 200);
            assert_eq!(backend_of(&r), "be2");
        }
    }
    assert_eq!(timeouts, 2, "round robin put two on the hanging backend");
    let ejections = metric(
        &proxy,
        "letta_proxy_backend_ejections_total{backend=\"be1\"}",
    )
    .await;
    assert_eq!(ejections, Some(1.0));
    // Ejected: everything now goes to be2 at once.
    for _ in 0..6 {
        let r = c
            .post(proxy.url("/v1/agents/agent-1/messages"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(backend_of(&r), "be2");
    }
    eventually(Duration::from_secs(5), "in-flight back to 0", || async {
        proxy.total_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn safe_requests_are_retried_once_on_another_backend() {
    let s = standins(2).await;
    let mut cfg = config_for(&[&s[0], &s[1]], "round_robin");
    cfg.health.passive_failures = 0;
    let proxy = TestProxy::start(cfg).await;
    s[0].set_mode(Mode::Fail(503));
    let c = client();
    for _ in 0..6 {
        let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(backend_of(&r), "be2");
    }
    // Every attempt that landed on the failing backend was retried exactly once.
    let retries = metric(&proxy, "letta_proxy_retries_total{reason=\"status\"}").await;
    assert!(s[0].stats.requests() >= 3);
    assert_eq!(retries, Some(s[0].stats.requests() as f64));
    assert_eq!(s[1].stats.requests(), 6);
    // A POST is not retried: the backend's 503 reaches the client.
    let statuses: Vec<u16> = join_all((0..2).map(|_| {
        let c = c.clone();
        let url = proxy.url("/v1/agents/agent-9/messages");
        async move {
            c.post(url)
                .body("{}")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(statuses.contains(&503), "{statuses:?}");
    // A 409 is never retried.
    s[0].set_mode(Mode::Fail(409));
    s[1].set_mode(Mode::Fail(409));
    let before = s[0].stats.requests() + s[1].stats.requests();
    let r = c.get(proxy.url("/v1/blocks/")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(s[0].stats.requests() + s[1].stats.requests(), before + 1);
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let s = standins(2).await;
    let mut cfg = config_for(&[&s[0], &s[1]], "round_robin");
    cfg.health.passive_failures = 0;
    cfg.limits.retry_budget_percent = 0;
    cfg.limits.retry_min_per_second = 0;
    let proxy = TestProxy::start(cfg).await;
    s[0].set_mode(Mode::Fail(502));
    let c = client();
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            c.get(proxy.url("/v1/agents/"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(codes.iter().filter(|c| **c == 502).count(), 2, "{codes:?}");
    // The series exists from the start (pre-initialised at 0): no retry counted.
    assert_eq!(
        metric(&proxy, "letta_proxy_retries_total{reason=\"status\"}").await,
        Some(0.0)
    );
}

#[tokio::test]
async fn active_health_checks_take_a_backend_out_and_bring_it_back() {
    let s = standins(2).await;
    let mut cfg = config_for(&[&s[0], &s[1]], "round_robin");
    cfg.health.enabled = true;
    cfg.health.interval = Duration::from_millis(50);
    cfg.health.timeout = Duration::from_millis(200);
    cfg.health.unhealthy_threshold = 2;
    cfg.health.healthy_threshold = 2;
    let proxy = TestProxy::start(cfg).await;
    let be1 = || proxy.proxy.upstreams.load().backends[0].clone();
    s[0].set_mode(Mode::Fail(500));
    let t0 = Instant::now();
    eventually(Duration::from_secs(5), "be1 marked down", || async {
        !be1().is_healthy()
    })
    .await;
    let down_after = t0.elapsed();
    let c = client();
    s[0].set_mode(Mode::Normal);
    // Stays out until healthy_threshold good probes; meanwhile traffic avoids it
    // (the mode switch back is only seen by probes).
    let t1 = Instant::now();
    eventually(Duration::from_secs(5), "be1 back up", || async {
        be1().is_healthy()
    })
    .await;
    let up_after = t1.elapsed();
    println!("active health: marked down after {down_after:?}, readmitted after {up_after:?} (interval 50ms, thresholds 2/2)");
    let mut names = HashSet::new();
    for _ in 0..4 {
        names.insert(backend_of(
            &c.get(proxy.url("/v1/agents/")).send().await.unwrap(),
        ));
    }
    assert_eq!(names.len(), 2, "both serve again");
}

#[tokio::test]
async fn when_every_backend_looks_down_the_proxy_still_tries() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    for b in proxy.proxy.upstreams.load().backends.iter() {
        b.set_healthy(false);
    }
    let r = client().get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_draining_backend_finishes_its_streams_and_takes_no_new_requests() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    let c = client();
    let stream = c
        .post(proxy.url("/v1/agents/agent-5/messages/stream?events=4&interval_ms=100"))
        .send()
        .await
        .unwrap();
    let on = backend_of(&stream);
    let set = proxy.proxy.upstreams.load_full();
    let draining = set.backends.iter().find(|b| *b.name == on).unwrap();
    draining.set_draining(true);
    for _ in 0..6 {
        let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
        assert_ne!(backend_of(&r), on);
    }
    let text = stream.text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream finished whole"
    );
    eventually(Duration::from_secs(5), "drained", || async {
        draining.in_flight() == 0
    })
    .await;
}
