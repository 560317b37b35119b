//! A client connection served until its worker drains, then shut down
//! gracefully.
//!
//! Waiting for the drain beside the connection (a `select!`) would look
//! at the drain signal on every wake of the connection's task, several
//! times per request, and each look takes the signal's lock. Here the
//! drain is looked at only when its own waker fires: once at the start
//! (to register), then only when the signal comes.
//!
//! A shutdown may be bounded (an idle HTTP/2 connection's, whose client
//! may never answer its GOAWAY): the connection is then given up once it
//! has not ended within the bound, with [`Lingered`].
//!
//! A connection asked to finish before its first request would be closed
//! at once, unanswered (an HTTP/1.1 connection shut down while idle
//! closes): one accepted just before its listener stopped, whose request
//! is on its way. [`FirstRequest`] gives such a connection a short time
//! for its first request ([`FIRST_REQUEST_WINDOW`]) before the shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Sleep, sleep};

/// How long a connection asked to finish before its first request still
/// waits for one (at most the header read timeout): long enough for a
/// request already on its way, short enough that a client which opened a
/// connection ahead of need does not hold a shutdown up.
pub(crate) const FIRST_REQUEST_WINDOW: Duration = Duration::from_secs(1);

/// Whether a client connection has asked anything yet.
#[derive(Debug, Default)]
pub(crate) struct FirstRequest {
    came: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    /// A request came (a look at a flag, after the first).
    pub(crate) fn came(&self) {
        if !self.came.load(Ordering::Relaxed) {
            self.came.store(true, Ordering::Relaxed);
            self.notify.notify_one();
        }
    }

    /// Returns once a request has come, or at the latest after `window`.
    pub(crate) async fn within(&self, window: Duration) {
        if !self.came.load(Ordering::Relaxed) {
            let _ = tokio::time::timeout(window, self.notify.notified()).await;
        }
    }
}

/// The drain future's waker: notes that the drain is worth a look and
/// wakes the connection's task.
struct DrainWaker {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for DrainWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

/// A connection that had not ended this long after a bounded shutdown.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Lingered(pub(crate) Duration);

/// `connection` until it ends; once `drain` completes, `shutdown` is
/// called on it, and it is served on until it ends, or (when `drain`
/// gave a bound) at most for that bound.
pub(crate) struct UntilDrained<'c, C, D> {
    connection: Pin<&'c mut C>,
    drain: Option<Pin<Box<D>>>,
    shutdown: fn(Pin<&mut C>),
    waker: Arc<DrainWaker>,
    /// The task waker `waker` wakes, as last handed to it.
    task: Option<Waker>,
    /// After a bounded shutdown: the bound, and its end.
    linger: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl<'c, C: Future, D: Future<Output = Option<Duration>>> UntilDrained<'c, C, D> {
    pub(crate) fn new(connection: Pin<&'c mut C>, drain: D, shutdown: fn(Pin<&mut C>)) -> Self {
        Self {
            connection,
            drain: Some(Box::pin(drain)),
            shutdown,
            waker: Arc::new(DrainWaker {
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
            task: None,
            linger: None,
        }
    }
}

impl<C: Future, D: Future<Output = Option<Duration>>> Future for UntilDrained<'_, C, D> {
    type Output = Result<C::Output, Lingered>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(drain) = &mut this.drain {
            if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                *this
                    .waker
                    .task
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
                this.task = Some(cx.waker().clone());
            }
            if this.waker.woken.swap(false, Ordering::Acquire) {
                let waker = Waker::from(this.waker.clone());
                if let Poll::Ready(bound) = drain.as_mut().poll(&mut Context::from_waker(&waker)) {
                    this.drain = None;
                    (this.shutdown)(this.connection.as_mut());
                    this.linger = bound.map(|bound| (bound, Box::pin(sleep(bound))));
                }
            }
        }
        if let Poll::Ready(served) = this.connection.as_mut().poll(cx) {
            return Poll::Ready(Ok(served));
        }
        if let Some((bound, end)) = &mut this.linger
            && end.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(Lingered(*bound)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_waits_for_its_first_within_the_window() {
        let window = Duration::from_secs(10);
        // A request already came: no wait.
        let first = FirstRequest::default();
        first.came();
        let started = tokio::time::Instant::now();
        first.within(window).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        // None comes: the whole window.
        let first = FirstRequest::default();
        first.within(window).await;
        assert_eq!(started.elapsed(), window);
        // One comes while it waits: no longer than that.
        let first = Arc::new(FirstRequest::default());
        let waiting = tokio::spawn({
            let first = first.clone();
            async move { first.within(window).await }
        });
        sleep(Duration::from_secs(1)).await;
        first.came();
        waiting.await.unwrap();
        assert_eq!(started.elapsed(), window + Duration::from_secs(1));
    }
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::watch;

    /// A connection that is pending until it is shut down, and counts how
    /// often it is polled.
    struct Connection {
        shut_down: bool,
        polls: usize,
    }

    impl Future for Connection {
        type Output = usize;

        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.shut_down {
                Poll::Ready(self.polls)
            } else {
                Poll::Pending
            }
        }
    }

    /// A future that counts how often it is polled.
    struct Counted<F> {
        inner: Pin<Box<F>>,
        looks: Arc<AtomicUsize>,
    }

    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.looks.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    /// Many wakes of the connection's task look at the drain once; the
    /// drain signal wakes the task, shuts the connection down, and it
    /// ends.
    #[tokio::test]
    async fn the_drain_is_looked_at_only_when_it_wakes() {
        let mut connection = Connection {
            shut_down: false,
            polls: 0,
        };
        let (drain, mut draining) = watch::channel(false);
        let looks = Arc::new(AtomicUsize::new(0));
        let drained = Counted {
            inner: Box::pin(async move {
                let _ = draining.wait_for(|d| *d).await;
                None
            }),
            looks: looks.clone(),
        };
        let served = UntilDrained::new(Pin::new(&mut connection), drained, |c| {
            c.get_mut().shut_down = true;
        });
        let signal = async {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
            assert_eq!(looks.load(Ordering::Relaxed), 1, "looks before the signal");
            drain.send(true).unwrap();
        };
        let (polls, ()) = tokio::join!(served, signal);
        let polls = polls.unwrap();
        assert!(
            polls > 50,
            "the connection is polled on every wake: {polls}"
        );
        assert_eq!(looks.load(Ordering::Relaxed), 2);
    }

    /// A connection that never ends, though shut down.
    struct Stuck {
        shut_down: bool,
    }

    impl Future for Stuck {
        type Output = ();

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_shutdown_gives_up_a_connection_that_does_not_end() {
        let bound = Duration::from_secs(10);
        let mut connection = Stuck { shut_down: false };
        let started = tokio::time::Instant::now();
        let served = UntilDrained::new(
            Pin::new(&mut connection),
            async move {
                sleep(Duration::from_secs(3)).await;
                Some(bound)
            },
            |c| c.get_mut().shut_down = true,
        )
        .await;
        assert_eq!(served, Err(Lingered(bound)));
        assert_eq!(started.elapsed(), Duration::from_secs(3) + bound);
        assert!(connection.shut_down);
    }
}
