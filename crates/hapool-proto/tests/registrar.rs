//! The registrar state machine: feed inputs, assert the exact outputs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hapool_handlespace::ConnectionId;
use hapool_proto::{Event, RateLimit, Registrar, RegistrarConfig, RemovalReason, Transmit};
use hapool_wire::{
    AsapMessage, CauseCode, ErrorCause, OperationError, Policy, PoolElement, PoolElementId,
    PoolHandle, RegistrarId, ResolutionOutcome, Transport,
};

const ME: RegistrarId = RegistrarId(0xAB);

fn handle() -> PoolHandle {
    PoolHandle::from("echo")
}

fn pe(id: u32, load: u32) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(0),
        registration_life: 30_000,
        user_transport: Transport::tcp((IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)), 7).into()),
        policy: Policy::LeastUsed { load },
        asap_transport: None,
    }
}

fn peer(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

struct Harness {
    registrar: Registrar,
    t0: Instant,
}

impl Harness {
    fn new(config: RegistrarConfig) -> Self {
        Self {
            registrar: Registrar::new(config),
            t0: Instant::now(),
        }
    }

    fn default() -> Self {
        let mut config = RegistrarConfig::new(ME);
        config.keep_alive_interval = Duration::from_millis(100);
        config.keep_alive_timeout = Duration::from_millis(100);
        Self::new(config)
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    fn connect(&mut self, c: u64) {
        let now = self.t0;
        self.registrar
            .handle_connect(ConnectionId(c), Some(peer(40_000 + c as u16)), None, now);
    }

    fn send(&mut self, c: u64, message: AsapMessage, ms: u64) -> Vec<(u64, AsapMessage)> {
        let now = self.at(ms);
        self.registrar.handle_message(ConnectionId(c), message, now);
        self.transmits()
    }

    fn tick(&mut self, ms: u64) -> Vec<(u64, AsapMessage)> {
        let now = self.at(ms);
        self.registrar.handle_timeout(now);
        self.transmits()
    }

    fn transmits(&mut self) -> Vec<(u64, AsapMessage)> {
        std::iter::from_fn(|| self.registrar.poll_transmit())
            .map(|t| match t {
                Transmit::Send {
                    connection,
                    message,
                } => (connection.0, message),
                // Announcements go to no connection; 0 stands for them.
                Transmit::Announce { message } => (0, message),
                Transmit::Peer { .. } | Transmit::PeerGroup { .. } => {
                    panic!("a registrar without peers sent ENRP")
                }
            })
            .collect()
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.registrar.poll_event()).collect()
    }

    fn ack(&mut self, c: u64, id: u32, ms: u64) -> Vec<(u64, AsapMessage)> {
        self.send(
            c,
            AsapMessage::EndpointKeepAliveAck {
                pool_handle: handle(),
                pe_id: PoolElementId(id),
            },
            ms,
        )
    }

    fn register(&mut self, c: u64, id: u32, ms: u64) -> Vec<(u64, AsapMessage)> {
        self.send(
            c,
            AsapMessage::Registration {
                pool_handle: handle(),
                pool_element: pe(id, 0),
                auth_token: None,
            },
            ms,
        )
    }
}

fn accepted(c: u64, id: u32) -> (u64, AsapMessage) {
    (
        c,
        AsapMessage::RegistrationResponse {
            reject: false,
            pool_handle: handle(),
            pe_id: PoolElementId(id),
            error: None,
        },
    )
}

fn keep_alive(c: u64, id: u32) -> (u64, AsapMessage) {
    (
        c,
        AsapMessage::EndpointKeepAlive {
            home: false,
            registrar_id: ME,
            pool_handle: handle(),
            pe_id: Some(PoolElementId(id)),
        },
    )
}

#[test]
fn registration_makes_this_registrar_home_and_reports_it() {
    let mut h = Harness::default();
    h.connect(1);
    assert_eq!(h.register(1, 7, 0), vec![accepted(1, 7)]);
    let stored = PoolElement {
        home_registrar: ME,
        asap_transport: Some(Transport::tcp(peer(40_001))),
        ..pe(7, 0)
    };
    assert_eq!(
        h.events(),
        vec![Event::Registered {
            pool_handle: handle(),
            element: stored.clone(),
            added: true,
        }]
    );
    assert_eq!(
        h.registrar
            .handlespace()
            .get(&handle(), PoolElementId(7))
            .unwrap()
            .element(),
        &stored
    );
    // A re-registration is an update.
    assert_eq!(h.register(1, 7, 10), vec![accepted(1, 7)]);
    assert!(matches!(
        h.events()[..],
        [Event::Registered { added: false, .. }]
    ));
}

#[test]
fn resolution_returns_members_without_asap_transport() {
    let mut h = Harness::default();
    h.connect(1);
    h.connect(9);
    h.register(1, 1, 0);
    h.register(1, 2, 0);
    let out = h.send(
        9,
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: handle(),
            items: Some(2),
        },
        1,
    );
    let home = |id| PoolElement {
        home_registrar: ME,
        ..pe(id, 0)
    };
    assert_eq!(
        out,
        vec![(
            9,
            AsapMessage::HandleResolutionResponse {
                accepted: false,
                pool_handle: handle(),
                outcome: ResolutionOutcome::Members {
                    policy: Some(Policy::LeastUsed { load: 0 }),
                    elements: vec![home(1), home(2)],
                },
            }
        )]
    );
    // An unknown pool gets the Unknown Pool Handle cause.
    let out = h.send(
        9,
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: PoolHandle::from("none"),
            items: None,
        },
        2,
    );
    assert_eq!(
        out,
        vec![(
            9,
            AsapMessage::HandleResolutionResponse {
                accepted: false,
                pool_handle: PoolHandle::from("none"),
                outcome: ResolutionOutcome::Error(OperationError::single(ErrorCause::new(
                    CauseCode::UNKNOWN_POOL_HANDLE
                ))),
            }
        )]
    );
}

#[test]
fn keep_alive_supervision_at_100ms() {
    let mut h = Harness::default();
    h.connect(1);
    h.register(1, 7, 0);
    h.events();
    assert_eq!(h.registrar.poll_timeout(), Some(h.at(100)));
    assert_eq!(h.tick(99), vec![]);
    assert_eq!(h.tick(100), vec![keep_alive(1, 7)]);
    assert_eq!(h.registrar.poll_timeout(), Some(h.at(200)));
    // The ack restarts the cycle and renews the registration.
    h.ack(1, 7, 150);
    assert_eq!(h.registrar.poll_timeout(), Some(h.at(250)));
    assert_eq!(h.tick(250), vec![keep_alive(1, 7)]);
    // No ack within the timeout: removed at once.
    assert_eq!(h.tick(349), vec![]);
    assert_eq!(h.tick(350), vec![]);
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::Removed { reason: RemovalReason::KeepAliveTimeout, element, .. }] if element.id == PoolElementId(7)),
        "{events:?}"
    );
    assert!(h.registrar.handlespace().is_empty());
}

#[test]
fn an_ack_from_another_connection_does_not_count() {
    let mut h = Harness::default();
    h.connect(1);
    h.connect(2);
    h.register(1, 7, 0);
    h.tick(100);
    h.ack(2, 7, 150);
    h.tick(200);
    assert!(h.registrar.handlespace().is_empty());
}

#[test]
fn connection_loss_removes_its_pes_at_once() {
    let mut h = Harness::default();
    h.connect(1);
    h.connect(2);
    h.register(1, 1, 0);
    h.register(1, 2, 0);
    h.register(2, 3, 0);
    h.events();
    h.registrar.handle_disconnect(ConnectionId(1), h.at(5));
    let mut removed: Vec<u32> = h
        .events()
        .into_iter()
        .map(|e| match e {
            Event::Removed {
                element,
                reason: RemovalReason::ConnectionLost,
                ..
            } => element.id.0,
            other => panic!("{other:?}"),
        })
        .collect();
    removed.sort_unstable();
    assert_eq!(removed, [1, 2]);
    assert_eq!(h.registrar.handlespace().len(), 1);
    // Only PE 3's keep-alive remains scheduled.
    assert_eq!(h.tick(100), vec![keep_alive(2, 3)]);
}

#[test]
fn an_authenticated_pe_moves_to_its_new_connection() {
    let mut h = Harness::default();
    let identity = Some(std::sync::Arc::from("pe-7"));
    let now = h.t0;
    h.registrar
        .handle_connect(ConnectionId(1), Some(peer(40_001)), identity.clone(), now);
    h.register(1, 7, 0);
    // The same identity on a new connection (the old one is half-open).
    h.registrar
        .handle_connect(ConnectionId(2), Some(peer(40_002)), identity, now);
    assert_eq!(h.register(2, 7, 50), vec![accepted(2, 7)]);
    // The old connection ending does not take the PE with it.
    h.registrar.handle_disconnect(ConnectionId(1), h.at(60));
    assert_eq!(h.registrar.handlespace().len(), 1);
    assert_eq!(h.tick(150), vec![keep_alive(2, 7)]);
    // Its ASAP endpoint is now the new connection.
    let stored = h
        .registrar
        .handlespace()
        .get(&handle(), PoolElementId(7))
        .unwrap();
    assert_eq!(
        stored.element().asap_transport,
        Some(Transport::tcp(peer(40_002)))
    );
}

#[test]
fn hijacking_reregistration_is_refused() {
    let mut h = Harness::default();
    h.connect(1);
    h.connect(2);
    h.register(1, 7, 0);
    h.events();
    let out = h.register(2, 7, 10);
    assert_eq!(
        out,
        vec![(
            2,
            AsapMessage::RegistrationResponse {
                reject: true,
                pool_handle: handle(),
                pe_id: PoolElementId(7),
                error: Some(OperationError::single(ErrorCause::new(
                    CauseCode::NON_UNIQUE_PE_IDENTIFIER
                ))),
            }
        )]
    );
    assert!(matches!(
        h.events()[..],
        [Event::Refused {
            cause: CauseCode::NON_UNIQUE_PE_IDENTIFIER,
            ..
        }]
    ));
    // The PE is still supervised on its own connection.
    assert_eq!(h.tick(100), vec![keep_alive(1, 7)]);
}

#[test]
fn deregistration() {
    let mut h = Harness::default();
    h.connect(1);
    h.connect(2);
    h.register(1, 7, 0);
    h.events();
    let dereg = AsapMessage::Deregistration {
        pool_handle: handle(),
        pe_id: PoolElementId(7),
    };
    // Not from another connection.
    let out = h.send(2, dereg.clone(), 1);
    assert_eq!(
        out,
        vec![(
            2,
            AsapMessage::DeregistrationResponse {
                pool_handle: handle(),
                pe_id: PoolElementId(7),
                error: Some(OperationError::single(ErrorCause::new(
                    CauseCode::REJECTION_DUE_TO_SECURITY
                ))),
            }
        )]
    );
    let out = h.send(1, dereg, 2);
    assert_eq!(
        out,
        vec![(
            1,
            AsapMessage::DeregistrationResponse {
                pool_handle: handle(),
                pe_id: PoolElementId(7),
                error: None,
            }
        )]
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::Removed {
            reason: RemovalReason::Deregistered,
            ..
        }
    )));
    assert_eq!(h.registrar.poll_timeout(), None);
}

#[test]
fn unreachable_reports_need_three_pool_users_and_are_rate_limited() {
    let mut h = Harness::default();
    h.connect(1);
    h.register(1, 7, 0);
    h.register(1, 8, 0);
    let report = |id| AsapMessage::EndpointUnreachable {
        pool_handle: handle(),
        pe_id: PoolElementId(id),
    };
    // One pool user flooding reports: counted once, then rate limited.
    h.connect(10);
    for ms in 0..50 {
        h.send(10, report(7), ms);
    }
    assert_eq!(h.registrar.handlespace().len(), 2);
    let refused = h
        .events()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Refused {
                    request: "unreachability report",
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 45, "burst of 5, then limited");
    // Two more distinct pool users: removed.
    h.connect(11);
    h.connect(12);
    h.send(11, report(7), 60);
    assert_eq!(h.registrar.handlespace().len(), 2);
    h.send(12, report(7), 61);
    assert_eq!(h.registrar.handlespace().len(), 1);
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::Removed {
            reason: RemovalReason::Unreachable,
            ..
        }
    )));
    // Its keep-alives stop.
    assert_eq!(h.tick(100), vec![keep_alive(1, 8)]);
}

#[test]
fn registrations_and_resolutions_are_rate_limited_per_connection() {
    let mut config = RegistrarConfig::new(ME);
    config.registration_rate = RateLimit {
        per_second: 1.0,
        burst: 2,
    };
    config.resolution_rate = RateLimit {
        per_second: 1.0,
        burst: 1,
    };
    let mut h = Harness::new(config);
    h.connect(1);
    h.connect(2);
    assert_eq!(h.register(1, 1, 0), vec![accepted(1, 1)]);
    assert_eq!(h.register(1, 2, 0), vec![accepted(1, 2)]);
    let out = h.register(1, 3, 0);
    assert!(matches!(
        &out[..],
        [(1, AsapMessage::RegistrationResponse { reject: true, error: Some(e), .. })]
            if e.causes[0].code == CauseCode::LACK_OF_RESOURCES
    ));
    // Another connection is not affected; the first recovers with time.
    assert_eq!(h.register(2, 3, 0), vec![accepted(2, 3)]);
    assert_eq!(h.register(1, 4, 1_000), vec![accepted(1, 4)]);
    let resolve = AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: handle(),
        items: None,
    };
    assert!(matches!(
        &h.send(2, resolve.clone(), 1_000)[..],
        [(
            2,
            AsapMessage::HandleResolutionResponse {
                outcome: ResolutionOutcome::Members { .. },
                ..
            }
        )]
    ));
    assert!(matches!(
        &h.send(2, resolve, 1_000)[..],
        [(
            2,
            AsapMessage::HandleResolutionResponse {
                outcome: ResolutionOutcome::Error(_),
                ..
            }
        )]
    ));
}

#[test]
fn registration_life_is_at_least_one_keep_alive_round() {
    let mut h = Harness::default();
    h.connect(1);
    let mut short = pe(7, 0);
    short.registration_life = 1;
    h.send(
        1,
        AsapMessage::Registration {
            pool_handle: handle(),
            pool_element: short,
            auth_token: None,
        },
        0,
    );
    let stored = h
        .registrar
        .handlespace()
        .get(&handle(), PoolElementId(7))
        .unwrap();
    assert_eq!(stored.element().registration_life, 200);
    // A PE that answers every keep-alive never expires.
    for round in 0..20u64 {
        let t = round * 100;
        h.tick(t + 100);
        h.ack(1, 7, t + 100);
    }
    assert_eq!(h.registrar.handlespace().len(), 1);
}

#[test]
fn registration_rules_name_who_may_register_where() {
    use hapool_proto::RegistrationRule;
    let mut config = RegistrarConfig::new(ME);
    config.rules = vec![
        RegistrationRule {
            pools: vec!["echo".into()],
            identities: vec!["pe-a".into()],
            tokens: Vec::new(),
        },
        RegistrationRule {
            pools: vec!["web-*".into()],
            identities: vec!["pe-a".into(), "pe-b".into()],
            tokens: vec!["web-secret-0123456789".into()],
        },
    ];
    let mut h = Harness::new(config);
    let now = h.t0;
    let who = |c: u64, name: Option<&str>| (ConnectionId(c), name.map(std::sync::Arc::from));
    for (c, name) in [who(1, Some("pe-a")), who(2, Some("pe-b")), who(3, None)] {
        h.registrar.handle_connect(c, Some(peer(40_000)), name, now);
    }
    let register_with = |h: &mut Harness, c: u64, pool: &str, token: Option<&'static str>| {
        let out = h.send(
            c,
            AsapMessage::Registration {
                pool_handle: PoolHandle::from(pool),
                pool_element: pe(c as u32, 0),
                auth_token: token.map(|t| bytes::Bytes::from_static(t.as_bytes())),
            },
            0,
        );
        match &out[..] {
            [(_, AsapMessage::RegistrationResponse { reject: false, .. })] => Ok(()),
            [
                (
                    _,
                    AsapMessage::RegistrationResponse {
                        reject: true,
                        error: Some(e),
                        ..
                    },
                ),
            ] => Err(e.causes[0].code),
            other => panic!("{other:?}"),
        }
    };
    let register = |h: &mut Harness, c: u64, pool: &str| register_with(h, c, pool, None);
    let refused = Err(CauseCode::REJECTION_DUE_TO_SECURITY);
    // A shared token opens the pools its rule covers, and no other; a
    // wrong token (even one byte off) opens nothing.
    assert_eq!(
        register_with(&mut h, 3, "web-eu", Some("web-secret-0123456789")),
        Ok(())
    );
    assert_eq!(
        register_with(&mut h, 3, "echo", Some("web-secret-0123456789")),
        refused
    );
    assert_eq!(
        register_with(&mut h, 3, "web-us", Some("web-secret-0123456788")),
        refused
    );
    assert_eq!(register(&mut h, 1, "echo"), Ok(()));
    assert_eq!(register(&mut h, 2, "echo"), refused);
    assert_eq!(register(&mut h, 2, "web-eu"), Ok(()));
    // Unauthenticated connections may not register where rules exist.
    assert_eq!(register(&mut h, 3, "web-eu"), refused);
    // A pool no rule covers takes no registrations.
    assert_eq!(register(&mut h, 1, "other"), refused);
    // Resolution is not restricted.
    let out = h.send(
        3,
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: PoolHandle::from("web-eu"),
            items: None,
        },
        1,
    );
    assert!(matches!(
        &out[..],
        [(
            3,
            AsapMessage::HandleResolutionResponse {
                outcome: ResolutionOutcome::Members { .. },
                ..
            }
        )]
    ));
}

#[test]
fn server_announcements_when_configured() {
    let mut config = RegistrarConfig::new(ME);
    config.announce = Some(hapool_proto::Announcement {
        interval: Duration::from_millis(1000),
        transports: vec![Transport::tcp(peer(3863))],
    });
    let mut h = Harness::new(config);
    let announce = (
        0,
        AsapMessage::ServerAnnounce {
            registrar_id: ME,
            transports: vec![Transport::tcp(peer(3863))],
        },
    );
    assert_eq!(h.registrar.poll_timeout(), None);
    h.registrar.handle_start(h.at(0));
    assert_eq!(h.registrar.poll_timeout(), Some(h.at(0)));
    assert_eq!(h.tick(0), vec![announce.clone()]);
    assert_eq!(h.registrar.poll_timeout(), Some(h.at(1000)));
    assert_eq!(h.tick(999), vec![]);
    assert_eq!(h.tick(1000), vec![announce]);
    // Without the setting, nothing is announced.
    let mut h = Harness::default();
    h.registrar.handle_start(h.at(0));
    assert_eq!(h.registrar.poll_timeout(), None);
    assert_eq!(h.tick(5000), vec![]);
}
