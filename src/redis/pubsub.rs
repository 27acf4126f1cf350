//! Subscriptions that say when they may have missed messages.
//!
//! Redis pub/sub delivers at most once: whatever is published while a
//! subscriber is not connected is lost. So a subscription here is a stream of
//! [`Event`]s: `Subscribed` each time it (re)starts — the consumer must assume
//! it missed messages before that (the cache empties its in-process tier, the
//! lease waiters poll) — then `Message`s, then `Lost` when the connection goes.
//!
//! Standalone Redis: classic `SUBSCRIBE` on a connection of its own; messages
//! are sent with `PUBLISH`. Redis Cluster: **sharded** pub/sub (`SSUBSCRIBE`,
//! `SPUBLISH`, Redis 7.0+), on a RESP3 connection to the master that owns the
//! channel's slot. Why sharded rather than classic on a cluster:
//! - the cache publishes from inside its Lua scripts, which run on the node
//!   owning the cache's hash tag; `SPUBLISH` to a channel in that slot stays on
//!   that shard, while a classic `PUBLISH` is broadcast over the cluster bus to
//!   every node, whether anyone there listens or not;
//! - loss is explicit: the subscriber is connected to the node that owns the
//!   channel, so that node failing closes our connection (`Lost`), and a slot
//!   that moves makes Redis send `SUNSUBSCRIBE` (`Lost` as well). A classic
//!   subscriber on some random node can lose the publisher's node without
//!   noticing anything.
//!
//! redis-rs's cluster connection can carry subscriptions too, but it only
//! resubscribes after one of *its* requests fails; a subscriber that only
//! listens would not notice a failover. Hence the dedicated connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Mode, Redis};

/// What a subscription reports.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// (Re)subscribed: anything published before may have been missed.
    Subscribed,
    /// One message's payload.
    Message(Vec<u8>),
    /// The subscription ended; it is being re-established.
    Lost,
}

/// Subscribes to `channel` until `stop`, re-subscribing with backoff. The
/// channel is bounded: a consumer that falls behind makes Redis cut the
/// subscriber off (its output buffer limit), which surfaces as `Lost`.
pub fn subscribe(
    redis: Arc<Redis>,
    channel: String,
    stop: CancellationToken,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(redis, channel, tx, stop));
    rx
}

async fn run(redis: Arc<Redis>, channel: String, tx: mpsc::Sender<Event>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            s = open(&redis, &channel) => s,
        };
        match opened {
            Ok(mut sub) => {
                backoff = Duration::from_millis(50);
                if tx.send(Event::Subscribed).await.is_err() {
                    return;
                }
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = sub.next() => m,
                    };
                    match next {
                        Some(payload) => {
                            if tx.send(Event::Message(payload)).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    }
                }
                tracing::warn!(channel, "redis: subscription lost; re-subscribing");
                if tx.send(Event::Lost).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::debug!(channel, error = %e, "redis: cannot subscribe"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A live subscription.
enum Sub {
    Classic(redis::aio::PubSubStream),
    Sharded {
        /// Held so the connection stays open.
        _conn: redis::aio::MultiplexedConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Sub {
    /// The next payload; `None` when the subscription is over.
    async fn next(&mut self) -> Option<Vec<u8>> {
        match self {
            Sub::Classic(stream) => stream.next().await.map(|m| m.get_payload_bytes().to_vec()),
            Sub::Sharded { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                            return Some(payload);
                        }
                    }
                    // The slot moved or the node went away.
                    PushKind::SUnsubscribe | PushKind::Disconnection => return None,
                    _ => {}
                }
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Call(#[from] super::CallError),
    #[error("no cluster node owns slot {0}")]
    NoOwner(u16),
}

async fn open(redis: &Redis, channel: &str) -> Result<Sub, OpenError> {
    let within = redis.connect_timeout() + redis.timeout();
    match redis.mode() {
        Mode::Standalone => {
            let client = redis.target().standalone().expect("standalone");
            let opening = async {
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(ps)
            };
            let ps = tokio::time::timeout(within, opening)
                .await
                .map_err(|_| OpenError::Timeout)??;
            Ok(Sub::Classic(ps.into_on_message()))
        }
        Mode::Cluster => {
            let slot = super::slot::slot(channel.as_bytes());
            let (host, port) = owner(redis, slot).await?;
            let client = redis.target().node_client(&host, port)?;
            let (tx, pushes) = mpsc::unbounded_channel();
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(redis.connect_timeout())
                .set_push_sender(tx);
            let opening = async {
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?;
                redis::cmd("SSUBSCRIBE")
                    .arg(channel)
                    .exec_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>(conn)
            };
            let conn = tokio::time::timeout(within, opening)
                .await
                .map_err(|_| OpenError::Timeout)??;
            Ok(Sub::Sharded {
                _conn: conn,
                pushes,
            })
        }
    }
}

/// The master that owns `slot` now, from `CLUSTER SLOTS`.
async fn owner(redis: &Redis, slot: u16) -> Result<(String, u16), OpenError> {
    let ranges: Vec<Value> = redis
        .call(|mut c| async move { redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await })
        .await?;
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        if !(*start..=*end).contains(&(slot as i64)) {
            continue;
        }
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => continue,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            continue;
        };
        return Ok((host, *port as u16));
    }
    Err(OpenError::NoOwner(slot))
}
