//! Bodies on their way through the gateway: a response body that acts
//! once it has been read to the end (the gateway gives the member
//! connection it came on back for the next request then), and a request
//! body streamed from the client that tells when the client's side of it
//! failed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What happens when a body has been read to the end.
pub trait AtEnd {
    /// The body has been read to the end.
    fn at_end(self);
}

/// `inner`, with `end` run once it has been read to the end, or when it
/// is dropped with nothing left to read (the body of a HEAD, 204 or 304
/// answer may never be read). A body dropped before its end drops `end`
/// without running it.
pub struct OnEnd<B: Body, E: AtEnd> {
    inner: B,
    end: Option<E>,
}

impl<B: Body, E: AtEnd> OnEnd<B, E> {
    /// `inner`, running `end` at its end.
    pub fn new(inner: B, end: E) -> Self {
        Self {
            inner,
            end: Some(end),
        }
    }

    fn end_if(&mut self, done: bool) {
        if done && let Some(end) = self.end.take() {
            end.at_end();
        }
    }
}

impl<B: Body, E: AtEnd> Drop for OnEnd<B, E> {
    fn drop(&mut self) {
        let done = self.inner.is_end_stream();
        self.end_if(done);
    }
}

impl<B: Body + Unpin, E: AtEnd + Unpin> Body for OnEnd<B, E> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => false,
        };
        self.end_if(done);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body streamed from the client to a member. When the
/// client's side of it fails (a malformed chunk, or the client gone before
/// its end), the exchange with the member fails with it: [`BrokenOff`]
/// then says the fault is the client's, not the member's.
pub(crate) struct Upload {
    inner: Incoming,
    broken_off: BrokenOff,
}

/// Whether an [`Upload`] failed on the client's side.
#[derive(Clone, Debug, Default)]
pub(crate) struct BrokenOff(Arc<AtomicBool>);

impl BrokenOff {
    /// Whether the client's body failed.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Upload {
    /// `inner`, and what tells whether it failed.
    pub(crate) fn new(inner: Incoming) -> (Self, BrokenOff) {
        let broken_off = BrokenOff::default();
        let upload = Self {
            inner,
            broken_off: broken_off.clone(),
        };
        (upload, broken_off)
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.broken_off.0.store(true, Ordering::Relaxed);
        }
        polled
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
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Count(Arc<AtomicUsize>);

    impl AtEnd for Count {
        fn at_end(self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A body of several frames, which knows its end only once asked for
    /// a frame past the last.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|data| Ok(Frame::data(data))))
        }
    }

    #[tokio::test]
    async fn the_end_runs_once_when_read_to_the_end_or_dropped_empty() {
        let ends = Arc::new(AtomicUsize::new(0));
        let body = OnEnd::new(Full::new(Bytes::from_static(b"ok")), Count(ends.clone()));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(ends.load(Ordering::Relaxed), 1, "read to the end");

        drop(OnEnd::new(Full::new(Bytes::new()), Count(ends.clone())));
        assert_eq!(ends.load(Ordering::Relaxed), 2, "nothing to read");

        let frames = || Frames(VecDeque::from([Bytes::from("a"), Bytes::from("b")]));
        let mut body = OnEnd::new(frames(), Count(ends.clone()));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        drop(body);
        assert_eq!(ends.load(Ordering::Relaxed), 2, "dropped before its end");

        let body = OnEnd::new(frames(), Count(ends.clone()));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
        assert_eq!(
            ends.load(Ordering::Relaxed),
            3,
            "the end found past the last frame"
        );
    }
}
