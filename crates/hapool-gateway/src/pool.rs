//! A pool as the gateway sees it: its members with their live counters,
//! the operator's marks, and the session table.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use hapool_wire::{Policy, PoolElement, PoolElementId, PoolHandle};
use serde::Serialize;
use tracing::info;

use crate::hedge::{self, Budget};
use crate::member_http::Target;
use crate::proxy_protocol::ProxyProtocol;
use crate::reload::changed_names;
use crate::response_time::ResponseTime;
use crate::select::{
    AdminState, Availability, Candidate, Choice, Strategy, Thresholds, availability_index, select,
    turns_after,
};
use crate::sessions::SessionTable;

/// Where a pool's members come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberSource {
    /// The registrars: the gateway resolves the pool as a pool user.
    Registrars,
    /// A fixed list from the configuration.
    Static(Vec<StaticMember>),
}

/// A member named in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticMember {
    /// Where it listens.
    pub address: SocketAddr,
    /// Its weight (round robin, random).
    pub weight: u32,
    /// Its priority (priority strategy).
    pub priority: u32,
}

/// How the gateway checks that a member answers before sending it traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` is answered with a status below 500.
    Http {
        /// The path to ask for.
        path: String,
    },
    /// The gRPC health check (`grpc.health.v1.Health/Check`) says
    /// SERVING. Members spoken to in HTTP/2 only.
    Grpc {
        /// The service asked after; empty: the server as a whole.
        service: String,
    },
}

/// A pool's settings. A running gateway can take new ones for a pool
/// ([`Pool::reconfigure`]) except for its handle, where its members come
/// from (static or registrars) and whether they are reached over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// The pool handle.
    pub handle: PoolHandle,
    /// Where its members come from.
    pub source: MemberSource,
    /// How a new session picks a member; for registrar pools, `None`
    /// follows the pool's registered policy.
    pub strategy: Option<Strategy>,
    /// BUSY below this availability index (0–100). Default 10.
    pub availability_threshold: u8,
    /// MAXUSERS at this many open sessions per member; also the capacity
    /// the gateway's own load figure is relative to. `None`: no limit.
    pub max_sessions: Option<u32>,
    /// How members are probed.
    pub probe: ProbeKind,
    /// Whether members are reached over TLS (HTTP pools: requests and
    /// probes go as HTTPS). Needs [`crate::GatewayConfig::member_tls`].
    pub tls: bool,
    /// Whether HTTP requests go to members over HTTP/2 (with prior
    /// knowledge, or over TLS by ALPN `h2`), all of a worker's requests to
    /// a member on one connection, as gRPC servers want; else over
    /// HTTP/1.1. Whatever the client spoke. Default false.
    pub http2: bool,
    /// The port on which the members also serve HTTPS (at the IP of their
    /// address), as the Internet Cluster Manager knows each server's HTTP
    /// and HTTPS ports: requests that came to the gateway over TLS go
    /// there over TLS, others to the member's address; each port is
    /// probed on its own, and a member takes a request only while the
    /// port of its scheme answers. HTTP listeners only; needs
    /// [`crate::GatewayConfig::member_tls`]. None by default.
    pub https_port: Option<u16>,
    /// After this many answers in a row with a server error (5xx), a
    /// member is taken out of the choice as an unreachable one is, until
    /// its probes bring it back (HAProxy's `observe layer7` with
    /// `on-error mark-down`). None (off) by default.
    pub error_limit: Option<u32>,
    /// The most HTTP requests, in percent of the pool's requests, that
    /// may also go to a second member when the first is slow to answer
    /// (see `hedge.rs`); 0: never. Default 5.
    pub hedge_percent: u32,
    /// Probes answered in a row that bring back a member found
    /// unreachable (by probes or by a failed request). A member the
    /// gateway has never reached comes in at its first answer. Default 2.
    pub probe_rise: u32,
    /// Probes failed in a row that take a member out of the choice (a
    /// failed request takes it out at once). Default 2: one lost probe, as
    /// under a load that delays it past its timeout, does not.
    pub probe_fall: u32,
    /// The PROXY protocol header each connection to a member starts with
    /// (TCP listeners only), so that the member learns the client's
    /// address. None by default.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Registrar pools: how long the pool keeps its last members (chosen
    /// while their probes pass) when the registrars answer that it has
    /// none, from the first such answer; a registrar that restarted and
    /// has not heard from the PEs again answers so. Zero: the answer is
    /// taken at once. Default [`Self::EMPTY_ANSWER_HOLD`].
    pub empty_answer_hold: Duration,
}

impl PoolSettings {
    /// The default hold of a registrar pool's last members.
    pub const EMPTY_ANSWER_HOLD: Duration = Duration::from_secs(30);
    /// The default share of hedged requests.
    pub const HEDGE_PERCENT: u32 = 5;
    /// The default probes in a row that bring a member back.
    pub const PROBE_RISE: u32 = 2;
    /// The default probes in a row that take a member out.
    pub const PROBE_FALL: u32 = 2;

    /// Pool `handle` with its members from `source` and every other
    /// setting at its default: the least loaded member for static pools
    /// (registrar pools follow their registered policy), BUSY below an
    /// availability index of 10, no session limit, TCP probes, HTTP/1.1 in
    /// the clear to members, hedges up to [`Self::HEDGE_PERCENT`], probes
    /// in a row [`Self::PROBE_RISE`] and [`Self::PROBE_FALL`].
    pub fn new(handle: PoolHandle, source: MemberSource) -> Self {
        let strategy = match source {
            MemberSource::Static(_) => Some(Strategy::LeastLoaded),
            MemberSource::Registrars => None,
        };
        Self {
            handle,
            source,
            strategy,
            availability_threshold: 10,
            max_sessions: None,
            probe: ProbeKind::Tcp,
            tls: false,
            http2: false,
            https_port: None,
            error_limit: None,
            hedge_percent: Self::HEDGE_PERCENT,
            probe_rise: Self::PROBE_RISE,
            probe_fall: Self::PROBE_FALL,
            proxy_protocol: None,
            empty_answer_hold: Self::EMPTY_ANSWER_HOLD,
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            availability_threshold: self.availability_threshold,
            max_sessions: self.max_sessions,
        }
    }

    /// The names of the settings `new` changes.
    pub fn changes(&self, new: &Self) -> Vec<&'static str> {
        changed_names([
            ("members", self.source != new.source),
            ("strategy", self.strategy != new.strategy),
            (
                "availability_threshold",
                self.availability_threshold != new.availability_threshold,
            ),
            ("max_sessions", self.max_sessions != new.max_sessions),
            ("probe", self.probe != new.probe),
            ("tls", self.tls != new.tls),
            ("http2", self.http2 != new.http2),
            ("https_port", self.https_port != new.https_port),
            ("error_limit", self.error_limit != new.error_limit),
            ("hedge_percent", self.hedge_percent != new.hedge_percent),
            ("probe_rise", self.probe_rise != new.probe_rise),
            ("probe_fall", self.probe_fall != new.probe_fall),
            ("proxy_protocol", self.proxy_protocol != new.proxy_protocol),
            (
                "empty_answer_hold",
                self.empty_answer_hold != new.empty_answer_hold,
            ),
        ])
    }

    /// Why `new` cannot replace these settings in a running pool (it takes
    /// a restart); `None` when it can.
    pub fn fixed_change(&self, new: &Self) -> Option<&'static str> {
        if new.handle != self.handle {
            Some("another pool")
        } else if matches!(new.source, MemberSource::Registrars)
            != matches!(self.source, MemberSource::Registrars)
        {
            Some("its members come from elsewhere (static or registrars)")
        } else if new.tls != self.tls {
            Some("its members are reached with TLS or without it")
        } else if new.https_port != self.https_port {
            Some("its members' HTTPS port")
        } else {
            None
        }
    }
}

/// Which of a member's ports a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// Its address (over TLS when the pool says [`PoolSettings::tls`]).
    Main,
    /// Its IP at the pool's [`PoolSettings::https_port`], over TLS.
    Https,
}

/// Whether one of a member's ports answers, as its probes and the
/// gateway's connections have found.
#[derive(Debug, Default)]
struct Reach {
    reachable: AtomicBool,
    /// Probes in a row that agreed: answered when positive, failed when
    /// negative.
    probe_streak: AtomicI32,
    /// Whether the gateway has ever reached it.
    ever_reached: AtomicBool,
}

impl Reach {
    fn is(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn set(&self, reachable: bool) -> bool {
        if reachable {
            self.ever_reached.store(true, Ordering::Relaxed);
        } else {
            self.probe_streak.store(0, Ordering::Relaxed);
        }
        self.reachable.swap(reachable, Ordering::Relaxed) != reachable
    }

    fn record(&self, answered: bool, rise: u32, fall: u32) -> bool {
        let last = self.probe_streak.load(Ordering::Relaxed);
        let streak = match (answered, last) {
            (true, 1..) => last.saturating_add(1),
            (true, _) => 1,
            (false, ..=-1) => last.saturating_sub(1),
            (false, _) => -1,
        };
        self.probe_streak.store(streak, Ordering::Relaxed);
        let runs = streak.unsigned_abs();
        if self.is() {
            !answered && runs >= fall && self.set(false)
        } else {
            answered
                && (runs >= rise || !self.ever_reached.load(Ordering::Relaxed))
                && self.set(true)
        }
    }
}

/// One member of a pool.
#[derive(Debug)]
pub struct Member {
    /// Its PE identifier (registrar pools), or its position in the
    /// configuration counting from 1 (static pools).
    pub id: PoolElementId,
    /// Where the gateway reaches it.
    pub address: SocketAddr,
    /// The address as the authority of a request URI.
    pub authority: http::uri::Authority,
    /// The registrar that owns its registration (0: a static member).
    home: AtomicU32,
    registered_load: AtomicU64,
    weight: AtomicU32,
    priority: AtomicU32,
    admin: AtomicU8,
    /// Whether its address answers, and its HTTPS port (when the pool
    /// has one); probed before use, so not at first.
    reach: [Reach; 2],
    /// Its answers in a row with a server error.
    error_streak: AtomicU32,
    active: AtomicU32,
    chosen: AtomicU64,
    /// The choice's count of its new sessions (`select::turns_after`).
    turns: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    response_time: ResponseTime,
}

/// `registered_load` when the PE's policy carries no load.
const NO_LOAD: u64 = u64::MAX;

impl Member {
    fn new(id: PoolElementId, address: SocketAddr, weight: u32, priority: u32) -> Self {
        Self {
            id,
            address,
            authority: address
                .to_string()
                .parse()
                .expect("a socket address is a URI authority"),
            home: AtomicU32::new(0),
            registered_load: AtomicU64::new(NO_LOAD),
            weight: AtomicU32::new(weight),
            priority: AtomicU32::new(priority),
            admin: AtomicU8::new(0),
            reach: Default::default(),
            error_streak: AtomicU32::new(0),
            active: AtomicU32::new(0),
            chosen: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            response_time: ResponseTime::new(),
        }
    }

    fn set_policy(&self, policy: &Policy) {
        self.registered_load
            .store(policy.load().map_or(NO_LOAD, u64::from), Ordering::Relaxed);
        self.weight
            .store(policy.weight().unwrap_or(1), Ordering::Relaxed);
        let priority = match *policy {
            Policy::Priority { priority } => priority,
            _ => 0,
        };
        self.priority.store(priority, Ordering::Relaxed);
    }

    /// The operator's mark.
    pub fn admin(&self) -> AdminState {
        match self.admin.load(Ordering::Relaxed) {
            1 => AdminState::Restricted,
            2 => AdminState::OutOfService,
            3 => AdminState::PendingDelete,
            _ => AdminState::Active,
        }
    }

    fn set_admin(&self, state: AdminState) {
        let code = match state {
            AdminState::Active => 0,
            AdminState::Restricted => 1,
            AdminState::OutOfService => 2,
            AdminState::PendingDelete => 3,
        };
        self.admin.store(code, Ordering::Relaxed);
    }

    /// Whether its address answered its last probe or connection
    /// attempt (as its probes decide: [`Self::record_probe`]).
    pub fn is_reachable(&self) -> bool {
        self.is_reachable_at(Port::Main)
    }

    /// Whether `port` answered its last probe or connection attempt.
    pub fn is_reachable_at(&self, port: Port) -> bool {
        self.reach[port as usize].is()
    }

    /// Marks its address reachable or not, whatever its probes said;
    /// `true` when that changed its reachability. Marked unreachable, it
    /// needs [`PoolSettings::probe_rise`] answers in a row to come back.
    pub fn set_reachable(&self, reachable: bool) -> bool {
        self.set_reachable_at(Port::Main, reachable)
    }

    /// [`Self::set_reachable`] for `port`.
    pub fn set_reachable_at(&self, port: Port, reachable: bool) -> bool {
        self.reach[port as usize].set(reachable)
    }

    /// Records a probe of its address: it comes back after `rise`
    /// answers in a row (at the first, when the gateway has never reached
    /// it), and goes out after `fall` failures in a row. `true` when that
    /// changed its reachability.
    pub fn record_probe(&self, answered: bool, rise: u32, fall: u32) -> bool {
        self.record_probe_at(Port::Main, answered, rise, fall)
    }

    /// [`Self::record_probe`] for `port`.
    pub fn record_probe_at(&self, port: Port, answered: bool, rise: u32, fall: u32) -> bool {
        self.reach[port as usize].record(answered, rise, fall)
    }

    /// Sessions (HTTP requests, TCP connections) open to it now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Sessions sent to it so far.
    pub fn chosen(&self) -> u64 {
        self.chosen.load(Ordering::Relaxed)
    }

    /// Counts a failed request or connection.
    pub fn count_failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP answer it gave, a server error (5xx) or not: its
    /// server errors in a row since.
    pub fn count_answer(&self, server_error: bool) -> u32 {
        if server_error {
            self.error_streak.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            // Read first: most answers find no streak to end, and a read
            // leaves the line shared among the workers.
            if self.error_streak.load(Ordering::Relaxed) != 0 {
                self.error_streak.store(0, Ordering::Relaxed);
            }
            0
        }
    }

    /// Counts bytes carried (TCP).
    pub fn count_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records that it answered a request (its response head came, `at`)
    /// `took` after the request went out.
    pub fn record_response_time(&self, took: Duration, at: Instant) {
        self.response_time.record(took, at);
    }

    /// The time from which on it has answered no request (to within the
    /// 100 µs grain its answers are stamped with).
    pub fn quiet_from(&self) -> Instant {
        self.response_time.quiet_from()
    }

    /// Its recent response time, when it has answered lately.
    pub fn response_time(&self, now: Instant) -> Option<Duration> {
        match self.response_time.current_us(now) {
            0 => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }

    fn candidate(&self, capacity: Option<u32>, now: Instant, port: Port) -> Candidate {
        let load = self.registered_load.load(Ordering::Relaxed);
        let sessions = self.active();
        Candidate {
            availability_index: availability_index(u32::try_from(load).ok(), sessions, capacity),
            sessions,
            turns: self.turns.load(Ordering::Relaxed),
            response_us: self.response_time.current_us(now),
            weight: self.weight.load(Ordering::Relaxed),
            priority: self.priority.load(Ordering::Relaxed),
            admin: self.admin(),
            reachable: self.is_reachable_at(port),
        }
    }
}

/// A member's state as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    /// PE identifier.
    pub id: u32,
    /// Where it listens.
    pub address: SocketAddr,
    /// The registrar that owns its registration, as ENRP writes it
    /// (`None` for a static member).
    pub home: Option<String>,
    /// The operator's mark.
    pub admin: AdminState,
    /// How it stands for a new session (from a client that came over
    /// TLS, when the pool has an HTTPS port: `availability_https`).
    pub availability: Availability,
    /// How it stands for a new session from a client that came over TLS,
    /// when the pool has an HTTPS port.
    pub availability_https: Option<Availability>,
    /// Its availability index.
    pub availability_index: u8,
    /// Sessions open now.
    pub active: u32,
    /// Sessions sent to it.
    pub chosen: u64,
    /// Sessions it finished.
    pub served: u64,
    /// Failed requests or connections.
    pub failed: u64,
    /// Bytes carried (TCP).
    pub bytes: u64,
    /// How long it has recently taken to answer an HTTP request, in
    /// microseconds (0: no answer in the last second).
    pub response_time_us: u32,
    /// Sessions in the session table bound to it.
    pub bound_sessions: usize,
}

/// A member chosen for a new session.
#[derive(Debug)]
pub struct Chosen {
    /// The session opened on it.
    pub lease: Lease,
    /// How it stood: anything but `Available` means a fallback.
    pub availability: Availability,
    /// How long it may answer nothing while a request waits before the
    /// request is also sent to another member (`hedge.rs`), after the
    /// pool's fastest recent response time; `None` when no member has
    /// answered lately or the pool's hedges are off.
    pub(crate) hedge: Option<hedge::Delays>,
}

/// Marks a member busy for as long as it lives: one open session.
#[derive(Debug)]
pub struct Lease {
    member: Arc<Member>,
    /// Counted as served when it ends.
    ok: bool,
}

impl Lease {
    /// The member.
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Records that the session failed (it is then not counted as served).
    pub fn fail(mut self) {
        self.ok = false;
        self.member.count_failure();
    }

    /// Ends a session the client broke off (its request body failed on
    /// the way): counted as neither served nor a failure of the member's.
    pub fn end_for_client(mut self) {
        self.ok = false;
    }

    /// The session is a request waiting for the member's answer: until
    /// [`Self::answered`], it ends as one the client broke off, so that a
    /// request dropped while it waits (its client reset the stream or
    /// closed the connection) is not counted served.
    pub fn awaiting_answer(mut self) -> Self {
        self.ok = false;
        self
    }

    /// The member answered the request the session waited on: it ends
    /// served (unless it fails after all).
    pub fn answered(&mut self) {
        self.ok = true;
    }

    /// Gives back a lease that carried nothing: the member is counted as
    /// neither chosen nor served.
    pub fn cancel(mut self) {
        self.ok = false;
        self.member.chosen.fetch_sub(1, Ordering::Relaxed);
        let _ = self
            .member
            .turns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(1))
            });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.member.active.fetch_sub(1, Ordering::Relaxed);
        if self.ok {
            self.member.served.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct View {
    members: Vec<Arc<Member>>,
    strategy: Strategy,
    /// From the settings, read with the members on every choice.
    thresholds: Thresholds,
}

/// A pool: members, marks, sessions.
pub struct Pool {
    handle: PoolHandle,
    /// Fixed with the handle (see [`PoolSettings::fixed_change`]).
    tls: bool,
    /// Fixed with the handle too.
    https_port: Option<u16>,
    /// From the settings: read on every request.
    http2: AtomicBool,
    /// From the settings (0: off): read on every answer.
    error_limit: AtomicU32,
    from_registrars: bool,
    settings: RwLock<Arc<PoolSettings>>,
    view: RwLock<Arc<View>>,
    marks: Mutex<Vec<(PoolElementId, AdminState)>>,
    deleted: Mutex<HashSet<PoolElementId>>,
    /// Static members draining because a reload left them out.
    unlisted: Mutex<HashSet<PoolElementId>>,
    /// The pool's session table.
    pub sessions: SessionTable,
    hedges: Budget,
    /// When the registrars first answered that this pool has no member,
    /// while it keeps its last ones (see [`Pool::registrars_name_none`]).
    emptied: Mutex<Option<Instant>>,
}

/// What a registrar pool does with an answer that names no member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EmptyAnswer {
    /// It keeps its last members; `first`: this answer starts the hold.
    Held {
        /// Whether this is the first such answer.
        first: bool,
    },
    /// It takes the answer; `after_hold`: its members were held until now.
    Taken {
        /// Whether a hold ends with it.
        after_hold: bool,
    },
}

impl Pool {
    /// A pool with `settings`; static members are known at once (and
    /// probed before use), registrar members after the first resolution.
    pub fn new(settings: PoolSettings, sessions: SessionTable) -> Self {
        let members = match &settings.source {
            MemberSource::Static(list) => list
                .iter()
                .zip(1..)
                .map(|(m, id)| {
                    Arc::new(Member::new(
                        PoolElementId(id),
                        m.address,
                        m.weight,
                        m.priority,
                    ))
                })
                .collect(),
            MemberSource::Registrars => Vec::new(),
        };
        let strategy = settings.strategy.unwrap_or(Strategy::LeastLoaded);
        Self {
            hedges: Budget::new(settings.hedge_percent),
            handle: settings.handle.clone(),
            tls: settings.tls,
            https_port: settings.https_port,
            http2: AtomicBool::new(settings.http2),
            error_limit: AtomicU32::new(settings.error_limit.unwrap_or(0)),
            from_registrars: settings.source == MemberSource::Registrars,
            view: RwLock::new(Arc::new(View {
                members,
                strategy,
                thresholds: settings.thresholds(),
            })),
            settings: RwLock::new(Arc::new(settings)),
            marks: Mutex::new(Vec::new()),
            deleted: Mutex::new(HashSet::new()),
            unlisted: Mutex::new(HashSet::new()),
            sessions,
            emptied: Mutex::new(None),
        }
    }

    /// The registrars answered at `now` that this pool has no member:
    /// whether it keeps its last members instead, for `empty_answer_hold`
    /// from the first such answer (if it has members to keep). The PEs of
    /// a registrar that restarted register again within seconds; until
    /// then, serving from members whose probes pass beats refusing every
    /// request, and a member that is really gone fails its probes.
    pub(crate) fn registrars_name_none(&self, now: Instant) -> EmptyAnswer {
        let hold = self.settings().empty_answer_hold;
        let mut emptied = self.emptied.lock().unwrap_or_else(PoisonError::into_inner);
        if self.snapshot().members.is_empty() || hold.is_zero() {
            let after_hold = emptied.take().is_some();
            return EmptyAnswer::Taken { after_hold };
        }
        let since = *emptied.get_or_insert(now);
        if now.duration_since(since) < hold {
            EmptyAnswer::Held {
                first: since == now,
            }
        } else {
            *emptied = None;
            EmptyAnswer::Taken { after_hold: true }
        }
    }

    /// The registrars named members of this pool: a hold ends.
    pub(crate) fn registrars_name_some(&self) {
        *self.emptied.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The pool handle.
    pub fn handle(&self) -> &PoolHandle {
        &self.handle
    }

    /// Whether its members are reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// How `member`'s HTTP requests are sent to `port`: to its address,
    /// over TLS or not, or to its HTTPS port; in HTTP/2 or HTTP/1.1.
    pub(crate) fn target(&self, member: &Member, port: Port) -> Target {
        let http2 = self.http2.load(Ordering::Relaxed);
        match (port, self.https_port) {
            (Port::Https, Some(https)) => Target {
                address: SocketAddr::new(member.address.ip(), https),
                tls: true,
                http2,
            },
            _ => Target {
                address: member.address,
                tls: self.tls,
                http2,
            },
        }
    }

    /// The port of its members that requests from clients of a listener
    /// go to: the HTTPS port, when there is one, for clients that came
    /// over TLS (`tls_client`).
    pub fn port_for(&self, tls_client: bool) -> Port {
        if tls_client && self.https_port.is_some() {
            Port::Https
        } else {
            Port::Main
        }
    }

    /// The port on which its members also serve HTTPS, if any.
    pub fn https_port(&self) -> Option<u16> {
        self.https_port
    }

    /// The server errors in a row that take a member out (0: none do).
    pub(crate) fn error_limit(&self) -> u32 {
        self.error_limit.load(Ordering::Relaxed)
    }

    /// Whether its members are spoken to in HTTP/2.
    pub(crate) fn http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Whether its members come from the registrars (else from the
    /// configuration).
    pub fn from_registrars(&self) -> bool {
        self.from_registrars
    }

    /// The pool's settings now.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn snapshot(&self) -> Arc<View> {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every member.
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.snapshot().members.clone()
    }

    /// The member `id`, if it is in the pool.
    pub fn member(&self, id: PoolElementId) -> Option<Arc<Member>> {
        self.snapshot().members.iter().find(|m| m.id == id).cloned()
    }

    /// How `member` stands for a new session to `port` now.
    pub fn availability(&self, member: &Member, port: Port) -> Availability {
        let thresholds = self.snapshot().thresholds;
        member
            .candidate(thresholds.max_sessions, Instant::now(), port)
            .availability(&thresholds)
    }

    /// Chooses a member for a new session to `port`, skipping those in
    /// `tried`, and opens a session on it; `now` is when (response times
    /// older than a second by then no longer count).
    pub fn choose(&self, tried: &[PoolElementId], now: Instant, port: Port) -> Option<Chosen> {
        // Read under the lock rather than from a snapshot: one shared
        // counter fewer to touch on every request.
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        let capacity = view.thresholds.max_sessions;
        // On the stack for pools of up to 16 members, filled in place: no
        // allocation, and no copy of the array on its way out of a
        // collect.
        let members = &view.members;
        let mut on_stack = [Candidate::UNSET; 16];
        let mut on_heap = Vec::new();
        let candidates = if members.len() <= on_stack.len() {
            &mut on_stack[..members.len()]
        } else {
            on_heap.resize(members.len(), Candidate::UNSET);
            &mut on_heap[..]
        };
        for (candidate, member) in candidates.iter_mut().zip(members) {
            *candidate = member.candidate(capacity, now, port);
        }
        let candidates = &*candidates;
        let Choice {
            index,
            availability,
        } = select(
            candidates,
            &view.thresholds,
            view.strategy,
            |i| tried.contains(&view.members[i].id),
            if view.strategy == Strategy::Random {
                rand::random()
            } else {
                0
            },
        )?;
        let member = view.members[index].clone();
        member.chosen.fetch_add(1, Ordering::Relaxed);
        let level = turns_after(candidates, &view.thresholds, index);
        let _ = member
            .turns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(1).max(level))
            });
        let hedge = if self.hedges.is_on() {
            let fastest = candidates
                .iter()
                .map(|c| c.response_us)
                .filter(|&us| us > 0)
                .min();
            hedge::delays(fastest)
        } else {
            None
        };
        Some(Chosen {
            lease: Self::lease(member),
            availability,
            hedge,
        })
    }

    /// Takes a hedge from the pool's allowance; `false` when it is spent.
    pub fn take_hedge(&self) -> bool {
        let requests = self
            .snapshot()
            .members
            .iter()
            .map(|m| m.chosen.load(Ordering::Relaxed))
            .sum();
        self.hedges.take(requests, Instant::now())
    }

    /// Opens a session on `member` (one chosen before, for an affine
    /// session).
    pub fn lease(member: Arc<Member>) -> Lease {
        member.active.fetch_add(1, Ordering::Relaxed);
        Lease { member, ok: true }
    }

    /// Replaces the members with the registrar's answer `elements`,
    /// keeping the counters and marks of those that stay. Returns the
    /// members that are new (to be probed).
    pub fn update(&self, elements: &[PoolElement]) -> Vec<Arc<Member>> {
        let old = self.snapshot();
        let deleted = self.deleted.lock().unwrap_or_else(PoisonError::into_inner);
        let marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut fresh = Vec::new();
        let mut members = Vec::with_capacity(elements.len());
        for element in elements {
            let Some(address) = element.user_transport.socket_addr() else {
                continue;
            };
            if deleted.contains(&element.id) {
                continue;
            }
            let member = match old
                .members
                .iter()
                .find(|m| m.id == element.id && m.address == address)
            {
                Some(m) => m.clone(),
                None => {
                    let m = Arc::new(Member::new(element.id, address, 1, 0));
                    if let Some((_, state)) = marks.iter().find(|(id, _)| *id == element.id) {
                        m.set_admin(*state);
                    }
                    fresh.push(m.clone());
                    m
                }
            };
            member.set_policy(&element.policy);
            member
                .home
                .store(element.home_registrar.0, Ordering::Relaxed);
            members.push(member);
        }
        let strategy = self.settings().strategy.unwrap_or_else(|| {
            elements.first().map_or(old.strategy, |e| {
                Strategy::for_policy(e.policy.policy_type())
            })
        });
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(View {
            members,
            strategy,
            thresholds: old.thresholds,
        });
        fresh
    }

    /// Takes `settings` while the pool serves (they must not be a
    /// [`PoolSettings::fixed_change`]): thresholds, strategy, probe and
    /// hedges apply from the next choice. In a static pool a member new to
    /// the list joins (returned, to be probed before it is chosen); one
    /// left out of it is marked pending delete, so that it drains and then
    /// leaves, and is set active again if it returns before that; those
    /// that stay keep their counters and marks and take their new weight
    /// and priority.
    pub fn reconfigure(&self, settings: PoolSettings) -> Vec<Arc<Member>> {
        let deleted = self.deleted.lock().unwrap_or_else(PoisonError::into_inner);
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut unlisted = self.unlisted.lock().unwrap_or_else(PoisonError::into_inner);
        let old = self.snapshot();
        let mut fresh = Vec::new();
        let members = match &settings.source {
            MemberSource::Registrars => old.members.clone(),
            MemberSource::Static(list) => {
                let mut next_id = old
                    .members
                    .iter()
                    .map(|m| m.id.0)
                    .chain(deleted.iter().map(|id| id.0))
                    .max()
                    .unwrap_or(0)
                    + 1;
                let mut members: Vec<Arc<Member>> = Vec::with_capacity(list.len());
                for listed in list {
                    if members.iter().any(|m| m.address == listed.address) {
                        continue;
                    }
                    let member = match old.members.iter().find(|m| m.address == listed.address) {
                        Some(member) => {
                            member.weight.store(listed.weight, Ordering::Relaxed);
                            member.priority.store(listed.priority, Ordering::Relaxed);
                            if unlisted.remove(&member.id) {
                                marks.retain(|(id, _)| *id != member.id);
                                member.set_admin(AdminState::Active);
                                info!(pool = %self.handle, pe_id = %member.id, address = %member.address, "member listed again: active");
                            }
                            member.clone()
                        }
                        None => {
                            let member = Arc::new(Member::new(
                                PoolElementId(next_id),
                                listed.address,
                                listed.weight,
                                listed.priority,
                            ));
                            next_id += 1;
                            info!(pool = %self.handle, pe_id = %member.id, address = %member.address, "member added");
                            fresh.push(member.clone());
                            member
                        }
                    };
                    members.push(member);
                }
                for member in &old.members {
                    if members.iter().any(|m| Arc::ptr_eq(m, member)) {
                        continue;
                    }
                    if unlisted.insert(member.id) {
                        marks.retain(|(id, _)| *id != member.id);
                        marks.push((member.id, AdminState::PendingDelete));
                        member.set_admin(AdminState::PendingDelete);
                        info!(pool = %self.handle, pe_id = %member.id, address = %member.address, "member no longer listed: draining, then deleted");
                    }
                    members.push(member.clone());
                }
                members
            }
        };
        self.hedges.set_percent(settings.hedge_percent);
        self.http2.store(settings.http2, Ordering::Relaxed);
        self.error_limit
            .store(settings.error_limit.unwrap_or(0), Ordering::Relaxed);
        let strategy = settings.strategy.unwrap_or(old.strategy);
        let thresholds = settings.thresholds();
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(View {
            members,
            strategy,
            thresholds,
        });
        fresh
    }

    /// Sets the operator's mark on member `id`; `false` when there is no
    /// such member. Setting `active` on a member deleted after draining
    /// lets it back in at the next resolution.
    pub fn set_admin(&self, id: PoolElementId, state: AdminState) -> bool {
        let mut marks = self.marks.lock().unwrap_or_else(PoisonError::into_inner);
        marks.retain(|(m, _)| *m != id);
        if state != AdminState::Active {
            marks.push((id, state));
        }
        let undeleted = state == AdminState::Active
            && self
                .deleted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
        match self.member(id) {
            Some(member) => {
                member.set_admin(state);
                info!(pool = %self.handle(), pe_id = %id, state = state.as_str(), "member marked");
                true
            }
            None => undeleted,
        }
    }

    /// Removes the members pending delete that have drained (no open
    /// session, none in the session table); returns their identifiers.
    pub fn remove_drained(&self) -> Vec<PoolElementId> {
        let view = self.snapshot();
        let drained: Vec<PoolElementId> = view
            .members
            .iter()
            .filter(|m| {
                m.admin() == AdminState::PendingDelete
                    && m.active() == 0
                    && self.sessions.bound_to(m.id) == 0
            })
            .map(|m| m.id)
            .collect();
        if drained.is_empty() {
            return drained;
        }
        self.deleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(drained.iter().copied());
        let members = view
            .members
            .iter()
            .filter(|m| !drained.contains(&m.id))
            .cloned()
            .collect();
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(View {
            members,
            strategy: view.strategy,
            thresholds: view.thresholds,
        });
        for id in &drained {
            info!(pool = %self.handle(), pe_id = %id, "member drained and deleted");
        }
        drained
    }

    /// Every member's state.
    pub fn status(&self) -> Vec<MemberStatus> {
        let view = self.snapshot();
        let thresholds = view.thresholds;
        let capacity = thresholds.max_sessions;
        let now = Instant::now();
        view.members
            .iter()
            .map(|m| {
                let candidate = m.candidate(capacity, now, Port::Main);
                MemberStatus {
                    id: m.id.0,
                    address: m.address,
                    home: match m.home.load(Ordering::Relaxed) {
                        0 => None,
                        home => Some(hapool_wire::RegistrarId(home).to_string()),
                    },
                    admin: candidate.admin,
                    availability: candidate.availability(&thresholds),
                    availability_https: self.https_port.map(|_| {
                        m.candidate(capacity, now, Port::Https)
                            .availability(&thresholds)
                    }),
                    availability_index: candidate.availability_index,
                    active: candidate.sessions,
                    chosen: m.chosen(),
                    served: m.served.load(Ordering::Relaxed),
                    failed: m.failed.load(Ordering::Relaxed),
                    bytes: m.bytes.load(Ordering::Relaxed),
                    response_time_us: candidate.response_us,
                    bound_sessions: self.sessions.bound_to(m.id),
                }
            })
            .collect()
    }

    /// The strategy in use.
    pub fn strategy(&self) -> Strategy {
        self.snapshot().strategy
    }
}

/// The gateway's pools, which a reload can add to and take from.
#[derive(Clone)]
pub(crate) struct PoolSet(Arc<RwLock<Vec<Arc<Pool>>>>);

impl PoolSet {
    pub(crate) fn new(pools: Vec<Arc<Pool>>) -> Self {
        Self(Arc::new(RwLock::new(pools)))
    }

    /// Every pool, in configuration order (pools added since at the end).
    pub(crate) fn all(&self) -> Vec<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The pool `handle`.
    pub(crate) fn get(&self, handle: &PoolHandle) -> Option<Arc<Pool>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| p.handle() == handle)
            .cloned()
    }

    pub(crate) fn add(&self, pool: Arc<Pool>) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pool);
    }

    pub(crate) fn remove(&self, handle: &PoolHandle) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p.handle() != handle);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use hapool_wire::{RegistrarId, Transport};
    use tokio::time::Instant;

    use super::*;
    use crate::sessions::SessionKey;

    fn settings(source: MemberSource) -> PoolSettings {
        PoolSettings {
            strategy: None,
            max_sessions: Some(2),
            ..PoolSettings::new(PoolHandle::new(&b"web"[..]), source)
        }
    }

    fn element(id: u32, port: u16, load: u32) -> PoolElement {
        PoolElement {
            id: PoolElementId(id),
            home_registrar: RegistrarId(1),
            registration_life: 30_000,
            user_transport: Transport::tcp(SocketAddr::from(([127, 0, 0, 1], port))),
            policy: Policy::LeastUsed { load },
            asap_transport: None,
        }
    }

    #[test]
    fn an_answer_naming_no_member_is_held_off_for_the_hold() {
        let hold = Duration::from_secs(30);
        let pool = Pool::new(
            settings(MemberSource::Registrars),
            SessionTable::new(Duration::from_secs(60), 10),
        );
        let t0 = std::time::Instant::now();
        // Nothing to keep yet.
        assert_eq!(
            pool.registrars_name_none(t0),
            EmptyAnswer::Taken { after_hold: false }
        );
        pool.update(&[element(1, 8001, 0)]);
        assert_eq!(
            pool.registrars_name_none(t0),
            EmptyAnswer::Held { first: true }
        );
        let later = t0 + hold - Duration::from_millis(1);
        assert_eq!(
            pool.registrars_name_none(later),
            EmptyAnswer::Held { first: false }
        );
        assert_eq!(
            pool.registrars_name_none(t0 + hold),
            EmptyAnswer::Taken { after_hold: true }
        );
        // Members named again end a hold: the next empty answer starts
        // another.
        assert_eq!(
            pool.registrars_name_none(t0 + hold),
            EmptyAnswer::Held { first: true }
        );
        pool.registrars_name_some();
        let t1 = t0 + 3 * hold;
        assert_eq!(
            pool.registrars_name_none(t1),
            EmptyAnswer::Held { first: true }
        );
        // With no hold, the answer is taken at once.
        pool.reconfigure(PoolSettings {
            empty_answer_hold: Duration::ZERO,
            ..settings(MemberSource::Registrars)
        });
        assert_eq!(
            pool.registrars_name_none(t1),
            EmptyAnswer::Taken { after_hold: true }
        );
    }

    #[test]
    fn registrar_members_keep_their_counters_and_marks_across_updates() {
        let pool = Pool::new(
            settings(MemberSource::Registrars),
            SessionTable::new(Duration::from_secs(60), 10),
        );
        let fresh = pool.update(&[element(1, 8001, 0), element(2, 8002, u32::MAX / 2)]);
        assert_eq!(fresh.len(), 2);
        assert_eq!(pool.strategy(), Strategy::LeastLoaded);
        assert!(
            pool.choose(&[], std::time::Instant::now(), Port::Main)
                .is_none(),
            "not probed yet"
        );
        for m in &fresh {
            m.set_reachable(true);
        }
        let Chosen {
            lease,
            availability,
            ..
        } = pool
            .choose(&[], std::time::Instant::now(), Port::Main)
            .unwrap();
        assert_eq!(
            (lease.member().id, availability),
            (PoolElementId(1), Availability::Available)
        );
        assert!(pool.set_admin(PoolElementId(2), AdminState::Restricted));
        // PE 1's load rises; PE 2 stays with its counters and mark.
        let fresh = pool.update(&[element(1, 8001, u32::MAX), element(2, 8002, 0)]);
        assert!(fresh.is_empty());
        assert_eq!(
            pool.member(PoolElementId(2)).unwrap().admin(),
            AdminState::Restricted
        );
        assert_eq!(pool.member(PoolElementId(1)).unwrap().active(), 1);
        // PE 1 is busy (index 0), PE 2 restricted: busy comes first.
        let Chosen {
            lease: second,
            availability,
            ..
        } = pool
            .choose(&[], std::time::Instant::now(), Port::Main)
            .unwrap();
        assert_eq!(
            (second.member().id, availability),
            (PoolElementId(1), Availability::Busy)
        );
        drop((lease, second));
        assert_eq!(pool.member(PoolElementId(1)).unwrap().active(), 0);
        // A PE that left and came back at another address starts afresh,
        // with the operator's mark.
        let fresh = pool.update(&[element(2, 9002, 0)]);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].admin(), AdminState::Restricted);
        assert!(!fresh[0].is_reachable());
    }

    #[test]
    fn pending_delete_removes_a_member_once_drained() {
        let members = vec![
            StaticMember {
                address: "127.0.0.1:1".parse().unwrap(),
                weight: 1,
                priority: 0,
            },
            StaticMember {
                address: "127.0.0.1:2".parse().unwrap(),
                weight: 1,
                priority: 0,
            },
        ];
        let pool = Pool::new(
            settings(MemberSource::Static(members)),
            SessionTable::new(Duration::from_secs(60), 10),
        );
        for m in pool.members() {
            m.set_reachable(true);
        }
        let lease = pool
            .choose(&[], std::time::Instant::now(), Port::Main)
            .unwrap()
            .lease;
        let id = lease.member().id;
        let now = Instant::now();
        assert!(pool.sessions.bind(
            SessionKey::Cookie(7),
            id,
            None,
            Some(Bytes::from_static(b"x")),
            now
        ));
        assert!(pool.set_admin(id, AdminState::PendingDelete));
        // No new sessions for it.
        for _ in 0..3 {
            let other = pool
                .choose(&[], std::time::Instant::now(), Port::Main)
                .unwrap()
                .lease;
            assert_ne!(other.member().id, id);
        }
        assert!(pool.remove_drained().is_empty(), "a request is open");
        drop(lease);
        assert!(pool.remove_drained().is_empty(), "a session is bound to it");
        assert_eq!(pool.sessions.sweep(now + Duration::from_secs(61)), 1);
        assert_eq!(pool.remove_drained(), vec![id]);
        assert!(pool.member(id).is_none());
        assert!(!pool.set_admin(PoolElementId(99), AdminState::Restricted));
    }

    fn statics(list: &[(u16, u32)]) -> MemberSource {
        MemberSource::Static(
            list.iter()
                .map(|&(port, weight)| StaticMember {
                    address: SocketAddr::from(([127, 0, 0, 1], port)),
                    weight,
                    priority: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn a_pool_without_hedges_does_not_watch_for_silence() {
        let pool = Pool::new(
            settings(statics(&[(1, 1)])),
            SessionTable::new(Duration::from_secs(60), 10),
        );
        let member = pool.member(PoolElementId(1)).unwrap();
        member.set_reachable(true);
        let now = std::time::Instant::now();
        member.record_response_time(Duration::from_millis(2), now);
        let chosen = pool.choose(&[], now, Port::Main).unwrap();
        assert_eq!(chosen.hedge, hedge::delays(Some(2_000)));
        let mut off = settings(statics(&[(1, 1)]));
        off.hedge_percent = 0;
        pool.reconfigure(off);
        assert_eq!(pool.choose(&[], now, Port::Main).unwrap().hedge, None);
    }

    #[test]
    fn a_reconfigured_static_pool_keeps_its_members_and_never_reuses_an_identifier() {
        let pool = Pool::new(
            settings(statics(&[(1, 1), (2, 1)])),
            SessionTable::new(Duration::from_secs(60), 10),
        );
        let first = pool.member(PoolElementId(1)).unwrap();
        first.set_reachable(true);
        assert!(pool.set_admin(PoolElementId(1), AdminState::Restricted));
        // 1 stays (with its counters, mark and new weight), 2 drains, 3 is
        // new; the same address listed twice counts once.
        let mut next = settings(statics(&[(1, 5), (3, 1), (3, 1)]));
        next.max_sessions = Some(9);
        next.hedge_percent = 0;
        let fresh = pool.reconfigure(next.clone());
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].id, PoolElementId(3));
        let kept = pool.member(PoolElementId(1)).unwrap();
        assert!(Arc::ptr_eq(&kept, &first));
        assert_eq!(kept.admin(), AdminState::Restricted);
        assert_eq!(kept.weight.load(Ordering::Relaxed), 5);
        assert_eq!(
            pool.member(PoolElementId(2)).unwrap().admin(),
            AdminState::PendingDelete
        );
        assert_eq!(*pool.settings(), next);
        assert_eq!(pool.snapshot().thresholds.max_sessions, Some(9));
        assert!(!pool.take_hedge(), "no hedges at 0 %");
        // 2 drains and is deleted; when its address returns it is a new
        // member with an identifier never used before.
        assert_eq!(pool.remove_drained(), vec![PoolElementId(2)]);
        let fresh = pool.reconfigure(settings(statics(&[(1, 1), (3, 1), (2, 1)])));
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].id, PoolElementId(4));
        assert_eq!(fresh[0].admin(), AdminState::Active);
        // An operator's pending delete is the operator's: a reload that
        // lists the member does not lift it.
        assert!(pool.set_admin(PoolElementId(3), AdminState::PendingDelete));
        pool.reconfigure(settings(statics(&[(1, 1), (3, 1), (2, 1)])));
        assert_eq!(
            pool.member(PoolElementId(3)).unwrap().admin(),
            AdminState::PendingDelete
        );
    }

    #[test]
    fn probes_take_a_member_out_and_back_only_in_a_row() {
        let member = Member::new(PoolElementId(1), "127.0.0.1:1".parse().unwrap(), 1, 0);
        // Never reached: in at its first answer.
        assert!(!member.record_probe(false, 2, 2));
        assert!(member.record_probe(true, 2, 2));
        assert!(member.is_reachable());
        // One lost probe between answers does not take it out.
        for answered in [false, true, false, true] {
            assert!(!member.record_probe(answered, 2, 2));
            assert!(member.is_reachable());
        }
        // Two in a row do; then two answers in a row bring it back.
        assert!(!member.record_probe(false, 2, 2));
        assert!(member.record_probe(false, 2, 2));
        assert!(!member.is_reachable());
        assert!(!member.record_probe(true, 2, 2));
        assert!(!member.record_probe(false, 2, 2));
        assert!(!member.record_probe(true, 2, 2));
        assert!(member.record_probe(true, 2, 2));
        // A failed request takes it out at once, and the answers count
        // afresh from there.
        assert!(!member.record_probe(true, 2, 2) && member.is_reachable());
        assert!(member.set_reachable(false));
        assert!(!member.record_probe(true, 2, 2));
        assert!(member.record_probe(true, 2, 2));
        // With 1 and 1, every probe decides.
        assert!(member.record_probe(false, 1, 1));
        assert!(member.record_probe(true, 1, 1));
    }

    #[test]
    fn server_errors_count_only_in_a_row() {
        let member = Member::new(PoolElementId(1), "127.0.0.1:1".parse().unwrap(), 1, 0);
        assert_eq!(member.count_answer(true), 1);
        assert_eq!(member.count_answer(true), 2);
        assert_eq!(member.count_answer(false), 0);
        assert_eq!(member.count_answer(true), 1);
    }
}
