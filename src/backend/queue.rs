//! A bounded FIFO queue of requests waiting for a backend slot.
//!
//! Waiters park on a `tokio::sync::Notify` (which wakes waiters in FIFO order);
//! every released slot wakes the head of the queue, which then tries again. New
//! arrivals queue behind existing waiters instead of barging, so a request is not
//! starved by later ones. The queue holds at most `capacity` requests, each at
//! most `timeout`; past either the caller answers 503 with `Retry-After`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The outcome of one attempt at taking a slot.
pub enum Attempt<T> {
    /// A slot was taken.
    Got(T),
    /// Every usable backend is at its cap: worth waiting.
    Busy,
    /// No backend can take requests at all (down, draining): waiting won't help.
    Unusable,
}

/// Why a request left the queue without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue already held `capacity` requests.
    Full,
    /// The request waited `timeout` without getting a slot.
    TimedOut,
    /// No backend is usable.
    Unusable,
}

/// Requests waiting for a backend slot.
#[derive(Debug)]
pub struct WaitQueue {
    notify: Notify,
    waiting: AtomicUsize,
    /// Atomics so a reload can change them for the next arrivals.
    capacity: AtomicUsize,
    timeout_ms: AtomicU64,
}

impl WaitQueue {
    /// A queue of at most `capacity` requests waiting at most `timeout` each.
    pub fn new(capacity: usize, timeout: Duration) -> WaitQueue {
        WaitQueue {
            notify: Notify::new(),
            waiting: AtomicUsize::new(0),
            capacity: AtomicUsize::new(capacity),
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
        }
    }

    /// Changes the limits for requests that arrive from now on.
    pub fn resize(&self, capacity: usize, timeout: Duration) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether nobody is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the head of the queue: a slot was released. Costs one atomic load
    /// when nobody waits (the common case).
    pub fn wake_one(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.notify.notify_one();
        }
    }

    /// Wakes every waiter: slots appeared without a release (a cap grew).
    pub fn wake_all(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Takes a slot with `attempt`, waiting in line when every backend is busy.
    /// Returns the slot and how long the request waited.
    pub async fn acquire<T>(
        &self,
        mut attempt: impl FnMut() -> Attempt<T>,
    ) -> Result<(T, Duration), QueueError> {
        if self.is_empty() {
            match attempt() {
                Attempt::Got(t) => return Ok((t, Duration::ZERO)),
                Attempt::Unusable => return Err(QueueError::Unusable),
                Attempt::Busy => {}
            }
        }
        let capacity = self.capacity.load(Ordering::Relaxed);
        if capacity == 0 {
            return Err(QueueError::Full);
        }
        // Reserve a place in line, bounded by capacity.
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .map_err(|_| QueueError::Full)?;
        let _place = Place(&self.waiting);
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed));
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before trying, so a release between the try and the wait is not lost.
            notified.as_mut().enable();
            match attempt() {
                Attempt::Got(t) => return Ok((t, started.elapsed())),
                Attempt::Unusable => return Err(QueueError::Unusable),
                Attempt::Busy => {}
            }
            // A notification dropped unconsumed (timeout, client gone) is passed on
            // to the next waiter by tokio, so no released slot is lost.
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(QueueError::TimedOut);
            }
        }
    }
}

/// Frees a place in line however the waiter leaves (slot, timeout, client gone).
struct Place<'a>(&'a AtomicUsize);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    /// A pool of `n` slots standing in for backends.
    struct Slots(AtomicU32);
    impl Slots {
        fn try_take(&self) -> Attempt<()> {
            match self
                .0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            {
                Ok(_) => Attempt::Got(()),
                Err(_) => Attempt::Busy,
            }
        }
        fn give_back(&self, q: &WaitQueue) {
            self.0.fetch_add(1, Ordering::AcqRel);
            q.wake_one();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_slots_in_arrival_order() {
        let q = Arc::new(WaitQueue::new(10, Duration::from_secs(60)));
        let slots = Arc::new(Slots(AtomicU32::new(0)));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (q2, slots, order) = (q.clone(), slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                q2.acquire(|| slots.try_take()).await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // Let task i park before task i+1 arrives.
            while q.len() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        for _ in 0..5 {
            slots.give_back(&q);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_and_a_long_wait_are_refused() {
        let q = Arc::new(WaitQueue::new(1, Duration::from_millis(500)));
        let busy = || Attempt::<()>::Busy;
        let first = tokio::spawn({
            let q = q.clone();
            async move { q.acquire(busy).await.map(|_| ()) }
        });
        while q.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(q.acquire(busy).await.unwrap_err(), QueueError::Full);
        assert_eq!(first.await.unwrap().unwrap_err(), QueueError::TimedOut);
        assert_eq!(q.len(), 0, "the place in line is freed");
        assert_eq!(
            q.acquire(|| Attempt::<()>::Unusable).await.unwrap_err(),
            QueueError::Unusable
        );
    }
}
