//! A panic is confined to what it happens in: release builds unwind (with
//! `panic = "abort"` one bad request would end every stream of the process).

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use letta_proxy::body::{Full, InboundBody};
use letta_proxy::Gateway;
use support::{client, config_for, standins};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn release_builds_unwind() {
    let manifest: toml::Table =
        toml::from_str(include_str!("../Cargo.toml")).expect("Cargo.toml parses");
    let profiles = manifest.get("profile").and_then(|p| p.as_table());
    for name in ["release", "bench"] {
        let panic = profiles
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("panic"))
            .and_then(|v| v.as_str())
            .unwrap_or("unwind");
        assert_eq!(panic, "unwind", "[profile.{name}] panic");
    }
}

/// A backend stand-in *inside* the stack that panics on `/v1/panic`.
fn panicking() -> impl tower::Service<
    Request<InboundBody>,
    Response = Response<Full>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Full>, Infallible>>,
> + Clone
       + Send
       + Sync
       + 'static {
    tower::service_fn(|req: Request<InboundBody>| {
        assert!(req.uri().path() != "/v1/panic", "a bug in a request's path");
        std::future::ready(Ok(Response::new(Full::new("fine"))))
    })
}

#[tokio::test]
async fn a_panic_answers_500_for_its_request_and_nothing_else() {
    let s = standins(1).await;
    let gateway = Gateway::from_config(config_for(&[&s[0]], "round_robin"))
        .await
        .unwrap();
    let app = gateway.router_over(panicking());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // One keep-alive connection: the panicking request, then another on it.
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /v1/panic HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/agents/ HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
        .await
        .expect("the connection answers both and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 500"), "{text}");
    assert!(text.contains("\"kind\":\"internal\""), "{text}");
    let second = text
        .match_indices("HTTP/1.1 ")
        .nth(1)
        .map(|(i, _)| &text[i..]);
    assert!(
        second.is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "the same connection serves the next request: {text}"
    );
    // Other connections never noticed.
    let r = client()
        .get(format!("http://{addr}/v1/agents/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fine");
}
