//! A Fenwick (binary indexed) tree of weights, for weighted random
//! selection in O(log n).

/// Weights by slot, with prefix sums.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fenwick {
    /// `tree[i]` holds the sum of a power-of-two range ending at slot `i`.
    tree: Vec<u64>,
    /// The weight of each slot.
    weights: Vec<u64>,
    total: u64,
}

impl Fenwick {
    /// The sum of all weights.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// The weight of `slot`.
    #[cfg(test)]
    pub(crate) fn weight(&self, slot: usize) -> u64 {
        self.weights.get(slot).copied().unwrap_or(0)
    }

    /// Sets the weight of `slot`, growing the tree as needed.
    pub(crate) fn set(&mut self, slot: usize, weight: u64) {
        if slot >= self.weights.len() {
            self.grow(slot + 1);
        }
        let old = self.weights[slot];
        self.weights[slot] = weight;
        self.total = self.total - old + weight;
        let mut i = slot + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] = self.tree[i - 1] - old + weight;
            i += i & i.wrapping_neg();
        }
    }

    /// The slot whose range of cumulative weight holds `target`
    /// (`target < total`): the smallest slot whose prefix sum exceeds it.
    pub(crate) fn find(&self, mut target: u64) -> usize {
        debug_assert!(target < self.total);
        let mut pos = 0;
        let mut step = self.tree.len().next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= self.tree.len() && self.tree[next - 1] <= target {
                target -= self.tree[next - 1];
                pos = next;
            }
            step >>= 1;
        }
        pos
    }

    /// Rebuilds for at least `len` slots (doubling, so growth is amortised).
    fn grow(&mut self, len: usize) {
        let new_len = len.max(self.weights.len() * 2).max(8);
        self.weights.resize(new_len, 0);
        self.tree = self.weights.clone();
        for i in 1..=new_len {
            let parent = i + (i & i.wrapping_neg());
            if parent <= new_len {
                self.tree[parent - 1] += self.tree[i - 1];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_matches_a_linear_scan() {
        let mut f = Fenwick::default();
        let weights = [3u64, 0, 5, 1, 0, 0, 7, 2, 9, 4, 0, 1];
        for (i, w) in weights.iter().enumerate() {
            f.set(i, *w);
        }
        assert_eq!(f.total(), weights.iter().sum::<u64>());
        for target in 0..f.total() {
            let mut acc = 0;
            let expected = weights
                .iter()
                .position(|w| {
                    acc += w;
                    acc > target
                })
                .unwrap();
            assert_eq!(f.find(target), expected, "target {target}");
        }
        f.set(8, 0);
        f.set(20, 6);
        assert_eq!(f.total(), weights.iter().sum::<u64>() - 9 + 6);
        assert_eq!(f.find(f.total() - 1), 20);
        assert_eq!(f.weight(20), 6);
    }
}
