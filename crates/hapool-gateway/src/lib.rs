//! The hapool gateway: a proxy in front of server pools for clients that do
//! not speak ASAP.
//!
//! Each listener (plain TCP, or HTTP/1.1 and HTTP/2; either over TLS with
//! the certificate chosen by SNI) serves one pool. The gateway is a pool
//! user: it learns the members of a pool from the registrars, keeping the
//! last answer while no registrar answers, or takes them from its
//! configuration. A new session goes to a member chosen by the Internet
//! Cluster Manager's rules ([`select`]); a session stays with its member
//! ([`sessions`]) while that member can take it, and moves with its state
//! cookie when it cannot. A request that failed before it reached a member,
//! or that can be repeated, is retried on another member.
//!
//! Main types: [`Gateway`] (start, status, operator marks), [`Pool`],
//! [`GatewayConfig`]. The crate never parses HTTP itself (hyper does).
//!
//! Where things are: this file starts the gateway, its listeners and
//! workers, and reports its status; `config` holds the configuration and
//! its checks; `serve` accepts a listener's connections and serves each
//! (`admission` decides which, `tls` and `tickets` terminate TLS,
//! `proxy_protocol` reads a header from a proxy in front); `http` and
//! `tcp` are the two proxies, `member_http` one worker's connections to
//! members, `connection_io` how sockets are driven, `hedge` and
//! `response_time` what the HTTP proxy does about slow members; `pool`,
//! `select` and `sessions` hold the members, the choice and the sessions;
//! `upkeep` keeps members current (registrars, probes, sweeps, with
//! `member_cache` on disk); `reload`, `handover` and `drain` change a
//! running gateway; `grpc_health` is the gRPC probe, `deadline` the
//! request path's cheap deadlines, [`body`] a response body that acts
//! once read to its end; `access_log` and `worker_runtime` are what their
//! names say.

#![forbid(unsafe_code)]

mod access_log;
mod admission;
pub mod body;
mod config;
mod connection_io;
mod deadline;
mod drain;
mod grpc_health;
mod handover;
mod hedge;
pub mod http;
mod http2_idle;
mod member_cache;
mod member_http;
pub mod pool;
mod proxy_protocol;
mod reload;
mod response_time;
pub mod select;
mod serve;
pub mod sessions;
mod tcp;
pub mod tickets;
pub mod tls;
mod upkeep;
mod worker_runtime;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hapool_wire::{PoolElementId, PoolHandle};
use metrics::{Counter, counter};
use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{info, warn};

use crate::access_log::{AccessLog, LogSlot};
use crate::admission::Admission;
pub use crate::config::{Affinity, GatewayConfig, Limits, ListenerConfig, Protocol};
use crate::member_cache::MemberCache;
use crate::member_http::MemberHttp;
use crate::pool::PoolSet;
pub use crate::pool::{
    Chosen, Member, MemberSource, MemberStatus, Pool, PoolSettings, Port, ProbeKind, StaticMember,
};
pub use crate::proxy_protocol::ProxyProtocol;
pub use crate::reload::Reloaded;
pub use crate::select::{AdminState, Availability, Strategy};
use crate::serve::{WorkerListener, accept_loop};
pub use crate::tcp::{OnRead, Seen};
use crate::tickets::SessionTickets;
use crate::tls::LiveTls;
use crate::upkeep::{
    Registrars, Upkeep, pool_user, probe_all, prober, refresh, refresher, sweeper,
};
pub use crate::worker_runtime::worker_runtime;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// A listener names a pool that is not configured.
    #[error("listener {listener} serves pool {pool:?}, which is not configured")]
    UnknownPool {
        /// The listener's address.
        listener: SocketAddr,
        /// The pool it names.
        pool: String,
    },
    /// A listener's affinity does not fit its protocol.
    #[error("listener {listener}: {reason}")]
    Affinity {
        /// The listener's address.
        listener: SocketAddr,
        /// What does not fit.
        reason: &'static str,
    },
    /// A pool that sends the PROXY protocol header is served by an HTTP
    /// listener.
    #[error(
        "listener {listener} is HTTP, and pool {pool:?} sends the PROXY protocol header, which only TCP listeners can (HTTP requests share member connections among clients; members learn the client's address from X-Forwarded-For)"
    )]
    ProxyProtocolOverHttp {
        /// The listener.
        listener: SocketAddr,
        /// The pool.
        pool: String,
    },
    /// A pool is configured twice.
    #[error("pool {0:?} is configured twice")]
    DuplicatePool(String),
    /// A static pool lists one address twice.
    #[error("pool {pool:?} lists the member {address} twice")]
    DuplicateMember {
        /// The pool.
        pool: String,
        /// The address.
        address: SocketAddr,
    },
    /// A pool reaches its members over TLS, but no authority is configured
    /// for their certificates.
    #[error(
        "pool {0:?} reaches its members over TLS, but no authority for their certificates is configured"
    )]
    NoMemberTrust(String),
    /// A pool probes its members with the gRPC health check, but does not
    /// speak HTTP/2 to them.
    #[error("pool {0:?} probes its members with the gRPC health check, which needs http2")]
    GrpcProbeWithoutHttp2(String),
    /// A pool gives its members an HTTPS port, but reaches them over TLS
    /// at their address already.
    #[error(
        "pool {0:?} has an https_port and tls: with tls every request goes over TLS to the member's address"
    )]
    HttpsPortWithTls(String),
    /// A pool takes its members from registrars, but none are configured.
    #[error("pool {0:?} takes its members from registrars, but no registrar is configured")]
    NoRegistrars(String),
    /// Session ticket keys of the gateway's own cannot be made.
    #[error("cannot make session ticket keys: {0}")]
    Tickets(rustls::Error),
    /// A worker thread cannot be started.
    #[error("cannot start a gateway worker thread: {0}")]
    Thread(std::io::Error),
    /// The access log cannot be opened.
    #[error("cannot open the access log {}: {source}", path.display())]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A listener's address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The handover socket cannot be made.
    #[error("cannot make the handover socket {}: {source}", path.display())]
    Handover {
        /// The path configured.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Counters every proxy updates.
pub(crate) struct GatewayMetrics {
    pub(crate) requests: Counter,
    pub(crate) retries: Counter,
    pub(crate) failed: Counter,
    /// Requests sent to a second member as well (`hedge.rs`).
    pub(crate) hedges: Counter,
    /// Hedges whose second member answered first.
    pub(crate) hedge_wins: Counter,
    /// Client connections one worker accepted and handed to another
    /// (`admission.rs`).
    pub(crate) handed: Counter,
}

/// What every listener shares.
pub(crate) struct Shared {
    /// The limits now, which a reload may change.
    pub(crate) limits: watch::Sender<Arc<Limits>>,
    /// The upkeep's timers and the session tables' bounds now, which a
    /// reload may change.
    pub(crate) upkeep: watch::Sender<Upkeep>,
    /// The probes' connections to members (each worker has its own for
    /// requests).
    probes: Arc<MemberHttp>,
    /// Trust for members reached over TLS, which a reload may replace.
    pub(crate) member_trust: watch::Sender<MemberTrust>,
    pub(crate) metrics: GatewayMetrics,
    /// Members of registrar pools found unreachable, for the registrars.
    reports: mpsc::Sender<(PoolHandle, PoolElementId)>,
    last_limit_log: AtomicU64,
    started: Instant,
    /// Where requests and connections are logged, when they are.
    pub(crate) access_log: LogSlot,
    /// The session tickets of every TLS listener, which a reload may
    /// give new keys.
    pub(crate) tickets: Arc<SessionTickets>,
}

impl Shared {
    /// The limits new connections are served with.
    pub(crate) fn limits(&self) -> Arc<Limits> {
        self.limits.borrow().clone()
    }

    /// Connections to members for one worker (or for the probes).
    fn member_http(
        limits: &watch::Sender<Arc<Limits>>,
        trust: &watch::Sender<MemberTrust>,
    ) -> Arc<MemberHttp> {
        MemberHttp::start(trust.subscribe(), limits.subscribe())
    }

    /// How a connection to `pool`'s members is made over TLS now, when
    /// the pool says they are.
    pub(crate) fn member_tls_for(&self, pool: &Pool) -> Option<TlsConnector> {
        pool.tls()
            .then(|| self.member_trust.borrow().connector(false))
            .flatten()
    }

    /// Counts an exchange with `member` toward its pool's `error_limit`:
    /// one it `failed` (a server error, an answer that breaks HTTP's
    /// rules, a TCP connection closed unanswered) lengthens the run, any
    /// other ends it; at the limit the member is out until its probes
    /// pass.
    #[inline]
    pub(crate) fn count_toward_error_limit(
        &self,
        pool: &Pool,
        member: &Member,
        port: Port,
        failed: bool,
    ) {
        let limit = pool.error_limit();
        if limit != 0 && member.count_answer(failed) == limit {
            self.out_for_errors(pool, member, port, limit);
        }
    }

    #[cold]
    fn out_for_errors(&self, pool: &Pool, member: &Member, port: Port, limit: u32) {
        warn!(pool = %pool.handle(), pe_id = %member.id, errors = limit, "pool element answered with server errors or failed in a row: out until its probes pass");
        self.unreachable(pool, member, port);
    }

    /// Marks `member`'s `port` unreachable (the prober lets it back in),
    /// and tells the registrars when the pool is theirs and the port is
    /// the one they know.
    #[cold]
    pub(crate) fn unreachable(&self, pool: &Pool, member: &Member, port: Port) {
        if member.set_reachable_at(port, false) {
            warn!(pool = %pool.handle(), pe_id = %member.id, address = %pool.target(member, port).address, "pool element unreachable");
            counter!("hapool_gateway_unreachable_total").increment(1);
            if pool.from_registrars() && port == Port::Main {
                let _ = self.reports.try_send((pool.handle().clone(), member.id));
            }
        }
    }

    /// Counts a limit that was hit, and logs it (at most once a second).
    #[cold]
    pub(crate) fn limit_hit(&self, limit: &'static str, pool: &PoolHandle) {
        counter!("hapool_gateway_limit_hits_total", "limit" => limit).increment(1);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_limit_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_limit_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(limit, pool = %pool, "gateway limit hit (logged at most once a second; see hapool_gateway_limit_hits_total)");
        }
    }
}

/// A listener as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ListenerStatus {
    /// Where it listens.
    pub address: SocketAddr,
    /// What it speaks.
    pub protocol: Protocol,
    /// The pool it serves.
    pub pool: String,
    /// Whether it terminates TLS.
    pub tls: bool,
    /// What keeps its sessions with their members.
    pub affinity: Affinity,
    /// Open client connections, per listening socket (one per worker,
    /// or more when the gateway before had more workers; a socket the
    /// service manager passed, shared by the workers, once per worker).
    pub connections: Vec<usize>,
    /// How many of its sockets were taken from the gateway before over
    /// the handover socket (the others it bound itself, or was passed).
    pub taken_over: usize,
    /// How many of its sockets the service manager passed (socket
    /// activation); workers beyond them share them.
    pub passed: usize,
}

/// A pool as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolStatus {
    /// The pool handle.
    pub pool: String,
    /// `registrars` or `static`.
    pub source: &'static str,
    /// How new sessions choose.
    pub strategy: Strategy,
    /// Sessions in its table.
    pub sessions: usize,
    /// Its members.
    pub members: Vec<MemberStatus>,
}

/// The gateway's state as `/status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayStatus {
    /// Listeners.
    pub listeners: Vec<ListenerStatus>,
    /// Pools.
    pub pools: Vec<PoolStatus>,
    /// The keys TLS session tickets are sealed with.
    pub tickets: tickets::TicketStatus,
    /// The registrars asked for the members of registrar pools, in order
    /// of preference.
    pub registrars: Vec<SocketAddr>,
    /// The CPU each worker is pinned to, in the workers' order; `None`
    /// when they are not pinned (`GatewayConfig::pin_workers`).
    pub worker_cpus: Option<Vec<usize>>,
}

/// A listener of the running gateway.
#[derive(Clone)]
struct Listening {
    /// Where it is bound (its configured address may have port 0).
    address: SocketAddr,
    admission: Arc<Admission>,
    /// Copies of its sockets, kept to hand to a successor that asks on
    /// the `handover` socket (which a reload may open at any time); empty
    /// once it closes or the gateway shuts down, so that its sockets then
    /// close with the workers' own.
    kept: Arc<Mutex<Vec<std::net::TcpListener>>>,
    /// How many of its sockets came from the gateway before.
    taken_over: usize,
    /// How many of its sockets the service manager passed.
    passed: usize,
    /// Set when a reload closes it.
    closing: Arc<watch::Sender<bool>>,
    /// What its workers serve new connections with; a reload may change
    /// it, on the same sockets.
    spec: Arc<watch::Sender<Arc<Spec>>>,
}

/// What a listener's new connections are served with.
pub(crate) struct Spec {
    pub(crate) config: ListenerConfig,
    pub(crate) pool: Arc<Pool>,
    pub(crate) tls: Option<LiveTls>,
}

impl Listening {
    /// Takes the sockets the service manager `passed` and the `inherited`
    /// ones, and has one socket per worker: more copies of the passed
    /// ones when there are any (they stay open while the service
    /// restarts; one bound here would close with this process, and a
    /// connection in its handshake then with it), or else as many more
    /// bound to `config`'s address as it takes. Prepares what each socket
    /// is served with (socket `i` by worker `i` modulo `workers`), and
    /// keeps copies of the sockets for a handover.
    fn open(
        config: &ListenerConfig,
        pool: &Arc<Pool>,
        workers: usize,
        tickets: &Arc<SessionTickets>,
        passed: Vec<std::net::TcpListener>,
        inherited: Vec<std::net::TcpListener>,
    ) -> Result<(Self, Vec<WorkerListener>), GatewayError> {
        let (passed_count, taken_over) = (passed.len(), inherited.len());
        let mut sockets = passed;
        sockets.extend(inherited);
        let at = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(config.address);
        let bind_failed = |source| GatewayError::Bind {
            address: at,
            source,
        };
        let wanted = workers.max(1);
        if passed_count > 0 {
            for i in 0..wanted.saturating_sub(sockets.len()) {
                let copy = sockets[i % passed_count].try_clone().map_err(bind_failed)?;
                sockets.push(copy);
            }
        } else {
            let more = wanted.saturating_sub(sockets.len());
            sockets.extend(bind_reuseport(at, more).map_err(bind_failed)?);
        }
        let address = sockets[0].local_addr().unwrap_or(at);
        let kept = sockets
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| GatewayError::Bind { address, source })?;
        let (admission, inboxes) = Admission::new(sockets.len(), config.max_connections);
        let tls = config.tls.as_deref().map(|c| LiveTls::new(c, tickets));
        let (closing, closed) = watch::channel(false);
        let (spec, specs) = watch::channel(Arc::new(Spec {
            config: config.clone(),
            pool: pool.clone(),
            tls: tls.clone(),
        }));
        let per_worker = sockets
            .into_iter()
            .zip(inboxes)
            .enumerate()
            .map(|(worker, (socket, inbox))| WorkerListener {
                socket,
                spec: specs.clone(),
                inbox,
                worker,
                admission: admission.clone(),
                closed: closed.clone(),
            })
            .collect();
        info!(%address, protocol = ?config.protocol, pool = %pool.handle(), tls = config.tls.is_some(), workers = workers.max(1), "gateway listening");
        let listening = Self {
            address,
            admission,
            kept: Arc::new(Mutex::new(kept)),
            taken_over,
            passed: passed_count,
            closing: Arc::new(closing),
            spec: Arc::new(spec),
        };
        Ok((listening, per_worker))
    }

    /// What it serves new connections with now.
    fn current(&self) -> Arc<Spec> {
        self.spec.borrow().clone()
    }

    fn status(&self) -> ListenerStatus {
        let spec = self.current();
        ListenerStatus {
            address: self.address,
            protocol: spec.config.protocol,
            pool: spec.pool.handle().to_string(),
            tls: spec.tls.is_some(),
            affinity: spec.config.affinity,
            connections: self.admission.open(),
            taken_over: self.taken_over,
            passed: self.passed,
        }
    }

    /// Where it listens.
    fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address it was configured with (a successor with the same
    /// configuration asks for its sockets by it).
    fn configured_address(&self) -> SocketAddr {
        self.current().config.address
    }

    /// New copies of its sockets for a successor (none once it stops).
    fn handover_copies(&self) -> std::io::Result<Vec<std::net::TcpListener>> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(std::net::TcpListener::try_clone)
            .collect()
    }

    /// Drops the copies kept for a handover: the sockets close once the
    /// workers close theirs (unless a successor holds copies).
    fn release(&self) {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Serves new connections as `config` says, with `pool`, on the same
    /// sockets: open connections finish as they were. `config` keeps the
    /// address; its certificates, when it has TLS, are taken as a reload
    /// takes them ([`LiveTls::replace`]).
    fn respec(&self, config: &ListenerConfig, pool: &Arc<Pool>, tickets: &Arc<SessionTickets>) {
        let running = self.current();
        let tls = match (&running.tls, &config.tls) {
            (Some(live), Some(tls)) => {
                live.replace(tls);
                Some(live.clone())
            }
            (None, Some(tls)) => Some(LiveTls::new(tls, tickets)),
            (_, None) => None,
        };
        self.admission.set_max(config.max_connections);
        let _ = self.spec.send(Arc::new(Spec {
            config: ListenerConfig {
                address: running.config.address,
                ..config.clone()
            },
            pool: pool.clone(),
            tls,
        }));
    }

    /// Stops accepting on every worker (connections already queued are
    /// still taken); its open connections finish as on a shutdown.
    fn close(&self) {
        self.release();
        let _ = self.closing.send(true);
        info!(address = %self.address(), "listener closed: its open connections finish");
    }
}

/// A running gateway.
pub struct Gateway {
    view: GatewayView,
    tasks: JoinSet<()>,
    /// One thread per worker, each with its own single-threaded runtime,
    /// its own listening sockets (SO_REUSEPORT: the kernel spreads the
    /// connections, a busier worker hands some on) and its own
    /// connections to members: no task ever moves between threads once a
    /// connection is served. A single worker started from a
    /// single-threaded runtime runs on it instead.
    workers: Vec<Worker>,
}

/// A socket the gateway keeps for the program around it (an admin port),
/// and hands to a successor with its listeners.
struct SideListener {
    /// As configured.
    address: SocketAddr,
    socket: std::net::TcpListener,
}

/// Binds `count` sockets to `address` with SO_REUSEPORT (an ephemeral port
/// is chosen by the first and shared by the others).
fn bind_reuseport(
    address: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::with_capacity(count);
    let mut address = address;
    for _ in 0..count {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(address),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&address.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        address = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// How members are reached over TLS: connectors made with the trust the
/// gateway was given (`member_ca`), for HTTP/1.1 and TCP, and for HTTP/2
/// (ALPN `h2`); none without it. Read as each connection to a member is
/// made, so that trust a reload brings holds from the next connection.
#[derive(Clone, Default)]
pub(crate) struct MemberTrust(Option<[TlsConnector; 2]>);

impl MemberTrust {
    fn new(config: Option<&Arc<rustls::ClientConfig>>) -> Self {
        Self(config.map(|config| {
            let mut h2 = (**config).clone();
            h2.alpn_protocols = vec![b"h2".to_vec()];
            [config.clone(), Arc::new(h2)].map(TlsConnector::from)
        }))
    }

    /// The connector for a connection spoken in HTTP/2 or not; none
    /// without trust.
    pub(crate) fn connector(&self, http2: bool) -> Option<TlsConnector> {
        self.0
            .as_ref()
            .map(|connectors| connectors[usize::from(http2)].clone())
    }

    fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

/// The access log at `path`, opened, or none without a path.
fn open_access_log(
    path: Option<&std::path::Path>,
) -> Result<Option<(std::path::PathBuf, AccessLog)>, GatewayError> {
    path.map(|path| {
        AccessLog::open(path)
            .map(|log| (path.to_owned(), log))
            .map_err(|source| GatewayError::AccessLog {
                path: path.to_owned(),
                source,
            })
    })
    .transpose()
}

/// A worker thread: serves its listeners on a runtime of its own, pinned
/// to `cpu` if given.
fn worker_thread(
    cpu: Option<usize>,
    listeners: Vec<WorkerListener>,
    added: UnboundedReceiver<WorkerListener>,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
) {
    if let Some(cpu) = cpu
        && let Err(e) = worker_runtime::pin_this_thread(cpu)
    {
        warn!(cpu, error = %e, "a worker cannot be pinned to its CPU: it runs wherever the scheduler puts it");
    }
    match worker_runtime() {
        Ok(runtime) => runtime.block_on(serve_worker(listeners, added, shared, stopped)),
        Err(e) => tracing::error!(error = %e, "cannot start a gateway worker"),
    }
}

/// A worker: serves its listeners, and those a reload `added`, until
/// `stopped`; then stops accepting and lets its open connections finish,
/// for the shutdown grace at most.
async fn serve_worker(
    listeners: Vec<WorkerListener>,
    mut added: UnboundedReceiver<WorkerListener>,
    shared: Arc<Shared>,
    stopped: oneshot::Receiver<()>,
) {
    let members = Shared::member_http(&shared.limits, &shared.member_trust);
    let (drain, draining) = watch::channel(false);
    // This worker's place in each of its listeners' counts.
    let mut counted: Vec<(Arc<Admission>, usize)> = Vec::new();
    let mut accepting = JoinSet::new();
    let mut serve = |listener: WorkerListener| {
        counted.push((listener.admission.clone(), listener.worker));
        accepting.spawn(accept_loop(
            listener,
            shared.clone(),
            members.clone(),
            draining.clone(),
        ));
    };
    for listener in listeners {
        serve(listener);
    }
    // Ends on a stop, or when the gateway is dropped.
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(listener) = added.recv() => serve(listener),
        }
    }
    let _ = drain.send(true);
    // The accept loops take what the kernel queued for their sockets
    // before they end; then the connections are counted.
    while accepting.join_next().await.is_some() {}
    let open = || -> usize { counted.iter().map(|(a, worker)| a.open_on(*worker)).sum() };
    let deadline = Instant::now() + shared.limits().shutdown_grace;
    while open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = open();
    if left > 0 {
        warn!(
            connections = left,
            "shutdown grace over: closing open connections"
        );
    }
}

/// Where a worker runs.
enum WorkerRun {
    /// A thread of its own.
    Thread(std::thread::JoinHandle<()>),
    /// A task on the single-threaded runtime that started the gateway.
    Task(tokio::task::JoinHandle<()>),
}

/// A running worker and the signal that stops it (dropped, it stops it
/// too).
struct Worker {
    stop: oneshot::Sender<()>,
    run: WorkerRun,
}

impl Gateway {
    /// Binds every listener, learns and probes the members once, and
    /// starts serving.
    pub async fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        Self::start_with_passed(config, Vec::new()).await
    }

    /// [`Gateway::start`] with listening sockets the service manager
    /// `passed` (socket activation, `hapool_net::activation`), each with
    /// the address it is bound to: a listener or side listener configured
    /// with that address serves it instead of binding one. A passed socket
    /// no listener is configured for is not served (a warning says so).
    pub async fn start_with_passed(
        config: GatewayConfig,
        mut passed: Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> Result<Self, GatewayError> {
        config.check()?;
        let mut take_passed = |address: SocketAddr| {
            let (these, others) = std::mem::take(&mut passed)
                .into_iter()
                .partition(|(at, _)| *at == address);
            passed = others;
            these
                .into_iter()
                .map(|(_, socket)| socket)
                .collect::<Vec<_>>()
        };
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|settings| Arc::new(config.new_pool(settings)))
            .collect();
        let tickets = Arc::new(
            SessionTickets::new(config.ticket_keys.as_ref()).map_err(GatewayError::Tickets)?,
        );
        // The listening sockets of the gateway before, when it hands them
        // over: served here as well as there until it stops, then here
        // alone; none of them ever closes.
        let mut inherited = match &config.handover {
            Some(path) => handover::ask(path).await,
            None => handover::Inherited::default(),
        };
        let mut opened = Vec::new();
        for listener in &config.listeners {
            let pool = pools
                .iter()
                .find(|p| *p.handle() == listener.pool)
                .expect("checked: every listener's pool is configured");
            opened.push(Listening::open(
                listener,
                pool,
                config.workers,
                &tickets,
                take_passed(listener.address),
                inherited.take(listener.address),
            )?);
        }
        let mut side = Vec::with_capacity(config.side_listeners.len());
        for &address in &config.side_listeners {
            let mut sockets = take_passed(address);
            sockets.extend(inherited.take(address));
            let socket = match sockets.into_iter().next() {
                Some(socket) => socket,
                None => bind_reuseport(address, 1)
                    .map_err(|source| GatewayError::Bind { address, source })?
                    .remove(0),
            };
            side.push(SideListener { address, socket });
        }
        for address in inherited.left() {
            info!(%address, "the gateway before listened here; this configuration does not, and leaves its sockets to it");
        }
        drop(inherited);
        for (address, _) in &passed {
            warn!(%address, "the service manager passed a socket listening here, but no listener is configured for it: not served");
        }
        drop(passed);
        let handover_socket = config.handover.as_deref().map(handover::bind).transpose()?;
        let access_log = LogSlot::default();
        access_log.set(open_access_log(config.access_log.as_deref())?);
        let (reports, report_rx) = mpsc::channel(1024);
        let limits = watch::Sender::new(Arc::new(config.limits.clone()));
        let member_trust = watch::Sender::new(MemberTrust::new(config.member_tls.as_ref()));
        let shared = Shared {
            probes: Shared::member_http(&limits, &member_trust),
            limits,
            upkeep: watch::Sender::new(Upkeep::of(&config)),
            member_trust,
            metrics: GatewayMetrics {
                requests: counter!("hapool_gateway_requests_total"),
                retries: counter!("hapool_gateway_retries_total"),
                failed: counter!("hapool_gateway_failures_total"),
                hedges: counter!("hapool_gateway_hedges_total"),
                hedge_wins: counter!("hapool_gateway_hedge_wins_total"),
                handed: counter!("hapool_gateway_connections_handed_total"),
            },
            reports,
            last_limit_log: AtomicU64::new(0),
            started: Instant::now(),
            access_log,
            tickets,
        };
        let shared = Arc::new(shared);
        let mut tasks = JoinSet::new();
        let pools = PoolSet::new(pools);
        let registrar_pools: Vec<Arc<Pool>> = pools
            .all()
            .into_iter()
            .filter(|p| p.from_registrars())
            .collect();
        let registrars = Arc::new(Registrars::new(pool_user(&config.registrars)));
        // The members last known, until a registrar says otherwise.
        let mut cache = config.member_cache.clone().map(MemberCache::open);
        if let Some(cache) = &cache {
            for pool in &registrar_pools {
                if let Some(members) = cache.members(pool.handle()) {
                    pool.update(members);
                }
            }
        }
        let pu = registrars.borrow().clone();
        if let Some(pu) = pu {
            refresh(&pu, &registrar_pools, &shared, &mut cache).await;
        }
        probe_all(&pools.all(), &shared).await;
        let member_cache = Arc::new(watch::Sender::new(config.member_cache.clone()));
        tasks.spawn(refresher(
            registrars.subscribe(),
            pools.clone(),
            shared.clone(),
            report_rx,
            cache,
            member_cache.subscribe(),
        ));
        tasks.spawn(prober(pools.clone(), shared.clone()));
        tasks.spawn(sweeper(pools.clone()));
        let worker_count = config.workers.max(1);
        let mut listeners = Vec::new();
        let mut per_worker: Vec<Vec<WorkerListener>> =
            (0..worker_count).map(|_| Vec::new()).collect();
        for (listening, serves) in opened {
            listeners.push(listening);
            for (i, serve) in serves.into_iter().enumerate() {
                per_worker[i % worker_count].push(serve);
            }
        }
        let listeners = Arc::new(RwLock::new(listeners));
        let side = Arc::new(Mutex::new(side));
        let handover = Arc::new(handover::Serving::default());
        handover.set(handover_socket, &listeners, &side).await;
        // One worker started from a single-threaded runtime is served by
        // that runtime, so that the process keeps one thread: in a process
        // of one thread a system call skips the atomic operations that
        // thread cancellation (glibc) and a shared file table (the kernel)
        // cost (docs/performance.md).
        let on_this_thread = worker_count == 1
            && tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::CurrentThread;
        let worker_cpus = if config.pin_workers && !on_this_thread {
            worker_runtime::pinned_cpus(worker_count)
        } else {
            None
        };
        let mut workers = Vec::new();
        let mut inboxes = Vec::new();
        for (n, worker_listeners) in per_worker.into_iter().enumerate() {
            let (stop, stopped) = oneshot::channel::<()>();
            let (add, added) = mpsc::unbounded_channel();
            inboxes.push(add);
            let shared = shared.clone();
            let run = if on_this_thread {
                WorkerRun::Task(tokio::spawn(serve_worker(
                    worker_listeners,
                    added,
                    shared,
                    stopped,
                )))
            } else {
                let cpu = worker_cpus.as_ref().map(|cpus| cpus[n]);
                let thread = std::thread::Builder::new()
                    .name(format!("hapool-gw-{n}"))
                    .spawn(move || worker_thread(cpu, worker_listeners, added, shared, stopped))
                    .map_err(GatewayError::Thread)?;
                WorkerRun::Thread(thread)
            };
            workers.push(Worker { stop, run });
        }
        Ok(Self {
            view: GatewayView {
                side,
                handover,
                pools,
                listeners,
                shared,
                config: Arc::new(config),
                reloading: Arc::new(tokio::sync::Mutex::new(())),
                workers: inboxes.into(),
                worker_cpus,
                registrars,
                member_cache,
            },
            tasks,
            workers,
        })
    }

    /// Where each listener listens (in configuration order).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.view.local_addrs()
    }

    /// The pools.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.view.pools()
    }

    /// The pool `handle`.
    pub fn pool(&self, handle: &PoolHandle) -> Option<Arc<Pool>> {
        self.view.pool(handle)
    }

    /// A socket of the side listener configured at `address`
    /// ([`GatewayConfig::side_listeners`]), taken from the gateway before
    /// or bound, for the caller to serve.
    pub fn side_listener(&self, address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        self.view
            .side
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|s| s.address == address)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{address} is not a side listener of the gateway"),
                )
            })?
            .socket
            .try_clone()
    }

    /// A view that can be shared with the admin port.
    pub fn view(&self) -> GatewayView {
        self.view.clone()
    }

    /// Stops every listener and background task, and waits for the
    /// workers to end (open connections are closed).
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
        self.view
            .handover
            .set(None, &self.view.listeners, &self.view.side)
            .await;
        for listening in self.view.listening() {
            listening.release();
        }
        self.view
            .side
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let mut threads = Vec::new();
        let mut tasks = Vec::new();
        for worker in std::mem::take(&mut self.workers) {
            let _ = worker.stop.send(());
            match worker.run {
                WorkerRun::Thread(thread) => threads.push(thread),
                WorkerRun::Task(task) => tasks.push(task),
            }
        }
        for task in tasks {
            let _ = task.await;
        }
        if !threads.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                for thread in threads {
                    let _ = thread.join();
                }
            })
            .await;
        }
    }
}

/// The running gateway's pools and listeners, for status, operator
/// control and reloads.
#[derive(Clone)]
pub struct GatewayView {
    pools: PoolSet,
    /// In configuration order; a reload adds, replaces and closes them.
    listeners: Arc<RwLock<Vec<Listening>>>,
    shared: Arc<Shared>,
    /// The configuration it started with.
    config: Arc<GatewayConfig>,
    /// Held by a reload.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// Where each worker takes the listeners a reload opens.
    workers: Arc<[mpsc::UnboundedSender<WorkerListener>]>,
    /// The CPU each worker is pinned to, if they are.
    worker_cpus: Option<Arc<[usize]>>,
    /// Resolves registrar pools (when registrars are configured); a
    /// reload may change them.
    registrars: Arc<Registrars>,
    /// The side listeners, kept for [`Gateway::side_listener`] and for a
    /// successor.
    side: Arc<Mutex<Vec<SideListener>>>,
    /// The handover socket served, which a reload may change.
    handover: Arc<handover::Serving>,
    /// Where the member lists of registrar pools are kept on disk, if
    /// anywhere; a reload may change it.
    member_cache: Arc<watch::Sender<Option<std::path::PathBuf>>>,
}

impl GatewayView {
    /// Listeners, pools, members, session counts.
    pub fn status(&self) -> GatewayStatus {
        GatewayStatus {
            listeners: self.listening().iter().map(Listening::status).collect(),
            pools: self
                .pools()
                .iter()
                .map(|p| PoolStatus {
                    pool: p.handle().to_string(),
                    source: if p.from_registrars() {
                        "registrars"
                    } else {
                        "static"
                    },
                    strategy: p.strategy(),
                    sessions: p.sessions.len(),
                    members: p.status(),
                })
                .collect(),
            tickets: self.shared.tickets.status(),
            registrars: self
                .registrars
                .borrow()
                .as_ref()
                .map(|pu| pu.registrars().to_vec())
                .unwrap_or_default(),
            worker_cpus: self.worker_cpus.as_deref().map(<[usize]>::to_vec),
        }
    }

    fn listening(&self) -> Vec<Listening> {
        self.listeners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Where each listener listens (in configuration order).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listening().iter().map(Listening::address).collect()
    }

    /// The pool `handle`.
    pub fn pool(&self, handle: &PoolHandle) -> Option<Arc<Pool>> {
        self.pools.get(handle)
    }

    /// Every pool.
    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.all()
    }
}

/// The HTTP/2 library's error behind `error` (it or one of its causes),
/// if there is one: what a peer's or the library's own RST_STREAM or
/// GOAWAY said.
pub(crate) fn h2_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        cause = e.source();
    }
    None
}
