//! A panic while a request is handled answers 500 for that request alone: the
//! connection, every other request and every stream go on (release builds
//! unwind, see `Cargo.toml`).
//!
//! tower-http's `CatchPanicLayer` does the same, but boxes every response body
//! to fit its own answer in beside the inner one; in front of the forwarding
//! stack that box (and the one axum then adds on top of it) cost about a tenth
//! of the stack's time per request (`cargo bench --bench stack`). This layer
//! answers with the stack's own body type instead, so nothing is boxed.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::body::Full;

/// Catches panics of the inner service's `call` and of its future.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// See [`CatchPanicLayer`].
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S, R, B> Service<Request<R>> for CatchPanic<S>
where
    S: Service<Request<R>, Response = Response<B>, Error = Infallible>,
    S::Future: Unpin,
    B: From<Full>,
{
    type Response = Response<B>;
    type Error = Infallible;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<R>) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => CatchPanicFuture::Running(future),
            Err(panic) => CatchPanicFuture::Panicked(Some(panic)),
        }
    }
}

/// The future of [`CatchPanic`].
pub enum CatchPanicFuture<F> {
    Running(F),
    /// `call` itself panicked.
    Panicked(Option<Box<dyn Any + Send + 'static>>),
}

impl<F, B> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>> + Unpin,
    B: From<Full>,
{
    type Output = Result<Response<B>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let panic = match &mut *self {
            CatchPanicFuture::Running(future) => {
                match catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(cx))) {
                    Ok(poll) => return poll,
                    Err(panic) => panic,
                }
            }
            CatchPanicFuture::Panicked(panic) => panic.take().expect("polled after completion"),
        };
        // The panicked future is dropped now, not when this one is.
        *self = CatchPanicFuture::Panicked(None);
        Poll::Ready(Ok(panicked(panic).map(B::from)))
    }
}

/// The 500 answer, after logging what panicked.
fn panicked(panic: Box<dyn Any + Send + 'static>) -> Response<Full> {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request panicked; answered 500");
    let body = serde_json::json!({
        "error": {"kind": "internal", "message": "the proxy failed on this request"}
    });
    let mut r = Response::new(Full::new(body.to_string()));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
