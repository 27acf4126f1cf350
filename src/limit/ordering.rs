//! Per-agent and per-block write ordering.
//!
//! Letta does not serialise writes to one agent: concurrent messages all answer
//! 200 but only the last turn stays in the agent's context, and concurrent PATCHes
//! of one block answer 409. The proxy runs writes that target the same agent
//! (`/v1/agents/{id}/…`) or block (`/v1/blocks/{id}`) one at a time, in arrival
//! order (tokio's `Mutex` is FIFO), with a bounded wait. Reads never wait.
//!
//! The held [`WriteTurn`] lives in the response body, so a streamed message holds
//! its agent until the stream ends. Locks exist only while someone holds or waits
//! for them: the last one out removes the entry, so the map stays as small as the
//! set of agents being written right now.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

type Lock = Arc<tokio::sync::Mutex<()>>;

/// The write locks of every agent and block being written.
#[derive(Debug, Default)]
pub struct WriteOrdering {
    locks: Mutex<HashMap<Box<str>, Lock>>,
}

/// The right to write to one agent or block; the next writer goes when it drops.
pub struct WriteTurn {
    guard: Option<OwnedMutexGuard<()>>,
    key: Box<str>,
    owner: Arc<WriteOrdering>,
}

impl WriteOrdering {
    /// An empty set of locks.
    pub fn new() -> Arc<WriteOrdering> {
        Arc::new(WriteOrdering::default())
    }

    /// Waits (at most `timeout`) for the turn to write to `key`.
    /// `None` when the wait timed out.
    pub async fn turn(self: &Arc<Self>, key: &str, timeout: Duration) -> Option<WriteTurn> {
        let lock = {
            let mut locks = self.locks.lock().expect("write locks poisoned");
            locks.entry(Box::from(key)).or_default().clone()
        };
        // The entry is created before waiting, so our clone keeps it alive; if we
        // give up, Drop of `Cleanup` removes it when we were the last.
        let cleanup = Cleanup {
            key: Some(Box::from(key)),
            owner: self.clone(),
        };
        match tokio::time::timeout(timeout, lock.lock_owned()).await {
            Ok(guard) => {
                let key = cleanup.disarm();
                Some(WriteTurn {
                    guard: Some(guard),
                    key,
                    owner: self.clone(),
                })
            }
            Err(_) => None,
        }
    }

    /// Agents and blocks with a writer or a waiter now.
    pub fn active_keys(&self) -> usize {
        self.locks.lock().expect("write locks poisoned").len()
    }

    fn forget_if_unused(&self, key: &str) {
        let mut locks = self.locks.lock().expect("write locks poisoned");
        // Only the map's own reference left: nobody holds or waits for it.
        if locks.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(key);
        }
    }
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.owner.forget_if_unused(&self.key);
    }
}

impl std::fmt::Debug for WriteTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTurn").field("key", &self.key).finish()
    }
}

/// Removes a lock entry when a waiter gives up (timeout or client gone).
struct Cleanup {
    key: Option<Box<str>>,
    owner: Arc<WriteOrdering>,
}

impl Cleanup {
    fn disarm(mut self) -> Box<str> {
        self.key.take().expect("disarmed once")
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.owner.forget_if_unused(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_to_one_key_run_one_at_a_time_in_order() {
        let w = WriteOrdering::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = w.turn("agent-1", Duration::from_secs(10)).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (w, log) = (w.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let _t = w.turn("agent-1", Duration::from_secs(10)).await.unwrap();
                log.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Another agent is not held up.
        assert!(w.turn("agent-2", Duration::from_millis(1)).await.is_some());
        assert!(
            log.lock().unwrap().is_empty(),
            "nobody runs while the first holds the turn"
        );
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(w.active_keys(), 0, "entries are removed when unused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_gives_up_and_cleans_up() {
        let w = WriteOrdering::new();
        let held = w.turn("block-1", Duration::from_secs(1)).await.unwrap();
        assert!(w
            .turn("block-1", Duration::from_millis(100))
            .await
            .is_none());
        assert_eq!(w.active_keys(), 1);
        drop(held);
        assert_eq!(w.active_keys(), 0);
    }
}
