//! Copying a response while it streams to the client.
//!
//! The client gets every chunk as soon as the backend sends it (nothing waits
//! for the copy); the copy keeps references to the chunks (no byte copying
//! until the end) up to the largest cap asked for, and each consumer gets the
//! body only if it completed within its own cap. Work on the complete body
//! (scanning ids, storing) is spawned, so the connection task that polls the
//! body never does it.

use bytes::{Bytes, BytesMut};

use crate::body::{Outcome, Watch};

/// Why no complete copy is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The body failed or the client went away before its end.
    Failed,
    /// The body was larger than the consumer's cap.
    TooLarge,
}

type Done = Box<dyn FnOnce(Result<Bytes, Cut>) + Send>;

/// A body watch that copies up to the largest cap and tells each consumer at the end.
#[derive(Default)]
pub struct Tee {
    parts: Vec<Bytes>,
    size: usize,
    /// Past every consumer's cap: nothing is kept any more.
    overflow: bool,
    consumers: Vec<(usize, Done)>,
}

impl Tee {
    /// A copy for one consumer: `done` receives the whole body (up to `cap` bytes), or why not.
    pub fn new(cap: usize, done: impl FnOnce(Result<Bytes, Cut>) + Send + 'static) -> Tee {
        let mut t = Tee::default();
        t.add(cap, done);
        t
    }

    /// One more consumer of the same copy.
    pub fn add(&mut self, cap: usize, done: impl FnOnce(Result<Bytes, Cut>) + Send + 'static) {
        self.consumers.push((cap, Box::new(done)));
    }

    fn cap(&self) -> usize {
        self.consumers.iter().map(|(c, _)| *c).max().unwrap_or(0)
    }
}

impl Watch for Tee {
    fn data(&mut self, chunk: &Bytes) {
        if self.overflow {
            self.size += chunk.len();
            return;
        }
        self.size += chunk.len();
        if self.size > self.cap() {
            // Past every cap the copy is useless: let go of what was kept.
            self.overflow = true;
            self.parts = Vec::new();
            return;
        }
        self.parts.push(chunk.clone());
    }

    fn finish(mut self, outcome: Outcome) {
        let whole = (outcome.complete && !self.overflow).then(|| match self.parts.len() {
            1 => self.parts.pop().expect("one part"),
            _ => {
                let mut all = BytesMut::with_capacity(self.size);
                for p in &self.parts {
                    all.extend_from_slice(p);
                }
                all.freeze()
            }
        });
        for (cap, done) in self.consumers {
            done(if !outcome.complete {
                Err(Cut::Failed)
            } else if self.size > cap {
                Err(Cut::TooLarge)
            } else {
                Ok(whole.clone().expect("within every cap"))
            });
        }
    }
}

/// Runs `f` on the runtime (the end of a body is seen inside a poll).
pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{Full, Watched};
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<Result<Bytes, Cut>>>>;

    fn watched(body: Full, caps: &[usize]) -> (Watched<Full, Tee>, Seen) {
        let seen: Seen = Arc::default();
        let mut tee = Tee::default();
        for cap in caps {
            let s = seen.clone();
            tee.add(*cap, move |r| s.lock().unwrap().push(r));
        }
        (Watched::new(body, tee), seen)
    }

    #[tokio::test]
    async fn the_client_gets_the_body_and_the_copy_matches() {
        let (b, seen) = watched(Full::new("hello"), &[100]);
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(got, "hello");
        assert_eq!(*seen.lock().unwrap(), [Ok(Bytes::from("hello"))]);
    }

    #[tokio::test]
    async fn over_the_cap_the_client_still_gets_everything() {
        let (b, seen) = watched(Full::new("hello"), &[3]);
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(*seen.lock().unwrap(), [Err(Cut::TooLarge)]);
    }

    #[tokio::test]
    async fn each_consumer_gets_its_own_cap() {
        let (b, seen) = watched(Full::new("hello"), &[100, 0]);
        b.collect().await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [Ok(Bytes::from("hello")), Err(Cut::TooLarge)]
        );
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_complete() {
        let (b, seen) = watched(Full::new("hello"), &[100]);
        drop(b);
        assert_eq!(*seen.lock().unwrap(), [Err(Cut::Failed)]);
    }
}
