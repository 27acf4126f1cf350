//! One client connection's service: the gateway's, with the client's address
//! in each request's extensions (axum's `ConnectInfo`, as `axum::serve`
//! does), over HTTPS the [`ClientTls`] marker, and, on HTTP/1, each request
//! counted in flight until its response body ends, so that the connection
//! driver knows when the connection is idle ([`super::transport`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ConnectInfo;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::transport::{Activity, InFlight};
use crate::tls::ClientTls;

#[derive(Clone)]
pub struct Connection<S> {
    pub gateway: S,
    pub peer: SocketAddr,
    pub tls: Option<ClientTls>,
    /// Set on HTTP/1 connections, whose driver parks them when idle.
    pub activity: Option<Arc<Activity>>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Connection<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone,
{
    type Response = Response<Tracked<B>>;
    type Error = S::Error;
    type Future = Track<S::Future>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.peer));
        if let Some(tls) = self.tls {
            req.extensions_mut().insert(tls);
        }
        Track {
            guard: self.activity.as_ref().map(Activity::request),
            // Boxed: hyper keeps one slot of the future's size per
            // connection, and the stack's future is large.
            inner: Box::pin(self.gateway.clone().call(req)),
        }
    }
}

/// The gateway's response future, holding the request's [`InFlight`] guard
/// until it hands the guard to the response body.
pub struct Track<F> {
    inner: Pin<Box<F>>,
    guard: Option<InFlight>,
}

impl<F, B, E> Future for Track<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Tracked<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = ready!(this.inner.as_mut().poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| Tracked {
            inner,
            _guard: guard,
        })))
    }
}

/// A response body that holds its request's [`InFlight`] guard until hyper
/// drops it (hyper drops a body once it has written its end, or gave up).
/// Not the project's `Watched` body, which would serve: it counts bytes and
/// checks for the end on every frame, +1 % instructions per proxied GET
/// (`benches/instructions.sh`, 53,464–53,580 against 52,985–53,002), for an
/// outcome nobody reads here.
pub struct Tracked<B> {
    inner: B,
    _guard: Option<InFlight>,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
