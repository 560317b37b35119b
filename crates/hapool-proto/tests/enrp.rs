//! The registrar's ENRP side: registrars wired to each other by hand, with
//! every message delivered at once (or dropped on purpose), and exact
//! assertions on what they hold and send.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hapool_handlespace::ConnectionId;
use hapool_proto::{EnrpConfig, Event, Registrar, RegistrarConfig, Transmit};
use hapool_wire::{
    AsapMessage, EnrpBody, EnrpMessage, Message, Policy, PoolElement, PoolElementId, PoolHandle,
    RegistrarId, ServerInformation, Transport,
};

const HEARTBEAT: Duration = Duration::from_millis(100);

fn address(i: usize) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 9901 + i as u16).into()
}

fn pe(id: u32) -> PoolElement {
    PoolElement {
        id: PoolElementId(id),
        home_registrar: RegistrarId(0),
        registration_life: 60_000,
        user_transport: Transport::tcp((Ipv4Addr::new(10, 0, 0, 1), 7).into()),
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

/// Registrars 0..n with ids `ids[i]` at `address(i)`, each knowing the
/// others' addresses.
struct Cluster {
    nodes: Vec<Option<Registrar>>,
    now: Instant,
    /// Messages in flight: (to, message).
    wire: VecDeque<(usize, EnrpMessage)>,
    /// Nodes whose traffic is dropped (both ways).
    cut: Vec<bool>,
    /// What each node said to PEs: (node, connection, message).
    asap: Vec<(usize, u64, AsapMessage)>,
    events: Vec<(usize, Event)>,
    page_size: usize,
    /// HANDLE_UPDATEs sent, by every node.
    updates: usize,
}

impl Cluster {
    fn new(ids: &[u32]) -> Self {
        Self::with_page_size(ids, 128)
    }

    fn with_page_size(ids: &[u32], page_size: usize) -> Self {
        let t0 = Instant::now();
        let mut cluster = Self {
            nodes: Vec::new(),
            now: t0,
            wire: VecDeque::new(),
            cut: vec![false; ids.len()],
            asap: Vec::new(),
            events: Vec::new(),
            page_size,
            updates: 0,
        };
        for (i, id) in ids.iter().enumerate() {
            cluster.nodes.push(None);
            cluster.start(i, *id);
        }
        cluster.settle();
        cluster
    }

    fn start(&mut self, i: usize, id: u32) {
        let mut config = RegistrarConfig::new(RegistrarId(id));
        config.keep_alive_interval = Duration::from_secs(5);
        config.keep_alive_timeout = Duration::from_secs(5);
        config.enrp = EnrpConfig {
            address: Some(address(i)),
            peers: (0..self.cut.len())
                .filter(|&j| j != i)
                .map(address)
                .collect(),
            page_size: self.page_size,
            ..EnrpConfig::fast(HEARTBEAT)
        };
        let mut r = Registrar::new(config);
        r.handle_start(self.now);
        self.nodes[i] = Some(r);
        self.drain(i);
    }

    fn node(&self, i: usize) -> &Registrar {
        self.nodes[i].as_ref().expect("running")
    }

    fn drain(&mut self, i: usize) {
        let Some(r) = self.nodes[i].as_mut() else {
            return;
        };
        while let Some(t) = r.poll_transmit() {
            match t {
                Transmit::Peer { to, message } => {
                    let to = (to.port() - 9901) as usize;
                    if matches!(message.body, EnrpBody::HandleUpdate { .. }) {
                        self.updates += 1;
                    }
                    // Through the codec, as on the wire.
                    let bytes = message.to_bytes().unwrap();
                    let message = EnrpMessage::decode(&bytes).unwrap().message;
                    self.wire.push_back((to, message));
                }
                Transmit::Send {
                    connection,
                    message,
                } => self.asap.push((i, connection.0, message)),
                Transmit::Announce { .. } | Transmit::PeerGroup { .. } => {}
            }
        }
        while let Some(e) = r.poll_event() {
            self.events.push((i, e));
        }
    }

    /// Delivers every message in flight, and what they cause.
    fn settle(&mut self) {
        let mut budget = 100_000;
        while let Some((to, message)) = self.wire.pop_front() {
            budget -= 1;
            assert!(budget > 0, "messages never stop");
            let from = self
                .nodes
                .iter()
                .position(|n| n.as_ref().is_some_and(|r| r.config().id == message.sender));
            if self.cut[to] || from.is_some_and(|f| self.cut[f]) {
                continue;
            }
            let now = self.now;
            if let Some(r) = self.nodes[to].as_mut() {
                r.handle_peer_message(message, now);
                self.drain(to);
            }
        }
    }

    /// Hands node `i` a message from outside the cluster (a forgery), and
    /// collects what it does.
    fn forge(&mut self, i: usize, message: EnrpMessage) {
        let now = self.now;
        self.nodes[i]
            .as_mut()
            .unwrap()
            .handle_peer_message(message, now);
        self.drain(i);
    }

    /// Runs timers for `ms` milliseconds, 10 ms at a time.
    fn run(&mut self, ms: u64) {
        let end = self.now + Duration::from_millis(ms);
        while self.now < end {
            self.now += Duration::from_millis(10);
            for i in 0..self.nodes.len() {
                let now = self.now;
                if let Some(r) = self.nodes[i].as_mut() {
                    r.handle_timeout(now);
                    self.drain(i);
                }
            }
            self.settle();
        }
    }

    fn register(&mut self, i: usize, connection: u64, element: PoolElement) {
        let now = self.now;
        let r = self.nodes[i].as_mut().unwrap();
        let c = ConnectionId(connection);
        r.handle_connect(c, Some(address(100 + connection as usize)), None, now);
        r.handle_message(
            c,
            AsapMessage::Registration {
                pool_handle: PoolHandle::from("p"),
                pool_element: element,
                auth_token: None,
            },
            now,
        );
        self.drain(i);
        self.settle();
    }

    /// Hands node `i` a message from the PE on `connection`.
    fn pe_says(&mut self, i: usize, connection: u64, message: AsapMessage) {
        let now = self.now;
        self.nodes[i]
            .as_mut()
            .unwrap()
            .handle_message(ConnectionId(connection), message, now);
        self.drain(i);
        self.settle();
    }

    /// The PE on `connection` to node `i` answers the keep-alives it was
    /// sent there; returns how many.
    fn answer_keep_alives(&mut self, i: usize, connection: u64) -> usize {
        let mut asked = Vec::new();
        self.asap.retain(|(node, c, message)| match message {
            AsapMessage::EndpointKeepAlive {
                pool_handle,
                pe_id: Some(id),
                ..
            } if *node == i && *c == connection => {
                asked.push((pool_handle.clone(), *id));
                false
            }
            _ => true,
        });
        let n = asked.len();
        for (pool_handle, pe_id) in asked {
            self.pe_says(
                i,
                connection,
                AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id },
            );
        }
        n
    }

    /// (PE id, home id) of every PE node `i` holds, sorted.
    fn view(&self, i: usize) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self
            .node(i)
            .handlespace()
            .pools()
            .flat_map(|p| p.iter())
            .map(|e| (e.element().id.0, e.element().home_registrar.0))
            .collect();
        v.sort_unstable();
        v
    }

    fn sent(&self, body: impl Fn(&EnrpBody) -> bool) -> bool {
        self.wire.iter().any(|(_, m)| body(&m.body))
    }
}

#[test]
fn a_registration_reaches_every_peer_by_handle_update() {
    let mut c = Cluster::new(&[1, 2, 3]);
    assert!((0..3).all(|i| c.node(i).is_serving()));
    assert_eq!(c.node(0).peers().len(), 2);
    c.register(0, 1, pe(10));
    for i in 0..3 {
        assert_eq!(c.view(i), [(10, 1)], "registrar {i}");
    }
    // A deregistration too.
    let now = c.now;
    c.nodes[0].as_mut().unwrap().handle_message(
        ConnectionId(1),
        AsapMessage::Deregistration {
            pool_handle: PoolHandle::from("p"),
            pe_id: PoolElementId(10),
        },
        now,
    );
    c.drain(0);
    c.settle();
    for i in 0..3 {
        assert!(c.view(i).is_empty(), "registrar {i}");
    }
}

#[test]
fn a_new_registrar_copies_its_mentor_page_by_page_before_serving() {
    let mut c = Cluster::with_page_size(&[1, 2], 3);
    for id in 1..=10 {
        c.register(0, u64::from(id), pe(id));
    }
    c.nodes.push(None);
    c.cut.push(false);
    c.start(2, 3);
    // Hunting: a resolution waits until the table is copied.
    assert!(!c.node(2).is_serving());
    let now = c.now;
    let r = c.nodes[2].as_mut().unwrap();
    r.handle_connect(ConnectionId(99), None, None, now);
    r.handle_message(
        ConnectionId(99),
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: PoolHandle::from("p"),
            items: Some(u32::MAX),
        },
        now,
    );
    c.drain(2);
    assert!(
        c.asap.iter().all(|(i, _, _)| *i != 2),
        "answered while hunting"
    );
    let requests_before = c
        .wire
        .iter()
        .filter(|(_, m)| matches!(m.body, EnrpBody::HandleTableRequest { .. }))
        .count();
    assert_eq!(requests_before, 0, "no mentor yet");
    c.settle();
    assert!(c.node(2).is_serving());
    assert_eq!(c.view(2), c.view(0));
    assert_eq!(c.view(2).len(), 10);
    // Four pages of at most three PEs.
    let synchronized: Vec<&Event> = c
        .events
        .iter()
        .filter(|(i, _)| *i == 2)
        .map(|(_, e)| e)
        .filter(|e| matches!(e, Event::Synchronized { .. }))
        .collect();
    assert_eq!(
        synchronized,
        [&Event::Synchronized {
            peer: RegistrarId(1),
            elements: 10
        }]
    );
    // The held resolution was answered, with all ten.
    let answer = c.asap.iter().find(|(i, conn, _)| *i == 2 && *conn == 99);
    match answer {
        Some((_, _, AsapMessage::HandleResolutionResponse { outcome, .. })) => match outcome {
            hapool_wire::ResolutionOutcome::Members { elements, .. } => {
                assert_eq!(elements.len(), 10);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dead_registrar_is_taken_over_by_one_peer() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    c.register(0, 2, pe(11));
    c.nodes[0] = None;
    c.cut[0] = true;
    // Probed after max-time-last-heard, dead after max-time-no-response,
    // taken over after the acks.
    c.run(600);
    let homes: Vec<Vec<(u32, u32)>> = (1..3).map(|i| c.view(i)).collect();
    assert_eq!(homes[0], homes[1]);
    let home = homes[0][0].1;
    assert!(home == 2 || home == 3);
    assert!(homes[0].iter().all(|(_, h)| *h == home));
    let takeovers: Vec<&Event> = c
        .events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, Event::TakenOver { by, .. } if by.0 == home))
        .collect();
    assert_eq!(
        takeovers.len(),
        2,
        "the winner and the other peer record it"
    );
}

#[test]
fn the_lower_id_wins_a_takeover_race() {
    let mut c = Cluster::new(&[9, 5, 7]);
    c.register(0, 1, pe(10));
    c.nodes[0] = None;
    c.cut[0] = true;
    c.run(600);
    assert_eq!(c.view(1), [(10, 5)]);
    assert_eq!(c.view(2), [(10, 5)]);
}

#[test]
fn a_registrar_cut_off_and_back_keeps_its_connected_pes() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    // Registrar 0 is cut off: the others declare it dead and take its PE
    // over. The PE is still connected to registrar 0, so when the cut
    // heals, registrar 0 claims it again and everyone agrees.
    c.cut[0] = true;
    c.run(400);
    assert_eq!(c.view(1), [(10, 2)]);
    c.cut[0] = false;
    c.run(1_000);
    for i in 0..3 {
        assert_eq!(c.view(i), [(10, 1)], "registrar {i}");
    }
}

#[test]
fn an_audit_mismatch_resynchronises_only_that_peer() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    c.register(1, 2, pe(20));
    // Registrar 2 misses registrar 0's next registration.
    c.cut[2] = true;
    c.register(0, 3, pe(11));
    c.cut[2] = false;
    assert_eq!(c.view(2), [(10, 1), (20, 2)]);
    c.run(150);
    assert_eq!(c.view(2), [(10, 1), (11, 1), (20, 2)]);
    let mismatches: Vec<&Event> = c
        .events
        .iter()
        .filter(|(i, _)| *i == 2)
        .map(|(_, e)| e)
        .filter(|e| matches!(e, Event::AuditMismatch { .. }))
        .collect();
    assert!(!mismatches.is_empty());
    assert!(
        mismatches
            .iter()
            .all(|e| matches!(e, Event::AuditMismatch { peer, .. } if peer.0 == 1))
    );
    assert!(!c.sent(|b| matches!(
        b,
        EnrpBody::HandleTableRequest {
            own_children_only: false
        }
    )));
}

#[test]
fn a_late_deletion_from_an_old_home_does_not_remove_a_moved_pe() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    // The PE moves to registrar 1 (a new connection there) ...
    c.register(1, 2, pe(10));
    assert_eq!(c.view(1), [(10, 2)]);
    assert_eq!(c.view(2), [(10, 2)]);
    // (registrar 0, where its connection is still open, asks it)
    assert_eq!(c.view(0), [(10, 1)]);
    assert!(c.asap.iter().any(|(node, connection, m)| *node == 0
        && *connection == 1
        && matches!(m, AsapMessage::EndpointKeepAlive { .. })));
    // ... and then its old connection to registrar 0 ends.
    let now = c.now;
    c.nodes[0]
        .as_mut()
        .unwrap()
        .handle_disconnect(ConnectionId(1), now);
    c.drain(0);
    c.settle();
    for i in 0..3 {
        assert_eq!(c.view(i), [(10, 2)], "registrar {i}");
    }
}

#[test]
fn messages_for_another_registrar_are_ignored() {
    let mut c = Cluster::new(&[1, 2]);
    let forged = EnrpMessage {
        sender: RegistrarId(2),
        receiver: RegistrarId(77),
        body: EnrpBody::TakeoverServer {
            target: RegistrarId(1),
        },
    };
    c.forge(0, forged);
    assert!(c.events.iter().any(|(i, e)| *i == 0
        && matches!(e, Event::PeerMessageIgnored { receiver, .. } if receiver.0 == 77)));
    assert_eq!(c.node(0).peers().len(), 1);
}

#[test]
fn a_presence_giving_this_registrars_own_address_is_ignored() {
    let mut c = Cluster::new(&[1, 2, 3]);
    let forged = EnrpMessage {
        sender: RegistrarId(77),
        receiver: RegistrarId(1),
        body: EnrpBody::Presence {
            reply_required: true,
            checksum: 0,
            server_info: Some(ServerInformation {
                registrar_id: RegistrarId(77),
                transport: Transport::tcp(address(0)),
            }),
        },
    };
    c.forge(0, forged);
    assert!(c.events.iter().any(|(i, e)| *i == 0
        && matches!(e, Event::PeerClaimsOwnAddress { sender, address: a }
            if sender.0 == 77 && *a == address(0))));
    let mut peers: Vec<u32> = c.node(0).peers().iter().map(|p| p.id.0).collect();
    peers.sort_unstable();
    assert_eq!(peers, [2, 3], "registrar 0 took itself for a peer");
    c.settle();
    assert_eq!(c.node(0).peers().len(), 2);
}

#[test]
fn a_registrar_added_with_one_peer_finds_the_whole_cluster() {
    let mut c = Cluster::new(&[1, 2]);
    c.register(0, 1, pe(10));
    c.register(1, 2, pe(20));
    // The newcomer knows only registrar 0; the list from its mentor names
    // registrar 1.
    c.nodes.push(None);
    c.cut.push(false);
    let mut config = RegistrarConfig::new(RegistrarId(3));
    config.enrp = EnrpConfig {
        address: Some(address(2)),
        peers: vec![address(0)],
        ..EnrpConfig::fast(HEARTBEAT)
    };
    let mut r = Registrar::new(config);
    r.handle_start(c.now);
    c.nodes[2] = Some(r);
    c.drain(2);
    c.settle();
    c.run(50);
    assert!(c.node(2).is_serving());
    assert_eq!(c.view(2), [(10, 1), (20, 2)]);
    let mut peers: Vec<u32> = c.node(2).peers().iter().map(|p| p.id.0).collect();
    peers.sort_unstable();
    assert_eq!(peers, [1, 2]);
    assert!(c.node(1).peers().iter().any(|p| p.id.0 == 3));
    // Removed again (stopped): the others notice, and nothing was its.
    c.nodes[2] = None;
    c.cut[2] = true;
    c.run(600);
    assert!(c.node(0).peers().iter().all(|p| p.id.0 != 3));
    assert_eq!(c.view(0), [(10, 1), (20, 2)]);
}

#[test]
fn a_pe_that_leaves_its_old_home_without_a_word_moves_when_it_does_not_answer() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    // The PE registers at registrar 1; its connection to registrar 0 stays
    // open but nothing answers there any more (a host cut off).
    c.register(1, 2, pe(10));
    assert_eq!(c.view(0), [(10, 1)]);
    for _ in 0..51 {
        c.answer_keep_alives(1, 2);
        c.run(100);
    }
    for i in 0..3 {
        assert_eq!(c.view(i), [(10, 2)], "registrar {i}");
    }
    assert!(
        c.events
            .iter()
            .any(|(i, e)| *i == 0
                && matches!(e, Event::Claimed { by, kept: false, .. } if by.0 == 2))
    );
    // Taken without a deletion: nothing else was announced.
    assert!(
        !c.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Removed { .. }))
    );
}

#[test]
fn a_late_registration_from_a_registrar_back_from_a_stall_leaves_the_pe_at_its_new_home() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    // Registrar 0 stalls (a stopped process): its peers declare it dead
    // and take the PE over; the PE, whose re-registration there went
    // unanswered, registers at registrar 1.
    let stalled = c.nodes[0].take();
    c.cut[0] = true;
    c.run(600);
    c.register(1, 2, pe(10));
    assert_eq!(c.view(1), [(10, 2)]);
    assert_eq!(c.view(2), [(10, 2)]);
    // Back, registrar 0 reads what waited in its sockets: the PE's
    // re-registration, then the end of that connection. It announces the
    // PE as its own, then deletes it.
    c.nodes[0] = stalled;
    c.cut[0] = false;
    c.pe_says(
        0,
        1,
        AsapMessage::Registration {
            pool_handle: PoolHandle::from("p"),
            pool_element: pe(10),
            auth_token: None,
        },
    );
    let now = c.now;
    c.nodes[0]
        .as_mut()
        .unwrap()
        .handle_disconnect(ConnectionId(1), now);
    c.drain(0);
    c.settle();
    // Registrar 1 has the PE on a live connection: it asks the PE, which
    // answers there, and the others hear that it stays.
    assert_eq!(c.view(1), [(10, 2)]);
    assert_eq!(c.answer_keep_alives(1, 2), 1);
    assert_eq!(c.view(1), [(10, 2)]);
    assert_eq!(c.view(2), [(10, 2)]);
    // Registrar 0 is a peer again at its next presence, and copies.
    c.run(300);
    for i in 0..3 {
        assert_eq!(c.view(i), [(10, 2)], "registrar {i}");
    }
    assert!(
        c.events.iter().any(
            |(i, e)| *i == 1 && matches!(e, Event::Claimed { by, kept: true, .. } if by.0 == 1)
        )
    );
}

#[test]
fn a_pe_answering_at_two_registrars_is_announced_at_most_once_a_keep_alive_interval() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.register(0, 1, pe(10));
    // A PE that keeps both connections and answers on each: registrars 0
    // and 1 each find it theirs.
    c.register(1, 2, pe(10));
    let before = c.updates;
    for _ in 0..200 {
        c.answer_keep_alives(0, 1);
        c.answer_keep_alives(1, 2);
        c.run(10);
    }
    // Two seconds, a keep-alive interval of five: each registrar announced
    // it at most once after the first claim.
    assert!(
        c.updates - before <= 2 * 2,
        "{} announcements",
        c.updates - before
    );
    for i in 0..3 {
        assert_eq!(c.view(i).len(), 1, "registrar {i}");
    }
}

#[test]
fn a_pe_taken_over_gets_a_registration_life_from_the_takeover() {
    let mut c = Cluster::new(&[1, 2, 3]);
    // A life of one keep-alive round (the shortest a registrar keeps), which
    // the PE's keep-alive answers renew at its home, but not at the peers.
    let mut short = pe(10);
    short.registration_life = 10_000;
    c.register(0, 1, short);
    c.run(5_000);
    assert_eq!(c.answer_keep_alives(0, 1), 1);
    c.run(4_900);
    // Its home dies 9.9 s after the registration the peers heard.
    c.nodes[0] = None;
    c.cut[0] = true;
    c.run(600);
    assert_eq!(c.view(1), [(10, 2)]);
    assert_eq!(c.view(2), [(10, 2)]);
    // The new home keeps it a whole life from the takeover ...
    c.run(9_000);
    assert_eq!(c.view(1), [(10, 2)]);
    // ... and no longer unless it registers there.
    c.run(1_500);
    assert!(c.view(1).is_empty());
}
