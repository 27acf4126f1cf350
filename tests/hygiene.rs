//! Malformed and ambiguous requests, sent as raw bytes over a real socket
//! (an HTTP client library would refuse or normalise them): each is refused
//! with the right status before it can reach a backend, and none can make the
//! proxy and the backend disagree about where one request ends and the next
//! begins.

mod support;

use support::{config_for, read_until_quiet, standins, TestProxy, AGENT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Sends `raw` on a fresh connection and returns everything read until the
/// proxy closes it or goes quiet for a moment.
async fn exchange(proxy: &TestProxy, raw: &[u8]) -> String {
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    read_until_quiet(&mut conn).await
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

async fn proxy() -> (Vec<letta_proxy::standin::StandIn>, TestProxy) {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.max_header_size = 8 * 1024;
    let p = TestProxy::start(cfg).await;
    (s, p)
}

#[tokio::test]
async fn ambiguous_hosts_are_refused() {
    let (s, p) = proxy().await;
    let two_hosts = b"GET /v1/agents/ HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n";
    let r = exchange(&p, two_hosts).await;
    assert_eq!(statuses(&r), [400], "{r}");
    assert!(r.contains("\"kind\":\"bad_request\""), "{r}");
    let absolute = b"GET http://evil.example/v1/agents/ HTTP/1.1\r\nHost: proxy.example\r\n\r\n";
    assert_eq!(statuses(&exchange(&p, absolute).await), [400]);
    // The same host in both is fine.
    let same = b"GET http://proxy.example/v1/agents/ HTTP/1.1\r\nHost: proxy.example\r\nConnection: close\r\n\r\n";
    assert_eq!(statuses(&exchange(&p, same).await), [200]);
    assert_eq!(s[0].stats.requests(), 1, "only the good one reached Letta");
}

#[tokio::test]
async fn paths_letta_would_read_differently_are_refused_before_routing() {
    let (s, p) = proxy().await;
    for path in [
        format!("/v1/agents/{AGENT}/../agent-2/messages"),
        format!("/v1/agents/./{AGENT}"),
        "/v1/agents/%2e%2e/blocks/".to_string(),
        "/v1/blocks/block-1%2Fagents".to_string(),
        format!("/v1/agents/%61{}/messages", &AGENT[1..]),
        "/-/../metrics".to_string(),
    ] {
        let raw = format!("POST {path} HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\n\r\n");
        let r = exchange(&p, raw.as_bytes()).await;
        assert_eq!(statuses(&r), [400], "{path}: {r}");
    }
    assert_eq!(s[0].stats.requests(), 0);
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let (s, p) = proxy().await;
    // Over server.max_header_size (8 KiB here) in one header, and in many.
    let one = format!(
        "GET /v1/agents/ HTTP/1.1\r\nHost: p\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let r = exchange(&p, one.as_bytes()).await;
    assert_eq!(statuses(&r), [431], "{r}");
    let mut many = String::from("GET /v1/agents/ HTTP/1.1\r\nHost: p\r\n");
    for i in 0..20 {
        many.push_str(&format!("X-H{i}: {}\r\n", "b".repeat(500)));
    }
    many.push_str("\r\n");
    assert_eq!(statuses(&exchange(&p, many.as_bytes()).await), [431]);
    // Far over hyper's own buffer (200 KB): refused too, never forwarded.
    let huge = format!(
        "GET /v1/agents/ HTTP/1.1\r\nHost: p\r\nX-Huge: {}\r\n\r\n",
        "c".repeat(200_000)
    );
    let r = exchange(&p, huge.as_bytes()).await;
    assert_eq!(statuses(&r), [431], "{}", &r[..r.len().min(200)]);
    assert_eq!(s[0].stats.requests(), 0);
}

#[tokio::test]
async fn a_broken_chunked_body_is_the_clients_fault() {
    let (s, p) = proxy().await;
    let path = format!("/v1/agents/{AGENT}/messages");
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nfffffffffffffffffffff\r\n"
    );
    let r = exchange(&p, raw.as_bytes()).await;
    assert_eq!(statuses(&r), [400], "{r}");
    // Not held against the backend: it takes the next requests at once.
    for _ in 0..6 {
        let raw =
            format!("POST {path} HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n");
        assert_eq!(statuses(&exchange(&p, raw.as_bytes()).await), [400]);
    }
    let ok = exchange(
        &p,
        b"GET /v1/agents/ HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&ok), [200], "{ok}");
    let backend = p.gateway.upstreams().load().backends[0].clone();
    assert!(
        backend.is_usable(p.gateway.upstreams().now_ns()),
        "never ejected"
    );
    drop(s);
}

#[tokio::test]
async fn framing_tricks_cannot_smuggle_a_second_request() {
    let (s, p) = proxy().await;
    // Content-Length with Transfer-Encoding: read as chunked, then the
    // connection closes (RFC 9112 §6.1): what follows is never a request.
    for cl_te in [
        &b"POST /v1/agents/ HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: p\r\n\r\n"[..],
        &b"POST /v1/agents/ HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: p\r\n\r\n"[..],
    ] {
        let r = exchange(&p, cl_te).await;
        assert_eq!(statuses(&r), [200], "one answer, then the connection closes: {r}");
    }
    // Two different Content-Lengths: refused by the parser.
    let two_cl = b"POST /v1/agents/ HTTP/1.1\r\nHost: p\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\nxGET /v1/smuggled HTTP/1.1\r\n\r\n";
    assert_eq!(statuses(&exchange(&p, two_cl).await), [400]);
    // A folded header line (obs-fold): refused by the parser.
    let folded = b"GET /v1/agents/ HTTP/1.1\r\nHost: p\r\nX-A: one\r\n two\r\n\r\n";
    assert_eq!(statuses(&exchange(&p, folded).await), [400]);
    // Transfer-Encoding that is not chunked last: refused.
    let te_gzip = b"POST /v1/agents/ HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n";
    assert_eq!(statuses(&exchange(&p, te_gzip).await), [400]);
    let log = s[0].stats.log();
    assert!(
        log.iter().all(|(_, path, _)| !path.contains("smuggled")),
        "nothing smuggled reached the backend: {log:?}"
    );
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (s, p) = proxy().await;
    let two = b"GET /v1/agents/?n=1 HTTP/1.1\r\nHost: p\r\n\r\nGET /v1/agents/?n=2 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n";
    let r = exchange(&p, two).await;
    assert_eq!(statuses(&r), [200, 200], "{r}");
    assert_eq!(s[0].stats.requests(), 2);
}
