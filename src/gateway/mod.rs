//! The gateway: every part of the proxy assembled from one configuration, the
//! axum [`Router`] that serves it, and the control plane that changes it.
//!
//! [`Gateway::router`] is what a client talks to: the proxy-owned paths
//! (`/metrics`, `/-/healthy`, `/-/ready`, `/-/stats`, `/-/status`,
//! `/-/batch`) are its routes, and everything else goes to a fallback service
//! that is a `tower::ServiceBuilder` stack ([`stack`]):
//!
//! ```text
//! CatchPanicLayer           a panic answers 500 for that request, nothing else ([`panic`])
//! HygieneLayer              refusal of requests Letta could read differently ([`hygiene`])
//! RequestIdLayer            x-request-id kept or generated, returned
//! sensitive headers         credentials marked so no log prints them
//! ObserveLayer              classification, metrics, stats window, access log, 499
//! LimitLayer                proxy-wide cap, per-agent / per-block write ordering
//! CacheLayer                (only when the cache is on)
//! Proxy                     balancing, per-backend caps and queue, pool, retries
//! ```
//!
//! The proxy-owned paths get catch-panic and hygiene too (`route_layer`).
//!
//! An application embeds the gateway by nesting the router in its own and
//! adding its own layers (authentication, CORS, rate limits): see
//! `examples/embed.rs`. [`crate::serve`] runs it standalone, with
//! [`Gateway::service`]: the router for the proxy-owned paths and the same
//! stack, without the router's per-request boxing, for the rest ([`front`]).
//!
//! The control plane ([`control`]): `apply`, `update` (admin edits) and
//! `reload` (SIGHUP, the admin API, file watch) swap the configuration in
//! force and tell every part.
//!
//! With `[redis]` configured and `limits.coordinate` on (the default), the
//! gateway coordinates with the other instances on that Redis ([`coordinate`]):
//! write leases in the limit layer, and per-backend caps shared out.

mod admin;
mod batch;
pub mod control;
mod coordinate;
mod endpoints;
pub mod front;
pub mod hygiene;
pub mod panic;
mod stack;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::backend::Upstreams;
use crate::cache::Cache;
use crate::config::{Config, SharedConfig};
use crate::coord::Coordinator;
use crate::limit::Limits;
use crate::metrics::Metrics;
use crate::observe::Recorder;
use crate::proxy::Proxy;
use crate::tls::{ServerTls, TlsMetrics};

pub use control::{ReloadError, ReloadReport};

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid config: {0}")]
    Invalid(String),
    #[error(transparent)]
    Redis(#[from] crate::redis::RedisError),
}

/// Every part of a running proxy. Cloning shares it.
#[derive(Clone)]
pub struct Gateway {
    parts: Arc<Parts>,
}

pub(crate) struct Parts {
    config: SharedConfig,
    /// The file the config came from, for reloads.
    config_path: Option<PathBuf>,
    /// Serialises config changes (reload, admin edits) so none is lost.
    changing: std::sync::Mutex<()>,
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    recorder: Arc<Recorder>,
    limits: Arc<Limits>,
    cache: Option<Arc<Cache>>,
    /// Coordination with the other instances on the same Redis.
    coord: Option<Arc<Coordinator>>,
    proxy: Proxy,
    /// The HTTPS listener's certificate and settings (`[server.tls]`).
    tls: Option<Arc<ServerTls>>,
    /// The stack, boxed once, for `/-/batch` sub-requests.
    dispatch: OnceLock<stack::Dispatch>,
    /// Where the admin API listens, once bound.
    admin_addr: OnceLock<SocketAddr>,
    /// Stops the background tasks (health probes, the cache's Redis tasks).
    stop: CancellationToken,
}

impl Drop for Parts {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(c) = &self.coord {
            c.stop();
        }
    }
}

impl Gateway {
    /// Builds every part for a validated `config` and starts the background
    /// tasks (health probes; the cache's Redis connection and invalidation
    /// channel). Must run inside a tokio runtime.
    pub async fn from_config(config: Config) -> Result<Gateway, GatewayError> {
        Gateway::build(config, None)
    }

    /// Like [`Gateway::from_config`], reloading from `path` (SIGHUP, `POST
    /// /-/reload`, `admin.watch_config`).
    pub async fn from_file(config: Config, path: PathBuf) -> Result<Gateway, GatewayError> {
        Gateway::build(config, Some(path))
    }

    fn build(config: Config, config_path: Option<PathBuf>) -> Result<Gateway, GatewayError> {
        config.validate().map_err(GatewayError::Invalid)?;
        let metrics = Metrics::new();
        let upstreams = Arc::new(Upstreams::new(&config, metrics.clone()));
        let config = Arc::new(config);
        let shared: SharedConfig = Arc::new(ArcSwap::from(config.clone()));
        let stop = CancellationToken::new();
        // One Redis client for everything kept there (the cache's shared tier,
        // write leases, the instance registry).
        let redis = match config.redis.is_configured() {
            true => Some(Arc::new(crate::redis::Redis::new(&config.redis)?)),
            false => None,
        };
        let cache = config.cache.enabled.then(|| {
            Cache::start(
                &config.cache,
                redis.clone(),
                metrics.registry(),
                stop.child_token(),
            )
        });
        if let Some(c) = &cache {
            c.follow(&config);
        }
        let tls = match &config.server.tls {
            Some(files) => Some(Arc::new(server_tls(&config, files, &metrics)?)),
            None => None,
        };
        let coord = match (&redis, config.limits.coordinate) {
            (Some(redis), true) => Some(coordinate::start(
                redis.clone(),
                &config,
                &upstreams,
                &metrics,
                &stop,
            )),
            _ => None,
        };
        let recorder = Arc::new(Recorder {
            config: shared.clone(),
            metrics: metrics.clone(),
            window: Default::default(),
            upstreams: upstreams.clone(),
        });
        let parts = Parts {
            limits: Limits::new(shared.clone(), metrics.clone(), coord.clone()),
            proxy: Proxy::new(upstreams.clone(), metrics.clone(), config.clone()),
            config: shared.clone(),
            config_path,
            changing: std::sync::Mutex::new(()),
            upstreams: upstreams.clone(),
            metrics: metrics.clone(),
            recorder,
            cache,
            coord,
            tls,
            dispatch: OnceLock::new(),
            admin_addr: OnceLock::new(),
            stop,
        };
        // Health probes read the config in force at every round.
        crate::health::spawn(upstreams, shared, parts.stop.child_token());
        metrics.last_reload_success.set(control::unix_now());
        Ok(Gateway {
            parts: Arc::new(parts),
        })
    }

    /// The router clients talk to: the proxy-owned paths and, for everything
    /// else, the forwarding stack. Nest it in an application's router to embed
    /// the gateway (`Router::new().nest("/letta", gateway.router())`).
    pub fn router(&self) -> Router {
        stack::router(self, self.parts.proxy.clone())
    }

    /// The gateway's router and layers around `inner` instead of the proxy:
    /// the proxy-owned paths, hygiene, catch-panic, request ids, observation,
    /// limits and the cache in front of any service (a test double, or an
    /// application's own handler of Letta's API).
    pub fn router_over<S, B>(&self, inner: S) -> Router
    where
        S: tower::Service<
                http::Request<crate::body::InboundBody>,
                Response = http::Response<B>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + Unpin + 'static,
        B: http_body::Body<Data = bytes::Bytes, Error = crate::body::BoxError>
            + From<crate::body::Full>
            + Send
            + Unpin
            + 'static,
    {
        stack::router(self, inner)
    }

    /// The gateway as a hyper service, for serving it on connections of your
    /// own: the router for the proxy-owned paths, the forwarding stack for the
    /// rest without the router's per-request boxing ([`front`]). What
    /// [`crate::serve`] runs.
    pub fn service(
        &self,
    ) -> impl tower::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<
            impl http_body::Body<Data = bytes::Bytes, Error = crate::body::BoxError> + Send + 'static,
        >,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        stack::front(self)
    }

    /// The admin API (`server.admin_listen`): backends, drain, strategy,
    /// reload, cache purge, and the read-only paths of [`Gateway::router`].
    pub fn admin_router(&self) -> Router {
        admin::router(self.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.parts.config.load_full()
    }

    /// The backends and their live state.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.parts.upstreams
    }

    /// The Prometheus families of this gateway.
    pub fn metrics(&self) -> &Metrics {
        &self.parts.metrics
    }

    /// The response cache, when enabled.
    pub fn cache(&self) -> Option<&Arc<Cache>> {
        self.parts.cache.as_ref()
    }

    /// The HTTPS listener's TLS (certificate, reloads, handshakes), when
    /// `[server.tls]` is set.
    pub fn server_tls(&self) -> Option<&Arc<ServerTls>> {
        self.parts.tls.as_ref()
    }

    /// The file the config is reloaded from, if any.
    pub fn config_path(&self) -> Option<&PathBuf> {
        self.parts.config_path.as_ref()
    }

    /// Agents and blocks with writes running or waiting now.
    pub fn agents_being_written(&self) -> usize {
        self.parts.limits.agents_being_written()
    }

    /// Records where the admin API listens.
    pub fn set_admin_addr(&self, addr: SocketAddr) {
        let _ = self.parts.admin_addr.set(addr);
    }

    /// Where the admin API listens, once bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.parts.admin_addr.get().copied()
    }

    /// Coordination with the other instances sharing the Redis, when on.
    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.parts.coord.as_ref()
    }

    /// The `/-/stats` figures.
    pub fn stats(&self) -> crate::stats::Snapshot {
        let p = &self.parts;
        let mut snapshot = status::snapshot(&p.upstreams, &p.recorder.window, &p.metrics);
        snapshot.tls = p.tls.as_ref().map(|tls| {
            let certificate = tls.certificate();
            crate::stats::TlsStatus {
                problem: certificate
                    .problem(std::time::SystemTime::now())
                    .map(|p| p.to_string()),
                certificate,
            }
        });
        snapshot.coordination = p.coord.as_ref().map(|c| {
            let mut status = c.status();
            // As for backends: the main listener shows no internal address.
            status.this_instance.address.clear();
            for i in &mut status.instances {
                i.address.clear();
            }
            status
        });
        snapshot
    }

    /// Stops the background tasks (health probes, the cache's Redis tasks).
    /// Requests in flight are not affected. Coordination goes on (requests
    /// still draining keep their write leases renewed and this instance's
    /// share of the caps) until [`Gateway::leave`].
    pub fn shutdown(&self) {
        self.parts.stop.cancel();
    }

    /// Leaves the other instances, once requests have drained: out of the
    /// Redis registry at once (they take back this instance's share of the
    /// caps on their next heartbeat), coordination stopped. Bounded by
    /// `redis.timeout`; nothing to do without coordination. The standalone
    /// server calls it after [`Gateway::shutdown`] and the drain.
    pub async fn leave(&self) {
        if let Some(c) = &self.parts.coord {
            c.shutdown().await;
        }
    }

    /// A token cancelled when the gateway shuts down, for tasks tied to it.
    pub fn stopped(&self) -> CancellationToken {
        self.parts.stop.child_token()
    }
}

/// The listener's TLS from `[server.tls]`, with its metrics; a certificate
/// problem (expired, expiring) is logged, not fatal: the proxy must start to
/// be fixed by a reload.
fn server_tls(
    config: &Config,
    files: &crate::tls::ServerTlsConfig,
    metrics: &Metrics,
) -> Result<ServerTls, GatewayError> {
    let tls = ServerTls::load(files)
        .map_err(|e| GatewayError::Invalid(format!("[server.tls]: {e}")))?
        .with_handshake_timeout(config.server.client_header_timeout);
    let tls = match TlsMetrics::new(metrics.registry()) {
        Ok(m) => tls.with_metrics(m),
        Err(e) => {
            tracing::warn!(error = %e, "TLS metrics not registered");
            tls
        }
    };
    let cert = tls.certificate();
    match cert.problem(std::time::SystemTime::now()) {
        Some(problem) => {
            tracing::warn!(path = %cert.path.display(), subject = %cert.subject, %problem, "TLS certificate problem")
        }
        None => {
            tracing::info!(path = %cert.path.display(), subject = %cert.subject, not_after = %cert.not_after_text(), "TLS certificate loaded")
        }
    }
    Ok(tls)
}
