//! The body the proxy answers with, and what a backend's answer holds until
//! its end: the backend's in-flight slot and the connection it came on.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::backend::pool::Pooled;
use crate::backend::{Backend, InFlight};
use crate::body::{BoxError, Full, IdleTimeout, Outcome, Watch, Watched};

/// What a backend's answer holds until its body ends.
pub struct UpstreamHold {
    /// The backend's slot: released when this drops (the queue's head is woken).
    pub in_flight: InFlight,
    /// The connection: back to its pool only after a body that ended cleanly.
    pub conn: Option<Pooled>,
    /// The origin of the backends' monotonic clock (`Upstreams::epoch`).
    pub clock: Instant,
    /// When the proxy took the request (for the backend's stats window).
    pub since: Instant,
    /// The answer's status (a 5xx counts as a failure in the window).
    pub status: u16,
}

impl Watch for UpstreamHold {
    fn finish(mut self, outcome: Outcome) {
        let backend: &Arc<Backend> = self.in_flight.backend();
        // Only a connection whose answer was read to the end can carry another.
        if let (true, Some(conn)) = (outcome.complete, self.conn.take()) {
            conn.release();
        }
        if !outcome.complete {
            backend.metrics.body_errors.inc();
        }
        let failed = self.status >= 500 || !outcome.complete;
        let now = self.clock.elapsed().as_nanos() as u64;
        backend.window.record(now, self.since.elapsed(), failed);
        // `in_flight` drops here: the slot is free once everything above is recorded.
    }
}

/// A backend's body as relayed: silence longer than `body_idle_timeout` fails it.
pub type Upstream = Watched<IdleTimeout<Incoming>, UpstreamHold>;

/// What the proxy answers with: a backend's streamed body, or its own answer.
pub enum ProxyBody {
    Full(Full),
    Upstream(Upstream),
}

impl ProxyBody {
    /// A backend's body, holding `hold` until it ends.
    pub fn upstream(body: Incoming, idle: Duration, hold: UpstreamHold) -> ProxyBody {
        ProxyBody::Upstream(Watched::new(IdleTimeout::new(body, idle), hold))
    }
}

impl From<Full> for ProxyBody {
    fn from(f: Full) -> Self {
        ProxyBody::Full(f)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Upstream(b) => b.size_hint(),
        }
    }
}
