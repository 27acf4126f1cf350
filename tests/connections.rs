//! Client connections between requests: an HTTP/1 keep-alive connection is
//! parked without hyper's buffers while idle and served again when the
//! client sends, without losing or misreading a byte: a request sent in
//! pieces, a pipelined one, the unread rest of a refused body.

mod support;

use std::time::Duration;

use support::{config_for, eventually, read_until_quiet, standins, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response (Content-Length or chunked) from `conn`; returns its
/// status and body. Panics after 10 s.
async fn response(conn: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let body = &text[end + 4..];
                if let Some(len) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                {
                    let len: usize = len.trim().parse().unwrap();
                    if body.len() >= len {
                        return (head[9..12].parse().unwrap(), body[..len].to_string());
                    }
                } else if body.ends_with("0\r\n\r\n") {
                    return (head[9..12].parse().unwrap(), dechunk(body));
                }
            }
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response within 10 s")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

fn parked(p: &TestProxy) -> i64 {
    p.gateway.metrics().client_connections_idle.get()
}

fn open(p: &TestProxy) -> i64 {
    p.gateway.metrics().client_connections.get()
}

const GET: &[u8] = b"GET /v1/agents/ HTTP/1.1\r\nHost: p\r\n\r\n";

#[tokio::test]
async fn a_keep_alive_connection_parks_between_requests_and_wakes_for_the_next() {
    let s = standins(1).await;
    let p = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let mut conn = TcpStream::connect(p.addr).await.unwrap();
    for round in 1..=3 {
        conn.write_all(GET).await.unwrap();
        assert_eq!(response(&mut conn).await.0, 200, "round {round}");
        eventually(
            Duration::from_secs(5),
            "the idle connection parked",
            || async { parked(&p) == 1 },
        )
        .await;
        assert_eq!(open(&p), 1);
    }
    assert_eq!(s[0].stats.requests(), 3);
    drop(conn);
    eventually(
        Duration::from_secs(5),
        "the closed connection counted out",
        || async { open(&p) == 0 && parked(&p) == 0 },
    )
    .await;
}

#[tokio::test]
async fn a_request_sent_in_pieces_across_parking_is_served_whole() {
    let s = standins(1).await;
    let p = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let mut conn = TcpStream::connect(p.addr).await.unwrap();
    // A first request and, pipelined behind it, half of the second one's head.
    conn.write_all(b"GET /v1/agents/ HTTP/1.1\r\nHost: p\r\n\r\nPOST /__echo HTTP/1.1\r\nHost: p\r\nContent-Le")
        .await
        .unwrap();
    assert_eq!(response(&mut conn).await.0, 200);
    // Longer than the proxy lingers before parking (100 ms): the connection
    // is parked with the half head in hand, and must serve it whole.
    tokio::time::sleep(Duration::from_millis(400)).await;
    conn.write_all(b"ngth: 5\r\n\r\nhel").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.write_all(b"lo").await.unwrap();
    assert_eq!(response(&mut conn).await, (200, "hello".to_string()));
    eventually(Duration::from_secs(5), "parked after both", || async {
        parked(&p) == 1
    })
    .await;
    conn.write_all(GET).await.unwrap();
    assert_eq!(response(&mut conn).await.0, 200);
    assert_eq!(s[0].stats.requests(), 3);
}

#[tokio::test]
async fn the_unread_rest_of_a_refused_body_is_never_read_as_a_request() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.max_body_size = 16;
    let p = TestProxy::start(cfg).await;
    let mut conn = TcpStream::connect(p.addr).await.unwrap();
    let smuggled = b"GET /v1/smuggled HTTP/1.1\r\nHost: p\r\n\r\n";
    let head = format!(
        "POST /v1/agents/ HTTP/1.1\r\nHost: p\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(response(&mut conn).await.0, 413);
    // The body arrives after the answer, and after the proxy would have
    // parked an idle connection (100 ms): it must not become a request.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _ = conn.write_all(smuggled).await;
    let after = read_until_quiet(&mut conn).await;
    assert!(!after.contains("HTTP/1.1"), "a second response: {after}");
    assert!(
        s[0].stats
            .log()
            .iter()
            .all(|(_, path, _)| !path.contains("smuggled")),
        "nothing reached the backend"
    );
}

#[tokio::test]
async fn a_parked_connection_is_closed_after_the_idle_timeout() {
    let s = standins(1).await;
    let mut cfg = config_for(&[&s[0]], "round_robin");
    cfg.server.client_header_timeout = Duration::from_millis(300);
    let p = TestProxy::start(cfg).await;
    let mut conn = TcpStream::connect(p.addr).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert_eq!(response(&mut conn).await.0, 200);
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "closed within 5 s: {closed:?}"
    );
    eventually(Duration::from_secs(5), "counted out", || async {
        open(&p) == 0
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let s = standins(1).await;
    let mut p = TestProxy::start(config_for(&[&s[0]], "round_robin")).await;
    let mut conn = TcpStream::connect(p.addr).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert_eq!(response(&mut conn).await.0, 200);
    eventually(Duration::from_secs(5), "parked", || async {
        parked(&p) == 1
    })
    .await;
    // The grace period is 5 s; a parked connection has nothing to finish.
    let server = p.shutdown();
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("stopped well within the grace period")
        .unwrap()
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(conn.read(&mut byte).await, Ok(0) | Err(_)));
}
