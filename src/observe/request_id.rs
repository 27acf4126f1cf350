//! `x-request-id`: kept when the client sent one, generated otherwise, sent to
//! the backend and returned on the answer ([`RequestIdLayer`]).
//!
//! tower-http's `SetRequestId` + `PropagateRequestId` did the same and also
//! stored the id in the request's and the response's extensions, which
//! nothing here reads: three allocations per request for it (an extension box
//! each way and the response's extension table), ≈ 4 % of a proxied GET's
//! instructions with their two futures (`benches/instructions.sh`).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

/// `x-request-id`.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an `x-request-id` and returns it on the answer, unless
/// the answer names one of its own (a backend's).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;

    fn layer(&self, inner: S) -> RequestIdService<S> {
        RequestIdService { inner }
    }
}

/// [`RequestIdLayer`] around `S`.
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestIdService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Unpin,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = new_request_id();
                req.headers_mut().insert(REQUEST_ID.clone(), id.clone());
                id
            }
        };
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

/// The inner future, then the id on its answer.
pub struct RequestIdFuture<F> {
    inner: F,
    id: Option<HeaderValue>,
}

impl<F, B, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut resp = ready!(Pin::new(&mut self.inner).poll(cx))?;
        if let Some(id) = self.id.take() {
            if !resp.headers().contains_key(&REQUEST_ID) {
                resp.headers_mut().insert(REQUEST_ID.clone(), id);
            }
        }
        Poll::Ready(Ok(resp))
    }
}

/// 32 lowercase hex digits (128 random bits) from a per-thread RNG: no lock,
/// no syscall per request (a UUID crate would add a dependency for the same).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let raw: [u8; 16] = crate::proxy::with_rng(rand::Rng::random);
    let mut out = [0u8; 32];
    for (i, b) in raw.iter().enumerate() {
        out[2 * i] = HEX[(b >> 4) as usize];
        out[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
    // Shared from the start: the id is cloned onto the response, the backend's
    // request and the log record, and a copied buffer would be moved to a
    // shared one (a second allocation) on its first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(out))
        .expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Answers with the id it was sent in `x-seen`, and with `answer_id` as its own id.
    async fn exchange(
        sent: Option<&'static str>,
        answer_id: Option<&'static str>,
    ) -> (String, String) {
        // Boxed: the layer takes the stack's `Unpin` futures.
        let inner = tower::service_fn(move |req: Request<()>| {
            let seen = req.headers()[&REQUEST_ID].clone();
            let mut resp = Response::new(());
            resp.headers_mut().insert("x-seen", seen);
            if let Some(id) = answer_id {
                resp.headers_mut()
                    .insert(&REQUEST_ID, HeaderValue::from_static(id));
            }
            Box::pin(async move { Ok::<_, std::convert::Infallible>(resp) })
        });
        let mut req = Request::new(());
        if let Some(id) = sent {
            req.headers_mut()
                .insert(&REQUEST_ID, HeaderValue::from_static(id));
        }
        let resp = RequestIdLayer.layer(inner).oneshot(req).await.unwrap();
        let text = |name: &str| resp.headers()[name].to_str().unwrap().to_string();
        (text("x-seen"), text("x-request-id"))
    }

    #[tokio::test]
    async fn ids_are_made_kept_and_returned() {
        let (seen, returned) = exchange(None, None).await;
        assert_eq!(seen.len(), 32);
        assert_eq!(returned, seen, "the generated id goes both ways");
        assert_eq!(
            exchange(Some("req-42"), None).await,
            ("req-42".into(), "req-42".into())
        );
        // An answer that names its own id keeps it.
        assert_eq!(
            exchange(Some("req-42"), Some("backend-7")).await.1,
            "backend-7"
        );
    }

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, new_request_id());
    }
}
