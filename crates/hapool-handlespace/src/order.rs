//! The order of an ordered policy's PEs: an indexed 4-ary min-heap of
//! (key, sequence, slot).
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

/// Children per heap node: four 24-byte entries span about a cache line
/// and a half, and the heap is half as deep as a binary one.
const ARITY: usize = 4;

/// Up to this many entries, `first` scans its few candidates instead of
/// keeping them in a heap of their own.
const SCAN_UP_TO: usize = 8;

/// `position` of a slot that is not in the heap.
const ABSENT: u32 = u32::MAX;

/// One PE's place in the order.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u64,
    seq: u64,
    slot: u32,
}

impl Entry {
    /// Key, then sequence number, as one integer: entries compare by it
    /// alone, since sequence numbers are unique.
    fn rank(&self) -> u128 {
        (u128::from(self.key) << 64) | u128::from(self.seq)
    }
}

/// Slots ordered by (key, sequence), smallest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct OrderIndex {
    heap: Vec<Entry>,
    /// Where each slot's entry is in `heap`, or `ABSENT`.
    position: Vec<u32>,
    /// Scratch for `first`: (rank, heap position) still to be looked at,
    /// scanned for short requests and kept as a heap for long ones.
    scanned: Vec<(u128, u32)>,
    frontier: BinaryHeap<Reverse<(u128, u32)>>,
}

impl OrderIndex {
    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Adds `slot` (not yet held) with its key and sequence number.
    pub(crate) fn insert(&mut self, slot: u32, key: u64, seq: u64) {
        let index = slot as usize;
        if index >= self.position.len() {
            self.position.resize(index + 1, ABSENT);
        }
        debug_assert_eq!(self.position[index], ABSENT, "slot {slot} held twice");
        self.heap.push(Entry { key, seq, slot });
        self.sift_up(self.heap.len() - 1);
    }

    /// The key `slot` (held) is filed under.
    pub(crate) fn key(&self, slot: u32) -> u64 {
        self.heap[self.position[slot as usize] as usize].key
    }

    /// Takes `slot` out.
    pub(crate) fn remove(&mut self, slot: u32) {
        let at = std::mem::replace(&mut self.position[slot as usize], ABSENT) as usize;
        let last = self.heap.pop().expect("a held slot");
        if at < self.heap.len() {
            self.heap[at] = last;
            self.restore(at);
        }
    }

    /// Gives `slot` (held) a new key and sequence number; nothing moves
    /// when both are unchanged.
    pub(crate) fn set(&mut self, slot: u32, key: u64, seq: u64) {
        let at = self.position[slot as usize] as usize;
        let old = self.heap[at].rank();
        let new = Entry { key, seq, slot };
        if new.rank() == old {
            return;
        }
        self.heap[at] = new;
        if new.rank() < old {
            self.sift_up(at);
        } else {
            self.sift_down(at);
        }
    }

    /// Appends to `out` the slots of the first `n` entries, in order,
    /// reading only the top of the heap: the next in order is always the
    /// root or a child of one already taken.
    pub(crate) fn first(&mut self, n: usize, out: &mut Vec<u32>) {
        let Some(root) = self.heap.first() else {
            return;
        };
        if n == 0 {
            return;
        }
        if n <= SCAN_UP_TO {
            self.scanned.clear();
            self.scanned.push((root.rank(), 0));
            for _ in 0..n {
                let Some((least, _)) = self.scanned.iter().enumerate().min_by_key(|(_, c)| c.0)
                else {
                    break;
                };
                let (_, at) = self.scanned.swap_remove(least);
                out.push(self.heap[at as usize].slot);
                let children = at as usize * ARITY + 1;
                for child in children..(children + ARITY).min(self.heap.len()) {
                    self.scanned.push((self.heap[child].rank(), child as u32));
                }
            }
            return;
        }
        self.frontier.clear();
        self.frontier.push(Reverse((root.rank(), 0)));
        let mut taken = 0;
        while let Some(Reverse((_, at))) = self.frontier.pop() {
            out.push(self.heap[at as usize].slot);
            taken += 1;
            if taken == n {
                break;
            }
            let children = at as usize * ARITY + 1;
            for child in children..(children + ARITY).min(self.heap.len()) {
                self.frontier
                    .push(Reverse((self.heap[child].rank(), child as u32)));
            }
        }
    }

    /// Moves the entry at `at` up or down until the heap is in order again.
    fn restore(&mut self, at: usize) {
        if at > 0 && self.heap[at].rank() < self.heap[(at - 1) / ARITY].rank() {
            self.sift_up(at);
        } else {
            self.sift_down(at);
        }
    }

    fn sift_up(&mut self, mut at: usize) {
        let entry = self.heap[at];
        let rank = entry.rank();
        while at > 0 {
            let parent = (at - 1) / ARITY;
            if self.heap[parent].rank() <= rank {
                break;
            }
            self.place(at, self.heap[parent]);
            at = parent;
        }
        self.place(at, entry);
    }

    fn sift_down(&mut self, mut at: usize) {
        let entry = self.heap[at];
        let rank = entry.rank();
        let len = self.heap.len();
        loop {
            let first = at * ARITY + 1;
            if first >= len {
                break;
            }
            let mut least = first;
            let mut least_rank = self.heap[first].rank();
            for child in first + 1..(first + ARITY).min(len) {
                let child_rank = self.heap[child].rank();
                if child_rank < least_rank {
                    least = child;
                    least_rank = child_rank;
                }
            }
            if least_rank >= rank {
                break;
            }
            self.place(at, self.heap[least]);
            at = least;
        }
        self.place(at, entry);
    }

    fn place(&mut self, at: usize, entry: Entry) {
        self.heap[at] = entry;
        self.position[entry.slot as usize] = at as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeSet;

    /// Random inserts, removals, key changes and reads of the first N,
    /// against a sorted set.
    #[test]
    fn matches_a_sorted_set() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut index = OrderIndex::default();
        let mut model: BTreeSet<(u64, u64, u32)> = BTreeSet::new();
        let mut held: Vec<Option<(u64, u64)>> = vec![None; 300];
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
