//! Weights by slot in a 16-way tree of sums, for weighted random selection.
//!
//! Each node holds the running sums of its sixteen children, so a draw
//! finds its child by counting the sums at or below its target: sixteen
//! independent comparisons the compiler turns into a few vector
//! instructions, rather than a chain of unpredictable branches. A draw
//! reads one node (two adjacent cache lines) per level; changing a weight
//! rewrites the tail of one node per level. A 100,000-slot tree has five
//! levels, of which only the slot weights themselves are too large to stay
//! in cache. (A binary indexed tree needs seventeen scattered reads for
//! the same draw.)
//!
//! A few draws from many slots skip the tree altogether when the weights
//! are not too uneven: a slot drawn at random is kept with probability
//! weight / bound, where the bound is at least every weight; each slot is
//! then kept in proportion to its weight, and one or two tries read one
//! weight each (see [`WeightTree::sample`]).

/// Children per node.
const FANOUT: usize = 16;

/// Weights by slot, with the sums of every aligned group of 16, 256, ...
#[derive(Clone, Debug, Default)]
pub(crate) struct WeightTree {
    /// Level 0 describes the slots, level `i + 1` the nodes of level `i`;
    /// the last level is one node. Every level is a whole number of
    /// 16-entry nodes, and entry `j` of a node is the sum of the node's
    /// children `0..=j`.
    levels: Vec<Vec<u64>>,
    /// At least every weight: raised by `set`, made exact again by
    /// `sample` when it has grown stale.
    bound: u64,
    /// Weights set since `bound` was last exact.
    sets_since_exact: usize,
}

/// Tries `sample` makes for each slot it is asked for before it gives up.
const TRIES_PER_SLOT: usize = 16;

impl WeightTree {
    /// The sum of all weights.
    pub(crate) fn total(&self) -> u64 {
        self.levels.last().map_or(0, |top| top[FANOUT - 1])
    }

    /// The weight of `slot`.
    pub(crate) fn weight(&self, slot: usize) -> u64 {
        match self.levels.first() {
            Some(leaves) if slot < leaves.len() => {
                let before = if slot % FANOUT == 0 {
                    0
                } else {
                    leaves[slot - 1]
                };
                leaves[slot].wrapping_sub(before)
            }
            _ => 0,
        }
    }

    /// Sets the weight of `slot`, growing the tree as needed.
    pub(crate) fn set(&mut self, slot: usize, weight: u64) {
        if self
            .levels
            .first()
            .is_none_or(|leaves| slot >= leaves.len())
        {
            self.grow(slot + 1);
        }
        let delta = weight.wrapping_sub(self.weight(slot));
        if delta == 0 {
            return;
        }
        self.bound = self.bound.max(weight);
        self.sets_since_exact += 1;
        let mut index = slot;
        for level in &mut self.levels {
            let node_end = (index / FANOUT + 1) * FANOUT;
            for sum in &mut level[index..node_end] {
                *sum = sum.wrapping_add(delta);
            }
            index /= FANOUT;
        }
    }

    /// The slot whose range of cumulative weight holds `target`
    /// (`target < total`): the smallest slot whose prefix sum exceeds it.
    pub(crate) fn find(&self, mut target: u64) -> usize {
        debug_assert!(target < self.total());
        let mut node = 0;
        for level in self.levels.iter().rev() {
            let sums = &level[node * FANOUT..(node + 1) * FANOUT];
            let below: usize = sums.iter().map(|&sum| usize::from(sum <= target)).sum();
            let below = below.min(FANOUT - 1);
            if below > 0 {
                target -= sums[below - 1];
            }
            node = node * FANOUT + below;
        }
        node
    }

    /// Distinct slots below `slots` until `chosen` holds `n`, each drawn with a
    /// probability proportional to its weight, without walking the tree:
    /// a slot drawn uniformly is kept with probability weight / bound
    /// (slots drawn twice are drawn again), which picks each slot in
    /// proportion to its weight. Adds to `chosen` and returns true when
    /// all `n` are found; returns false, having added only some, when the
    /// weights are too uneven for it to pay (fewer than one try in four
    /// would keep a slot) or it gave up after many tries: the caller
    /// draws the rest from the tree. Either way the slots added are
    /// distributed as draws from the tree would be.
    pub(crate) fn sample<R: rand::Rng + ?Sized>(
        &mut self,
        n: usize,
        slots: usize,
        rng: &mut R,
        chosen: &mut Vec<u32>,
    ) -> bool {
        if slots == 0 || !self.sampling_pays(slots) {
            return false;
        }
        let bound = self.bound;
        for _ in 0..n.saturating_mul(TRIES_PER_SLOT) {
            let slot = rng.random_range(0..slots);
            let weight = self.weight(slot);
            let kept = weight == bound || (weight > 0 && rng.random_range(0..bound) < weight);
            if kept && !chosen.contains(&(slot as u32)) {
                chosen.push(slot as u32);
                if chosen.len() == n {
                    return true;
                }
            }
        }
        false
    }

    /// Whether a try of `sample` over `slots` keeps a slot at least one
    /// time in four. A bound grown stale (the largest weights lowered or
    /// gone) is made exact first, at most once per `slots` weights set.
    fn sampling_pays(&mut self, slots: usize) -> bool {
        let pays = |bound: u64, total: u64| {
            total > 0 && u128::from(total) * 4 >= u128::from(bound) * slots as u128
        };
        let total = self.total();
        if pays(self.bound, total) {
            return true;
        }
        if self.sets_since_exact < slots {
            return false;
        }
        self.bound = (0..slots).map(|slot| self.weight(slot)).max().unwrap_or(0);
        self.sets_since_exact = 0;
        pays(self.bound, total)
    }

    /// Rebuilds for at least `len` slots (doubling, so growth is amortised).
    fn grow(&mut self, len: usize) {
        let old = self.levels.first().map_or(0, Vec::len);
        let new_len = len.max(old * 2).next_multiple_of(FANOUT);
        let mut weights: Vec<u64> = (0..old).map(|slot| self.weight(slot)).collect();
        weights.resize(new_len, 0);
        self.levels.clear();
        loop {
            let mut level = weights;
            level.resize(level.len().next_multiple_of(FANOUT), 0);
            let totals: Vec<u64> = level
                .chunks_mut(FANOUT)
                .map(|node| {
                    for j in 1..FANOUT {
                        node[j] += node[j - 1];
                    }
                    node[FANOUT - 1]
                })
                .collect();
            self.levels.push(level);
            if totals.len() == 1 {
                break;
            }
            weights = totals;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(weights: &[u64], target: u64) -> usize {
        let mut acc = 0;
        weights
            .iter()
            .position(|w| {
                acc += w;
                acc > target
            })
            .expect("target below the total")
    }

    #[test]
    fn find_matches_a_linear_scan() {
        let mut tree = WeightTree::default();
        let weights = [3u64, 0, 5, 1, 0, 0, 7, 2, 9, 4, 0, 1];
        for (i, w) in weights.iter().enumerate() {
            tree.set(i, *w);
        }
        assert_eq!(tree.total(), weights.iter().sum::<u64>());
        for target in 0..tree.total() {
            assert_eq!(
                tree.find(target),
                linear(&weights, target),
                "target {target}"
            );
        }
        tree.set(8, 0);
        tree.set(20, 6);
        assert_eq!(tree.total(), weights.iter().sum::<u64>() - 9 + 6);
        assert_eq!(tree.find(tree.total() - 1), 20);
        assert_eq!(tree.weight(20), 6);
    }

    /// Sampling keeps slots in proportion to their weight, declines when
    /// the weights are too uneven, and makes a bound grown stale exact
    /// again.
    #[test]
    fn sampling_follows_the_weights_and_its_bound() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut tree = WeightTree::default();
        for slot in 0..64 {
            tree.set(slot, if slot % 2 == 0 { 1 } else { 3 });
        }
        let mut heavy = 0;
        for _ in 0..40_000 {
            let mut chosen = Vec::new();
            assert!(tree.sample(1, 64, &mut rng, &mut chosen));
            heavy += chosen[0] % 2;
        }
        // Odd slots weigh three times as much: 3/4 of the draws.
        assert!((heavy as f64 / 40_000.0 - 0.75).abs() < 0.01, "{heavy}");
        // One slot far heavier than the rest: a try would rarely keep one.
        tree.set(0, 1_000_000);
        assert!(!tree.sample(1, 64, &mut rng, &mut Vec::new()));
        // Lowered again: the bound (still a million) is made exact once
        // enough weights have been set since it was.
        tree.set(0, 1);
        for slot in 0..64 {
            tree.set(slot, 2);
        }
        assert!(tree.sample(4, 64, &mut rng, &mut Vec::new()));
        assert_eq!(tree.bound, 2);
    }

    /// Several levels deep, with growth in between and zero weights.
    #[test]
    fn deep_tree_matches_a_linear_scan() {
        let mut tree = WeightTree::default();
        let mut weights: Vec<u64> = (0..5_000u64).map(|i| (i * 2_654_435_761) % 7).collect();
        for (i, &w) in weights.iter().enumerate() {
            tree.set(i, w);
        }
        for i in (0..5_000).step_by(3) {
            weights[i] = 0;
            tree.set(i, 0);
        }
        assert_eq!(tree.total(), weights.iter().sum::<u64>());
        for target in (0..tree.total()).step_by(11) {
            assert_eq!(
                tree.find(target),
                linear(&weights, target),
                "target {target}"
            );
        }
    }
}
