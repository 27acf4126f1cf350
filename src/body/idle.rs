//! `body_idle_timeout`: the longest silence allowed inside a response body.
//! There is no total deadline: an SSE stream may last as long as it talks.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::BoxError;

/// The backend went silent inside a response body for longer than `body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("backend sent nothing for {0:?} inside a response body")]
pub struct BodyIdleTimeout(pub Duration);

/// `inner`, failed with [`BodyIdleTimeout`] when no frame arrives for `timeout`.
pub struct IdleTimeout<B> {
    inner: B,
    timeout: Duration,
    /// Armed the first time the body is pending (most bodies never are), then reset.
    idle: Option<Pin<Box<Sleep>>>,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, timeout: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            timeout,
            idle: None,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(idle) = this.idle.as_mut() {
                    // Progress: push the deadline back.
                    idle.as_mut().reset((Instant::now() + this.timeout).into());
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyIdleTimeout(timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
