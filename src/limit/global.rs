//! The proxy-wide in-flight cap (`limits.max_in_flight`): past it, requests are
//! shed at once with 503 rather than queued, because the proxy itself is the
//! thing at risk (memory, file descriptors).
//!
//! One counter lives as long as the proxy: a reload changes the cap in place,
//! so requests in flight across a reload keep counting against it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counts requests in flight through the whole proxy.
#[derive(Debug, Default)]
pub struct GlobalLimit {
    /// The cap (0 = unlimited); changed in place by a reload.
    max: AtomicU64,
    current: AtomicU64,
}

/// One request counted by a [`GlobalLimit`]; released on drop.
#[derive(Debug)]
pub struct GlobalPermit(Arc<GlobalLimit>);

impl GlobalLimit {
    /// A cap of `max` requests (0 = unlimited).
    pub fn new(max: u64) -> GlobalLimit {
        GlobalLimit {
            max: AtomicU64::new(max),
            current: AtomicU64::new(0),
        }
    }

    /// Changes the cap; requests already counted stay counted.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Takes a permit unless the cap is reached.
    pub fn try_acquire(self: &Arc<Self>) -> Option<GlobalPermit> {
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            self.current.fetch_add(1, Ordering::Relaxed);
            return Some(GlobalPermit(self.clone()));
        }
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| GlobalPermit(self.clone()))
    }

    /// Requests counted now.
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
}

impl Drop for GlobalPermit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let l = Arc::new(GlobalLimit::new(2));
        let a = l.try_acquire().unwrap();
        let _b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop(a);
        assert!(l.try_acquire().is_some());
        let unlimited = Arc::new(GlobalLimit::new(0));
        let permits: Vec<_> = (0..100).map(|_| unlimited.try_acquire().unwrap()).collect();
        assert_eq!(unlimited.current(), 100);
        drop(permits);
        assert_eq!(unlimited.current(), 0);
    }

    #[test]
    fn a_new_cap_counts_the_requests_already_in_flight() {
        let l = Arc::new(GlobalLimit::new(3));
        let mut held: Vec<_> = (0..3).map(|_| l.try_acquire().unwrap()).collect();
        l.set_max(4);
        let fourth = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none(), "3 held + 1 = the new cap of 4");
        l.set_max(2);
        drop(fourth);
        drop(held.pop());
        assert_eq!(l.current(), 2);
        assert!(l.try_acquire().is_none(), "2 still held = the new cap of 2");
    }
}
