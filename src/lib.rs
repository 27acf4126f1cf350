//! # letta-proxy
//!
//! A reverse proxy and load balancer for [Letta](https://github.com/letta-ai/letta)
//! servers. Clients change only their base URL; the proxy spreads their requests
//! over several Letta replicas, streams agent replies untouched and exposes what
//! it sees as Prometheus metrics.
//!
//! ## Layout
//!
//! Dependencies point one way, from the top of this list down:
//!
//! - [`server`]: accepts HTTP/1.1 and h2c connections and hands each request to
//!   the gateway's router; the admin listener; SIGHUP and file-watch reloads;
//!   graceful shutdown.
//! - [`gateway`]: every part assembled from one configuration: the axum
//!   `Router` (proxy-owned paths, then the forwarding stack as its fallback),
//!   the admin API, `/-/batch`, request hygiene, and the control plane
//!   (apply, reload, purge). Embeddable: nest [`Gateway::router`] in an
//!   application's router.
//! - [`observe`]: `ObserveLayer`: request id, metrics, stats window, access log.
//! - [`limit`]: `LimitLayer`: the proxy-wide cap and per-agent write ordering.
//! - [`cache`]: `CacheLayer`: the response cache, in-process and Redis tiers,
//!   identity-scoped keys, invalidation by Letta ids across instances.
//! - [`proxy`]: the innermost service: forwards one request (header rules,
//!   attempts, the retry rule) and streams the answer back.
//! - [`coord`]: coordination between proxy instances sharing a Redis: write
//!   leases (ordering across instances), the instance registry and each
//!   instance's share of a backend's cap.
//! - [`redis`]: the one Redis client (standalone or cluster, TLS, one timeout,
//!   circuit breaker, pub/sub) used by the cache and by [`coord`].
//! - [`backend`]: the live backend set, swapped atomically; per backend its
//!   connection pool, in-flight slots and their wait queue, health verdicts.
//! - [`health`]: the active prober feeding the backends' health verdicts.
//! - [`tls`]: HTTPS for clients and `https://` backends: rustls configurations
//!   from PEM files, certificate reload, handshakes, the plain-HTTP redirect.
//! - [`balance`]: the selection strategies behind one small, pure trait.
//! - Leaves: [`body`] (bodies both ways and what is held until they end),
//!   [`routes`] (what a Letta path means), [`identity`] (which headers say who
//!   is asking, derived from Letta's source), [`config`], [`error`],
//!   [`metrics`], [`stats`].
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
