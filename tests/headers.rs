//! Header hygiene and byte-exact targets: what a backend receives and what a
//! client gets back.

mod support;

use serde_json::Value;
use support::*;

async fn seen_by_backend(
    proxy: &TestProxy,
    req: reqwest::RequestBuilder,
) -> (reqwest::Response, Value) {
    let _ = proxy;
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    let v: Value = r.json().await.unwrap();
    // Rebuild a response-like pair: headers of the answer and what the backend saw.
    let mut fake = http::Response::new(String::new());
    *fake.headers_mut() = headers;
    (reqwest::Response::from(fake), v)
}

#[tokio::test]
async fn hop_by_hop_removed_end_to_end_kept_forwarded_added() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let req = client()
        .get(proxy.url("/__headers"))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("authorization", "Bearer sk-let-me-in")
        .header("user-agent", "Letta/Python 1.12.1")
        .header("x-stainless-package-version", "1.12.1")
        .header("x-project", "default-project")
        .header("x-forwarded-for", "203.0.113.7");
    let (resp, seen) = seen_by_backend(&proxy, req).await;
    let h = &seen["headers"];
    for gone in ["x-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(h.get(gone).is_none(), "{gone} leaked: {h}");
    }
    assert_eq!(h["authorization"], "Bearer sk-let-me-in");
    assert_eq!(h["user-agent"], "Letta/Python 1.12.1");
    assert_eq!(h["x-stainless-package-version"], "1.12.1");
    assert_eq!(h["x-project"], "default-project");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["host"],
        proxy.addr.to_string(),
        "client's Host passed through"
    );
    assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
    // Request id generated, sent to the backend, returned to the client.
    let rid = h["x-request-id"].as_str().unwrap();
    assert_eq!(rid.len(), 32);
    assert_eq!(resp.headers()["x-request-id"], rid);
    assert_eq!(resp.headers()["x-letta-proxy-backend"], "be1");
}

#[tokio::test]
async fn a_client_request_id_is_kept() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let r = client()
        .get(proxy.url(&format!("/v1/agents/{AGENT}")))
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-42");
    assert_eq!(s[0].stats.log()[0].2, "req-42");
}

#[tokio::test]
async fn path_and_query_are_forwarded_byte_for_byte() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let c = client();
    let targets = [
        "/v1/agents/?limit=5&after=agent-1",
        "/v1/tools/my%20tool/?q=a%2Fb&x=%E2%9C%93",
        "/v1/blocks//double//slash",
        "/v1/agents/agent-1/messages?order=desc&order=asc",
        "/v1/sources/",
    ];
    for t in targets {
        let r = c.get(proxy.url(t)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{t}");
    }
    let seen: Vec<String> = s[0]
        .stats
        .log()
        .into_iter()
        .map(|(_, uri, _)| uri)
        .collect();
    assert_eq!(seen, targets);
}

#[tokio::test]
async fn letta_redirects_point_at_the_proxy() {
    let s = standins(1).await;
    // Host passed through: Letta's own Location already names the proxy.
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let r = client()
        .get(proxy.url("/v1/agents?limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"],
        format!("http://{}/v1/agents/?limit=2", proxy.addr)
    );
    // Host not passed through: the backend names itself and the proxy rewrites it.
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.preserve_host = false;
    let proxy = TestProxy::start(cfg).await;
    let r = client().get(proxy.url("/v1/agents")).send().await.unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"],
        format!("http://{}/v1/agents/", proxy.addr)
    );
}
