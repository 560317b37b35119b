//! The registrar as a running service: a tokio driver around
//! [`hapool_proto::Registrar`].
//!
//! One task owns the state machine. It accepts connections, and for each
//! one spawns a reader (decoded messages in) and a writer (messages out,
//! through a bounded queue; a connection that cannot keep up is closed
//! rather than buffered without bound). After every input it drains the
//! state machine's transmits and events, and it sleeps until the state
//! machine's next timeout.
//!
//! ENRP: peers connect to the ENRP listener and their messages go to the
//! state machine whatever connection carried them; messages to a peer go
//! out over one outgoing connection per peer address (`PeerLinks`),
//! opened on first use and opened again after a failure. ENRP repairs a
//! lost message by itself (presence checksums start a resynchronisation),
//! so a link that is down drops what is sent to it rather than queueing.
//!
//! Metrics (through the `metrics` facade; the binary installs the
//! Prometheus exporter): `hapool_registrar_requests_total{type}`,
//! `hapool_registrar_registrations_total{result}`,
//! `hapool_registrar_removals_total{reason}`,
//! `hapool_registrar_refusals_total{request}`, and the gauges
//! `hapool_registrar_pools`, `hapool_registrar_pool_elements`,
//! `hapool_registrar_connections` and `hapool_registrar_peers`; ENRP:
//! `hapool_registrar_enrp_messages_total{direction}`,
//! `hapool_registrar_enrp_bytes_total{direction="out"}` and
//! `hapool_registrar_takeovers_total`.
//!
//! Never decides anything about the protocol itself: that is the state
//! machine's job.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hapool_handlespace::ConnectionId;
use hapool_net::{MessageReader, write_message};
use hapool_proto::{Event, Registrar, RegistrarConfig, RemovalReason, Transmit};
use hapool_wire::{
    AsapMessage, DEFAULT_MAX_MESSAGE, EnrpMessage, OperationError, PoolElement, PoolHandle,
    RegistrarId,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

/// Messages queued for one connection before it counts as too slow.
const WRITE_QUEUE: usize = 1024;

/// How long a client has to complete a TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One pool as a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The pool.
    pub pool_handle: PoolHandle,
    /// Its PEs, by id.
    pub elements: Vec<PoolElement>,
}

enum Input {
    /// A TLS handshake completed.
    Secured {
        id: ConnectionId,
        peer: SocketAddr,
        stream: Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    },
    Message {
        id: ConnectionId,
        message: AsapMessage,
    },
    Closed {
        id: ConnectionId,
    },
    /// An ENRP message from a peer.
    Peer(EnrpMessage),
}

enum Command {
    Snapshot(oneshot::Sender<Vec<PoolSnapshot>>),
    Peers(oneshot::Sender<Vec<PeerSnapshot>>),
    Shutdown,
}

/// A peer registrar as this one sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSnapshot {
    /// Its id.
    pub id: RegistrarId,
    /// Its ENRP endpoint.
    pub address: SocketAddr,
    /// How long ago it was last heard from.
    pub last_heard: std::time::Duration,
    /// How many PEs it is home for.
    pub owned: usize,
}

/// A cheap, cloneable way to ask a running registrar questions.
#[derive(Clone)]
pub struct RegistrarClient {
    commands: mpsc::Sender<Command>,
}

impl RegistrarClient {
    /// Every pool and PE, sorted by pool handle and PE id; empty once the
    /// registrar has stopped.
    pub async fn snapshot(&self) -> Vec<PoolSnapshot> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Snapshot(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The peer registrars believed alive, by id; empty once stopped.
    pub async fn peers(&self) -> Vec<PeerSnapshot> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Peers(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// A running registrar.
pub struct RegistrarHandle {
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    enrp_addr: Option<SocketAddr>,
    id: RegistrarId,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl RegistrarHandle {
    /// Where it listens for ASAP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where it listens for ASAP over TLS, if it does.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Where it listens for ENRP, if it does.
    pub fn enrp_addr(&self) -> Option<SocketAddr> {
        self.enrp_addr
    }

    /// Its registrar identifier.
    pub fn id(&self) -> RegistrarId {
        self.id
    }

    /// Every pool and PE, sorted by pool handle and PE id.
    pub async fn snapshot(&self) -> Vec<PoolSnapshot> {
        self.client().snapshot().await
    }

    /// A handle for questions that can outlive borrows of this one.
    pub fn client(&self) -> RegistrarClient {
        RegistrarClient {
            commands: self.commands.clone(),
        }
    }

    /// Stops serving: every connection is closed.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let _ = self.task.await;
    }
}

/// ASAP over TLS: where, and with which server configuration.
pub struct TlsListener {
    /// The listening socket (3864 by convention).
    pub listener: TcpListener,
    /// Certificate, key and, optionally, the client certificate authorities.
    pub config: Arc<rustls::ServerConfig>,
}

/// Where a registrar serves.
pub struct Listeners {
    /// ASAP over TCP.
    pub asap: TcpListener,
    /// ASAP over TLS. A TLS client that presents a certificate is known by
    /// the name in it (for the registration rules and ownership); one that
    /// presents none is anonymous.
    pub tls: Option<TlsListener>,
    /// Where to send ASAP_SERVER_ANNOUNCE by UDP (a multicast group such as
    /// 239.0.0.50:3863, or an address); requires `config.announce`.
    pub announce_to: Option<SocketAddr>,
    /// ENRP over TCP (9901 by convention), for a registrar in a cluster.
    /// When `config.enrp.address` is not set, this listener's address is
    /// what peers are told.
    pub enrp: Option<EnrpListener>,
}

/// Where ENRP is served, and whether over TLS.
pub struct EnrpListener {
    /// The listening socket (9901 by convention, 9902 for TLS).
    pub listener: TcpListener,
    /// Mutual TLS between registrars: every peer connection, in and out,
    /// is TLS with certificates from the cluster's authority.
    pub tls: Option<EnrpTls>,
    /// An IPv4 multicast group and port (such as 239.0.0.51:9901) where
    /// the registrar announces its presence every heartbeat and looks for
    /// a mentor at start-up, so that registrars find each other without a
    /// peer list. Joined on the interface of the ENRP address.
    pub multicast: Option<SocketAddr>,
}

/// A UDP socket in the ENRP multicast `group`, on the interface with
/// address `interface` (any when unspecified). Several registrars on one
/// host share the port.
fn group_socket(group: SocketAddr, interface: std::net::IpAddr) -> io::Result<std::net::UdpSocket> {
    let (std::net::IpAddr::V4(ip), std::net::IpAddr::V4(interface)) = (group.ip(), interface)
    else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("ENRP multicast needs an IPv4 group and an IPv4 ENRP address, not {group}"),
        ));
    };
    if !ip.is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{group} is not a multicast group"),
        ));
    }
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, group.port())).into())?;
    socket.join_multicast_v4(&ip, &interface)?;
    socket.set_multicast_if_v4(&interface)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(8)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The TLS configurations of ENRP.
#[derive(Clone)]
pub struct EnrpTls {
    /// For peers connecting here: this registrar's certificate, and a
    /// client certificate required of every peer
    /// ([`hapool_net::tls::mutual_server_config`]).
    pub server: Arc<rustls::ServerConfig>,
    /// For connecting to peers: the cluster's authority, and this
    /// registrar's certificate as client certificate. Peers are checked
    /// against their IP address.
    pub client: Arc<rustls::ClientConfig>,
}

/// Starts a registrar serving ASAP on `listener`.
pub fn start(config: RegistrarConfig, listener: TcpListener) -> io::Result<RegistrarHandle> {
    start_serving(
        config,
        Listeners {
            asap: listener,
            tls: None,
            announce_to: None,
            enrp: None,
        },
    )
}

/// Starts a registrar on `listeners`. When it announces itself and the
/// announcement names no transport, it names its ASAP listener.
pub fn start_serving(
    mut config: RegistrarConfig,
    listeners: Listeners,
) -> io::Result<RegistrarHandle> {
    let Listeners {
        asap: listener,
        tls,
        announce_to,
        enrp,
    } = listeners;
    let local_addr = listener.local_addr()?;
    let enrp_addr = enrp.as_ref().map(|e| e.listener.local_addr()).transpose()?;
    if let Some(addr) = enrp_addr
        && config.enrp.address.is_none()
    {
        if addr.ip().is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the ENRP listener {addr} is on every address: say which one peers reach (enrp.address)"
                ),
            ));
        }
        config.enrp.address = Some(addr);
    }
    let group = match enrp.as_ref().and_then(|e| e.multicast) {
        Some(group) => {
            let interface = config
                .enrp
                .address
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
            config.enrp.multicast = true;
            Some((group_socket(group, interface)?, group))
        }
        None => None,
    };
    if let Some(announce) = &mut config.announce
        && announce.transports.is_empty()
    {
        announce
            .transports
            .push(hapool_wire::Transport::tcp(local_addr));
    }
    let announcer = match announce_to {
        Some(target) => Some(announcer(target)?),
        None => None,
    };
    let tls_addr = tls.as_ref().map(|t| t.listener.local_addr()).transpose()?;
    let id = config.id;
    let (commands, command_rx) = mpsc::channel(16);
    info!(registrar_id = %id, %local_addr, ?tls_addr, ?enrp_addr, peers = ?config.enrp.peers, "registrar serving ASAP");
    let registrar = Registrar::new(config);
    // Recorded before the task runs, so the gauges exist as soon as this
    // returns.
    record_gauges(&registrar, 0);
    let task = tokio::spawn(run(
        registrar,
        Sockets {
            asap: listener,
            tls,
            enrp,
            group,
            announcer,
        },
        command_rx,
    ));
    Ok(RegistrarHandle {
        tls_addr,
        enrp_addr,
        local_addr,
        id,
        commands,
        task,
    })
}

/// Splits a stream and spawns its reader and writer tasks.
fn spawn_connection<S>(id: ConnectionId, stream: S, inputs: &mpsc::Sender<Input>) -> Connection
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let (writer, queue) = mpsc::channel(WRITE_QUEUE);
    let tasks = [
        tokio::spawn(write_loop(write, queue)),
        tokio::spawn(read_loop(id, read, inputs.clone(), writer.clone())),
    ];
    Connection { writer, tasks }
}

/// Accepts from `tls`, or never when there is none.
async fn accept_tls(tls: Option<&TlsListener>) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// A UDP socket to send announcements to `target` from.
fn announcer(target: SocketAddr) -> io::Result<(std::net::UdpSocket, SocketAddr)> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    if let std::net::IpAddr::V4(group) = target.ip()
        && group.is_multicast()
    {
        socket.set_multicast_loop_v4(true)?;
        socket.set_multicast_ttl_v4(8)?;
    }
    socket.set_nonblocking(true)?;
    Ok((socket, target))
}

/// Accepts from `listener`, or never when there is none.
async fn accept_on(
    listener: Option<&TcpListener>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Everything the registrar task listens and sends on.
struct Sockets {
    asap: TcpListener,
    tls: Option<TlsListener>,
    enrp: Option<EnrpListener>,
    /// The ENRP multicast socket and its group.
    group: Option<(std::net::UdpSocket, SocketAddr)>,
    announcer: Option<(std::net::UdpSocket, SocketAddr)>,
}

async fn run(mut registrar: Registrar, sockets: Sockets, mut commands: mpsc::Receiver<Command>) {
    let Sockets {
        asap: listener,
        tls,
        enrp,
        group,
        announcer,
    } = sockets;
    // Connections to peers leave from the ENRP address, so that peers
    // (and firewalls) see the address they know this registrar by.
    let (input_tx, mut inputs) = mpsc::channel::<Input>(4096);
    let group = group.and_then(|(socket, target)| {
        tokio::net::UdpSocket::from_std(socket)
            .inspect_err(|e| warn!(error = %e, "cannot use the ENRP multicast group"))
            .ok()
            .map(|s| (Arc::new(s), target))
    });
    let group_reader = group
        .as_ref()
        .map(|(socket, _)| tokio::spawn(group_read_loop(socket.clone(), input_tx.clone())));
    let (enrp, enrp_tls) = match enrp {
        Some(e) => (Some(e.listener), e.tls),
        None => (None, None),
    };
    let mut links = PeerLinks {
        tls: enrp_tls.as_ref().map(|t| t.client.clone()),
        source: registrar
            .config()
            .enrp
            .address
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified()),
        links: HashMap::new(),
        inputs: input_tx.clone(),
    };
    let announcer = announcer.and_then(|(socket, target)| {
        tokio::net::UdpSocket::from_std(socket)
            .inspect_err(|e| warn!(error = %e, "cannot announce"))
            .ok()
            .map(|s| (s, target))
    });
    registrar.handle_start(Instant::now().into_std());
    let acceptor = tls
        .as_ref()
        .map(|t| hapool_net::tls::TlsAcceptor::from(t.config.clone()));
    let mut connections: HashMap<ConnectionId, Connection> = HashMap::new();
    let mut paused = AcceptPause::default();
    let mut next_id = 0u64;
    loop {
        // What the last input (or the start) produced goes out first.
        while let Some(transmit) = registrar.poll_transmit() {
            let (connection, message) = match transmit {
                Transmit::Send {
                    connection,
                    message,
                } => (connection, message),
                Transmit::Announce { message } => {
                    if let Some((socket, target)) = &announcer
                        && let Ok(bytes) = hapool_wire::Message::to_bytes(&message)
                        && let Err(e) = socket.try_send_to(&bytes, *target)
                    {
                        warn!(%target, error = %e, "cannot send the server announcement");
                    }
                    continue;
                }
                Transmit::PeerGroup { message } => {
                    if let Some((socket, target)) = &group
                        && let Ok(bytes) = hapool_wire::Message::to_bytes(&message)
                        && let Err(e) = socket.try_send_to(&bytes, *target)
                    {
                        warn!(%target, error = %e, "cannot send to the ENRP multicast group");
                    }
                    continue;
                }
                Transmit::Peer { to, message } => {
                    metrics::counter!("hapool_registrar_enrp_messages_total", "direction" => "out")
                        .increment(1);
                    links.send(to, message);
                    continue;
                }
            };
            let Some(c) = connections.get(&connection) else {
                continue;
            };
            if c.writer.try_send(message).is_err() {
                warn!(
                    connection = connection.0,
                    "connection too slow or gone; closing it"
                );
                if let Some(c) = connections.remove(&connection) {
                    c.close();
                }
                registrar.handle_disconnect(connection, Instant::now().into_std());
            }
        }
        while let Some(event) = registrar.poll_event() {
            log_event(&event);
        }
        record_gauges(&registrar, connections.len());
        let deadline = registrar.poll_timeout().map(Instant::from_std);
        tokio::select! {
            accepted = listener.accept(), if paused.is_none() => match accepted {
                Ok((stream, peer)) => {
                    next_id += 1;
                    let id = ConnectionId(next_id);
                    let _ = stream.set_nodelay(true);
                    debug!(connection = id.0, %peer, "connection accepted");
                    connections.insert(id, spawn_connection(id, stream, &input_tx));
                    registrar.handle_connect(id, Some(peer), None, Instant::now().into_std());
                }
                Err(e) => paused.fail("ASAP", &e),
            },
            accepted = accept_on(enrp.as_ref()), if paused.is_none() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    debug!(%peer, "ENRP connection accepted");
                    let inputs = input_tx.clone();
                    let me = registrar.config().id;
                    match &enrp_tls {
                        None => {
                            let (read, write) = stream.into_split();
                            tokio::spawn(peer_read_loop(read, Some((write, me)), peer, inputs));
                        }
                        Some(tls) => {
                            let acceptor = hapool_net::tls::TlsAcceptor::from(tls.server.clone());
                            tokio::spawn(async move {
                                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => {
                                        let (read, write) = tokio::io::split(stream);
                                        peer_read_loop(read, Some((write, me)), peer, inputs).await;
                                    }
                                    Ok(Err(e)) => warn!(%peer, error = %e, "ENRP TLS handshake failed"),
                                    Err(_) => warn!(%peer, "ENRP TLS handshake timed out"),
                                }
                            });
                        }
                    }
                }
                Err(e) => paused.fail("ENRP", &e),
            },
            accepted = accept_tls(tls.as_ref()), if paused.is_none() => match (accepted, &acceptor) {
                (Ok((stream, peer)), Some(acceptor)) => {
                    next_id += 1;
                    let id = ConnectionId(next_id);
                    let _ = stream.set_nodelay(true);
                    let (acceptor, inputs) = (acceptor.clone(), input_tx.clone());
                    // The handshake runs on its own, so a slow client
                    // cannot hold up the registrar.
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let stream = Box::new(stream);
                                let _ = inputs.send(Input::Secured { id, peer, stream }).await;
                            }
                            Ok(Err(e)) => warn!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => warn!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                (Err(e), _) => paused.fail("ASAP over TLS", &e),
                (Ok(_), None) => unreachable!("accepting TLS only with an acceptor"),
            },
            Some(input) = inputs.recv() => {
                let now = Instant::now().into_std();
                match input {
                    Input::Secured { id, peer, stream } => {
                        let identity = hapool_net::tls::client_identity(&stream).map(Arc::<str>::from);
                        debug!(connection = id.0, %peer, ?identity, "TLS connection accepted");
                        connections.insert(id, spawn_connection(id, *stream, &input_tx));
                        registrar.handle_connect(id, Some(peer), identity, now);
                    }
                    Input::Message { id, message } => {
                        count_request(&message);
                        registrar.handle_message(id, message, now);
                    }
                    Input::Closed { id } => {
                        debug!(connection = id.0, "connection closed");
                        // Dropping the queue lets the writer send what is
                        // left (such as an error report) and then close.
                        connections.remove(&id);
                        registrar.handle_disconnect(id, now);
                    }
                    Input::Peer(message) => {
                        metrics::counter!("hapool_registrar_enrp_messages_total", "direction" => "in")
                            .increment(1);
                        registrar.handle_peer_message(message, now);
                    }
                }
            }
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                registrar.handle_timeout(Instant::now().into_std());
            }
            () = paused.over(), if !paused.is_none() => paused.resume(),
            command = commands.recv() => match command {
                Some(Command::Snapshot(reply)) => {
                    let _ = reply.send(snapshot(&registrar));
                }
                Some(Command::Peers(reply)) => {
                    let now = Instant::now().into_std();
                    let peers = registrar
                        .peers()
                        .into_iter()
                        .map(|p| PeerSnapshot {
                            id: p.id,
                            address: p.address,
                            last_heard: now.saturating_duration_since(p.last_heard),
                            owned: p.owned,
                        })
                        .collect();
                    let _ = reply.send(peers);
                }
                Some(Command::Shutdown) | None => break,
            },
        }
    }
    for (_, c) in connections {
        c.close();
    }
    links.close();
    if let Some(task) = group_reader {
        task.abort();
    }
    info!("registrar stopped");
}

/// Accepting stops for a while after a failure: out of descriptors, most
/// likely, and a listener that fails at once again would have the
/// registrar spin and log without end (seen: 1.35 million lines in 3 s
/// with 64 descriptors and 100 connections open). Its other work goes on.
#[derive(Default)]
struct AcceptPause {
    /// When accepting starts again.
    until: Option<Instant>,
    /// Failures since the last warning.
    failures: u64,
    /// When the last warning was logged.
    warned: Option<Instant>,
}

impl AcceptPause {
    /// How long accepting stops after a failure.
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

    fn is_none(&self) -> bool {
        self.until.is_none()
    }

    /// Accepting on `what` failed with `error`: it stops, and the failure
    /// is logged at most once a second.
    fn fail(&mut self, what: &str, error: &io::Error) {
        let now = Instant::now();
        self.until = Some(now + Self::PAUSE);
        self.failures += 1;
        if self
            .warned
            .is_none_or(|at| now.duration_since(at) >= std::time::Duration::from_secs(1))
        {
            warn!(listener = what, %error, failures = self.failures, "cannot accept connections; trying again in 100 ms (logged at most once a second)");
            self.warned = Some(now);
            self.failures = 0;
        }
    }

    /// When accepting starts again (never, when it has not stopped).
    async fn over(&self) {
        match self.until {
            Some(until) => sleep_until(until).await,
            None => std::future::pending().await,
        }
    }

    fn resume(&mut self) {
        self.until = None;
    }
}

/// A connection's outgoing queue and its reader and writer tasks.
struct Connection {
    writer: mpsc::Sender<AsapMessage>,
    tasks: [JoinHandle<()>; 2],
}

impl Connection {
    /// Closes the connection at once: both tasks end and the socket with
    /// them, whatever is still queued.
    fn close(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

fn snapshot(registrar: &Registrar) -> Vec<PoolSnapshot> {
    let mut pools: Vec<PoolSnapshot> = registrar
        .handlespace()
        .pools()
        .map(|pool| {
            let mut elements: Vec<PoolElement> = pool.iter().map(|e| e.element().clone()).collect();
            elements.sort_by_key(|e| e.id);
            PoolSnapshot {
                pool_handle: pool.handle().clone(),
                elements,
            }
        })
        .collect();
    pools.sort_by(|a, b| a.pool_handle.cmp(&b.pool_handle));
    pools
}

/// Logs an event and counts it in the metrics.
fn log_event(event: &Event) {
    match event {
        Event::Registered {
            pool_handle,
            element,
            added,
        } => {
            debug!(pool = %pool_handle, pe_id = %element.id, added, "registered");
            let kind = if *added { "added" } else { "updated" };
            metrics::counter!("hapool_registrar_registrations_total", "result" => kind)
                .increment(1);
        }
        Event::Removed {
            pool_handle,
            element,
            reason,
        } => {
            info!(pool = %pool_handle, pe_id = %element.id, ?reason, "pool element removed");
            let reason = match reason {
                RemovalReason::Deregistered => "deregistered",
                RemovalReason::KeepAliveTimeout => "keep_alive_timeout",
                RemovalReason::ConnectionLost => "connection_lost",
                RemovalReason::Unreachable => "unreachable",
                RemovalReason::Expired => "expired",
            };
            metrics::counter!("hapool_registrar_removals_total", "reason" => reason).increment(1);
        }
        Event::Refused {
            connection,
            request,
            cause,
        } => {
            warn!(
                connection = connection.0,
                request,
                ?cause,
                "request refused"
            );
            metrics::counter!("hapool_registrar_refusals_total", "request" => *request)
                .increment(1);
        }
        Event::PeerUp { id, address } => info!(peer = %id, %address, "peer registrar up"),
        Event::PeerDown { id } => warn!(peer = %id, "peer registrar down"),
        Event::TakenOver {
            target,
            by,
            elements,
        } => {
            warn!(%target, %by, elements, "pool elements of a dead registrar taken over");
            metrics::counter!("hapool_registrar_takeovers_total").increment(1);
        }
        Event::AuditMismatch { peer, theirs, ours } => {
            info!(%peer, theirs, ours, "handle table audit mismatch; resynchronising");
        }
        Event::Synchronized { peer, elements } => {
            debug!(%peer, elements, "handle table copied");
        }
        Event::Serving { mentor, elements } => {
            info!(?mentor, elements, "serving ASAP");
        }
        Event::PeerUpdateRefused {
            peer,
            pool_handle,
            cause,
        } => warn!(%peer, pool = %pool_handle, ?cause, "cannot store a PE from a peer"),
        Event::PeerError { peer, error } => warn!(%peer, ?error, "peer reports an error"),
        Event::PeerClaimsOwnAddress { sender, address } => {
            warn!(%sender, %address, "a peer's presence gives this registrar's own ENRP address; ignored (two registrars configured with one address?)");
        }
        Event::Claimed {
            pool_handle,
            pe_id,
            by,
            kept: true,
        } => info!(pool = %pool_handle, %pe_id, peer = %by,
            "a peer announced a pool element registered here as its own; the element answered here and stays"),
        Event::Claimed {
            pool_handle,
            pe_id,
            by,
            kept: false,
        } => info!(pool = %pool_handle, %pe_id, peer = %by,
            "a pool element registered here moved to the peer that announced it"),
        Event::PeerMessageIgnored { sender, receiver } => {
            warn!(%sender, %receiver, "ENRP message not for this registrar");
        }
    }
}

/// Sets the gauges of the handlespace and the connections.
fn record_gauges(registrar: &Registrar, connections: usize) {
    let handlespace = registrar.handlespace();
    metrics::gauge!("hapool_registrar_pools").set(handlespace.pool_count() as f64);
    metrics::gauge!("hapool_registrar_pool_elements").set(handlespace.len() as f64);
    metrics::gauge!("hapool_registrar_connections").set(connections as f64);
    metrics::gauge!("hapool_registrar_peers").set(registrar.peers().len() as f64);
}

/// Reads ENRP messages from one peer connection.
/// Reads ENRP messages from a peer connection. With `replies` (the
/// connection's write half and this registrar's id), input that is
/// malformed or carries parameters to report is answered with ENRP_ERROR
/// on the same connection.
async fn peer_read_loop<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    read: R,
    mut replies: Option<(W, RegistrarId)>,
    peer: SocketAddr,
    inputs: mpsc::Sender<Input>,
) {
    let mut reader = MessageReader::<_, EnrpMessage>::new(read, DEFAULT_MAX_MESSAGE);
    loop {
        let causes = match reader.next().await {
            Ok(Some(decoded)) => {
                let (sender, reports) = (decoded.message.sender, decoded.reports);
                if inputs.send(Input::Peer(decoded.message)).await.is_err() {
                    return;
                }
                (sender, reports)
            }
            Ok(None) => return,
            Err(hapool_net::ReadError::Io(e)) => {
                info!(%peer, error = %e, "ENRP connection lost");
                return;
            }
            Err(e) => {
                warn!(%peer, error = %e, "malformed ENRP input");
                let cause = match &e {
                    hapool_net::ReadError::Decode(d) => d.cause(),
                    _ => None,
                };
                if let (Some((write, me)), Some(cause)) = (replies.as_mut(), cause) {
                    let _ = write_enrp_error(write, *me, RegistrarId(0), vec![cause]).await;
                }
                if !e.is_recoverable() {
                    return;
                }
                continue;
            }
        };
        if let (Some((write, me)), (sender, reports)) = (replies.as_mut(), causes)
            && !reports.is_empty()
        {
            let _ = write_enrp_error(write, *me, sender, reports).await;
        }
    }
}

/// Reads ENRP presences from the multicast group.
async fn group_read_loop(socket: Arc<tokio::net::UdpSocket>, inputs: mpsc::Sender<Input>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let (n, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                warn!(error = %e, "ENRP multicast receive failed");
                return;
            }
        };
        match <EnrpMessage as hapool_wire::Message>::decode(&buffer[..n]) {
            // Only presences belong on the group.
            Ok(decoded)
                if matches!(decoded.message.body, hapool_wire::EnrpBody::Presence { .. }) =>
            {
                if inputs.send(Input::Peer(decoded.message)).await.is_err() {
                    return;
                }
            }
            Ok(other) => {
                let kind = other.message.body.message_type();
                debug!(%from, ?kind, "not a presence; ignored on the multicast group");
            }
            Err(e) => debug!(%from, error = %e, "malformed datagram on the ENRP multicast group"),
        }
    }
}

/// Writes an ENRP_ERROR with `causes`.
async fn write_enrp_error<W: AsyncWrite + Unpin>(
    write: &mut W,
    me: RegistrarId,
    to: RegistrarId,
    causes: Vec<hapool_wire::ErrorCause>,
) -> Result<(), hapool_net::WriteError> {
    let message = EnrpMessage {
        sender: me,
        receiver: to,
        body: hapool_wire::EnrpBody::Error {
            error: OperationError { causes },
        },
    };
    write_message(write, &message).await
}

/// ENRP messages queued for one peer before the link counts as stuck.
const PEER_QUEUE: usize = 4096;

/// How long to wait for a peer's ENRP port to accept, and between
/// attempts.
const PEER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Outgoing ENRP connections, one per peer address.
struct PeerLinks {
    /// The local address to connect from.
    source: Option<std::net::IpAddr>,
    /// TLS to peers, when ENRP runs over TLS.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Where what peers send back on these links goes (such as ENRP_ERROR).
    inputs: mpsc::Sender<Input>,
    links: HashMap<SocketAddr, (mpsc::Sender<EnrpMessage>, JoinHandle<()>)>,
}

impl PeerLinks {
    /// Queues `message` for the peer at `to`, opening a link if there is
    /// none. A full queue drops the message.
    fn send(&mut self, to: SocketAddr, message: EnrpMessage) {
        if let Some((queue, task)) = self.links.get(&to)
            && !task.is_finished()
        {
            if queue.try_send(message).is_err() {
                debug!(peer = %to, "ENRP link full; message dropped");
            }
            return;
        }
        let (queue, rx) = mpsc::channel(PEER_QUEUE);
        let _ = queue.try_send(message);
        let link = Link {
            to,
            source: self.source,
            tls: self.tls.clone(),
            inputs: self.inputs.clone(),
        };
        let task = tokio::spawn(peer_write_loop(link, rx));
        self.links.insert(to, (queue, task));
    }

    fn close(self) {
        for (_, (_, task)) in self.links {
            task.abort();
        }
    }
}

/// Connects to a peer and writes what is queued for it. While the peer
/// cannot be reached, what is queued is dropped; the link tries again
/// every [`PEER_CONNECT_TIMEOUT`].
/// Where a link goes and how.
struct Link {
    to: SocketAddr,
    source: Option<std::net::IpAddr>,
    tls: Option<Arc<rustls::ClientConfig>>,
    inputs: mpsc::Sender<Input>,
}

async fn peer_write_loop(link: Link, mut queue: mpsc::Receiver<EnrpMessage>) {
    let to = link.to;
    let mut reachable = true;
    loop {
        let connected = tokio::time::timeout(
            PEER_CONNECT_TIMEOUT,
            connect_peer(link.source, to, link.tls.as_ref()),
        )
        .await;
        if matches!(connected, Ok(Ok(_))) {
            reachable = true;
        }
        let (read, mut stream) = match connected {
            Ok(Ok(stream)) => tokio::io::split(stream),
            Ok(Err(e)) => {
                // Said once per outage, not at every attempt.
                if reachable {
                    warn!(peer = %to, error = %e, "cannot reach peer registrar");
                }
                reachable = false;
                if !drop_for(&mut queue, PEER_CONNECT_TIMEOUT).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                debug!(peer = %to, "peer registrar does not accept in time");
                if !drop_for(&mut queue, std::time::Duration::ZERO).await {
                    return;
                }
                continue;
            }
        };
        // What the peer sends back on this link (ENRP_ERROR) is read too.
        let reader = tokio::spawn(peer_read_loop(
            read,
            None::<(tokio::io::Sink, RegistrarId)>,
            to,
            link.inputs.clone(),
        ));
        while let Some(message) = queue.recv().await {
            let bytes = match hapool_wire::Message::to_bytes(&message) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(peer = %to, error = %e, "ENRP message cannot be encoded");
                    continue;
                }
            };
            if let Err(e) = stream.write_all(&bytes).await {
                debug!(peer = %to, error = %e, "ENRP link broken");
                break;
            }
            metrics::counter!("hapool_registrar_enrp_bytes_total", "direction" => "out")
                .increment(bytes.len() as u64);
        }
        reader.abort();
        if queue.is_closed() && queue.is_empty() {
            return;
        }
    }
}

/// A stream to a peer, plain or TLS.
trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

/// Opens a link to the peer at `to`: TCP from `source`, then TLS when
/// configured (the peer's certificate must name its IP address).
async fn connect_peer(
    source: Option<std::net::IpAddr>,
    to: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> io::Result<PeerStream> {
    let stream = connect_from(source, to).await?;
    let _ = stream.set_nodelay(true);
    match tls {
        None => Ok(Box::new(stream)),
        Some(config) => {
            let name = hapool_net::tls::ServerName::IpAddress(to.ip().into());
            let stream = hapool_net::tls::TlsConnector::from(config.clone())
                .connect(name, stream)
                .await?;
            Ok(Box::new(stream))
        }
    }
}

/// Connects to `to`, from `source` when given (and of the same family).
async fn connect_from(
    source: Option<std::net::IpAddr>,
    to: SocketAddr,
) -> io::Result<tokio::net::TcpStream> {
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = source
        && ip.is_ipv4() == to.is_ipv4()
    {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(to).await
}

/// Drops what is queued, and what arrives during `wait`; false when the
/// queue is closed.
async fn drop_for(queue: &mut mpsc::Receiver<EnrpMessage>, wait: std::time::Duration) -> bool {
    while queue.try_recv().is_ok() {}
    let until = Instant::now() + wait;
    loop {
        tokio::select! {
            () = sleep_until(until) => return !queue.is_closed(),
            message = queue.recv() => if message.is_none() { return false },
        }
    }
}

/// Counts a request by its message type.
fn count_request(message: &AsapMessage) {
    let kind = match message {
        AsapMessage::Registration { .. } => "registration",
        AsapMessage::Deregistration { .. } => "deregistration",
        AsapMessage::HandleResolution { .. } => "handle_resolution",
        AsapMessage::EndpointKeepAliveAck { .. } => "keep_alive_ack",
        AsapMessage::EndpointUnreachable { .. } => "endpoint_unreachable",
        _ => "other",
    };
    metrics::counter!("hapool_registrar_requests_total", "type" => kind).increment(1);
}

async fn read_loop<R: AsyncRead + Unpin>(
    id: ConnectionId,
    read: R,
    inputs: mpsc::Sender<Input>,
    writer: mpsc::Sender<AsapMessage>,
) {
    let mut reader = MessageReader::<_, AsapMessage>::new(read, DEFAULT_MAX_MESSAGE);
    // What the reader already holds beyond the message in hand.
    let mut ahead = None;
    loop {
        let read = match ahead.take() {
            Some(read) => read,
            None => reader.next().await,
        };
        match read {
            Ok(Some(decoded)) => {
                if matches!(decoded.message, AsapMessage::Registration { .. }) {
                    // A registration that arrives with the end of its
                    // connection is not served: the PE has left (it gave up
                    // waiting, typically while this registrar was stalled,
                    // and registered elsewhere), nobody can be answered, and
                    // the PE would be removed again at once. Announced to
                    // the peers, it would only disturb the PE's new home.
                    let after = ready_now(&mut reader);
                    let ended = match &after {
                        Some(Ok(None)) => true,
                        Some(Err(e)) => !e.is_recoverable(),
                        _ => false,
                    };
                    ahead = after;
                    if ended {
                        debug!(
                            connection = id.0,
                            "a registration that came with the end of its connection is not served"
                        );
                        continue;
                    }
                }
                if !decoded.reports.is_empty() {
                    let error = OperationError {
                        causes: decoded.reports,
                    };
                    let _ = writer.try_send(AsapMessage::Error { error });
                }
                if inputs
                    .send(Input::Message {
                        id,
                        message: decoded.message,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(None) => break,
            Err(hapool_net::ReadError::Io(e)) => {
                // A reset or a dead peer: the connection's loss is handled
                // (and its PEs removed) as for a close.
                debug!(connection = id.0, error = %e, "connection lost");
                break;
            }
            Err(e) => {
                warn!(connection = id.0, error = %e, "malformed input");
                if let hapool_net::ReadError::Decode(d) = &e
                    && let Some(cause) = d.cause()
                {
                    let error = OperationError::single(cause);
                    let _ = writer.try_send(AsapMessage::Error { error });
                }
                if !e.is_recoverable() {
                    break;
                }
            }
        }
    }
    let _ = inputs.send(Input::Closed { id }).await;
}

/// What `reader` yields without waiting: the next message, the end of the
/// stream or an error when the bytes for it are already here, `None` when
/// it would have to wait. Nothing is lost by asking: the reader keeps what
/// it read.
fn ready_now<R: AsyncRead + Unpin>(
    reader: &mut MessageReader<R, AsapMessage>,
) -> Option<Result<Option<hapool_wire::Decoded<AsapMessage>>, hapool_net::ReadError>> {
    let next = std::pin::pin!(reader.next());
    match next.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(read) => Some(read),
        std::task::Poll::Pending => None,
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut write: W, mut queue: mpsc::Receiver<AsapMessage>) {
    while let Some(message) = queue.recv().await {
        if let Err(e) = write_message(&mut write, &message).await {
            debug!(error = %e, "write failed");
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapool_wire::{Message, Policy, PoolElement, PoolElementId, RegistrarId, Transport};
    use std::time::Duration;

    fn registration(id: u32) -> Vec<u8> {
        AsapMessage::Registration {
            pool_handle: PoolHandle::from("p"),
            pool_element: PoolElement {
                id: PoolElementId(id),
                home_registrar: RegistrarId(0),
                registration_life: 30_000,
                user_transport: Transport::tcp(([127, 0, 0, 1], 80).into()),
                policy: Policy::RoundRobin,
                asap_transport: None,
            },
            auth_token: None,
        }
        .to_bytes()
        .unwrap()
        .to_vec()
    }

    fn resolution() -> Vec<u8> {
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: PoolHandle::from("p"),
            items: None,
        }
        .to_bytes()
        .unwrap()
        .to_vec()
    }

    /// What the reader of a connection hands the state machine when the
    /// client sent `bytes` and then, if `end`, closed the connection before
    /// the reader looked; `None` stands for the connection's end.
    async fn inputs(bytes: Vec<u8>, end: bool) -> Vec<Option<&'static str>> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&bytes).await.unwrap();
        let mut client = Some(client);
        if end {
            client = None;
        }
        let (tx, mut rx) = mpsc::channel(16);
        let (writer, _queue) = mpsc::channel(16);
        let reader = tokio::spawn(read_loop(ConnectionId(1), server, tx, writer));
        let mut seen = Vec::new();
        loop {
            let input = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
            match input {
                Ok(Some(Input::Message { message, .. })) => seen.push(Some(match message {
                    AsapMessage::Registration { .. } => "registration",
                    AsapMessage::HandleResolution { .. } => "resolution",
                    _ => "other",
                })),
                Ok(Some(Input::Closed { .. })) => {
                    seen.push(None);
                    break;
                }
                Ok(_) => panic!("unexpected input"),
                // Nothing more while the connection is open: close it.
                Err(_) => client = None,
            }
            let _ = &client;
        }
        reader.await.unwrap();
        seen
    }

    #[tokio::test]
    async fn a_registration_that_comes_with_the_end_of_its_connection_is_not_served() {
        assert_eq!(inputs(registration(1), true).await, [None]);
        // With the connection open it is, and so is one followed by more.
        assert_eq!(
            inputs(registration(1), false).await,
            [Some("registration"), None]
        );
        let mut two = registration(1);
        two.extend(resolution());
        two.extend(registration(2));
        assert_eq!(
            inputs(two, true).await,
            [Some("registration"), Some("resolution"), None]
        );
        // Other requests are handed on as they were.
        assert_eq!(inputs(resolution(), true).await, [Some("resolution"), None]);
    }
}
