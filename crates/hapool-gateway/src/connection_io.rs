//! How the gateway drives the socket of a client or member connection.
//!
//! **Writes after the reads.** Under load a worker wakes many connection
//! tasks at once. Written as each task runs, its messages would go out one
//! at a time between the reads and the work of the others, and each would
//! find its peer (client or member) asleep: every write a wake-up, and on a
//! busy machine a switch to that peer, which then has one message to
//! handle. The first write after a read waits one turn of the run queue
//! (the task wakes itself and yields), so a worker's writes go out
//! together after the reads that caused them, and a peer woken by the
//! first of them finds the rest waiting (docs/performance.md, "Writes
//! after the reads"). Nothing is buffered here: the data stays in hyper's
//! buffer until the write goes through, so a dropped connection loses
//! nothing it had not already lost, and a shutdown is not delayed. An idle
//! worker runs the yielded task again at once.
//!
//! **A deadline for the protocol** (client connections): a read fails
//! with `TimedOut` when the client has not shown which protocol it speaks
//! in time, against clients that connect and send nothing, or only the
//! beginning of the HTTP/2 preface. hyper's own header timer starts only
//! once it knows the protocol: HTTP/1.1 as soon as a byte differs from the
//! preface (the first byte of every method but `PRI`), HTTP/2 once the
//! whole preface has come, after which the connection's limit is that of
//! [`Http2Streams::idle`].
//!
//! **A deadline for sending** (client connections): a write that cannot
//! go out because the client takes nothing (its receive window stays
//! shut) fails with [`SendStalled`] once that has lasted the send
//! timeout, against clients that ask and never read: each would hold its
//! answer, and its member connection, for as long as it liked. The timer
//! runs only while a write waits.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Sleep, sleep};

use crate::http2_idle::Http2Streams;

/// What an HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Until the client's protocol is known, when it must be known in time.
struct ProtocolDeadline {
    deadline: Pin<Box<Sleep>>,
    /// How much of the preface has come.
    matched: usize,
    /// Told when the whole preface has come.
    streams: Arc<Http2Streams>,
}

impl ProtocolDeadline {
    /// Whether the protocol is known once `read` has come too.
    fn known_after(&mut self, read: &[u8]) -> bool {
        let expected = &PREFACE[self.matched..];
        let n = read.len().min(expected.len());
        if read[..n] != expected[..n] {
            return true;
        }
        self.matched += n;
        if self.matched == PREFACE.len() {
            self.streams.preface_read();
            return true;
        }
        false
    }
}

/// The error of a write to a client that took nothing for the send
/// timeout (inside an `io::Error` of kind `TimedOut`).
#[derive(Debug, thiserror::Error)]
#[error("the client took nothing of the answer for {0:?}")]
pub(crate) struct SendStalled(Duration);

/// `S`, whose first write after each read waits one turn of the run
/// queue, and whose first byte and writes may have deadlines.
pub(crate) struct ConnectionIo<S> {
    inner: S,
    /// Until the client's protocol is known, when it must be in time. On
    /// the heap: a word here, as the connection's state is the same size
    /// for the rest of its life (hyper keeps it beside its own, and with
    /// many connections each one's is cold when its turn comes).
    protocol: Option<Box<ProtocolDeadline>>,
    /// The next write yields first: set by a read, and at the start.
    defer_next: bool,
    /// How long a write may wait for the peer to take something.
    send_limit: Option<Duration>,
    /// Running while a write waits.
    send_stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> ConnectionIo<S> {
    /// A client connection: its protocol must be known within `first`
    /// (`streams` is told of an HTTP/2 preface), and each write go out
    /// within `send` of waiting.
    pub(crate) fn client(
        inner: S,
        first: Duration,
        send: Duration,
        streams: Arc<Http2Streams>,
    ) -> Self {
        Self {
            inner,
            protocol: Some(Box::new(ProtocolDeadline {
                deadline: Box::pin(sleep(first)),
                matched: 0,
                streams,
            })),
            defer_next: true,
            send_limit: Some(send),
            send_stalled: None,
        }
    }

    /// A connection to a member.
    pub(crate) fn member(inner: S) -> Self {
        Self {
            inner,
            protocol: None,
            defer_next: true,
            send_limit: None,
            send_stalled: None,
        }
    }

    /// Follows a write's outcome: a write that waits starts (or goes on
    /// with) the send timer, and fails once it has run out; one that
    /// went through stops it.
    fn watch_send(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        let Some(limit) = self.send_limit else {
            return written;
        };
        match written {
            Poll::Pending => {
                let stalled = self
                    .send_stalled
                    .get_or_insert_with(|| Box::pin(sleep(limit)));
                if stalled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        SendStalled(limit),
                    )));
                }
                Poll::Pending
            }
            done => {
                self.send_stalled = None;
                done
            }
        }
    }

    /// Whether this write waits a turn: then the task is woken again, to
    /// run after the tasks already ready. Such a write starts a message,
    /// which the worker counts towards letting the scheduler look at its
    /// slice (`worker_runtime`).
    fn yield_first(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.defer_next {
            return false;
        }
        self.defer_next = false;
        crate::worker_runtime::message_sent();
        cx.waker().wake_by_ref();
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnectionIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_ready() {
            this.defer_next = true;
        }
        if let Some(protocol) = &mut this.protocol {
            match read {
                Poll::Ready(Ok(()))
                    if buf.filled().len() > before
                        && protocol.known_after(&buf.filled()[before..]) =>
                {
                    this.protocol = None;
                }
                Poll::Pending if protocol.deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client did not show its protocol in time",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnectionIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.yield_first(cx) {
            return Poll::Pending;
        }
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        self.watch_send(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.yield_first(cx) {
            return Poll::Pending;
        }
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch_send(cx, written)
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

    /// A client connection whose protocol must be known within 2 s and
    /// whose writes may wait 5 s.
    fn client<S>(ours: S, streams: Arc<Http2Streams>) -> ConnectionIo<S> {
        ConnectionIo::client(
            ours,
            Duration::from_secs(2),
            Duration::from_secs(5),
            streams,
        )
    }

    fn poll_write<S: AsyncWrite + Unpin>(
        stream: &mut ConnectionIo<S>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(stream).poll_write(cx, data)
    }

    #[tokio::test]
    async fn the_first_write_after_a_read_waits_one_turn_and_the_next_goes_through() {
        let (ours, mut peer) = duplex(1024);
        let mut stream = ConnectionIo::member(ours);
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let counted = crate::worker_runtime::messages_counted();

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
        // Two messages, each counted once for the scheduler's look.
        assert_eq!(crate::worker_runtime::messages_counted(), counted + 2);

        let mut got = [0; 11];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwothree");
    }

    #[tokio::test]
    async fn a_whole_exchange_passes_unchanged() {
        let (ours, mut peer) = duplex(64);
        let mut stream = ConnectionIo::client(
            ours,
            Duration::from_secs(10),
            Duration::from_secs(1),
            Arc::default(),
        );
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

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_for_the_send_timeout_fails_the_write() {
        let (ours, mut peer) = duplex(64);
        let mut stream = client(ours, Arc::default());
        // 64 bytes fit; the rest waits for the client, which reads a
        // little after 3 s (the timer starts again), then nothing.
        let reader = tokio::spawn(async move {
            sleep(Duration::from_secs(3)).await;
            let mut some = [0; 16];
            peer.read_exact(&mut some).await.unwrap();
            peer
        });
        let started = tokio::time::Instant::now();
        let error = stream.write_all(&[7; 200]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.get_ref().is_some_and(|e| e.is::<SendStalled>()));
        assert_eq!(started.elapsed(), Duration::from_secs(8));
        drop(reader.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_in_time_gets_a_timed_out_read() {
        let (ours, _peer) = duplex(64);
        let mut stream = client(ours, Arc::default());
        let mut byte = [0; 1];
        let error = stream.read(&mut byte).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn part_of_the_http2_preface_does_not_stop_the_deadline() {
        let (ours, mut peer) = duplex(64);
        let streams = Arc::new(Http2Streams::default());
        let mut stream = client(ours, streams);
        peer.write_all(&PREFACE[..16]).await.unwrap();
        let mut some = [0; 64];
        assert_eq!(stream.read(&mut some).await.unwrap(), 16);
        let started = tokio::time::Instant::now();
        let error = stream.read(&mut some).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_preface_ends_the_deadline_and_tells_the_streams() {
        let (ours, mut peer) = duplex(64);
        let streams = Arc::new(Http2Streams::default());
        let mut stream = client(ours, streams.clone());
        // In pieces, as a slow client may send it.
        let mut some = [0; 64];
        for piece in PREFACE.chunks(5) {
            peer.write_all(piece).await.unwrap();
            assert_eq!(stream.read(&mut some).await.unwrap(), piece.len());
        }
        // The connection is HTTP/2 now: its idleness is counted from here,
        // and reads wait as long as they like.
        let idle = tokio::spawn({
            let streams = streams.clone();
            async move { streams.idle(Duration::from_secs(30)).await }
        });
        let late = tokio::spawn(async move {
            sleep(Duration::from_secs(20)).await;
            peer.write_all(b"x").await.unwrap();
            peer
        });
        stream.read_exact(&mut some[..1]).await.unwrap();
        assert!(!idle.is_finished());
        idle.await.unwrap();
        drop(late.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_off_the_preface_is_http1_and_ends_the_deadline() {
        for first in [&b"POST / HTTP/1.1\r\n"[..], b"PRI * HTTP/1.1\r\n", b"G"] {
            let (ours, mut peer) = duplex(64);
            let mut stream = client(ours, Arc::default());
            peer.write_all(first).await.unwrap();
            let mut some = [0; 64];
            assert_eq!(stream.read(&mut some).await.unwrap(), first.len());
            let late = tokio::spawn(async move {
                sleep(Duration::from_secs(60)).await;
                peer.write_all(b"E").await.unwrap();
                peer
            });
            stream.read_exact(&mut some[..1]).await.unwrap();
            assert_eq!(some[0], b'E');
            drop(late.await.unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn once_the_first_byte_came_the_deadline_is_gone() {
        let (ours, mut peer) = duplex(64);
        let mut stream = client(ours, Arc::default());
        peer.write_all(b"G").await.unwrap();
        let mut byte = [0; 1];
        stream.read_exact(&mut byte).await.unwrap();
        // Long after the deadline, a later byte still arrives.
        let late = tokio::spawn(async move {
            sleep(Duration::from_secs(60)).await;
            peer.write_all(b"E").await.unwrap();
            peer
        });
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"E");
        drop(late.await.unwrap());
    }
}
