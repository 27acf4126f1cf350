//! The request body on its way to a backend.
//!
//! [`RequestBody`] lets a request whose connection attempt failed go to another
//! backend: the client's body sits in a shared [`BodySlot`] and is taken out only
//! when a connected backend first polls it. A connect error means it was never
//! polled, so the next attempt finds it still there; once polled, it is gone,
//! and the request can never be sent twice. Bodies held in memory (small safe
//! requests, kept for a retry) can be sent by every attempt.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};

use super::{BoxError, InboundBody};

type ClientBody = Limited<InboundBody>;

/// The slot shared by every attempt at sending one request.
pub struct BodySlot {
    slot: Option<Arc<Mutex<Option<ClientBody>>>>,
    replay: Option<Bytes>,
    hint: SizeHint,
}

impl BodySlot {
    /// Wraps the client's body, limited to `max` bytes.
    pub fn new(body: InboundBody, max: u64) -> BodySlot {
        if body.is_end_stream() {
            return BodySlot {
                slot: None,
                replay: None,
                hint: SizeHint::with_exact(0),
            };
        }
        if let Some(bytes) = body.buffered() {
            if bytes.len() as u64 <= max {
                return BodySlot {
                    slot: None,
                    replay: Some(bytes.clone()),
                    hint: SizeHint::with_exact(bytes.len() as u64),
                };
            }
        }
        let hint = body.size_hint();
        let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
        BodySlot {
            slot: Some(Arc::new(Mutex::new(Some(limited)))),
            replay: None,
            hint,
        }
    }

    /// Whether every attempt can send the whole body (empty or held in memory).
    pub fn is_replayable(&self) -> bool {
        self.slot.is_none()
    }

    /// A body for one attempt.
    pub fn attempt(&self) -> RequestBody {
        let state = match (&self.slot, &self.replay) {
            (Some(s), _) => ReqState::Waiting(s.clone()),
            (None, Some(b)) => ReqState::Replay(Some(b.clone())),
            (None, None) => ReqState::Empty,
        };
        RequestBody {
            state,
            hint: self.hint,
        }
    }
}

/// A client's request body as one attempt sends it.
pub struct RequestBody {
    state: ReqState,
    hint: SizeHint,
}

impl RequestBody {
    /// A request without a body (health probes).
    pub fn empty() -> RequestBody {
        RequestBody {
            state: ReqState::Empty,
            hint: SizeHint::with_exact(0),
        }
    }
}

enum ReqState {
    Empty,
    /// A body kept in memory so a safe request can be sent again.
    Replay(Option<Bytes>),
    /// Not yet taken from the slot (nothing sent yet).
    Waiting(Arc<Mutex<Option<ClientBody>>>),
    Taken(ClientBody),
    Done,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                ReqState::Empty | ReqState::Done => return Poll::Ready(None),
                ReqState::Replay(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
                ReqState::Waiting(slot) => {
                    let taken = slot.lock().expect("body slot poisoned").take();
                    this.state = match taken {
                        Some(body) => ReqState::Taken(body),
                        // Another attempt took it: this one must not send anything.
                        None => return Poll::Ready(Some(Err("request body already sent".into()))),
                    };
                }
                ReqState::Taken(body) => {
                    let frame = ready!(Pin::new(body).poll_frame(cx));
                    if frame.is_none() {
                        this.state = ReqState::Done;
                    }
                    // Marked as the client's fault, so the exchange failing because
                    // of it is answered 400 (or 413) and not held against the backend.
                    return Poll::Ready(
                        frame.map(|f| f.map_err(|e| Box::new(ClientBodyError(e)) as BoxError)),
                    );
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            ReqState::Empty | ReqState::Done => true,
            ReqState::Replay(b) => b.is_none(),
            ReqState::Waiting(_) => false,
            ReqState::Taken(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// Reading the client's request body failed (malformed chunking, the client
/// went away, the size limit): the client's fault, not the backend's.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct ClientBodyError(#[source] pub BoxError);

/// What in `err`'s chain was the client's fault, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The body was larger than `server.max_body_size`.
    TooLarge,
    /// The body could not be read.
    Unreadable,
}

/// Whether `err` was caused by reading the client's request body, and how.
pub fn client_fault(err: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut client = false;
    while let Some(e) = cur {
        if e.is::<LengthLimitError>() {
            return Some(ClientFault::TooLarge);
        }
        client |= e.is::<ClientBodyError>();
        cur = e.source();
    }
    client.then_some(ClientFault::Unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_streamed_body_goes_to_the_first_attempt_that_polls_it_only() {
        let slot = BodySlot::new(InboundBody::Stream(axum::body::Body::from("abc")), 100);
        assert!(!slot.is_replayable());
        let unpolled = slot.attempt();
        drop(unpolled);
        let first = slot.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(first, "abc");
        let second = slot.attempt().collect().await;
        assert!(second.is_err(), "never sent twice");
    }

    #[tokio::test]
    async fn a_body_in_memory_goes_to_every_attempt() {
        let slot = BodySlot::new(InboundBody::from(Bytes::from("abc")), 100);
        assert!(slot.is_replayable());
        for _ in 0..2 {
            assert_eq!(slot.attempt().collect().await.unwrap().to_bytes(), "abc");
        }
    }

    #[tokio::test]
    async fn too_large_is_the_clients_fault() {
        let slot = BodySlot::new(InboundBody::Stream(axum::body::Body::from("abcdef")), 3);
        let err = slot.attempt().collect().await.unwrap_err();
        assert_eq!(client_fault(&*err), Some(ClientFault::TooLarge));
        let other: BoxError = "backend reset".into();
        assert_eq!(client_fault(&*other), None);
    }
}
