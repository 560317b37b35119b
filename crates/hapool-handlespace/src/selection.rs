//! What each selection policy means: how it orders or weighs a pool's PEs,
//! and what selecting a PE changes (RFC 5356 and rsplib's extensions).
//!
//! Two kinds of policy:
//! - *ordered* policies pick the PEs with the smallest key; ties go to the
//!   PE that was selected (or added) longest ago, since selecting a PE gives
//!   it a fresh sequence number. Round Robin is all ties.
//! - *weighted* policies draw PEs at random with a probability proportional
//!   to a weight.
//!
//! | policy | kind | key or weight |
//! |---|---|---|
//! | RR | ordered | none: sequence only |
//! | WRR | ordered | virtual time: each selection advances it by 1/weight |
//! | PRI | ordered | highest priority first |
//! | LU | ordered | load |
//! | LUD | ordered | load + accumulated degradation |
//! | PLU | ordered | load + load degradation |
//! | PLUD | ordered | load + load degradation + accumulated degradation |
//! | LU-DPF | ordered | load + distance × load DPF |
//! | LUD-DPF | ordered | load + accumulated degradation + distance × load DPF |
//! | PLU-DPF | ordered | load + load degradation + distance × load DPF |
//! | PLUD-DPF | ordered | load + load degradation + accumulated + distance × load DPF |
//! | RAND | weighted | 1 |
//! | WRAND | weighted | weight |
//! | WRAND-DPF | weighted | weight × (1 − distance × weight DPF) |
//! | RLU | weighted | unused capacity: 2³² − 1 − load |
//! | RPLU | weighted | 2³² − 1 − (load + load degradation) |
//! | RLUD | weighted | 2³² − 1 − (load + accumulated degradation) |
//! | RPLUD | weighted | 2³² − 1 − (load + load degradation + accumulated) |
//!
//! "Accumulated degradation" grows by the PE's load degradation each time
//! the PE is selected and returns to zero when the PE re-registers. Every
//! weight is at least 1, so no PE is starved completely. Unknown policy
//! types behave as Round Robin.

use hapool_wire::Policy;

/// Fixed-point scale of WRR virtual time: one unit of work at weight 1.
pub(crate) const VIRTUAL_TIME_UNIT: u64 = 1 << 32;

/// How a policy chooses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Smallest key first.
    Ordered,
    /// Random, proportional to weight.
    Weighted,
}

/// The selection state of one PE that is not part of its registration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SelectionState {
    /// Accumulated load degradation since the last registration.
    pub(crate) degradation: u32,
    /// WRR virtual time.
    pub(crate) virtual_time: u64,
    /// What a selection adds, from the policy (see [`step`]).
    pub(crate) step: Step,
}

/// What selecting a PE adds to its selection state: its policy's load
/// degradation to the accumulated degradation, or a WRR PE's share of
/// virtual time. Taken from the policy whenever the policy is set, so a
/// selection reads the selection state alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Step {
    /// Selection changes nothing (beyond the sequence number).
    #[default]
    Nothing,
    /// Adds to the accumulated degradation (saturating).
    Degradation(u32),
    /// Adds to the virtual time.
    VirtualTime(u64),
}

/// What selecting a PE of `policy` adds (see [`Step`]).
pub(crate) fn step(policy: &Policy) -> Step {
    match *policy {
        Policy::LeastUsedDegradation { degradation, .. }
        | Policy::PriorityLeastUsedDegradation { degradation, .. }
        | Policy::RandomizedLeastUsedDegradation { degradation, .. }
        | Policy::RandomizedPriorityLeastUsedDegradation { degradation, .. }
        | Policy::LeastUsedDegradationDpf { degradation, .. }
        | Policy::PriorityLeastUsedDegradationDpf { degradation, .. } => {
            Step::Degradation(degradation)
        }
        Policy::WeightedRoundRobin { weight } => {
            Step::VirtualTime(VIRTUAL_TIME_UNIT / u64::from(weight.max(1)))
        }
        _ => Step::Nothing,
    }
}

impl SelectionState {
    /// The state of a PE whose policy is `policy`, never selected.
    pub(crate) fn new(policy: &Policy) -> Self {
        Self {
            step: step(policy),
            ..Self::default()
        }
    }

    /// Counts one selection. Returns how much the PE's key (ordered
    /// policies) or its used capacity (weighted ones) grew: the key and the
    /// weight follow from the policy and this state (see [`key`] and
    /// [`weight`]), and grow by exactly that.
    pub(crate) fn select(&mut self) -> u64 {
        match self.step {
            Step::Nothing => 0,
            Step::Degradation(degradation) => {
                let before = self.degradation;
                self.degradation = before.saturating_add(degradation);
                u64::from(self.degradation - before)
            }
            Step::VirtualTime(share) => {
                self.virtual_time += share;
                share
            }
        }
    }
}

pub(crate) fn kind(policy: &Policy) -> Kind {
    match policy {
        Policy::Random
        | Policy::WeightedRandom { .. }
        | Policy::WeightedRandomDpf { .. }
        | Policy::RandomizedLeastUsed { .. }
        | Policy::RandomizedPriorityLeastUsed { .. }
        | Policy::RandomizedLeastUsedDegradation { .. }
        | Policy::RandomizedPriorityLeastUsedDegradation { .. } => Kind::Weighted,
        _ => Kind::Ordered,
    }
}

/// `distance × dpf` in load units, where `dpf` is a fraction of full load
/// per unit of distance.
fn penalty(distance: u32, dpf: u32) -> u64 {
    u64::from(distance) * u64::from(dpf)
}

/// The sort key of an ordered policy (smaller is chosen first).
pub(crate) fn key(policy: &Policy, state: SelectionState) -> u64 {
    let acc = u64::from(state.degradation);
    match *policy {
        Policy::WeightedRoundRobin { .. } => state.virtual_time,
        Policy::Priority { priority } => u64::from(u32::MAX - priority),
        Policy::LeastUsed { load } => u64::from(load),
        Policy::LeastUsedDegradation { load, .. } => u64::from(load) + acc,
        Policy::PriorityLeastUsed { load, degradation } => u64::from(load) + u64::from(degradation),
        Policy::PriorityLeastUsedDegradation { load, degradation } => {
            u64::from(load) + u64::from(degradation) + acc
        }
        Policy::LeastUsedDpf {
            load,
            load_dpf,
            distance,
        } => u64::from(load).saturating_add(penalty(distance, load_dpf)),
        Policy::LeastUsedDegradationDpf {
            load,
            load_dpf,
            distance,
            ..
        } => (u64::from(load) + acc).saturating_add(penalty(distance, load_dpf)),
        Policy::PriorityLeastUsedDpf {
            load,
            degradation,
            load_dpf,
            distance,
        } => (u64::from(load) + u64::from(degradation)).saturating_add(penalty(distance, load_dpf)),
        Policy::PriorityLeastUsedDegradationDpf {
            load,
            degradation,
            load_dpf,
            distance,
        } => (u64::from(load) + u64::from(degradation) + acc)
            .saturating_add(penalty(distance, load_dpf)),
        _ => 0,
    }
}

/// Unused capacity when `used` of the 32-bit load scale is taken, at least 1.
fn capacity(used: u64) -> u64 {
    u64::from(u32::MAX).saturating_sub(used).max(1)
}

/// The weight of a weighted policy (at least 1).
pub(crate) fn weight(policy: &Policy, state: SelectionState) -> u64 {
    let acc = u64::from(state.degradation);
    match *policy {
        Policy::WeightedRandom { weight } => u64::from(weight).max(1),
        Policy::WeightedRandomDpf {
            weight,
            weight_dpf,
            distance,
        } => {
            // weight × (1 − distance × dpf), with dpf a 32-bit fraction.
            let reduction = penalty(distance, weight_dpf).min(u64::from(u32::MAX));
            let kept = u64::from(u32::MAX) - reduction;
            (u64::from(weight) * kept / u64::from(u32::MAX)).max(1)
        }
        Policy::RandomizedLeastUsed { load } => capacity(u64::from(load)),
        Policy::RandomizedPriorityLeastUsed { load, degradation } => {
            capacity(u64::from(load) + u64::from(degradation))
        }
        Policy::RandomizedLeastUsedDegradation { load, .. } => capacity(u64::from(load) + acc),
        Policy::RandomizedPriorityLeastUsedDegradation { load, degradation } => {
            capacity(u64::from(load) + u64::from(degradation) + acc)
        }
        _ => 1,
    }
}

/// Whether selecting a PE of this policy type can change its key or weight
/// (beyond the sequence number that orders equals), whatever its values.
pub(crate) fn changes_on_selection(policy: &Policy) -> bool {
    step(policy) != Step::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_prefers_higher() {
        let s = SelectionState::default();
        assert!(
            key(&Policy::Priority { priority: 9 }, s) < key(&Policy::Priority { priority: 1 }, s)
        );
    }

    #[test]
    fn weights_are_never_zero() {
        let s = SelectionState::default();
        for p in [
            Policy::WeightedRandom { weight: 0 },
            Policy::RandomizedLeastUsed { load: u32::MAX },
            Policy::WeightedRandomDpf {
                weight: 10,
                weight_dpf: u32::MAX,
                distance: 1000,
            },
        ] {
            assert_eq!(weight(&p, s), 1, "{p:?}");
        }
    }

    #[test]
    fn delay_penalty_reduces_weight_and_raises_load() {
        let s = SelectionState::default();
        let near = Policy::WeightedRandomDpf {
            weight: 1000,
            weight_dpf: u32::MAX / 100,
            distance: 10,
        };
        // 10 units at 1 % each: 90 % of the weight is kept.
        assert_eq!(weight(&near, s), 900);
        let far = Policy::LeastUsedDpf {
            load: 0,
            load_dpf: 1000,
            distance: 50,
        };
        assert_eq!(key(&far, s), 50_000);
    }

    /// A selection moves the state only of policies that
    /// `changes_on_selection` names, and grows the key or the used
    /// capacity by what it says.
    #[test]
    fn a_selection_grows_the_key_or_weight_by_what_it_returns() {
        use proptest::strategy::{Strategy, ValueTree};
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        for _ in 0..2_000 {
            let policy = hapool_wire::strategy::policy()
                .new_tree(&mut runner)
                .unwrap()
                .current();
            let mut state = SelectionState::new(&policy);
            let before = state;
            let grown = state.select();
            if state != before {
                assert!(changes_on_selection(&policy), "{policy:?}");
            }
            match kind(&policy) {
                Kind::Ordered => assert_eq!(key(&policy, state), key(&policy, before) + grown),
                Kind::Weighted => assert_eq!(
                    weight(&policy, state),
                    weight(&policy, before).saturating_sub(grown).max(1),
                    "{policy:?}"
                ),
            }
        }
    }

    #[test]
    fn degradation_accumulates() {
        let p = Policy::LeastUsedDegradation {
            load: 100,
            degradation: 10,
        };
        let mut s = SelectionState::new(&p);
        s.select();
        s.select();
        assert_eq!(key(&p, s), 120);
    }
}
