//! [`LimitLayer`]: the proxy-wide cap and per-agent / per-block write ordering
//! as a tower layer, in tower's layer / service / future shape.
//!
//! Per request: take a place under `limits.max_in_flight` (503 at once when
//! full: the proxy itself is at risk); then, for a write naming an agent or a
//! block, wait for that agent's earlier writes (FIFO, bounded by
//! `limits.agent_write_timeout`). Both are held until the response *body*
//! ends ([`Held`], a body watch), so a streamed agent turn holds its agent for
//! as long as it streams. Reads never wait for writes.
//!
//! Across instances (a coordinator: `[redis]` configured, `limits.coordinate`
//! on), such a write first takes the key's write lease in Redis, so writes to
//! one agent through every instance run one at a time, then its local turn
//! (uncontended, unless Redis failed for another writer here). A lease that
//! cannot be had because Redis is unreachable is not an error: the write is
//! ordered by this instance alone, as without Redis (counted by the
//! coordinator). Reads and writes naming no agent never call Redis.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service};

use super::global::{GlobalLimit, GlobalPermit};
use super::ordering::{WriteOrdering, WriteTurn};
use crate::body::{Full, InboundBody, Outcome, Watch, Watched};
use crate::config::SharedConfig;
use crate::coord::{Coordinator, LeaseError, LeaseGuard};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::routes::Classified;

/// What a request holds until its response body ends.
#[derive(Debug, Default)]
pub struct Held {
    global: Option<GlobalPermit>,
    turn: Option<WriteTurn>,
    /// The write lease across instances; dropping it releases it in the
    /// background (off the request's path).
    lease: Option<LeaseGuard>,
}

impl Watch for Held {
    fn finish(self, _outcome: Outcome) {
        // The agent's next writer first (anywhere, then here), then the place
        // under the cap.
        let Held {
            global,
            turn,
            lease,
        } = self;
        drop(lease);
        drop(turn);
        drop(global);
    }
}

/// The limits' state, shared by every clone of the service.
pub struct Limits {
    config: SharedConfig,
    global: Arc<GlobalLimit>,
    writes: Arc<WriteOrdering>,
    /// Write leases across instances, when they coordinate.
    coord: Option<Arc<Coordinator>>,
    metrics: Metrics,
}

impl Limits {
    /// The limits; `coord`: take write leases across instances too.
    pub fn new(
        config: SharedConfig,
        metrics: Metrics,
        coord: Option<Arc<Coordinator>>,
    ) -> Arc<Limits> {
        let max = config.load().limits.max_in_flight;
        Arc::new(Limits {
            config,
            global: Arc::new(GlobalLimit::new(max)),
            writes: WriteOrdering::new(),
            coord,
            metrics,
        })
    }

    /// Follows a reload: the cap changes in place, requests in flight keep counting.
    pub fn reload(&self, max_in_flight: u64) {
        self.global.set_max(max_in_flight);
    }

    /// Agents and blocks with writes running or waiting now.
    pub fn agents_being_written(&self) -> usize {
        self.writes.active_keys()
    }

    /// Requests counted under the proxy-wide cap now.
    pub fn in_flight(&self) -> u64 {
        self.global.current()
    }
}

/// Puts the limits in front of a service. Holds only the shared state.
#[derive(Clone)]
pub struct LimitLayer {
    limits: Arc<Limits>,
}

impl LimitLayer {
    pub fn new(limits: Arc<Limits>) -> LimitLayer {
        LimitLayer { limits }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = LimitService<S>;

    fn layer(&self, inner: S) -> LimitService<S> {
        LimitService {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The limits around `S`. Cloning shares the limits and clones the inner
/// service (tower's rule: a clone never carries a held permit).
#[derive(Clone)]
pub struct LimitService<S> {
    inner: S,
    limits: Arc<Limits>,
}

type Limited<B> = Watched<B, Held>;
type Boxed<B> = Pin<Box<dyn Future<Output = Result<Response<Limited<B>>, Infallible>> + Send>>;

impl<S, B> Service<Request<InboundBody>> for LimitService<S>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body + From<Full> + Send + Unpin + 'static,
{
    type Response = Response<Limited<B>>;
    type Error = Infallible;
    type Future = LimitFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<InboundBody>) -> Self::Future {
        let limits = &self.limits;
        let Some(global) = limits.global.try_acquire() else {
            limits
                .metrics
                .rejections
                .with_label_values(&["global_limit"])
                .inc();
            let e = ProxyError::Overloaded("the proxy is at limits.max_in_flight");
            return LimitFuture::Ready(Some(rejection(e)));
        };
        let config = limits.config.load();
        let route = Classified::of_request(&req);
        let key = match route.write_key() {
            Some(key) if config.limits.serialize_agent_writes && !route.is_read(req.method()) => {
                Some(Box::<str>::from(key))
            }
            _ => None,
        };
        let Some(key) = key else {
            return LimitFuture::Direct {
                inner: self.inner.call(req),
                held: Some(Held {
                    global: Some(global),
                    turn: None,
                    lease: None,
                }),
            };
        };
        // A write that may wait: the readied service takes this call after the
        // wait; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = limits.clone();
        let timeout = config.limits.agent_write_timeout;
        LimitFuture::Waiting(Box::pin(async move {
            let waited = Instant::now();
            // Across instances first: `Unavailable` (Redis unreachable) leaves
            // the ordering to this instance alone, and is counted there.
            let lease = match &limits.coord {
                Some(coord) => match coord.acquire(&key, timeout).await {
                    Ok(lease) => Ok(Some(lease)),
                    Err(LeaseError::Timeout) => Err(()),
                    Err(LeaseError::Unavailable(_)) => Ok(None),
                },
                None => Ok(None),
            };
            // Then here, with what is left of the wait.
            let turn = match lease {
                Ok(lease) => limits
                    .writes
                    .turn(&key, timeout.saturating_sub(waited.elapsed()))
                    .await
                    .map(|turn| (turn, lease)),
                Err(()) => None,
            };
            limits
                .metrics
                .write_wait
                .observe(waited.elapsed().as_secs_f64());
            let Some((turn, lease)) = turn else {
                limits
                    .metrics
                    .rejections
                    .with_label_values(&["agent_write_timeout"])
                    .inc();
                return Ok(rejection(ProxyError::Overloaded(
                    "earlier writes to this agent are still running",
                )));
            };
            let resp = match inner.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let held = Held {
                global: Some(global),
                turn: Some(turn),
                lease,
            };
            Ok(resp.map(|b| Watched::new(b, held)))
        }))
    }
}

fn rejection<B: Body + From<Full>>(e: ProxyError) -> Response<Limited<B>> {
    e.to_response()
        .map(|b| Watched::plain(B::from(Full::new(b))))
}

/// The future of [`LimitService`].
pub enum LimitFuture<F, B> {
    /// Nothing to wait for: the inner call, its answer wrapped with what is held.
    Direct { inner: F, held: Option<Held> },
    /// Answered without calling the inner service.
    Ready(Option<Response<Limited<B>>>),
    /// A write waiting for its agent's turn.
    Waiting(Boxed<B>),
}

impl<F, B> Future for LimitFuture<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: Body + Unpin,
{
    type Output = Result<Response<Limited<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            LimitFuture::Direct { inner, held } => {
                let resp = match std::task::ready!(Pin::new(inner).poll(cx)) {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                let held = held.take().expect("polled after completion");
                Poll::Ready(Ok(resp.map(|b| Watched::new(b, held))))
            }
            LimitFuture::Ready(resp) => {
                Poll::Ready(Ok(resp.take().expect("polled after completion")))
            }
            LimitFuture::Waiting(fut) => fut.as_mut().poll(cx),
        }
    }
}
