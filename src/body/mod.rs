//! Bodies in both directions, streamed frame by frame and never collected.
//!
//! - [`InboundBody`]: a request body as it enters the proxy's stack: from the
//!   client, or already in memory because a layer read it (to hash or scan it).
//! - [`slot`]: the request body on its way to a backend, taken out of a shared
//!   slot only by an attempt that reached one (so a refused connect can move the
//!   request to the next backend, and nothing is ever sent twice).
//! - [`Full`]: a complete in-memory body (the proxy's own answers, cache hits).
//! - [`Watched`]: any body with a [`Watch`] that sees its chunks and is told
//!   exactly once how it ended (completed, failed, or dropped because the client
//!   went away). Every "held until the body ends" in the proxy is a `Watch`: the
//!   backend's in-flight slot, an agent's write turn, the request's metrics
//!   record, the cache's copy of a miss.
//! - [`IdleTimeout`]: fails a body that goes silent for too long.
//!
//! This module is a leaf: it knows nothing of backends, limits or the cache.

mod full;
mod idle;
mod inbound;
pub mod slot;
mod watched;

pub use full::Full;
pub use idle::{BodyIdleTimeout, IdleTimeout};
pub use inbound::InboundBody;
pub use watched::{Outcome, Watch, Watched};

/// Boxed source error (hyper's, the client's and the proxy's own differ in type).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
