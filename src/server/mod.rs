//! Listeners and lifecycle: accept connections (HTTP/1.1 and h2c on one port),
//! route proxy-owned paths, forward the rest, and shut down gracefully.
//!
//! Every request that is not a proxy-owned path goes through [`dispatch`]:
//! observation (request id, metrics, stats, access log) around the request
//! stack. The batch endpoint sends its sub-requests through the same function.
//!
//! Shutdown: stop accepting, tell every connection to finish its current
//! exchanges (HTTP/1 keep-alive off, HTTP/2 GOAWAY), and wait up to
//! `server.shutdown_grace` for in-flight requests and streams to end.

mod admin;
mod batch;
mod endpoints;
pub mod hygiene;
pub mod reload;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::cache::{Cache, CacheService};
use crate::config::Config;
use crate::proxy::body::{InboundBody, ResponseBody};
use crate::proxy::observe::Observation;
use crate::proxy::{ClientAddr, Proxy, ProxyService};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the proxy on `listener` with `config` until `shutdown` resolves, then
/// drains for up to `server.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let proxy = Arc::new(Proxy::new(config));
    serve_proxy(listener, proxy, shutdown).await
}

/// Like [`serve`], with a proxy the caller built (and can inspect).
pub async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = proxy.config();
    let cache = config.cache.enabled.then(|| {
        Cache::start(
            &config.cache,
            proxy.metrics.registry(),
            tokio_util::sync::CancellationToken::new(),
        )
    });
    serve_with_cache(listener, proxy, cache, shutdown).await
}

/// Like [`serve_proxy`], with the cache the caller built (`None`: no cache in
/// the stack, whatever the config says). Tests use it to watch the cache.
pub async fn serve_with_cache(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    cache: Option<Arc<Cache>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let config = proxy.config();
    if let Some(c) = &cache {
        proxy.set_purger(c.clone());
    }
    let stack = Stack::new(proxy.clone(), cache.as_ref());
    let cfg = &config.server;
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
    let stop_background = tokio_util::sync::CancellationToken::new();
    let health = config
        .health
        .enabled
        .then(|| crate::health::spawn(proxy.clone(), stop_background.clone()));
    reload::spawn_sighup(proxy.clone(), stop_background.clone());
    if let (true, Some(path)) = (config.admin.watch_config, proxy.config_path()) {
        reload::spawn_watch(
            proxy.clone(),
            path,
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
        proxy.set_admin_addr(bound);
        tracing::info!(listen = %bound, "admin API listening");
        let app = admin::router(proxy.clone());
        let stop = stop_background.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
    }
    proxy.metrics.last_reload_success.set(reload::unix_now());
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
        let stack = stack.clone();
        let svc = service_fn(move |req| {
            let stack = stack.clone();
            // Boxed: hyper gives every connection a slot the size of the service's
            // future, allocated when the connection opens. The request future is
            // about 4 KiB; boxed, an idle keep-alive connection holds 8 bytes for it
            // and the 4 KiB exist only while a request is in flight.
            Box::pin(async move { Ok::<_, Infallible>(handle(&stack, req, peer).await) })
        });
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
    stop_background.cancel();
    if let Some(c) = &cache {
        c.stop();
    }
    if let Some(h) = health {
        let _ = h.await;
    }
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing remaining connections");
    }
    Ok(())
}

/// hyper's read-buffer cap for a header limit: the headers, a long request line.
fn header_buffer(max_header_size: u64) -> usize {
    usize::try_from(max_header_size)
        .unwrap_or(usize::MAX)
        .saturating_add(16 * 1024)
}

/// Proxy-owned paths are answered here; everything else is dispatched.
async fn handle(stack: &Stack, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
    let max_header_size = stack.proxy.config().server.max_header_size;
    if let Err(e) = hygiene::check(&req, usize::try_from(max_header_size).unwrap_or(usize::MAX)) {
        tracing::debug!(error = %e, %peer, "request refused");
        let mut resp = e.to_response().map(ResponseBody::full);
        // The rest of the connection cannot be trusted to be framed as the client meant.
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    let mut req = req.map(InboundBody::from);
    req.extensions_mut().insert(ClientAddr(peer));
    if req.uri().path() == "/-/batch" && req.method() == http::Method::POST {
        return batch::handle(stack, req).await;
    }
    if let Some(resp) = endpoints::answer(&stack.proxy, &req) {
        return resp;
    }
    stack.dispatch(req).await
}

/// What a forwarded request goes through, built once per server: the proxy,
/// behind the cache layer when the cache is on (off, it is not in the stack).
#[derive(Clone)]
pub struct Stack {
    pub proxy: Arc<Proxy>,
    cache: Option<(Arc<Cache>, CacheService<ProxyService>)>,
}

impl Stack {
    pub fn new(proxy: Arc<Proxy>, cache: Option<&Arc<Cache>>) -> Stack {
        let cache = cache.map(|c| {
            let svc = tower::Layer::layer(&c.layer(), ProxyService(proxy.clone()));
            (c.clone(), svc)
        });
        Stack { proxy, cache }
    }

    /// Sends one request through the stack, observed.
    pub async fn dispatch(&self, mut req: Request<InboundBody>) -> Response<ResponseBody> {
        let observation = Observation::begin(&self.proxy, &mut req);
        let resp = match &self.cache {
            None => self.proxy.forward(req).await,
            Some((cache, svc)) => {
                // Cache rules follow config reloads.
                cache.follow(&self.proxy.config());
                match tower::ServiceExt::oneshot(svc.clone(), req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                }
            }
        };
        observation.finish(resp)
    }
}
