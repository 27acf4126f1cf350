//! A request body as it enters the proxy's stack.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::BoxError;

/// A request body: straight from the client connection, or already in memory
/// because a layer in front read it (the cache hashes small write bodies).
pub enum InboundBody {
    /// From hyper's connection, as the standalone server hands it over (no box).
    Incoming(hyper::body::Incoming),
    /// Through axum (an application's router, the gateway's own router).
    Stream(axum::body::Body),
    Buffered(Option<Bytes>),
}

impl InboundBody {
    /// An empty body.
    pub fn empty() -> InboundBody {
        InboundBody::Buffered(None)
    }

    /// The whole body, when it is in memory.
    pub fn buffered(&self) -> Option<&Bytes> {
        match self {
            InboundBody::Buffered(b) => b.as_ref(),
            InboundBody::Incoming(_) | InboundBody::Stream(_) => None,
        }
    }
}

impl From<axum::body::Body> for InboundBody {
    fn from(b: axum::body::Body) -> Self {
        InboundBody::Stream(b)
    }
}

impl From<hyper::body::Incoming> for InboundBody {
    fn from(b: hyper::body::Incoming) -> Self {
        InboundBody::Incoming(b)
    }
}

impl From<Bytes> for InboundBody {
    fn from(b: Bytes) -> Self {
        InboundBody::Buffered((!b.is_empty()).then_some(b))
    }
}

impl Body for InboundBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            InboundBody::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            InboundBody::Stream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            InboundBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InboundBody::Incoming(b) => b.is_end_stream(),
            InboundBody::Stream(b) => b.is_end_stream(),
            InboundBody::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InboundBody::Incoming(b) => b.size_hint(),
            InboundBody::Stream(b) => b.size_hint(),
            InboundBody::Buffered(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
