//! `examples/embed.rs`, driven as a user would: the application's router
//! (the gateway nested under `/letta` behind a bearer check and CORS) served
//! on a loopback port in front of stand-in Letta servers. The Python SDK
//! drives the same example against real Letta in `tests/e2e/test_embed.py`.

#[path = "../examples/embed.rs"]
#[allow(dead_code)] // its `main` is the example's, not this test's
mod embed;
mod support;

use std::net::SocketAddr;

use http::StatusCode;
use letta_proxy::Gateway;
use support::{client, config_for, standins, AGENT};

const TOKEN: &str = "app-token-1";

async fn serve_app(gateway: &Gateway) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = embed::app(gateway, TOKEN).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await });
    addr
}

#[tokio::test]
async fn the_gateway_serves_under_letta_behind_the_applications_token() {
    let backends = standins(2).await;
    let gateway = Gateway::from_config(config_for(&[&backends[0], &backends[1]], "round_robin"))
        .await
        .unwrap();
    let addr = serve_app(&gateway).await;
    let http = client();
    let url = |p: &str| format!("http://{addr}{p}");
    let authed = |b: reqwest::RequestBuilder| b.bearer_auth(TOKEN);

    // The application's own route, untouched.
    let r = http.get(url("/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // No token, a wrong one: refused by the application, nothing reaches Letta.
    let r = http
        .get(url(&format!("/letta/v1/agents/{AGENT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(url(&format!("/letta/v1/agents/{AGENT}")))
        .bearer_auth("app-token-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        backends[0].stats.requests() + backends[1].stats.requests(),
        0
    );

    // With it: balanced over both, the token not passed on, the prefix gone.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r = authed(http.get(url("/letta/__headers")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        served.insert(support::backend_of(&r));
        let seen: serde_json::Value = r.json().await.unwrap();
        assert_eq!(seen["uri"], "/__headers");
        assert!(seen["headers"].get("authorization").is_none(), "{seen}");
        assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    }
    assert_eq!(served.len(), 2, "both backends served: {served:?}");

    // Letta's trailing-slash redirect keeps the mount point.
    let r = authed(http.get(url("/letta/v1/agents?limit=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        r.headers()["location"],
        format!("http://{addr}/letta/v1/agents/?limit=1")
    );

    // The proxy's own paths live under the mount too.
    let r = authed(http.get(url("/letta/-/ready")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = authed(http.get(url("/letta/metrics")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("letta_proxy_backend_requests_total{backend=\"be1\""),
        "{metrics}"
    );

    // A stream arrives whole through the application.
    let r = authed(http.post(url(&format!(
        "/letta/v1/agents/{AGENT}/messages/stream?events=3&interval_ms=5"
    ))))
    .send()
    .await
    .unwrap();
    let text = r.text().await.unwrap();
    assert_eq!(text.matches("data: ").count(), 4, "{text}");
}

#[tokio::test]
async fn a_browser_preflight_is_answered_by_the_applications_cors_layer() {
    let backends = standins(1).await;
    let gateway = Gateway::from_config(config_for(&[&backends[0]], "round_robin"))
        .await
        .unwrap();
    let addr = serve_app(&gateway).await;
    let r = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{addr}/letta/v1/agents/"),
        )
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        backends[0].stats.requests(),
        0,
        "the preflight never reaches Letta"
    );
}
