//! The shared tier: Redis (standalone or cluster) through the shared
//! [`crate::redis::Redis`] client.
//!
//! Keys (`P` = `{redis.prefix}:`): `P e:<key>` an entry, `P t:<tag>` the set
//! of entry keys carrying a tag, `P inv:<tag>` the epoch of the tag's last
//! invalidation (kept for `fill_timeout`), `P epoch` the invalidation counter,
//! `P flushed` the epoch of the last flush, `P rel:<agent>` the agent's
//! blocks; invalidations are published on `P invalidate`. Storing and
//! invalidating are Lua scripts, so "was this tag invalidated since the fill
//! began?" and "store" are one atomic step across every instance (the same
//! race [`super::epochs`] closes locally).
//!
//! Every key carries the one hash tag `{prefix}`, so on a Redis Cluster the
//! whole cache lives in one slot, on one shard (a master and its replicas).
//! That is the price of the atomic scripts: a tag set names entries that would
//! otherwise sit anywhere in the cluster, and a script may only touch one
//! slot. The cluster still gives the cache failover; it does not spread the
//! cache's memory or load over several masters (leases and the registry, with
//! a tag per agent, do spread). One Redis master holds far more than one
//! proxy's `max_bytes`, and every cache call is one round trip to it.
//!
//! Every call has the client's one timeout and goes through its breaker; any
//! failure is a miss. An invalidation that cannot reach Redis is kept
//! (bounded) and replayed when Redis is back; until then this instance does
//! not read the shared tier, which might still hold what the invalidation
//! should remove.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use redis::{RedisResult, Script};

use super::entry::Entry;
use super::key::CacheKey;
use super::metrics::{CacheMetrics, RedisOp};
use super::scripts::{FLUSH, INVALIDATE, STORE};
use super::tags::{Tag, BLOCKS};
use crate::config::CacheConfig;
use crate::redis::{slot, Conn, Redis};

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
    redis: Arc<Redis>,
    /// `{prefix}:`
    prefix: String,
    /// The key every script declares (it routes the call in a cluster).
    epoch_key: String,
    pub channel: String,
    /// This instance's name on the channel (its own messages are skipped).
    pub origin: String,
    fill_window_ms: u64,
    tagset_ttl_ms: u64,
    pending: Mutex<Pending>,
    metrics: CacheMetrics,
    scripts_loaded: std::sync::atomic::AtomicBool,
    store_script: Script,
    invalidate_script: Script,
    flush_script: Script,
}

impl L2 {
    /// `longest_ttl` bounds how long tag sets live.
    pub fn new(
        c: &CacheConfig,
        redis: Arc<Redis>,
        longest_ttl: std::time::Duration,
        metrics: CacheMetrics,
    ) -> L2 {
        let origin = format!("{:016x}", rand::random::<u64>());
        let prefix = format!("{}:", slot::tag(redis.prefix()));
        L2 {
            epoch_key: format!("{prefix}epoch"),
            channel: format!("{prefix}invalidate"),
            prefix,
            redis,
            origin,
            fill_window_ms: c.fill_timeout.as_millis() as u64,
            tagset_ttl_ms: (longest_ttl + c.fill_timeout).as_millis() as u64,
            pending: Mutex::new(Pending::default()),
            metrics,
            scripts_loaded: std::sync::atomic::AtomicBool::new(false),
            store_script: Script::new(STORE),
            invalidate_script: Script::new(INVALIDATE),
            flush_script: Script::new(FLUSH),
        }
    }

    /// The shared client (pub/sub subscribes through it).
    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Opens the connection (it reconnects by itself afterwards). Returns
    /// whether Redis is connected.
    pub async fn connect(&self) -> bool {
        if !self.redis.is_connected() {
            if !self.redis.connect().await {
                self.metrics.redis_error(RedisOp::Connect);
                return false;
            }
            self.metrics.redis_available.set(1);
        }
        if !self
            .scripts_loaded
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.load_scripts().await;
        }
        true
    }

    /// Loads the scripts ahead of their first use ([`Redis::load_scripts`]).
    async fn load_scripts(&self) {
        let scripts = [
            &self.store_script,
            &self.invalidate_script,
            &self.flush_script,
        ];
        if self.redis.load_scripts(&scripts).await {
            self.scripts_loaded
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Runs one Redis call (the client's timeout and breaker), with metrics.
    async fn call<T, F, Fut>(&self, op: RedisOp, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let start = Instant::now();
        let outcome = self.redis.call(f).await;
        self.metrics
            .redis_available
            .set(i64::from(self.redis.is_available()));
        match outcome {
            Ok(v) => {
                self.metrics.redis_ok(op, start.elapsed().as_secs_f64());
                Some(v)
            }
            Err(crate::redis::CallError::NotConnected | crate::redis::CallError::BreakerOpen) => {
                None
            }
            Err(_) => {
                self.metrics.redis_error(op);
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
        let epoch_key = self.epoch_key.clone();
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
        let k = self.epoch_key.clone();
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
        let mut inv = self.store_script.key(&self.epoch_key);
        inv.arg(&self.prefix)
            .arg(start)
            .arg(ttl.as_millis() as u64)
            .arg(&entry.encode()[..])
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
                inv.invoke_async::<i64>(&mut c).await
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
        let mut call = self.invalidate_script.key(&self.epoch_key);
        call.arg(&self.prefix)
            .arg(self.fill_window_ms)
            .arg(&self.channel)
            .arg(&self.origin)
            .arg(self.redis.publish_command())
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
            call.invoke_async::<u64>(&mut c).await
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
        self.redis.is_connected()
    }

    /// Drops every shared entry and tells every instance to drop theirs
    /// (after losing track of invalidations, or on an admin purge).
    pub async fn purge_all(&self) -> bool {
        let mut call = self.flush_script.key(&self.epoch_key);
        call.arg(&self.prefix)
            .arg(&self.channel)
            .arg(&self.origin)
            .arg(self.redis.publish_command());
        let marked = self
            .call(RedisOp::Invalidate, |mut c| async move {
                call.invoke_async::<u64>(&mut c).await
            })
            .await;
        if marked.is_none() {
            return false;
        }
        // Every cache key is in the `{prefix}` slot: SCAN that node only.
        let pattern = format!("{}e:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let p = pattern.clone();
            let node_of = self.epoch_key.clone();
            let batch = self
                .call(RedisOp::Invalidate, |mut c| async move {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor).arg("MATCH").arg(p).arg("COUNT").arg(500);
                    let (next, keys): (u64, Vec<String>) =
                        c.query_on_node_of(&scan, &node_of).await?;
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
