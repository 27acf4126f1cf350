//! Connections to one backend: keep-alive HTTP/1.1 connections, or one shared
//! HTTP/2 connection when an `https://` backend with `http2 = true` picks `h2`
//! by ALPN.
//!
//! Why not hyper-util's pooled client: it spawns a task per request to wait for
//! the connection to become idle, hashes a pool key per request, and connects
//! inside `request()`, after the request was handed over. Here each backend owns
//! its pool (no key), an HTTP/1.1 connection goes back to the pool when the
//! response body ends cleanly (the body wrapper holds it until then), and
//! [`Pool::checkout`] connects *before* the request is built: a refused or
//! timed-out connect — TCP or TLS — leaves the request untouched for the next
//! backend, whatever its method.
//!
//! Idle HTTP/1.1 connections wait in `super::idle` (warmest first; a plain
//! one idle for a while keeps only its socket). An HTTP/2 connection
//! multiplexes: every request shares it until it closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::idle::{Idle, Taken, H1};
use crate::body::slot::RequestBody;
use crate::config::BackendUrl;
use crate::tls::{BackendTls, TlsConnectError};

/// Pool settings (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
}

/// Why no connection could be had. Nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake was refused or broke: a connect failure like any other.
    #[error(transparent)]
    Tls(#[from] TlsConnectError),
    /// The backend's TLS settings could not be loaded (a file went missing
    /// after the config was checked).
    #[error("TLS settings unusable: {0}")]
    TlsSettings(String),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
}

impl ConnectError {
    /// What went wrong, as a fixed phrase for the client (the details, which
    /// name addresses, go to the log).
    pub fn summary(&self) -> &'static str {
        match self {
            ConnectError::Timeout(_) => "connect timed out",
            ConnectError::Io(_) => "connection failed",
            ConnectError::Tls(e) if e.is_certificate_error() => {
                "its TLS certificate was not accepted"
            }
            ConnectError::Tls(_) => "TLS handshake failed",
            ConnectError::TlsSettings(_) => "the proxy's TLS settings for it are unusable",
            ConnectError::Handshake(_) => "HTTP handshake failed",
        }
    }
}

/// The connections of one backend.
pub struct Pool {
    idle: Arc<Idle>,
    /// The shared HTTP/2 connection, once one was negotiated.
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    /// How to speak TLS to the backend (`https://`); swapped by a reload, so
    /// rotated client certificates and CAs apply to new connections.
    tls: ArcSwapOption<Result<BackendTls, String>>,
    config: PoolConfig,
    /// Connections opened so far (for metrics: reuse means this grows slowly).
    pub opened: AtomicU64,
}

enum Sender {
    H1(H1),
    H2(http2::SendRequest<RequestBody>),
}

/// A connection checked out for one exchange. An HTTP/1.1 connection goes back
/// to the pool only through [`Pooled::release`] (after a clean end of the
/// response body); dropped otherwise.
pub struct Pooled {
    sender: Option<Sender>,
    pool: Arc<Pool>,
    /// Whether it came from the pool (it may have been closed by the backend meanwhile).
    pub reused: bool,
}

impl Pool {
    /// A pool for a plain `http://` backend, or an `https://` one with `tls`.
    pub fn new(config: PoolConfig, tls: Option<Result<BackendTls, String>>) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Idle::new(config.idle_timeout, config.max_idle),
            h2: Mutex::new(None),
            tls: ArcSwapOption::from(tls.map(Arc::new)),
            config,
            opened: AtomicU64::new(0),
        })
    }

    /// New TLS settings for connections opened from now on (open ones keep theirs).
    pub fn set_tls(&self, tls: Option<Result<BackendTls, String>>) {
        self.tls.store(tls.map(Arc::new));
    }

    /// An idle (or the shared HTTP/2) connection if one is alive, else a new one to `url`.
    pub async fn checkout(self: &Arc<Self>, url: &BackendUrl) -> Result<Pooled, ConnectError> {
        if let Some(h2) = self.live_h2() {
            return Ok(self.pooled(Sender::H2(h2), true));
        }
        match self.idle.take() {
            Some(Taken::Live(c)) => return Ok(self.pooled(Sender::H1(c), true)),
            // Building hyper's connection sends nothing: a socket the backend
            // closes meanwhile is found, like a live one, when the request
            // could not be written, and the request goes on a new connection.
            Some(Taken::Parked(socket)) => {
                if let Ok(c) = self.idle.handshake(socket).await {
                    return Ok(self.pooled(Sender::H1(c), true));
                }
            }
            None => {}
        }
        self.connect(url).await
    }

    /// A new connection, never an idle one (a new HTTP/2 connection replaces the shared one).
    pub async fn connect(self: &Arc<Self>, url: &BackendUrl) -> Result<Pooled, ConnectError> {
        let timeout = self.config.connect_timeout;
        // TCP and TLS under one deadline: `connect_timeout` is the whole way to a usable connection.
        // Boxed: a TLS handshake's state is ≈ 6.5 KB, and every future that may
        // connect (an exchange, each layer's future around it) would carry
        // that size inline and copy it on every request, connecting or not
        // (most requests reuse a connection). Boxed, it costs an allocation
        // per new connection only.
        match tokio::time::timeout(timeout, Box::pin(self.open(url))).await {
            Ok(result) => result.map(|sender| {
                self.opened.fetch_add(1, Ordering::Relaxed);
                self.pooled(sender, false)
            }),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    async fn open(self: &Arc<Self>, url: &BackendUrl) -> Result<Sender, ConnectError> {
        let stream = TcpStream::connect((url.host(), url.port)).await?;
        // Small writes (request heads, SSE relays) must leave at once.
        stream.set_nodelay(true)?;
        let tls = self.tls.load_full();
        let Some(tls) = tls.as_deref() else {
            let c = self.idle.handshake(stream).await;
            return Ok(Sender::H1(c.map_err(ConnectError::Handshake)?));
        };
        let tls = tls
            .as_ref()
            .map_err(|e| ConnectError::TlsSettings(e.clone()))?;
        let connected = tls.connect(stream).await?;
        if !connected.h2 {
            return handshake_h1(connected.stream).await;
        }
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(connected.stream))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *self.h2.lock().expect("pool lock poisoned") = Some(sender.clone());
        Ok(Sender::H2(sender))
    }

    fn pooled(self: &Arc<Self>, sender: Sender, reused: bool) -> Pooled {
        Pooled {
            sender: Some(sender),
            pool: self.clone(),
            reused,
        }
    }

    fn live_h2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let h2 = self.h2.lock().expect("pool lock poisoned");
        h2.as_ref().filter(|h2| !h2.is_closed()).cloned()
    }

    /// Idle HTTP/1.1 connections: live (with hyper's connection) and parked.
    pub fn idle_counts(&self) -> (usize, usize) {
        self.idle.counts()
    }
}

/// Puts `req` in the form its connection speaks: origin-form target and a
/// `Host` header on HTTP/1.1; an absolute target carrying the host as
/// `:authority` and no `Host` header on HTTP/2 (RFC 9113 §8.3.1).
pub fn fit_to_connection(req: &mut Request<RequestBody>, url: &BackendUrl, h2: bool) {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        let host = req.headers_mut().remove(header::HOST).or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or(url.authority.as_str())
            .to_string();
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = Uri::builder()
            .scheme(url.scheme.clone())
            .authority(authority)
            .path_and_query(pq)
            .build()
            .expect("a valid authority and path");
    } else {
        if let (Some(authority), false) = (
            req.uri().authority().cloned(),
            req.headers().contains_key(header::HOST),
        ) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = Uri::from(pq);
    }
}

/// A TLS connection's HTTP/1.1 (never parked: see `super::idle`).
async fn handshake_h1<IO>(io: IO) -> Result<Sender, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Sender::H1(H1::live(sender)))
}

impl Pooled {
    /// Waits until the connection can take a request; an error means it closed.
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match self.sender.as_mut().expect("sender present until released") {
            Sender::H1(c) => c.sender.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// Sends `req`; a request the connection could not take comes back in the error.
    pub async fn try_send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match self.sender.as_mut().expect("sender present until released") {
            Sender::H1(c) => c.sender.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        }
    }

    /// Whether requests on it go as HTTP/2 (the request's version must say so).
    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Some(Sender::H2(_)))
    }

    /// Returns the connection to the pool: its last response ended cleanly.
    /// (An HTTP/2 connection is shared and stays where it is.)
    pub fn release(mut self) {
        if let Some(Sender::H1(c)) = self.sender.take() {
            self.pool.idle.put(c);
        }
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("reused", &self.reused)
            .field("h2", &self.is_h2())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future contains the way to a new connection (a reused
    /// one may turn out closed); a TLS handshake inline made each request's
    /// future ≈ 10 KB, copied on every request. Boxed, the connect future is small.
    #[test]
    fn the_way_to_a_new_connection_is_not_carried_inline() {
        let pool = Pool::new(
            PoolConfig {
                connect_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(4),
                max_idle: 1,
            },
            None,
        );
        let url = BackendUrl::parse("https://127.0.0.1:1").unwrap();
        let sizes = [
            ("connect", std::mem::size_of_val(&pool.connect(&url))),
            ("checkout", std::mem::size_of_val(&pool.checkout(&url))),
        ];
        for (future, size) in sizes {
            assert!(size <= 512, "{future} future is {size} bytes");
        }
    }
}
