//! Operations: stats percentiles, admin API and its token, hot reload without
//! cutting a stream, a broken reload keeping the old config, the batch endpoint.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::*;

fn admin_url(proxy: &TestProxy, path: &str) -> String {
    format!(
        "http://{}{}",
        proxy.gateway.admin_addr().expect("admin listener bound"),
        path
    )
}

/// Sends `rb` and returns the answer's status.
async fn status(rb: reqwest::RequestBuilder) -> reqwest::StatusCode {
    rb.send().await.unwrap().status()
}

fn backends_toml(backends: &[&letta_proxy::standin::StandIn]) -> String {
    backends
        .iter()
        .map(|s| {
            format!(
                "[[backends]]\nname = \"{}\"\nurl = \"{}\"\n",
                s.name,
                s.url()
            )
        })
        .collect()
}

#[tokio::test]
async fn stats_show_percentiles_of_a_known_latency_distribution() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    let c = client();
    // 20 requests: 18 at ~0 ms and 2 at 300 ms (10 %): p50 small, p95 and p99 ≥ 300 ms.
    for i in 0..20 {
        let delay = if i % 10 == 9 { 300 } else { 0 };
        let r = c
            .get(proxy.url(&format!("/v1/agents/{AGENT}?delay_ms={delay}")))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    c.get(proxy.url("/v1/agents/?status=500"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let stats: Value = c
        .get(proxy.url("/-/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let o = &stats["overall"];
    assert_eq!(o["requests"], 21);
    assert!(o["p50_ms"].as_f64().unwrap() < 100.0, "{o}");
    assert!(o["p95_ms"].as_f64().unwrap() >= 300.0, "{o}");
    assert!(o["p99_ms"].as_f64().unwrap() >= 300.0, "{o}");
    assert!(
        (o["error_rate"].as_f64().unwrap() - 1.0 / 21.0).abs() < 1e-9,
        "{o}"
    );
    let names: HashSet<&str> = stats["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, HashSet::from(["be1", "be2"]));
    assert!(stats["process"]["resident_memory_bytes"].as_f64().unwrap() > 0.0);
    assert!(
        !stats.to_string().contains("127.0.0.1"),
        "no internal addresses on the main listener"
    );
    let page = c.get(proxy.url("/-/status")).send().await.unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/-/stats") && !html.contains("http://") && !html.contains("https://"),
        "self-contained page"
    );
}

#[tokio::test]
async fn admin_api_drains_adds_removes_and_switches_strategy_with_a_token() {
    let s = standins(3).await;
    let mut cfg = config_for(&[&s[0], &s[1]], "round_robin");
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.admin.token = Some("s3cret".into());
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    eventually(Duration::from_secs(5), "admin bound", || async {
        proxy.gateway.admin_addr().is_some()
    })
    .await;
    // Token enforced on reads and writes.
    assert_eq!(status(c.get(admin_url(&proxy, "/-/backends"))).await, 401);
    assert_eq!(
        status(
            c.post(admin_url(&proxy, "/-/backends/be1/drain"))
                .bearer_auth("wrong")
        )
        .await,
        401
    );
    let auth = |rb: reqwest::RequestBuilder| rb.bearer_auth("s3cret");
    let list: Value = auth(c.get(admin_url(&proxy, "/-/backends")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["backends"].as_array().unwrap().len(), 2);
    // Drain be1: traffic goes to be2 only.
    assert_eq!(
        status(auth(c.post(admin_url(&proxy, "/-/backends/be1/drain")))).await,
        200
    );
    for _ in 0..4 {
        assert_eq!(
            backend_of(&c.get(proxy.url("/v1/agents/")).send().await.unwrap()),
            "be2"
        );
    }
    // Add be3, remove be2, undrain be1.
    let add = json!({"name": "be3", "url": s[2].url()});
    assert_eq!(
        status(auth(c.post(admin_url(&proxy, "/-/backends")).json(&add))).await,
        201
    );
    assert_eq!(
        status(auth(c.post(admin_url(&proxy, "/-/backends")).json(&add))).await,
        400
    );
    assert_eq!(
        status(auth(c.delete(admin_url(&proxy, "/-/backends/be2")))).await,
        200
    );
    assert_eq!(
        status(auth(c.delete(admin_url(&proxy, "/-/backends/nope")))).await,
        404
    );
    assert_eq!(
        status(auth(c.post(admin_url(&proxy, "/-/backends/be1/undrain")))).await,
        200
    );
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(backend_of(
            &c.get(proxy.url("/v1/agents/")).send().await.unwrap(),
        ));
    }
    assert_eq!(seen, HashSet::from(["be1".to_string(), "be3".to_string()]));
    // Strategy switch, validated.
    assert_eq!(
        status(auth(
            c.put(admin_url(&proxy, "/-/strategy"))
                .json(&json!({"strategy": "least_connections"})),
        ))
        .await,
        200
    );
    assert_eq!(
        proxy.gateway.upstreams().load().strategy.name(),
        "least_connections"
    );
    assert_eq!(
        status(auth(
            c.put(admin_url(&proxy, "/-/strategy"))
                .json(&json!({"strategy": "fastest"})),
        ))
        .await,
        400
    );
    // The admin listener also answers the read-only endpoints.
    let m = auth(c.get(admin_url(&proxy, "/metrics")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "letta_proxy_balancer_selections_total{backend=\"be3\",strategy=\"round_robin\"}"
        ),
        "{m}"
    );
}

#[tokio::test]
async fn a_non_loopback_admin_listener_needs_a_token() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    let err = cfg.validate().unwrap_err();
    assert!(err.contains("admin.token"), "{err}");
}

#[tokio::test]
async fn reload_switches_strategy_and_backends_without_cutting_an_open_stream() {
    let s = standins(3).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letta-proxy.toml");
    let head = "[server]\nadmin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n[health]\nenabled = false\n";
    std::fs::write(
        &path,
        format!(
            "{head}[balancer]\nstrategy = \"round_robin\"\n{}",
            backends_toml(&[&s[0], &s[1]])
        ),
    )
    .unwrap();
    let cfg = letta_proxy::Config::load(Some(&path), std::iter::empty()).unwrap();
    let proxy = TestProxy::start_with_path(cfg, &path).await;
    let c = client();
    eventually(Duration::from_secs(5), "admin bound", || async {
        proxy.gateway.admin_addr().is_some()
    })
    .await;
    // A stream on be1 (round robin starts there), left open across the reload.
    let stream = c
        .post(proxy.url("/v1/agents/agent-1/messages/stream?events=6&interval_ms=150"))
        .send()
        .await
        .unwrap();
    let streaming_on = backend_of(&stream);
    let mut body = stream.bytes_stream();
    body.next().await.unwrap().unwrap();
    // New file: be1 removed, be3 added, least_connections.
    std::fs::write(
        &path,
        format!(
            "{head}[balancer]\nstrategy = \"least_connections\"\n{}",
            backends_toml(&[&s[1], &s[2]])
        ),
    )
    .unwrap();
    let started = Instant::now();
    let r = c.post(admin_url(&proxy, "/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    println!("reload answered in {:?}", started.elapsed());
    assert_eq!(
        proxy.gateway.config().balancer.strategy.as_str(),
        "least_connections"
    );
    let mut seen = HashSet::new();
    for _ in 0..8 {
        seen.insert(backend_of(
            &c.get(proxy.url("/v1/agents/")).send().await.unwrap(),
        ));
    }
    assert_eq!(
        seen,
        HashSet::from(["be2".to_string(), "be3".to_string()]),
        "new requests follow the new config"
    );
    // The stream that started before the reload completes whole.
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(rest).unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream on {streaming_on} cut: {text}"
    );
    assert_eq!(text.matches("data: {").count(), 5);
    let reloads = metric(
        &proxy,
        "letta_proxy_config_reloads_total{result=\"success\"}",
    )
    .await;
    assert_eq!(reloads, Some(1.0));
}

#[tokio::test]
async fn a_broken_config_on_reload_keeps_the_old_one_serving() {
    let s = standins(2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letta-proxy.toml");
    let good = format!(
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n[health]\nenabled = false\n{}",
        backends_toml(&[&s[0], &s[1]])
    );
    std::fs::write(&path, &good).unwrap();
    let cfg = letta_proxy::Config::load(Some(&path), std::iter::empty()).unwrap();
    let proxy = TestProxy::start_with_path(cfg, &path).await;
    let c = client();
    eventually(Duration::from_secs(5), "admin bound", || async {
        proxy.gateway.admin_addr().is_some()
    })
    .await;
    std::fs::write(&path, format!("{good}[balancer]\nstrategy = \"fastest\"\n")).unwrap();
    let r = c.post(admin_url(&proxy, "/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["kind"], "invalid_config");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("fastest"),
        "{v}"
    );
    assert_eq!(
        metric(
            &proxy,
            "letta_proxy_config_reloads_total{result=\"failure\"}"
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        proxy.gateway.config().balancer.strategy.as_str(),
        "round_robin"
    );
    for _ in 0..4 {
        assert_eq!(
            c.get(proxy.url("/v1/agents/"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

#[tokio::test]
async fn a_batch_answers_every_sub_request_in_order_with_partial_failures() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    let batch = json!({
        "concurrency": 4,
        "requests": [
            {"method": "GET", "path": format!("/v1/agents/{AGENT}")},
            {"method": "GET", "path": "/v1/blocks/?status=404"},
            {"method": "PATCH", "path": "/v1/blocks/block-1", "body": {"value": "hi"}},
            {"method": "GET", "path": "/not-letta"},
            {"method": "GET", "path": "/v1/tools/?status=500"},
            {"method": "GET", "path": "/v1/sources/?delay_ms=100"}
        ]
    });
    let r = client()
        .post(proxy.url("/-/batch"))
        .header("authorization", "Bearer user-1")
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let results = v["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 404, 200, 400, 500, 200]);
    assert_eq!(
        results
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert_eq!(results[0]["body"]["path"], format!("/v1/agents/{AGENT}"));
    assert_eq!(
        results[2]["body"]["request_bytes"], 14,
        "JSON body forwarded"
    );
    assert!(results[0]["headers"]["x-letta-proxy-backend"].is_string());
    assert_eq!(
        (v["succeeded"].as_u64(), v["failed"].as_u64()),
        (Some(3), Some(3))
    );
    // Sub-requests carried the caller's identity.
    let rids: Vec<String> = s
        .iter()
        .flat_map(|b| b.stats.log())
        .map(|(_, _, rid)| rid)
        .collect();
    assert_eq!(rids.len(), 5, "the invalid path never left the proxy");
    let bad = client()
        .post(proxy.url("/-/batch"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn stats_report_the_cache_hit_ratio() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.cache.enabled = true;
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    let stats = || async {
        let v: Value = c
            .get(proxy.url("/-/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["cache_hit_ratio"].clone()
    };
    assert_eq!(stats().await, Value::Null, "no cacheable request yet");
    // One miss, then three hits of the same answer.
    for _ in 0..4 {
        let r = c
            .get(proxy.url(&format!("/v1/agents/{AGENT}")))
            .send()
            .await
            .unwrap();
        r.bytes().await.unwrap();
    }
    assert_eq!(
        s[0].stats.requests(),
        1,
        "three answers came from the cache"
    );
    assert_eq!(stats().await.as_f64(), Some(0.75));
}
