//! Forwarding: the innermost service of the gateway's stack.
//!
//! [`Proxy`] takes one request and returns the backend's answer, or the
//! proxy's own error answer. Per attempt: pick a backend and take an in-flight
//! slot (queueing when every backend is at its cap), check out a connection
//! from that backend's pool *before* building the request (a refused connect
//! moves on to the next backend: nothing was sent), send, then let
//! [`retry::decide`] say whether to deliver, fail or try another backend. The
//! answer's body carries the slot and the connection, released when it ends.
//!
//! - [`headers`]: the header rules of a forwarding proxy.
//! - [`retry`]: the retry rule, a pure function with its table test.
//! - `exchange.rs`: one request's attempts.
//! - `upstream.rs`: the answer's body ([`ProxyBody`]) and what it holds.
//!
//! The proxy knows nothing of the layers above it (limits, cache, metrics of
//! the whole request): the gateway stacks them.

mod exchange;
pub mod headers;
pub mod retry;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderName;
use http::{Request, Response};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tower::retry::budget::TpsBudget;

use crate::backend::Upstreams;
use crate::body::{Full, InboundBody};
use crate::config::Config;
use crate::metrics::Metrics;

pub use upstream::{ProxyBody, UpstreamHold};

/// The client's address, when the server knows it (axum's `ConnectInfo`).
pub type ClientAddr = axum::extract::ConnectInfo<std::net::SocketAddr>;

/// The forwarding service. Cloning shares it.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    live: ArcSwap<Live>,
}

/// What forwarding derives from the configuration in force, swapped whole.
struct Live {
    config: Arc<Config>,
    retry_budget: TpsBudget,
    affinity_header: Option<HeaderName>,
}

impl Live {
    fn new(config: Arc<Config>) -> Live {
        let limits = &config.limits;
        Live {
            retry_budget: TpsBudget::new(
                Duration::from_secs(10),
                limits.retry_min_per_second,
                limits.retry_budget_percent as f32 / 100.0,
            ),
            affinity_header: HeaderName::from_bytes(config.balancer.affinity_header.as_bytes())
                .ok(),
            config,
        }
    }
}

thread_local! {
    // Per-thread RNG for balancing: no lock, no syscall per request.
    static RNG: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_os_rng());
}

pub(crate) fn with_rng<T>(f: impl FnOnce(&mut SmallRng) -> T) -> T {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

impl Proxy {
    /// Forwards to `upstreams` with the settings of `config`.
    pub fn new(upstreams: Arc<Upstreams>, metrics: Metrics, config: Arc<Config>) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                upstreams,
                metrics,
                live: ArcSwap::from_pointee(Live::new(config)),
            }),
        }
    }

    /// Follows a new configuration (timeouts, retry budget, affinity header).
    pub fn reload(&self, config: Arc<Config>) {
        self.inner.live.store(Arc::new(Live::new(config)));
    }

    /// Forwards `req` and returns the backend's answer, or the proxy's own
    /// error answer. The client address comes from [`ClientAddr`].
    pub async fn forward(&self, req: Request<InboundBody>) -> Response<ProxyBody> {
        let live = self.inner.live.load_full();
        let peer: Option<IpAddr> = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
        match exchange::Exchange::new(&self.inner, &live, peer)
            .run(req)
            .await
        {
            Ok(resp) => resp,
            Err(err) => {
                tracing::debug!(error = %err, "proxy error");
                err.to_response().map(|b| ProxyBody::Full(Full::new(b)))
            }
        }
    }
}

impl tower::Service<Request<InboundBody>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Backpressure is applied per request (backend caps, queue), not here:
        // a full backend must not stall requests bound for another.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<InboundBody>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.forward(req).await) })
    }
}
