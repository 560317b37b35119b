//! One pool: its PEs in a slab with stable slots, and the index its policy
//! selects from.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapool_wire::{ParamType, PolicyType, PoolElement, PoolElementId, PoolHandle, TransportUse};
use rand::Rng;

use crate::order::OrderIndex;
use crate::selection::{self, Kind, SelectionState};
use crate::weights::WeightTree;

/// WRR virtual times are moved back once the pool's passes this: far
/// below where they would run out (`u64::MAX`).
const VIRTUAL_TIME_REBASE: u64 = 1 << 63;

/// A connection to the registrar, as the driver numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Who registered a PE at this registrar: the connection it came on and,
/// when the connection is authenticated (TLS client certificate, token),
/// the identity behind it. Only the same connection or the same identity
/// may update or deregister the PE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registrant {
    /// The connection the registration arrived on.
    pub connection: ConnectionId,
    /// The authenticated identity, if any.
    pub identity: Option<Arc<str>>,
}

impl Registrant {
    /// Whether `other` speaks for the same owner.
    pub fn same_owner(&self, other: &Self) -> bool {
        self.connection == other.connection
            || (self.identity.is_some() && self.identity == other.identity)
    }
}

/// A PE as the handlespace holds it.
///
/// Laid out by hand, one entry per 64-byte boundary: what a selection
/// reads and writes comes first, in the entry's first cache line: the
/// sequence number, the selection state, and the registrant, whose option
/// tag also tells a slot in use from a free one. Selecting from a large
/// pool, whose PEs are mostly out of cache, then costs one line per PE
/// rather than three.
#[derive(Clone, Debug)]
#[repr(C, align(64))]
pub struct PeEntry {
    /// Order among equals: a fresh number of the pool's on addition and on
    /// each selection.
    pub(crate) seq: u32,
    pub(crate) selection: SelectionState,
    registrant: Option<Registrant>,
    element: PoolElement,
    /// Distinct reporters of unreachability and when they last reported.
    pub(crate) bad_reports: Vec<(u64, Instant)>,
    last_confirmed: Instant,
    /// The time the PE is filed under in the handlespace's expiry index
    /// (at or before `expires_at`), if it is filed.
    pub(crate) scheduled: Option<Instant>,
}

impl PeEntry {
    pub(crate) fn new(element: PoolElement, registrant: Option<Registrant>, now: Instant) -> Self {
        Self {
            selection: SelectionState::new(&element.policy),
            element,
            registrant,
            last_confirmed: now,
            seq: 0,
            bad_reports: Vec::new(),
            scheduled: None,
        }
    }

    /// The PE as registered (home registrar, transport, policy values).
    pub fn element(&self) -> &PoolElement {
        &self.element
    }

    /// Who registered it here; `None` when it was learned from a peer
    /// registrar.
    pub fn registrant(&self) -> Option<&Registrant> {
        self.registrant.as_ref()
    }

    /// When the registration was last made, renewed or confirmed.
    pub fn last_confirmed(&self) -> Instant {
        self.last_confirmed
    }

    /// When the registration runs out unless renewed.
    pub fn expires_at(&self) -> Instant {
        let life = Duration::from_millis(u64::from(self.element.registration_life));
        self.last_confirmed
            .checked_add(life)
            .unwrap_or(self.last_confirmed + Duration::from_secs(86_400 * 365))
    }

    /// Load degradation accumulated by selections since the last registration.
    pub fn accumulated_degradation(&self) -> u32 {
        self.selection.degradation
    }

    /// Gives the PE a new home registrar at `now` (a takeover): whoever
    /// registered it at the old home no longer owns it, and its
    /// registration life starts again.
    pub(crate) fn rehome(&mut self, home: hapool_wire::RegistrarId, now: Instant) {
        self.element.home_registrar = home;
        self.registrant = None;
        self.last_confirmed = now;
    }

    /// Replaces the registration (a re-registration): selection history
    /// that depends on the old values starts again. `registrant` is
    /// `Some(new)` to replace the owner, `None` to keep it.
    pub(crate) fn update(
        &mut self,
        element: PoolElement,
        registrant: Option<Option<Registrant>>,
        now: Instant,
    ) {
        self.selection.step = selection::step(&element.policy);
        self.element = element;
        if let Some(registrant) = registrant {
            self.registrant = registrant;
        }
        self.last_confirmed = now;
        self.selection.degradation = 0;
        self.bad_reports.clear();
    }

    pub(crate) fn confirm(&mut self, now: Instant) {
        self.last_confirmed = now;
    }
}

/// A pool: the PEs under one pool handle, which share a policy type and a
/// transport kind (fixed by the first PE).
#[derive(Debug)]
pub struct Pool {
    handle: PoolHandle,
    pub(crate) handle_sum: u64,
    policy_type: PolicyType,
    kind: Kind,
    transport: (ParamType, TransportUse),
    slots: Vec<Option<PeEntry>>,
    free: Vec<u32>,
    by_id: HashMap<PoolElementId, u32>,
    /// Ordered policies: slots by (key, seq), smallest first.
    ordered: OrderIndex,
    /// Weighted policies: weight by slot.
    weighted: WeightTree,
    /// WRR: virtual time of the latest selection; newcomers start there.
    virtual_time: u64,
    /// The sequence number the next addition or selection gets.
    next_seq: u32,
    /// Whether selecting a PE can change its key or weight (the policy
    /// type degrades or advances virtual time).
    changes_on_selection: bool,
}

impl Pool {
    pub(crate) fn new(handle: PoolHandle, first: &PoolElement) -> Self {
        Self {
            handle_sum: crate::checksum::handle_sum(handle.as_bytes()),
            handle,
            policy_type: first.policy.policy_type(),
            kind: selection::kind(&first.policy),
            transport: (
                first.user_transport.param_type(),
                first.user_transport.transport_use(),
            ),
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            ordered: OrderIndex::default(),
            weighted: WeightTree::default(),
            virtual_time: 0,
            next_seq: 0,
            changes_on_selection: selection::changes_on_selection(&first.policy),
        }
    }

    /// The pool handle.
    pub fn handle(&self) -> &PoolHandle {
        &self.handle
    }

    /// The policy type every PE of the pool uses.
    pub fn policy_type(&self) -> PolicyType {
        self.policy_type
    }

    /// The transport type and use every PE of the pool has.
    pub fn transport(&self) -> (ParamType, TransportUse) {
        self.transport
    }

    /// The number of PEs.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the pool has no PE (an empty pool is removed at once).
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The PE with this identifier.
    pub fn get(&self, id: PoolElementId) -> Option<&PeEntry> {
        self.slot_of(id).map(|slot| self.entry(slot))
    }

    /// Every PE, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &PeEntry> {
        self.slots.iter().flatten()
    }

    /// The slots in use.
    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }

    pub(crate) fn slot_of(&self, id: PoolElementId) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    pub(crate) fn entry(&self, slot: u32) -> &PeEntry {
        self.slots[slot as usize].as_ref().expect("slot in use")
    }

    /// Where the entry at `slot` is filed for expiry (the selection index
    /// does not depend on it).
    pub(crate) fn scheduled_mut(&mut self, slot: u32) -> &mut Option<Instant> {
        &mut self.slots[slot as usize]
            .as_mut()
            .expect("slot in use")
            .scheduled
    }

    /// Changes the entry at `slot` with `f`, keeping the selection index
    /// in step with whatever `f` changes.
    pub(crate) fn modify<T>(&mut self, slot: u32, f: impl FnOnce(&mut PeEntry) -> T) -> T {
        let entry = self.slots[slot as usize].as_mut().expect("slot in use");
        let result = f(entry);
        self.reindex(slot);
        result
    }

    /// A fresh sequence number. Before the numbers run out, the PEs are
    /// numbered again from zero in the order they have (once in four
    /// billion additions and selections), so the order among equals holds.
    fn take_seq(&mut self) -> u32 {
        if self.next_seq == u32::MAX {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn renumber(&mut self) {
        let mut by_seq: Vec<(u32, u32)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, entry)| Some((entry.as_ref()?.seq, slot as u32)))
            .collect();
        by_seq.sort_unstable();
        for (seq, &(_, slot)) in by_seq.iter().enumerate() {
            // A smaller number in the same order: every PE stays where it is.
            self.modify(slot, |entry| entry.seq = seq as u32);
        }
        self.next_seq = by_seq.len() as u32;
    }

    /// Moves every WRR PE's virtual time back by the least of them, once
    /// the pool's passes `VIRTUAL_TIME_REBASE` (after some four billion
    /// selections of weight 1 per PE): the order stays, and the times
    /// never run out.
    fn rebase_virtual_time(&mut self) {
        let Some(least) = self
            .slots
            .iter()
            .flatten()
            .map(|entry| entry.selection.virtual_time)
            .min()
        else {
            return;
        };
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].is_some() {
                self.modify(slot, |entry| entry.selection.virtual_time -= least);
            }
        }
        self.virtual_time -= least;
    }

    /// Adds a PE (whose id is not in the pool yet) and returns its slot.
    pub(crate) fn insert(&mut self, mut entry: PeEntry) -> u32 {
        entry.seq = self.take_seq();
        entry.selection.virtual_time = self.virtual_time;
        let id = entry.element.id;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                (self.slots.len() - 1) as u32
            }
        };
        self.by_id.insert(id, slot);
        self.index(slot);
        slot
    }

    /// Removes the PE at `slot`.
    pub(crate) fn remove(&mut self, slot: u32) -> PeEntry {
        self.unindex(slot);
        let entry = self.slots[slot as usize].take().expect("slot in use");
        self.by_id.remove(&entry.element.id);
        self.free.push(slot);
        entry
    }

    fn index(&mut self, slot: u32) {
        let entry = self.entry(slot);
        match self.kind {
            Kind::Ordered => {
                let key = selection::key(&entry.element.policy, entry.selection);
                self.ordered.insert(slot, key, entry.seq);
            }
            Kind::Weighted => {
                let weight = selection::weight(&entry.element.policy, entry.selection);
                self.weighted.set(slot as usize, weight);
            }
        }
    }

    /// Brings the index in step with a changed entry; an entry whose key
    /// or weight did not change stays where it is.
    fn reindex(&mut self, slot: u32) {
        let entry = self.entry(slot);
        match self.kind {
            Kind::Ordered => {
                let key = selection::key(&entry.element.policy, entry.selection);
                self.ordered.set(slot, key, entry.seq);
            }
            Kind::Weighted => {
                let weight = selection::weight(&entry.element.policy, entry.selection);
                self.weighted.set(slot as usize, weight);
            }
        }
    }

    /// Whether the index holds the key or weight that the PE's policy and
    /// selection state give.
    fn indexed_as_policy_says(&self, slot: u32) -> bool {
        let entry = self.entry(slot);
        match self.kind {
            Kind::Ordered => {
                self.ordered.key(slot) == selection::key(&entry.element.policy, entry.selection)
            }
            Kind::Weighted => {
                self.weighted.weight(slot as usize)
                    == selection::weight(&entry.element.policy, entry.selection)
            }
        }
    }

    fn unindex(&mut self, slot: u32) {
        match self.kind {
            Kind::Ordered => self.ordered.remove(slot),
            Kind::Weighted => self.weighted.set(slot as usize, 0),
        }
    }

    /// Draws PEs of a weighted pool from the tree until `chosen` holds
    /// `n` (or no weight is left), each with a probability proportional to
    /// its weight.
    fn draw_from_tree<R: Rng + ?Sized>(&mut self, n: usize, rng: &mut R, chosen: &mut Vec<u32>) {
        // Draw with replacement and reject repeats: the same distribution
        // as drawing without replacement, without changing the tree. Once
        // a repeat happens, take the chosen PEs out of the draw instead
        // (small or skewed pools).
        let mut zeroed = false;
        while chosen.len() < n && self.weighted.total() > 0 {
            let target = rng.random_range(0..self.weighted.total());
            let slot = self.weighted.find(target) as u32;
            if chosen.contains(&slot) {
                if !zeroed {
                    for &s in chosen.iter() {
                        self.weighted.set(s as usize, 0);
                    }
                    zeroed = true;
                }
                continue;
            }
            chosen.push(slot);
            if zeroed {
                self.weighted.set(slot as usize, 0);
            }
        }
        if zeroed {
            for &slot in chosen.iter() {
                self.reindex(slot);
            }
        }
    }

    /// Chooses up to `n` distinct PEs by the pool's policy. The first
    /// `increment` of them (all when zero) count as selected: they get a
    /// fresh sequence number and their degradation or virtual time
    /// advances.
    pub(crate) fn select<R: Rng + ?Sized>(
        &mut self,
        n: usize,
        increment: usize,
        rng: &mut R,
    ) -> Vec<u32> {
        let chosen: Vec<u32> = match self.kind {
            Kind::Ordered => {
                let mut chosen = Vec::with_capacity(n.min(self.len()));
                self.ordered.first(n, &mut chosen);
                chosen
            }
            Kind::Weighted => {
                let n = n.min(self.len());
                let mut chosen: Vec<u32> = Vec::with_capacity(n);
                // A few of many: straight from the slots, one weight read
                // per try, when that pays (WeightTree::sample); otherwise,
                // or for the rest, from the tree.
                let sampled = n.saturating_mul(4) <= self.len()
                    && self.weighted.sample(n, self.slots.len(), rng, &mut chosen);
                if !sampled {
                    self.draw_from_tree(n, rng, &mut chosen);
                }
                chosen
            }
        };
        let increment = if increment == 0 {
            chosen.len()
        } else {
            increment.min(chosen.len())
        };
        for &slot in &chosen[..increment] {
            let seq = self.take_seq();
            if self.kind == Kind::Weighted && !self.changes_on_selection {
                // Only the sequence number would change, and a weighted
                // pool never orders by it: the PE is not touched.
                continue;
            }
            // The key or weight grows by what the selection returns, so
            // neither the policy nor the rest of the entry is read: a large
            // pool's PEs are mostly out of cache.
            let entry = self.slots[slot as usize].as_mut().expect("slot in use");
            entry.seq = seq;
            self.virtual_time = self.virtual_time.max(entry.selection.virtual_time);
            let grown = entry.selection.select();
            match self.kind {
                Kind::Ordered => self.ordered.raise(slot, grown, seq),
                Kind::Weighted if grown > 0 => {
                    let weight = self.weighted.weight(slot as usize);
                    self.weighted
                        .set(slot as usize, weight.saturating_sub(grown).max(1));
                }
                Kind::Weighted => {}
            }
            debug_assert!(self.indexed_as_policy_says(slot), "slot {slot}");
        }
        if self.virtual_time >= VIRTUAL_TIME_REBASE {
            self.rebase_virtual_time();
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapool_wire::{Policy, RegistrarId, Transport};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::net::Ipv4Addr;

    fn pool_of(n: u32, policy: Policy) -> Pool {
        let element = |id: u32| PoolElement {
            id: PoolElementId(id),
            home_registrar: RegistrarId(1),
            registration_life: 1_000,
            user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, 80).into()),
            policy: policy.clone(),
            asap_transport: None,
        };
        let mut pool = Pool::new(PoolHandle::from("p"), &element(0));
        for id in 0..n {
            pool.insert(PeEntry::new(element(id), None, Instant::now()));
        }
        pool
    }

    /// Virtual times near the end of their range are moved back, and
    /// the weighted turns go on as before.
    #[test]
    fn virtual_times_move_back_before_they_run_out() {
        let mut rng = SmallRng::seed_from_u64(1);
        let element = |id: u32, weight: u32| PoolElement {
            id: PoolElementId(id),
            home_registrar: RegistrarId(1),
            registration_life: 1_000,
            user_transport: Transport::tcp((Ipv4Addr::LOCALHOST, 80).into()),
            policy: Policy::WeightedRoundRobin { weight },
            asap_transport: None,
        };
        let mut pool = Pool::new(PoolHandle::from("p"), &element(0, 1));
        pool.virtual_time = VIRTUAL_TIME_REBASE - 10 * selection::VIRTUAL_TIME_UNIT;
        for (id, weight) in [(0, 1), (1, 2)] {
            pool.insert(PeEntry::new(element(id, weight), None, Instant::now()));
        }
        let turns: Vec<u32> = (0..60).flat_map(|_| pool.select(1, 0, &mut rng)).collect();
        // Weight 2 gets two turns to weight 1's one, all along.
        for window in turns.chunks(3) {
            let mut window = window.to_vec();
            window.sort_unstable();
            assert_eq!(window, [0, 1, 1], "{turns:?}");
        }
        assert!(pool.virtual_time < VIRTUAL_TIME_REBASE / 2, "moved back");
    }

    /// When the sequence numbers run out they start again, and the order
    /// among equals goes on as if nothing happened: a round robin keeps
    /// its turn, a degrading pool its order.
    #[test]
    fn selections_keep_their_order_when_the_sequence_numbers_start_again() {
        let mut rng = SmallRng::seed_from_u64(1);
        for policy in [
            Policy::RoundRobin,
            Policy::LeastUsedDegradation {
                load: 0,
                degradation: 10,
            },
        ] {
            let mut pool = pool_of(5, policy.clone());
            pool.next_seq = u32::MAX - 7;
            let turns: Vec<u32> = (0..30).flat_map(|_| pool.select(1, 0, &mut rng)).collect();
            let expected: Vec<u32> = (0..30).map(|i| i % 5).collect();
            assert_eq!(turns, expected, "{policy:?}");
            assert!(pool.next_seq < 30, "{policy:?}: renumbered from zero");
        }
    }
}
