//! Bodies in both directions, streamed frame by frame and never collected.
//!
//! [`RequestBody`] lets a request whose connection attempt failed go to another
//! backend: the client's body sits in a shared slot and is taken out only when a
//! connected backend first polls it. A connect error means it was never polled,
//! so the next attempt finds it still there; once polled, it is gone, and the
//! request can never be sent twice.
//!
//! [`ResponseBody`] carries the backend's body to the client with the request's
//! in-flight slot and its completion record inside: both end exactly when the
//! body ends, errors, or is dropped because the client left. It also enforces
//! `body_idle_timeout` between frames (no total deadline: streams may be long).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::backend::{Backend, InFlight};
use crate::error::BoxError;
use crate::limit::global::GlobalPermit;
use crate::limit::ordering::WriteTurn;
use crate::proxy::pool::Pooled;

/// What a request holds until its response body ends: its backend slot, its
/// agent's write turn, its place under the global cap.
#[derive(Debug)]
pub struct Holds {
    pub in_flight: InFlight,
    pub write_turn: Option<WriteTurn>,
    pub global: Option<GlobalPermit>,
    /// The upstream connection: back to its pool when the body ended cleanly.
    pub conn: Option<Pooled>,
}

type ClientBody = Limited<InboundBody>;

/// A request body as it reaches the proxy service: straight from the client
/// connection, or already in memory (a layer in front read it, e.g. to hash it).
pub enum InboundBody {
    Incoming(Incoming),
    Buffered(Option<Bytes>),
}

impl From<Incoming> for InboundBody {
    fn from(b: Incoming) -> Self {
        InboundBody::Incoming(b)
    }
}

impl From<Bytes> for InboundBody {
    fn from(b: Bytes) -> Self {
        InboundBody::Buffered(Some(b))
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
            InboundBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            InboundBody::Incoming(b) => b.is_end_stream(),
            InboundBody::Buffered(b) => b.as_ref().is_none_or(|b| b.is_empty()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            InboundBody::Incoming(b) => b.size_hint(),
            InboundBody::Buffered(Some(b)) => SizeHint::with_exact(b.len() as u64),
            InboundBody::Buffered(None) => SizeHint::with_exact(0),
        }
    }
}

/// A client's request body on its way to a backend.
pub struct RequestBody {
    state: ReqState,
    hint: SizeHint,
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

/// The slot shared by every attempt at sending one request.
#[derive(Clone)]
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
        if let InboundBody::Buffered(Some(bytes)) = &body {
            if bytes.len() as u64 <= max {
                let hint = SizeHint::with_exact(bytes.len() as u64);
                return BodySlot {
                    slot: None,
                    replay: Some(bytes.clone()),
                    hint,
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

    /// Whether the body was already taken by an attempt that reached a backend
    /// (a streamed body can then never be sent again).
    pub fn is_spent(&self) -> bool {
        match &self.slot {
            None => false,
            Some(s) => s.lock().expect("body slot poisoned").is_none(),
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
                    // of it is answered 400 and not held against the backend.
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

/// Whether `err` was caused by reading the client's request body.
pub fn is_client_body_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<ClientBodyError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Whether `err` (from the client) was caused by the body exceeding its limit.
pub fn is_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyOutcome {
    /// False when the body failed or was cut short (client gone, backend broke).
    pub ok: bool,
    /// Body bytes handed to the client.
    pub bytes: u64,
}

/// Called exactly once when a response is finished (body ended, failed or dropped).
pub trait OnComplete: Send + 'static {
    fn complete(self: Box<Self>, outcome: BodyOutcome);
}

/// The response a client receives.
pub enum ResponseBody {
    /// A complete body held in memory (proxy-made answers, cache hits).
    Full(Option<Bytes>),
    /// A backend's body, streamed.
    Upstream(Box<Streamed>),
    /// Another body, streamed unchanged while a [`BodyObserver`] sees each
    /// chunk (the cache copying a miss as it goes to the client).
    Observed(Box<Observed>),
}

/// Sees a body pass by without holding it up.
pub trait BodyObserver: Send + 'static {
    /// A data chunk, as it is handed to the client.
    fn data(&mut self, chunk: &Bytes);
    /// Called once: `ok` when the body ended normally, false when it failed or
    /// was dropped before its end (the client went away).
    fn end(self: Box<Self>, ok: bool);
}

/// A body and its observer.
pub struct Observed {
    inner: ResponseBody,
    observer: Option<Box<dyn BodyObserver>>,
}

impl Observed {
    fn finish(&mut self, ok: bool) {
        if let Some(o) = self.observer.take() {
            o.end(ok);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// A backend body in flight, with what must happen when it ends.
pub struct Streamed {
    inner: Incoming,
    idle_timeout: Duration,
    idle: Option<Pin<Box<Sleep>>>,
    /// Released on drop, i.e. when the body ends or the client goes away.
    holds: Option<Holds>,
    on_complete: Option<Box<dyn OnComplete>>,
    /// The backend that produced it (outlives `holds`, for the observation record).
    backend: Arc<Backend>,
    /// Outcome once the body ended (kept for an `on_complete` attached later).
    ended: Option<BodyOutcome>,
    bytes: u64,
}

impl ResponseBody {
    /// A complete in-memory body.
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// A backend's body, keeping `holds` until its end.
    pub fn upstream(inner: Incoming, idle_timeout: Duration, holds: Holds) -> ResponseBody {
        let mut s = Streamed {
            backend: holds.in_flight.backend().clone(),
            inner,
            idle_timeout,
            idle: None,
            holds: Some(holds),
            on_complete: None,
            ended: None,
            bytes: 0,
        };
        if s.inner.is_end_stream() {
            s.finish(true);
        }
        ResponseBody::Upstream(Box::new(s))
    }

    /// The backend whose answer this is (`None` for the proxy's own answers and cache hits).
    pub fn served_by(&self) -> Option<&Arc<Backend>> {
        match self {
            ResponseBody::Full(_) => None,
            ResponseBody::Upstream(s) => Some(&s.backend),
            ResponseBody::Observed(o) => o.inner.served_by(),
        }
    }

    /// Calls `done` once the body has been delivered (at once for in-memory bodies).
    pub fn on_end(&mut self, done: Box<dyn OnComplete>) {
        match self {
            ResponseBody::Full(b) => done.complete(BodyOutcome {
                ok: true,
                bytes: b.as_ref().map_or(0, |b| b.len() as u64),
            }),
            ResponseBody::Upstream(s) => match s.ended {
                Some(outcome) => done.complete(outcome),
                None => s.on_complete = Some(done),
            },
            ResponseBody::Observed(o) => o.inner.on_end(done),
        }
    }

    /// `inner`, with `observer` seeing every chunk and the end.
    pub fn observed(inner: ResponseBody, observer: Box<dyn BodyObserver>) -> ResponseBody {
        let mut o = Observed {
            inner,
            observer: Some(observer),
        };
        // An empty body may never be polled: it has ended already.
        if o.inner.is_end_stream() {
            o.finish(true);
        }
        ResponseBody::Observed(Box::new(o))
    }
}

impl Streamed {
    fn finish(&mut self, ok: bool) {
        if self.ended.is_some() {
            return;
        }
        let outcome = BodyOutcome {
            ok,
            bytes: self.bytes,
        };
        self.ended = Some(outcome);
        if let Some(mut holds) = self.holds.take() {
            // Only a connection whose response was read to the end can carry another.
            if let (true, Some(conn)) = (ok, holds.conn.take()) {
                conn.release();
            }
        }
        self.idle = None;
        if let Some(done) = self.on_complete.take() {
            done.complete(outcome);
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // The client went away (or hyper stopped polling) before the end.
        self.finish(false);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(s) => s.poll_frame(cx),
            ResponseBody::Observed(o) => {
                let polled = Pin::new(&mut o.inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(obs), Some(data)) = (o.observer.as_mut(), frame.data_ref()) {
                            obs.data(data);
                        }
                        if o.inner.is_end_stream() {
                            o.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => o.finish(false),
                    Poll::Ready(None) => o.finish(true),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Upstream(s) => s.ended.is_some() || s.inner.is_end_stream(),
            ResponseBody::Observed(o) => o.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Upstream(s) => s.inner.size_hint(),
            ResponseBody::Observed(o) => o.inner.size_hint(),
        }
    }
}

impl Streamed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended.is_some() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                // hyper stops polling once `is_end_stream()` says so (a body with a
                // Content-Length ends with its last data frame, not with `None`):
                // finish here, or the end would only be seen as a drop.
                if self.inner.is_end_stream() {
                    self.finish(true);
                    return Poll::Ready(Some(Ok(frame)));
                }
                // Progress: push the idle deadline back.
                if let Some(idle) = self.idle.as_mut() {
                    idle.as_mut()
                        .reset((Instant::now() + self.idle_timeout).into());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish(false);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                self.finish(true);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timeout = self.idle_timeout;
                let idle = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if idle.as_mut().poll(cx).is_ready() {
                    self.finish(false);
                    return Poll::Ready(Some(Err(BodyIdleTimeout(timeout).into())));
                }
                Poll::Pending
            }
        }
    }
}

/// The backend went silent inside a response body for longer than `body_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("backend sent nothing for {0:?} inside a response body")]
pub struct BodyIdleTimeout(pub Duration);
