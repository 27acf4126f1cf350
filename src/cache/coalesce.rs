//! Request coalescing: concurrent misses for one key send one request.
//!
//! The first miss becomes the leader and registers a fill; later misses for the
//! same key wait (at most `coalesce_timeout`) for the leader's answer and serve
//! it as a hit, or go to a backend themselves when the answer cannot be shared
//! (an error, not storable, too large) or takes too long. A request may only
//! join a fill still in progress if no invalidation happened since it began
//! (its answer might predate a write the joiner has already seen answered), and
//! a finished fill only if its answer's tags were not invalidated since. The
//! registration outlives the body: it is removed once the entry is in L1, so a
//! request arriving in between still finds the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::entry::Entry;
use super::key::CacheKey;

/// `None` while the leader is fetching, then `Some(answer)`.
type State = Option<Option<Arc<Entry>>>;

struct Fill {
    epoch: u64,
    tx: watch::Sender<State>,
}

/// The fills in progress.
#[derive(Default)]
pub struct Coalescer {
    fills: Mutex<HashMap<CacheKey, Arc<Fill>>>,
}

/// What a miss does.
pub enum Role {
    Lead(Leader),
    Wait(watch::Receiver<State>),
}

impl Coalescer {
    /// Joins the fill of `key` when its answer can still be trusted: in
    /// progress and begun at `epoch` (no invalidation since), or finished with
    /// an answer `valid(begun_at, answer)` accepts. Else leads a new fill.
    pub fn join(
        self: &Arc<Self>,
        key: CacheKey,
        epoch: u64,
        valid: impl Fn(u64, &Entry) -> bool,
    ) -> Role {
        let mut fills = self.fills.lock().expect("fills poisoned");
        if let Some(f) = fills.get(&key) {
            let joinable = match &*f.tx.borrow() {
                None => f.epoch == epoch,
                Some(Some(answer)) => valid(f.epoch, answer),
                Some(None) => false,
            };
            if joinable {
                return Role::Wait(f.tx.subscribe());
            }
        }
        self.lead_locked(&mut fills, key, epoch)
    }

    /// Leads a new fill of `key`, replacing any other (a refresh must not
    /// wait for an older answer).
    pub fn lead(self: &Arc<Self>, key: CacheKey, epoch: u64) -> Leader {
        let mut fills = self.fills.lock().expect("fills poisoned");
        match self.lead_locked(&mut fills, key, epoch) {
            Role::Lead(l) => l,
            Role::Wait(_) => unreachable!("lead_locked always leads"),
        }
    }

    fn lead_locked(
        self: &Arc<Self>,
        fills: &mut HashMap<CacheKey, Arc<Fill>>,
        key: CacheKey,
        epoch: u64,
    ) -> Role {
        let (tx, _) = watch::channel(None);
        let fill = Arc::new(Fill { epoch, tx });
        fills.insert(key, fill.clone());
        Role::Lead(Leader {
            key,
            fill,
            owner: self.clone(),
        })
    }

    pub fn in_progress(&self) -> usize {
        self.fills.lock().expect("fills poisoned").len()
    }
}

/// Waits for a leader's answer; `None` means "fetch it yourself".
pub async fn wait(mut rx: watch::Receiver<State>, timeout: Duration) -> Option<Arc<Entry>> {
    let done = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_some())).await;
    match done {
        Ok(Ok(state)) => state.clone().flatten(),
        _ => None,
    }
}

/// The leader of a fill. Dropping it without [`Leader::publish`] tells the
/// waiters to fetch for themselves (the client went away, the answer failed).
pub struct Leader {
    key: CacheKey,
    fill: Arc<Fill>,
    owner: Arc<Coalescer>,
}

impl Leader {
    /// Hands the answer to every waiter (and to requests that join until drop).
    pub fn publish(&self, answer: Option<Arc<Entry>>) {
        self.fill.tx.send_replace(Some(answer));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.fill.tx.borrow().is_none() {
            self.fill.tx.send_replace(Some(None));
        }
        let mut fills = self.owner.fills.lock().expect("fills poisoned");
        // Only our own registration: a newer fill may have replaced it.
        if fills
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.fill))
        {
            fills.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            Bytes::from_static(b"x"),
            Duration::from_secs(5),
            vec![],
        ))
    }

    #[tokio::test]
    async fn waiters_get_the_leaders_answer() {
        let c = Arc::new(Coalescer::default());
        let k = CacheKey([1; 16]);
        let Role::Lead(leader) = c.join(k, 0, |_, _| true) else {
            panic!("first leads")
        };
        let Role::Wait(rx) = c.join(k, 0, |_, _| true) else {
            panic!("second waits")
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        leader.publish(Some(entry()));
        assert!(waiter.await.unwrap().is_some());
        // Until the leader is dropped, late arrivals still get the answer,
        // even after an invalidation, if it did not touch the answer.
        let Role::Wait(rx) = c.join(k, 7, |_, _| true) else {
            panic!("joins finished fill")
        };
        assert!(wait(rx, Duration::from_millis(10)).await.is_some());
        let Role::Lead(_) = c.join(k, 7, |_, _| false) else {
            panic!("stale answer: lead")
        };
        drop(leader);
        assert_eq!(c.in_progress(), 0);
    }

    #[tokio::test]
    async fn a_vanished_leader_releases_its_waiters() {
        let c = Arc::new(Coalescer::default());
        let k = CacheKey([2; 16]);
        let Role::Lead(leader) = c.join(k, 0, |_, _| true) else {
            panic!()
        };
        let Role::Wait(rx) = c.join(k, 0, |_, _| true) else {
            panic!()
        };
        drop(leader);
        assert!(wait(rx, Duration::from_secs(5)).await.is_none());
    }

    #[tokio::test]
    async fn no_joining_a_fill_older_than_an_invalidation() {
        let c = Arc::new(Coalescer::default());
        let k = CacheKey([3; 16]);
        let Role::Lead(old) = c.join(k, 0, |_, _| true) else {
            panic!()
        };
        let Role::Lead(new) = c.join(k, 1, |_, _| true) else {
            panic!("epoch moved: lead anew")
        };
        drop(old); // must not remove the newer registration
        assert_eq!(c.in_progress(), 1);
        drop(new);
        assert_eq!(c.in_progress(), 0);
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let c = Arc::new(Coalescer::default());
        let k = CacheKey([4; 16]);
        let Role::Lead(_leader) = c.join(k, 0, |_, _| true) else {
            panic!()
        };
        let Role::Wait(rx) = c.join(k, 0, |_, _| true) else {
            panic!()
        };
        assert!(wait(rx, Duration::from_millis(20)).await.is_none());
    }
}
