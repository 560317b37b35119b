//! The order of an ordered policy's PEs: an indexed 4-ary min-heap of
//! (key, sequence, slot) ranks, and beside it a queue of the PEs that
//! selections moved behind all the others.
//!
//! Why a heap and not a sorted tree: the common change is a load update,
//! which gives one PE a new key anywhere in the range. In a sorted tree
//! that is a removal and an insertion, each a walk from the root to a leaf
//! through nodes a large pool does not keep in cache. In a heap the PE
//! moves from where it is by a level or two on average (most entries live
//! near the bottom), and the first N in order are read from the top, which
//! stays in cache. Each slot's place is kept, so a PE is found without a
//! search.
//!
//! Why the queue: a selection makes the PE it takes the last of those
//! taking turns (Round Robin, Priority), or nearly (a degrading policy,
//! whose selected PE's key grows past the others' in its band). In a heap
//! that PE would sink from the root to the bottom of the band, one cache
//! line per level, lines a large pool does not keep in cache; in a queue
//! sorted by rank it goes on the end. A selected PE goes on the queue's
//! end when its new rank is at least the last one's, on its front when at
//! most the first one's (Least Used: a PE that stays the least loaded),
//! else into the heap; registrations and load updates go into the heap.
//! The order is the two merged: the next PE is the queue's first or the
//! heap's root. A PE leaving the middle of the queue leaves a dead entry
//! behind, dropped when it reaches an end, or all at once when the dead
//! outnumber the living.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Children per heap node: the four ranks of a node's children fill one
/// cache line, and the heap is half as deep as a binary one.
const ARITY: usize = 4;

/// Up to this many entries, `first` scans its few candidates instead of
/// keeping them in a heap of their own (`Candidates`).
const SCAN_UP_TO: usize = 8;

/// `position` of a slot that is not held.
const ABSENT: u32 = u32::MAX;

/// The bit of `position` that says the slot is queued: the rest is its
/// ticket (the queue's front ticket plus its index, modulo `TICKETS`).
const QUEUED: u32 = 1 << 31;

/// Tickets are counted modulo this.
const TICKETS: u32 = QUEUED;

/// The slot of a dead queue entry: its key and sequence number stay, so
/// the queue stays sorted.
const DEAD: u32 = u32::MAX;

/// Below this many entries the queue is never compacted.
const COMPACT_FROM: usize = 64;

/// The rank of a heap position past the end: it never wins a comparison,
/// so a sift-down compares all four lanes of a group without counting.
const VACANT: u128 = u128::MAX;

/// Key, then sequence number, then slot, as one integer: entries compare
/// by it alone (sequence numbers are unique within a pool), and the slot
/// travels with the rank, so a heap walk reads one array.
fn rank(key: u64, seq: u32, slot: u32) -> u128 {
    (u128::from(key) << 64) | (u128::from(seq) << 32) | u128::from(slot)
}

/// The slot a rank belongs to.
fn slot_of(rank: u128) -> u32 {
    rank as u32
}

/// The same rank, dead.
fn dead(rank: u128) -> u128 {
    rank | u128::from(DEAD)
}

/// How many groups of ranks `len` heap positions take.
fn groups_for(len: usize) -> usize {
    (len + 2 * ARITY - 2) / ARITY
}

/// The ranks of one node's children: one cache line.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Siblings([u128; ARITY]);

impl Siblings {
    const VACANT: Self = Self([VACANT; ARITY]);

    /// The lane with the smallest rank, the first of equals, without a
    /// branch: which child is smallest is a coin toss to the branch
    /// predictor, and a heap walk asks once per level.
    fn least(&self) -> usize {
        let [a, b, c, d] = self.0;
        let left = usize::from(b < a);
        let right = 2 + usize::from(d < c);
        let right_wins = usize::from(self.0[right] < self.0[left]);
        left + (right - left) * right_wins
    }
}

/// Slots ordered by (key, sequence), smallest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct OrderIndex {
    /// The rank at each heap position, grouped so that the children of
    /// position `i` (positions `4i + 1 ..= 4i + 4`) are exactly group
    /// `i + 1`: position `p` is lane `(p + 3) % 4` of group `(p + 3) / 4`
    /// (the root is alone in group 0). A sift-down reads one line per
    /// level. Lanes past the end hold `VACANT`.
    ranks: Vec<Siblings>,
    /// Heap positions in use.
    len: usize,
    /// Ranks sorted ascending; dead entries (slot `DEAD`) only in the
    /// middle.
    queue: VecDeque<u128>,
    /// The ticket of the queue's first entry.
    front_ticket: u32,
    /// Live entries in the queue.
    queued: usize,
    /// Where each slot's entry is: its heap position, `QUEUED` and its
    /// ticket, or `ABSENT`.
    position: Vec<u32>,
    /// Scratch for `first`.
    candidates: Candidates,
}

/// The heap positions `first` has still to look at, with their ranks: a
/// few are scanned, many kept in a heap of their own.
#[derive(Clone, Debug)]
enum Candidates {
    Few(Vec<(u128, u32)>),
    Many(BinaryHeap<Reverse<(u128, u32)>>),
}

impl Default for Candidates {
    fn default() -> Self {
        Self::Few(Vec::new())
    }
}

impl Candidates {
    /// Empty, for a request for `n` entries.
    fn start(&mut self, n: usize) {
        match self {
            Self::Few(few) if n <= SCAN_UP_TO => few.clear(),
            Self::Many(many) if n > SCAN_UP_TO => many.clear(),
            _ if n <= SCAN_UP_TO => *self = Self::Few(Vec::new()),
            _ => *self = Self::Many(BinaryHeap::new()),
        }
    }

    fn push(&mut self, rank: u128, at: u32) {
        match self {
            Self::Few(few) => few.push((rank, at)),
            Self::Many(many) => many.push(Reverse((rank, at))),
        }
    }

    /// The least rank, and where it is for `take`.
    fn least(&self) -> Option<(u128, usize)> {
        match self {
            Self::Few(few) => few
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.0)
                .map(|(index, c)| (c.0, index)),
            Self::Many(many) => many.peek().map(|Reverse(c)| (c.0, 0)),
        }
    }

    /// Takes out the candidate `least` found at `index`.
    fn take(&mut self, index: usize) -> (u128, u32) {
        match self {
            Self::Few(few) => few.swap_remove(index),
            Self::Many(many) => many.pop().expect("a candidate").0,
        }
    }
}

impl OrderIndex {
    /// Entries held.
    fn len(&self) -> usize {
        self.len + self.queued
    }

    /// Adds `slot` (not yet held) with its key and sequence number.
    pub(crate) fn insert(&mut self, slot: u32, key: u64, seq: u32) {
        let index = slot as usize;
        if index >= self.position.len() {
            self.position.resize(index + 1, ABSENT);
        }
        debug_assert_eq!(self.position[index], ABSENT, "slot {slot} held twice");
        self.heap_insert(rank(key, seq, slot));
    }

    /// Takes `slot` out.
    pub(crate) fn remove(&mut self, slot: u32) {
        let at = std::mem::replace(&mut self.position[slot as usize], ABSENT);
        if at & QUEUED != 0 {
            self.kill(at);
        } else {
            self.heap_remove(at as usize);
        }
    }

    /// The key `slot` (held) is filed under.
    pub(crate) fn key(&self, slot: u32) -> u64 {
        (self.rank_of(self.position[slot as usize]) >> 64) as u64
    }

    /// Gives `slot` (held) a new key and sequence number; nothing moves
    /// when both are unchanged.
    pub(crate) fn set(&mut self, slot: u32, key: u64, seq: u32) {
        let new = rank(key, seq, slot);
        let at = self.position[slot as usize];
        if at & QUEUED == 0 {
            self.rerank(at as usize, new);
        } else if self.queue[self.queue_index(at)] != new {
            self.kill(at);
            self.heap_insert(new);
        }
    }

    /// Raises the key of `slot` (held) by `by` and gives it the sequence
    /// number `seq`, the pool's newest (a selection): the PE goes on the
    /// queue's end or front when its new rank belongs there, else into
    /// the heap.
    pub(crate) fn raise(&mut self, slot: u32, by: u64, seq: u32) {
        let at = self.position[slot as usize];
        let queued = at & QUEUED != 0;
        let old = self.rank_of(at);
        // Saturating, as the policy's key is: a key at the top stays there.
        let new = rank(((old >> 64) as u64).saturating_add(by), seq, slot);
        if queued {
            self.kill(at);
        } else if self.stays(at as usize, new) {
            // Still before its children (Least Used: the least loaded PE
            // stays the least loaded): nothing moves.
            self.set_rank(at as usize, new);
            return;
        }
        // Which end of the queue it goes on (`true`: the back), if either.
        let end = match (self.queue.front(), self.queue.back()) {
            (Some(&front), Some(&back)) if new < back => (new <= front).then_some(false),
            _ => Some(true),
        };
        match (end, queued) {
            (Some(back), _) => {
                if !queued {
                    self.heap_remove(at as usize);
                }
                self.enqueue(new, back);
            }
            (None, true) => self.heap_insert(new),
            (None, false) => self.rerank(at as usize, new),
        }
    }

    /// Whether the entry at heap position `at`, given the larger rank
    /// `new`, stays where it is.
    fn stays(&self, at: usize, new: u128) -> bool {
        at * ARITY + 1 >= self.len || {
            let siblings = &self.ranks[at + 1];
            siblings.0[siblings.least()] >= new
        }
    }

    /// Appends to `out` the slots of the first `n` entries, in order: the
    /// queue's first live ones merged with the heap's first, read from the
    /// top of the heap only (the next in order is always the root or a
    /// child of one already taken).
    pub(crate) fn first(&mut self, n: usize, out: &mut Vec<u32>) {
        if n == 0 || self.len() == 0 {
            return;
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.start(n);
        if self.len > 0 {
            candidates.push(self.rank_at(0), 0);
        }
        let mut queue = self
            .queue
            .iter()
            .copied()
            .filter(|&r| slot_of(r) != DEAD)
            .peekable();
        for _ in 0..n {
            let least = candidates.least();
            let from_queue = match (queue.peek(), least) {
                (Some(&q), Some((h, _))) => q < h,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if from_queue {
                out.extend(queue.next().map(slot_of));
            } else if let Some((_, index)) = least {
                let (rank, at) = candidates.take(index);
                out.push(slot_of(rank));
                let children = at as usize * ARITY + 1;
                for child in children..(children + ARITY).min(self.len) {
                    candidates.push(self.rank_at(child), child as u32);
                }
            }
        }
        self.candidates = candidates;
    }

    /// The rank of the entry at `position`, in the queue or the heap.
    fn rank_of(&self, position: u32) -> u128 {
        if position & QUEUED != 0 {
            self.queue[self.queue_index(position)]
        } else {
            self.rank_at(position as usize)
        }
    }

    /// The index in the queue of the entry with this `position`.
    fn queue_index(&self, position: u32) -> usize {
        ((position & !QUEUED).wrapping_sub(self.front_ticket) % TICKETS) as usize
    }

    /// Puts `rank` (of a slot not held) on the queue's end (`back`) or
    /// front; the caller has checked that the queue stays sorted.
    fn enqueue(&mut self, rank: u128, back: bool) {
        let ticket = if back {
            let ticket = (self.front_ticket + self.queue.len() as u32) % TICKETS;
            self.queue.push_back(rank);
            ticket
        } else {
            self.front_ticket = (self.front_ticket + TICKETS - 1) % TICKETS;
            self.queue.push_front(rank);
            self.front_ticket
        };
        self.position[slot_of(rank) as usize] = QUEUED | ticket;
        self.queued += 1;
    }

    /// Marks the queue entry at `position` dead, then drops the dead at
    /// either end, or all of them once they outnumber the living.
    fn kill(&mut self, position: u32) {
        let index = self.queue_index(position);
        self.queue[index] = dead(self.queue[index]);
        self.queued -= 1;
        while self.queue.front().is_some_and(|&r| slot_of(r) == DEAD) {
            self.queue.pop_front();
            self.front_ticket = (self.front_ticket + 1) % TICKETS;
        }
        while self.queue.back().is_some_and(|&r| slot_of(r) == DEAD) {
            self.queue.pop_back();
        }
        if self.queue.len() >= COMPACT_FROM && self.queue.len() > 2 * self.queued {
            self.queue.retain(|&r| slot_of(r) != DEAD);
            self.front_ticket = 0;
            for (ticket, &r) in self.queue.iter().enumerate() {
                self.position[slot_of(r) as usize] = QUEUED | ticket as u32;
            }
        }
    }

    fn rank_at(&self, at: usize) -> u128 {
        let p = at + ARITY - 1;
        self.ranks[p / ARITY].0[p % ARITY]
    }

    fn heap_insert(&mut self, rank: u128) {
        let at = self.len;
        self.len += 1;
        if self.ranks.len() < groups_for(self.len) {
            self.ranks.push(Siblings::VACANT);
        }
        self.sift_up(at, rank);
    }

    /// Takes the entry at heap position `at` out (its slot's position is
    /// the caller's to change).
    fn heap_remove(&mut self, at: usize) {
        let last = self.len - 1;
        let last_rank = self.rank_at(last);
        self.set_rank(last, VACANT);
        self.len = last;
        self.ranks.truncate(groups_for(last));
        if at < last {
            self.restore(at, last_rank);
        }
    }

    /// Gives the entry at `at` the rank `new` (of the same slot), moving it
    /// as far as needed.
    fn rerank(&mut self, at: usize, new: u128) {
        let old = self.rank_at(at);
        if new < old {
            self.sift_up(at, new);
        } else if new > old {
            self.sift_down(at, new);
        }
    }

    /// Puts `rank` at `at` and moves it up or down until the heap is in
    /// order again.
    fn restore(&mut self, at: usize, rank: u128) {
        if at > 0 && rank < self.rank_at((at - 1) / ARITY) {
            self.sift_up(at, rank);
        } else {
            self.sift_down(at, rank);
        }
    }

    fn sift_up(&mut self, mut at: usize, rank: u128) {
        while at > 0 {
            let parent = (at - 1) / ARITY;
            let parent_rank = self.rank_at(parent);
            if parent_rank <= rank {
                break;
            }
            self.place(at, parent_rank);
            at = parent;
        }
        self.place(at, rank);
    }

    fn sift_down(&mut self, mut at: usize, rank: u128) {
        let len = self.len;
        loop {
            let first = at * ARITY + 1;
            if first >= len {
                break;
            }
            // The children of `at` are exactly group `at + 1`.
            let siblings = &self.ranks[at + 1];
            let least = siblings.least();
            let least_rank = siblings.0[least];
            if least_rank >= rank {
                break;
            }
            self.place(at, least_rank);
            at = first + least;
        }
        self.place(at, rank);
    }

    fn set_rank(&mut self, at: usize, rank: u128) {
        let p = at + ARITY - 1;
        self.ranks[p / ARITY].0[p % ARITY] = rank;
    }

    fn place(&mut self, at: usize, rank: u128) {
        self.set_rank(at, rank);
        self.position[slot_of(rank) as usize] = at as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    /// The least of four lanes, the first of equals, for every order of
    /// four values with ties and vacant lanes among them.
    #[test]
    fn least_of_four_is_the_first_smallest() {
        let values = [1u128, 2, 2, VACANT];
        for a in values {
            for b in values {
                for c in values {
                    for d in values {
                        let lanes = [a, b, c, d];
                        let want = (0..4).min_by_key(|&i| (lanes[i], i)).unwrap();
                        assert_eq!(Siblings(lanes).least(), want, "{lanes:?}");
                    }
                }
            }
        }
    }

    /// Random inserts, removals, key changes, selections and reads of the
    /// first N, against a sorted set; the queue's tickets start just
    /// before they wrap.
    #[test]
    fn matches_a_sorted_set() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut index = OrderIndex {
            front_ticket: TICKETS - 5,
            ..OrderIndex::default()
        };
        let mut model: BTreeSet<(u64, u32, u32)> = BTreeSet::new();
        let mut held: Vec<Option<(u64, u32)>> = vec![None; 300];
        let mut seq = 0;
        for round in 0..40_000 {
            let slot = rng.random_range(0..300u32);
            // Few distinct keys, so ties are common.
            let key = rng.random_range(0..20u64);
            seq += 1;
            match (held[slot as usize], rng.random_range(0..6)) {
                (None, _) => {
                    index.insert(slot, key, seq);
                    model.insert((key, seq, slot));
                    held[slot as usize] = Some((key, seq));
                }
                (Some((k, s)), 0) => {
                    index.remove(slot);
                    model.remove(&(k, s, slot));
                    held[slot as usize] = None;
                }
                (Some((k, s)), 1) => {
                    // Key changes keep the sequence number, as a load
                    // update does.
                    index.set(slot, key, s);
                    model.remove(&(k, s, slot));
                    model.insert((key, s, slot));
                    held[slot as usize] = Some((key, s));
                }
                (Some((k, s)), 2) => {
                    index.set(slot, k, seq);
                    model.remove(&(k, s, slot));
                    model.insert((k, seq, slot));
                    held[slot as usize] = Some((k, seq));
                }
                (Some((k, s)), 3) => {
                    let by = rng.random_range(0..3);
                    index.raise(slot, by, seq);
                    model.remove(&(k, s, slot));
                    model.insert((k + by, seq, slot));
                    held[slot as usize] = Some((k + by, seq));
                }
                _ => {
                    // A selection: the first PE, raised by a little or
                    // not at all.
                    let &(k, s, first) = model.first().expect("one held");
                    let by = rng.random_range(0..2);
                    index.raise(first, by, seq);
                    model.remove(&(k, s, first));
                    model.insert((k + by, seq, first));
                    held[first as usize] = Some((k + by, seq));
                }
            }
            assert_eq!(index.len(), model.len());
            for (slot, entry) in held.iter().enumerate() {
                if let Some((k, _)) = entry {
                    assert_eq!(index.key(slot as u32), *k);
                }
            }
            if round % 7 == 0 {
                let n = rng.random_range(0..40);
                let mut got = Vec::new();
                index.first(n, &mut got);
                let want: Vec<u32> = model.iter().take(n).map(|e| e.2).collect();
                assert_eq!(got, want, "round {round}");
            }
        }
        assert!(index.front_ticket < 1_000_000, "the tickets wrapped");
    }

    /// Selections of a degrading pool leave the heap alone once every PE
    /// has been selected: each goes on the queue's end (but for the heap's
    /// last, which has no children to sink below).
    #[test]
    fn selections_in_turn_go_on_the_queue() {
        let mut index = OrderIndex::default();
        for slot in 0..100 {
            index.insert(slot, u64::from(slot), slot);
        }
        for seq in 100..1_100 {
            let mut first = Vec::new();
            index.first(1, &mut first);
            index.raise(first[0], 1_000, seq);
        }
        assert!(index.len <= 1, "{} in the heap", index.len);
        assert_eq!(index.len + index.queued, 100);
        assert!(index.queue.len() <= 2 * 100 + COMPACT_FROM);
    }
}
