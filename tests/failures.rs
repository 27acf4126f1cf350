//! Dead, hanging and saturated backends, oversized bodies: a clear JSON error
//! with the right status, and a refused connection moved to the next backend.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn error_kind(r: reqwest::Response) -> String {
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: Value = r.json().await.unwrap();
    v["error"]["kind"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_refused_connection_moves_to_the_next_backend_even_for_posts() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.backends.insert(0, dead_backend("dead"));
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    for _ in 0..6 {
        let r = c
            .post(proxy.url(&format!("/v1/agents/{AGENT}/messages")))
            .body(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(backend_of(&r), "be1");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["request_bytes"], 45,
            "body arrived whole after the failed attempt"
        );
    }
    assert_eq!(
        s[0].stats.requests(),
        6,
        "each POST reached the live backend exactly once"
    );
    let errs = metric(
        &proxy,
        "letta_proxy_backend_errors_total{backend=\"dead\",kind=\"connect\"}",
    )
    .await;
    assert!(errs.unwrap() >= 3.0, "{errs:?}");
    assert_eq!(proxy.total_in_flight(), 0);
}

#[tokio::test]
async fn only_dead_backends_give_502() {
    let mut cfg = letta_proxy::Config {
        backends: vec![dead_backend("dead1"), dead_backend("dead2")],
        ..Default::default()
    };
    cfg.health.enabled = false;
    let proxy = TestProxy::start(cfg).await;
    let r = client().get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["kind"], "upstream_unreachable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.starts_with("backend dead"), "{msg}");
    assert!(!msg.contains("127.0.0.1"), "no internal address in {msg}");
}

#[tokio::test]
async fn no_usable_backend_gives_503_with_retry_after() {
    let s = standins(2).await;
    let proxy = TestProxy::start(config_for(&[&s[0], &s[1]], "round_robin")).await;
    let c = client();
    for b in proxy.gateway.upstreams().load().backends.iter() {
        b.set_draining(true);
    }
    let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_kind(r).await, "no_backend");
    assert_eq!(
        c.get(proxy.url("/-/ready")).send().await.unwrap().status(),
        503
    );
    assert_eq!(s[0].stats.requests() + s[1].stats.requests(), 0);
    proxy.gateway.upstreams().load().backends[1].set_draining(false);
    let r = c.get(proxy.url("/v1/agents/")).send().await.unwrap();
    assert_eq!(backend_of(&r), "be2");
    assert_eq!(
        c.get(proxy.url("/-/ready")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn a_backend_that_does_not_answer_in_time_gives_504() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.response_header_timeout = Duration::from_millis(200);
    let proxy = TestProxy::start(cfg).await;
    let r = client()
        .get(proxy.url("/v1/agents/?hang=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(error_kind(r).await, "upstream_timeout");
    eventually(
        Duration::from_secs(5),
        "backend saw the request go away",
        || async { s[0].stats.active() == 0 },
    )
    .await;
    assert_eq!(proxy.total_in_flight(), 0);
}

#[tokio::test]
async fn a_backend_silent_mid_body_is_cut_after_body_idle_timeout() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.body_idle_timeout = Duration::from_millis(300);
    let proxy = TestProxy::start(cfg).await;
    // Events 5 s apart: the first arrives, then the backend goes quiet.
    let r = client()
        .post(proxy.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=3&interval_ms=5000"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let err = r.text().await.unwrap_err();
    assert!(err.is_body() || err.is_decode(), "{err}");
    eventually(Duration::from_secs(5), "slot released", || async {
        proxy.total_in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.max_body_size = 1024;
    let proxy = TestProxy::start(cfg).await;
    let c = client();
    // Declared length: refused before anything is forwarded.
    let r = c
        .post(proxy.url("/__echo"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_kind(r).await, "body_too_large");
    assert_eq!(s[0].stats.requests(), 0);
    // Chunked: cut when the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'y'; 512])).collect();
    let r = c
        .post(proxy.url(&format!("/v1/agents/{AGENT}/messages")))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Within the limit: fine.
    let r = c
        .post(proxy.url("/__echo"))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn proxy_namespace_is_never_forwarded() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let c = client();
    assert_eq!(
        c.get(proxy.url("/-/healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(proxy.url("/-/ready")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        c.get(proxy.url("/-/nope")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        c.post(proxy.url("/-/healthy"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(s[0].stats.requests(), 0);
}

/// A backend that answers the first request of each connection (keep-alive)
/// and closes the connection when a second one arrives, unanswered: what a
/// probe meets when uvicorn drops an idle connection just as it is reused.
async fn closes_reused_connections() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    raw_backend(|mut sock| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        sock.write_all(ok).await.unwrap();
        // The next request on this connection: read it, answer nothing.
        let _ = sock.read(&mut buf).await;
    })
    .await
}

#[tokio::test]
async fn a_probe_on_a_connection_the_backend_just_closed_tries_a_fresh_one() {
    let (addr, accepted) = closes_reused_connections().await;
    let backend = backend_at("flaky", addr);
    for round in 1..=3 {
        assert!(
            letta_proxy::health::probe(&backend, "/v1/health/", Duration::from_secs(5)).await,
            "probe {round} failed"
        );
    }
    // Rounds 2 and 3 met the closed connection and each opened a fresh one.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}
