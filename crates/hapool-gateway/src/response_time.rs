//! How long a member has recently taken to answer: a moving average of
//! its response times (request sent to response head), which the choice
//! of member weighs with its open sessions (`select.rs`).
//!
//! The average forgets with time rather than with the number of answers:
//! each answer weighs `1 − e^(−Δt/τ)`, Δt being the time since the
//! previous one and τ [`DECAY`]. At thousands of answers a second it is an
//! average over the last τ, steady against single slow answers; at a few
//! a second it is close to the last one. A member that stalls (its process
//! starved of CPU, say) shows it within a fraction of τ through the few
//! answers it still gives. The figure is current for [`FRESH`] after the
//! last answer; after that the member counts as not measured.
//!
//! Both workers record into the same member: the two fields are read and
//! written without a lock, so two answers recorded at the same instant
//! may count as one. The figure is a hint for choosing, not a statistic.
//! For the same reason an answer that comes less than [`SPACING`] after
//! the last one recorded is left out: under load that keeps the member's
//! fields from being written by both workers thousands of times a
//! second, and a hundred answers per time constant still make the
//! average.
//!
//! When the member last answered at all is kept apart, to within
//! [`ANSWER_GRAIN`], for hedges (`hedge.rs`): a member that answers
//! nothing for longer than it takes to answer while requests wait for it
//! has stalled.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time constant of the average.
pub(crate) const DECAY: Duration = Duration::from_millis(100);

/// How long after the last answer the figure is still used.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// The least time between two answers recorded.
pub(crate) const SPACING: Duration = Duration::from_millis(1);

/// How close to the time of a member's last answer
/// [`ResponseTime::quiet_from`] is.
pub(crate) const ANSWER_GRAIN: Duration = Duration::from_micros(100);

/// One member's response-time average.
#[derive(Debug)]
pub(crate) struct ResponseTime {
    /// Where the time stamps count from.
    epoch: Instant,
    /// The average in microseconds, at least 1; 0 before the first answer.
    average_us: AtomicU32,
    /// When the last answer came, in microseconds since `epoch`.
    last_us: AtomicU64,
    /// When an answer came last, in microseconds since `epoch`, to within
    /// [`ANSWER_GRAIN`] (an answer less than that after the one stored is
    /// not stored).
    answered_us: AtomicU64,
}

impl ResponseTime {
    /// No answer yet.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            average_us: AtomicU32::new(0),
            last_us: AtomicU64::new(0),
            answered_us: AtomicU64::new(0),
        }
    }

    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Records an answer that took `took`, received `at` (unless the last
    /// one recorded came less than [`SPACING`] before).
    pub(crate) fn record(&self, took: Duration, at: Instant) {
        let now = self.stamp(at);
        let answered = self.answered_us.load(Ordering::Relaxed);
        if now >= answered.saturating_add(micros(ANSWER_GRAIN)) {
            self.answered_us.store(now, Ordering::Relaxed);
        }
        let last = self.last_us.load(Ordering::Relaxed);
        let average = self.average_us.load(Ordering::Relaxed);
        let since = now.saturating_sub(last);
        if average != 0 && since < micros(SPACING) {
            return;
        }
        self.last_us.store(now, Ordering::Relaxed);
        let sample = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        let next = if average == 0 || since > micros(FRESH) {
            sample
        } else {
            let keep = (-(since as f64) / micros(DECAY) as f64).exp();
            let mixed = f64::from(average) * keep + f64::from(sample) * (1.0 - keep);
            // In range: between two u32 values.
            (mixed.round() as u32).max(1)
        };
        self.average_us.store(next, Ordering::Relaxed);
    }

    /// The average in microseconds as of `at`; 0 when there has been no
    /// answer in the [`FRESH`] period before.
    pub(crate) fn current_us(&self, at: Instant) -> u32 {
        let average = self.average_us.load(Ordering::Relaxed);
        let last = self.last_us.load(Ordering::Relaxed);
        if self.stamp(at).saturating_sub(last) > micros(FRESH) {
            0
        } else {
            average
        }
    }

    /// The time from which on no answer has come (at most
    /// [`ANSWER_GRAIN`] after the last one; the creation when none has).
    pub(crate) fn quiet_from(&self) -> Instant {
        let answered = self.answered_us.load(Ordering::Relaxed);
        self.epoch + Duration::from_micros(answered) + ANSWER_GRAIN
    }
}

impl Default for ResponseTime {
    fn default() -> Self {
        Self::new()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_answer_is_the_average() {
        let r = ResponseTime::new();
        let t = Instant::now();
        assert_eq!(r.current_us(t), 0);
        r.record(5 * MS, t);
        assert_eq!(r.current_us(t), 5_000);
    }

    #[test]
    fn answers_weigh_by_the_time_since_the_last_one() {
        let r = ResponseTime::new();
        let mut t = Instant::now();
        r.record(5 * MS, t);
        // A thousand answers a second at 85 ms: after 50 ms the average
        // has gone 1 - e^-0.5 (39 %) of the way.
        for _ in 0..50 {
            t += MS;
            r.record(85 * MS, t);
        }
        let after = r.current_us(t);
        assert!((35_000..=37_000).contains(&after), "{after}");
        // One slow answer among a hundred in a time constant moves it by
        // about a hundredth of its excess.
        let r = ResponseTime::new();
        let mut t = Instant::now();
        for i in 0..100 {
            t += MS;
            r.record(if i == 50 { 200 * MS } else { 5 * MS }, t);
        }
        let steady = r.current_us(t);
        assert!((6_000..=6_400).contains(&steady), "{steady}");
        // An answer a whole time constant later weighs 1 - 1/e.
        t += DECAY;
        r.record(15 * MS, t);
        let moved = r.current_us(t);
        let expected =
            f64::from(steady) / std::f64::consts::E + 15_000.0 * (1.0 - 1.0 / std::f64::consts::E);
        assert!((f64::from(moved) - expected).abs() < 2.0, "{moved}");
    }

    #[test]
    fn answers_closer_than_the_spacing_are_left_out() {
        let r = ResponseTime::new();
        let t = Instant::now();
        r.record(5 * MS, t);
        r.record(500 * MS, t + SPACING / 2);
        assert_eq!(r.current_us(t + SPACING / 2), 5_000);
        r.record(500 * MS, t + SPACING);
        assert!(r.current_us(t + SPACING) > 5_000);
    }

    #[test]
    fn quiet_from_follows_the_last_answer_to_within_the_grain() {
        let r = ResponseTime::new();
        let t = r.epoch;
        assert_eq!(r.quiet_from(), t + ANSWER_GRAIN, "no answer yet");
        r.record(5 * MS, t + 10 * MS);
        assert_eq!(r.quiet_from(), t + 10 * MS + ANSWER_GRAIN);
        // Within the grain: not stored, the time it gives still after it.
        r.record(5 * MS, t + 10 * MS + ANSWER_GRAIN / 2);
        assert_eq!(r.quiet_from(), t + 10 * MS + ANSWER_GRAIN);
        // Answers closer than the average's spacing still count here.
        r.record(5 * MS, t + 10 * MS + ANSWER_GRAIN);
        assert_eq!(r.quiet_from(), t + 10 * MS + 2 * ANSWER_GRAIN);
    }

    #[test]
    fn the_figure_lapses_without_answers() {
        let r = ResponseTime::new();
        let t = Instant::now();
        r.record(90 * MS, t);
        assert_eq!(r.current_us(t + FRESH), 90_000);
        assert_eq!(r.current_us(t + FRESH + MS), 0);
        // The next answer starts afresh.
        r.record(4 * MS, t + 2 * FRESH);
        assert_eq!(r.current_us(t + 2 * FRESH), 4_000);
    }

    #[test]
    fn extremes_stay_in_range() {
        let r = ResponseTime::new();
        let t = Instant::now();
        r.record(Duration::ZERO, t);
        assert_eq!(r.current_us(t), 1, "an instant answer still counts");
        r.record(Duration::from_secs(100_000), t + MS);
        assert!(r.current_us(t + MS) > 1);
        r.record(Duration::from_secs(100_000), t + 2 * MS);
        r.record(Duration::from_secs(100_000), t + FRESH);
        assert!(r.current_us(t + FRESH) > u32::MAX / 2);
    }
}
