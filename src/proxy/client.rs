//! The pooled HTTP/1.1 client used to reach backends.
//!
//! One client for all backends: hyper-util pools keep-alive connections per
//! `scheme://authority`, so each backend gets its own pool, and a backend that
//! survives a reload keeps its warm connections.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::RequestBody;
use crate::config::ServerConfig;

/// The client type the proxy forwards with.
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// Builds the client from `[server]` settings.
pub fn build(cfg: &ServerConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    // Small writes (SSE events, request heads) must leave at once.
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_backend)
        .build(connector)
}
