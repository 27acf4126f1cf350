//! Keeps a slow answer from being stored after a write made it stale.
//!
//! A miss fetches from a backend while a write to the same agent may complete;
//! storing the (older) answer after the write's invalidation would serve stale
//! data until the TTL. Every invalidation bumps a counter (the epoch) and
//! records it for each tag; a fill notes the epoch when it starts and is stored
//! only if none of its tags was invalidated since, and checked again right
//! after insertion (so an invalidation racing the insert still wins).
//! Redis keeps the same bookkeeping for the shared tier (see [`super::l2`]).
//!
//! A write in progress also *holds* its tags: while an agent turn streams, its
//! agent's state changes under the reads, and nothing read meanwhile is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::tags::Tag;

/// Size at which old records are pruned.
const PRUNE_AT: usize = 50_000;

/// Local invalidation history.
pub struct Epochs {
    current: AtomicU64,
    /// Epoch of the last "forget everything" (Redis reconnect, overflow).
    flushed: AtomicU64,
    /// Last invalidation epoch of each tag, and when it happened.
    tags: Mutex<HashMap<Tag, (u64, Instant)>>,
    /// Tags of writes in progress, with how many writes hold each.
    held: Mutex<HashMap<Tag, u32>>,
    /// How long a fill may take; records older than this are useless.
    window: Duration,
}

impl Epochs {
    pub fn new(window: Duration) -> Epochs {
        Epochs {
            current: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            tags: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            window,
        }
    }

    /// The epoch a fill starts at.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Records an invalidation of `tags`; returns its epoch.
    pub fn invalidate(&self, tags: &[Tag]) -> u64 {
        let mut map = self.tags.lock().expect("epochs poisoned");
        // Bumped under the lock: a fill that read the old epoch and then checks
        // finds these tags recorded.
        let e = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        if map.len() > PRUNE_AT {
            let window = self.window;
            map.retain(|_, (_, at)| now.duration_since(*at) < window);
        }
        for t in tags {
            map.insert(t.clone(), (e, now));
        }
        e
    }

    /// Records that everything is invalidated (no tag survives).
    pub fn flush(&self) -> u64 {
        let _map = self.tags.lock().expect("epochs poisoned");
        let e = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.flushed.store(e, Ordering::SeqCst);
        e
    }

    /// Whether an answer fetched from epoch `start` on, tagged `tags`, is still
    /// current (nothing it depends on was invalidated since).
    pub fn still_valid(&self, start: u64, tags: &[Tag]) -> bool {
        if self.flushed.load(Ordering::SeqCst) > start {
            return false;
        }
        {
            let held = self.held.lock().expect("epochs poisoned");
            if !held.is_empty() && tags.iter().any(|t| held.contains_key(t)) {
                return false;
            }
        }
        let map = self.tags.lock().expect("epochs poisoned");
        !tags
            .iter()
            .any(|t| map.get(t).is_some_and(|(e, _)| *e > start))
    }

    /// Marks `tags` as being written: no answer carrying one is stored until
    /// [`Epochs::release`].
    pub fn hold(&self, tags: &[Tag]) {
        let mut held = self.held.lock().expect("epochs poisoned");
        for t in tags {
            *held.entry(t.clone()).or_default() += 1;
        }
    }

    pub fn release(&self, tags: &[Tag]) {
        let mut held = self.held.lock().expect("epochs poisoned");
        for t in tags {
            if let Some(n) = held.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    held.remove(t);
                }
            }
        }
    }

    /// Whether any invalidation at all happened since `start` (coalescing:
    /// a request may only join a fill that no write could have overtaken).
    pub fn unchanged_since(&self, start: u64) -> bool {
        self.current() == start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn t(s: &str) -> Tag {
        Arc::from(s)
    }

    #[test]
    fn a_fill_overtaken_by_a_write_to_its_tags_is_refused() {
        let e = Epochs::new(Duration::from_secs(60));
        let start = e.current();
        assert!(e.still_valid(start, &[t("agent-a")]));
        e.invalidate(&[t("agent-b")]);
        assert!(
            e.still_valid(start, &[t("agent-a")]),
            "other tags do not matter"
        );
        assert!(!e.unchanged_since(start));
        e.invalidate(&[t("agent-a")]);
        assert!(!e.still_valid(start, &[t("agent-a"), t("c:agents")]));
        let later = e.current();
        assert!(
            e.still_valid(later, &[t("agent-a")]),
            "fills after the write are fine"
        );
        e.flush();
        assert!(!e.still_valid(later, &[t("anything")]));
        assert!(e.still_valid(e.current(), &[t("anything")]));
    }

    #[test]
    fn nothing_is_stored_under_a_write_in_progress() {
        let e = Epochs::new(Duration::from_secs(60));
        e.hold(&[t("agent-a")]);
        e.hold(&[t("agent-a")]);
        assert!(!e.still_valid(e.current(), &[t("agent-a")]));
        assert!(e.still_valid(e.current(), &[t("agent-b")]));
        e.release(&[t("agent-a")]);
        assert!(
            !e.still_valid(e.current(), &[t("agent-a")]),
            "one write still holds it"
        );
        e.release(&[t("agent-a")]);
        assert!(e.still_valid(e.current(), &[t("agent-a")]));
    }
}
