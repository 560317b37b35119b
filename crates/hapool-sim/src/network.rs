//! The simulated network: an event queue ordered by virtual time, and the
//! state of the links between registrars (partitions, loss, reordering).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

/// Events in virtual-time order; events at the same instant keep the order
/// they were scheduled in.
#[derive(Debug)]
pub(crate) struct Queue<E> {
    events: BTreeMap<(Instant, u64), E>,
    seq: u64,
}

impl<E> Queue<E> {
    pub(crate) fn new() -> Self {
        Self {
            events: BTreeMap::new(),
            seq: 0,
        }
    }

    pub(crate) fn push(&mut self, at: Instant, event: E) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    pub(crate) fn pop(&mut self) -> Option<(Instant, E)> {
        self.events.pop_first().map(|((at, _), e)| (at, e))
    }

    pub(crate) fn peek_time(&self) -> Option<Instant> {
        self.events.first_key_value().map(|((at, _), _)| *at)
    }
}

/// The links between registrars.
#[derive(Debug, Default)]
pub(crate) struct Links {
    /// The side of a partition each registrar slot is on; `None` when the
    /// network is whole.
    pub(crate) sides: Option<Vec<bool>>,
    /// Probability that an ENRP message is lost.
    pub(crate) loss: f64,
    /// Probability that an ENRP message is held back (and so overtaken).
    pub(crate) reorder: f64,
    /// When the last message on each link (from, to) arrives: a link is a
    /// TCP connection, in order unless reordering is injected.
    last: BTreeMap<(usize, usize), Instant>,
}

/// One-way delay of a message: 1 to 5 ms.
pub(crate) fn delay(rng: &mut StdRng) -> Duration {
    Duration::from_micros(rng.random_range(1_000..5_000))
}

impl Links {
    /// Whether a message from registrar slot `a` to `b` sent at `now` gets
    /// through, and when it arrives.
    pub(crate) fn carry(
        &mut self,
        a: usize,
        b: usize,
        now: Instant,
        rng: &mut StdRng,
    ) -> Option<Instant> {
        if let Some(sides) = &self.sides
            && sides[a] != sides[b]
        {
            return None;
        }
        if self.loss > 0.0 && rng.random_bool(self.loss) {
            return None;
        }
        let at = now + delay(rng);
        if self.reorder > 0.0 && rng.random_bool(self.reorder) {
            return Some(at + Duration::from_millis(rng.random_range(5..40)));
        }
        let last = self.last.entry((a, b)).or_insert(at);
        let at = at.max(*last);
        *last = at;
        Some(at)
    }
}
