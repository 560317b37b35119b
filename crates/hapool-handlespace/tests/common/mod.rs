//! Helpers shared by the handlespace tests.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use hapool_handlespace::{ConnectionId, Handlespace, HandlespaceConfig, Origin, Registrant};
use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport};

pub fn pe(id: u32, policy: Policy) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(1),
        registration_life: 30_000,
        user_transport: Transport::tcp((IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)), 80).into()),
        policy,
        asap_transport: None,
    }
}

pub fn conn(c: u64) -> Origin {
    Origin::Asap(Registrant {
        connection: ConnectionId(c),
        identity: None,
    })
}

pub fn identity(c: u64, name: &str) -> Origin {
    Origin::Asap(Registrant {
        connection: ConnectionId(c),
        identity: Some(Arc::from(name)),
    })
}

pub fn handle() -> PoolHandle {
    PoolHandle::from("pool")
}

/// A handlespace with one pool of the given policies, PE ids 1, 2, ...
pub fn pool_of(policies: &[Policy], config: HandlespaceConfig) -> (Handlespace, Instant) {
    let now = Instant::now();
    let mut hs = Handlespace::new(config);
    for (i, p) in policies.iter().enumerate() {
        let id = i as u32 + 1;
        hs.register(&handle(), pe(id, p.clone()), conn(u64::from(id)), now)
            .unwrap();
    }
    (hs, now)
}

pub fn ids(chosen: &[&PoolElement]) -> Vec<u32> {
    chosen.iter().map(|p| p.id.0).collect()
}

/// A load of `percent` on the 32-bit scale.
pub fn pct(percent: u32) -> u32 {
    (u64::from(u32::MAX) * u64::from(percent) / 100) as u32
}
