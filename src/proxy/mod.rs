//! Forwarding: one request in, one backend chosen, the answer streamed back.
//!
//! [`Proxy::forward`] is the whole path of a proxied request:
//! apply the limits (global cap, per-agent write order) → prepare headers in
//! place → pick a backend and take an in-flight slot (queueing when every backend
//! is at its cap) → check out a connection from that backend's pool *before*
//! building the request (a refused connect moves on to the next backend: nothing
//! was sent) → send → retry safe requests once where allowed → rewrite the
//! response headers → hand the body to the client with the slot, the write turn
//! and the connection inside, released when the body ends.

pub mod body;
pub mod headers;
pub mod observe;
pub mod pool;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tower::retry::budget::{Budget, TpsBudget};

use crate::backend::{Backend, Upstreams};
use crate::balance::PickRequest;
use crate::config::Config;
use crate::error::ProxyError;
use crate::limit::global::GlobalLimit;
use crate::limit::ordering::WriteOrdering;
use crate::limit::queue::QueueError;
use crate::metrics::Metrics;
use crate::routes::{self, Route};
use crate::stats::window::Window;
use arc_swap::ArcSwap;
use body::{BodySlot, Holds, InboundBody, ResponseBody};

/// The client's address, put in request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The proxy as a tower service, so layers (the cache) can wrap it.
#[derive(Clone)]
pub struct ProxyService(pub Arc<Proxy>);

impl tower::Service<Request<InboundBody>> for ProxyService {
    type Response = Response<ResponseBody>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // Backpressure is applied per request (backend caps, queue), not here:
        // a full backend must not stall requests bound for another.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<InboundBody>) -> Self::Future {
        let proxy = self.0.clone();
        Box::pin(async move { Ok(proxy.forward(req).await) })
    }
}

/// Everything a request needs, shared by every connection.
pub struct Proxy {
    /// The configuration in force and what is derived from it, swapped whole on reload.
    live: ArcSwap<Live>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
    /// Recent outcomes over every backend, for `/-/stats`.
    pub window: Window,
    writes: Arc<WriteOrdering>,
    /// The proxy-wide cap: one counter for the proxy's life (a reload changes
    /// only its maximum, so requests in flight across a reload still count).
    global: Arc<GlobalLimit>,
    /// The file the config came from, for reloads.
    config_path: Option<PathBuf>,
    /// Serialises config changes (reload, admin edits) so none is lost.
    changing: std::sync::Mutex<()>,
    /// The response cache, when enabled (for admin purges).
    purger: std::sync::OnceLock<Arc<dyn Purge>>,
    /// Where the admin API listens, once bound.
    admin_addr: std::sync::OnceLock<SocketAddr>,
}

/// Evicts cached answers on request (implemented by the cache).
pub trait Purge: Send + Sync {
    /// Drops every entry that mentions the Letta id `id`; returns how many.
    fn purge_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, usize>;
    /// Drops every entry whose path starts with `prefix`; returns how many.
    fn purge_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, usize>;
}

/// A boxed future, for the object-safe [`Purge`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The configuration in force, with the state built from it. Replaced whole by a
/// reload, so a request sees one consistent version from start to end.
pub struct Live {
    pub config: Arc<Config>,
    retry_budget: TpsBudget,
    affinity_header: Option<HeaderName>,
}

impl Live {
    fn new(config: Config) -> Live {
        let limits = &config.limits;
        Live {
            retry_budget: TpsBudget::new(
                Duration::from_secs(10),
                limits.retry_min_per_second,
                limits.retry_budget_percent as f32 / 100.0,
            ),
            affinity_header: HeaderName::from_bytes(config.balancer.affinity_header.as_bytes())
                .ok(),
            config: Arc::new(config),
        }
    }
}

thread_local! {
    // Per-thread RNG for balancing and request ids: no lock, no syscall per request.
    static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_os_rng());
}

fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// A backend's answer, with what the request holds until its body ends.
struct Forwarded {
    resp: Response<Incoming>,
    holds: Holds,
}

/// Why the current attempt will be retried on another backend.
enum Retry {
    Connect,
    Status,
    Timeout,
    Error,
}

impl Retry {
    fn label(&self) -> &'static str {
        match self {
            Retry::Connect => "connect",
            Retry::Status => "status",
            Retry::Timeout => "timeout",
            Retry::Error => "error",
        }
    }
}

impl Proxy {
    /// Builds the proxy for `config`.
    pub fn new(config: Config) -> Proxy {
        let metrics = Metrics::new();
        let upstreams = Arc::new(Upstreams::new(&config, metrics.clone()));
        Proxy {
            global: Arc::new(GlobalLimit::new(config.limits.max_in_flight)),
            live: ArcSwap::from_pointee(Live::new(config)),
            writes: WriteOrdering::new(),
            window: Window::new(),
            upstreams,
            metrics,
            config_path: None,
            changing: std::sync::Mutex::new(()),
            purger: std::sync::OnceLock::new(),
            admin_addr: std::sync::OnceLock::new(),
        }
    }

    /// Records where the admin API listens.
    pub fn set_admin_addr(&self, addr: SocketAddr) {
        let _ = self.admin_addr.set(addr);
    }

    /// Where the admin API listens, once bound.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr.get().copied()
    }

    /// Registers the cache, for admin purges.
    pub fn set_purger(&self, purger: Arc<dyn Purge>) {
        let _ = self.purger.set(purger);
    }

    /// Drops every cached answer that mentions `id` (0 when the cache is off).
    pub async fn purge_cache_id(&self, id: &str) -> usize {
        match self.purger.get() {
            Some(p) => p.purge_id(id).await,
            None => 0,
        }
    }

    /// Drops every cached answer under `prefix` (0 when the cache is off).
    pub async fn purge_cache_prefix(&self, prefix: &str) -> usize {
        match self.purger.get() {
            Some(p) => p.purge_prefix(prefix).await,
            None => 0,
        }
    }

    /// Remembers the file `config` came from, so it can be reloaded.
    pub fn with_config_path(mut self, path: impl Into<PathBuf>) -> Proxy {
        self.config_path = Some(path.into());
        self
    }

    /// The file the config came from, if any.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_path.clone()
    }

    /// Changes the running config with `edit` (admin calls), validating the result.
    /// A later reload from the file replaces such edits.
    pub fn update(
        &self,
        edit: impl FnOnce(&mut Config) -> Result<(), String>,
    ) -> Result<Arc<Config>, String> {
        let _one_at_a_time = self.changing.lock().expect("config change lock poisoned");
        let mut next = (*self.config()).clone();
        edit(&mut next)?;
        next.validate()?;
        self.apply_locked(next);
        Ok(self.config())
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.live.load().config.clone()
    }

    /// Applies a new, validated configuration: backends (kept ones keep their
    /// state and pools), strategy, limits, health and cache rules. Listener
    /// addresses, connection limits and the upstream pool settings stay as they
    /// were until a restart.
    pub fn apply(&self, config: Config) {
        let _one_at_a_time = self.changing.lock().expect("config change lock poisoned");
        self.apply_locked(config);
    }

    fn apply_locked(&self, config: Config) {
        self.upstreams.replace(&config);
        self.global.set_max(config.limits.max_in_flight);
        self.live.store(Arc::new(Live::new(config)));
    }

    /// Whether per-request metrics are recorded (`[metrics] enabled`).
    pub fn metrics_enabled(&self) -> bool {
        self.live.load().config.metrics.enabled
    }

    /// Whether access logging is on.
    pub fn access_log(&self) -> bool {
        self.live.load().config.log.access_log
    }

    /// Forwards `req` to a backend and returns the backend's answer (or the
    /// proxy's own error answer). The client address comes from [`ClientAddr`];
    /// the backend that answered is named by [`ResponseBody::served_by`].
    pub async fn forward(&self, req: Request<InboundBody>) -> Response<ResponseBody> {
        let live = self.live.load_full();
        let peer = req
            .extensions()
            .get::<ClientAddr>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let route = routes::classify(path_and_query.path());
        match self
            .send(&live, &mut parts, body, &path_and_query, &route, peer)
            .await
        {
            Ok(Forwarded { resp, holds }) => {
                let (rparts, rbody) = resp.into_parts();
                let body =
                    ResponseBody::upstream(rbody, live.config.server.body_idle_timeout, holds);
                Response::from_parts(rparts, body)
            }
            Err(err) => {
                tracing::debug!(error = %err, "proxy error");
                err.to_response().map(ResponseBody::full)
            }
        }
    }

    /// Applies the limits, picks backends and sends until one answers, or fails
    /// with the error to show.
    async fn send(
        &self,
        live: &Live,
        parts: &mut http::request::Parts,
        body: InboundBody,
        path_and_query: &PathAndQuery,
        route: &Route<'_>,
        peer: SocketAddr,
    ) -> Result<Forwarded, ProxyError> {
        let server = &live.config.server;
        let limits = &live.config.limits;
        let mut global = self.global.try_acquire();
        if global.is_none() {
            self.metrics
                .rejections
                .with_label_values(&["global_limit"])
                .inc();
            return Err(ProxyError::Overloaded(
                "the proxy is at limits.max_in_flight",
            ));
        }
        let declared_len = content_length(&parts.headers);
        if let Some(len) = declared_len {
            if len > server.max_body_size {
                return Err(ProxyError::BodyTooLarge {
                    limit: server.max_body_size,
                });
            }
        }
        // The host the client addressed: `Host` for HTTP/1, `:authority` for h2.
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::add_forwarded(&mut parts.headers, peer.ip(), client_host.as_ref());
        if server.preserve_host {
            if let Some(h) = &client_host {
                parts.headers.insert(header::HOST, h.clone());
            }
        } else {
            parts.headers.remove(header::HOST);
        }

        let is_read = route.is_read(&parts.method);
        // Writes to one agent or block wait for the earlier ones (before taking a
        // backend slot, so waiting writes do not occupy backends).
        let mut write_turn = match (
            limits.serialize_agent_writes && !is_read,
            route.agent_id.or(route.block_id),
        ) {
            (true, Some(key)) => {
                let waited = Instant::now();
                let turn = self.writes.turn(key, limits.agent_write_timeout).await;
                self.metrics
                    .write_wait
                    .observe(waited.elapsed().as_secs_f64());
                if turn.is_none() {
                    self.metrics
                        .rejections
                        .with_label_values(&["agent_write_timeout"])
                        .inc();
                    return Err(ProxyError::Overloaded(
                        "earlier writes to this agent are still running",
                    ));
                }
                turn
            }
            _ => None,
        };

        // Safe requests with a small body are read into memory so they can be retried.
        let body = match (is_read, declared_len) {
            (true, Some(len)) if len > 0 && len <= limits.retry_max_body => buffer(body).await?,
            _ => body,
        };
        let slot = BodySlot::new(body, server.max_body_size);
        // Owned: `parts.headers` is handed to the backend below.
        let header_agent: Option<String> = match route.agent_id {
            Some(_) => None,
            None => live
                .affinity_header
                .as_ref()
                .and_then(|h| parts.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let pick = PickRequest {
            agent_id: route.agent_id.or(header_agent.as_deref()),
        };
        let backend_count = self.upstreams.load().backends.len();
        live.retry_budget.deposit();
        let mut tried = Tried::default();
        let mut retried = false;
        let mut last_err: Option<ProxyError> = None;
        loop {
            let acquired = self
                .upstreams
                .queue
                .acquire(|| {
                    with_rng(|rng| self.upstreams.try_acquire(&pick, tried.as_slice(), rng))
                })
                .await;
            let (index, in_flight) = match acquired {
                Ok(((i, slot_guard), waited)) => {
                    if !waited.is_zero() {
                        self.metrics.queue_wait.observe(waited.as_secs_f64());
                    }
                    (i, slot_guard)
                }
                Err(e) => {
                    if let Some(err) = last_err {
                        return Err(err);
                    }
                    return Err(match e {
                        QueueError::Unusable => ProxyError::NoBackend,
                        QueueError::Full => {
                            self.metrics
                                .rejections
                                .with_label_values(&["queue_full"])
                                .inc();
                            ProxyError::Overloaded(
                                "every backend is at its limit and the queue is full",
                            )
                        }
                        QueueError::TimedOut => {
                            self.metrics
                                .rejections
                                .with_label_values(&["queue_timeout"])
                                .inc();
                            ProxyError::Overloaded(
                                "every backend stayed at its limit for limits.queue_timeout",
                            )
                        }
                    });
                }
            };
            let backend = in_flight.backend().clone();
            tried.push(index);
            let others_left = tried.len() < backend_count;
            // Safe, replayable, not yet retried, budget permitting: worth another backend.
            let may_retry_safely = is_read && slot.is_replayable() && !retried && others_left;
            let sent_at = Instant::now();
            // Connect (or reuse) before building the request: a failed connect
            // consumes nothing, so the next backend gets it whatever its method.
            let checkout = match backend.pool.checkout(&backend.url.authority).await {
                Ok(conn) => Ok(conn),
                Err(e) => Err(SendError::NotSent(e, None)),
            };
            let outcome = match checkout {
                Ok(mut conn) => {
                    let up = self.upstream_request(
                        parts,
                        path_and_query,
                        &backend,
                        &slot,
                        may_retry_safely,
                    );
                    let sent = send_on(&backend, &mut conn, up);
                    match tokio::time::timeout(server.response_header_timeout, sent).await {
                        Ok(Ok(resp)) => Ok(Ok((resp, conn))),
                        Ok(Err(e)) => Ok(Err(e)),
                        Err(elapsed) => Err(elapsed),
                    }
                }
                Err(e) => Ok(Err(e)),
            };
            let elapsed = sent_at.elapsed();
            let now = self.upstreams.now_ns();
            let retry = match outcome {
                Ok(Ok((mut resp, conn))) => {
                    let status = resp.status();
                    backend.metrics.ttfb.observe(elapsed.as_secs_f64());
                    backend.metrics.response(status.as_u16());
                    if status.is_server_error() {
                        backend.latency.observe_error(elapsed, now);
                        self.upstreams.record_failure(&backend);
                    } else {
                        backend.latency.observe(elapsed, now);
                        self.upstreams.record_success(&backend);
                    }
                    let retryable_status = matches!(status.as_u16(), 502..=504);
                    if retryable_status && may_retry_safely && live.retry_budget.withdraw() {
                        Retry::Status
                    } else {
                        let h = resp.headers_mut();
                        headers::strip_hop_by_hop(h);
                        headers::rewrite_location(h, &backend.url.authority, client_host.as_ref());
                        h.insert(headers::BACKEND.clone(), backend.name_header.clone());
                        let holds = Holds {
                            in_flight,
                            write_turn: write_turn.take(),
                            global: global.take(),
                            conn: Some(conn),
                        };
                        return Ok(Forwarded { resp, holds });
                    }
                }
                Ok(Err(SendError::NotSent(err, unsent))) => {
                    // Nothing reached the backend: the next one may have it, whatever the method.
                    if let Some(req) = unsent {
                        parts.headers = req.into_parts().0.headers;
                    }
                    backend.metrics.connect_errors.inc();
                    backend.latency.observe_error(elapsed, now);
                    self.upstreams.record_failure(&backend);
                    tracing::warn!(backend = %backend.name, error = %err, "backend unreachable");
                    last_err = Some(ProxyError::Connect {
                        backend: backend.name.to_string(),
                        source: Box::new(err),
                    });
                    if !others_left {
                        return Err(last_err.take().expect("just set"));
                    }
                    Retry::Connect
                }
                Ok(Err(SendError::Failed(err))) => {
                    if body::is_body_too_large(&err) {
                        return Err(ProxyError::BodyTooLarge {
                            limit: server.max_body_size,
                        });
                    }
                    if body::is_client_body_error(&err) {
                        // The client's body broke (bad chunking, the client left):
                        // nothing to hold against the backend, nothing to retry.
                        tracing::debug!(backend = %backend.name, error = %err, "client body failed");
                        return Err(ProxyError::BadRequest("the request body could not be read"));
                    }
                    backend.metrics.upstream_errors.inc();
                    backend.latency.observe_error(elapsed, now);
                    self.upstreams.record_failure(&backend);
                    tracing::warn!(backend = %backend.name, error = %err, "backend failed");
                    let e = ProxyError::Upstream {
                        backend: backend.name.to_string(),
                        source: Box::new(err),
                    };
                    if !(may_retry_safely && live.retry_budget.withdraw()) {
                        return Err(e);
                    }
                    last_err = Some(e);
                    Retry::Error
                }
                Err(_elapsed) => {
                    backend.metrics.timeouts.inc();
                    backend.latency.observe_error(elapsed, now);
                    self.upstreams.record_failure(&backend);
                    let e = ProxyError::Timeout {
                        backend: backend.name.to_string(),
                        what: "no response headers in time",
                    };
                    if !(may_retry_safely && live.retry_budget.withdraw()) {
                        return Err(e);
                    }
                    last_err = Some(e);
                    Retry::Timeout
                }
            };
            if !matches!(retry, Retry::Connect) {
                retried = true;
            }
            self.metrics
                .retries
                .with_label_values(&[retry.label()])
                .inc();
            tracing::debug!(backend = %backend.name, reason = retry.label(), "retrying on another backend");
        }
    }

    /// The request as sent to `backend`: same method, path and query byte for
    /// byte, prepared headers (copied when the request may be retried, moved otherwise).
    fn upstream_request(
        &self,
        parts: &mut http::request::Parts,
        path_and_query: &PathAndQuery,
        backend: &Backend,
        slot: &BodySlot,
        may_retry: bool,
    ) -> Request<body::RequestBody> {
        // Origin form (`/v1/agents/?limit=5`) on a connection to the backend.
        let uri = Uri::from(path_and_query.clone());
        let mut up = Request::new(slot.attempt());
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = if may_retry {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        if !up.headers().contains_key(header::HOST) {
            // `preserve_host` off, or an HTTP/1.0 client without Host.
            let host = HeaderValue::from_str(backend.url.authority.as_str())
                .expect("authority is a valid header");
            up.headers_mut().insert(header::HOST, host);
        }
        up
    }

    /// Agents and blocks with writes running or waiting now.
    pub fn agents_being_written(&self) -> usize {
        self.writes.active_keys()
    }
}

/// Why an exchange failed, split by whether any of the request was sent.
enum SendError {
    /// Nothing was sent (connect failed); the request is handed back when it was built.
    /// (Boxed: the error path must not make every `Result` carrying it large.)
    NotSent(pool::ConnectError, Option<Box<Request<body::RequestBody>>>),
    /// The request was (or may have been) sent, then the exchange broke.
    Failed(hyper::Error),
}

/// Sends `req` on `conn`. A reused connection that the backend closed while it
/// was idle hands the request back unsent; it then goes out on a fresh connection.
async fn send_on(
    backend: &Backend,
    conn: &mut pool::Pooled,
    mut req: Request<body::RequestBody>,
) -> Result<Response<Incoming>, SendError> {
    loop {
        let stale = conn.sender().ready().await.is_err();
        if !stale {
            match conn.sender().try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if conn.reused => req = unsent,
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        } else if !conn.reused {
            return Err(SendError::NotSent(
                pool::ConnectError::Io(std::io::Error::other("new connection closed before use")),
                Some(Box::new(req)),
            ));
        }
        match backend.pool.connect(&backend.url.authority).await {
            Ok(fresh) => *conn = fresh,
            Err(e) => return Err(SendError::NotSent(e, Some(Box::new(req)))),
        }
    }
}

/// Backends a request already tried: inline for the usual few, no allocation.
#[derive(Default)]
struct Tried {
    inline: [usize; 4],
    len: usize,
    more: Vec<usize>,
}

impl Tried {
    fn push(&mut self, i: usize) {
        if self.more.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.inline);
            }
            self.more.push(i);
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn as_slice(&self) -> &[usize] {
        if self.more.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }
}

/// Reads a small request body into memory (its length is known and capped).
async fn buffer(body: InboundBody) -> Result<InboundBody, ProxyError> {
    use http_body_util::BodyExt;
    match body.collect().await {
        Ok(c) => Ok(InboundBody::from(c.to_bytes())),
        Err(_) => Err(ProxyError::BadRequest("the request body could not be read")),
    }
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
