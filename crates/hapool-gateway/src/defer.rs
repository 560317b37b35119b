//! Writes that wait for the worker's other ready tasks.
//!
//! Under load a worker wakes many connection tasks at once. Written as each
//! task runs, its answers would go out one at a time between the reads and
//! the work of the others, and each would find its peer (client or member)
//! asleep: every write a wake-up, and on a busy machine a switch to that
//! peer, which then has one message to handle. [`DeferredWrites`] makes the
//! first write after a read wait one turn of the run queue (the task wakes
//! itself and yields), so a worker's writes go out together after the
//! reads that caused them, and a peer woken by the first of them finds the
//! rest waiting (docs/performance.md, "Writes after the reads").
//!
//! Nothing is buffered here: the data stays in hyper's buffer until the
//! write goes through, so a dropped connection loses nothing it had not
//! already lost, and a shutdown is not delayed. An idle worker runs the
//! yielded task again at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `S`, whose first write after each read waits one turn of the run queue.
pub(crate) struct DeferredWrites<S> {
    inner: S,
    /// The next write yields first: set by a read, and at the start.
    defer_next: bool,
}

impl<S> DeferredWrites<S> {
    /// `inner`, whose first write already waits a turn.
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            defer_next: true,
        }
    }

    /// Whether this write waits a turn: then the task is woken again, to
    /// run after the tasks already ready.
    fn yield_first(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.defer_next {
            return false;
        }
        self.defer_next = false;
        cx.waker().wake_by_ref();
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeferredWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if read.is_ready() {
            self.defer_next = true;
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeferredWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.yield_first(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.yield_first(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// Counts its wakes.
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_write<S: AsyncWrite + Unpin>(
        stream: &mut DeferredWrites<S>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(stream).poll_write(cx, data)
    }

    #[tokio::test]
    async fn the_first_write_after_a_read_waits_one_turn_and_the_next_goes_through() {
        let (ours, mut peer) = duplex(1024);
        let mut stream = DeferredWrites::new(ours);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        // At the start, as after a read: the write yields and wakes its task.
        assert!(poll_write(&mut stream, &mut cx, b"one").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(matches!(
            poll_write(&mut stream, &mut cx, b"one"),
            Poll::Ready(Ok(3))
        ));
        // More writes without a read in between go straight through.
        assert!(matches!(
            poll_write(&mut stream, &mut cx, b"two"),
            Poll::Ready(Ok(3))
        ));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        // A read: the next write waits a turn again.
        peer.write_all(b"x").await.unwrap();
        let mut byte = [0; 1];
        stream.read_exact(&mut byte).await.unwrap();
        assert!(poll_write(&mut stream, &mut cx, b"three").is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert!(matches!(
            poll_write(&mut stream, &mut cx, b"three"),
            Poll::Ready(Ok(5))
        ));

        let mut got = [0; 11];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwothree");
    }

    #[tokio::test]
    async fn a_whole_exchange_passes_unchanged() {
        let (ours, mut peer) = duplex(64);
        let mut stream = DeferredWrites::new(ours);
        let message: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let sent = message.clone();
        let echo = tokio::spawn(async move {
            let mut got = vec![0; 10_000];
            peer.read_exact(&mut got).await.unwrap();
            peer.write_all(&got).await.unwrap();
        });
        stream.write_all(&sent).await.unwrap();
        let mut back = vec![0; 10_000];
        stream.read_exact(&mut back).await.unwrap();
        echo.await.unwrap();
        assert_eq!(back, message);
    }
}
