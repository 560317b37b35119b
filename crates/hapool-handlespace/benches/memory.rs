//! Memory per PE: live heap bytes of a handlespace holding 100,000 PEs, in
//! one pool and spread over 1,000 pools, divided by the number of PEs; and
//! of a degrading pool whose every PE has been selected (each on the
//! ordered index's queue) and then half of them updated (the queue holding
//! as many dead entries as live ones, the heap again half the pool).
//!
//! `cargo bench -p hapool-handlespace --bench memory`

#![allow(missing_docs, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use hapool_handlespace::{ConnectionId, Handlespace, HandlespaceConfig, Origin, Registrant};
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};
use rand::SeedableRng;
use rand::rngs::SmallRng;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only keeps a count of live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn measure(label: &str, pools: u32, per_pool: u32, policy: fn(u32) -> Policy, churn: bool) {
    let now = Instant::now();
    let handles: Vec<PoolHandle> = (0..pools)
        .map(|p| PoolHandle::from(format!("pool-{p:05}").as_str()))
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut hs = Handlespace::new(HandlespaceConfig {
        max_elements_per_pool: 1_000_000,
        ..HandlespaceConfig::default()
    });
    let register = |hs: &mut Handlespace, handle: &PoolHandle, p: u32, i: u32, load: u32| {
        let id = p * per_pool + i;
        let e = PoolElement {
            id: PoolElementId(i),
            home_registrar: RegistrarId(1 + id % 3),
            registration_life: 30_000,
            user_transport: Transport::tcp(
                (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | id)), 8080).into(),
            ),
            policy: policy(id.wrapping_add(load)),
            asap_transport: None,
        };
        let origin = Origin::Asap(Registrant {
            connection: ConnectionId(u64::from(id)),
            identity: None,
        });
        hs.register(handle, e, origin, now).unwrap();
    };
    for (p, handle) in handles.iter().enumerate() {
        for i in 1..=per_pool {
            register(&mut hs, handle, p as u32, i, 0);
        }
        if churn {
            let mut rng = SmallRng::seed_from_u64(1);
            for _ in 0..2 * per_pool {
                hs.resolve(handle, Some(3), &mut rng).unwrap();
            }
            for i in (1..=per_pool).step_by(2) {
                register(&mut hs, handle, p as u32, i, 1);
            }
        }
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    let n = (pools * per_pool) as isize;
    println!(
        "{label}: {} PEs, {} bytes in all, {} bytes per PE",
        n,
        used,
        used / n
    );
    drop(hs);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    measure(
        "LU, 1 pool of 100,000",
        1,
        100_000,
        |i| Policy::LeastUsed { load: i },
        false,
    );
    measure(
        "WRAND, 1 pool of 100,000",
        1,
        100_000,
        |i| Policy::WeightedRandom { weight: i % 9 },
        false,
    );
    measure(
        "LU, 1,000 pools of 100",
        1_000,
        100,
        |i| Policy::LeastUsed { load: i },
        false,
    );
    measure(
        "LUD, 1 pool of 100,000, all selected, half updated",
        1,
        100_000,
        |i| Policy::LeastUsedDegradation {
            load: i % 2,
            degradation: 1,
        },
        true,
    );
}
