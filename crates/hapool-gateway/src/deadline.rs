//! Deadlines that cost little each: a request head that must arrive in
//! time, a member that must answer in time, a member's silence after which
//! a request is hedged.
//!
//! Nearly every such deadline is dropped long before it is due, and there
//! are two or three per request. A tokio timer takes the timer driver's
//! lock and a place in its wheel when first polled, and the lock again to
//! leave the wheel when dropped. Here a deadline is an entry in its
//! worker's [`Clock`] instead: a time and a waker in a slab, under a lock
//! that only the worker's own thread takes. One tokio timer, run by the
//! clock's task, fires at the earliest deadline waiting, wakes every entry
//! then due and is set again for the earliest left. Entries dropped
//! meanwhile are not looked for: the earliest time kept is only a bound,
//! and a timer that fires for a deadline no longer there finds nothing due
//! and is set again, about once per deadline length when all deadlines
//! have the same one. With hedges on, the shortest are the looks at a
//! member's silence, a few milliseconds: the clock then fires about that
//! often and goes through every entry each time, which under load costs
//! less per request than a tokio timer did (docs/performance.md).
//!
//! A deadline is due at its time, as near as tokio's timer fires then (the
//! clock's task runs on the same worker as the futures that wait).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;
use tokio::time::{Instant, Sleep, sleep_until};

/// A worker's deadlines. Cloning gives another handle to the same clock.
#[derive(Clone, Debug)]
pub(crate) struct Clock(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: Slab<Entry>,
    /// No waiting deadline is earlier; `None` when none waits.
    earliest: Option<Instant>,
    /// The clock's task, woken when a deadline comes before `earliest`.
    task: Option<Waker>,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    waker: Waker,
    /// Woken because its time came.
    due: bool,
}

/// The time passed before the future it bounded ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline passed")]
pub(crate) struct Elapsed;

impl Clock {
    /// A clock whose task runs on the current tokio runtime until the clock
    /// and its deadlines are all dropped.
    pub(crate) fn start() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
        });
        tokio::spawn(Run {
            clock: Arc::downgrade(&shared),
            timer: Box::pin(sleep_until(Instant::now())),
            set_for: None,
        });
        Self(shared)
    }

    /// A future that ends at `at`.
    pub(crate) fn deadline(&self, at: Instant) -> Deadline {
        Deadline {
            clock: self.0.clone(),
            at,
            entry: None,
        }
    }

    /// Runs `f` until it ends or `within` has passed.
    pub(crate) fn within<F: Future>(&self, within: Duration, f: F) -> Within<F> {
        self.until(Instant::now() + within, f)
    }

    /// Runs `f` until it ends or `at` comes.
    pub(crate) fn until<F: Future>(&self, at: Instant, f: F) -> Within<F> {
        Within {
            inner: f,
            deadline: self.deadline(at),
        }
    }

    /// Deadlines waiting (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.0.lock().entries.len()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The task ends when it next runs and finds the clock gone.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = state.task.take() {
            task.wake();
        }
    }
}

/// Ends at its time; see [`Clock::deadline`].
#[derive(Debug)]
pub(crate) struct Deadline {
    clock: Arc<Shared>,
    at: Instant,
    /// Its entry in the clock, once it has waited.
    entry: Option<usize>,
}

impl Deadline {
    /// Moves the deadline to `at`: it waits again, even if it had come.
    pub(crate) fn reset(&mut self, at: Instant) {
        if let Some(key) = self.entry.take() {
            self.clock.lock().entries.remove(key);
        }
        self.at = at;
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut state = this.clock.lock();
        if let Some(key) = this.entry {
            let entry = &mut state.entries[key];
            if entry.due {
                state.entries.remove(key);
                this.entry = None;
                return Poll::Ready(());
            }
            if !entry.waker.will_wake(cx.waker()) {
                entry.waker = cx.waker().clone();
            }
            return Poll::Pending;
        }
        if Instant::now() >= this.at {
            return Poll::Ready(());
        }
        let at = this.at;
        this.entry = Some(state.entries.insert(Entry {
            at,
            waker: cx.waker().clone(),
            due: false,
        }));
        if state.earliest.is_none_or(|earliest| at < earliest) {
            state.earliest = Some(at);
            if let Some(task) = &state.task {
                task.wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some(key) = self.entry {
            self.clock.lock().entries.remove(key);
        }
    }
}

impl hyper::rt::Sleep for Deadline {}

pin_project_lite::pin_project! {
    /// A future run until it ends or its deadline comes; see
    /// [`Clock::within`]. As large as the future and a deadline.
    #[derive(Debug)]
    pub(crate) struct Within<F> {
        #[pin]
        inner: F,
        deadline: Deadline,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        Pin::new(this.deadline).poll(cx).map(|()| Err(Elapsed))
    }
}

/// hyper's header timer.
impl hyper::rt::Timer for Clock {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.deadline(Instant::now() + duration))
    }

    fn sleep_until(&self, at: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.deadline(Instant::from_std(at)))
    }
}

/// The clock's task.
struct Run {
    clock: Weak<Shared>,
    timer: Pin<Box<Sleep>>,
    /// When `timer` is set to fire.
    set_for: Option<Instant>,
}

impl Future for Run {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(clock) = self.clock.upgrade() else {
            return Poll::Ready(());
        };
        loop {
            let earliest = {
                let mut state = clock.lock();
                if !state.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                    state.task = Some(cx.waker().clone());
                }
                let now = Instant::now();
                if state.earliest.is_some_and(|at| at <= now) {
                    state.wake_due(now);
                }
                state.earliest
            };
            let Some(at) = earliest else {
                return Poll::Pending;
            };
            if self.set_for != Some(at) {
                self.timer.as_mut().reset(at);
                self.set_for = Some(at);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl State {
    /// Wakes the entries due at `now`; `earliest` becomes the earliest of
    /// the others.
    fn wake_due(&mut self, now: Instant) {
        let mut earliest: Option<Instant> = None;
        for (_, entry) in &mut self.entries {
            if entry.due {
                continue;
            }
            if entry.at <= now {
                entry.due = true;
                entry.waker.wake_by_ref();
            } else {
                earliest = Some(earliest.map_or(entry.at, |e| e.min(entry.at)));
            }
        }
        self.earliest = earliest;
    }
}

#[cfg(test)]
mod tests {
    use tokio::task::JoinHandle;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `f`'s output, or a failure if it has not ended within a minute of
    /// (paused) time: a deadline the clock never wakes would otherwise
    /// hang the test.
    async fn ends<F: Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(60), f)
            .await
            .expect("never ended")
    }

    /// A task that waits for the deadline `at` of `clock` and returns how
    /// long after `start` it ended.
    fn waiting_task(clock: &Clock, start: Instant, at: Instant) -> JoinHandle<Duration> {
        let clock = clock.clone();
        tokio::spawn(async move {
            ends(clock.deadline(at)).await;
            start.elapsed()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_at_its_time_not_before() {
        let clock = Clock::start();
        let start = Instant::now();
        ends(clock.deadline(start + 50 * MS)).await;
        assert_eq!(start.elapsed(), 50 * MS);
        assert_eq!(clock.waiting(), 0);
        // One in the past ends at once.
        ends(clock.deadline(start)).await;
        assert_eq!(start.elapsed(), 50 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_and_then_an_earlier_one_each_end_at_theirs() {
        let clock = Clock::start();
        let start = Instant::now();
        let late = waiting_task(&clock, start, start + 100 * MS);
        tokio::time::sleep(10 * MS).await;
        // Earlier than the one the clock's timer is set for.
        ends(clock.deadline(start + 30 * MS)).await;
        assert_eq!(start.elapsed(), 30 * MS);
        assert_eq!(ends(late).await.unwrap(), 100 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_ends_first_leaves_nothing_behind() {
        let clock = Clock::start();
        for _ in 0..3 {
            let out = clock.within(10 * MS, async { 7 }).await;
            assert_eq!(out, Ok(7));
            // Its deadline waited while the future did.
            let out = clock.within(10 * MS, tokio::time::sleep(MS)).await;
            assert_eq!(out, Ok(()));
        }
        assert_eq!(clock.waiting(), 0);
        let start = Instant::now();
        let out = clock
            .within(10 * MS, tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert_eq!(out, Err(Elapsed));
        assert_eq!(start.elapsed(), 10 * MS);
        assert_eq!(clock.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_set_for_a_deadline_dropped_since_finds_the_next() {
        let clock = Clock::start();
        let start = Instant::now();
        // The clock's timer is set for the first, which goes.
        let first = waiting_task(&clock, start, start + 20 * MS);
        let second = waiting_task(&clock, start, start + 60 * MS);
        tokio::time::sleep(5 * MS).await;
        first.abort();
        assert_eq!(ends(second).await.unwrap(), 60 * MS);
        assert_eq!(clock.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_with_the_clock() {
        let clock = Clock::start();
        let task = Arc::downgrade(&clock.0);
        ends(clock.deadline(Instant::now() + MS)).await;
        drop(clock);
        tokio::task::yield_now().await;
        assert!(task.upgrade().is_none());
        // Nothing but this test's own task is left on the runtime.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let metrics = tokio::runtime::Handle::current().metrics();
        assert_eq!(metrics.num_alive_tasks(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_sleeps_are_deadlines() {
        use hyper::rt::Timer;
        let clock = Clock::start();
        let start = Instant::now();
        ends(clock.sleep(15 * MS)).await;
        assert_eq!(start.elapsed(), 15 * MS);
        ends(clock.sleep_until((start + 40 * MS).into_std())).await;
        assert_eq!(start.elapsed(), 40 * MS);
    }
}
