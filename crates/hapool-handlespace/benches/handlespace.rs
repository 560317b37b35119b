//! Handlespace operations for every policy at pool sizes of 10, 1,000 and
//! 100,000 PEs: register (a new PE), re-register (a load update), deregister
//! and resolve (3 items).
//!
//! `cargo bench -p hapool-handlespace --bench handlespace`
//! then `python3 bench/handlespace-table.py` for the table.

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hapool_handlespace::{ConnectionId, Handlespace, HandlespaceConfig, Origin, Registrant};
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const SIZES: [u32; 3] = [10, 1_000, 100_000];

/// Makes the policy values of PE `i`.
type MakePolicy = fn(u32) -> Policy;

/// Every policy, with values that vary with `i`.
fn policies() -> Vec<(&'static str, MakePolicy)> {
    vec![
        ("RR", |_| Policy::RoundRobin),
        ("WRR", |i| Policy::WeightedRoundRobin { weight: 1 + i % 7 }),
        ("RAND", |_| Policy::Random),
        ("WRAND", |i| Policy::WeightedRandom { weight: 1 + i % 7 }),
        ("PRI", |i| Policy::Priority { priority: i % 5 }),
        ("LU", |i| Policy::LeastUsed {
            load: i.wrapping_mul(2_654_435_761),
        }),
        ("LUD", |i| Policy::LeastUsedDegradation {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
        }),
        ("PLU", |i| Policy::PriorityLeastUsed {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
        }),
        ("RLU", |i| Policy::RandomizedLeastUsed {
            load: i.wrapping_mul(2_654_435_761),
        }),
        ("RPLU", |i| Policy::RandomizedPriorityLeastUsed {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
        }),
        ("RLUD", |i| Policy::RandomizedLeastUsedDegradation {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
        }),
        ("PLUD", |i| Policy::PriorityLeastUsedDegradation {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
        }),
        ("RPLUD", |i| {
            Policy::RandomizedPriorityLeastUsedDegradation {
                load: i.wrapping_mul(2_654_435_761) >> 1,
                degradation: 1 << 20,
            }
        }),
        ("WRAND-DPF", |i| Policy::WeightedRandomDpf {
            weight: 1 + i % 7,
            weight_dpf: 1 << 20,
            distance: i % 100,
        }),
        ("LU-DPF", |i| Policy::LeastUsedDpf {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            load_dpf: 1 << 10,
            distance: i % 100,
        }),
        ("LUD-DPF", |i| Policy::LeastUsedDegradationDpf {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
            load_dpf: 1 << 10,
            distance: i % 100,
        }),
        ("PLU-DPF", |i| Policy::PriorityLeastUsedDpf {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
            load_dpf: 1 << 10,
            distance: i % 100,
        }),
        ("PLUD-DPF", |i| Policy::PriorityLeastUsedDegradationDpf {
            load: i.wrapping_mul(2_654_435_761) >> 1,
            degradation: 1 << 20,
            load_dpf: 1 << 10,
            distance: i % 100,
        }),
    ]
}

fn pe(id: u32, policy: Policy) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(1),
        registration_life: 30_000,
        user_transport: Transport::tcp((IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | id)), 8080).into()),
        policy,
        asap_transport: None,
    }
}

fn origin(id: u32) -> Origin {
    Origin::Asap(Registrant {
        connection: ConnectionId(u64::from(id)),
        identity: None,
    })
}

fn filled(size: u32, make: MakePolicy, handle: &PoolHandle, now: Instant) -> Handlespace {
    let mut hs = Handlespace::new(HandlespaceConfig {
        max_elements_per_pool: 1_000_000,
        ..HandlespaceConfig::default()
    });
    for id in 1..=size {
        hs.register(handle, pe(id, make(id)), origin(id), now)
            .unwrap();
    }
    hs
}

fn bench(c: &mut Criterion) {
    let handle = PoolHandle::from("bench-pool");
    let now = Instant::now();
    for (name, make) in policies() {
        let mut group = c.benchmark_group(name);
        group
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_millis(1200))
            .sample_size(20);
        for size in SIZES {
            let mut hs = filled(size, make, &handle, now);
            let mut rng = SmallRng::seed_from_u64(1);
            group.bench_function(BenchmarkId::new("resolve3", size), |b| {
                b.iter(|| black_box(hs.resolve(&handle, Some(3), &mut rng).unwrap().len()));
            });
            // Load updates of PEs in turn, each to a new value, a little
            // later each time (so the expiry moves too).
            let (mut next, mut round, mut at) = (0u32, 0u32, now);
            group.bench_function(BenchmarkId::new("reregister", size), |b| {
                b.iter(|| {
                    next = next % size + 1;
                    round = round.wrapping_add(7919);
                    at += Duration::from_micros(1);
                    let policy = make(next.wrapping_add(round));
                    black_box(
                        hs.register(&handle, pe(next, policy), origin(next), at)
                            .unwrap(),
                    );
                });
            });
            // Register and deregister time fresh PEs in batches, undoing
            // each batch untimed so the pool keeps its size.
            group.bench_function(BenchmarkId::new("register", size), |b| {
                b.iter_custom(|iters| {
                    let fresh: Vec<PoolElement> = (0..iters as u32)
                        .map(|i| pe(size + 1 + i, make(size + 1 + i)))
                        .collect();
                    let start = Instant::now();
                    for e in fresh {
                        let id = e.id.0;
                        black_box(hs.register(&handle, e, origin(id), now).unwrap());
                    }
                    let elapsed = start.elapsed();
                    for i in 0..iters as u32 {
                        hs.remove(&handle, PoolElementId(size + 1 + i));
                    }
                    elapsed
                });
            });
            group.bench_function(BenchmarkId::new("deregister", size), |b| {
                b.iter_custom(|iters| {
                    for i in 0..iters as u32 {
                        let id = size + 1 + i;
                        hs.register(&handle, pe(id, make(id)), origin(id), now)
                            .unwrap();
                    }
                    let start = Instant::now();
                    for i in 0..iters as u32 {
                        let id = size + 1 + i;
                        black_box(
                            hs.deregister(&handle, PoolElementId(id), &origin(id))
                                .unwrap(),
                        );
                    }
                    start.elapsed()
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
