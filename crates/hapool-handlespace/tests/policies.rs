//! Every selection policy: deterministic cases (order, ties, equal loads,
//! degradation accumulating and resetting, priorities) and statistical
//! cases over 100,000 draws, with the tolerance each states.

mod common;

use std::collections::HashMap;

use common::*;
use hapool_handlespace::{Handlespace, HandlespaceConfig};
use hapool_wire::Policy;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x4A50_00F1)
}

fn resolve(hs: &mut Handlespace, items: u32, rng: &mut StdRng) -> Vec<u32> {
    ids(&hs.resolve(&handle(), Some(items), rng).unwrap())
}

#[test]
fn round_robin_moves_the_window_by_max_increment() {
    let (mut hs, _) = pool_of(&vec![Policy::RoundRobin; 4], HandlespaceConfig::default());
    let mut r = rng();
    assert_eq!(resolve(&mut hs, 1, &mut r), [1]);
    assert_eq!(resolve(&mut hs, 1, &mut r), [2]);
    // Three items, one counted as selected: the window moves by one.
    assert_eq!(resolve(&mut hs, 3, &mut r), [3, 4, 1]);
    assert_eq!(resolve(&mut hs, 3, &mut r), [4, 1, 2]);
    // With max_increment 0 every returned PE counts.
    let config = HandlespaceConfig {
        max_increment: 0,
        ..HandlespaceConfig::default()
    };
    let (mut hs, _) = pool_of(&vec![Policy::RoundRobin; 4], config);
    assert_eq!(resolve(&mut hs, 3, &mut r), [1, 2, 3]);
    assert_eq!(resolve(&mut hs, 3, &mut r), [4, 1, 2]);
}

#[test]
fn items_default_and_cap() {
    let config = HandlespaceConfig {
        max_items: 5,
        ..HandlespaceConfig::default()
    };
    let (mut hs, _) = pool_of(&vec![Policy::RoundRobin; 8], config);
    let mut r = rng();
    assert_eq!(hs.resolve(&handle(), None, &mut r).unwrap().len(), 3);
    assert_eq!(hs.resolve(&handle(), Some(0), &mut r).unwrap().len(), 3);
    assert_eq!(
        hs.resolve(&handle(), Some(u32::MAX), &mut r).unwrap().len(),
        5
    );
    assert_eq!(hs.resolve(&handle(), Some(2), &mut r).unwrap().len(), 2);
}

#[test]
fn weighted_round_robin_honours_weights_exactly() {
    let (mut hs, _) = pool_of(
        &[
            Policy::WeightedRoundRobin { weight: 3 },
            Policy::WeightedRoundRobin { weight: 1 },
            Policy::WeightedRoundRobin { weight: 4 },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    let mut counts = HashMap::new();
    for _ in 0..8000 {
        *counts.entry(resolve(&mut hs, 1, &mut r)[0]).or_insert(0) += 1;
    }
    assert_eq!(counts[&1], 3000);
    assert_eq!(counts[&2], 1000);
    assert_eq!(counts[&3], 4000);
}

#[test]
fn weighted_round_robin_newcomer_does_not_take_every_turn() {
    let (mut hs, now) = pool_of(
        &vec![Policy::WeightedRoundRobin { weight: 1 }; 2],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    for _ in 0..1000 {
        resolve(&mut hs, 1, &mut r);
    }
    hs.register(
        &handle(),
        pe(3, Policy::WeightedRoundRobin { weight: 1 }),
        conn(3),
        now,
    )
    .unwrap();
    let mut counts = HashMap::new();
    for _ in 0..30 {
        *counts.entry(resolve(&mut hs, 1, &mut r)[0]).or_insert(0) += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
}

#[test]
fn priority_highest_first_ties_rotate() {
    let (mut hs, _) = pool_of(
        &[
            Policy::Priority { priority: 5 },
            Policy::Priority { priority: 9 },
            Policy::Priority { priority: 1 },
            Policy::Priority { priority: 9 },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    assert_eq!(resolve(&mut hs, 4, &mut r), [2, 4, 1, 3]);
    assert_eq!(resolve(&mut hs, 1, &mut r), [4]);
    assert_eq!(resolve(&mut hs, 1, &mut r), [2]);
}

#[test]
fn least_used_lightest_first_equal_loads_rotate() {
    let (mut hs, now) = pool_of(
        &[
            Policy::LeastUsed { load: pct(30) },
            Policy::LeastUsed { load: pct(10) },
            Policy::LeastUsed { load: pct(20) },
            Policy::LeastUsed { load: pct(10) },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    assert_eq!(resolve(&mut hs, 4, &mut r), [2, 4, 3, 1]);
    assert_eq!(resolve(&mut hs, 1, &mut r), [4]);
    assert_eq!(resolve(&mut hs, 1, &mut r), [2]);
    // A load update re-sorts at once.
    hs.register(
        &handle(),
        pe(1, Policy::LeastUsed { load: 0 }),
        conn(1),
        now,
    )
    .unwrap();
    assert_eq!(resolve(&mut hs, 1, &mut r), [1]);
}

#[test]
fn least_used_with_degradation_accumulates_and_resets() {
    let (mut hs, now) = pool_of(
        &[
            Policy::LeastUsedDegradation {
                load: 100,
                degradation: 10,
            },
            Policy::LeastUsedDegradation {
                load: 125,
                degradation: 10,
            },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    // 100, 110, 120 beat 125; then 130 > 125.
    let picks: Vec<u32> = (0..4).map(|_| resolve(&mut hs, 1, &mut r)[0]).collect();
    assert_eq!(picks, [1, 1, 1, 2]);
    assert_eq!(
        hs.get(&handle(), hapool_wire::PoolElementId(1))
            .unwrap()
            .accumulated_degradation(),
        30
    );
    // Re-registration resets the accumulated degradation.
    hs.register(
        &handle(),
        pe(
            1,
            Policy::LeastUsedDegradation {
                load: 100,
                degradation: 10,
            },
        ),
        conn(1),
        now,
    )
    .unwrap();
    assert_eq!(
        hs.get(&handle(), hapool_wire::PoolElementId(1))
            .unwrap()
            .accumulated_degradation(),
        0
    );
    assert_eq!(resolve(&mut hs, 1, &mut r), [1]);
}

#[test]
fn priority_least_used_adds_degradation_statically() {
    let (mut hs, _) = pool_of(
        &[
            Policy::PriorityLeastUsed {
                load: 10,
                degradation: 10,
            },
            Policy::PriorityLeastUsed {
                load: 15,
                degradation: 0,
            },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    for _ in 0..5 {
        assert_eq!(resolve(&mut hs, 1, &mut r), [2]);
    }
}

#[test]
fn priority_least_used_with_degradation_accumulates() {
    let (mut hs, _) = pool_of(
        &[
            Policy::PriorityLeastUsedDegradation {
                load: 10,
                degradation: 10,
            },
            Policy::PriorityLeastUsedDegradation {
                load: 35,
                degradation: 0,
            },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    // 20, 30 beat 35; then 40 > 35.
    let picks: Vec<u32> = (0..3).map(|_| resolve(&mut hs, 1, &mut r)[0]).collect();
    assert_eq!(picks, [1, 1, 2]);
}

#[test]
fn delay_penalty_factor_policies_count_distance() {
    // Equal loads; the nearer PE wins under LU-DPF.
    let (mut hs, _) = pool_of(
        &[
            Policy::LeastUsedDpf {
                load: 1000,
                load_dpf: 100,
                distance: 50,
            },
            Policy::LeastUsedDpf {
                load: 1000,
                load_dpf: 100,
                distance: 5,
            },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    assert_eq!(resolve(&mut hs, 2, &mut r), [2, 1]);
    for dpf_policy in [
        |d| Policy::LeastUsedDegradationDpf {
            load: 1000,
            degradation: 0,
            load_dpf: 100,
            distance: d,
        },
        |d| Policy::PriorityLeastUsedDpf {
            load: 1000,
            degradation: 7,
            load_dpf: 100,
            distance: d,
        },
        |d| Policy::PriorityLeastUsedDegradationDpf {
            load: 1000,
            degradation: 7,
            load_dpf: 100,
            distance: d,
        },
    ] {
        let (mut hs, _) = pool_of(
            &[dpf_policy(50), dpf_policy(5)],
            HandlespaceConfig::default(),
        );
        assert_eq!(resolve(&mut hs, 2, &mut r), [2, 1]);
    }
}

/// Keys at the top of their range (the largest load, degradation and
/// distance penalty) stay there through selections: they neither overflow
/// nor come round to the front, and PEs there take turns.
#[test]
fn keys_at_the_top_of_their_range_stay_there() {
    let top = Policy::PriorityLeastUsedDegradationDpf {
        load: u32::MAX,
        degradation: u32::MAX,
        load_dpf: u32::MAX,
        distance: u32::MAX,
    };
    let (mut hs, _) = pool_of(&[top.clone(), top], HandlespaceConfig::default());
    let mut r = rng();
    let turns: Vec<u32> = (0..6).flat_map(|_| resolve(&mut hs, 1, &mut r)).collect();
    assert_eq!(turns, [1, 2, 1, 2, 1, 2]);
}

/// Draws one PE 100,000 times and returns each PE's share.
fn shares(policies: &[Policy]) -> Vec<f64> {
    let (mut hs, _) = pool_of(policies, HandlespaceConfig::default());
    let mut r = rng();
    let mut counts = vec![0u32; policies.len()];
    const DRAWS: u32 = 100_000;
    for _ in 0..DRAWS {
        counts[resolve(&mut hs, 1, &mut r)[0] as usize - 1] += 1;
    }
    counts
        .iter()
        .map(|&c| f64::from(c) / f64::from(DRAWS))
        .collect()
}

/// Each share within one percentage point of the expected one (at 100,000
/// draws the standard deviation of a share is at most 0.16 points).
fn assert_shares(got: &[f64], expected: &[f64]) {
    for (g, e) in got.iter().zip(expected) {
        assert!(
            (g - e).abs() < 0.01,
            "shares {got:?}, expected {expected:?}"
        );
    }
}

#[test]
fn random_is_uniform() {
    assert_shares(&shares(&vec![Policy::Random; 4]), &[0.25; 4]);
}

#[test]
fn weighted_random_honours_weights() {
    let got = shares(&[
        Policy::WeightedRandom { weight: 1 },
        Policy::WeightedRandom { weight: 2 },
        Policy::WeightedRandom { weight: 7 },
    ]);
    assert_shares(&got, &[0.1, 0.2, 0.7]);
}

#[test]
fn weighted_random_with_delay_penalty() {
    // Same weight; a 50 % penalty at distance 50 halves the far PE's weight.
    let got = shares(&[
        Policy::WeightedRandomDpf {
            weight: 1000,
            weight_dpf: u32::MAX / 100,
            distance: 50,
        },
        Policy::WeightedRandomDpf {
            weight: 1000,
            weight_dpf: u32::MAX / 100,
            distance: 0,
        },
    ]);
    assert_shares(&got, &[1.0 / 3.0, 2.0 / 3.0]);
}

#[test]
fn randomized_least_used_follows_unused_capacity() {
    // Unused capacity 100 %, 50 %, 25 %: shares 4/7, 2/7, 1/7.
    let got = shares(&[
        Policy::RandomizedLeastUsed { load: 0 },
        Policy::RandomizedLeastUsed { load: pct(50) },
        Policy::RandomizedLeastUsed { load: pct(75) },
    ]);
    assert_shares(&got, &[4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0]);
    let got = shares(&[
        Policy::RandomizedPriorityLeastUsed {
            load: 0,
            degradation: pct(50),
        },
        Policy::RandomizedPriorityLeastUsed {
            load: 0,
            degradation: 0,
        },
    ]);
    assert_shares(&got, &[1.0 / 3.0, 2.0 / 3.0]);
}

#[test]
fn randomized_degradation_policies_lower_the_chosen_weight() {
    // 0.1 % per selection: 1,000 selections stay well below saturation.
    let step = pct(1) / 10;
    for policy in [
        Policy::RandomizedLeastUsedDegradation {
            load: 0,
            degradation: step,
        },
        Policy::RandomizedPriorityLeastUsedDegradation {
            load: 0,
            degradation: step,
        },
    ] {
        let (mut hs, _) = pool_of(&[policy.clone(), policy], HandlespaceConfig::default());
        let mut r = rng();
        let mut counts = [0u32; 2];
        for _ in 0..1000 {
            counts[resolve(&mut hs, 1, &mut r)[0] as usize - 1] += 1;
        }
        // Every selection lowered the chosen PE's weight by one step.
        for (i, count) in counts.iter().enumerate() {
            let id = hapool_wire::PoolElementId(i as u32 + 1);
            let acc = hs.get(&handle(), id).unwrap().accumulated_degradation();
            assert_eq!(acc, count * step);
        }
        // That feedback keeps the two close to even (pure chance would
        // leave a difference of about 32 on average).
        assert!(counts[0].abs_diff(counts[1]) < 60, "{counts:?}");
    }
}

#[test]
fn weighted_draws_are_distinct() {
    let (mut hs, _) = pool_of(
        &[
            Policy::WeightedRandom { weight: 1 },
            Policy::WeightedRandom { weight: 1_000_000 },
            Policy::WeightedRandom { weight: 1 },
        ],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    for _ in 0..100 {
        let mut got = resolve(&mut hs, 3, &mut r);
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3]);
    }
    assert_eq!(resolve(&mut hs, 10, &mut r).len(), 3);
}

/// Random draws a few PEs of a large pool straight from its slots: the
/// PEs drawn are distinct and in the pool (never a freed slot), and each
/// is drawn about as often as the others.
#[test]
fn random_draws_from_a_pool_with_freed_slots_are_distinct_and_even() {
    let (mut hs, _) = pool_of(&vec![Policy::Random; 100], HandlespaceConfig::default());
    // Free 44 slots: the last 30 filled and every fifth before them.
    for id in (1..=100u32).filter(|id| id % 5 == 0 || *id > 70) {
        let e = hs.deregister(
            &handle(),
            hapool_wire::PoolElementId(id),
            &conn(u64::from(id)),
        );
        assert!(e.is_ok(), "{id}");
    }
    let live: Vec<u32> = (1..=100u32).filter(|id| id % 5 != 0 && *id <= 70).collect();
    let mut r = rng();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    const DRAWS: u32 = 20_000;
    for _ in 0..DRAWS {
        let got = resolve(&mut hs, 5, &mut r);
        let mut distinct = got.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 5, "{got:?}");
        for id in got {
            assert!(live.contains(&id), "{id} is not in the pool");
            *counts.entry(id).or_default() += 1;
        }
    }
    // 100,000 picks over 56 PEs: about 1,786 each, standard deviation
    // about 41; every count within 10 % of it.
    let each = f64::from(DRAWS * 5) / live.len() as f64;
    for id in &live {
        let got = f64::from(counts[id]);
        assert!(
            (got - each).abs() < each * 0.1,
            "PE {id}: {got} against {each}"
        );
    }
}

#[test]
fn unknown_policy_type_behaves_as_round_robin() {
    let other = Policy::Other {
        policy_type: hapool_wire::PolicyType(0x6000_0001),
        values: bytes::Bytes::new(),
    };
    let (mut hs, _) = pool_of(
        &[other.clone(), other.clone(), other],
        HandlespaceConfig::default(),
    );
    let mut r = rng();
    let picks: Vec<u32> = (0..6).map(|_| resolve(&mut hs, 1, &mut r)[0]).collect();
    assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
}

/// Weighted draws of a few PEs of a larger pool come straight from its
/// slots, kept in proportion to their weight: each PE's share matches its
/// weight, freed slots are never drawn, and the PEs of one answer are
/// distinct.
#[test]
fn weighted_draws_from_a_pool_with_freed_slots_follow_the_weights() {
    let weight = |id: u32| 1 + id % 8;
    let policies: Vec<Policy> = (1..=40u32)
        .map(|id| Policy::WeightedRandom { weight: weight(id) })
        .collect();
    let (mut hs, _) = pool_of(&policies, HandlespaceConfig::default());
    for id in (1..=40u32).filter(|id| id % 5 == 0) {
        let e = hs.deregister(
            &handle(),
            hapool_wire::PoolElementId(id),
            &conn(u64::from(id)),
        );
        assert!(e.is_ok(), "{id}");
    }
    let live: Vec<u32> = (1..=40u32).filter(|id| id % 5 != 0).collect();
    let total: u32 = live.iter().map(|&id| weight(id)).sum();
    let mut r = rng();
    let mut counts: HashMap<u32, u32> = HashMap::new();
    const DRAWS: u32 = 100_000;
    for _ in 0..DRAWS {
        let got = resolve(&mut hs, 1, &mut r);
        *counts.entry(got[0]).or_default() += 1;
    }
    for id in counts.keys() {
        assert!(live.contains(id), "{id} is not in the pool");
    }
    // Every count within 4.5 standard deviations of its expectation.
    for id in &live {
        let p = f64::from(weight(*id)) / f64::from(total);
        let expected = f64::from(DRAWS) * p;
        let sd = (expected * (1.0 - p)).sqrt();
        let got = f64::from(counts.get(id).copied().unwrap_or(0));
        assert!(
            (got - expected).abs() < 4.5 * sd,
            "PE {id} (weight {}): {got} against {expected:.0}",
            weight(*id)
        );
    }
    for _ in 0..1_000 {
        let mut got = resolve(&mut hs, 6, &mut r);
        got.sort_unstable();
        got.dedup();
        assert_eq!(got.len(), 6);
    }
}
