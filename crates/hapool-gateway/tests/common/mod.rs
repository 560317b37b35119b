//! What the gateway's test files share.

use std::net::{Ipv4Addr, SocketAddr};

use hapool_gateway::{
    Affinity, GatewayConfig, ListenerConfig, MemberSource, PoolSettings, ProbeKind, Protocol,
    StaticMember, Strategy,
};
use hapool_wire::PoolHandle;

/// One HTTP listener on a free loopback port, taking `max_connections`
/// at once, in front of the pool "web" of the one static `member`
/// (least loaded, TCP probes), served by `workers` workers.
pub(crate) fn one_member_gateway(
    member: SocketAddr,
    workers: usize,
    max_connections: usize,
) -> GatewayConfig {
    let handle = PoolHandle::from("web");
    let listener = ListenerConfig {
        address: (Ipv4Addr::LOCALHOST, 0).into(),
        protocol: Protocol::Http,
        pool: handle.clone(),
        tls: None,
        affinity: Affinity::None,
        max_connections,
    };
    let pool = PoolSettings {
        handle,
        source: MemberSource::Static(vec![StaticMember {
            address: member,
            weight: 1,
            priority: 0,
        }]),
        strategy: Some(Strategy::LeastLoaded),
        availability_threshold: 10,
        max_sessions: None,
        probe: ProbeKind::Tcp,
        tls: false,
        hedge_percent: PoolSettings::HEDGE_PERCENT,
    };
    let mut config = GatewayConfig::new(vec![listener], vec![pool]);
    config.workers = workers;
    config
}
