//! When a request goes to a second member while the first has not
//! answered: a hedge.
//!
//! A member whose process is starved of CPU, swapping or stuck in a long
//! garbage collection still accepts connections and answers probes, late;
//! the requests already sent to it wait for as long as it stalls, however
//! well the choice of member avoids it afterwards. A request that is safe
//! to send twice (GET or HEAD, not bound to a session's member, its body
//! in memory) is sent to a second member as well once its own member has
//! answered nothing at all for a while ([`Delays`]). While the member has
//! other requests open, that is [`STALL_BEYOND`] times its own recent
//! response time: a member working through a queue answers one of its
//! requests every so often, and even a burst of requests that arrived
//! together is answered about one response time later, so a silence
//! longer than that is a stall. With this request its only one, it is
//! [`SLOW_BEYOND`] times the pool's fastest recent response time: then
//! only its own answer tells how it is doing.
//! A member that keeps answering other requests is not sent copies of the
//! ones still waiting in its queue: they would wait as long elsewhere, and
//! only add load. The first answer goes to the client; the other
//! exchange goes on by itself and its answer is read and dropped, so that
//! its connection carries the next request rather than being closed and
//! made again (an answer over 64 KiB is not read: its connection is
//! closed). A first member that lost has the time it had taken so far
//! recorded as its response time: a floor of the real one, enough for the
//! choice to send it nothing more while it stays that slow, until its
//! answer comes and its real time replaces it.
//!
//! Hedges are limited per pool to a share of its requests ([`Budget`]): a
//! pool whose members are all slow is not sent twice the work.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::select::SLOW_BEYOND;

/// The shortest silence before a hedge, whatever the response times.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(1);

/// How many times its own response time a member with requests open may
/// answer nothing before they are hedged.
pub(crate) const STALL_BEYOND: f64 = 1.5;

/// How long a member may answer nothing before a request waiting for it
/// is hedged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delays {
    /// The pool's fastest recent response time.
    fastest: Duration,
    /// While the waiting request is the member's only one:
    /// [`SLOW_BEYOND`] times `fastest` (at least [`MIN_DELAY`]).
    slow: Duration,
}

/// The delays, given the fastest recent response time among a pool's
/// members (in microseconds; `None` when none has answered lately, and
/// then there is no hedge: with nothing to compare with, a slow answer
/// cannot be told from a normal one).
pub(crate) fn delays(fastest_us: Option<u32>) -> Option<Delays> {
    let fastest = Duration::from_micros(u64::from(fastest_us.filter(|&us| us > 0)?));
    Some(Delays {
        fastest,
        slow: (fastest * SLOW_BEYOND).max(MIN_DELAY),
    })
}

impl Delays {
    /// The first time to look whether a request sent at `sending` is to
    /// be hedged: the earliest a busy member's silence can be due (its own
    /// response time is at least the pool's fastest).
    pub(crate) fn first_look(&self, sending: Instant) -> Instant {
        self.due(sending, sending, None, true)
    }

    /// When a request sent at `sending` is to be hedged if its member,
    /// which has answered nothing since `quiet_from`, still answers
    /// nothing: `response_time` is the member's own recent one (`None`
    /// when it has not answered lately), `busy` says whether it has other
    /// requests open.
    pub(crate) fn due(
        &self,
        sending: Instant,
        quiet_from: Instant,
        response_time: Option<Duration>,
        busy: bool,
    ) -> Instant {
        let silence = if busy {
            response_time
                .unwrap_or(self.fastest)
                .max(self.fastest)
                .mul_f64(STALL_BEYOND)
                .max(MIN_DELAY)
        } else {
            self.slow
        };
        sending.max(quiet_from) + silence
    }
}

/// A pool's allowance of hedges: `percent` of the requests of the previous
/// second, plus one, in each second.
#[derive(Debug)]
pub(crate) struct Budget {
    percent: AtomicU32,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// The pool's request count when the window started.
    requests_at_start: u64,
    allowed: u64,
    used: u64,
}

/// The length of a budget window.
const WINDOW: Duration = Duration::from_secs(1);

impl Budget {
    /// Hedges for up to `percent` of the requests (0: none).
    pub(crate) fn new(percent: u32) -> Self {
        Self {
            percent: AtomicU32::new(percent),
            window: Mutex::new(Window {
                start: Instant::now(),
                requests_at_start: 0,
                allowed: 1,
                used: 0,
            }),
        }
    }

    /// Hedges for up to `percent` of the requests from now on.
    pub(crate) fn set_percent(&self, percent: u32) {
        self.percent.store(percent, Ordering::Relaxed);
    }

    /// Whether hedges are allowed at all (a percent above 0): when they
    /// are not, a request's member is not watched for silence either.
    pub(crate) fn is_on(&self) -> bool {
        self.percent.load(Ordering::Relaxed) != 0
    }

    /// Takes one hedge from the allowance, at `now`, when the pool has
    /// taken `requests` requests in all so far; `false` when it is spent.
    pub(crate) fn take(&self, requests: u64, now: Instant) -> bool {
        let percent = self.percent.load(Ordering::Relaxed);
        if percent == 0 {
            return false;
        }
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(w.start) >= WINDOW {
            let last = requests.saturating_sub(w.requests_at_start);
            w.allowed = last * u64::from(percent) / 100 + 1;
            w.used = 0;
            w.start = now;
            w.requests_at_start = requests;
        }
        let left = w.used < w.allowed;
        w.used += u64::from(left);
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const US: Duration = Duration::from_micros(1);

    #[test]
    fn the_delays_follow_the_fastest_answer() {
        assert_eq!(delays(None), None);
        assert_eq!(delays(Some(0)), None);
        let d = delays(Some(5_000)).unwrap();
        assert_eq!(d.slow, 20 * MS);
        let t = Instant::now();
        assert_eq!(d.first_look(t), t + 7_500 * US);
        let d = delays(Some(10)).unwrap();
        assert_eq!(d.slow, MIN_DELAY);
        assert_eq!(d.first_look(t), t + MIN_DELAY);
        assert_eq!(
            delays(Some(u32::MAX)).map(|d| d.slow),
            Some(Duration::from_micros(u64::from(u32::MAX) * 4))
        );
    }

    #[test]
    fn a_hedge_is_due_after_the_members_silence() {
        let d = delays(Some(5_000)).unwrap();
        let sent = Instant::now();
        let own = Some(6 * MS);
        // Silent since before the request: counted from the request;
        // with other requests open, one and a half times its own response
        // time, alone four times the pool's fastest.
        assert_eq!(d.due(sent, sent - 50 * MS, own, true), sent + 9 * MS);
        assert_eq!(d.due(sent, sent - 50 * MS, own, false), sent + 20 * MS);
        // An answer to another request after it went out starts the
        // silence again.
        assert_eq!(d.due(sent, sent + 3 * MS, own, true), sent + 12 * MS);
        assert_eq!(d.due(sent, sent + 3 * MS, own, false), sent + 23 * MS);
        // Without a recent figure of its own, the pool's fastest counts.
        assert_eq!(d.due(sent, sent, None, true), sent + 7_500 * US);
        // Never less than the least delay.
        let quick = delays(Some(100)).unwrap();
        assert_eq!(
            quick.due(sent, sent, Some(200 * US), true),
            sent + MIN_DELAY
        );
    }

    #[test]
    fn the_budget_is_a_share_of_the_last_seconds_requests() {
        let budget = Budget::new(5);
        let t = Instant::now();
        // The first second: one.
        assert!(budget.take(10, t));
        assert!(!budget.take(20, t + Duration::from_millis(500)));
        // 1,000 requests in the first second: 5 % of them, plus one.
        let next = t + WINDOW;
        for _ in 0..51 {
            assert!(budget.take(1_000, next));
        }
        assert!(!budget.take(1_000, next));
        // A quiet second: one again.
        let quiet = next + WINDOW;
        assert!(budget.take(1_000, quiet));
        assert!(!budget.take(1_000, quiet));
        // None at all when switched off.
        let off = Budget::new(0);
        assert!(!off.is_on());
        assert!(!off.take(1_000_000, t + 10 * WINDOW));
        assert!(budget.is_on());
    }
}
