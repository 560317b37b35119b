//! Bodies on their way through the gateway: a response body that acts
//! once it has been read to the end (the gateway gives the member
//! connection it came on back for the next request then), one that fails
//! when its member sends nothing of it for too long, and a request body
//! streamed from the client that tells how it is getting on: when a part
//! of it last came, whether the member waits for the next, and whether
//! the client's side of it failed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::deadline::{Clock, Deadline};

/// What happens when a body has been read to the end, or failed before.
pub trait AtEnd {
    /// The body has been read to the end.
    fn at_end(self);

    /// Reading the body failed, with `error`, before its end.
    fn broken(self, error: &(dyn std::error::Error + 'static));
}

/// `inner`, with `end` run once it has been read to the end, or when it
/// is dropped with nothing left to read (the body of a HEAD, 204 or 304
/// answer may never be read), and told when reading it failed. A body
/// dropped before its end (its reader gone) drops `end` without either.
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

impl<B, E> Body for OnEnd<B, E>
where
    B: Body + Unpin,
    B::Error: std::error::Error + 'static,
    E: AtEnd + Unpin,
{
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
            Poll::Ready(Some(Err(error))) => {
                if let Some(end) = self.end.take() {
                    end.broken(error);
                }
                false
            }
            Poll::Pending => false,
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

/// `inner`, failing with [`Stalled`] when it has yielded nothing for
/// `limit` while it was read (a member that hangs in the middle of its
/// answer: without it the client would wait for ever, and hold the member
/// connection). The clock runs only while a read waits: a client that
/// reads slowly is the send timeout's matter. The wait is a deadline of
/// the worker's clock (`deadline.rs`), as cheap as the request timeout's.
pub(crate) struct IdleLimit<B> {
    inner: B,
    limit: Duration,
    /// Set again at the start of each wait.
    deadline: Deadline,
    /// Whether the deadline runs for the current wait.
    waiting: bool,
}

impl<B> IdleLimit<B> {
    /// `inner`, which may yield nothing for at most `limit` at a time, by
    /// `clock`.
    pub(crate) fn new(inner: B, limit: Duration, clock: &Clock) -> Self {
        Self {
            inner,
            limit,
            deadline: clock.deadline(Instant::now() + limit),
            waiting: false,
        }
    }
}

/// Why an [`IdleLimit`] body failed: its own failure, or nothing came for
/// the limit.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdleLimitError<E: std::error::Error + 'static> {
    /// The inner body failed.
    #[error(transparent)]
    Inner(E),
    /// Nothing came for the limit.
    #[error(transparent)]
    Stalled(Stalled),
}

/// Nothing of a body came for this long.
#[derive(Debug, thiserror::Error)]
#[error("nothing of the answer came for {0:?}")]
pub(crate) struct Stalled(pub Duration);

impl<B> Body for IdleLimit<B>
where
    B: Body + Unpin,
    B::Error: std::error::Error + 'static,
{
    type Data = B::Data;
    type Error = IdleLimitError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(IdleLimitError::Inner)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.deadline.reset(Instant::now() + this.limit);
                }
                match Pin::new(&mut this.deadline).poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(IdleLimitError::Stalled(Stalled(this.limit)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
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
/// its end), the exchange with the member fails with it; its
/// [`UploadProgress`] then says the fault is the client's, not the
/// member's, and tells meanwhile when a part of it last came and whether
/// the member is waiting for the next.
pub(crate) struct Upload {
    inner: Incoming,
    progress: UploadProgress,
}

/// How an [`Upload`] is getting on, seen from the request that waits for
/// its member's answer.
#[derive(Clone, Debug)]
pub(crate) struct UploadProgress(Arc<Progress>);

#[derive(Debug)]
struct Progress {
    /// The client's side failed.
    broken_off: AtomicBool,
    /// The member's connection asked for the next part and the client has
    /// not sent it yet.
    waiting_for_client: AtomicBool,
    started: Instant,
    /// When a part (or the end) last came, in microseconds from `started`.
    last_part: AtomicU64,
}

impl UploadProgress {
    /// Whether the client's side of the body failed.
    pub(crate) fn broken_off(&self) -> bool {
        self.0.broken_off.load(Ordering::Relaxed)
    }

    /// Whether the member's side waits for the client's next part: the
    /// client, not the member, is the one keeping the exchange going.
    pub(crate) fn waiting_for_client(&self) -> bool {
        self.0.waiting_for_client.load(Ordering::Relaxed)
    }

    /// When the last part of the body (or its end) came from the client;
    /// when the upload started, before any.
    pub(crate) fn last_part(&self) -> Instant {
        self.0.started + Duration::from_micros(self.0.last_part.load(Ordering::Relaxed))
    }
}

impl Upload {
    /// `inner`, and what tells how it is getting on.
    pub(crate) fn new(inner: Incoming) -> (Self, UploadProgress) {
        let progress = UploadProgress(Arc::new(Progress {
            broken_off: AtomicBool::new(false),
            waiting_for_client: AtomicBool::new(false),
            started: Instant::now(),
            last_part: AtomicU64::new(0),
        }));
        let upload = Self {
            inner,
            progress: progress.clone(),
        };
        (upload, progress)
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
        let progress = &self.progress.0;
        progress
            .waiting_for_client
            .store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Err(_))) => progress.broken_off.store(true, Ordering::Relaxed),
            Poll::Ready(_) => {
                let since = progress.started.elapsed().as_micros();
                progress
                    .last_part
                    .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
            }
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the ends run, and the bodies told they broke.
    #[derive(Clone, Default)]
    struct Count(Arc<(AtomicUsize, AtomicUsize)>);

    impl Count {
        fn ends(&self) -> usize {
            self.0.0.load(Ordering::Relaxed)
        }

        fn breaks(&self) -> usize {
            self.0.1.load(Ordering::Relaxed)
        }
    }

    impl AtEnd for Count {
        fn at_end(self) {
            self.0.0.fetch_add(1, Ordering::Relaxed);
        }

        fn broken(self, _: &(dyn std::error::Error + 'static)) {
            self.0.1.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A body of several frames, or errors, which knows its end only once
    /// asked for a frame past the last.
    struct Frames(VecDeque<Result<Bytes, std::io::Error>>);

    impl Frames {
        fn new(frames: impl IntoIterator<Item = Result<&'static str, &'static str>>) -> Self {
            let frame = |f: Result<&'static str, &'static str>| {
                f.map(Bytes::from).map_err(std::io::Error::other)
            };
            Self(frames.into_iter().map(frame).collect())
        }
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|f| f.map(Frame::data)))
        }
    }

    #[tokio::test]
    async fn the_end_runs_once_when_read_to_the_end_or_dropped_empty() {
        let count = Count::default();
        let body = OnEnd::new(Full::new(Bytes::from_static(b"ok")), count.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        assert_eq!(count.ends(), 1, "read to the end");

        drop(OnEnd::new(Full::new(Bytes::new()), count.clone()));
        assert_eq!(count.ends(), 2, "nothing to read");

        let frames = || Frames::new([Ok("a"), Ok("b")]);
        let mut body = OnEnd::new(frames(), count.clone());
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        drop(body);
        assert_eq!(count.ends(), 2, "dropped before its end");

        let body = OnEnd::new(frames(), count.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ab");
        assert_eq!(count.ends(), 3, "the end found past the last frame");
        assert_eq!(count.breaks(), 0);
    }

    #[tokio::test]
    async fn a_body_that_fails_is_told_broken_once_and_never_ended() {
        let count = Count::default();
        let mut body = OnEnd::new(Frames::new([Ok("a"), Err("cut"), Ok("b")]), count.clone());
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        assert_eq!(body.frame().await.unwrap().unwrap_err().to_string(), "cut");
        assert_eq!(count.breaks(), 1);
        // Read on past the failure, and dropped empty: nothing more.
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
        assert!(body.frame().await.is_none());
        drop(body);
        assert_eq!((count.ends(), count.breaks()), (0, 1));
    }
}
