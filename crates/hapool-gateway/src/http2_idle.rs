//! How long an HTTP/2 client connection may stay open with no stream.
//!
//! An HTTP/1.1 connection is closed by hyper when its next request head
//! does not come within the header read timeout. hyper's HTTP/2 server has
//! no such limit: a client that sent the connection preface, or finished a
//! request, could keep the connection (and its place under
//! `max_connections`) for as long as it liked while asking nothing, and a
//! client that stopped half-way through the preface was never cut off
//! either. The gateway holds HTTP/2 connections to the same rule:
//!
//! - [`ConnectionIo`](crate::connection_io::ConnectionIo) keeps its first
//!   byte deadline while the bytes read could still be the preface, and
//!   tells [`Http2Streams::preface_read`] when the whole preface has come;
//! - each HTTP/2 request holds an [`OpenStream`] until its answer has been
//!   read from the member (in the answer body's end, `http::Released`),
//!   while its tunnel lasts (extended CONNECT), or until the gateway's own
//!   answer is ready;
//! - [`Http2Streams::idle`] returns once the connection has had no stream
//!   open for the limit, and the connection is then shut down gracefully
//!   (GOAWAY), and closed if it has not ended within the limit again.
//!
//! HTTP/1.1 requests carry no [`OpenStream`], and an HTTP/1.1 connection's
//! [`Http2Streams::idle`] waits for a preface that never comes, woken by
//! nothing: the request path pays a look at the request's version and a
//! word more in the answer's future and body.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The open streams of one client connection, once it is known to speak
/// HTTP/2.
#[derive(Debug, Default)]
pub(crate) struct Http2Streams {
    /// The whole connection preface has been read.
    http2: AtomicBool,
    /// Streams whose answer has not yet been read from the member (or
    /// whose tunnel is open).
    open: AtomicUsize,
    /// Told of each change; [`Self::idle`] is its only waiter.
    changed: Notify,
}

impl Http2Streams {
    /// The client sent the HTTP/2 connection preface.
    pub(crate) fn preface_read(&self) {
        self.http2.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A stream's request came: it counts as open until the returned
    /// guard is dropped.
    pub(crate) fn opened(self: &Arc<Self>) -> OpenStream {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
        OpenStream(self.clone())
    }

    fn quiet(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
    }

    /// Returns once the connection, known to speak HTTP/2, has had no
    /// stream open for `limit` (from the preface, or from the end of the
    /// last stream). Never returns for any other connection.
    pub(crate) async fn idle(&self, limit: Duration) {
        while !self.http2.load(Ordering::Relaxed) {
            self.changed.notified().await;
        }
        loop {
            while !self.quiet() {
                self.changed.notified().await;
            }
            // Quiet from here: idle unless a stream opens (or opens and
            // ends, a change too) within the limit.
            if tokio::time::timeout(limit, self.changed.notified())
                .await
                .is_err()
                && self.quiet()
            {
                return;
            }
        }
    }
}

/// An open HTTP/2 stream in its connection's count.
#[derive(Debug)]
pub(crate) struct OpenStream(Arc<Http2Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::{Instant, sleep};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// When `streams.idle(LIMIT)` returns, from the start.
    fn idle_at(streams: &Arc<Http2Streams>) -> tokio::task::JoinHandle<Duration> {
        let streams = streams.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            streams.idle(LIMIT).await;
            started.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_preface_is_never_idle() {
        let streams = Arc::new(Http2Streams::default());
        let idle = idle_at(&streams);
        sleep(LIMIT * 100).await;
        assert!(!idle.is_finished());
        idle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_preface_and_no_stream_is_idle_after_the_limit() {
        let streams = Arc::new(Http2Streams::default());
        let idle = idle_at(&streams);
        sleep(Duration::from_secs(3)).await;
        streams.preface_read();
        assert_eq!(idle.await.unwrap(), Duration::from_secs(3) + LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_holds_the_connection_and_its_end_starts_the_limit() {
        let streams = Arc::new(Http2Streams::default());
        streams.preface_read();
        let idle = idle_at(&streams);
        sleep(Duration::from_secs(1)).await;
        // A stream open far longer than the limit (a slow member, a long
        // answer) does not make the connection idle.
        let stream = streams.opened();
        sleep(LIMIT * 5).await;
        assert!(!idle.is_finished());
        // Two streams: the connection is idle only once both have ended.
        let second = streams.opened();
        drop(stream);
        sleep(LIMIT * 2).await;
        assert!(!idle.is_finished());
        drop(second);
        let ended = Duration::from_secs(1) + LIMIT * 7;
        assert_eq!(idle.await.unwrap(), ended + LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_within_the_limit_starts_it_again() {
        let streams = Arc::new(Http2Streams::default());
        streams.preface_read();
        let idle = idle_at(&streams);
        sleep(LIMIT - Duration::from_secs(1)).await;
        // Opened and ended at once: a short request.
        drop(streams.opened());
        assert_eq!(idle.await.unwrap(), LIMIT - Duration::from_secs(1) + LIMIT);
    }
}
