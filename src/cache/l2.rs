//! The shared tier: Redis, through one multiplexed auto-reconnecting connection.
//!
//! Keys (`P` = `cache.redis_prefix` + `:`): `P e:<key>` an entry, `P t:<tag>`
//! the set of entry keys carrying a tag, `P inv:<tag>` the epoch of the tag's
//! last invalidation (kept for `fill_timeout`), `P epoch` the invalidation
//! counter, `P rel:<agent>` the agent's blocks. Storing and invalidating are Lua
//! scripts, so "was this tag invalidated since the fill began?" and "store" are
//! one atomic step across every instance (the same race [`super::epochs`]
//! closes locally). Needs a standalone Redis: the scripts compute the keys they
//! touch (tag sets name entries), which Redis Cluster does not allow.
//!
//! Every call has `redis_timeout` and goes through the [`Breaker`]; any failure
//! is a miss. An invalidation that cannot reach Redis is kept (bounded) and
//! replayed when Redis is back; until then this instance does not read the
//! shared tier, which might still hold what the invalidation should remove.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

use super::breaker::Breaker;
use super::entry::Entry;
use super::key::CacheKey;
use super::metrics::{CacheMetrics, RedisOp};
use super::scripts::{Args, Lua, FLUSH, INVALIDATE, STORE};
use super::tags::{Tag, BLOCKS};
use crate::config::CacheConfig;

/// Most tags held for replay; past it, the whole shared tier is dropped instead.
const MAX_PENDING_TAGS: usize = 10_000;

/// One write's invalidation, as sent to Redis.
#[derive(Debug, Clone, Default)]
pub struct Invalidation {
    pub tags: Vec<Tag>,
    /// Agents whose blocks this instance does not know: Redis expands them
    /// with what it knows, or with [`BLOCKS`].
    pub expand: Vec<Tag>,
    /// Agents whose known blocks must be forgotten everywhere.
    pub forget: Vec<Tag>,
}

/// What a lookup found.
pub enum Lookup {
    /// An entry, and the invalidation epoch read just before it.
    Hit(Box<Entry>, u64),
    Miss(u64),
    /// Redis not consulted or failed: no entry, and no epoch to store against.
    Unavailable,
}

#[derive(Default)]
struct Pending {
    queue: VecDeque<Invalidation>,
    tags: usize,
    overflowed: bool,
}

/// The Redis tier.
pub struct L2 {
    pub client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    breaker: Breaker,
    timeout: Duration,
    connect_timeout: Duration,
    prefix: String,
    pub channel: String,
    /// This instance's name on the channel (its own messages are skipped).
    pub origin: String,
    fill_window_ms: u64,
    tagset_ttl_ms: u64,
    clock: Instant,
    pending: Mutex<Pending>,
    metrics: CacheMetrics,
    store_script: Lua,
    invalidate_script: Lua,
    flush_script: Lua,
}

impl L2 {
    /// `longest_ttl` bounds how long tag sets live.
    pub fn new(
        c: &CacheConfig,
        url: &str,
        longest_ttl: Duration,
        metrics: CacheMetrics,
    ) -> RedisResult<L2> {
        let origin = format!("{:016x}", rand::random::<u64>());
        Ok(L2 {
            client: redis::Client::open(url)?,
            conn: ArcSwapOption::empty(),
            breaker: Breaker::new(c.redis_breaker_failures, c.redis_cooldown),
            timeout: c.redis_timeout,
            connect_timeout: c.redis_connect_timeout,
            prefix: format!("{}:", c.redis_prefix),
            channel: format!("{}:invalidate", c.redis_prefix),
            origin,
            fill_window_ms: c.fill_timeout.as_millis() as u64,
            tagset_ttl_ms: (longest_ttl + c.fill_timeout).as_millis() as u64,
            clock: Instant::now(),
            pending: Mutex::new(Pending::default()),
            metrics,
            store_script: Lua::new(STORE),
            invalidate_script: Lua::new(INVALIDATE),
            flush_script: Lua::new(FLUSH),
        })
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Opens the connection (the connection manager reconnects by itself
    /// afterwards). Returns whether Redis is connected.
    pub async fn connect(&self) -> bool {
        if self.conn.load().is_some() {
            return true;
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let attempt = self.client.get_connection_manager_with_config(cfg);
        match tokio::time::timeout(self.connect_timeout * 2, attempt).await {
            Ok(Ok(conn)) => {
                self.conn.store(Some(std::sync::Arc::new(conn)));
                self.metrics.redis_available.set(1);
                tracing::info!("cache: connected to Redis");
                true
            }
            _ => {
                self.metrics.redis_error(RedisOp::Connect);
                false
            }
        }
    }

    /// Runs one Redis call under the timeout and the breaker.
    async fn call<T, F, Fut>(&self, op: RedisOp, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.conn.load_full()?;
        if !self.breaker.allow(self.now()) {
            return None;
        }
        let start = Instant::now();
        match tokio::time::timeout(self.timeout, f((*conn).clone())).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                self.metrics.redis_available.set(1);
                self.metrics.redis_ok(op, start.elapsed().as_secs_f64());
                Some(v)
            }
            outcome => {
                self.metrics.redis_error(op);
                if let Ok(Err(e)) = &outcome {
                    tracing::debug!(error = %e, ?op, "cache: Redis call failed");
                }
                if self.breaker.failure(self.now()) {
                    self.metrics.redis_available.set(0);
                    tracing::warn!(?op, "cache: Redis failing; not calling it for a while");
                }
                None
            }
        }
    }

    fn usable(&self) -> bool {
        self.pending
            .lock()
            .expect("pending poisoned")
            .queue
            .is_empty()
    }

    /// Reads the invalidation epoch, then the entry, in one round trip.
    pub async fn get(&self, key: &CacheKey) -> Lookup {
        if !self.usable() {
            self.metrics.skip_l2.inc();
            return Lookup::Unavailable;
        }
        let epoch_key = format!("{}epoch", self.prefix);
        let entry_key = format!("{}e:{}", self.prefix, key.hex());
        let got = self
            .call(RedisOp::Get, |mut c| async move {
                redis::pipe()
                    .get(epoch_key)
                    .get(entry_key)
                    .query_async::<(Option<u64>, Option<Vec<u8>>)>(&mut c)
                    .await
            })
            .await;
        match got {
            None => {
                self.metrics.skip_l2.inc();
                Lookup::Unavailable
            }
            Some((epoch, raw)) => {
                let epoch = epoch.unwrap_or(0);
                match raw.and_then(|r| Entry::decode(Bytes::from(r))) {
                    Some(e) => Lookup::Hit(Box::new(e), epoch),
                    None => Lookup::Miss(epoch),
                }
            }
        }
    }

    /// Deletes one entry (a client asked for a fresh answer).
    pub async fn remove(&self, key: &CacheKey) {
        let k = format!("{}e:{}", self.prefix, key.hex());
        self.call(RedisOp::Store, |mut c| async move {
            redis::cmd("DEL").arg(k).query_async::<()>(&mut c).await
        })
        .await;
    }

    /// The invalidation epoch alone (a refresh stores against it).
    pub async fn epoch(&self) -> Option<u64> {
        if !self.usable() {
            return None;
        }
        let k = format!("{}epoch", self.prefix);
        self.call(RedisOp::Get, |mut c| async move {
            redis::cmd("GET")
                .arg(k)
                .query_async::<Option<u64>>(&mut c)
                .await
        })
        .await
        .map(|e| e.unwrap_or(0))
    }

    /// Stores `entry` unless one of its tags was invalidated after `start`;
    /// `teach` records an agent's blocks. Returns whether it was stored.
    pub async fn store(
        &self,
        key: &CacheKey,
        entry: &Entry,
        start: u64,
        teach: Option<(&str, &[Tag])>,
    ) -> bool {
        if !self.usable() {
            return false;
        }
        let Some(ttl) = entry.remaining(super::entry::now_ms()) else {
            return false;
        };
        let mut inv = Args::default();
        inv.arg(&self.prefix)
            .arg(start)
            .arg(ttl.as_millis() as u64)
            .arg(entry.encode())
            .arg(key.hex())
            .arg(self.tagset_ttl_ms)
            .arg(entry.tags.len());
        for t in entry.tags.iter() {
            inv.arg(&**t);
        }
        match teach {
            Some((agent, blocks)) => {
                inv.arg(agent).arg(self.tagset_ttl_ms);
                for b in blocks {
                    inv.arg(&**b);
                }
            }
            None => {
                inv.arg("").arg(0);
            }
        }
        let stored = self
            .call(RedisOp::Store, |mut c| async move {
                self.store_script.run::<i64>(&mut c, &inv).await
            })
            .await;
        stored == Some(1)
    }

    /// Applies `inv` in Redis and publishes it; kept for replay when Redis fails.
    /// Returns the number of shared entries deleted.
    pub async fn invalidate(&self, inv: Invalidation) -> Option<u64> {
        if !self.usable() {
            self.defer(inv);
            return None;
        }
        match self.send(&inv).await {
            Some(n) => Some(n),
            None => {
                self.defer(inv);
                None
            }
        }
    }

    async fn send(&self, inv: &Invalidation) -> Option<u64> {
        let mut call = Args::default();
        call.arg(&self.prefix)
            .arg(self.fill_window_ms)
            .arg(&self.channel)
            .arg(&self.origin)
            .arg(inv.tags.len());
        for t in &inv.tags {
            call.arg(&**t);
        }
        call.arg(inv.expand.len());
        for a in &inv.expand {
            call.arg(&**a);
        }
        call.arg(inv.forget.len());
        for a in &inv.forget {
            call.arg(&**a);
        }
        // Last: the fallback tag for agents Redis knows nothing about.
        call.arg(BLOCKS);
        self.call(RedisOp::Invalidate, |mut c| async move {
            self.invalidate_script.run::<u64>(&mut c, &call).await
        })
        .await
    }

    fn defer(&self, inv: Invalidation) {
        let mut p = self.pending.lock().expect("pending poisoned");
        if p.overflowed {
            return;
        }
        p.tags += inv.tags.len() + inv.expand.len() + inv.forget.len();
        p.queue.push_back(inv);
        if p.tags > MAX_PENDING_TAGS {
            p.overflowed = true;
            p.queue.clear();
            // Something must still mark the queue as non-empty until the flush.
            p.queue.push_back(Invalidation::default());
        }
        self.metrics.redis_pending.set(p.queue.len() as i64);
    }

    /// Sends what failed earlier, oldest first; stops at the first failure.
    /// After an overflow, drops the whole shared tier instead.
    pub async fn replay(&self) {
        loop {
            let (next, overflowed) = {
                let p = self.pending.lock().expect("pending poisoned");
                (p.queue.front().cloned(), p.overflowed)
            };
            let Some(next) = next else { return };
            let ok = if overflowed {
                self.purge_all().await
            } else {
                self.send(&next).await.is_some()
            };
            if !ok {
                return;
            }
            let mut p = self.pending.lock().expect("pending poisoned");
            if overflowed {
                *p = Pending::default();
            } else {
                p.queue.pop_front();
                p.tags = p.tags.saturating_sub(next.tags.len());
            }
            self.metrics.redis_pending.set(p.queue.len() as i64);
            if p.queue.is_empty() {
                tracing::info!("cache: pending invalidations replayed to Redis");
            }
        }
    }

    /// Whether the connection has been opened (it reconnects by itself after).
    pub fn is_connected(&self) -> bool {
        self.conn.load().is_some()
    }

    /// Drops every shared entry and tells every instance to drop theirs
    /// (after losing track of invalidations, or on an admin purge).
    pub async fn purge_all(&self) -> bool {
        let mut call = Args::default();
        call.arg(&self.prefix).arg(&self.channel).arg(&self.origin);
        let marked = self
            .call(RedisOp::Invalidate, |mut c| async move {
                self.flush_script.run::<u64>(&mut c, &call).await
            })
            .await;
        if marked.is_none() {
            return false;
        }
        let pattern = format!("{}e:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let p = pattern.clone();
            let batch = self
                .call(RedisOp::Invalidate, |mut c| async move {
                    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(p)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut c)
                        .await?;
                    if !keys.is_empty() {
                        redis::cmd("UNLINK")
                            .arg(keys)
                            .query_async::<()>(&mut c)
                            .await?;
                    }
                    Ok(next)
                })
                .await;
            match batch {
                Some(0) => return true,
                Some(next) => cursor = next,
                None => return false,
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.usable()
    }
}
