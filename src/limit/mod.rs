//! Limits on the whole proxy, as one tower layer ([`LimitLayer`]).
//!
//! - [`global`]: the proxy-wide in-flight cap, shed at once (503).
//! - [`ordering`]: per-agent / per-block write ordering: writes to one agent run
//!   one at a time, in arrival order (Letta loses turns and answers 409 otherwise).
//! - [`layer`]: both around the rest of the stack, held until the response body ends.
//!
//! The per-backend caps and their wait queue belong to the backends
//! (`backend::queue`): they are decided per attempt, after a backend is picked.

pub mod global;
pub mod layer;
pub mod ordering;

pub use layer::{Held, LimitLayer, LimitService, Limits};
