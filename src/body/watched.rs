//! A body with something attached that must learn, exactly once, how the body
//! ended: tower's "when does a request complete?", linkerd's `PendingUntilEos`.
//!
//! A response is not finished when its headers are sent: a five-minute agent
//! stream holds its backend slot and its agent's write turn for five minutes.
//! [`Watched`] calls [`Watch::finish`] once, whichever comes first: the last
//! frame, an error, or the body being dropped unfinished (the client went
//! away, hyper stopped polling). A body with a known length ends with its last
//! data frame, not with a `None` (hyper stops polling once `is_end_stream`
//! says so), so that is checked after every frame.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::Full;

/// How a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// False when the body failed or was dropped before its end.
    pub complete: bool,
    /// Data bytes that went through.
    pub bytes: u64,
}

/// What a [`Watched`] body tells as it streams and when it ends.
pub trait Watch: Send + Unpin + 'static {
    /// A data chunk, as it goes through.
    fn data(&mut self, _chunk: &Bytes) {}
    /// Called exactly once, at the end.
    fn finish(self, outcome: Outcome);
}

/// Attaching nothing.
impl Watch for () {
    fn finish(self, _outcome: Outcome) {}
}

/// Two watches on one body, told in order.
impl<A: Watch, B: Watch> Watch for (A, B) {
    fn data(&mut self, chunk: &Bytes) {
        self.0.data(chunk);
        self.1.data(chunk);
    }
    fn finish(self, outcome: Outcome) {
        self.0.finish(outcome);
        self.1.finish(outcome);
    }
}

/// `inner`, with `W` told how it ends. `W` is optional so that a layer can pass
/// a body through (or answer by itself) without attaching anything.
pub struct Watched<B, W: Watch> {
    inner: B,
    watch: Option<W>,
    bytes: u64,
}

impl<B: Body, W: Watch> Watched<B, W> {
    /// Watches `inner`; an already empty body finishes at once (it may never be polled).
    pub fn new(inner: B, watch: W) -> Self {
        let mut w = Watched {
            inner,
            watch: Some(watch),
            bytes: 0,
        };
        if w.inner.is_end_stream() {
            w.end(true);
        }
        w
    }

    /// `inner` with nothing attached.
    pub fn plain(inner: B) -> Self {
        Watched {
            inner,
            watch: None,
            bytes: 0,
        }
    }

    /// The wrapped body.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    fn end(&mut self, complete: bool) {
        if let Some(w) = self.watch.take() {
            w.finish(Outcome {
                complete,
                bytes: self.bytes,
            });
        }
    }
}

impl<B: From<Full> + Body, W: Watch> From<Full> for Watched<B, W> {
    fn from(full: Full) -> Self {
        Watched::plain(B::from(full))
    }
}

impl<B, W: Watch> Drop for Watched<B, W> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away, or nobody polled it.
        if let Some(w) = self.watch.take() {
            w.finish(Outcome {
                complete: false,
                bytes: self.bytes,
            });
        }
    }
}

impl<B, W> Body for Watched<B, W>
where
    B: Body<Data = Bytes> + Unpin,
    W: Watch,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(w) = this.watch.as_mut() {
                        w.data(data);
                    }
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
            }
            Some(Err(_)) => this.end(false),
            None => this.end(true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::{BoxError, IdleTimeout};
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Records every `finish` call.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Outcome>>>);

    impl Watch for Seen {
        fn finish(self, outcome: Outcome) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    impl Seen {
        fn calls(&self) -> Vec<Outcome> {
            self.0.lock().unwrap().clone()
        }
    }

    type Chunks =
        StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

    fn chunks(items: Vec<Result<&'static str, &'static str>>) -> Chunks {
        StreamBody::new(futures_util::stream::iter(
            items
                .into_iter()
                .map(|r| {
                    r.map(|s| Frame::data(Bytes::from(s)))
                        .map_err(BoxError::from)
                })
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_finishes_once_complete() {
        let seen = Seen::default();
        let body = Watched::new(chunks(vec![Ok("ab"), Ok("cde")]), seen.clone());
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, "abcde");
        assert_eq!(
            seen.calls(),
            [Outcome {
                complete: true,
                bytes: 5
            }]
        );
    }

    #[tokio::test]
    async fn a_known_length_body_finishes_at_its_last_frame() {
        // hyper never polls past `is_end_stream`: the end must be seen there.
        let seen = Seen::default();
        let mut body = Watched::new(Full::new("abc"), seen.clone());
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert_eq!(seen.calls().len(), 1, "finished before anyone polls again");
        assert!(seen.calls()[0].complete);
        drop(body);
        assert_eq!(seen.calls().len(), 1, "not again on drop");
    }

    #[tokio::test]
    async fn a_failed_body_finishes_once_incomplete() {
        let seen = Seen::default();
        let body = Watched::new(chunks(vec![Ok("ab"), Err("backend broke")]), seen.clone());
        assert!(body.collect().await.is_err());
        assert_eq!(
            seen.calls(),
            [Outcome {
                complete: false,
                bytes: 2
            }]
        );
    }

    #[tokio::test]
    async fn a_dropped_body_finishes_once_incomplete() {
        let seen = Seen::default();
        let mut body = Watched::new(chunks(vec![Ok("ab"), Ok("cd")]), seen.clone());
        body.frame().await.unwrap().unwrap();
        assert!(seen.calls().is_empty(), "still streaming");
        drop(body);
        assert_eq!(
            seen.calls(),
            [Outcome {
                complete: false,
                bytes: 2
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_finishes_once_when_the_idle_timeout_fails_it() {
        let seen = Seen::default();
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let silent = StreamBody::new(tokio_stream_from(rx));
        let body = Watched::new(
            IdleTimeout::new(silent, Duration::from_secs(5)),
            seen.clone(),
        );
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("sent nothing"), "{err}");
        assert_eq!(
            seen.calls(),
            [Outcome {
                complete: false,
                bytes: 0
            }]
        );
    }

    #[tokio::test]
    async fn an_empty_body_finishes_at_once() {
        let seen = Seen::default();
        let _body = Watched::new(Full::new(""), seen.clone());
        assert_eq!(seen.calls().len(), 1);
        assert!(seen.calls()[0].complete);
    }

    #[tokio::test]
    async fn watches_see_every_chunk_in_order() {
        #[derive(Default)]
        struct Copy(Vec<u8>, Arc<Mutex<Vec<u8>>>);
        impl Watch for Copy {
            fn data(&mut self, chunk: &Bytes) {
                self.0.extend_from_slice(chunk);
            }
            fn finish(self, _: Outcome) {
                *self.1.lock().unwrap() = self.0;
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let seen = Seen::default();
        let body = Watched::new(
            chunks(vec![Ok("x"), Ok("yz")]),
            (Copy(Vec::new(), out.clone()), seen.clone()),
        );
        body.collect().await.unwrap();
        assert_eq!(&*out.lock().unwrap(), b"xyz");
        assert_eq!(seen.calls().len(), 1);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
