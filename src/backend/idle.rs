//! The idle HTTP/1.1 connections of one backend, and how an idle plain-TCP
//! connection gives up hyper's connection while it waits.
//!
//! A hyper client connection holds two 8 KiB buffers and a task for its whole
//! life. After a burst the pool keeps up to `pool_max_idle_per_backend` of
//! them idle (nginx's `keepalive` does the same, at a few hundred bytes each):
//! a few hundred after `benches/memory.sh`'s connect burst (337, ≈ 7 MB, in
//! one heap profile). So a connection idle for [`LINGER`] is *parked*, as the
//! server side parks an idle client connection (`server::conn`): its sender
//! is dropped, hyper's connection ends without shutting the socket
//! ([`http1::Connection::without_shutdown`]) and hands it back, and only the
//! socket is kept. The next checkout that finds
//! no live idle connection takes a parked socket, checks it is still open and
//! silent, and builds a new hyper connection on it (no bytes are exchanged
//! for that). A busy backend's connections come back within the linger and
//! are never parked. TLS connections stay live until they expire: their
//! state is in the TLS stream, not in hyper.
//!
//! Both stacks are LIFO (the warmest first); the oldest sit at the bottom,
//! where the sweep parks and expires them. The sweep is one task per pool,
//! running only while the pool holds idle connections.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::slot::RequestBody;

/// How long an idle connection keeps hyper's connection before it is parked.
/// Rebuilding one costs its buffers and task again; a connection that is
/// taken again within this time, as on a busy backend, does not pay it.
pub const LINGER: Duration = Duration::from_millis(100);

/// An HTTP/1.1 connection's sender; `park` is there for a plain-TCP
/// connection, whose task hands its socket back to the pool once the pool
/// sets it (to the moment the connection went idle) and drops the sender.
pub struct H1 {
    pub sender: http1::SendRequest<RequestBody>,
    park: Option<Arc<OnceLock<Instant>>>,
}

impl H1 {
    /// A connection that is never parked (TLS).
    pub fn live(sender: http1::SendRequest<RequestBody>) -> H1 {
        H1 { sender, park: None }
    }
}

/// What [`Idle::take`] found.
pub enum Taken {
    Live(H1),
    /// An open socket without a hyper connection: hand it to [`Idle::handshake`].
    Parked(TcpStream),
}

/// The idle connections of one backend.
pub struct Idle {
    stacks: Mutex<Stacks>,
    idle_timeout: Duration,
    max_idle: usize,
}

#[derive(Default)]
struct Stacks {
    live: Vec<(H1, Instant)>,
    parked: Vec<(TcpStream, Instant)>,
    /// The sweep task is scheduled.
    sweeping: bool,
}

impl Idle {
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Arc<Idle> {
        Arc::new(Idle {
            stacks: Mutex::default(),
            idle_timeout,
            max_idle,
        })
    }

    /// The warmest live connection, else the warmest parked socket still
    /// open; expired and closed ones met on the way are dropped.
    pub fn take(&self) -> Option<Taken> {
        let mut stacks = self.lock();
        while let Some((c, since)) = stacks.live.pop() {
            if !c.sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(Taken::Live(c));
            }
        }
        while let Some((socket, since)) = stacks.parked.pop() {
            if since.elapsed() < self.idle_timeout && is_open_and_silent(&socket) {
                return Some(Taken::Parked(socket));
            }
        }
        None
    }

    /// Back to the pool after a clean exchange (unless the pool is full or
    /// the connection closed).
    pub fn put(self: &Arc<Self>, conn: H1) {
        if conn.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut stacks = self.lock();
        // The oldest sit at the bottom: drop the expired ones while we are here.
        let expired = stacks
            .live
            .iter()
            .take_while(|(c, since)| {
                now.duration_since(*since) >= self.idle_timeout || c.sender.is_closed()
            })
            .count();
        stacks.live.drain(..expired);
        if !self.has_room(&stacks) {
            return;
        }
        let parkable = conn.park.is_some();
        stacks.live.push((conn, now));
        if parkable && !stacks.sweeping {
            // Outside a runtime (never in the proxy) nothing is parked.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                stacks.sweeping = true;
                runtime.spawn(sweep(Arc::downgrade(self)));
            }
        }
    }

    /// A hyper connection on `socket` (new, or taken parked), driven by a
    /// task that hands the socket back when the connection is parked.
    pub async fn handshake(self: &Arc<Self>, socket: TcpStream) -> Result<H1, hyper::Error> {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(socket))
            .await?;
        let park = Arc::new(OnceLock::new());
        let parked = park.clone();
        let idle = Arc::downgrade(self);
        tokio::spawn(async move {
            match (conn.without_shutdown().await, parked.get()) {
                // Ended because the pool dropped its sender to park it: keep
                // the socket unless the backend sent or closed meanwhile.
                (Ok(parts), Some(&since)) if parts.read_buf.is_empty() => {
                    let socket = parts.io.into_inner();
                    if let (Some(idle), true) = (idle.upgrade(), is_open_and_silent(&socket)) {
                        idle.park(socket, since);
                    }
                }
                // Closed by the backend, or dropped by the pool: the socket closes.
                (Ok(_), _) => {}
                (Err(e), _) => {
                    tracing::debug!(error = %e, "upstream connection ended with an error")
                }
            }
        });
        Ok(H1 {
            sender,
            park: Some(park),
        })
    }

    /// A socket back from its hyper connection (unless the pool filled up
    /// meanwhile: then it closes).
    fn park(&self, socket: TcpStream, since: Instant) {
        let mut stacks = self.lock();
        if self.has_room(&stacks) {
            stacks.parked.push((socket, since));
        }
    }

    /// `pool_max_idle_per_backend` counts live and parked connections alike.
    fn has_room(&self, stacks: &Stacks) -> bool {
        stacks.live.len() + stacks.parked.len() < self.max_idle
    }

    /// Live and parked idle connections (for tests and the pool's metrics).
    pub fn counts(&self) -> (usize, usize) {
        let stacks = self.lock();
        (stacks.live.len(), stacks.parked.len())
    }

    /// Parks the live connections idle for [`LINGER`] and drops the expired
    /// parked ones; returns when to look again, or `None` (and stops being
    /// scheduled) when nothing is idle. (A pool's connections are all plain
    /// or all TLS, and only a plain one schedules the sweep.)
    fn sweep(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut stacks = self.lock();
        let lingered = stacks
            .live
            .iter()
            .take_while(|(c, since)| c.park.is_some() && now.duration_since(*since) >= LINGER)
            .count();
        let parking: Vec<_> = stacks.live.drain(..lingered).collect();
        let expired = stacks
            .parked
            .iter()
            .take_while(|(_, since)| now.duration_since(*since) >= self.idle_timeout)
            .count();
        stacks.parked.drain(..expired);
        // Never later than a connection put back now would need: `put` does
        // not reschedule a sweep already scheduled. Parked sockets expire at
        // most one linger late.
        let next = match stacks.live.first() {
            Some((_, since)) => Some(*since + LINGER),
            // Those being parked come back to the parked stack: look again.
            None if !stacks.parked.is_empty() || !parking.is_empty() => Some(now + LINGER),
            None => None,
        };
        stacks.sweeping = next.is_some();
        drop(stacks);
        for (c, since) in parking {
            if let Some(park) = &c.park {
                let _ = park.set(since);
            }
            // Dropping the sender ends hyper's connection; its task parks the socket.
            drop(c);
        }
        next
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stacks> {
        self.stacks.lock().expect("pool lock poisoned")
    }
}

async fn sweep(idle: Weak<Idle>) {
    let mut next = Instant::now() + LINGER;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let Some(idle) = idle.upgrade() else { return };
        match idle.sweep() {
            Some(at) => next = at,
            None => return,
        }
    }
}

/// Whether an idle socket is still open and has sent nothing (bytes from an
/// idle backend belong to no request: such a connection is not reused).
///
/// Asked with a no-op waker, which also takes the place of the waker the
/// socket's registration kept from the task that last read it: a parked
/// socket would otherwise keep that finished task's memory (≈ 2 KB, seen in
/// a heap snapshot: one per parked socket) until it is used again.
fn is_open_and_silent(socket: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    // Twice at most: a readiness left over from before the last read that
    // would block is cleared by `try_read`, then asked again.
    for _ in 0..2 {
        match socket.poll_read_ready(&mut cx) {
            // Nothing arrived since the last read that would block.
            Poll::Pending => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(())) => match socket.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // Closed, failed, or bytes from an idle backend.
                _ => return false,
            },
        }
    }
    false
}
