//! The forwarding stack (a `tower::ServiceBuilder` of the project's layers
//! around the proxy) and the axum router around it.

use std::any::Any;
use std::convert::Infallible;

use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use super::hygiene::HygieneLayer;
use super::{batch, endpoints, Gateway, Parts};
use crate::body::{BoxError, Full, InboundBody};
use crate::limit::LimitLayer;
use crate::observe::request_id::{RandomId, REQUEST_ID};
use crate::observe::ObserveLayer;

/// The stack boxed once, for `/-/batch` sub-requests (the router's fallback
/// keeps the concrete type: no box per forwarded request for it).
pub(crate) type Dispatch =
    BoxCloneSyncService<Request<InboundBody>, Response<axum::body::Body>, Infallible>;

/// The router: proxy-owned paths, then the stack around `inner`, inside
/// hygiene and catch-panic.
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

/// The project's layers around `inner` (the proxy, or the cache around it).
fn layered<S, B>(
    p: &Parts,
    inner: S,
) -> impl Service<
    Request<InboundBody>,
    Response = Response<impl Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static>,
    Error = Infallible,
    Future: Send + 'static,
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
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), RandomId))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
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
        .fallback_service(fallback)
        .with_state(g.clone())
        .layer(HygieneLayer::new(g.parts.config.clone()))
        .layer(CatchPanicLayer::custom(panicked))
}

/// A panic answers 500 for its own request; the connection and every other
/// request and stream go on (release builds unwind).
fn panicked(err: Box<dyn Any + Send + 'static>) -> Response<Full> {
    let what = err
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request panicked; answered 500");
    let body = serde_json::json!({
        "error": {"kind": "internal", "message": "the proxy failed on this request"}
    });
    let mut r = Response::new(Full::new(body.to_string()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
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
