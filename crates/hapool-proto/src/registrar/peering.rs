//! The registrar's ENRP side (RFC 5353): how registrars share the
//! handlespace, audit each other and take over a dead peer's PEs.
//!
//! # Addressing
//!
//! Peers are reached by their ENRP endpoint address: every message to a
//! peer is a [`Transmit::Peer`] with that address, and the driver keeps one
//! outgoing connection per address. Messages from peers arrive through
//! [`Registrar::handle_peer_message`], whatever connection carried them; the
//! sender is known by the registrar id in the ENRP header, and its address by
//! the server information of its ENRP_PRESENCE. A lost message is repaired by
//! the protocol itself: presences carry checksums, and a checksum that does
//! not match starts a resynchronisation of that peer's PEs.
//!
//! # Who decides where a PE lives
//!
//! - A HANDLE_UPDATE is a fresh registration at its sender: it moves a PE,
//!   except one on a live connection here. That one the PE settles: it is
//!   sent a keep-alive, and stays if it answers here, or takes the peer's
//!   copy if it leaves (`Registrar::claim`). A late update (a registration
//!   that waited in a stalled registrar's socket while the PE moved on,
//!   then deleted again) thus cannot take a PE from its live home.
//! - A handle table only fills in: it never moves a PE away from a home that
//!   is alive, and a registrar never lets a table or a takeover move a PE it
//!   supervises; it answers such a claim by announcing the PE again.
//! - A DEL_PE removes a PE only when it names the same home as the copy
//!   here, so a late deletion from a PE's old home cannot remove it from its
//!   new one.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hapool_handlespace::Origin;
use hapool_wire::{
    EnrpBody, EnrpMessage, PoolElement, PoolElementId, PoolEntries, PoolHandle, RegistrarId,
    ServerInformation, Transport, UpdateAction,
};

use super::{Event, Registrar, RemovalReason, Transmit};
use hapool_handlespace::ConnectionId;
use hapool_wire::AsapMessage;

/// Timers and limits of ENRP. The defaults are those of RFC 5353; every
/// timer also works at a 100 ms scale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrpConfig {
    /// This registrar's ENRP endpoint, as peers reach it. `None` (the
    /// default) runs the registrar alone, without ENRP.
    pub address: Option<SocketAddr>,
    /// ENRP endpoints of peers to find at start-up and to keep looking for.
    pub peers: Vec<SocketAddr>,
    /// Between two ENRP_PRESENCE to every peer (PEER-HEARTBEAT-CYCLE).
    /// Default 30 s.
    pub heartbeat_cycle: Duration,
    /// Silence after which a peer is asked for a presence
    /// (MAX-TIME-LAST-HEARD). Default 61 s.
    pub max_time_last_heard: Duration,
    /// How long a peer has to answer before it is declared dead
    /// (MAX-TIME-NO-RESPONSE); also the wait for a handle table page.
    /// Default 5 s.
    pub max_time_no_response: Duration,
    /// Per-attempt wait for a mentor at start-up (TIMEOUT-SERVER-HUNT).
    /// Default 2 s.
    pub server_hunt_timeout: Duration,
    /// Attempts to find a mentor before serving alone
    /// (MAX-NUMBER-SERVER-HUNT). Default 3.
    pub server_hunt_attempts: u32,
    /// How long a takeover waits for the acknowledgements of the other
    /// peers. Default 5 s.
    pub takeover_expiry: Duration,
    /// PEs per ENRP_HANDLE_TABLE_RESPONSE page. Default 128.
    pub page_size: usize,
    /// Also announce presence to the ENRP multicast group (the driver
    /// knows which) every heartbeat, and look for a mentor there at
    /// start-up: registrars find each other without a peer list. Off by
    /// default.
    pub multicast: bool,
}

impl Default for EnrpConfig {
    fn default() -> Self {
        Self {
            address: None,
            peers: Vec::new(),
            heartbeat_cycle: Duration::from_secs(30),
            max_time_last_heard: Duration::from_secs(61),
            max_time_no_response: Duration::from_secs(5),
            server_hunt_timeout: Duration::from_secs(2),
            server_hunt_attempts: 3,
            takeover_expiry: Duration::from_secs(5),
            page_size: 128,
            multicast: false,
        }
    }
}

impl EnrpConfig {
    /// The defaults with every timer scaled to `heartbeat`: presence every
    /// `heartbeat`, a peer probed after 2 heartbeats of silence and declared
    /// dead one heartbeat later. For clusters that must fail over fast.
    pub fn fast(heartbeat: Duration) -> Self {
        Self {
            heartbeat_cycle: heartbeat,
            max_time_last_heard: heartbeat * 2 + heartbeat / 10,
            max_time_no_response: heartbeat,
            server_hunt_timeout: heartbeat,
            takeover_expiry: heartbeat,
            ..Self::default()
        }
    }
}

/// Where the registrar stands in joining its cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Looking for a mentor and copying its handlespace; ASAP requests wait.
    Hunting {
        until: Instant,
        attempts_left: u32,
        mentor: Option<RegistrarId>,
    },
    /// Serving.
    Serving,
}

/// A peer registrar that is alive as far as this one knows.
#[derive(Debug)]
struct Peer {
    address: SocketAddr,
    last_heard: Instant,
    /// When an unanswered presence request runs out.
    probe: Option<Instant>,
    /// A handle table being copied from this peer.
    sync: Option<Sync>,
}

#[derive(Debug)]
struct Sync {
    own_children_only: bool,
    seen: HashSet<(PoolHandle, PoolElementId)>,
    deadline: Instant,
}

/// A handle table being sent to a peer, page by page.
#[derive(Debug)]
struct Cursor {
    own_children_only: bool,
    keys: Vec<(PoolHandle, PoolElementId)>,
    next: usize,
    last_used: Instant,
}

#[derive(Debug)]
struct Takeover {
    deadline: Instant,
    awaiting: BTreeSet<RegistrarId>,
}

/// ENRP state of a registrar.
#[derive(Debug)]
pub(super) struct Peering {
    pub(super) phase: Phase,
    peers: BTreeMap<RegistrarId, Peer>,
    /// Configured and learned ENRP endpoints, looked for while no live peer
    /// is known there.
    addresses: BTreeSet<SocketAddr>,
    next_heartbeat: Option<Instant>,
    takeovers: BTreeMap<RegistrarId, Takeover>,
    cursors: HashMap<RegistrarId, Cursor>,
    /// Homes of PEs here that are neither this registrar nor a live peer,
    /// and since when: taken over when they stay silent.
    orphans: BTreeMap<RegistrarId, Instant>,
    /// ASAP requests that arrived while hunting.
    pub(super) pending: Vec<(ConnectionId, AsapMessage)>,
}

/// ASAP requests held while hunting, at most.
const MAX_PENDING: usize = 10_000;

impl Peering {
    pub(super) fn new() -> Self {
        Self {
            phase: Phase::Serving,
            peers: BTreeMap::new(),
            addresses: BTreeSet::new(),
            next_heartbeat: None,
            takeovers: BTreeMap::new(),
            cursors: HashMap::new(),
            orphans: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    /// Whether ASAP requests must wait (and be queued) now.
    pub(super) fn holds(&self) -> bool {
        matches!(self.phase, Phase::Hunting { .. }) && self.pending.len() < MAX_PENDING
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let hunt = match self.phase {
            Phase::Hunting { until, .. } => Some(until),
            Phase::Serving => None,
        };
        let peers = self
            .peers
            .values()
            .flat_map(|p| [p.probe, p.sync.as_ref().map(|s| s.deadline)]);
        let takeovers = self.takeovers.values().map(|t| Some(t.deadline));
        [hunt, self.next_heartbeat]
            .into_iter()
            .chain(peers)
            .chain(takeovers)
            .flatten()
            .min()
    }
}

/// A summary of one peer, for status pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's id.
    pub id: RegistrarId,
    /// Its ENRP endpoint.
    pub address: SocketAddr,
    /// When it was last heard from.
    pub last_heard: Instant,
    /// How many PEs it is home for, as this registrar sees it.
    pub owned: usize,
}

impl Registrar {
    /// The peers this registrar believes alive, in id order.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peering
            .peers
            .iter()
            .map(|(&id, p)| PeerStatus {
                id,
                address: p.address,
                last_heard: p.last_heard,
                owned: self.handlespace.owned_count(id),
            })
            .collect()
    }

    /// Whether the registrar serves ASAP requests (it has found its mentor
    /// and copied the handlespace, or given up looking).
    pub fn is_serving(&self) -> bool {
        self.peering.phase == Phase::Serving
    }

    fn enrp_enabled(&self) -> bool {
        self.config.enrp.address.is_some()
    }

    /// Starts ENRP: presence requests to the configured peers, and the
    /// hunt for a mentor when there are any.
    pub(super) fn start_peering(&mut self, now: Instant) {
        let Some(own) = self.config.enrp.address else {
            return;
        };
        let addresses: BTreeSet<SocketAddr> = self
            .config
            .enrp
            .peers
            .iter()
            .copied()
            .filter(|a| *a != own)
            .collect();
        self.peering.addresses = addresses.clone();
        self.peering.next_heartbeat = Some(now + self.config.enrp.heartbeat_cycle);
        if addresses.is_empty() && !self.config.enrp.multicast {
            return;
        }
        self.peering.phase = Phase::Hunting {
            until: now + self.config.enrp.server_hunt_timeout,
            attempts_left: self.config.enrp.server_hunt_attempts.saturating_sub(1),
            mentor: None,
        };
        self.hunt();
    }

    /// Asks every known address, and the multicast group, for a presence.
    fn hunt(&mut self) {
        let addresses: Vec<SocketAddr> = self.peering.addresses.iter().copied().collect();
        for address in addresses {
            self.send_presence(address, RegistrarId(0), true);
        }
        self.send_group_presence(true);
    }

    /// A presence to the multicast group, when multicast is on.
    fn send_group_presence(&mut self, reply_required: bool) {
        if !self.config.enrp.multicast {
            return;
        }
        let message = EnrpMessage {
            sender: self.config.id,
            receiver: RegistrarId(0),
            body: EnrpBody::Presence {
                reply_required,
                checksum: self.handlespace.checksum(self.config.id),
                server_info: self.server_info(),
            },
        };
        self.transmits.push_back(Transmit::PeerGroup { message });
    }

    fn server_info(&self) -> Option<ServerInformation> {
        self.config.enrp.address.map(|a| ServerInformation {
            registrar_id: self.config.id,
            transport: Transport::tcp(a),
        })
    }

    fn send_peer(&mut self, to: SocketAddr, receiver: RegistrarId, body: EnrpBody) {
        self.transmits.push_back(Transmit::Peer {
            to,
            message: EnrpMessage {
                sender: self.config.id,
                receiver,
                body,
            },
        });
    }

    /// Sends `body` to peer `id`, when its address is known.
    fn send_to(&mut self, id: RegistrarId, body: EnrpBody) {
        if let Some(address) = self.peering.peers.get(&id).map(|p| p.address) {
            self.send_peer(address, id, body);
        }
    }

    /// Sends `body` to every live peer.
    fn broadcast(&mut self, body: &EnrpBody) {
        let targets: Vec<(RegistrarId, SocketAddr)> = self
            .peering
            .peers
            .iter()
            .map(|(&id, p)| (id, p.address))
            .collect();
        for (id, address) in targets {
            self.send_peer(address, id, body.clone());
        }
    }

    fn send_presence(&mut self, to: SocketAddr, receiver: RegistrarId, reply_required: bool) {
        let body = EnrpBody::Presence {
            reply_required,
            checksum: self.handlespace.checksum(self.config.id),
            server_info: self.server_info(),
        };
        self.send_peer(to, receiver, body);
    }

    /// Tells every peer that a PE this registrar is home for was added or
    /// changed, or that a PE was removed here for good.
    pub(super) fn announce_change(
        &mut self,
        action: UpdateAction,
        pool_handle: &PoolHandle,
        element: &PoolElement,
    ) {
        if !self.enrp_enabled() || self.peering.peers.is_empty() {
            return;
        }
        let body = EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action,
            pool_handle: pool_handle.clone(),
            pool_element: element.clone(),
        };
        self.broadcast(&body);
    }

    /// Whether a removal for `reason` of a PE with home `home` is news for
    /// the peers: removals by the home, and removals on unreachability
    /// reports (which any registrar may act on). Expiry happens everywhere
    /// by itself.
    pub(super) fn removal_is_news(&self, home: RegistrarId, reason: RemovalReason) -> bool {
        home == self.config.id || reason == RemovalReason::Unreachable
    }

    /// An ENRP message arrived from a peer.
    pub fn handle_peer_message(&mut self, message: EnrpMessage, now: Instant) {
        let me = self.config.id;
        let from = message.sender;
        if from == me && message.receiver.0 == 0 {
            // This registrar's own multicast presence, looped back.
            return;
        }
        if from == me || from.0 == 0 || (message.receiver.0 != 0 && message.receiver != me) {
            self.events.push_back(Event::PeerMessageIgnored {
                sender: from,
                receiver: message.receiver,
            });
            return;
        }
        if let Some(peer) = self.peering.peers.get_mut(&from) {
            peer.last_heard = now;
            peer.probe = None;
        }
        match message.body {
            EnrpBody::Presence {
                reply_required,
                checksum,
                server_info,
            } => self.on_presence(from, reply_required, checksum, server_info, now),
            EnrpBody::HandleTableRequest { own_children_only } => {
                self.on_table_request(from, own_children_only, now);
            }
            EnrpBody::HandleTableResponse {
                reject,
                more_to_send,
                pools,
            } => self.on_table_response(from, reject, more_to_send, pools, now),
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pool_element,
                ..
            } => self.on_handle_update(from, action, pool_handle, pool_element, now),
            EnrpBody::ListRequest => {
                let servers = self
                    .peering
                    .peers
                    .iter()
                    .filter(|(id, _)| **id != from)
                    .map(|(&registrar_id, p)| ServerInformation {
                        registrar_id,
                        transport: Transport::tcp(p.address),
                    })
                    .collect();
                self.send_to(
                    from,
                    EnrpBody::ListResponse {
                        reject: false,
                        servers,
                    },
                );
            }
            EnrpBody::ListResponse {
                reject: false,
                servers,
            } => self.on_list(servers),
            EnrpBody::InitTakeover { target } => self.on_init_takeover(from, target),
            EnrpBody::InitTakeoverAck { target } => {
                if let Some(t) = self.peering.takeovers.get_mut(&target) {
                    t.awaiting.remove(&from);
                    if t.awaiting.is_empty() {
                        self.complete_takeover(target, now);
                    }
                }
            }
            EnrpBody::TakeoverServer { target } => self.on_takeover_server(from, target, now),
            EnrpBody::Error { error } => {
                self.events
                    .push_back(Event::PeerError { peer: from, error });
            }
            _ => {}
        }
    }

    fn on_presence(
        &mut self,
        from: RegistrarId,
        reply_required: bool,
        checksum: u16,
        server_info: Option<ServerInformation>,
        now: Instant,
    ) {
        let address = server_info
            .and_then(|s| s.transport.socket_addr())
            .or_else(|| self.peering.peers.get(&from).map(|p| p.address));
        let Some(address) = address else {
            return;
        };
        if Some(address) == self.config.enrp.address {
            self.events.push_back(Event::PeerClaimsOwnAddress {
                sender: from,
                address,
            });
            return;
        }
        // A presence from a peer being taken over cancels the takeover.
        self.peering.takeovers.remove(&from);
        let new = !self.peering.peers.contains_key(&from);
        if new {
            // A registrar that restarted at the same address has a new id:
            // the old one is dead.
            let stale: Vec<RegistrarId> = self
                .peering
                .peers
                .iter()
                .filter(|(_, p)| p.address == address)
                .map(|(&id, _)| id)
                .collect();
            for id in stale {
                self.peer_dead(id, now);
            }
            self.peering.peers.insert(
                from,
                Peer {
                    address,
                    last_heard: now,
                    probe: None,
                    sync: None,
                },
            );
            self.peering.addresses.insert(address);
            self.events.push_back(Event::PeerUp { id: from, address });
        }
        if reply_required || new {
            self.send_presence(address, from, false);
        }
        match self.peering.phase {
            Phase::Hunting {
                mentor: None,
                attempts_left,
                ..
            } => {
                // The first peer to answer is the mentor.
                self.peering.phase = Phase::Hunting {
                    until: now + self.config.enrp.server_hunt_timeout,
                    attempts_left,
                    mentor: Some(from),
                };
                self.send_to(from, EnrpBody::ListRequest);
                self.start_sync(from, false, now);
            }
            Phase::Hunting { .. } => {}
            Phase::Serving => {
                let syncing = self.peering.peers[&from].sync.is_some();
                if !syncing && checksum != self.handlespace.checksum(from) {
                    self.events.push_back(Event::AuditMismatch {
                        peer: from,
                        theirs: checksum,
                        ours: self.handlespace.checksum(from),
                    });
                    self.start_sync(from, true, now);
                }
            }
        }
    }

    fn on_list(&mut self, servers: Vec<ServerInformation>) {
        for server in servers {
            let Some(address) = server.transport.socket_addr() else {
                continue;
            };
            if server.registrar_id == self.config.id
                || Some(address) == self.config.enrp.address
                || self.peering.peers.contains_key(&server.registrar_id)
            {
                continue;
            }
            self.peering.addresses.insert(address);
            self.send_presence(address, server.registrar_id, true);
        }
    }

    fn start_sync(&mut self, from: RegistrarId, own_children_only: bool, now: Instant) {
        let deadline = now + self.config.enrp.max_time_no_response;
        let Some(peer) = self.peering.peers.get_mut(&from) else {
            return;
        };
        peer.sync = Some(Sync {
            own_children_only,
            seen: HashSet::new(),
            deadline,
        });
        self.send_to(from, EnrpBody::HandleTableRequest { own_children_only });
    }

    fn on_table_request(&mut self, from: RegistrarId, own_children_only: bool, now: Instant) {
        let idle = self.config.enrp.max_time_no_response;
        let fresh = match self.peering.cursors.get(&from) {
            Some(c) => {
                c.own_children_only != own_children_only
                    || c.next >= c.keys.len()
                    || now.duration_since(c.last_used) >= idle
            }
            None => true,
        };
        if fresh {
            let keys = self.table_keys(own_children_only);
            self.peering.cursors.insert(
                from,
                Cursor {
                    own_children_only,
                    keys,
                    next: 0,
                    last_used: now,
                },
            );
        }
        let page_size = self.config.enrp.page_size.max(1);
        let cursor = self.peering.cursors.get_mut(&from).expect("inserted above");
        cursor.last_used = now;
        let mut pools: Vec<PoolEntries> = Vec::new();
        let mut count = 0;
        while count < page_size && cursor.next < cursor.keys.len() {
            let (handle, id) = &cursor.keys[cursor.next];
            cursor.next += 1;
            let Some(entry) = self.handlespace.get(handle, *id) else {
                continue;
            };
            let element = entry.element().clone();
            match pools.last_mut() {
                Some(last) if last.pool_handle == *handle => last.elements.push(element),
                _ => pools.push(PoolEntries {
                    pool_handle: handle.clone(),
                    elements: vec![element],
                }),
            }
            count += 1;
        }
        let more_to_send = cursor.next < cursor.keys.len();
        if !more_to_send {
            self.peering.cursors.remove(&from);
        }
        self.send_to(
            from,
            EnrpBody::HandleTableResponse {
                reject: false,
                more_to_send,
                pools,
            },
        );
    }

    /// The PEs of a handle table, in a stable order: all of them, or only
    /// those this registrar is home for.
    fn table_keys(&self, own_children_only: bool) -> Vec<(PoolHandle, PoolElementId)> {
        let mut keys: Vec<(PoolHandle, PoolElementId)> = if own_children_only {
            self.handlespace
                .owned_by(self.config.id)
                .map(|(h, e)| (h.clone(), e.element().id))
                .collect()
        } else {
            self.handlespace
                .pools()
                .flat_map(|p| p.iter().map(|e| (p.handle().clone(), e.element().id)))
                .collect()
        };
        keys.sort();
        keys
    }

    fn on_table_response(
        &mut self,
        from: RegistrarId,
        reject: bool,
        more_to_send: bool,
        pools: Vec<PoolEntries>,
        now: Instant,
    ) {
        let syncing = self
            .peering
            .peers
            .get(&from)
            .is_some_and(|p| p.sync.is_some());
        let mut seen = Vec::new();
        for entries in pools {
            for element in entries.elements {
                seen.push((entries.pool_handle.clone(), element.id));
                self.fill_in(from, &entries.pool_handle, element, now);
            }
        }
        if !syncing {
            return;
        }
        let peer = self.peering.peers.get_mut(&from).expect("syncing peer");
        let sync = peer.sync.as_mut().expect("syncing");
        sync.seen.extend(seen);
        if reject {
            peer.sync = None;
            return;
        }
        if more_to_send {
            sync.deadline = now + self.config.enrp.max_time_no_response;
            let own_children_only = sync.own_children_only;
            self.send_to(from, EnrpBody::HandleTableRequest { own_children_only });
            return;
        }
        let sync = peer.sync.take().expect("syncing");
        if sync.own_children_only {
            // What the peer no longer owns is gone.
            let gone: Vec<(PoolHandle, PoolElementId)> = self
                .handlespace
                .owned_by(from)
                .map(|(h, e)| (h.clone(), e.element().id))
                .filter(|key| !sync.seen.contains(key))
                .collect();
            let mut gone = gone;
            gone.sort();
            for (handle, id) in gone {
                self.handlespace.remove(&handle, id);
            }
        }
        self.events.push_back(Event::Synchronized {
            peer: from,
            elements: sync.seen.len(),
        });
        if let Phase::Hunting {
            mentor: Some(mentor),
            ..
        } = self.peering.phase
            && mentor == from
        {
            self.begin_serving(Some(from), now);
        }
    }

    /// A PE from a peer's handle table: it fills in what is missing here,
    /// but never moves a PE away from a live home.
    fn fill_in(
        &mut self,
        from: RegistrarId,
        handle: &PoolHandle,
        element: PoolElement,
        now: Instant,
    ) {
        let me = self.config.id;
        let key = (handle.clone(), element.id);
        if let Some(s) = self.supervised.get_mut(&key) {
            // The peer believes another home; this registrar has the PE on
            // a live connection, so it says so again, unless the PE is being
            // asked already (`Registrar::claim`) or it said so within the
            // keep-alive interval (two registrars that both hold the PE
            // would otherwise say so at every audit).
            let said_lately = s.reasserted_within(self.config.keep_alive_interval, now);
            if element.home_registrar != me && !said_lately && !self.claims.contains_key(&key) {
                s.reasserted = Some(now);
                self.reassert(handle, element.id);
            }
            return;
        }
        if element.home_registrar == me {
            // Stale: this registrar does not have it. Its presence checksum
            // will put the peer right.
            return;
        }
        if let Some(entry) = self.handlespace.get(handle, element.id) {
            let home = entry.element().home_registrar;
            if home != element.home_registrar
                && home != from
                && (home == me || self.peering.peers.contains_key(&home))
            {
                return;
            }
        }
        self.store_from_peer(from, handle, element, now);
    }

    /// Stores a PE learned from peer `from`.
    pub(super) fn store_from_peer(
        &mut self,
        from: RegistrarId,
        handle: &PoolHandle,
        element: PoolElement,
        now: Instant,
    ) {
        if let Err(e) = self
            .handlespace
            .register(handle, element, Origin::Enrp, now)
        {
            self.events.push_back(Event::PeerUpdateRefused {
                peer: from,
                pool_handle: handle.clone(),
                cause: e.cause().code,
            });
        }
    }

    /// Announces again a PE this registrar supervises.
    pub(super) fn reassert(&mut self, handle: &PoolHandle, id: PoolElementId) {
        if let Some(entry) = self.handlespace.get(handle, id) {
            let element = entry.element().clone();
            self.announce_change(UpdateAction::AddPe, handle, &element);
        }
    }

    fn on_handle_update(
        &mut self,
        from: RegistrarId,
        action: UpdateAction,
        handle: PoolHandle,
        element: PoolElement,
        now: Instant,
    ) {
        let me = self.config.id;
        let key = (handle.clone(), element.id);
        match action {
            UpdateAction::AddPe => {
                if element.home_registrar == me {
                    return;
                }
                if self.supervised.contains_key(&key) {
                    // On a live connection here: the PE settles it.
                    self.claim(from, handle, element, now);
                    return;
                }
                // A fresh registration elsewhere: the PE moved.
                if let Some(sync) = self
                    .peering
                    .peers
                    .get_mut(&from)
                    .and_then(|p| p.sync.as_mut())
                {
                    sync.seen.insert(key);
                }
                self.store_from_peer(from, &handle, element, now);
            }
            UpdateAction::DelPe => {
                self.withdraw_claim(from, &key);
                let same_home = self
                    .handlespace
                    .get(&handle, element.id)
                    .is_some_and(|e| e.element().home_registrar == element.home_registrar);
                if !same_home {
                    return;
                }
                if let Some(sync) = self
                    .peering
                    .peers
                    .get_mut(&from)
                    .and_then(|p| p.sync.as_mut())
                {
                    sync.seen.remove(&key);
                }
                self.unsupervise(&handle, element.id);
                self.handlespace.remove(&handle, element.id);
            }
        }
    }

    fn on_init_takeover(&mut self, from: RegistrarId, target: RegistrarId) {
        if target == self.config.id {
            // Alive: the initiator cancels when it hears this.
            if let Some(address) = self.peering.peers.get(&from).map(|p| p.address) {
                self.send_presence(address, from, false);
            }
            return;
        }
        if self.peering.takeovers.contains_key(&target) && self.config.id.0 < from.0 {
            // Both started: the lower id wins, and that is this registrar.
            return;
        }
        self.peering.takeovers.remove(&target);
        self.send_to(from, EnrpBody::InitTakeoverAck { target });
    }

    fn on_takeover_server(&mut self, from: RegistrarId, target: RegistrarId, now: Instant) {
        self.peering.takeovers.remove(&target);
        if target == self.config.id {
            // Taken over while alive (a partition): the PEs still connected
            // here stay here, and the peers are told so.
            let mut mine: Vec<(PoolHandle, PoolElementId)> =
                self.supervised.keys().cloned().collect();
            mine.sort();
            for (handle, id) in mine {
                self.reassert(&handle, id);
            }
            return;
        }
        if self.peering.peers.remove(&target).is_some() {
            self.peering.cursors.remove(&target);
            self.events.push_back(Event::PeerDown { id: target });
        }
        let taken = self.handlespace.take_over(target, from, now);
        if !taken.is_empty() {
            self.events.push_back(Event::TakenOver {
                target,
                by: from,
                elements: taken.len(),
            });
        }
    }

    /// Peer `id` did not answer in time: it is dead. Its PEs are taken
    /// over.
    fn peer_dead(&mut self, id: RegistrarId, now: Instant) {
        if self.peering.peers.remove(&id).is_none() {
            return;
        }
        self.peering.cursors.remove(&id);
        self.events.push_back(Event::PeerDown { id });
        if self.handlespace.owned_count(id) == 0 || self.peering.takeovers.contains_key(&id) {
            return;
        }
        self.start_takeover(id, now);
    }

    /// Asks every live peer to agree that this registrar takes over `id`.
    fn start_takeover(&mut self, id: RegistrarId, now: Instant) {
        let awaiting: BTreeSet<RegistrarId> = self.peering.peers.keys().copied().collect();
        self.peering.takeovers.insert(
            id,
            Takeover {
                deadline: now + self.config.enrp.takeover_expiry,
                awaiting: awaiting.clone(),
            },
        );
        if awaiting.is_empty() {
            self.complete_takeover(id, now);
            return;
        }
        for peer in awaiting {
            self.send_to(peer, EnrpBody::InitTakeover { target: id });
        }
    }

    /// PEs whose home is not a known peer (their home died before this
    /// registrar heard from it, or the takeover was lost) are taken over
    /// once that home stayed silent as long as a dead peer would have.
    fn adopt_orphans(&mut self, now: Instant) {
        if self.peering.phase != Phase::Serving {
            return;
        }
        let me = self.config.id;
        let orphaned: Vec<RegistrarId> = self
            .handlespace
            .owners()
            .into_iter()
            .filter(|id| *id != me && !self.peering.peers.contains_key(id))
            .collect();
        self.peering.orphans.retain(|id, _| orphaned.contains(id));
        let patience = self.config.enrp.max_time_last_heard + self.config.enrp.max_time_no_response;
        for id in orphaned {
            let since = *self.peering.orphans.entry(id).or_insert(now);
            if now.duration_since(since) >= patience && !self.peering.takeovers.contains_key(&id) {
                self.peering.orphans.remove(&id);
                self.start_takeover(id, now);
            }
        }
    }

    fn complete_takeover(&mut self, target: RegistrarId, now: Instant) {
        self.peering.takeovers.remove(&target);
        if self.peering.peers.contains_key(&target) {
            return;
        }
        let me = self.config.id;
        let taken = self.handlespace.take_over(target, me, now);
        self.broadcast(&EnrpBody::TakeoverServer { target });
        self.events.push_back(Event::TakenOver {
            target,
            by: me,
            elements: taken.len(),
        });
    }

    fn begin_serving(&mut self, mentor: Option<RegistrarId>, now: Instant) {
        self.peering.phase = Phase::Serving;
        self.events.push_back(Event::Serving {
            mentor,
            elements: self.handlespace.len(),
        });
        let pending = std::mem::take(&mut self.peering.pending);
        for (connection, message) in pending {
            self.handle_message(connection, message, now);
        }
    }

    /// ENRP timers: the hunt, presences, probes of silent peers, table
    /// pages that did not come, and takeovers that waited long enough.
    pub(super) fn peering_timeout(&mut self, now: Instant) {
        if !self.enrp_enabled() {
            return;
        }
        if let Phase::Hunting {
            until,
            attempts_left,
            ..
        } = self.peering.phase
            && until <= now
        {
            if attempts_left == 0 {
                self.begin_serving(None, now);
            } else {
                self.peering.phase = Phase::Hunting {
                    until: now + self.config.enrp.server_hunt_timeout,
                    attempts_left: attempts_left - 1,
                    mentor: None,
                };
                self.hunt();
            }
        }
        if self.peering.next_heartbeat.is_some_and(|due| due <= now) {
            self.peering.next_heartbeat = Some(now + self.config.enrp.heartbeat_cycle);
            let live: Vec<(RegistrarId, SocketAddr)> = self
                .peering
                .peers
                .iter()
                .map(|(&id, p)| (id, p.address))
                .collect();
            let live_addresses: BTreeSet<SocketAddr> = live.iter().map(|(_, a)| *a).collect();
            for (id, address) in live {
                self.send_presence(address, id, false);
            }
            let missing: Vec<SocketAddr> = self
                .peering
                .addresses
                .difference(&live_addresses)
                .copied()
                .collect();
            for address in missing {
                self.send_presence(address, RegistrarId(0), true);
            }
            self.send_group_presence(false);
            self.adopt_orphans(now);
        }
        let last_heard = self.config.enrp.max_time_last_heard;
        let no_response = self.config.enrp.max_time_no_response;
        let mut probes = Vec::new();
        let mut dead = Vec::new();
        for (&id, peer) in &mut self.peering.peers {
            match peer.probe {
                Some(deadline) if deadline <= now => dead.push(id),
                Some(_) => {}
                None if peer.last_heard + last_heard <= now => {
                    peer.probe = Some(now + no_response);
                    probes.push((id, peer.address));
                }
                None => {}
            }
            if peer.sync.as_ref().is_some_and(|s| s.deadline <= now) {
                peer.sync = None;
            }
        }
        for (id, address) in probes {
            self.send_presence(address, id, true);
        }
        for id in dead {
            self.peer_dead(id, now);
        }
        let expired: Vec<RegistrarId> = self
            .peering
            .takeovers
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for target in expired {
            self.complete_takeover(target, now);
        }
    }

    /// When the ENRP timers need [`Registrar::handle_timeout`] next.
    pub(super) fn peering_next_timeout(&self) -> Option<Instant> {
        if !self.enrp_enabled() {
            return None;
        }
        let last_heard = self.config.enrp.max_time_last_heard;
        let probe_due = self
            .peering
            .peers
            .values()
            .filter(|p| p.probe.is_none())
            .map(|p| p.last_heard + last_heard)
            .min();
        [self.peering.next_timeout(), probe_due]
            .into_iter()
            .flatten()
            .min()
    }
}
