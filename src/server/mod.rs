//! Listeners and lifecycle: accept connections (HTTP/1.1 and h2c on one
//! port; with `[server.tls]`, HTTPS with HTTP/2 or HTTP/1.1 by ALPN), hand each
//! request to the gateway's router, serve the admin API and the plain-HTTP
//! redirect listener, and shut down gracefully.
//!
//! A TLS handshake runs in the connection's own task, under
//! `server.client_header_timeout`: a slow or broken client holds one
//! connection slot, never the accept loop. Each connection is served by
//! `conn` (HTTP/1 or HTTP/2, idle HTTP/1 connections parked).
//!
//! Shutdown: stop accepting, tell every connection to finish its current
//! exchanges (HTTP/1 keep-alive off, HTTP/2 GOAWAY; a parked connection
//! closes at once), and wait up to
//! `server.shutdown_grace` for in-flight requests and streams to end; then
//! leave the other instances (`Gateway::leave`).

mod conn;
pub mod reload;
mod service;
mod transport;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};
use crate::tls::ClientTls;
use service::Connection;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

/// Runs the proxy for `config` on `listener` until `shutdown` resolves, then
/// drains for up to `server.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let gateway = Gateway::from_config(config).await?;
    serve_gateway(listener, gateway, shutdown).await
}

/// Like [`serve`], with a gateway the caller built (and can inspect).
pub async fn serve_gateway(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = gateway.config();
    let cfg = &config.server;
    let service = gateway.service();
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.client_header_timeout)
        // A backstop for `max_header_size` (checked exactly per request): room
        // for the headers plus a long request line. hyper answers 431 above it.
        .max_buf_size(header_buffer(cfg.max_header_size))
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(header_buffer(cfg.max_header_size) as u32);
    let metrics = gateway.metrics();
    let settings = Arc::new(conn::Settings {
        http1,
        http2,
        idle_timeout: cfg.client_header_timeout,
        open: metrics.client_connections.clone(),
        parked: metrics.client_connections_idle.clone(),
    });
    // Connections finish their exchanges when `stop` is cancelled; `tracker`
    // says when the last one has.
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(cfg.max_connections));
    let grace = cfg.shutdown_grace;
    let stop_background = gateway.stopped();
    reload::spawn_sighup(gateway.clone(), stop_background.clone());
    if let (true, Some(path)) = (config.admin.watch_config, gateway.config_path()) {
        reload::spawn_watch(
            gateway.clone(),
            path.clone(),
            std::time::Duration::from_secs(2),
            stop_background.clone(),
        );
    }
    let tls = gateway.server_tls().cloned();
    if tls.is_some() {
        reload::spawn_cert_watch(
            gateway.clone(),
            std::time::Duration::from_secs(2),
            stop_background.clone(),
        );
    }
    if let Some(addr) = cfg.tls.as_ref().and_then(|t| t.redirect_http_listen) {
        let plain = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let https_port = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?
            .port();
        tracing::info!(listen = %addr, https_port, "redirecting plain HTTP to HTTPS");
        let stop = stop_background.clone();
        tokio::spawn(crate::tls::redirect::serve(
            plain,
            https_port,
            stop.cancelled_owned(),
        ));
    }
    if let Some(addr) = cfg.admin_listen {
        let admin = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = admin
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        gateway.set_admin_addr(bound);
        tracing::info!(listen = %bound, "admin API listening");
        let app = gateway.admin_router();
        let stop = stop_background.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    tokio::pin!(shutdown);

    loop {
        // At the connection cap, stop accepting: the kernel backlog holds the rest.
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = connections.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = Connection {
            gateway: service.clone(),
            peer,
            tls: None,
            activity: None,
        };
        let settings = settings.clone();
        let stop = stop.clone();
        match &tls {
            None => tracker.spawn(async move {
                conn::serve(stream, svc, settings, stop).await;
                drop(permit);
            }),
            Some(tls) => tracker.spawn(serve_tls(tls.clone(), stream, svc, settings, stop, permit)),
        };
    }

    drop(listener);
    gateway.shutdown();
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    // Drained: leave the other instances (registry, shared caps).
    gateway.leave().await;
    Ok(())
}

/// One HTTPS connection: the handshake (failures are counted and logged by
/// [`ServerTls::accept`]), then HTTP/2 or HTTP/1.1 as ALPN settled.
async fn serve_tls<S, B>(
    tls: Arc<crate::tls::ServerTls>,
    stream: tokio::net::TcpStream,
    mut svc: Connection<S>,
    settings: Arc<conn::Settings>,
    stop: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes, Error = crate::body::BoxError> + Send + Unpin + 'static,
{
    let peer = svc.peer;
    let Ok(accepted) = tls.accept(stream, peer).await else {
        return;
    };
    svc.tls = Some(ClientTls {
        alpn: accepted.alpn,
    });
    // The same detection as plain connections: a client that negotiated h2
    // opens with the HTTP/2 preface, anything else is HTTP/1.1.
    conn::serve(accepted.stream, svc, settings, stop).await;
    drop(permit);
}

/// hyper's read-buffer cap for a header limit: the headers, a long request line.
fn header_buffer(max_header_size: u64) -> usize {
    usize::try_from(max_header_size)
        .unwrap_or(usize::MAX)
        .saturating_add(16 * 1024)
}
