//! The gateway as the standalone server runs it: a request for a proxy-owned
//! path goes to the router, any other straight to the forwarding stack, the
//! very service that is the router's fallback.
//!
//! Going to the stack directly skips what the router adds around its fallback
//! (a boxed clone of the service per request, a boxed future, the request and
//! response bodies converted to axum's boxed body): about 0.3 µs per proxied
//! request (`cargo bench --bench stack`), which the layered stack had to give
//! back to stay within issue 13's budget. An application embedding the
//! gateway uses the router itself; both see the same stack.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::routing::future::RouteFuture;
use axum::Router;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tower::Service;

use crate::body::InboundBody;

/// Whether the router has a route of its own for `path` (else its fallback,
/// the stack, answers). Must match the routes in `stack::finish`.
pub(crate) fn is_owned(path: &str) -> bool {
    path == "/metrics" || path.starts_with("/-/")
}

/// The router for the proxy-owned paths and the stack for the rest.
#[derive(Clone)]
pub struct Switch<S> {
    router: Router,
    stack: S,
}

impl<S> Switch<S> {
    pub(super) fn new(router: Router, stack: S) -> Switch<S> {
        Switch { router, stack }
    }
}

impl<S, B> Service<Request<Incoming>> for Switch<S>
where
    S: Service<Request<InboundBody>, Response = Response<B>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<Either<axum::body::Body, B>>;
    type Error = Infallible;
    type Future = SwitchFuture<S::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (the router's services are, and the stack's
        // layers wait inside their futures, never in `poll_ready`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        if is_owned(req.uri().path()) {
            EitherFuture::Left(Box::new(self.router.call(req)))
        } else {
            EitherFuture::Right(self.stack.call(req.map(InboundBody::Incoming)))
        }
    }
}

/// With the cache on or off the stack has a different type (the cache is
/// absent from it when off): one of the two.
#[derive(Clone)]
pub enum Front<A, B> {
    Cached(Switch<A>),
    Plain(Switch<B>),
}

impl<A, B, BA, BB> Service<Request<Incoming>> for Front<A, B>
where
    A: Service<Request<InboundBody>, Response = Response<BA>, Error = Infallible>,
    B: Service<Request<InboundBody>, Response = Response<BB>, Error = Infallible>,
    A::Future: Unpin,
    B::Future: Unpin,
{
    type Response = Response<Either<Either<axum::body::Body, BA>, Either<axum::body::Body, BB>>>;
    type Error = Infallible;
    type Future = EitherFuture<SwitchFuture<A::Future>, SwitchFuture<B::Future>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        match self {
            Front::Cached(s) => EitherFuture::Left(s.call(req)),
            Front::Plain(s) => EitherFuture::Right(s.call(req)),
        }
    }
}

/// The future of [`Switch`]: the router's (boxed: it is large, and the
/// proxy-owned paths are not the hot path) or the stack's.
pub type SwitchFuture<F> = EitherFuture<Box<RouteFuture<Infallible>>, F>;

/// The future of [`Switch`] and of [`Front`]: one of two services' futures,
/// its response body tagged with the side it came from.
pub enum EitherFuture<A, B> {
    Left(A),
    Right(B),
}

impl<A, B, BA, BB> Future for EitherFuture<A, B>
where
    A: Future<Output = Result<Response<BA>, Infallible>> + Unpin,
    B: Future<Output = Result<Response<BB>, Infallible>> + Unpin,
{
    type Output = Result<Response<Either<BA, BB>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            EitherFuture::Left(f) => Pin::new(f)
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(Either::Left))),
            EitherFuture::Right(f) => Pin::new(f)
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(Either::Right))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_owned;

    #[test]
    fn owned_paths_are_exactly_the_routers_routes() {
        for owned in ["/metrics", "/-/", "/-/batch", "/-/ready", "/-/x/y"] {
            assert!(is_owned(owned), "{owned}");
        }
        // Everything else is the fallback's, as in the router (matchit matches
        // whole paths, so these reach the fallback there too).
        for forwarded in [
            "/metrics/",
            "/metricsx",
            "/-",
            "/v1/agents/",
            "/",
            "/%2D/ready",
        ] {
            assert!(!is_owned(forwarded), "{forwarded}");
        }
    }
}
