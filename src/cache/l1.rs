//! The in-process tier: moka, bounded by bytes, a TTL per entry, and a tag
//! index so an invalidation finds its entries without scanning.
//!
//! The index maps tag → {key → entry id}. It is a superset of the truth: an
//! entry is added before it is inserted and removed when moka evicts it, and a
//! key's removal only applies to the entry id that was evicted (a newer entry
//! under the same key keeps its place). Invalidating a stale index record
//! merely evicts a key once too often. Sharded std mutexes: the critical
//! sections are a few hash operations and never span an `.await`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;

use super::entry::{now_ms, Entry};
use super::key::CacheKey;
use super::metrics::CacheMetrics;
use super::tags::Tag;

const SHARDS: usize = 16;

/// One tag's entries: key → entry id.
type Keys = HashMap<CacheKey, u64>;
/// A shard's table is keyed by the tag's hash, computed once per operation
/// and also used to pick the shard (a std map would hash the tag again).
type Shard = Mutex<HashTable<(Tag, Keys)>>;

/// Tag → entries, sharded by tag.
pub struct TagIndex {
    shards: Box<[Shard]>,
    /// Keyed SipHash, as std's maps: tags come from what clients write.
    hasher: RandomState,
}

impl TagIndex {
    fn new() -> TagIndex {
        TagIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The tag's hash and shard. The shard comes from bits the table leaves
    /// alone (it indexes by the low bits and tags its slots with the top 7),
    /// so the tags of one shard still spread over its table.
    fn locate(&self, tag: &str) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(tag);
        (hash, &self.shards[(hash >> 32) as usize % SHARDS])
    }

    fn add(&self, key: CacheKey, entry: &Entry) {
        for t in entry.tags.iter() {
            let (hash, shard) = self.locate(t);
            let mut shard = shard.lock().expect("tag index poisoned");
            let rehash = |(x, _): &(Tag, Keys)| self.hasher.hash_one(&**x);
            let mut slot = shard
                .entry(hash, |(x, _)| x == t, rehash)
                .or_insert_with(|| (t.clone(), Keys::new()));
            slot.get_mut().1.insert(key, entry.id);
        }
    }

    fn remove(&self, key: &CacheKey, entry: &Entry) {
        for t in entry.tags.iter() {
            let (hash, shard) = self.locate(t);
            let mut shard = shard.lock().expect("tag index poisoned");
            if let Ok(mut slot) = shard.find_entry(hash, |(x, _)| x == t) {
                let keys = &mut slot.get_mut().1;
                if keys.get(key) == Some(&entry.id) {
                    keys.remove(key);
                }
                if keys.is_empty() {
                    slot.remove();
                }
            }
        }
    }

    /// Removes and returns every key tagged with `tag`.
    fn take(&self, tag: &str) -> Vec<CacheKey> {
        let (hash, shard) = self.locate(tag);
        let mut shard = shard.lock().expect("tag index poisoned");
        match shard.find_entry(hash, |(x, _)| &**x == tag) {
            Ok(slot) => {
                let ((_, keys), _) = slot.remove();
                keys.into_keys().collect()
            }
            Err(_) => Vec::new(),
        }
    }

    fn clear(&self) {
        for s in self.shards.iter() {
            s.lock().expect("tag index poisoned").clear();
        }
    }
}

/// Each entry lives for what is left of its TTL when inserted (an entry filled
/// from Redis has already aged there).
struct RemainingTtl;

impl Expiry<CacheKey, Arc<Entry>> for RemainingTtl {
    fn expire_after_create(&self, _: &CacheKey, v: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(v.remaining(now_ms()).unwrap_or(Duration::ZERO))
    }

    // A refreshed entry gets its own TTL, not what was left of its predecessor's.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        v: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.remaining(now_ms()).unwrap_or(Duration::ZERO))
    }
}

/// The in-process tier.
pub struct L1 {
    cache: Cache<CacheKey, Arc<Entry>>,
    index: Arc<TagIndex>,
}

impl L1 {
    pub fn new(max_bytes: u64, metrics: &CacheMetrics) -> L1 {
        let index = Arc::new(TagIndex::new());
        let evicted = index.clone();
        let m = metrics.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Entry>| v.weight())
            .expire_after(RemainingTtl)
            .eviction_listener(move |k: Arc<CacheKey>, v: Arc<Entry>, cause| {
                // A replaced entry's successor was indexed before the insert:
                // leave the index alone (its stale records are harmless).
                if cause != RemovalCause::Replaced {
                    evicted.remove(&k, &v);
                }
                m.evicted(cause);
            })
            .build();
        L1 { cache, index }
    }

    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.cache.get(key).await
    }

    /// Indexes, then inserts (see the module doc for why in this order).
    pub async fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.index.add(key, &entry);
        self.cache.insert(key, entry).await;
    }

    pub async fn remove(&self, key: &CacheKey) {
        self.cache.invalidate(key).await;
    }

    /// Evicts every entry tagged with one of `tags`; returns how many keys it dropped.
    pub async fn invalidate(&self, tags: &[Tag]) -> usize {
        let mut n = 0;
        for t in tags {
            for key in self.index.take(t) {
                if self.cache.remove(&key).await.is_some() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.index.clear();
    }

    /// Entries (approximate, as moka counts them).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Bytes charged (approximate).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Applies moka's pending bookkeeping (tests and the metrics collector).
    pub async fn sync(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// A cheap handle for the metrics collector.
    pub fn handle(&self) -> Cache<CacheKey, Arc<Entry>> {
        self.cache.clone()
    }
}
