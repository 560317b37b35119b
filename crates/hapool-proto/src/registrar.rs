//! The registrar's ASAP side: registrations, deregistrations, handle
//! resolutions, keep-alive supervision of the PEs it is home for, and
//! unreachability reports, all without I/O.
//!
//! # Call order
//!
//! The driver owns the sockets and the clock. It calls
//! [`Registrar::handle_start`] once when it starts serving. For each
//! connection it calls
//! [`Registrar::handle_connect`] once, [`Registrar::handle_message`] for
//! every decoded message and [`Registrar::handle_disconnect`] when the
//! connection ends. After each of these calls, and after
//! [`Registrar::handle_timeout`], it drains [`Registrar::poll_transmit`]
//! (messages to send) and [`Registrar::poll_event`] (what changed, for ENRP,
//! logs and metrics), then sleeps until [`Registrar::poll_timeout`] and calls
//! `handle_timeout` with the time it woke.
//!
//! ENRP messages from peer registrars go to
//! [`Registrar::handle_peer_message`]; messages to peers come out of
//! `poll_transmit` as [`Transmit::Peer`]. The [`peering`] module describes
//! that side.

pub(crate) mod peering;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hapool_handlespace::{
    ConnectionId, Handlespace, HandlespaceConfig, LookupError, Origin, Registered, Registrant,
    Unreachable,
};
use hapool_wire::{
    AsapMessage, CauseCode, EnrpMessage, ErrorCause, OperationError, PoolElement, PoolElementId,
    PoolHandle, RegistrarId, ResolutionOutcome, Transport, UpdateAction,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::rate::{RateLimit, TokenBucket};
use peering::{EnrpConfig, Peering};

/// Every timer and limit of a registrar.
#[derive(Clone, Debug)]
pub struct RegistrarConfig {
    /// This registrar's identifier (random at start-up, never 0).
    pub id: RegistrarId,
    /// How often a PE this registrar is home for is sent a keep-alive.
    /// Default 5 s; works down to 100 ms.
    pub keep_alive_interval: Duration,
    /// How long a PE has to answer a keep-alive before it is removed.
    /// Default 5 s; works down to 100 ms.
    pub keep_alive_timeout: Duration,
    /// Limits of the handlespace.
    pub handlespace: HandlespaceConfig,
    /// Registrations (and re-registrations) one connection may send.
    /// Default 100/s with a burst of 200.
    pub registration_rate: RateLimit,
    /// Handle resolutions one connection may send. Default 1,000/s with a
    /// burst of 2,000.
    pub resolution_rate: RateLimit,
    /// Unreachability reports one connection may send. Default 1/s with a
    /// burst of 5, so that one pool user cannot empty a pool.
    pub unreachable_rate: RateLimit,
    /// Seed of the random choices (weighted selection policies).
    pub seed: u64,
    /// How often to send ASAP_SERVER_ANNOUNCE, and where this registrar is
    /// reached; `None` (the default) sends none.
    pub announce: Option<Announcement>,
    /// Who may register into which pools. Empty: anyone into any pool (as
    /// RFC 5352 has it). Otherwise a registration into a pool needs an
    /// authenticated identity named by a rule whose pattern matches the
    /// pool; pools no rule matches take no registrations at all.
    pub rules: Vec<RegistrationRule>,
    /// The cluster: this registrar's ENRP endpoint, its peers and the ENRP
    /// timers. Off by default.
    pub enrp: EnrpConfig,
}

/// What a registrar announces, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// Between announcements (RFC 5352 suggests 1 s).
    pub interval: Duration,
    /// Where this registrar's ASAP endpoints are.
    pub transports: Vec<Transport>,
}

/// One authorization rule: these identities, and registrations carrying
/// one of these tokens, may register into pools whose handle matches one
/// of these patterns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationRule {
    /// Pool handle patterns: an exact handle, or a prefix ending in `*`.
    pub pools: Vec<String>,
    /// Authenticated identities (such as TLS client certificate names).
    pub identities: Vec<String>,
    /// Shared secrets a registration may carry (the authentication token
    /// parameter).
    pub tokens: Vec<String>,
}

impl RegistrationRule {
    /// Whether this rule covers `pool`.
    pub fn matches(&self, pool: &PoolHandle) -> bool {
        self.pools
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => pool.as_bytes().starts_with(prefix.as_bytes()),
                None => pool.as_bytes() == pattern.as_bytes(),
            })
    }
}

/// Whether a registration from `identity` carrying `token` may go into
/// `pool` under `rules`.
fn authorized(
    rules: &[RegistrationRule],
    pool: &PoolHandle,
    identity: Option<&str>,
    token: Option<&[u8]>,
) -> bool {
    if rules.is_empty() {
        return true;
    }
    rules.iter().filter(|rule| rule.matches(pool)).any(|rule| {
        identity.is_some_and(|id| rule.identities.iter().any(|name| name == id))
            || token.is_some_and(|t| rule.tokens.iter().any(|s| same_secret(s.as_bytes(), t)))
    })
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl RegistrarConfig {
    /// The defaults, for registrar `id`.
    pub fn new(id: RegistrarId) -> Self {
        Self {
            id,
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            handlespace: HandlespaceConfig::default(),
            registration_rate: RateLimit {
                per_second: 100.0,
                burst: 200,
            },
            resolution_rate: RateLimit {
                per_second: 1000.0,
                burst: 2000,
            },
            unreachable_rate: RateLimit {
                per_second: 1.0,
                burst: 5,
            },
            seed: u64::from(id.0),
            announce: None,
            rules: Vec::new(),
            enrp: EnrpConfig::default(),
        }
    }
}

/// A message to send, or a connection to close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send `message` on `connection`.
    Send {
        /// The connection.
        connection: ConnectionId,
        /// The message.
        message: AsapMessage,
    },
    /// Announce this registrar (ASAP_SERVER_ANNOUNCE) on the announcement
    /// channel (UDP, usually multicast).
    Announce {
        /// The ASAP_SERVER_ANNOUNCE.
        message: AsapMessage,
    },
    /// Send an ENRP message (a presence) to the ENRP multicast group.
    PeerGroup {
        /// The message.
        message: EnrpMessage,
    },
    /// Send an ENRP message to the peer registrar whose ENRP endpoint is
    /// `to`.
    Peer {
        /// The peer's ENRP endpoint.
        to: SocketAddr,
        /// The message.
        message: EnrpMessage,
    },
}

/// Why a PE left the handlespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalReason {
    /// It deregistered.
    Deregistered,
    /// It did not answer a keep-alive in time.
    KeepAliveTimeout,
    /// The connection it registered on ended.
    ConnectionLost,
    /// Enough distinct pool users reported it unreachable.
    Unreachable,
    /// Its registration life ran out.
    Expired,
}

/// What changed, for ENRP (HANDLE_UPDATE), logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A PE registered or re-registered here; this registrar is its home.
    Registered {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE as stored (home and ASAP transport filled in).
        element: PoolElement,
        /// Whether it is new (else an update).
        added: bool,
    },
    /// A PE was removed.
    Removed {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        element: PoolElement,
        /// Why.
        reason: RemovalReason,
    },
    /// A request was refused (a pool user or PE misbehaved or hit a limit).
    Refused {
        /// The connection.
        connection: ConnectionId,
        /// What was asked.
        request: &'static str,
        /// The cause sent back (or that would have been).
        cause: CauseCode,
    },
    /// A peer registrar was heard from for the first time (or again after
    /// it was declared dead).
    PeerUp {
        /// The peer.
        id: RegistrarId,
        /// Its ENRP endpoint.
        address: SocketAddr,
    },
    /// A peer registrar did not answer in time, or was taken over.
    PeerDown {
        /// The peer.
        id: RegistrarId,
    },
    /// The PEs of a dead registrar got a new home.
    TakenOver {
        /// The registrar taken over.
        target: RegistrarId,
        /// The new home (this registrar or a peer).
        by: RegistrarId,
        /// How many PEs moved, as this registrar sees it.
        elements: usize,
    },
    /// A peer's presence carried a checksum that differs from the one
    /// computed here over the PEs that peer is home for.
    AuditMismatch {
        /// The peer.
        peer: RegistrarId,
        /// Its checksum.
        theirs: u16,
        /// The checksum computed here.
        ours: u16,
    },
    /// A handle table copy from a peer finished.
    Synchronized {
        /// The peer.
        peer: RegistrarId,
        /// How many PEs its table held.
        elements: usize,
    },
    /// The registrar serves ASAP requests (after copying its mentor's
    /// handlespace, or alone).
    Serving {
        /// The mentor it copied from, if any answered.
        mentor: Option<RegistrarId>,
        /// PEs in the handlespace.
        elements: usize,
    },
    /// A PE from a peer could not be stored (a limit or a rule of the pool).
    PeerUpdateRefused {
        /// The peer.
        peer: RegistrarId,
        /// The pool.
        pool_handle: PoolHandle,
        /// Why.
        cause: CauseCode,
    },
    /// A peer sent ENRP_ERROR.
    PeerError {
        /// The peer.
        peer: RegistrarId,
        /// What it reported.
        error: OperationError,
    },
    /// A peer's presence gave this registrar's own ENRP address as the
    /// peer's: two registrars configured with one address, or a forgery.
    /// The presence is ignored, so that this registrar does not take
    /// itself for a peer (nor declare dead the peer it has at that address).
    PeerClaimsOwnAddress {
        /// The claimed sender.
        sender: RegistrarId,
        /// The address it gave.
        address: SocketAddr,
    },
    /// A peer announced a PE as registered there while the PE was on a live
    /// connection here, and the PE, asked by a keep-alive, settled it: it
    /// answered here (`kept`: the peers were told it stays), or it left
    /// this connection, and the peer's copy was taken.
    Claimed {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: PoolElementId,
        /// The peer that announced it.
        by: RegistrarId,
        /// Whether the PE stayed with this registrar.
        kept: bool,
    },
    /// An ENRP message was not for this registrar (wrong receiver id) or
    /// claimed to come from it.
    PeerMessageIgnored {
        /// The claimed sender.
        sender: RegistrarId,
        /// The receiver named.
        receiver: RegistrarId,
    },
}

/// Keep-alive state of a PE this registrar is home for.
#[derive(Clone, Copy, Debug)]
struct Supervision {
    connection: ConnectionId,
    /// When the next keep-alive is due, or when the awaited ack times out.
    due: Instant,
    awaiting_ack: bool,
    /// When the peers were last told, after a claim, that the PE is this
    /// registrar's (see [`Registrar::claim`]).
    reasserted: Option<Instant>,
}

impl Supervision {
    /// Whether the peers were told the PE is this registrar's less than
    /// `interval` before `now`.
    fn reasserted_within(&self, interval: Duration, now: Instant) -> bool {
        self.reasserted
            .is_some_and(|at| now.duration_since(at) < interval)
    }
}

struct Connection {
    registrant: Registrant,
    peer: Option<SocketAddr>,
    /// PEs registered on this connection that this registrar supervises.
    elements: BTreeSet<(PoolHandle, PoolElementId)>,
    registrations: TokenBucket,
    resolutions: TokenBucket,
    reports: TokenBucket,
}

/// The registrar state machine. See the module documentation for the call
/// order.
pub struct Registrar {
    config: RegistrarConfig,
    handlespace: Handlespace,
    connections: HashMap<ConnectionId, Connection>,
    supervised: HashMap<(PoolHandle, PoolElementId), Supervision>,
    /// Supervised PEs a peer announced as its own, waiting for the PE to
    /// settle it: the peer, and its copy until it deleted it again (the
    /// peers are told the answer either way).
    claims: HashMap<(PoolHandle, PoolElementId), (RegistrarId, Option<PoolElement>)>,
    timers: BTreeSet<(Instant, PoolHandle, PoolElementId)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: StdRng,
    /// When the next ASAP_SERVER_ANNOUNCE is due (when announcing).
    next_announce: Option<Instant>,
    peering: Peering,
}

impl Registrar {
    /// A registrar with an empty handlespace.
    pub fn new(config: RegistrarConfig) -> Self {
        let mut handlespace = Handlespace::new(config.handlespace.clone());
        handlespace.set_local_registrar(config.id);
        Self {
            handlespace,
            rng: StdRng::seed_from_u64(config.seed),
            config,
            connections: HashMap::new(),
            supervised: HashMap::new(),
            claims: HashMap::new(),
            timers: BTreeSet::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_announce: None,
            peering: Peering::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// The handlespace, to read.
    pub fn handlespace(&self) -> &Handlespace {
        &self.handlespace
    }

    /// The registrar starts serving at `now`: the first announcement (when
    /// announcing) is due at once. Call once, before anything else.
    pub fn handle_start(&mut self, now: Instant) {
        if self.config.announce.is_some() {
            self.next_announce = Some(now);
        }
        self.start_peering(now);
    }

    /// A connection was accepted from `peer`, authenticated as `identity`
    /// when TLS client certificates (or another mechanism) say so.
    pub fn handle_connect(
        &mut self,
        connection: ConnectionId,
        peer: Option<SocketAddr>,
        identity: Option<Arc<str>>,
        now: Instant,
    ) {
        let c = &self.config;
        self.connections.insert(
            connection,
            Connection {
                registrant: Registrant {
                    connection,
                    identity,
                },
                peer,
                elements: BTreeSet::new(),
                registrations: TokenBucket::new(c.registration_rate, now),
                resolutions: TokenBucket::new(c.resolution_rate, now),
                reports: TokenBucket::new(c.unreachable_rate, now),
            },
        );
    }

    /// A connection ended: every PE registered on it is removed at once.
    pub fn handle_disconnect(&mut self, connection: ConnectionId, now: Instant) {
        self.peering.pending.retain(|(c, _)| *c != connection);
        let Some(conn) = self.connections.remove(&connection) else {
            return;
        };
        for (handle, id) in conn.elements {
            self.remove(&handle, id, RemovalReason::ConnectionLost, now);
        }
    }

    /// A message arrived on `connection`.
    pub fn handle_message(&mut self, connection: ConnectionId, message: AsapMessage, now: Instant) {
        if !self.connections.contains_key(&connection) {
            self.handle_connect(connection, None, None, now);
        }
        if self.peering.holds() {
            self.peering.pending.push((connection, message));
            return;
        }
        match message {
            AsapMessage::Registration {
                pool_handle,
                pool_element,
                auth_token,
            } => self.on_registration(
                connection,
                pool_handle,
                pool_element,
                auth_token.as_deref(),
                now,
            ),
            AsapMessage::Deregistration { pool_handle, pe_id } => {
                self.on_deregistration(connection, pool_handle, pe_id);
            }
            AsapMessage::HandleResolution {
                pool_handle, items, ..
            } => self.on_resolution(connection, pool_handle, items, now),
            AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id } => {
                self.on_keep_alive_ack(connection, &pool_handle, pe_id, now);
            }
            AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
                self.on_unreachable(connection, &pool_handle, pe_id, now);
            }
            // Messages a registrar does not act on (cookies and business
            // cards travel between pool users and PEs).
            _ => {}
        }
    }

    fn send(&mut self, connection: ConnectionId, message: AsapMessage) {
        self.transmits.push_back(Transmit::Send {
            connection,
            message,
        });
    }

    fn refused(&mut self, connection: ConnectionId, request: &'static str, cause: CauseCode) {
        self.events.push_back(Event::Refused {
            connection,
            request,
            cause,
        });
    }

    fn on_registration(
        &mut self,
        connection: ConnectionId,
        pool_handle: PoolHandle,
        mut element: PoolElement,
        auth_token: Option<&[u8]>,
        now: Instant,
    ) {
        let conn = self.connections.get_mut(&connection).expect("connected");
        let reject = |cause: ErrorCause, pe_id| AsapMessage::RegistrationResponse {
            reject: true,
            pool_handle: pool_handle.clone(),
            pe_id,
            error: Some(OperationError::single(cause)),
        };
        if !conn.registrations.try_take(now) {
            let cause = ErrorCause::new(CauseCode::LACK_OF_RESOURCES);
            let response = reject(cause, element.id);
            self.send(connection, response);
            self.refused(connection, "registration", CauseCode::LACK_OF_RESOURCES);
            return;
        }
        if !authorized(
            &self.config.rules,
            &pool_handle,
            conn.registrant.identity.as_deref(),
            auth_token,
        ) {
            let code = CauseCode::REJECTION_DUE_TO_SECURITY;
            let response = reject(ErrorCause::new(code), element.id);
            self.send(connection, response);
            self.refused(connection, "registration", code);
            return;
        }
        // This registrar becomes the PE's home; its ASAP endpoint is the
        // connection it came on. A registration life shorter than one
        // keep-alive round would expire a PE that answers every keep-alive,
        // so it is raised to that.
        element.home_registrar = self.config.id;
        element.asap_transport = conn.peer.map(Transport::tcp);
        let round = self.config.keep_alive_interval + self.config.keep_alive_timeout;
        let round_ms = u32::try_from(round.as_millis()).unwrap_or(u32::MAX);
        element.registration_life = element.registration_life.max(round_ms);
        let origin = Origin::Asap(conn.registrant.clone());
        let pe_id = element.id;
        match self
            .handlespace
            .register(&pool_handle, element.clone(), origin, now)
        {
            Ok(outcome) => {
                let key = (pool_handle.clone(), pe_id);
                // The PE may have moved to this connection (a reconnect).
                if let Some(old) = self.supervised.get(&key).map(|s| s.connection)
                    && old != connection
                    && let Some(c) = self.connections.get_mut(&old)
                {
                    c.elements.remove(&key);
                }
                self.connections
                    .get_mut(&connection)
                    .expect("connected")
                    .elements
                    .insert(key.clone());
                self.supervise(
                    key.clone(),
                    connection,
                    now + self.config.keep_alive_interval,
                );
                if let Some((by, _)) = self.claims.remove(&key) {
                    // Registered again here: the announcement below answers
                    // the peer's claim.
                    self.events.push_back(Event::Claimed {
                        pool_handle: pool_handle.clone(),
                        pe_id,
                        by,
                        kept: true,
                    });
                }
                self.send(
                    connection,
                    AsapMessage::RegistrationResponse {
                        reject: false,
                        pool_handle: pool_handle.clone(),
                        pe_id,
                        error: None,
                    },
                );
                self.announce_change(UpdateAction::AddPe, &pool_handle, &element);
                self.events.push_back(Event::Registered {
                    pool_handle,
                    element,
                    added: outcome == Registered::Added,
                });
            }
            Err(e) => {
                let cause = e.cause();
                let code = cause.code;
                let response = reject(cause, pe_id);
                self.send(connection, response);
                self.refused(connection, "registration", code);
            }
        }
    }

    /// (Re)starts keep-alive supervision: the next keep-alive is due at `due`.
    fn supervise(
        &mut self,
        key: (PoolHandle, PoolElementId),
        connection: ConnectionId,
        due: Instant,
    ) {
        let mut reasserted = None;
        if let Some(old) = self.supervised.get(&key) {
            self.timers.remove(&(old.due, key.0.clone(), key.1));
            reasserted = old.reasserted;
        }
        self.timers.insert((due, key.0.clone(), key.1));
        self.supervised.insert(
            key,
            Supervision {
                connection,
                due,
                awaiting_ack: false,
                reasserted,
            },
        );
    }

    /// Sends a supervised PE a keep-alive; it has until the keep-alive
    /// timeout to answer.
    fn ask(&mut self, key: (PoolHandle, PoolElementId), now: Instant) {
        let Some(s) = self.supervised.get_mut(&key) else {
            return;
        };
        self.timers.remove(&(s.due, key.0.clone(), key.1));
        s.due = now + self.config.keep_alive_timeout;
        s.awaiting_ack = true;
        let connection = s.connection;
        self.timers.insert((s.due, key.0.clone(), key.1));
        self.send(
            connection,
            AsapMessage::EndpointKeepAlive {
                home: false,
                registrar_id: self.config.id,
                pool_handle: key.0,
                pe_id: Some(key.1),
            },
        );
    }

    /// Peer `from` announced `element`, which this registrar supervises, as
    /// registered there: the PE moved, or the announcement is late (a
    /// registration that waited in a stalled peer's socket while the PE
    /// went elsewhere, and the peer deletes it again when it finds the
    /// connection gone). Only the PE knows, so it is asked: a keep-alive
    /// goes out at once, and the PE stays here until it answers
    /// ([`Self::on_keep_alive_ack`]: the peers are told it stays) or leaves
    /// ([`Self::remove`]: the peer's copy is taken, without a deletion).
    /// A PE that answers at two registrars would have them announce it in
    /// turn without end; each asks at once only if it has not announced the
    /// PE within the keep-alive interval, and otherwise waits for the next
    /// regular keep-alive.
    fn claim(&mut self, from: RegistrarId, handle: PoolHandle, element: PoolElement, now: Instant) {
        let key = (handle, element.id);
        let Some(s) = self.supervised.get(&key) else {
            return;
        };
        let ask = !s.awaiting_ack && !s.reasserted_within(self.config.keep_alive_interval, now);
        self.claims.insert(key.clone(), (from, Some(element)));
        if ask {
            self.ask(key, now);
        }
    }

    /// Peer `from` deleted a PE it had claimed from this registrar.
    fn withdraw_claim(&mut self, from: RegistrarId, key: &(PoolHandle, PoolElementId)) {
        if let Some((by, copy)) = self.claims.get_mut(key)
            && *by == from
        {
            *copy = None;
        }
    }

    fn unsupervise(&mut self, handle: &PoolHandle, id: PoolElementId) {
        let key = (handle.clone(), id);
        self.claims.remove(&key);
        if let Some(s) = self.supervised.remove(&key) {
            self.timers.remove(&(s.due, key.0.clone(), key.1));
            if let Some(c) = self.connections.get_mut(&s.connection) {
                c.elements.remove(&key);
            }
        }
    }

    /// Removes a PE from the handlespace and from supervision; a PE that
    /// left its connection here while a peer claimed it takes the peer's
    /// copy instead ([`Self::claim`]).
    fn remove(
        &mut self,
        handle: &PoolHandle,
        id: PoolElementId,
        reason: RemovalReason,
        now: Instant,
    ) {
        let claim = self.claims.remove(&(handle.clone(), id));
        self.unsupervise(handle, id);
        if let Some((by, Some(element))) = claim
            && matches!(
                reason,
                RemovalReason::KeepAliveTimeout | RemovalReason::ConnectionLost
            )
        {
            self.store_from_peer(by, handle, element, now);
            self.events.push_back(Event::Claimed {
                pool_handle: handle.clone(),
                pe_id: id,
                by,
                kept: false,
            });
            return;
        }
        if let Some(element) = self.handlespace.remove(handle, id) {
            self.removed(handle.clone(), element, reason);
        }
    }

    /// Reports the removal of a PE, and tells the peers when it is news to
    /// them.
    fn removed(&mut self, pool_handle: PoolHandle, element: PoolElement, reason: RemovalReason) {
        if self.removal_is_news(element.home_registrar, reason) {
            self.announce_change(UpdateAction::DelPe, &pool_handle, &element);
        }
        self.events.push_back(Event::Removed {
            pool_handle,
            element,
            reason,
        });
    }

    fn on_deregistration(
        &mut self,
        connection: ConnectionId,
        pool_handle: PoolHandle,
        pe_id: PoolElementId,
    ) {
        let registrant = self.connections[&connection].registrant.clone();
        let result = self
            .handlespace
            .deregister(&pool_handle, pe_id, &Origin::Asap(registrant));
        let error = match result {
            Ok(element) => {
                self.unsupervise(&pool_handle, pe_id);
                self.removed(pool_handle.clone(), element, RemovalReason::Deregistered);
                None
            }
            Err(e) => {
                let cause = e.cause();
                self.refused(connection, "deregistration", cause.code);
                Some(OperationError::single(cause))
            }
        };
        self.send(
            connection,
            AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            },
        );
    }

    fn on_resolution(
        &mut self,
        connection: ConnectionId,
        pool_handle: PoolHandle,
        items: Option<u32>,
        now: Instant,
    ) {
        let conn = self.connections.get_mut(&connection).expect("connected");
        let outcome = if !conn.resolutions.try_take(now) {
            self.refused(
                connection,
                "handle resolution",
                CauseCode::LACK_OF_RESOURCES,
            );
            ResolutionOutcome::Error(OperationError::single(ErrorCause::new(
                CauseCode::LACK_OF_RESOURCES,
            )))
        } else {
            match self.handlespace.resolve(&pool_handle, items, &mut self.rng) {
                Ok(chosen) => ResolutionOutcome::Members {
                    policy: chosen.first().map(|pe| pe.policy.clone()),
                    elements: chosen
                        .into_iter()
                        .map(|pe| PoolElement {
                            asap_transport: None,
                            ..pe.clone()
                        })
                        .collect(),
                },
                Err(e) => {
                    let cause = e.cause();
                    ResolutionOutcome::Error(OperationError::single(cause))
                }
            }
        };
        self.send(
            connection,
            AsapMessage::HandleResolutionResponse {
                accepted: false,
                pool_handle,
                outcome,
            },
        );
    }

    fn on_keep_alive_ack(
        &mut self,
        connection: ConnectionId,
        handle: &PoolHandle,
        id: PoolElementId,
        now: Instant,
    ) {
        let key = (handle.clone(), id);
        let Some(s) = self.supervised.get(&key) else {
            return;
        };
        if s.connection != connection || !s.awaiting_ack {
            return;
        }
        self.supervise(
            key.clone(),
            connection,
            now + self.config.keep_alive_interval,
        );
        // The PE is alive: its registration life starts again.
        let _ = self.handlespace.confirm(handle, id, now);
        if let Some((by, _)) = self.claims.remove(&key) {
            // It answered here: the peers hear that it stays.
            self.reassert(handle, id);
            if let Some(s) = self.supervised.get_mut(&key) {
                s.reasserted = Some(now);
            }
            self.events.push_back(Event::Claimed {
                pool_handle: handle.clone(),
                pe_id: id,
                by,
                kept: true,
            });
        }
    }

    fn on_unreachable(
        &mut self,
        connection: ConnectionId,
        handle: &PoolHandle,
        id: PoolElementId,
        now: Instant,
    ) {
        let conn = self.connections.get_mut(&connection).expect("connected");
        if !conn.reports.try_take(now) {
            self.refused(
                connection,
                "unreachability report",
                CauseCode::LACK_OF_RESOURCES,
            );
            return;
        }
        // A pool user is told apart by its authenticated identity, or else
        // by its connection.
        let reporter = match &conn.registrant.identity {
            Some(name) => reporter_of_identity(name),
            None => connection.0,
        };
        match self
            .handlespace
            .report_unreachable(handle, id, reporter, now)
        {
            Ok(Unreachable::Removed(element)) => {
                self.unsupervise(handle, id);
                self.removed(handle.clone(), element, RemovalReason::Unreachable);
            }
            Ok(Unreachable::Counted(_))
            | Err(LookupError::UnknownPool | LookupError::UnknownElement(_)) => {}
            Err(e) => self.refused(connection, "unreachability report", e.cause().code),
        }
    }

    /// Time has come to `now`: keep-alives due are sent, PEs that did not
    /// answer in time and registrations that ran out are removed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(announce) = &self.config.announce {
            if self.next_announce.is_some_and(|due| due <= now) {
                self.transmits.push_back(Transmit::Announce {
                    message: AsapMessage::ServerAnnounce {
                        registrar_id: self.config.id,
                        transports: announce.transports.clone(),
                    },
                });
                self.next_announce = Some(now + announce.interval);
            }
        }
        while let Some((due, handle, id)) = self.timers.first().cloned() {
            if due > now {
                break;
            }
            let key = (handle, id);
            if self.supervised[&key].awaiting_ack {
                self.timers.pop_first();
                self.remove(&key.0, key.1, RemovalReason::KeepAliveTimeout, now);
                continue;
            }
            self.ask(key, now);
        }
        self.peering_timeout(now);
        for (pool_handle, element) in self.handlespace.expire_until(now) {
            self.unsupervise(&pool_handle, element.id);
            self.removed(pool_handle, element, RemovalReason::Expired);
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next change to report.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Registrar::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let supervision = self.timers.first().map(|(at, _, _)| *at);
        [
            supervision,
            self.handlespace.next_expiry(),
            self.next_announce,
            self.peering_next_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// A reporter number for an authenticated identity (FNV-1a), with the top
/// bit set so it never equals a connection number.
fn reporter_of_identity(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h | 1 << 63
}
