//! When registrations run out: an ordered set of (expiry, pool, slot).
//!
//! A renewal removes the PE's old entry and inserts the new one. PEs renew
//! in roughly the order they expire, so the old entry is usually near the
//! front and the new one goes to the back: both ends of the tree stay in
//! cache even for very large handlespaces. The next expiry is the first
//! entry, found in O(log n).

use std::collections::BTreeSet;
use std::time::Instant;

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

#[derive(Debug, Default)]
pub(crate) struct ExpiryIndex {
    entries: BTreeSet<ExpiryEntry>,
}

impl ExpiryIndex {
    pub(crate) fn insert(&mut self, entry: ExpiryEntry) {
        self.entries.insert(entry);
    }

    pub(crate) fn remove(&mut self, entry: ExpiryEntry) {
        let removed = self.entries.remove(&entry);
        debug_assert!(removed, "expiry index out of step: {entry:?}");
    }

    /// The earliest expiry.
    pub(crate) fn first(&self) -> Option<ExpiryEntry> {
        self.entries.first().copied()
    }

    /// Entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
