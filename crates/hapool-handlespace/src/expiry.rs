//! When registrations run out: an ordered set of (expiry, pool, slot).
//!
//! The handlespace files each PE at or before its expiry: a renewal leaves
//! the entry alone, and the entry is moved when its time comes and the PE
//! turns out renewed (see `Handlespace::schedule`). A moved entry leaves
//! near the front and goes to the back, so both ends of the tree stay in
//! cache even for very large handlespaces. The first entry, found in
//! O(log n), is the earliest time anything can run out.
//!
//! Entries are held as one 128-bit integer each (nanoseconds since a base
//! instant, pool, slot), so the tree's searches compare single integers
//! and a node holds more entries than it would of `Instant` triples.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// One scheduled expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ExpiryEntry {
    /// When the registration runs out.
    pub(crate) at: Instant,
    /// The pool's index.
    pub(crate) pool: u32,
    /// The PE's slot in the pool.
    pub(crate) slot: u32,
}

/// How far before the first expiry it sees the index puts its base, so
/// that an expiry a little earlier than any before needs no rebuild.
const BASE_MARGIN: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub(crate) struct ExpiryIndex {
    /// Every `at` is at or after this; `None` until the first entry.
    base: Option<Instant>,
    entries: BTreeSet<u128>,
}

impl ExpiryIndex {
    pub(crate) fn insert(&mut self, entry: ExpiryEntry) {
        if self.base.is_none_or(|base| entry.at < base) {
            self.rebase(entry.at);
        }
        let key = self.key(entry);
        self.entries.insert(key);
    }

    pub(crate) fn remove(&mut self, entry: ExpiryEntry) {
        let removed =
            self.base.is_some_and(|base| entry.at >= base) && self.entries.remove(&self.key(entry));
        debug_assert!(removed, "expiry index out of step: {entry:?}");
    }

    /// The earliest expiry.
    pub(crate) fn first(&self) -> Option<ExpiryEntry> {
        let (&key, base) = (self.entries.first()?, self.base?);
        Some(ExpiryEntry {
            at: base + Duration::from_nanos((key >> 64) as u64),
            pool: (key >> 32) as u32,
            slot: key as u32,
        })
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn key(&self, entry: ExpiryEntry) -> u128 {
        let base = self.base.expect("a base once an entry is added");
        // Nanoseconds in 64 bits last 584 years past the base.
        let nanos = u64::try_from(entry.at.duration_since(base).as_nanos()).unwrap_or(u64::MAX);
        (u128::from(nanos) << 64) | (u128::from(entry.pool) << 32) | u128::from(entry.slot)
    }

    /// Moves the base to before `earliest`, re-keying what is held.
    fn rebase(&mut self, earliest: Instant) {
        let held: Vec<ExpiryEntry> = std::iter::from_fn(|| {
            let first = self.first()?;
            self.entries.pop_first();
            Some(first)
        })
        .collect();
        self.base = Some(earliest.checked_sub(BASE_MARGIN).unwrap_or(earliest));
        self.entries = held.into_iter().map(|entry| self.key(entry)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_then_pool_then_slot_across_rebases() {
        let mut index = ExpiryIndex::default();
        let t = Instant::now() + Duration::from_secs(7200);
        let at = |ms: u64| t + Duration::from_millis(ms);
        let entry = |ms, pool, slot| ExpiryEntry {
            at: at(ms),
            pool,
            slot,
        };
        index.insert(entry(500, 1, 2));
        index.insert(entry(500, 0, 9));
        index.insert(entry(100, 3, 3));
        // Before the base: the index re-keys what it holds.
        let early = ExpiryEntry {
            at: t - Duration::from_secs(5000),
            pool: 4,
            slot: 4,
        };
        index.insert(early);
        assert_eq!(index.first(), Some(early));
        index.remove(early);
        assert_eq!(index.first(), Some(entry(100, 3, 3)));
        index.remove(entry(100, 3, 3));
        assert_eq!(index.first(), Some(entry(500, 0, 9)));
        index.remove(entry(500, 0, 9));
        assert_eq!(index.first(), Some(entry(500, 1, 2)));
        assert_eq!(index.len(), 1);
    }
}
