//! Invalidations between instances: a Redis pub/sub channel.
//!
//! A message is lines: the sender's origin, then tags, `-agent` for an agent
//! whose blocks must be forgotten, or `*` for "drop everything". Delivery is at
//! most once: whenever the subscription (re)starts, invalidations may have been
//! missed, so the instance drops its whole in-process tier first. Classic
//! pub/sub on a standalone Redis, sharded on a cluster ([`crate::redis::pubsub`]).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::redis::pubsub::Event;

use super::metrics::RedisOp;
use super::tags::Tag;
use super::Shared;

/// A decoded invalidation message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub origin: String,
    pub tags: Vec<Tag>,
    pub forget: Vec<Tag>,
    pub flush: bool,
}

impl Message {
    pub fn parse(payload: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut lines = text.split('\n');
        let origin = lines.next()?.to_string();
        let mut m = Message {
            origin,
            ..Message::default()
        };
        for l in lines.filter(|l| !l.is_empty()) {
            if l == "*" {
                m.flush = true;
            } else if let Some(a) = l.strip_prefix('-') {
                m.forget.push(Arc::from(a));
            } else {
                m.tags.push(Arc::from(l));
            }
        }
        Some(m)
    }
}

/// Subscribes until `stop` (re-subscribing by itself, see [`crate::redis::pubsub`]).
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(l2) = shared.l2.as_ref() else { return };
    let mut events =
        crate::redis::pubsub::subscribe(l2.redis().clone(), l2.channel.clone(), stop.clone());
    while let Some(event) = events.recv().await {
        match event {
            // Whatever was published while we were not listening is lost.
            Event::Subscribed => shared.flush_local("subscribed to the invalidation channel"),
            Event::Message(payload) => {
                if let Some(m) = Message::parse(&payload) {
                    if m.origin != l2.origin {
                        shared.apply_remote(m).await;
                    }
                }
            }
            Event::Lost => shared.metrics.redis_error(RedisOp::Subscribe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        let m = Message::parse(b"abc\nagent-1\nc:agents\n-agent-1").unwrap();
        assert_eq!(m.origin, "abc");
        assert_eq!(m.tags.len(), 2);
        assert_eq!(&*m.forget[0], "agent-1");
        assert!(!m.flush);
        assert!(Message::parse(b"abc\n*").unwrap().flush);
        assert!(Message::parse(&[0xff, 0xfe]).is_none());
    }
}
