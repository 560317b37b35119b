//! The order of an ordered policy's PEs: an indexed 4-ary min-heap of
//! (key, sequence, slot) ranks.
//!
//! Why a heap and not a sorted tree: the common change is a load update,
//! which gives one PE a new key anywhere in the range. In a sorted tree
//! that is a removal and an insertion, each a walk from the root to a leaf
//! through nodes a large pool does not keep in cache. In a heap the PE
//! moves from where it is by a level or two on average (most entries live
//! near the bottom), and the first N in order are read from the top, which
//! stays in cache. Each slot's place in the heap is kept, so a PE is found
//! without a search.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Children per heap node: the four ranks of a node's children fill one
/// cache line, and the heap is half as deep as a binary one.
const ARITY: usize = 4;

/// Up to this many entries, `first` scans its few candidates instead of
/// keeping them in a heap of their own.
const SCAN_UP_TO: usize = 8;

/// `position` of a slot that is not in the heap.
const ABSENT: u32 = u32::MAX;

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
    /// Where each slot's entry is in the heap, or `ABSENT`.
    position: Vec<u32>,
    /// Scratch for `first`: (rank, heap position) still to be looked at,
    /// scanned for short requests and kept as a heap for long ones.
    scanned: Vec<(u128, u32)>,
    frontier: BinaryHeap<Reverse<(u128, u32)>>,
}

impl OrderIndex {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn rank_at(&self, at: usize) -> u128 {
        let p = at + ARITY - 1;
        self.ranks[p / ARITY].0[p % ARITY]
    }

    /// Adds `slot` (not yet held) with its key and sequence number.
    pub(crate) fn insert(&mut self, slot: u32, key: u64, seq: u32) {
        let index = slot as usize;
        if index >= self.position.len() {
            self.position.resize(index + 1, ABSENT);
        }
        debug_assert_eq!(self.position[index], ABSENT, "slot {slot} held twice");
        let at = self.len;
        self.len += 1;
        if self.ranks.len() < groups_for(self.len) {
            self.ranks.push(Siblings::VACANT);
        }
        self.sift_up(at, rank(key, seq, slot));
    }

    /// Takes `slot` out.
    pub(crate) fn remove(&mut self, slot: u32) {
        let at = std::mem::replace(&mut self.position[slot as usize], ABSENT) as usize;
        let last = self.len - 1;
        let last_rank = self.rank_at(last);
        self.set_rank(last, VACANT);
        self.len = last;
        self.ranks.truncate(groups_for(last));
        if at < last {
            self.restore(at, last_rank);
        }
    }

    /// The key `slot` (held) is filed under.
    pub(crate) fn key(&self, slot: u32) -> u64 {
        (self.rank_at(self.position[slot as usize] as usize) >> 64) as u64
    }

    /// Gives `slot` (held) a new key and sequence number; nothing moves
    /// when both are unchanged.
    pub(crate) fn set(&mut self, slot: u32, key: u64, seq: u32) {
        let at = self.position[slot as usize] as usize;
        self.rerank(at, rank(key, seq, slot));
    }

    /// Raises the key of `slot` (held) by `by` and gives it the sequence
    /// number `seq` (a selection), finding it once.
    pub(crate) fn raise(&mut self, slot: u32, by: u64, seq: u32) {
        let at = self.position[slot as usize] as usize;
        let key = (self.rank_at(at) >> 64) as u64 + by;
        self.rerank(at, rank(key, seq, slot));
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

    /// Appends to `out` the slots of the first `n` entries, in order,
    /// reading only the top of the heap: the next in order is always the
    /// root or a child of one already taken.
    pub(crate) fn first(&mut self, n: usize, out: &mut Vec<u32>) {
        let len = self.len();
        if len == 0 || n == 0 {
            return;
        }
        if n <= SCAN_UP_TO {
            self.scanned.clear();
            self.scanned.push((self.rank_at(0), 0));
            for _ in 0..n {
                let Some((least, _)) = self.scanned.iter().enumerate().min_by_key(|(_, c)| c.0)
                else {
                    break;
                };
                let (_, at) = self.scanned.swap_remove(least);
                out.push(slot_of(self.rank_at(at as usize)));
                let children = at as usize * ARITY + 1;
                for child in children..(children + ARITY).min(len) {
                    self.scanned.push((self.rank_at(child), child as u32));
                }
            }
            return;
        }
        self.frontier.clear();
        self.frontier.push(Reverse((self.rank_at(0), 0)));
        let mut taken = 0;
        while let Some(Reverse((_, at))) = self.frontier.pop() {
            out.push(slot_of(self.rank_at(at as usize)));
            taken += 1;
            if taken == n {
                break;
            }
            let children = at as usize * ARITY + 1;
            for child in children..(children + ARITY).min(len) {
                self.frontier
                    .push(Reverse((self.rank_at(child), child as u32)));
            }
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
        let len = self.len();
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

    /// Random inserts, removals, key changes and reads of the first N,
    /// against a sorted set.
    #[test]
    fn matches_a_sorted_set() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut index = OrderIndex::default();
        let mut model: BTreeSet<(u64, u32, u32)> = BTreeSet::new();
        let mut held: Vec<Option<(u64, u32)>> = vec![None; 300];
        let mut seq = 0;
        for round in 0..20_000 {
            let slot = rng.random_range(0..300u32);
            // Few distinct keys, so ties are common.
            let key = rng.random_range(0..20u64);
            seq += 1;
            match (held[slot as usize], rng.random_range(0..3)) {
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
                (Some((k, s)), _) => {
                    index.set(slot, k, seq);
                    model.remove(&(k, s, slot));
                    model.insert((k, seq, slot));
                    held[slot as usize] = Some((k, seq));
                }
            }
            assert_eq!(index.len(), model.len());
            if round % 7 == 0 {
                let n = rng.random_range(0..40);
                let mut got = Vec::new();
                index.first(n, &mut got);
                let want: Vec<u32> = model.iter().take(n).map(|e| e.2).collect();
                assert_eq!(got, want, "round {round}");
            }
        }
    }
}
