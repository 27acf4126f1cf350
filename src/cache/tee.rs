//! Copying a response while it streams to the client.
//!
//! The client gets every chunk as soon as the backend sends it (nothing waits
//! for the copy); the copy keeps references to the chunks (no byte copying
//! until the end) up to a size cap, and is handed over only if the body
//! completed. Work on the complete body (scanning ids, storing) is spawned, so
//! the connection task that polls the body never does it.

use bytes::{Bytes, BytesMut};

use crate::proxy::body::{BodyObserver, ResponseBody};

/// Why no complete copy is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The body failed or the client went away before its end.
    Failed,
    /// The body was larger than the cap.
    TooLarge,
}

type Done = Box<dyn FnOnce(Result<Bytes, Cut>) + Send>;

/// Copies up to `cap` bytes and calls `done` once at the end.
pub struct Tee {
    parts: Vec<Bytes>,
    size: usize,
    cap: usize,
    overflow: bool,
    done: Option<Done>,
}

impl Tee {
    /// Wraps `body`: `done` receives the whole body, or why not.
    pub fn wrap(
        body: ResponseBody,
        cap: usize,
        done: impl FnOnce(Result<Bytes, Cut>) + Send + 'static,
    ) -> ResponseBody {
        let tee = Tee {
            parts: Vec::new(),
            size: 0,
            cap,
            overflow: false,
            done: Some(Box::new(done)),
        };
        ResponseBody::observed(body, Box::new(tee))
    }
}

impl BodyObserver for Tee {
    fn data(&mut self, chunk: &Bytes) {
        if self.overflow {
            return;
        }
        if self.size + chunk.len() > self.cap {
            // Past the cap the copy is useless: let go of what was kept.
            self.overflow = true;
            self.parts = Vec::new();
            return;
        }
        self.size += chunk.len();
        self.parts.push(chunk.clone());
    }

    fn end(mut self: Box<Self>, ok: bool) {
        let Some(done) = self.done.take() else { return };
        let outcome = if !ok {
            Err(Cut::Failed)
        } else if self.overflow {
            Err(Cut::TooLarge)
        } else if self.parts.len() == 1 {
            Ok(self.parts.pop().expect("one part"))
        } else {
            let mut all = BytesMut::with_capacity(self.size);
            for p in &self.parts {
                all.extend_from_slice(p);
            }
            Ok(all.freeze())
        };
        done(outcome);
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
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Option<Result<Bytes, Cut>>>>;

    fn watched(body: ResponseBody, cap: usize) -> (ResponseBody, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let b = Tee::wrap(body, cap, move |r| *s.lock().unwrap() = Some(r));
        (b, seen)
    }

    #[tokio::test]
    async fn the_client_gets_the_body_and_the_copy_matches() {
        let (b, seen) = watched(ResponseBody::full("hello"), 100);
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(got, "hello");
        assert_eq!(seen.lock().unwrap().clone(), Some(Ok(Bytes::from("hello"))));
    }

    #[tokio::test]
    async fn over_the_cap_the_client_still_gets_everything() {
        let (b, seen) = watched(ResponseBody::full("hello"), 3);
        assert_eq!(b.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(seen.lock().unwrap().clone(), Some(Err(Cut::TooLarge)));
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_not_complete() {
        let inner = ResponseBody::full("hello");
        let (b, seen) = watched(inner, 100);
        drop(b);
        assert_eq!(seen.lock().unwrap().clone(), Some(Err(Cut::Failed)));
    }
}
