//! Graceful shutdown: new connections are refused, a stream in flight finishes.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::*;

#[tokio::test]
async fn shutdown_lets_an_open_stream_finish() {
    let s = standins(1).await;
    let mut proxy = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let r = client()
        .post(proxy.url(&format!(
            "/v1/agents/{AGENT}/messages/stream?events=5&interval_ms=100"
        )))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let server = proxy.shutdown();
    // The listener closes: a new connection is refused.
    eventually(Duration::from_secs(5), "listener closed", || async {
        tokio::net::TcpStream::connect(proxy.addr).await.is_err()
    })
    .await;
    // The stream already in flight is delivered whole.
    let mut rest = Vec::new();
    while let Some(c) = body.next().await {
        rest.extend_from_slice(&c.unwrap());
    }
    assert!(String::from_utf8(rest)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
    let res = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops after the stream");
    res.unwrap().unwrap();
}
