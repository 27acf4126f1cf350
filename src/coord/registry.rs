//! The instance registry: every proxy instance sharing a Redis announces
//! itself with a heartbeat and learns who else is alive.
//!
//! Keys (tag `{prefix:instances}`): `…:live`, a sorted set of instance id →
//! deadline (server clock, ms), and `…:info`, a hash of id → JSON description.
//! Each heartbeat (every `redis.heartbeat`) is one script call that drops the
//! instances past their deadline, pushes this one's deadline to now + three
//! heartbeats and returns everyone alive. So an instance that dies disappears
//! from everyone's view within three heartbeats plus one of theirs; one that
//! shuts down cleanly leaves at once ([`Registry::deregister`]).
//!
//! The view is published on a `watch` channel: shares of backend caps are
//! recomputed from it, `/-/status` lists it. A view older than three
//! heartbeats (Redis unreachable) is stale; the caller then acts alone.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::metrics::CoordMetrics;
use super::scripts::{DEREGISTER, HEARTBEAT};
use crate::redis::{slot, Redis};

/// One proxy instance, as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Random, chosen at start.
    pub id: String,
    /// A name for people (host name or pod name by default).
    pub name: String,
    /// Where it listens, as it reports it (left out of `/-/stats`, which
    /// shows no internal address).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Start time, seconds since the Unix epoch.
    pub started_at: u64,
}

impl Instance {
    /// This process: a fresh id, now.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Instance {
        Instance {
            id: format!("{:016x}", rand::random::<u64>()),
            name: name.into(),
            address: address.into(),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

/// The live instances as of the last successful heartbeat.
#[derive(Debug, Clone, Default)]
pub struct Membership {
    /// Sorted by id.
    pub instances: Vec<Instance>,
    /// When Redis last answered a heartbeat; `None`: never.
    pub refreshed: Option<Instant>,
}

impl Membership {
    /// Whether the view is recent enough to act on.
    pub fn is_fresh(&self, within: Duration) -> bool {
        self.refreshed.is_some_and(|t| t.elapsed() <= within)
    }

    pub fn ids(&self) -> Vec<&str> {
        self.instances.iter().map(|i| i.id.as_str()).collect()
    }
}

/// Heartbeats and the current view.
pub struct Registry {
    redis: Arc<Redis>,
    me: Instance,
    json: String,
    keys: [String; 2],
    heartbeat: Duration,
    dead_after: Duration,
    view: watch::Sender<Membership>,
    metrics: CoordMetrics,
    beat: Script,
    leave: Script,
}

impl Registry {
    pub fn new(
        redis: Arc<Redis>,
        me: Instance,
        heartbeat: Duration,
        metrics: CoordMetrics,
    ) -> Registry {
        let tag = slot::tag(&format!("{}:instances", redis.prefix()));
        Registry {
            json: serde_json::to_string(&me).expect("plain struct"),
            keys: [format!("{tag}:live"), format!("{tag}:info")],
            me,
            redis,
            heartbeat,
            dead_after: heartbeat * 3,
            view: watch::Sender::new(Membership::default()),
            metrics,
            beat: Script::new(HEARTBEAT),
            leave: Script::new(DEREGISTER),
        }
    }

    pub fn me(&self) -> &Instance {
        &self.me
    }

    /// How long a view (or an instance) lasts without a heartbeat.
    pub fn dead_after(&self) -> Duration {
        self.dead_after
    }

    /// The current view; `changed()` fires after every heartbeat that
    /// changed the set of live instances.
    pub fn watch(&self) -> watch::Receiver<Membership> {
        self.view.subscribe()
    }

    /// The current view.
    pub fn membership(&self) -> Membership {
        self.view.borrow().clone()
    }

    /// Loads the registry scripts ([`Redis::load_scripts`]).
    pub async fn load_scripts(&self) -> bool {
        self.redis.load_scripts(&[&self.beat, &self.leave]).await
    }

    /// One heartbeat; returns whether Redis answered.
    pub async fn beat(&self) -> bool {
        let mut call = self.beat.prepare_invoke();
        call.key(&self.keys[0])
            .key(&self.keys[1])
            .arg(&self.me.id)
            .arg(&self.json)
            .arg(self.dead_after.as_millis() as u64);
        let got = self
            .redis
            .call(|mut c| async move { call.invoke_async::<Vec<String>>(&mut c).await })
            .await;
        let Ok(flat) = got else {
            self.metrics.heartbeat_failures.inc();
            self.metrics.redis_up.set(0);
            return false;
        };
        // Every heartbeat says whether Redis answers, writes or not.
        self.metrics.redis_up.set(1);
        let mut instances: Vec<Instance> = flat
            .chunks(2)
            .filter_map(|pair| {
                let [id, json] = pair else { return None };
                // An entry whose description is unreadable still counts (by id).
                Some(serde_json::from_str(json).unwrap_or_else(|_| Instance {
                    id: id.clone(),
                    name: String::new(),
                    address: String::new(),
                    started_at: 0,
                }))
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.metrics.instances.set(instances.len() as i64);
        self.view.send_if_modified(|m| {
            let changed = m.instances != instances;
            m.instances = instances;
            m.refreshed = Some(Instant::now());
            changed
        });
        true
    }

    /// Leaves the registry at once (clean shutdown): the others take back
    /// this instance's share on their next heartbeat.
    pub async fn deregister(&self) {
        let mut call = self.leave.prepare_invoke();
        call.key(&self.keys[0]).key(&self.keys[1]).arg(&self.me.id);
        let _ = self
            .redis
            .call(|mut c| async move { call.invoke_async::<i64>(&mut c).await })
            .await;
    }

    /// Heartbeats until `stop`. Stopping does not deregister: a process that
    /// dies says nothing either; a clean shutdown calls [`Registry::deregister`].
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.redis.is_connected() && !self.redis.connect().await {
                self.metrics.heartbeat_failures.inc();
                self.metrics.redis_up.set(0);
                continue;
            }
            self.beat().await;
        }
    }
}
