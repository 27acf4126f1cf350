//! Upstream keep-alive connections between requests: an idle plain-TCP
//! connection to a backend is parked (hyper's connection ended, the socket
//! kept) and reused for a later request on the same socket; a parked socket
//! the backend closed is never used, the request goes on a new connection.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use letta_proxy::backend::Backend;
use support::{backend_at, eventually, raw_backend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// A keep-alive backend that answers every request on a connection with
/// `ok`, counts the connections it accepted, and closes every open one when
/// `close` is notified.
async fn backend(close: Arc<Notify>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    raw_backend(move |mut sock| {
        let close = close.clone();
        async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    read = sock.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    },
                    _ = close.notified() => return,
                }
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    head.drain(..end + 4);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    sock.write_all(ok).await.unwrap();
                }
            }
        }
    })
    .await
}

/// One GET through the backend's pool (the health probe's way: checkout,
/// send, read the body to its end, the connection back to the pool).
async fn get(backend: &Backend) {
    assert!(
        letta_proxy::health::probe(backend, "/v1/health/", Duration::from_secs(5)).await,
        "the request failed"
    );
}

#[tokio::test]
async fn an_idle_upstream_connection_is_parked_and_its_socket_reused() {
    let (addr, accepted) = backend(Arc::default()).await;
    let backend = backend_at("plain", addr);
    get(&backend).await;
    assert_eq!(backend.pool.idle_counts(), (1, 0), "live right after use");
    eventually(
        Duration::from_secs(5),
        "the idle connection parked",
        || async { backend.pool.idle_counts() == (0, 1) },
    )
    .await;
    // Parked for a while (a sweep runs meanwhile that sees only parked
    // sockets): the scenario, not a wait for a result.
    tokio::time::sleep(Duration::from_millis(300)).await;
    get(&backend).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the parked socket carried the second request"
    );
    assert_eq!(backend.pool.idle_counts(), (1, 0), "live again after use");
    // And parked again, within a few lingers (not only once the sweep looks
    // at the parked socket's expiry, seconds later).
    eventually(Duration::from_secs(2), "parked again", || async {
        backend.pool.idle_counts() == (0, 1)
    })
    .await;
}

#[tokio::test]
async fn a_parked_socket_the_backend_closed_is_not_used() {
    let close = Arc::new(Notify::new());
    let (addr, accepted) = backend(close.clone()).await;
    let backend = backend_at("plain", addr);
    get(&backend).await;
    eventually(
        Duration::from_secs(5),
        "the idle connection parked",
        || async { backend.pool.idle_counts() == (0, 1) },
    )
    .await;
    close.notify_waiters();
    get(&backend).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection");
    assert_eq!(
        backend.pool.idle_counts(),
        (1, 0),
        "the closed socket is gone"
    );
}
