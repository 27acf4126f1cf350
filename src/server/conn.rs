//! One client connection, from its first byte to its close: HTTP/2 when it
//! opens with the HTTP/2 preface (h2c, or `h2` negotiated by ALPN), HTTP/1.1
//! otherwise, and graceful shutdown when the server stops.
//!
//! An HTTP/1 keep-alive connection idle for [`LINGER`] (at once after its
//! first exchange, until the client sends a second request) is *parked*:
//! hyper's connection object (its read and write buffers, ≈ 16 KiB) is ended and
//! dropped, the socket is kept, and a new hyper connection is built when the
//! client sends again. A parked connection holds its socket, its task and a
//! few words of state, as an idle nginx connection does. How the idle moment
//! is recognised is in [`super::transport`]; the last safeguard is here: the
//! socket is reused only when hyper, told to close, ended at once without
//! trying to read, which it does only while it considers itself idle. Any
//! other state (a request body not read to its end) makes it read, drain or
//! finish first, and then the socket is closed, not reused.
//!
//! A parked connection waits at most `server.client_header_timeout` for the
//! next request, as before, when hyper's header-read timer ran from the moment
//! a keep-alive connection went idle.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::service::Connection;
use super::transport::{Activity, ParkIo, Transport};

/// How long an idle HTTP/1 connection keeps hyper's connection (and its
/// buffers) before it is parked. Ending and rebuilding hyper's connection
/// costs about 9,000 instructions (two 8 KiB buffers freed and allocated
/// again, the header map grown again: `benches/instructions.sh`), 17 % of a
/// proxied request; a client that sends again within this time, as a busy
/// one does, does not pay it. One that waits longer (an SDK between two
/// turns, an idle pool connection) is parked.
const LINGER: Duration = Duration::from_millis(100);

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How every client connection is served: built once per listener.
pub struct Settings {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    /// Bounds the wait for the first bytes and, parked, for the next request.
    pub idle_timeout: Duration,
    /// Open client connections, and those of them parked.
    pub open: IntGauge,
    pub parked: IntGauge,
}

/// Serves `io` until the client closes, a timeout or error ends it, or
/// `stop` is cancelled and the exchanges under way have finished.
///
/// Its future is every connection's task, for the connection's whole life,
/// so its size is memory per idle connection: written as a function
/// returning an `async` block (an `async fn` keeps a second copy of its
/// arguments, 160 bytes here), and every value that does not outlive a
/// phase is scoped to it (a named local lives in the state machine until its
/// scope ends, across every later wait): 840 bytes, 1,080 before
/// (`-Zprint-type-sizes`).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of the arguments in every connection's task"
)]
pub fn serve<T, S, B>(
    io: T,
    svc: Connection<S>,
    settings: Arc<Settings>,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send
where
    T: Transport,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes, Error = crate::body::BoxError> + Send + Unpin + 'static,
{
    async move {
        let (mut io, mut svc) = (io, svc);
        let _open = Gauge::inc(&settings.open);
        // Registered once for the connection's whole life, not once per request.
        let mut stopping = pin!(stop.cancelled());

        let (mut prefix, h2) = {
            let first = tokio::select! {
                first = tokio::time::timeout(settings.idle_timeout, sniff(&mut io)) => first,
                _ = stopping.as_mut() => return,
            };
            match first {
                Ok(Ok(first)) => first,
                _ => return,
            }
        };

        if h2 {
            let peer = svc.peer;
            let io = TokioIo::new(ParkIo::new(io, prefix, Arc::default()));
            // Boxed, like the HTTP/1 connection below: inline, HTTP/2's state
            // (≈ 1.7 KB) would be part of every connection's task.
            let mut conn = Box::pin(settings.http2.serve_connection(io, svc));
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                _ = stopping.as_mut() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            return;
        }

        let activity = Arc::new(Activity::default());
        svc.activity = Some(activity.clone());
        // Until the client sent a second request, the connection is not known
        // to be busy: after one exchange it parks as soon as it is idle,
        // without the linger (a client that sends once and keeps the
        // connection, as an SDK's pool does, does not hold the buffers for
        // it; one that sends again at once rebuilds hyper's connection once).
        let mut lingers = false;
        loop {
            activity.restart();
            let peer = svc.peer;
            let stream = TokioIo::new(ParkIo::new(io, prefix, activity.clone()));
            // In a block of its own, which ends taken apart into the loop's
            // own variables: the linger timer and hyper's connection are gone
            // while parked. The connection is boxed, so that a parked
            // connection's task does not keep room for it, and the box is
            // freed with the block: a box moved out of lives on, empty (784
            // bytes), until its variable's scope ends.
            let http1::Parts {
                io: stream,
                read_buf,
                service,
                ..
            } = {
                let mut conn = Box::new(settings.http1.serve_connection(stream, svc));
                let mut shutting_down = false;
                let mut parking = false;
                // Set again at the start of each idle period (counted by requests).
                let mut linger = pin!(tokio::time::sleep(LINGER));
                let mut idle_after = None;
                let ended = poll_fn(|cx| {
                    if !shutting_down && stopping.as_mut().poll(cx).is_ready() {
                        shutting_down = true;
                        std::pin::Pin::new(&mut *conn).graceful_shutdown();
                    }
                    let polled = conn.poll_without_shutdown(cx);
                    if polled.is_ready() || shutting_down || !activity.idle() {
                        return polled;
                    }
                    let requests = activity.requests();
                    if idle_after != Some(requests) {
                        idle_after = Some(requests);
                        linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
                    }
                    if (lingers || requests > 1) && linger.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Idle hyper closes at once on a graceful shutdown, without
                    // trying to read. Anything else (a request body left unread or
                    // still arriving) keeps going, or ends after one more try to
                    // read or drain it, and then the socket is closed, not reused:
                    // its next bytes may be that body.
                    let reads = activity.reads();
                    std::pin::Pin::new(&mut *conn).graceful_shutdown();
                    let closed = conn.poll_without_shutdown(cx);
                    parking = closed.is_ready() && activity.reads() == reads;
                    closed
                })
                .await;
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                    return;
                }
                if !parking {
                    return;
                }
                (*conn).into_parts()
            };
            svc = service;
            lingers = true;
            let (socket, unread) = stream.into_inner().into_parts();
            io = socket;
            prefix = concat(read_buf, unread);
            if !prefix.is_empty() {
                // The start of the next request (pipelined, or half sent): serve it now.
                continue;
            }
            let _parked = Gauge::inc(&settings.parked);
            let woke = tokio::select! {
                woke = tokio::time::timeout(settings.idle_timeout, io.readable()) => woke,
                _ = stopping.as_mut() => return,
            };
            if !matches!(woke, Ok(Ok(()))) {
                // Idle too long (or the socket failed): close it the polite way.
                let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
                return;
            }
        }
    }
}

/// Reads until the first bytes tell HTTP/2's preface from anything else;
/// returns them (to be served again) and whether it is HTTP/2. At most 24
/// bytes, and one read for any HTTP/1 request: its method differs from the
/// preface's `PRI` within the first two bytes.
async fn sniff<T: Transport>(io: &mut T) -> std::io::Result<(Bytes, bool)> {
    let mut buf = BytesMut::with_capacity(PREFACE.len());
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            // Closed before deciding: hyper sees the same bytes and the end.
            return Ok((buf.freeze(), false));
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok((buf.freeze(), false));
        }
        if n == PREFACE.len() {
            return Ok((buf.freeze(), true));
        }
    }
}

/// `first` then `second`; copies only when both hold bytes (rare: hyper had
/// buffered some and the stream still had part of its prefix). An empty
/// result owns nothing: hyper's leftover is a view of its whole read buffer,
/// and keeping an empty view would keep that buffer.
fn concat(first: Bytes, second: Bytes) -> Bytes {
    match (first.is_empty(), second.is_empty()) {
        (true, true) => Bytes::new(),
        (false, true) => first,
        (true, false) => second,
        (false, false) => {
            let mut both = BytesMut::with_capacity(first.len() + second.len());
            both.extend_from_slice(&first);
            both.extend_from_slice(&second);
            both.freeze()
        }
    }
}

/// A gauge raised while this lives.
struct Gauge<'a>(&'a IntGauge);

impl<'a> Gauge<'a> {
    fn inc(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
