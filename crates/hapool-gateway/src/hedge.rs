//! When a request goes to a second member while the first has not
//! answered: a hedge.
//!
//! A member whose process is starved of CPU, swapping or stuck in a long
//! garbage collection still accepts connections and answers probes, late;
//! the requests already sent to it wait for as long as it stalls, however
//! well the choice of member avoids it afterwards. A request that is safe
//! to send twice (GET or HEAD, not bound to a session's member, its body
//! in memory) and that its member has not answered within
//! [`SLOW_BEYOND`](crate::select::SLOW_BEYOND) times the pool's fastest
//! recent response time is sent to a second member as well; the first
//! answer goes to the client and the other exchange is dropped (its
//! connection closed). A first member that lost has the time it had taken
//! so far recorded as its response time: a floor of the real one, enough
//! for the choice to send it nothing more while it stays that slow.
//!
//! Hedges are limited per pool to a share of its requests ([`Budget`]): a
//! pool whose members are all slow is not sent twice the work.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::select::SLOW_BEYOND;

/// The shortest wait before a hedge, whatever the response times.
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(1);

/// How long a pool's requests wait for their member before a hedge, given
/// the fastest recent response time among its members (in microseconds;
/// `None` when none has answered lately, and then there is no hedge: with
/// nothing to compare with, a slow answer cannot be told from a normal
/// one).
pub(crate) fn delay(fastest_us: Option<u32>) -> Option<Duration> {
    let fastest = fastest_us.filter(|&us| us > 0)?;
    Some(Duration::from_micros(u64::from(fastest) * u64::from(SLOW_BEYOND)).max(MIN_DELAY))
}

/// A pool's allowance of hedges: `percent` of the requests of the previous
/// second, plus one, in each second.
#[derive(Debug)]
pub(crate) struct Budget {
    percent: u32,
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
            percent,
            window: Mutex::new(Window {
                start: Instant::now(),
                requests_at_start: 0,
                allowed: 1,
                used: 0,
            }),
        }
    }

    /// Takes one hedge from the allowance, at `now`, when the pool has
    /// taken `requests` requests in all so far; `false` when it is spent.
    pub(crate) fn take(&self, requests: u64, now: Instant) -> bool {
        if self.percent == 0 {
            return false;
        }
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(w.start) >= WINDOW {
            let last = requests.saturating_sub(w.requests_at_start);
            w.allowed = last * u64::from(self.percent) / 100 + 1;
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

    #[test]
    fn the_delay_is_a_multiple_of_the_fastest_answer() {
        assert_eq!(delay(None), None);
        assert_eq!(delay(Some(0)), None);
        assert_eq!(delay(Some(5_000)), Some(Duration::from_millis(20)));
        assert_eq!(delay(Some(10)), Some(MIN_DELAY));
        assert_eq!(
            delay(Some(u32::MAX)),
            Some(Duration::from_micros(u64::from(u32::MAX) * 4))
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
        assert!(!off.take(1_000_000, t + 10 * WINDOW));
    }
}
