//! A complete body held in memory.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;

/// A complete in-memory body: one data frame, then the end.
#[derive(Debug, Clone, Default)]
pub struct Full(Option<Bytes>);

impl Full {
    /// A body of `bytes` (empty bytes: an empty body).
    pub fn new(bytes: impl Into<Bytes>) -> Full {
        let b: Bytes = bytes.into();
        Full((!b.is_empty()).then_some(b))
    }

    /// The bytes not yet polled.
    pub fn bytes(&self) -> Option<&Bytes> {
        self.0.as_ref()
    }
}

/// For the layers that answer by themselves (hygiene, catch-panic) in front
/// of axum routes.
impl From<Full> for axum::body::Body {
    fn from(full: Full) -> axum::body::Body {
        match full.0 {
            Some(bytes) => axum::body::Body::from(bytes),
            None => axum::body::Body::empty(),
        }
    }
}

impl Body for Full {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Never constructed: lets `Infallible`-erroring bodies convert.
impl From<Infallible> for Full {
    fn from(never: Infallible) -> Full {
        match never {}
    }
}
