//! A client connection's byte stream as hyper sees it, with what the
//! connection driver ([`super::conn`]) needs to know to put an idle HTTP/1
//! connection to sleep without its buffers.
//!
//! hyper keeps a read buffer (8 KiB and up) and a write buffer (8 KiB) for as
//! long as a connection lives, and has no setting to let go of them between
//! requests; 10,000 idle keep-alive clients cost ≈ 180 MiB that way. nginx
//! frees its request buffers when a keep-alive connection goes idle and waits
//! for the next byte with nothing but the socket. The driver does the same by
//! ending hyper's connection object at an idle moment and building a new one
//! when bytes arrive; to know the moment is idle it must see what hyper did
//! last on the socket, which only the stream hyper reads and writes can tell:
//!
//! - the last read came back `Pending` (hyper wants bytes the client has not
//!   sent), and
//! - everything hyper wrote has been flushed (hyper flushes its stream only
//!   once its own write buffer is empty).
//!
//! The other half, "no request is in flight", is counted by the service
//! ([`super::service`]). Bytes hyper had read but not parsed when its
//! connection ended come back to [`ParkIo::new`] as a prefix, served before
//! the socket, so a pipelined or half-sent request is never lost.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client socket the driver can wait on without reading from it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves when the socket has bytes to read, or was closed.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

impl Transport for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

/// Waits on the TCP socket under TLS. When hyper's read came back `Pending`,
/// rustls had no plaintext left (tokio-rustls returns what it has before it
/// asks the socket again); a partial record stays inside rustls, in the
/// stream that is kept.
impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.get_ref().0.readable()
    }
}

/// What one connection's stream, service and driver share. Everything runs
/// in the connection's task (hyper polls the service's future and the
/// response body there), so relaxed atomics suffice; they are atomics only
/// because the task must be `Send`.
#[derive(Debug, Default)]
pub struct Activity {
    /// The last read of the stream came back `Pending`.
    read_pending: AtomicBool,
    /// Reads hyper asked for (whatever they returned): whether hyper tried
    /// to read between two moments.
    reads: AtomicUsize,
    /// Bytes were written since the last completed flush.
    write_dirty: AtomicBool,
    /// Requests handed to the service by the current hyper connection.
    started: AtomicUsize,
    /// Requests whose response (body included) has not ended.
    in_flight: AtomicUsize,
}

impl Activity {
    /// True when hyper is between two requests with nothing held: waiting for
    /// the next request's bytes, everything written flushed, no response
    /// under way, and at least one exchange done (before the first, hyper
    /// does not count the connection as idle, and ending it would turn the
    /// first request's keep-alive off).
    pub fn idle(&self) -> bool {
        self.read_pending.load(Ordering::Relaxed)
            && !self.write_dirty.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.started.load(Ordering::Relaxed) > 0
    }

    /// Requests handed to the service by the current hyper connection.
    pub fn requests(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// How many reads hyper asked for so far.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// A new hyper connection starts on the stream.
    pub fn restart(&self) {
        self.started.store(0, Ordering::Relaxed);
        self.read_pending.store(false, Ordering::Relaxed);
    }

    /// A request reached the service; in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A read of the stream returned, or came back `Pending`.
    fn read(&self, pending: bool) {
        self.read_pending.store(pending, Ordering::Relaxed);
        // Not `fetch_add`: only this connection's task writes it.
        let reads = self.reads.load(Ordering::Relaxed);
        self.reads.store(reads.wrapping_add(1), Ordering::Relaxed);
    }
}

/// One request in flight on a connection: dropped with its response body
/// (or with the response future, when the client went away first).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stream under one hyper connection: unparsed bytes the previous hyper
/// connection left (served first), then the socket; each read and write
/// noted in [`Activity`].
pub struct ParkIo<T> {
    prefix: Bytes,
    io: T,
    activity: Arc<Activity>,
}

impl<T> ParkIo<T> {
    pub fn new(io: T, prefix: Bytes, activity: Arc<Activity>) -> Self {
        ParkIo {
            prefix,
            io,
            activity,
        }
    }

    /// The socket back, with the prefix if nothing read it.
    pub fn into_parts(self) -> (T, Bytes) {
        (self.io, self.prefix)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ParkIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.activity.read(false);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.activity.read(polled.is_pending());
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ParkIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.write_dirty.store(true, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.activity.write_dirty.store(true, Ordering::Relaxed);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.activity.write_dirty.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
