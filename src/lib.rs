//! # letta-proxy
//!
//! A reverse proxy and load balancer for [Letta](https://github.com/letta-ai/letta)
//! servers. Clients change only their base URL; the proxy spreads their requests
//! over several Letta replicas, streams agent replies untouched and exposes what
//! it sees as Prometheus metrics.
//!
//! ## Layout
//!
//! Dependencies point one way, from the top of this list down (checked by
//! `tests/layering.rs`):
//!
//! - [`server`]: accepts connections (HTTP/1.1 and h2c, or HTTPS with HTTP/2
//!   and HTTP/1.1 by ALPN) and hands each request to the gateway; the admin
//!   listener, the plain-HTTP redirect listener; SIGHUP, file-watch and
//!   certificate reloads; graceful shutdown. An idle HTTP/1 keep-alive
//!   connection is parked without hyper's buffers until its next request.
//! - [`gateway`]: every part assembled from one configuration: the axum
//!   `Router` (proxy-owned paths, then the forwarding stack as its fallback),
//!   the admin API, `/-/batch`, `/-/stats`, request hygiene, catch-panic, and
//!   the control plane (apply, reload, purge). Embeddable: nest
//!   [`Gateway::router`] in an application's router.
//! - [`observe`]: `ObserveLayer`: classification, metrics, stats window, access
//!   log; the process's log subscriber and the access line written by hand.
//! - [`limit`]: `LimitLayer`: the proxy-wide cap, per-agent write ordering,
//!   write leases across instances.
//! - [`cache`]: `CacheLayer`: the response cache, in-process and Redis tiers,
//!   identity-scoped keys, invalidation by Letta ids across instances.
//! - [`proxy`]: the innermost service: forwards one request (header rules,
//!   attempts, the retry rule) and streams the answer back.
//! - [`health`]: the active prober feeding the backends' health verdicts.
//! - [`backend`]: the live backend set, swapped atomically; per backend its
//!   connection pool (plain or TLS, HTTP/1.1 or HTTP/2; an idle plain one
//!   parked to its socket), in-flight slots and their wait queue, health
//!   verdicts, its share of the cap.
//! - [`stats`]: the `/-/stats` document and the sliding windows behind it.
//! - [`coord`]: coordination between proxy instances sharing a Redis: write
//!   leases (ordering across instances), the instance registry and each
//!   instance's share of a backend's cap.
//! - [`redis`]: the one Redis client (standalone or cluster, TLS, one timeout,
//!   circuit breaker, pub/sub) used by the cache and by [`coord`].
//! - [`metrics`]: the Prometheus registry and the families every part records to.
//! - [`config`]: the TOML file, environment overrides, validation.
//! - Leaves: [`balance`] (the selection strategies behind one small, pure
//!   trait), [`tls`] (rustls configurations from PEM files, reload,
//!   handshakes, the redirect), [`body`] (bodies both ways and what is held
//!   until they end), [`routes`] (what a Letta path means), [`identity`]
//!   (which headers say who is asking, derived from Letta's source), [`error`].
//!
//! Tests and benches drive the library directly: [`serve`] takes an already
//! bound listener and a shutdown future.

#![forbid(unsafe_code)]

pub mod backend;
pub mod balance;
pub mod body;
pub mod cache;
pub mod config;
pub mod coord;
pub mod error;
pub mod gateway;
pub mod health;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod redis;
pub mod routes;
pub mod server;
#[doc(hidden)]
pub mod standin;
pub mod stats;
pub mod tls;

pub use config::Config;
pub use gateway::Gateway;
pub use server::{serve, serve_gateway, ServeError};
