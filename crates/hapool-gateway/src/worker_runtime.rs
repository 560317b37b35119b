//! The runtime a gateway worker runs on: one thread, looking at its
//! sockets every [`EVENT_INTERVAL`] tasks, letting the scheduler end a
//! used-up slice as it sends, and giving way before it sleeps after a long
//! stretch awake; and the CPU a worker thread is pinned to.
//!
//! **A CPU for each worker.** Workers on threads of their own are pinned
//! each to a CPU of its own, the first worker to the first CPU the process
//! may run on, and so on, when there are no more workers than such CPUs
//! (`GatewayConfig::pin_workers`). Left to the scheduler, two workers on
//! two CPUs answered with a longer tail at 64 connections
//! (docs/performance.md, "A CPU for each worker"); our reading is that
//! now and then both end up on one CPU and the connections of one wait
//! while the other runs. A single worker, or more workers than CPUs, is not
//! pinned: two workers would then share a CPU, and a single one was not
//! seen to move between CPUs under load.
//!
//! **Giving way.** A worker under load shares its CPU with the processes
//! it talks to (on a small machine, the members and the clients too). When
//! it has run a long stretch, those woken meanwhile wait behind it; if it
//! then runs out of work and goes to sleep, it is woken again only when
//! their answers come, and waits for the CPU in turn, with every connection
//! it serves. A worker that has been awake for at least
//! [`GIVE_WAY_AFTER`] and has nothing left to run first yields its CPU
//! (`sched_yield`) to what waits there, and comes back to the readiness
//! their work produced instead of sleeping. Short stretches, as under light
//! load, go straight to sleep: yielding there costs a system call and
//! takes the CPU from nothing. Measured in docs/performance.md ("Giving
//! way before sleeping").
//!
//! **Letting the scheduler look.** The kernel ends a thread's slice when
//! it looks at the thread: when something is woken on its CPU, and at the
//! CPU's tick (every 4 ms at 250 Hz). A member or client the worker wakes
//! on its own CPU early in a long stretch finds the worker's slice not yet
//! used up, and waits; nothing makes the kernel look again before the
//! tick, so it can wait up to 4 ms, and so do its requests. Every
//! [`WRITES_PER_LOOK`]th message a worker sends, it reads its own CPU
//! clock: for a running thread the kernel first brings its accounting up
//! to date, the same step the tick takes, and ends the slice there if it
//! has run out, switching to what waits on return from the call. One
//! system call per so many messages; a stretch shorter than a slice is not
//! cut (docs/performance.md, "Letting the scheduler look").

use std::cell::Cell;
use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;
use tracing::{info, warn};

/// Tasks a worker runs between two looks at its sockets' readiness while
/// tasks are waiting (tokio's default is 61). Under load every request
/// wakes several tasks, and each look is a system call; looking a quarter
/// as often took 6–10 % off the CPU per request at 256 connections
/// (docs/performance.md).
const EVENT_INTERVAL: u32 = 256;

/// How long a worker must have been awake before it gives way rather than
/// go straight to sleep. Shorter (300 µs) cost 2–18 % of the requests per
/// second at 64 connections; this keeps them and the shorter tail at 256.
const GIVE_WAY_AFTER: Duration = Duration::from_millis(1);

/// Messages a worker sends between two reads of its CPU clock (see the
/// module's documentation). At 40,000–50,000 requests per second, two
/// messages each, a read every 150–200 µs.
const WRITES_PER_LOOK: u32 = 16;

thread_local! {
    /// Messages sent since this thread last read its CPU clock.
    static WRITES_SINCE_LOOK: Cell<u32> = const { Cell::new(0) };
    /// How often this thread read its CPU clock for the scheduler.
    static LOOKS: Cell<u64> = const { Cell::new(0) };
    /// When this thread's worker last woke from sleep.
    static AWAKE_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How often this thread's worker gave way before sleeping.
    static GAVE_WAY: Cell<u64> = const { Cell::new(0) };
}

/// Whether a worker awake since `since` (unknown before its first sleep)
/// gives way at `now` before it sleeps.
fn gives_way(since: Option<Instant>, now: Instant) -> bool {
    since.is_some_and(|since| now.saturating_duration_since(since) >= GIVE_WAY_AFTER)
}

/// Just before the worker sleeps.
fn before_sleep() {
    if gives_way(AWAKE_SINCE.get(), Instant::now()) {
        GAVE_WAY.set(GAVE_WAY.get() + 1);
        std::thread::yield_now();
    }
}

/// After each message a worker sends (its first write after a read): every
/// [`WRITES_PER_LOOK`]th reads the thread's CPU clock, for the kernel to
/// end the worker's slice if it has run out.
pub(crate) fn message_sent() {
    let writes = WRITES_SINCE_LOOK.get() + 1;
    if writes < WRITES_PER_LOOK {
        WRITES_SINCE_LOOK.set(writes);
        return;
    }
    WRITES_SINCE_LOOK.set(0);
    LOOKS.set(LOOKS.get() + 1);
    // The time itself is not wanted, and the call cannot fail for the
    // calling thread's own clock.
    let _ = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID);
}

/// Messages this thread has counted with [`message_sent`].
#[cfg(test)]
pub(crate) fn messages_counted() -> u64 {
    LOOKS.get() * u64::from(WRITES_PER_LOOK) + u64::from(WRITES_SINCE_LOOK.get())
}

/// Builds the runtime a worker thread runs (see the module's
/// documentation). `hapool gateway` runs its own main thread on one too,
/// as with one worker that thread serves.
pub fn worker_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .on_thread_park(before_sleep)
        .on_thread_unpark(|| AWAKE_SINCE.set(Some(Instant::now())))
        .build()
}

/// The CPUs the calling thread may run on, in order.
fn allowed_cpus() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// The CPU each of `workers` worker threads is to be pinned to, if they
/// are pinned ([`worker_cpus`] of the CPUs this process may run on); says
/// which in the log, or why they are not.
pub(crate) fn pinned_cpus(workers: usize) -> Option<std::sync::Arc<[usize]>> {
    let allowed = match allowed_cpus() {
        Ok(allowed) => allowed,
        Err(e) => {
            warn!(error = %e, "the CPUs this process may run on are not known: workers not pinned");
            return None;
        }
    };
    let cpus = worker_cpus(workers, &allowed)?;
    info!(cpus = ?cpus, "workers pinned, each to a CPU of its own");
    Some(cpus.into())
}

/// The CPU each of `workers` worker threads is pinned to, among the
/// `allowed` ones: the `n`th worker to the `n`th CPU, when there are at
/// least two workers and no more than CPUs; `None` (not pinned) else.
fn worker_cpus(workers: usize, allowed: &[usize]) -> Option<Vec<usize>> {
    (workers >= 2 && workers <= allowed.len()).then(|| allowed[..workers].to_vec())
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_this_thread(cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gives_way_only_after_a_long_stretch_awake() {
        let woke = Instant::now();
        assert!(
            !gives_way(None, woke),
            "before its first sleep it does not know"
        );
        assert!(!gives_way(Some(woke), woke));
        assert!(!gives_way(
            Some(woke),
            woke + GIVE_WAY_AFTER - Duration::from_micros(1)
        ));
        assert!(gives_way(Some(woke), woke + GIVE_WAY_AFTER));
        assert!(gives_way(Some(woke), woke + 10 * GIVE_WAY_AFTER));
        // A clock read before the wake (another thread's) is no stretch.
        assert!(!gives_way(Some(woke + GIVE_WAY_AFTER), woke));
    }

    #[test]
    fn every_sixteenth_message_reads_the_cpu_clock() {
        std::thread::spawn(|| {
            for _ in 0..WRITES_PER_LOOK - 1 {
                message_sent();
            }
            assert_eq!(LOOKS.get(), 0);
            message_sent();
            assert_eq!(LOOKS.get(), 1);
            for _ in 0..3 * WRITES_PER_LOOK {
                message_sent();
            }
            assert_eq!(LOOKS.get(), 4);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn workers_are_pinned_one_to_a_cpu_only_when_the_cpus_go_round() {
        assert_eq!(worker_cpus(2, &[0, 1]), Some(vec![0, 1]));
        // The process's own CPUs, in order, not the machine's first ones.
        assert_eq!(worker_cpus(2, &[2, 5, 7]), Some(vec![2, 5]));
        assert_eq!(worker_cpus(3, &[2, 5, 7]), Some(vec![2, 5, 7]));
        // One worker: the scheduler moves it to whichever CPU is free.
        assert_eq!(worker_cpus(1, &[0, 1]), None);
        // More workers than CPUs: two would share one.
        assert_eq!(worker_cpus(3, &[0, 1]), None);
        assert_eq!(worker_cpus(2, &[]), None);
    }

    #[test]
    fn a_thread_is_pinned_to_the_cpu_asked_for() {
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        let last = *allowed.last().unwrap();
        let pinned = std::thread::spawn(move || {
            pin_this_thread(last).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(pinned, [last]);
        // Only that thread: this one keeps its CPUs.
        assert_eq!(allowed_cpus().unwrap(), allowed);
        // A CPU beyond any the kernel knows is refused, not ignored.
        assert!(pin_this_thread(CpuSet::count()).is_err());
    }

    #[test]
    fn the_worker_runtime_gives_way_before_sleeping_after_a_long_stretch() {
        let runtime = worker_runtime().unwrap();
        let before = GAVE_WAY.get();
        let answer = runtime.block_on(async {
            // A first sleep, so that the worker knows when it woke.
            tokio::time::sleep(Duration::from_millis(1)).await;
            // A stretch awake far longer than GIVE_WAY_AFTER, then a sleep.
            std::thread::sleep(5 * GIVE_WAY_AFTER);
            tokio::time::sleep(Duration::from_millis(1)).await;
            42
        });
        assert_eq!(answer, 42);
        assert!(
            GAVE_WAY.get() > before,
            "the worker went to sleep after a long stretch without giving way"
        );
    }
}
