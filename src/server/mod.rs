//! Listeners and lifecycle: accept connections (HTTP/1.1 and h2c on one
//! port), hand each request to the gateway's router, serve the admin API, and
//! shut down gracefully.
//!
//! Shutdown: stop accepting, tell every connection to finish its current
//! exchanges (HTTP/1 keep-alive off, HTTP/2 GOAWAY), and wait up to
//! `server.shutdown_grace` for in-flight requests and streams to end; then
//! leave the other instances (`Gateway::leave`).

pub mod reload;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::Router;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::gateway::{Gateway, GatewayError};

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

/// One client connection's service: the router, with the client's address
/// in each request's extensions (axum's `ConnectInfo`, as `axum::serve` does).
#[derive(Clone)]
struct Connection {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = axum::response::Response;
    type Error = Infallible;
    // The router's own future is small (it boxes what it routes to): hyper
    // keeps one slot of this size per connection, so idle connections stay light.
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        tower::Service::call(&mut self.router.clone(), req)
    }
}

/// Like [`serve`], with a gateway the caller built (and can inspect).
pub async fn serve_gateway(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = gateway.config();
    let cfg = &config.server;
    let router = gateway.router();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.client_header_timeout)
        // A backstop for `max_header_size` (checked exactly per request): room
        // for the headers plus a long request line. hyper answers 431 above it.
        .max_buf_size(header_buffer(cfg.max_header_size))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(header_buffer(cfg.max_header_size) as u32);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
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
            router: router.clone(),
            peer,
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    gateway.shutdown();
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    // Drained: leave the other instances (registry, shared caps).
    gateway.leave().await;
    Ok(())
}

/// hyper's read-buffer cap for a header limit: the headers, a long request line.
fn header_buffer(max_header_size: u64) -> usize {
    usize::try_from(max_header_size)
        .unwrap_or(usize::MAX)
        .saturating_add(16 * 1024)
}
