//! Random sequences of operations against a naive reference model: a flat
//! map of PEs, scanned and sorted on every question. After every operation
//! the handlespace and the model agree on the outcome, on every PE (id,
//! home, policy values), on the next expiry, on each registrar's checksum
//! (the model computes it from scratch) and, for the ordered policies, on
//! the exact PEs a resolution returns.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hapool_handlespace::{
    ConnectionId, Handlespace, HandlespaceConfig, LookupError, Origin, Registrant,
    RegistrationError, Unreachable, checksum_of,
};
use hapool_wire::{Policy, PolicyType, PoolElement, PoolElementId, PoolHandle, RegistrarId};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const POOLS: [&str; 4] = ["rr", "lu", "lud", "prio"];

#[derive(Clone, Debug)]
enum Op {
    Register {
        pool: usize,
        id: u32,
        kind: usize,
        value: u32,
        home: u32,
        life_ms: u32,
        conn: Option<u64>,
    },
    Deregister {
        pool: usize,
        id: u32,
        conn: u64,
    },
    Resolve {
        pool: usize,
        items: u32,
    },
    Confirm {
        pool: usize,
        id: u32,
    },
    Advance {
        ms: u64,
    },
    Expire,
    TakeOver {
        from: u32,
        to: u32,
    },
    Unreachable {
        pool: usize,
        id: u32,
        reporter: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let pool = 0..POOLS.len();
    let id = 1u32..7;
    prop_oneof![
        6 => (pool.clone(), id.clone(), 0usize..10, 0u32..5, 1u32..4, 1u32..20, prop::option::weighted(0.9, 0u64..3))
            .prop_map(|(pool, id, kind, value, home, life, conn)| Op::Register {
                pool,
                id,
                // Mostly the pool's own policy; sometimes another one.
                kind: if kind < 8 { pool } else { kind % POOLS.len() },
                value,
                home,
                life_ms: life * 100,
                conn,
            }),
        2 => (pool.clone(), id.clone(), 0u64..3).prop_map(|(pool, id, conn)| Op::Deregister { pool, id, conn }),
        4 => (pool.clone(), 0u32..5).prop_map(|(pool, items)| Op::Resolve { pool, items }),
        1 => (pool.clone(), id.clone()).prop_map(|(pool, id)| Op::Confirm { pool, id }),
        2 => (0u64..800).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
        1 => (1u32..4, 1u32..4).prop_map(|(from, to)| Op::TakeOver { from, to }),
        1 => (pool, id, 0u64..4).prop_map(|(pool, id, reporter)| Op::Unreachable { pool, id, reporter }),
    ]
}

fn policy(kind: usize, value: u32) -> Policy {
    match kind {
        0 => Policy::RoundRobin,
        1 => Policy::LeastUsed { load: value },
        2 => Policy::LeastUsedDegradation {
            load: value * 10,
            degradation: 7,
        },
        _ => Policy::Priority { priority: value },
    }
}

#[derive(Clone, Debug)]
struct ModelPe {
    element: PoolElement,
    conn: Option<u64>,
    confirmed: Instant,
    seq: u64,
    acc: u32,
    reports: Vec<(u64, Instant)>,
}

impl ModelPe {
    fn expires(&self) -> Instant {
        self.confirmed + Duration::from_millis(u64::from(self.element.registration_life))
    }

    fn key(&self) -> u64 {
        match self.element.policy {
            Policy::LeastUsed { load } => u64::from(load),
            Policy::LeastUsedDegradation { load, .. } => u64::from(load) + u64::from(self.acc),
            Policy::Priority { priority } => u64::from(u32::MAX - priority),
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Model {
    /// (pool, id) → PE.
    pes: BTreeMap<(usize, u32), ModelPe>,
    next_seq: u64,
}

impl Model {
    fn pool_policy(&self, pool: usize) -> Option<PolicyType> {
        self.pes
            .range((pool, 0)..(pool + 1, 0))
            .next()
            .map(|(_, pe)| pe.element.policy.policy_type())
    }

    fn pool_pes(&self, pool: usize) -> Vec<(&u32, &ModelPe)> {
        self.pes
            .range((pool, 0)..(pool + 1, 0))
            .map(|((_, id), pe)| (id, pe))
            .collect()
    }

    fn checksum(&self, home: u32) -> u16 {
        let owned: Vec<(&[u8], PoolElementId)> = self
            .pes
            .iter()
            .filter(|(_, pe)| pe.element.home_registrar.0 == home)
            .map(|((pool, id), _)| (POOLS[*pool].as_bytes(), PoolElementId(*id)))
            .collect();
        checksum_of(owned)
    }
}

fn origin(conn: Option<u64>) -> Origin {
    match conn {
        Some(c) => Origin::Asap(Registrant {
            connection: ConnectionId(c),
            identity: None,
        }),
        None => Origin::Enrp,
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let start = Instant::now();
    let mut now = start;
    let mut hs = Handlespace::new(HandlespaceConfig::default());
    let mut model = Model::default();
    let mut rng = StdRng::seed_from_u64(7);
    let handle = |pool: usize| PoolHandle::from(POOLS[pool]);
    for op in ops {
        match op.clone() {
            Op::Register {
                pool,
                id,
                kind,
                value,
                home,
                life_ms,
                conn,
            } => {
                let element = PoolElement {
                    registration_life: life_ms,
                    home_registrar: RegistrarId(home),
                    ..common::pe(id, policy(kind, value))
                };
                let got = hs.register(&handle(pool), element.clone(), origin(conn), now);
                let offered = element.policy.policy_type();
                let expected = match (model.pool_policy(pool), model.pes.get(&(pool, id))) {
                    (Some(p), _) if p != offered => "inconsistent",
                    (_, Some(old)) if old.conn.is_some() && conn.is_some() && old.conn != conn => {
                        "not owner"
                    }
                    (_, Some(_)) => "updated",
                    (_, None) => "added",
                };
                let got_tag = match &got {
                    Ok(hapool_handlespace::Registered::Added) => "added",
                    Ok(hapool_handlespace::Registered::Updated) => "updated",
                    Err(RegistrationError::InconsistentPolicy { .. }) => "inconsistent",
                    Err(RegistrationError::NotOwner { .. }) => "not owner",
                    Err(e) => panic!("unexpected {e:?}"),
                };
                prop_assert_eq!(got_tag, expected, "{:?}", op);
                match expected {
                    "added" => {
                        model.pes.insert(
                            (pool, id),
                            ModelPe {
                                element,
                                conn,
                                confirmed: now,
                                seq: model.next_seq,
                                acc: 0,
                                reports: Vec::new(),
                            },
                        );
                        model.next_seq += 1;
                    }
                    "updated" => {
                        let pe = model.pes.get_mut(&(pool, id)).unwrap();
                        // Ownership moves with the home.
                        if conn.is_some() || pe.element.home_registrar != element.home_registrar {
                            pe.conn = conn;
                        }
                        pe.element = element;
                        pe.confirmed = now;
                        pe.acc = 0;
                        pe.reports.clear();
                    }
                    _ => {}
                }
            }
            Op::Deregister { pool, id, conn } => {
                let got = hs.deregister(&handle(pool), PoolElementId(id), &origin(Some(conn)));
                match model.pes.get(&(pool, id)) {
                    None if model.pool_policy(pool).is_none() => {
                        prop_assert_eq!(got, Err(LookupError::UnknownPool));
                    }
                    None => {
                        prop_assert_eq!(got, Err(LookupError::UnknownElement(PoolElementId(id))));
                    }
                    Some(pe) if pe.conn.is_some_and(|c| c != conn) => {
                        prop_assert_eq!(got, Err(LookupError::NotOwner(PoolElementId(id))));
                    }
                    Some(_) => {
                        let removed = model.pes.remove(&(pool, id)).unwrap();
                        prop_assert_eq!(got, Ok(removed.element));
                    }
                }
            }
            Op::Resolve { pool, items } => {
                let got: Option<Vec<u32>> = hs
                    .resolve(&handle(pool), Some(items), &mut rng)
                    .ok()
                    .map(|v| v.iter().map(|pe| pe.id.0).collect());
                let mut candidates = model.pool_pes(pool);
                if candidates.is_empty() {
                    prop_assert_eq!(got, None);
                    continue;
                }
                let got = got.unwrap();
                let n = if items == 0 { 3 } else { items as usize };
                candidates.sort_by_key(|(_, pe)| (pe.key(), pe.seq));
                let expected: Vec<u32> = candidates.iter().take(n).map(|(id, _)| **id).collect();
                prop_assert_eq!(&got, &expected, "{:?}", op);
                // The first chosen counts as selected.
                let first = model.pes.get_mut(&(pool, got[0])).unwrap();
                first.seq = model.next_seq;
                model.next_seq += 1;
                if let Policy::LeastUsedDegradation { degradation, .. } = first.element.policy {
                    first.acc = first.acc.saturating_add(degradation);
                }
            }
            Op::Confirm { pool, id } => {
                let got = hs.confirm(&handle(pool), PoolElementId(id), now);
                match model.pes.get_mut(&(pool, id)) {
                    Some(pe) => {
                        prop_assert_eq!(got, Ok(()));
                        pe.confirmed = now;
                    }
                    None => prop_assert!(got.is_err()),
                }
            }
            Op::Advance { ms } => now += Duration::from_millis(ms),
            Op::Expire => {
                let mut got: Vec<(Vec<u8>, u32)> = hs
                    .expire_until(now)
                    .into_iter()
                    .map(|(h, pe)| (h.as_bytes().to_vec(), pe.id.0))
                    .collect();
                got.sort();
                let gone: Vec<(usize, u32)> = model
                    .pes
                    .iter()
                    .filter(|(_, pe)| pe.expires() <= now)
                    .map(|(k, _)| *k)
                    .collect();
                let mut expected: Vec<(Vec<u8>, u32)> = gone
                    .iter()
                    .map(|(pool, id)| (POOLS[*pool].as_bytes().to_vec(), *id))
                    .collect();
                expected.sort();
                for k in gone {
                    model.pes.remove(&k);
                }
                prop_assert_eq!(got, expected);
            }
            Op::TakeOver { from, to } => {
                let got = hs.take_over(RegistrarId(from), RegistrarId(to), now).len();
                let mut expected = 0;
                for pe in model.pes.values_mut() {
                    if pe.element.home_registrar.0 == from {
                        pe.element.home_registrar = RegistrarId(to);
                        pe.conn = None;
                        pe.confirmed = now;
                        expected += 1;
                    }
                }
                prop_assert_eq!(got, expected);
            }
            Op::Unreachable { pool, id, reporter } => {
                let got = hs.report_unreachable(&handle(pool), PoolElementId(id), reporter, now);
                match model.pes.get_mut(&(pool, id)) {
                    None => prop_assert!(got.is_err()),
                    Some(pe) => {
                        pe.reports.retain(|&(who, at)| {
                            who != reporter && now.duration_since(at) < Duration::from_secs(60)
                        });
                        pe.reports.push((reporter, now));
                        if pe.reports.len() >= 3 {
                            let removed = model.pes.remove(&(pool, id)).unwrap();
                            prop_assert_eq!(got, Ok(Unreachable::Removed(removed.element)));
                        } else {
                            prop_assert_eq!(got, Ok(Unreachable::Counted(pe.reports.len())));
                        }
                    }
                }
            }
        }
        // After every operation: the same PEs, expiry and checksums.
        let mut got: Vec<(Vec<u8>, PoolElement)> = hs
            .pools()
            .flat_map(|p| {
                p.iter()
                    .map(move |e| (p.handle().as_bytes().to_vec(), e.element().clone()))
            })
            .collect();
        got.sort_by_key(|(h, pe)| (h.clone(), pe.id));
        let expected: Vec<(Vec<u8>, PoolElement)> = model
            .pes
            .iter()
            .map(|((pool, _), pe)| (POOLS[*pool].as_bytes().to_vec(), pe.element.clone()))
            .collect();
        let mut expected = expected;
        expected.sort_by_key(|(h, pe)| (h.clone(), pe.id));
        prop_assert_eq!(got, expected);
        prop_assert_eq!(hs.len(), model.pes.len());
        // The handlespace asks to be woken no later than the first PE runs
        // out (earlier after a renewal); which PEs run out is checked
        // against the model by every `Expire`.
        let first = model.pes.values().map(ModelPe::expires).min();
        prop_assert_eq!(hs.next_expiry().is_some(), first.is_some());
        prop_assert!(hs.next_expiry() <= first);
        for home in 1..4 {
            prop_assert_eq!(
                hs.checksum(RegistrarId(home)),
                model.checksum(home),
                "home {}",
                home
            );
            prop_assert_eq!(
                hs.owned_count(RegistrarId(home)),
                model
                    .pes
                    .values()
                    .filter(|pe| pe.element.home_registrar.0 == home)
                    .count()
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn handlespace_matches_the_model(ops in proptest::collection::vec(op(), 1..120)) {
        run(&ops)?;
    }
}
