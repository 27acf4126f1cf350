//! # letta-proxy
//!
//! A reverse proxy and load balancer for [Letta](https://github.com/letta-ai/letta)
//! servers. Clients change only their base URL; the proxy spreads their requests
//! over several Letta replicas, streams agent replies untouched and exposes what
//! it sees as Prometheus metrics.
//!
//! ## Layout
//!
//! A request's way through the crate, outermost first:
//!
//! - [`server`]: accepts HTTP/1.1 and h2c connections, answers the proxy's own
//!   paths (`/metrics`, `/-/healthy`, `/-/ready`, `/-/stats`, `/-/status`,
//!   `/-/batch`), serves the admin API, reloads the config, drains on shutdown.
//! - [`cache`]: the response cache as a tower layer in front of the proxy:
//!   in-process and Redis tiers, identity-scoped keys, invalidation by Letta
//!   ids across instances, coalescing, unchanged-write suppression.
//! - [`proxy`]: forwards one request: header rules ([`proxy::headers`]), the
//!   per-backend connection pool ([`proxy::pool`]), bodies streamed both ways
//!   with the in-flight slot released at the end of the response body
//!   ([`proxy::body`]), and what is recorded about each request
//!   ([`proxy::observe`]).
//! - [`routes`]: what a Letta path means: template for metrics, agent and block
//!   ids, read vs write, streaming.
//! - [`limit`]: backpressure: the proxy-wide cap, the bounded FIFO queue for
//!   busy backends, per-agent write ordering.
//! - [`coord`]: coordination between proxy instances sharing a Redis: write
//!   leases (ordering across instances), the instance registry and each
//!   instance's share of a backend's cap.
//! - [`redis`]: the one Redis client (standalone or cluster, TLS, one timeout,
//!   circuit breaker, pub/sub) used by the cache and by [`coord`].
//! - [`backend`]: the live backend set, swapped atomically; per-backend state
//!   (in flight, health, draining, latency).
//! - [`health`]: active probes (threshold state machine + scheduler) and
//!   passive outlier ejection.
//! - [`balance`]: the selection strategies behind one small, pure trait.
//! - [`error`]: the errors the proxy answers with and their one status mapping.
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`metrics`]: the Prometheus families.
//! - [`stats`]: sliding-window figures for people (`/-/stats`, `/-/status`).
//! - [`standin`]: a stand-in Letta server for `--demo` and the tests.
//!
//! Tests and benches drive the library directly: [`serve`] takes an already
//! bound listener and a shutdown future.

#![forbid(unsafe_code)]

pub mod backend;
pub mod balance;
pub mod cache;
pub mod config;
pub mod coord;
pub mod error;
pub mod health;
pub mod limit;
pub mod metrics;
pub mod proxy;
pub mod redis;
pub mod routes;
pub mod server;
pub mod standin;
pub mod stats;

pub use config::Config;
pub use proxy::Proxy;
pub use server::{serve, serve_proxy, ServeError};
