//! Backpressure: what makes a request wait, and for how long.
//!
//! - [`queue`]: the bounded FIFO queue of requests waiting for a backend slot
//!   when every usable backend is at its `max_in_flight`.
//! - [`ordering`]: per-agent / per-block write ordering: writes to one agent run
//!   one at a time, in arrival order (Letta loses turns and answers 409 otherwise).
//! - [`global`]: the proxy-wide in-flight cap.

pub mod global;
pub mod ordering;
pub mod queue;
