//! Bodies stream in both directions: SSE events arrive while the backend is still
//! producing, large bodies pass byte-exact, and in-flight ends with the body.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use letta_proxy::standin::pattern;
use support::*;

#[tokio::test]
async fn first_sse_event_arrives_while_the_backend_is_still_streaming() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let r = client()
        .post(proxy.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=4&interval_ms=400"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: {\"seq\":0"), "{first:?}");
    // The backend has not finished the stream: a buffering proxy could not have
    // delivered anything yet.
    assert_eq!(s[0].stats.active(), 1, "backend still streaming");
    assert_eq!(proxy.in_flight("be1"), 1);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    let text = String::from_utf8(rest).unwrap();
    let seqs: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(seqs.len(), 4, "{text}");
    assert!(seqs[2].starts_with("data: {\"seq\":3"), "in order: {text}");
    assert_eq!(seqs[3], "data: [DONE]");
    eventually(
        Duration::from_secs(2),
        "in-flight released at end of body",
        || async { proxy.in_flight("be1") == 0 },
    )
    .await;
}

#[tokio::test]
async fn ten_megabytes_up_and_down_byte_exact() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let c = client();
    const N: usize = 10 * 1024 * 1024;
    let down = c
        .get(proxy.url(&format!("/__bytes?n={N}")))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 200);
    let got = down.bytes().await.unwrap();
    assert_eq!(got.len(), N);
    assert!(got[..] == pattern(0, N)[..], "download differs");

    // Upload as a stream of chunks (chunked transfer encoding), echoed back.
    let payload = pattern(7, 7 + N);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        payload.chunks(256 * 1024).map(|c| Ok(c.to_vec())).collect();
    let up = c
        .post(proxy.url("/__echo"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(up.status(), 200);
    let echoed = up.bytes().await.unwrap();
    assert_eq!(echoed.len(), N);
    assert!(echoed[..] == payload[..], "upload differs");
}

#[tokio::test]
async fn a_client_leaving_mid_stream_releases_its_slot_and_the_backend() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "least_connections")).await;
    let r = client()
        .post(proxy.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=100&interval_ms=50"
        )))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(proxy.in_flight("be1"), 1);
    drop(body);
    eventually(
        Duration::from_secs(5),
        "proxy and backend let go of the stream",
        || async { proxy.in_flight("be1") == 0 && s[0].stats.active() == 0 },
    )
    .await;
    let active = metric(&proxy, "http_server_active_requests").await.unwrap();
    assert_eq!(active, 0.0);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let s = standins(1).await;
    let proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    // reqwest is built with rustls and no provider of its own: ours.
    letta_proxy::tls::install_default_provider();
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .get(proxy.url(&format!("/v1/agents/{AGENT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(backend_of(&r), "be1");
    let r = c
        .post(proxy.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=3&interval_ms=10"
        )))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
