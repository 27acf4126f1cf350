//! `/metrics` speaks Prometheus text, labels routes by template, counts per
//! backend, and tracks in-flight until the body ends.

mod support;

use support::*;

#[tokio::test]
async fn families_move_and_routes_are_templates() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    let c = client();
    for _ in 0..4 {
        c.get(proxy.url(&format!("/v1/agents/{AGENT}")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    c.get(proxy.url("/v1/agents/?status=500"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let text = scrape(&proxy.url("/metrics")).await;
    assert!(!text.contains(AGENT), "raw ids must never be labels");
    assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
    let route = "http_route=\"/v1/agents/{agent_id}\"";
    let count: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("http_server_request_duration_seconds_count") && l.contains(route)
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(count, 4.0, "{text}");
    for b in ["be1", "be2"] {
        let v = metric(
            &proxy,
            &format!("letta_proxy_backend_requests_total{{backend=\"{b}\",status_class=\"2xx\"}}"),
        )
        .await;
        assert!(v.unwrap_or(0.0) >= 2.0, "{b}: {v:?}");
        let v = metric(
            &proxy,
            &format!("letta_proxy_backend_in_flight{{backend=\"{b}\"}}"),
        )
        .await;
        assert_eq!(v, Some(0.0));
    }
    let five = text.lines().any(|l| {
        l.starts_with("letta_proxy_backend_requests_total")
            && l.contains("5xx")
            && l.ends_with(" 1")
    });
    assert!(five, "{text}");
    #[cfg(target_os = "linux")]
    assert!(text.contains("process_resident_memory_bytes"));
}
