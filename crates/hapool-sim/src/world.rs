//! The simulated world: registrars, pool elements and pool users, the
//! faults of one seed, and the invariants.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hapool_handlespace::{ConnectionId, checksum_of};
use hapool_proto::{
    EnrpConfig, Event, PeEvent, PeOutput, PeSession, PeSessionConfig, PeStatus, Registrar,
    RegistrarConfig, Transmit,
};
use hapool_wire::{
    AsapMessage, EnrpMessage, Message, Policy, PoolElement, PoolElementId, PoolHandle, RegistrarId,
    ResolutionOutcome, Transport,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::SimConfig;
use crate::network::{Links, Queue, delay};

/// ENRP heartbeat of the simulated registrars (all ENRP timers follow it).
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Keep-alive interval and timeout of the simulated registrars.
const KEEP_ALIVE: Duration = Duration::from_millis(100);
/// Registration life the simulated PEs ask for.
const LIFE: Duration = Duration::from_millis(3_000);
/// Re-registration interval of the simulated PEs.
const REREGISTRATION: Duration = Duration::from_millis(1_000);
/// How often the registrars' checksums are recomputed from scratch and
/// compared (the other invariants are checked after every event).
const CHECKSUM_CHECK_EVERY: Duration = Duration::from_millis(10);
/// The pools: one per policy family.
const POOLS: [&str; 2] = ["web", "db"];
/// The connection number each registrar gives its pool user.
const PU_CONNECTION: u64 = u64::MAX;

/// How long a healthy cluster may take to show a change everywhere: a
/// missed update is repaired by the next audit (a presence, then a handle
/// table copy), and a peer cut off by a partition is found again by the
/// heartbeat to its address and then audited.
fn propagation_bound(enrp: &EnrpConfig) -> Duration {
    enrp.heartbeat_cycle * 3 + enrp.max_time_last_heard + enrp.max_time_no_response * 2
}

/// A broken invariant, with the seed that breaks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The seed.
    pub seed: u64,
    /// Virtual time since the start.
    pub at: Duration,
    /// What broke.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} at {:?}: {}\n  reproduce: cargo run -p hapool-sim --release -- --seed {} --trace",
            self.seed, self.at, self.what, self.seed
        )
    }
}

impl std::error::Error for Violation {}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Registrars in the cluster.
    pub registrars: usize,
    /// Pool elements.
    pub elements: usize,
    /// Events processed.
    pub events: u64,
    /// Faults injected.
    pub faults: usize,
    /// Takeovers completed (as counted by the registrars that took over).
    pub takeovers: usize,
    /// Handle resolutions by the pool users.
    pub resolutions: u64,
    /// ENRP messages sent.
    pub enrp_messages: u64,
}

#[derive(Clone, Debug)]
enum Fault {
    CrashRegistrar(usize),
    RestartRegistrar(usize),
    CrashElement(usize),
    RestartElement(usize),
    Partition(Vec<bool>),
    Lossy { loss: f64, reorder: f64 },
    Heal,
}

#[derive(Debug)]
enum Ev {
    RegistrarTimer(usize, u32),
    ElementTimer(usize, u32),
    Enrp { to: usize, bytes: Vec<u8> },
    ToRegistrar { conn: u64, bytes: Vec<u8> },
    ToElement { conn: u64, bytes: Vec<u8> },
    Opened(u64),
    OpenFailed(u64),
    RegistrarSeesClose(u64),
    ElementSeesClose(u64),
    Fault(Fault),
    Resolve,
}

struct RegistrarNode {
    r: Registrar,
    timer: Option<Instant>,
    serving_since: Option<Instant>,
}

struct RegistrarSlot {
    address: SocketAddr,
    node: Option<RegistrarNode>,
    incarnation: u32,
}

struct ElementNode {
    s: PeSession,
    timer: Option<Instant>,
    conn: Option<u64>,
    /// Since when it is registered, and with which registrar slot.
    registered: Option<(Instant, usize)>,
}

struct ElementSlot {
    pool: usize,
    node: Option<ElementNode>,
    incarnation: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ConnState {
    Opening,
    Open,
    Closed,
}

struct Conn {
    element: usize,
    element_incarnation: u32,
    registrar: usize,
    registrar_incarnation: u32,
    state: ConnState,
    /// Latest delivery time in each direction, so a connection stays in
    /// order (to the registrar, to the element).
    last: [Instant; 2],
}

struct DeadElement {
    pool: usize,
    id: PoolElementId,
    at: Instant,
}

struct World {
    seed: u64,
    config: SimConfig,
    rng: StdRng,
    start: Instant,
    now: Instant,
    queue: Queue<Ev>,
    links: Links,
    /// Since when the network is whole and lossless.
    healthy_since: Option<Instant>,
    registrars: Vec<RegistrarSlot>,
    elements: Vec<ElementSlot>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    dead: Vec<DeadElement>,
    enrp: EnrpConfig,
    report: Report,
    /// The pool handles of [`POOLS`].
    handles: [PoolHandle; 2],
}

/// Runs the simulation of `seed`.
pub fn run(seed: u64, config: &SimConfig) -> Result<Report, Violation> {
    let mut world = World::new(seed, config.clone());
    world.schedule_faults();
    let end = world.start + config.fault_time + config.quiet_time;
    world
        .queue
        .push(world.start + config.fault_time, Ev::Fault(Fault::Heal));
    world
        .queue
        .push(world.start + Duration::from_millis(50), Ev::Resolve);
    let mut next_checksum_check = world.start;
    while let Some(at) = world.queue.peek_time() {
        if at > end {
            break;
        }
        let (at, event) = world.queue.pop().expect("peeked");
        world.now = at;
        world.report.events += 1;
        world.handle(event)?;
        world.check_bounds()?;
        if at >= next_checksum_check {
            for slot in 0..world.registrars.len() {
                world.check_own_checksum(slot)?;
            }
            next_checksum_check = at + CHECKSUM_CHECK_EVERY;
        }
    }
    world.now = end;
    world.check_converged()?;
    Ok(world.report)
}

fn registrar_address(slot: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, slot as u8 + 1)), 9901)
}

fn element_address(slot: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, slot as u8 + 1)), 7000)
}

impl World {
    fn new(seed: u64, config: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let registrar_count = rng.random_range(3..=5);
        let element_count = rng.random_range(4..=12);
        let mut world = Self {
            seed,
            config,
            rng,
            start,
            now: start,
            queue: Queue::new(),
            links: Links::default(),
            healthy_since: Some(start),
            registrars: (0..registrar_count)
                .map(|i| RegistrarSlot {
                    address: registrar_address(i),
                    node: None,
                    incarnation: 0,
                })
                .collect(),
            elements: (0..element_count)
                .map(|i| ElementSlot {
                    pool: i % POOLS.len(),
                    node: None,
                    incarnation: 0,
                })
                .collect(),
            conns: BTreeMap::new(),
            next_conn: 1,
            dead: Vec::new(),
            enrp: EnrpConfig::fast(HEARTBEAT),
            handles: POOLS.map(PoolHandle::from),
            report: Report {
                registrars: registrar_count,
                elements: element_count,
                ..Report::default()
            },
        };
        for slot in 0..registrar_count {
            world.start_registrar(slot);
        }
        for slot in 0..element_count {
            world.start_element(slot);
        }
        world
    }

    fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.seed,
            at: self.elapsed(),
            what,
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.config.trace {
            println!("{:>10.3?} {}", self.elapsed(), what());
        }
    }

    /// Random faults during the fault time: crashes with restarts after a
    /// while, partitions, lossy periods.
    fn schedule_faults(&mut self) {
        let fault_time = self.config.fault_time;
        if fault_time.is_zero() {
            return;
        }
        let count = self.rng.random_range(1..=8);
        for _ in 0..count {
            let at = self.start + fault_time.mul_f64(self.rng.random_range(0.1..0.9));
            let back = at + Duration::from_millis(self.rng.random_range(200..2_000));
            match self.rng.random_range(0..4) {
                0 => {
                    let slot = self.rng.random_range(0..self.registrars.len());
                    self.queue.push(at, Ev::Fault(Fault::CrashRegistrar(slot)));
                    self.queue
                        .push(back, Ev::Fault(Fault::RestartRegistrar(slot)));
                }
                1 => {
                    let slot = self.rng.random_range(0..self.elements.len());
                    self.queue.push(at, Ev::Fault(Fault::CrashElement(slot)));
                    if self.rng.random_bool(0.5) {
                        self.queue
                            .push(back, Ev::Fault(Fault::RestartElement(slot)));
                    }
                }
                2 => {
                    let mut sides: Vec<bool> = (0..self.registrars.len())
                        .map(|_| self.rng.random_bool(0.5))
                        .collect();
                    sides[0] = true;
                    let last = sides.len() - 1;
                    sides[last] = false;
                    self.queue.push(at, Ev::Fault(Fault::Partition(sides)));
                }
                _ => {
                    let loss = self.rng.random_range(0.05..0.3);
                    let reorder = self.rng.random_range(0.0..0.3);
                    self.queue
                        .push(at, Ev::Fault(Fault::Lossy { loss, reorder }));
                }
            }
            self.report.faults += 1;
        }
    }

    fn start_registrar(&mut self, slot: usize) {
        let id = RegistrarId(self.rng.random_range(1..=u32::MAX));
        let mut config = RegistrarConfig::new(id);
        config.keep_alive_interval = KEEP_ALIVE;
        config.keep_alive_timeout = KEEP_ALIVE;
        config.seed = self.rng.random();
        config.enrp = EnrpConfig {
            address: Some(self.registrars[slot].address),
            peers: (0..self.registrars.len())
                .filter(|&i| i != slot)
                .map(registrar_address)
                .collect(),
            ..self.enrp.clone()
        };
        let mut r = Registrar::new(config);
        r.handle_start(self.now);
        r.handle_connect(ConnectionId(PU_CONNECTION), None, None, self.now);
        let s = &mut self.registrars[slot];
        s.incarnation += 1;
        s.node = Some(RegistrarNode {
            r,
            timer: None,
            serving_since: None,
        });
        self.trace(|| format!("registrar {slot} starts as {id}"));
        self.after_registrar(slot);
    }

    fn start_element(&mut self, slot: usize) {
        let pool = self.elements[slot].pool;
        let id = PoolElementId(self.rng.random_range(1..=u32::MAX));
        let policy = if pool == 0 {
            Policy::RoundRobin
        } else {
            Policy::LeastUsed {
                load: self.rng.random_range(0..0x00ff_ffff),
            }
        };
        let mut registrars: Vec<SocketAddr> =
            (0..self.registrars.len()).map(registrar_address).collect();
        registrars.shuffle(&mut self.rng);
        let config = PeSessionConfig {
            registrars,
            pool_handle: self.handles[pool].clone(),
            element: PoolElement {
                id,
                home_registrar: RegistrarId(0),
                registration_life: LIFE.as_millis() as u32,
                user_transport: Transport::tcp(element_address(slot)),
                policy,
                asap_transport: None,
            },
            reregistration_interval: REREGISTRATION,
            request_timeout: Duration::from_millis(200),
            retry_interval: Duration::from_millis(200),
            auth_token: None,
        };
        let mut s = PeSession::new(config);
        s.handle_start(self.now);
        let e = &mut self.elements[slot];
        e.incarnation += 1;
        e.node = Some(ElementNode {
            s,
            timer: None,
            conn: None,
            registered: None,
        });
        self.trace(|| format!("element {slot} starts as {id} in {}", POOLS[pool]));
        self.after_element(slot);
    }

    fn handle(&mut self, event: Ev) -> Result<(), Violation> {
        match event {
            Ev::RegistrarTimer(slot, incarnation) => {
                let now = self.now;
                if let Some(node) = self.registrar_node(slot, incarnation) {
                    node.timer = None;
                    node.r.handle_timeout(now);
                    self.after_registrar(slot);
                }
            }
            Ev::ElementTimer(slot, incarnation) => {
                let now = self.now;
                if let Some(node) = self.element_node(slot, incarnation) {
                    node.timer = None;
                    node.s.handle_timeout(now);
                    self.after_element(slot);
                }
            }
            Ev::Enrp { to, bytes } => {
                let message = EnrpMessage::decode(&bytes)
                    .map_err(|e| self.violation(format!("ENRP message does not decode: {e}")))?
                    .message;
                let now = self.now;
                if let Some(node) = self.registrars[to].node.as_mut() {
                    node.r.handle_peer_message(message, now);
                    self.after_registrar(to);
                }
            }
            Ev::ToRegistrar { conn, bytes } => {
                let message = AsapMessage::decode(&bytes)
                    .map_err(|e| self.violation(format!("ASAP message does not decode: {e}")))?
                    .message;
                if let Some(slot) = self.conn_registrar(conn) {
                    let now = self.now;
                    let node = self.registrars[slot].node.as_mut().expect("live");
                    node.r.handle_message(ConnectionId(conn), message, now);
                    self.after_registrar(slot);
                }
            }
            Ev::ToElement { conn, bytes } => {
                let message = AsapMessage::decode(&bytes)
                    .map_err(|e| self.violation(format!("ASAP message does not decode: {e}")))?
                    .message;
                if let Some(slot) = self.conn_element(conn) {
                    let now = self.now;
                    let node = self.elements[slot].node.as_mut().expect("live");
                    node.s.handle_message(message, now);
                    self.after_element(slot);
                }
            }
            Ev::Opened(conn) => self.opened(conn),
            Ev::OpenFailed(conn) => {
                if let Some(slot) = self.conn_element(conn) {
                    self.conns.get_mut(&conn).expect("known").state = ConnState::Closed;
                    let now = self.now;
                    let node = self.elements[slot].node.as_mut().expect("live");
                    node.conn = None;
                    node.s.handle_connect_failed(now);
                    self.after_element(slot);
                }
            }
            Ev::RegistrarSeesClose(conn) => {
                let Some(c) = self.conns.get(&conn) else {
                    return Ok(());
                };
                let (slot, incarnation) = (c.registrar, c.registrar_incarnation);
                let now = self.now;
                if let Some(node) = self.registrar_node(slot, incarnation) {
                    node.r.handle_disconnect(ConnectionId(conn), now);
                    self.after_registrar(slot);
                }
            }
            Ev::ElementSeesClose(conn) => {
                let Some(c) = self.conns.get(&conn) else {
                    return Ok(());
                };
                let (slot, incarnation) = (c.element, c.element_incarnation);
                let now = self.now;
                if let Some(node) = self.element_node(slot, incarnation)
                    && node.conn == Some(conn)
                {
                    node.conn = None;
                    node.s.handle_disconnected(now);
                    self.after_element(slot);
                }
            }
            Ev::Fault(fault) => self.fault(fault),
            Ev::Resolve => {
                self.resolve()?;
                self.queue
                    .push(self.now + Duration::from_millis(20), Ev::Resolve);
            }
        }
        Ok(())
    }

    fn registrar_node(&mut self, slot: usize, incarnation: u32) -> Option<&mut RegistrarNode> {
        let s = &mut self.registrars[slot];
        if s.incarnation == incarnation {
            s.node.as_mut()
        } else {
            None
        }
    }

    fn element_node(&mut self, slot: usize, incarnation: u32) -> Option<&mut ElementNode> {
        let s = &mut self.elements[slot];
        if s.incarnation == incarnation {
            s.node.as_mut()
        } else {
            None
        }
    }

    /// The registrar slot at the end of `conn`, when the connection is open
    /// and that registrar is the one it was opened to.
    fn conn_registrar(&self, conn: u64) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        let s = &self.registrars[c.registrar];
        (c.state == ConnState::Open && s.incarnation == c.registrar_incarnation && s.node.is_some())
            .then_some(c.registrar)
    }

    fn conn_element(&self, conn: u64) -> Option<usize> {
        let c = self.conns.get(&conn)?;
        let s = &self.elements[c.element];
        (c.state != ConnState::Closed
            && s.incarnation == c.element_incarnation
            && s.node.as_ref().is_some_and(|n| n.conn == Some(conn)))
        .then_some(c.element)
    }

    fn opened(&mut self, conn: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.state != ConnState::Opening {
            return;
        }
        let (element, registrar) = (c.element, c.registrar);
        let registrar_alive = self.registrars[registrar].incarnation == c.registrar_incarnation
            && self.registrars[registrar].node.is_some();
        if self.conn_element(conn).is_none() {
            return;
        }
        let now = self.now;
        if !registrar_alive {
            self.queue.push(now, Ev::OpenFailed(conn));
            return;
        }
        self.conns.get_mut(&conn).expect("known").state = ConnState::Open;
        let node = self.registrars[registrar].node.as_mut().expect("alive");
        node.r.handle_connect(
            ConnectionId(conn),
            Some(element_address(element)),
            None,
            now,
        );
        self.after_registrar(registrar);
        let node = self.elements[element].node.as_mut().expect("alive");
        node.s.handle_connected(now);
        self.after_element(element);
    }

    /// Sends bytes along `conn` in order; `to_registrar` picks the
    /// direction.
    fn send_on(&mut self, conn: u64, to_registrar: bool, bytes: Vec<u8>) {
        let d = delay(&mut self.rng);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let lane = usize::from(!to_registrar);
        let at = (self.now + d).max(c.last[lane] + Duration::from_nanos(1));
        c.last[lane] = at;
        let event = if to_registrar {
            Ev::ToRegistrar { conn, bytes }
        } else {
            Ev::ToElement { conn, bytes }
        };
        self.queue.push(at, event);
    }

    /// Closes `conn` from the element's side (or because the element died):
    /// the registrar sees it after what is already on the way.
    fn close_from_element(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.state == ConnState::Closed {
            return;
        }
        let was_open = c.state == ConnState::Open;
        c.state = ConnState::Closed;
        if was_open {
            let at = (self.now + Duration::from_millis(1)).max(c.last[0] + Duration::from_nanos(1));
            c.last[0] = at;
            self.queue.push(at, Ev::RegistrarSeesClose(conn));
        }
    }

    fn after_registrar(&mut self, slot: usize) {
        let now = self.now;
        let incarnation = self.registrars[slot].incarnation;
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        {
            let Some(node) = self.registrars[slot].node.as_mut() else {
                return;
            };
            while let Some(t) = node.r.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = node.r.poll_event() {
                events.push(e);
            }
            if node.serving_since.is_none() && node.r.is_serving() {
                node.serving_since = Some(now);
            }
            if let Some(at) = node.r.poll_timeout()
                && node.timer.is_none_or(|t| at < t)
            {
                let at = at.max(now);
                node.timer = Some(at);
                self.queue.push(at, Ev::RegistrarTimer(slot, incarnation));
            }
        }
        for e in events {
            if let Event::TakenOver { by, .. } = &e
                && *by == self.registrar_id(slot).unwrap_or(RegistrarId(0))
            {
                self.report.takeovers += 1;
            }
            self.trace(|| format!("registrar {slot}: {e:?}"));
        }
        for t in transmits {
            match t {
                Transmit::Send {
                    connection,
                    message,
                } => {
                    if connection.0 == PU_CONNECTION {
                        continue;
                    }
                    if self.conn_registrar(connection.0) == Some(slot) {
                        let bytes = message.to_bytes().expect("encodable").to_vec();
                        self.send_on(connection.0, false, bytes);
                    }
                }
                Transmit::Peer { to, message } => {
                    self.report.enrp_messages += 1;
                    let Some(target) = self.registrars.iter().position(|r| r.address == to) else {
                        continue;
                    };
                    let bytes = message.to_bytes().expect("encodable").to_vec();
                    if let Some(at) = self.links.carry(slot, target, now, &mut self.rng) {
                        self.queue.push(at, Ev::Enrp { to: target, bytes });
                    } else {
                        self.trace(|| {
                            format!("lost {:?} {slot}->{target}", message.body.message_type())
                        });
                    }
                }
                // Multicast is off in the simulation: peers are configured.
                Transmit::Announce { .. } | Transmit::PeerGroup { .. } => {}
            }
        }
    }

    fn registrar_id(&self, slot: usize) -> Option<RegistrarId> {
        self.registrars[slot].node.as_ref().map(|n| n.r.config().id)
    }

    fn after_element(&mut self, slot: usize) {
        let now = self.now;
        let incarnation = self.elements[slot].incarnation;
        let mut outputs = Vec::new();
        let mut events = Vec::new();
        {
            let Some(node) = self.elements[slot].node.as_mut() else {
                return;
            };
            while let Some(o) = node.s.poll_output() {
                outputs.push(o);
            }
            while let Some(e) = node.s.poll_event() {
                events.push(e);
            }
        }
        for e in events {
            self.trace(|| format!("element {slot}: {e:?}"));
            let node = self.elements[slot].node.as_mut().expect("alive");
            match e {
                PeEvent::Registered(address) => {
                    let registrar = self
                        .registrars
                        .iter()
                        .position(|r| r.address == address)
                        .expect("known registrar");
                    node.registered = Some((now, registrar));
                }
                PeEvent::Lost(_) | PeEvent::Refused(..) => node.registered = None,
            }
        }
        for o in outputs {
            match o {
                PeOutput::Connect(address) => {
                    if let Some(old) = self.elements[slot]
                        .node
                        .as_mut()
                        .and_then(|n| n.conn.take())
                    {
                        self.close_from_element(old);
                    }
                    let registrar = self
                        .registrars
                        .iter()
                        .position(|r| r.address == address)
                        .expect("known registrar");
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        conn,
                        Conn {
                            element: slot,
                            element_incarnation: incarnation,
                            registrar,
                            registrar_incarnation: self.registrars[registrar].incarnation,
                            state: ConnState::Opening,
                            last: [now, now],
                        },
                    );
                    self.elements[slot].node.as_mut().expect("alive").conn = Some(conn);
                    let d = delay(&mut self.rng);
                    if self.registrars[registrar].node.is_some() {
                        self.queue.push(now + d * 2, Ev::Opened(conn));
                    } else {
                        self.queue.push(now + d, Ev::OpenFailed(conn));
                    }
                }
                PeOutput::Send(message) => {
                    let conn = self.elements[slot].node.as_ref().and_then(|n| n.conn);
                    if let Some(conn) = conn
                        && self.conns[&conn].state == ConnState::Open
                    {
                        let bytes = message.to_bytes().expect("encodable").to_vec();
                        self.send_on(conn, true, bytes);
                    }
                }
                PeOutput::Close => {
                    if let Some(old) = self.elements[slot]
                        .node
                        .as_mut()
                        .and_then(|n| n.conn.take())
                    {
                        self.close_from_element(old);
                    }
                }
            }
        }
        let Some(node) = self.elements[slot].node.as_mut() else {
            return;
        };
        if let Some(at) = node.s.poll_timeout()
            && node.timer.is_none_or(|t| at < t)
        {
            let at = at.max(now);
            node.timer = Some(at);
            self.queue.push(at, Ev::ElementTimer(slot, incarnation));
        }
    }

    fn fault(&mut self, fault: Fault) {
        self.trace(|| format!("fault: {fault:?}"));
        let now = self.now;
        match fault {
            Fault::CrashRegistrar(slot) => {
                let alive = self.registrars.iter().filter(|r| r.node.is_some()).count();
                if alive <= 1 || self.registrars[slot].node.is_none() {
                    return;
                }
                self.registrars[slot].node = None;
                // The kernel resets the dead process's connections.
                let conns: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.registrar == slot && c.state != ConnState::Closed)
                    .map(|(&id, _)| id)
                    .collect();
                for conn in conns {
                    let c = self.conns.get_mut(&conn).expect("listed");
                    let was_opening = c.state == ConnState::Opening;
                    c.state = ConnState::Closed;
                    let d = delay(&mut self.rng);
                    if was_opening {
                        self.queue.push(now + d, Ev::OpenFailed(conn));
                    } else {
                        self.queue.push(now + d, Ev::ElementSeesClose(conn));
                    }
                }
            }
            Fault::RestartRegistrar(slot) => {
                if self.registrars[slot].node.is_none() {
                    self.start_registrar(slot);
                }
            }
            Fault::CrashElement(slot) => {
                let Some(node) = self.elements[slot].node.take() else {
                    return;
                };
                self.elements[slot].incarnation += 1;
                if let Some(conn) = node.conn {
                    self.close_from_element(conn);
                }
                self.dead.push(DeadElement {
                    pool: self.elements[slot].pool,
                    id: node.s.config().element.id,
                    at: now,
                });
            }
            Fault::RestartElement(slot) => {
                if self.elements[slot].node.is_none() {
                    self.start_element(slot);
                }
            }
            Fault::Partition(sides) => {
                self.links.sides = Some(sides);
                self.healthy_since = None;
            }
            Fault::Lossy { loss, reorder } => {
                self.links.loss = loss;
                self.links.reorder = reorder;
                self.healthy_since = None;
            }
            Fault::Heal => {
                self.links.sides = None;
                self.links.loss = 0.0;
                self.links.reorder = 0.0;
                self.healthy_since = Some(now);
                for slot in 0..self.registrars.len() {
                    if self.registrars[slot].node.is_none() {
                        self.start_registrar(slot);
                    }
                }
            }
        }
    }

    /// A pool user asks a random serving registrar for a random pool; when
    /// the pool has PEs that must be visible there, the answer must not be
    /// empty.
    fn resolve(&mut self) -> Result<(), Violation> {
        let live: Vec<usize> = (0..self.registrars.len())
            .filter(|&i| self.registrars[i].node.is_some())
            .collect();
        let slot = live[self.rng.random_range(0..live.len())];
        let pool = self.rng.random_range(0..POOLS.len());
        let must_see = self
            .visible_elements(slot)
            .into_iter()
            .any(|(p, _)| p == pool);
        let now = self.now;
        let node = self.registrars[slot].node.as_mut().expect("live");
        if !node.r.is_serving() {
            return Ok(());
        }
        node.r.handle_message(
            ConnectionId(PU_CONNECTION),
            AsapMessage::HandleResolution {
                pool_handle: self.handles[pool].clone(),
                items: None,
                subscribe: false,
            },
            now,
        );
        self.report.resolutions += 1;
        let mut answer = None;
        let mut others = Vec::new();
        while let Some(t) = node.r.poll_transmit() {
            match t {
                Transmit::Send {
                    connection,
                    message: AsapMessage::HandleResolutionResponse { outcome, .. },
                } if connection.0 == PU_CONNECTION => answer = Some(outcome),
                other => others.push(other),
            }
        }
        // Anything else that came out is not for the pool user; it has
        // nothing else queued, as every call drains the registrar.
        debug_assert!(others.is_empty());
        let found = match answer {
            Some(ResolutionOutcome::Members { elements, .. }) => !elements.is_empty(),
            _ => false,
        };
        if must_see && !found {
            return Err(self.violation(format!(
                "registrar {slot} resolved pool {} to nothing while live PEs are registered",
                POOLS[pool]
            )));
        }
        Ok(())
    }

    /// The (pool, PE id) that registrar `slot` must hold now: the network
    /// has been healthy, the registrar serving, and the PE registered with
    /// a live registrar for longer than the propagation bound.
    fn visible_elements(&self, slot: usize) -> Vec<(usize, PoolElementId)> {
        let bound = propagation_bound(&self.enrp);
        let settled = |since: Instant| self.now.duration_since(since) >= bound;
        let Some(node) = &self.registrars[slot].node else {
            return Vec::new();
        };
        if !self.healthy_since.is_some_and(settled) || !node.serving_since.is_some_and(settled) {
            return Vec::new();
        }
        self.elements
            .iter()
            .filter_map(|e| {
                let n = e.node.as_ref()?;
                let (since, home) = n.registered?;
                (settled(since) && self.registrars[home].node.is_some())
                    .then(|| (e.pool, n.s.config().element.id))
            })
            .collect()
    }

    /// Invariants 3 and 4: live registered PEs are visible at every serving
    /// registrar, dead PEs are gone everywhere, within the bounds.
    fn check_bounds(&self) -> Result<(), Violation> {
        for slot in 0..self.registrars.len() {
            let Some(node) = &self.registrars[slot].node else {
                continue;
            };
            let hs = node.r.handlespace();
            for (pool, id) in self.visible_elements(slot) {
                if hs.get(&self.handles[pool], id).is_none() {
                    return Err(self.violation(format!(
                        "registrar {slot} misses live PE {id} of pool {}",
                        POOLS[pool]
                    )));
                }
            }
            let Some(healthy) = self.healthy_since else {
                continue;
            };
            let gone_bound = LIFE + KEEP_ALIVE * 2 + propagation_bound(&self.enrp);
            for dead in &self.dead {
                let since = dead.at.max(healthy);
                if self.now.duration_since(since) >= gone_bound
                    && hs.get(&self.handles[dead.pool], dead.id).is_some()
                {
                    return Err(self.violation(format!(
                        "registrar {slot} still holds dead PE {} of pool {}",
                        dead.id, POOLS[dead.pool]
                    )));
                }
            }
        }
        Ok(())
    }

    /// A registrar's incremental checksum of its own PEs equals the one
    /// computed from scratch.
    fn check_own_checksum(&self, slot: usize) -> Result<(), Violation> {
        let Some(node) = &self.registrars[slot].node else {
            return Ok(());
        };
        let hs = node.r.handlespace();
        for owner in self.known_owners(slot) {
            let scratch = checksum_of(
                hs.owned_by(owner)
                    .map(|(h, e)| (h.as_bytes(), e.element().id)),
            );
            if scratch != hs.checksum(owner) {
                return Err(self.violation(format!(
                    "registrar {slot}: checksum of owner {owner} is {:#06x}, from scratch {scratch:#06x}",
                    hs.checksum(owner)
                )));
            }
        }
        Ok(())
    }

    fn known_owners(&self, slot: usize) -> Vec<RegistrarId> {
        self.registrars[slot]
            .node
            .as_ref()
            .map(|n| n.r.handlespace().owners())
            .unwrap_or_default()
    }

    /// Invariants 1 and 2, and 4 at the end: after the quiet time every
    /// registrar serves and holds the same handlespace; every live PE has
    /// one home, alive and the registrar it is registered with; no dead PE
    /// is left.
    fn check_converged(&self) -> Result<(), Violation> {
        type View = Vec<(Vec<u8>, u32, u32)>;
        let mut first: Option<(usize, View)> = None;
        for slot in 0..self.registrars.len() {
            let node = self.registrars[slot]
                .node
                .as_ref()
                .ok_or_else(|| self.violation(format!("registrar {slot} is not running")))?;
            if !node.r.is_serving() {
                return Err(self.violation(format!("registrar {slot} is not serving")));
            }
            let mut view: View = node
                .r
                .handlespace()
                .pools()
                .flat_map(|p| {
                    p.iter().map(|e| {
                        (
                            p.handle().as_bytes().to_vec(),
                            e.element().id.0,
                            e.element().home_registrar.0,
                        )
                    })
                })
                .collect();
            view.sort();
            match &first {
                None => first = Some((slot, view)),
                Some((other, first_view)) => {
                    if *first_view != view {
                        return Err(self.violation(format!(
                            "registrars {other} and {slot} differ:\n  {other}: {}\n  {slot}: {}",
                            describe(first_view),
                            describe(&view)
                        )));
                    }
                }
            }
        }
        let Some((_, view)) = first else {
            return Ok(());
        };
        // Same PEs everywhere, so same checksums once each registrar's
        // incremental checksums are right.
        for slot in 0..self.registrars.len() {
            self.check_own_checksum(slot)?;
        }
        for (slot, e) in self.elements.iter().enumerate() {
            let Some(n) = &e.node else {
                continue;
            };
            let id = n.s.config().element.id;
            let Some((_, registrar)) = n.registered else {
                if matches!(n.s.status(), PeStatus::Registered(_)) {
                    return Err(self.violation(format!("element {slot} lost track of its state")));
                }
                continue;
            };
            let home = self.registrar_id(registrar).expect("all running");
            let entry = view
                .iter()
                .find(|(h, i, _)| *h == POOLS[e.pool].as_bytes() && *i == id.0);
            match entry {
                Some((_, _, h)) if *h == home.0 => {}
                Some((_, _, h)) => {
                    return Err(self.violation(format!(
                        "element {slot} ({id}) is registered with {home} but its home is {}",
                        RegistrarId(*h)
                    )));
                }
                None => {
                    return Err(self.violation(format!(
                        "element {slot} ({id}) is registered with {home} but unknown"
                    )));
                }
            }
        }
        for dead in &self.dead {
            if view
                .iter()
                .any(|(h, i, _)| *h == POOLS[dead.pool].as_bytes() && *i == dead.id.0)
            {
                return Err(self.violation(format!("dead PE {} is still known", dead.id)));
            }
        }
        Ok(())
    }
}

fn describe(view: &[(Vec<u8>, u32, u32)]) -> String {
    view.iter()
        .map(|(h, i, home)| format!("{}/{:08x}@{:08x}", String::from_utf8_lossy(h), i, home))
        .collect::<Vec<_>>()
        .join(" ")
}
