//! The Redis client shared by the cache's second tier and by cross-instance
//! coordination (write leases, the instance registry).
//!
//! - [`config`]: the `[redis]` section (and the deprecated `cache.redis_*` keys).
//! - [`conn`]: one connection type over a standalone Redis (`ConnectionManager`)
//!   and a Redis Cluster (redis-rs `cluster-async`), TLS by `rediss://`.
//! - [`breaker`]: stops calling a failing Redis for a while.
//! - [`pubsub`]: subscriptions that say when they may have missed messages:
//!   classic `SUBSCRIBE` on a standalone Redis, sharded `SSUBSCRIBE` on a cluster.
//! - [`slot`]: cluster slots and hash tags.
//! - [`tls`]: the CA file and the rustls crypto provider.
//!
//! Rules every user of [`Redis`] relies on: every call is bounded by one
//! timeout (`redis.timeout`, covering the wait for the connection, cluster
//! redirections and the answer); a call refused by the open breaker costs
//! nothing; no call ever turns into a client-visible error — callers map
//! [`CallError`] to "miss" (cache) or "fall back to this instance" (leases).

pub mod breaker;
pub mod conn;
pub mod pubsub;
pub mod slot;
pub mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

pub use crate::config::RedisConfig;
pub use breaker::Breaker;
pub use conn::Conn;

use conn::Target;

/// Why a Redis client could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no Redis configured (set redis.url or redis.cluster_nodes)")]
    NotConfigured,
    #[error("{key}: {source}")]
    Client {
        key: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("redis.ca_file: {0}")]
    CaFile(#[from] tls::CaFileError),
}

/// Why one call did not succeed. Never shown to a client.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("not connected to Redis")]
    NotConnected,
    #[error("Redis circuit breaker open")]
    BreakerOpen,
    #[error("Redis call timed out")]
    Timeout,
    #[error("Redis call failed: {0}")]
    Failed(#[from] ::redis::RedisError),
}

/// Standalone or cluster (for `/-/status` and the publish command).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        }
    }
}

/// The shared Redis: one command connection, one breaker, one timeout.
pub struct Redis {
    target: Target,
    conn: ArcSwapOption<Conn>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
    breaker: Breaker,
    timeout: Duration,
    connect_timeout: Duration,
    prefix: String,
    clock: Instant,
    /// Whether the last connection attempt failed (logged once per outage).
    connect_failing: AtomicBool,
}

impl Redis {
    /// Builds the client for a configured `[redis]`; nothing connects until
    /// [`Redis::connect`]. Logs the deprecated `[cache]` keys the config used.
    pub fn new(c: &RedisConfig) -> Result<Redis, RedisError> {
        if !c.is_configured() {
            return Err(RedisError::NotConfigured);
        }
        for note in &c.deprecated {
            tracing::warn!("config: {note}");
        }
        Ok(Redis {
            target: Target::new(c)?,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            breaker: Breaker::new(c.breaker_failures, c.breaker_cooldown),
            timeout: c.timeout,
            connect_timeout: c.connect_timeout,
            prefix: c.prefix.clone(),
            clock: Instant::now(),
            connect_failing: AtomicBool::new(false),
        })
    }

    pub fn mode(&self) -> Mode {
        if self.target.is_cluster() {
            Mode::Cluster
        } else {
            Mode::Standalone
        }
    }

    /// `PUBLISH` on a standalone Redis, `SPUBLISH` (sharded) on a cluster.
    pub fn publish_command(&self) -> &'static str {
        match self.mode() {
            Mode::Standalone => "PUBLISH",
            Mode::Cluster => "SPUBLISH",
        }
    }

    /// The configured key prefix (`redis.prefix`, without separator).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Opens the command connection unless it is open (then the connection
    /// reconnects by itself). Returns whether Redis is connected.
    pub async fn connect(&self) -> bool {
        if self.conn.load().is_some() {
            return true;
        }
        let _one = self.connecting.lock().await;
        if self.conn.load().is_some() {
            return true;
        }
        match tokio::time::timeout(self.connect_timeout, self.target.open(self.connect_timeout))
            .await
        {
            Ok(Ok(conn)) => {
                self.conn.store(Some(Arc::new(conn)));
                self.connect_failing.store(false, Ordering::Relaxed);
                tracing::info!(mode = self.mode().as_str(), "redis: connected");
                true
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {:?}", self.connect_timeout),
                };
                // Once per outage at warn (a TLS or auth problem shows here).
                if !self.connect_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %why, "redis: cannot connect; retrying");
                } else {
                    tracing::debug!(error = %why, "redis: cannot connect");
                }
                false
            }
        }
    }

    /// Whether the command connection has been opened.
    pub fn is_connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Whether calls are let through now (connected, breaker closed).
    pub fn is_available(&self) -> bool {
        self.is_connected() && self.breaker.is_closed()
    }

    /// Runs one call under the timeout and the breaker.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = ::redis::RedisResult<T>>,
    {
        let conn = self.conn.load_full().ok_or(CallError::NotConnected)?;
        if !self.breaker.allow(self.now()) {
            return Err(CallError::BreakerOpen);
        }
        let outcome = match tokio::time::timeout(self.timeout, f((*conn).clone())).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                return Ok(v);
            }
            Ok(Err(e)) => CallError::Failed(e),
            Err(_) => CallError::Timeout,
        };
        tracing::debug!(error = %outcome, "redis: call failed");
        if self.breaker.failure(self.now()) {
            tracing::warn!(
                error = %outcome,
                "redis: failing; not calling it for a while (cache misses, per-instance write ordering)"
            );
        }
        Err(outcome)
    }
}

impl Redis {
    /// Loads `scripts` into Redis ahead of their first use (every node of a
    /// cluster), so their first call is one round trip: `redis::Script` would
    /// otherwise pay NOSCRIPT + SCRIPT LOAD + EVALSHA inside one call's
    /// timeout. A Redis that forgets them later (restart, failover) gets them
    /// again that way. Returns whether they were loaded.
    pub async fn load_scripts(&self, scripts: &[&::redis::Script]) -> bool {
        let scripts: Vec<::redis::Script> = scripts.iter().map(|s| (*s).clone()).collect();
        self.call(|mut c| async move {
            for s in &scripts {
                s.load_async(&mut c).await?;
            }
            Ok(())
        })
        .await
        .is_ok()
    }
}

/// Keeps connecting until connected or `stop` (the connection reconnects by
/// itself once open).
pub async fn keep_connecting(redis: Arc<Redis>, stop: tokio_util::sync::CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !redis.connect().await {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
