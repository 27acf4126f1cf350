//! The forwarding stack (a `tower::ServiceBuilder` of the project's layers
//! around the proxy) and the axum router around it.
//!
//! Every layer of the stack is inside the router's fallback service, none is
//! added with `Router::layer`: axum boxes a route again for each such layer,
//! which measured about a fifth of the stack's cost per request
//! (`cargo bench --bench stack`). `/-/batch` sub-requests go through the same
//! stack, hygiene included.

use std::convert::Infallible;

use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use super::front::{Front, Switch};
use super::hygiene::HygieneLayer;
use super::panic::CatchPanicLayer;
use super::{batch, endpoints, Gateway, Parts};
use crate::body::{BoxError, Full, InboundBody};
use crate::limit::LimitLayer;
use crate::observe::request_id::RequestIdLayer;
use crate::observe::ObserveLayer;

/// The stack boxed once, for `/-/batch` sub-requests (the router's fallback
/// keeps the concrete type: no box per forwarded request for it).
pub(crate) type Dispatch =
    BoxCloneSyncService<Request<InboundBody>, Response<axum::body::Body>, Infallible>;

/// The router: proxy-owned paths, then the stack around `inner`.
pub(super) fn router<S, B>(g: &Gateway, inner: S) -> Router
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = Bytes, Error = BoxError> + From<Full> + Send + Unpin + 'static,
{
    let p = &g.parts;
    // The cache is absent from the stack when off (not a layer that passes through).
    match &p.cache {
        Some(cache) => finish(g, layered(p, cache.layer().layer(inner))),
        None => finish(g, layered(p, inner)),
    }
}

/// The standalone server's service: the router for the proxy-owned paths,
/// the stack it falls back to for the rest (see [`super::front`]).
pub(super) fn front(
    g: &Gateway,
) -> impl Service<
    Request<hyper::body::Incoming>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    let p = &g.parts;
    let proxy = p.proxy.clone();
    match &p.cache {
        Some(cache) => {
            let stack = layered(p, cache.layer().layer(proxy));
            Front::Cached(Switch::new(finish(g, stack.clone()), stack))
        }
        None => {
            let stack = layered(p, proxy);
            Front::Plain(Switch::new(finish(g, stack.clone()), stack))
        }
    }
}

/// The headers whose values no log may print.
fn credentials() -> impl Iterator<Item = HeaderName> {
    crate::identity::IDENTITY
        .iter()
        .filter(|(n, _)| {
            matches!(
                *n,
                "authorization"
                    | "x-bare-password"
                    | "cookie"
                    | "proxy-authorization"
                    | "x-api-key"
                    | "anthropic-api-key"
            )
        })
        .map(|(n, _)| HeaderName::from_static(n))
}

/// The project's layers around `inner` (the proxy, or the cache around it):
/// catch-panic, hygiene, request ids, sensitive headers, observation, limits.
fn layered<S, B>(
    p: &Parts,
    inner: S,
) -> impl Service<
    Request<InboundBody>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static>,
    Error = Infallible,
    Future: Send + Unpin + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + Unpin + 'static,
    B: Body<Data = Bytes, Error = BoxError> + From<Full> + Send + Unpin + 'static,
{
    ServiceBuilder::new()
        .layer(CatchPanicLayer)
        .layer(HygieneLayer::new(p.config.clone()))
        .layer(RequestIdLayer)
        .layer(SetSensitiveRequestHeadersLayer::new(credentials()))
        .layer(ObserveLayer::new(p.recorder.clone()))
        .layer(LimitLayer::new(p.limits.clone()))
        .service(inner)
}

fn finish<T, B>(g: &Gateway, stack: T) -> Router
where
    T: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
    B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
{
    let boxed = stack
        .clone()
        .map_response(|r: Response<B>| r.map(axum::body::Body::new));
    let _ = g.parts.dispatch.set(BoxCloneSyncService::new(boxed));
    let fallback = stack.map_request(|req: Request<axum::body::Body>| req.map(InboundBody::from));
    Router::new()
        .route("/metrics", any(endpoints::metrics))
        .route("/-/batch", any(batch::handle))
        .route("/-/", any(endpoints::owned))
        .route("/-/{*path}", any(endpoints::owned))
        // The proxy's own paths get the rules the stack applies to the rest
        // (`route_layer`: the fallback is not wrapped again).
        .route_layer(HygieneLayer::new(g.parts.config.clone()))
        .route_layer(CatchPanicLayer)
        .fallback_service(fallback)
        .with_state(g.clone())
}

impl Gateway {
    /// Sends one request through the stack (cache, limits, balancer,
    /// retries), observed like any other: what `/-/batch` does per sub-request.
    pub async fn dispatch(&self, req: Request<InboundBody>) -> Response<axum::body::Body> {
        let svc = match self.parts.dispatch.get() {
            Some(s) => s.clone(),
            None => {
                // The router was never built: build it once to get the stack.
                let _ = self.router();
                self.parts.dispatch.get().expect("set by router()").clone()
            }
        };
        match svc.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}
