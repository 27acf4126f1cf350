//! Keep-alive HTTP/1.1 connections to one backend.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to wait for
//! the connection to become idle, hashes a pool key per request, and connects
//! inside `request()`, after the request was handed over. Here each backend owns
//! its pool (no key), a connection goes back to the pool when the response body
//! ends cleanly (the body wrapper holds it until then), and [`Pool::checkout`]
//! connects *before* the request is built: a refused or timed-out connect leaves
//! the request untouched for the next backend.
//!
//! The idle stack is LIFO (the warmest connection first); closed and expired
//! connections are dropped when met.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::slot::RequestBody;
use crate::config::BackendUrl;

/// Pool settings (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

/// The idle connections of one backend.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    config: PoolConfig,
    /// Connections opened so far (for metrics: reuse means this grows slowly).
    pub opened: AtomicU64,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// A connection checked out for one exchange. Back to the pool only through
/// [`Pooled::release`] (after a clean end of the response body); dropped otherwise.
pub struct Pooled {
    sender: Option<SendRequest<RequestBody>>,
    pool: Arc<Pool>,
    /// Whether it came from the pool (it may have been closed by the backend meanwhile).
    pub reused: bool,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            config,
            opened: AtomicU64::new(0),
        })
    }

    /// An idle connection if one is alive, else a new one to `url`.
    pub async fn checkout(self: &Arc<Self>, url: &BackendUrl) -> Result<Pooled, ConnectError> {
        if let Some(sender) = self.take_idle() {
            return Ok(Pooled {
                sender: Some(sender),
                pool: self.clone(),
                reused: true,
            });
        }
        self.connect(url).await
    }

    /// A new connection, never an idle one.
    pub async fn connect(self: &Arc<Self>, url: &BackendUrl) -> Result<Pooled, ConnectError> {
        let timeout = self.config.connect_timeout;
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect((url.host(), url.port))).await {
                Ok(s) => s?,
                Err(_) => return Err(ConnectError::Timeout(timeout)),
            };
        // Small writes (request heads, SSE relays) must leave at once.
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Pooled {
            sender: Some(sender),
            pool: self.clone(),
            reused: false,
        })
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.config.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn put_back(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock poisoned");
        // The oldest sit at the bottom: drop the expired ones while we are here.
        let expired = idle
            .iter()
            .take_while(|c| {
                now.duration_since(c.since) >= self.config.idle_timeout || c.sender.is_closed()
            })
            .count();
        idle.drain(..expired);
        if idle.len() < self.config.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }
}

impl Pooled {
    /// The connection's sender, ready for the next request.
    pub fn sender(&mut self) -> &mut SendRequest<RequestBody> {
        self.sender.as_mut().expect("sender present until released")
    }

    /// Returns the connection to the pool: its last response ended cleanly.
    pub fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put_back(sender);
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("reused", &self.reused)
            .finish()
    }
}
