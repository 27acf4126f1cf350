//! Write leases in Redis: one writer at a time per agent (or block) across
//! every proxy instance sharing the Redis, in arrival order.
//!
//! # Algorithm
//!
//! Per lease key `K` (an agent or block id), four keys with the hash tag
//! `{prefix:lease:K}` (one cluster slot per agent, so leases spread over a
//! cluster): the holder (`…:h`, a hash of waiter id and token, with a TTL),
//! the queue (`…:q`, waiter id → ticket), the waiters' liveness (`…:a`,
//! waiter id → deadline) and a ticket counter (`…:n`).
//!
//! - **Acquire** is one script call: the first call gives the waiter a ticket
//!   from the counter (`INCR`, atomic in Redis) and queues it; every call
//!   grants the lease when nobody holds it and the caller has the smallest
//!   ticket. The ticket becomes the **fencing token**: tickets only grow, and
//!   leases are granted in ticket order, so each holder of a key has a larger
//!   token than every holder before it (a new counter starts at the server
//!   clock in µs, so this survives an idle counter expiring).
//! - **FIFO across instances**: the order is the order in which the waiters'
//!   first calls reached Redis — the one point every instance shares. A waiter
//!   that stops polling (its instance died) is dropped from the queue when its
//!   liveness deadline passes (one TTL), so it cannot block the line.
//! - **Waiting**: a queued waiter sleeps until it is woken or a poll is due.
//!   A release names the next waiter and publishes the key on that waiter's
//!   instance channel (`prefix:wake:<instance>`); the instance wakes its
//!   waiters of that key, which call again: the hand-over costs the release,
//!   one publish and one acquire call. Polls are a backstop: every TTL/3 (each
//!   poll also renews the waiter's liveness), or right when the holder's TTL
//!   runs out (the reply says how long it has left), or with a short backoff
//!   from 10 ms while the wake subscription is down.
//! - **Held**: a task renews the lease every TTL/3 while the guard lives (a
//!   streamed agent turn holds it for minutes). A renewal that finds the lease
//!   gone (renewals failed for a whole TTL) marks it lost: counted, logged,
//!   and the write goes on (a request is never failed for Redis).
//! - **Release**: dropping the guard (or [`LeaseGuard::release`]) deletes the
//!   holder and wakes the next waiter. A holder that dies stops renewing: the
//!   lease expires within one TTL, and the next waiter's poll takes it then.
//! - **Redis trouble** is never an error: any failed call makes `acquire`
//!   answer [`LeaseError::Unavailable`], and the caller orders the write on
//!   this instance only. The waiter then leaves the queue (best effort, in the
//!   background) so a grant it never heard of cannot block the key for a TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::metrics::CoordMetrics;
use super::scripts::{ACQUIRE, RELEASE, RENEW};
use crate::redis::pubsub::Event;
use crate::redis::{slot, CallError, Redis};

/// Why no lease was granted.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Redis is not reachable (or failed): order the write on this instance.
    #[error("Redis unavailable for write leases: {0}")]
    Unavailable(#[from] CallError),
    /// Earlier writers held the key for the whole wait: answer 503.
    #[error("timed out waiting for the write lease")]
    Timeout,
}

/// The four keys of one lease.
struct Keys {
    lease: Box<str>,
    holder: String,
    queue: String,
    alive: String,
    counter: String,
}

impl Keys {
    fn new(prefix: &str, lease: &str) -> Keys {
        let tag = slot::tag(&format!("{prefix}:lease:{lease}"));
        Keys {
            lease: lease.into(),
            holder: format!("{tag}:h"),
            queue: format!("{tag}:q"),
            alive: format!("{tag}:a"),
            counter: format!("{tag}:n"),
        }
    }
}

/// What one acquire call found.
enum Grant {
    Held { token: u64 },
    Queued { holder_left: Duration },
}

/// The lease side of coordination.
pub struct Leases {
    redis: Arc<Redis>,
    instance: String,
    ttl: Duration,
    seq: AtomicU64,
    /// Local waiters per lease key, woken by wake messages.
    wakers: Mutex<HashMap<Box<str>, Arc<Notify>>>,
    /// Whether the wake subscription is up (else waiters poll quickly).
    listening: AtomicBool,
    metrics: CoordMetrics,
    stop: CancellationToken,
    acquire: Script,
    release: Script,
    renew: Script,
}

impl Leases {
    pub fn new(
        redis: Arc<Redis>,
        instance: String,
        ttl: Duration,
        metrics: CoordMetrics,
        stop: CancellationToken,
    ) -> Leases {
        Leases {
            redis,
            instance,
            ttl,
            seq: AtomicU64::new(0),
            wakers: Mutex::new(HashMap::new()),
            listening: AtomicBool::new(false),
            metrics,
            stop,
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
            renew: Script::new(RENEW),
        }
    }

    /// Loads the lease scripts ([`Redis::load_scripts`]).
    pub async fn load_scripts(&self) -> bool {
        self.redis
            .load_scripts(&[&self.acquire, &self.release, &self.renew])
            .await
    }

    /// This instance's wake channel.
    fn wake_channel(&self, instance: &str) -> String {
        format!("{}:wake:{instance}", self.redis.prefix())
    }

    /// Listens on this instance's wake channel until `stop`.
    pub async fn listen(self: Arc<Self>) {
        let mut events = crate::redis::pubsub::subscribe(
            self.redis.clone(),
            self.wake_channel(&self.instance),
            self.stop.clone(),
        );
        while let Some(event) = events.recv().await {
            match event {
                Event::Subscribed => {
                    self.listening.store(true, Ordering::Release);
                    // A wake-up may have been published while we were deaf.
                    self.wake_all();
                }
                Event::Message(key) => {
                    if let Ok(key) = std::str::from_utf8(&key) {
                        self.wake(key);
                    }
                }
                Event::Lost => self.listening.store(false, Ordering::Release),
            }
        }
    }

    /// Whether the wake subscription is up.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn wake(&self, key: &str) {
        let n = self
            .wakers
            .lock()
            .expect("wakers poisoned")
            .get(key)
            .cloned();
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .wakers
            .lock()
            .expect("wakers poisoned")
            .values()
            .cloned()
            .collect();
        for n in all {
            n.notify_waiters();
        }
    }

    /// Waits (at most `timeout`) for the lease on `key`.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &str,
        timeout: Duration,
    ) -> Result<LeaseGuard, LeaseError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let waiter = format!(
            "{}#{}",
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        );
        let keys = Arc::new(Keys::new(self.redis.prefix(), key));
        let notify = WakerRef::new(self, key);
        // Leaves the queue if this future is dropped or gives up.
        let mut waiting = Waiting {
            leases: self.clone(),
            keys: keys.clone(),
            waiter: Some(waiter.clone()),
        };
        let mut deaf_backoff = Duration::from_millis(10);
        let poll = self.ttl / 3;
        loop {
            let notified = notify.0.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_acquire(&keys, &waiter).await {
                Err(e) => {
                    self.metrics.fallbacks.inc();
                    self.metrics.redis_up.set(0);
                    return Err(LeaseError::Unavailable(e));
                }
                Ok(Grant::Held { token }) => {
                    self.metrics.redis_up.set(1);
                    self.metrics.acquired.inc();
                    self.metrics.wait.observe(started.elapsed().as_secs_f64());
                    waiting.waiter = None;
                    return Ok(LeaseGuard::new(self.clone(), keys, waiter, token));
                }
                Ok(Grant::Queued { holder_left }) => {
                    self.metrics.redis_up.set(1);
                    let now = Instant::now();
                    if now >= deadline {
                        self.metrics.timed_out.inc();
                        return Err(LeaseError::Timeout);
                    }
                    let mut nap = if self.is_listening() {
                        poll
                    } else {
                        let d = deaf_backoff;
                        deaf_backoff = (deaf_backoff * 2).min(poll);
                        d
                    };
                    if !holder_left.is_zero() {
                        nap = nap.min(holder_left + Duration::from_millis(1));
                    }
                    nap = nap.min(deadline - now);
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(nap) => {}
                        _ = self.stop.cancelled() => {
                            return Err(LeaseError::Unavailable(CallError::NotConnected));
                        }
                    }
                }
            }
        }
    }

    async fn try_acquire(&self, keys: &Keys, waiter: &str) -> Result<Grant, CallError> {
        let mut call = self.acquire.prepare_invoke();
        call.key(&keys.holder)
            .key(&keys.queue)
            .key(&keys.alive)
            .key(&keys.counter)
            .arg(waiter)
            .arg(self.ttl.as_millis() as u64);
        let (granted, token, left): (u8, u64, i64) = self
            .redis
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(if granted == 1 {
            Grant::Held { token }
        } else {
            Grant::Queued {
                holder_left: Duration::from_millis(left.max(0) as u64),
            }
        })
    }

    /// Gives the lease back (or leaves the queue) and wakes the next waiter.
    async fn leave(&self, keys: &Keys, waiter: &str) -> Result<bool, CallError> {
        let mut call = self.release.prepare_invoke();
        call.key(&keys.holder)
            .key(&keys.queue)
            .key(&keys.alive)
            .arg(waiter);
        let reply: Vec<redis::Value> = self
            .redis
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        let released = matches!(reply.first(), Some(redis::Value::Int(1)));
        if let Some(next) = reply.get(1) {
            let next: String = redis::from_redis_value(next).unwrap_or_default();
            if let Some((instance, _)) = next.split_once('#') {
                self.wake_instance(instance, &keys.lease).await;
            }
        }
        Ok(released)
    }

    async fn wake_instance(&self, instance: &str, lease: &str) {
        if instance == self.instance {
            // Our own waiter: no need to go through Redis.
            self.wake(lease);
            return;
        }
        let channel = self.wake_channel(instance);
        let publish = self.redis.publish_command();
        let _ = self
            .redis
            .call(|mut c| async move {
                redis::cmd(publish)
                    .arg(channel)
                    .arg(lease)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await;
    }

    async fn renew_once(&self, keys: &Keys, waiter: &str) -> Result<bool, CallError> {
        let mut call = self.renew.prepare_invoke();
        call.key(&keys.holder)
            .arg(waiter)
            .arg(self.ttl.as_millis() as u64);
        let still: i64 = self
            .redis
            .call(|mut c| async move { call.invoke_async(&mut c).await })
            .await?;
        Ok(still == 1)
    }

    /// Renews a held lease every TTL/3 until `done`.
    async fn keep_renewing(
        self: Arc<Self>,
        keys: Arc<Keys>,
        waiter: String,
        lost: Arc<AtomicBool>,
        done: CancellationToken,
    ) {
        let mut last_ok = Instant::now();
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.renew_once(&keys, &waiter).await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    self.mark_lost(&keys, &lost);
                    return;
                }
                // Keep trying: the lease lives until its TTL runs out.
                Err(_) if last_ok.elapsed() < self.ttl => {}
                Err(_) => {
                    self.mark_lost(&keys, &lost);
                    return;
                }
            }
        }
    }

    fn mark_lost(&self, keys: &Keys, lost: &AtomicBool) {
        if !lost.swap(true, Ordering::AcqRel) {
            self.metrics.lost.inc();
            tracing::warn!(
                key = &*keys.lease,
                "coord: write lease lost (Redis renewals failed); the write goes on, another instance may write to this key meanwhile"
            );
        }
    }
}

/// This waiter's registration for wake-ups of one key; the last one out
/// removes the entry, so the map is as small as the set of keys waited on.
struct WakerRef(Arc<Notify>, Arc<Leases>, Box<str>);

impl WakerRef {
    fn new(leases: &Arc<Leases>, key: &str) -> WakerRef {
        let n = leases
            .wakers
            .lock()
            .expect("wakers poisoned")
            .entry(Box::from(key))
            .or_default()
            .clone();
        WakerRef(n, leases.clone(), Box::from(key))
    }
}

impl Drop for WakerRef {
    fn drop(&mut self) {
        let mut map = self.1.wakers.lock().expect("wakers poisoned");
        // The map's reference and ours: nobody else waits on this key.
        if map
            .get(&self.2)
            .is_some_and(|n| Arc::ptr_eq(n, &self.0) && Arc::strong_count(n) == 2)
        {
            map.remove(&self.2);
        }
    }
}

/// A waiter that has not got the lease: leaves the queue when dropped.
struct Waiting {
    leases: Arc<Leases>,
    keys: Arc<Keys>,
    waiter: Option<String>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            spawn_leave(self.leases.clone(), self.keys.clone(), waiter);
        }
    }
}

fn spawn_leave(leases: Arc<Leases>, keys: Arc<Keys>, waiter: String) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = leases.leave(&keys, &waiter).await;
        });
    }
}

/// A held write lease. Renewed in the background while it lives; dropping it
/// (or [`LeaseGuard::release`]) gives it back and wakes the next waiter.
pub struct LeaseGuard {
    leases: Arc<Leases>,
    keys: Arc<Keys>,
    waiter: String,
    token: u64,
    lost: Arc<AtomicBool>,
    renewing: CancellationToken,
    released: bool,
}

impl LeaseGuard {
    fn new(leases: Arc<Leases>, keys: Arc<Keys>, waiter: String, token: u64) -> LeaseGuard {
        let lost = Arc::new(AtomicBool::new(false));
        // A child of the coordinator's token: a stopped (or crashed)
        // coordinator stops renewing.
        let renewing = leases.stop.child_token();
        leases.metrics.held.inc();
        tokio::spawn(leases.clone().keep_renewing(
            keys.clone(),
            waiter.clone(),
            lost.clone(),
            renewing.clone(),
        ));
        LeaseGuard {
            leases,
            keys,
            waiter,
            token,
            lost,
            renewing,
            released: false,
        }
    }

    /// The fencing token: larger than every earlier holder's of this key.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease key (agent or block id).
    pub fn key(&self) -> &str {
        &self.keys.lease
    }

    /// Whether the lease expired in Redis while held (renewals failed).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Gives the lease back now and waits for Redis to confirm. Returns
    /// whether this guard still held it.
    pub async fn release(mut self) -> bool {
        self.released = true;
        self.renewing.cancel();
        self.leases.metrics.held.dec();
        self.leases
            .leave(&self.keys, &self.waiter)
            .await
            .unwrap_or(false)
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.renewing.cancel();
        self.leases.metrics.held.dec();
        spawn_leave(
            self.leases.clone(),
            self.keys.clone(),
            std::mem::take(&mut self.waiter),
        );
    }
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.keys.lease)
            .field("token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}
