//! The virtual IP daemon: one tokio task per virtual router, driving the
//! [`hapool_vrrp::VirtualRouter`] state machine over the Linux VRRP socket
//! of `hapool-net`.
//!
//! The task receives every packet of protocol 112 on the interface,
//! validates it (TTL 255, version, length, checksum, type, VRID: each
//! refusal is counted by reason and logged, never acted on), hands the
//! valid advertisements of its VRID to the state machine, and carries out
//! what the state machine asks: advertisements to the group and to the
//! unicast peers, virtual addresses added (and announced by gratuitous
//! ARP, or unsolicited neighbour advertisements over IPv6) or removed, notify commands on state changes. Shutdown sends
//! priority 0 so that a backup takes over at once.
//!
//! Metrics: `hapool_vip_state{vrid}` (0 initialize, 1 backup, 2 master),
//! `hapool_vip_priority{vrid}`, `hapool_vip_advertisements_total{vrid,
//! direction}`, `hapool_vip_invalid_total{vrid, reason}`,
//! `hapool_vip_transitions_total{vrid, to}`.

#![forbid(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use hapool_net::vrrp::{
    Addresses, Interface, Received, VrrpSocket, gratuitous_arp, unsolicited_neighbour_advertisement,
};
use hapool_vrrp::{
    Action, Advertisement, ChecksumMode, PacketError, RouterConfig, State, VirtualRouter,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info, warn};

/// One virtual router to run.
#[derive(Clone, Debug)]
pub struct RouterSpec {
    /// The interface it runs on.
    pub interface: String,
    /// This machine's address on that interface, the advertisements'
    /// source: for IPv4 routers its IPv4 address; for IPv6 routers its
    /// link-local address, or `::` to use the one the interface has.
    pub address: IpAddr,
    /// The state machine's configuration (its virtual addresses all of the
    /// family of `address`).
    pub router: RouterConfig,
    /// Prefix length of the virtual addresses.
    pub prefix_len: u8,
    /// Peers to send advertisements to directly, for links without
    /// multicast (sent to the group as well).
    pub unicast_peers: Vec<IpAddr>,
    /// Which checksum is sent and accepted.
    pub checksum: ChecksumMode,
    /// A shell command run on every state change, with `STATE VRID` as
    /// arguments (`MASTER 51`, `BACKUP 51`, `INITIALIZE 51`).
    pub notify: Option<String>,
}

/// What a router reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterStatus {
    /// The VRID.
    pub vrid: u8,
    /// The interface.
    pub interface: String,
    /// Its state.
    pub state: State,
    /// The priority in force.
    pub priority: u8,
    /// The configured priority.
    pub configured_priority: u8,
    /// The virtual addresses.
    pub addresses: Vec<IpAddr>,
    /// Advertisements sent and received, and packets refused.
    pub sent: u64,
    /// Valid advertisements of this VRID received.
    pub received: u64,
    /// Packets refused, any reason.
    pub invalid: u64,
}

enum Command {
    SetPriority(u8),
    Shutdown(oneshot::Sender<()>),
}

/// Sets a running router's priority (for tracking tasks).
#[derive(Clone)]
pub struct PrioritySetter {
    commands: mpsc::Sender<Command>,
}

impl PrioritySetter {
    /// Sets the priority in force; false once the router has stopped.
    pub async fn set(&self, priority: u8) -> bool {
        self.commands
            .send(Command::SetPriority(priority))
            .await
            .is_ok()
    }
}

/// A running virtual router.
pub struct VipHandle {
    commands: mpsc::Sender<Command>,
    status: Arc<Mutex<RouterStatus>>,
    task: JoinHandle<()>,
}

impl VipHandle {
    /// Where it stands.
    pub fn status(&self) -> RouterStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// A clone of the shared status, for status pages.
    pub fn status_source(&self) -> Arc<Mutex<RouterStatus>> {
        self.status.clone()
    }

    /// Sets the priority in force (tracking).
    pub async fn set_priority(&self, priority: u8) {
        let _ = self.commands.send(Command::SetPriority(priority)).await;
    }

    /// A handle that sets the priority from another task.
    pub fn priority_setter(&self) -> PrioritySetter {
        PrioritySetter {
            commands: self.commands.clone(),
        }
    }

    /// Stops: a master says priority 0 and gives the addresses back.
    pub async fn shutdown(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

/// Starts `spec`: opens the interface's VRRP socket and netlink (errors
/// name a missing interface or capability), then runs the router.
pub fn start(mut spec: RouterSpec) -> io::Result<VipHandle> {
    let interface = Interface::find(&spec.interface)?;
    if spec.address.is_unspecified() {
        spec.address = IpAddr::V6(link_local(&interface)?);
    }
    let socket = VrrpSocket::open(&interface, spec.address)?;
    let addresses = Addresses::connect()?;
    let router = VirtualRouter::new(RouterConfig {
        primary_address: spec.address,
        ..spec.router.clone()
    });
    let status = Arc::new(Mutex::new(RouterStatus {
        vrid: spec.router.vrid,
        interface: spec.interface.clone(),
        state: State::Initialize,
        priority: spec.router.priority,
        configured_priority: spec.router.priority,
        addresses: spec.router.addresses.to_vec(),
        sent: 0,
        received: 0,
        invalid: 0,
    }));
    let (commands, rx) = mpsc::channel(8);
    let task = tokio::spawn(run(
        Driver {
            announce_again: None,
            spec,
            interface,
            socket,
            addresses,
            router,
            status: status.clone(),
        },
        rx,
    ));
    Ok(VipHandle {
        commands,
        status,
        task,
    })
}

/// The interface's link-local address; an interface that has just come up
/// gets one within a few seconds (duplicate address detection), so this
/// waits up to 5 s for it.
fn link_local(interface: &Interface) -> io::Result<std::net::Ipv6Addr> {
    let deadline = StdInstant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(address) = interface.link_local()? {
            return Ok(address);
        }
        if StdInstant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{} has no usable IPv6 link-local address", interface.name),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// When a new master announces its addresses again, after the first
/// announcement: neighbours take no ARP update for an address within a
/// second of the last (Linux's neighbour locktime), and the old master's
/// last announcement can arrive after the new one's, so one announcement
/// can be missed by a host that was talking to the old master.
const ANNOUNCE_AGAIN: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(500),
    std::time::Duration::from_millis(1500),
    std::time::Duration::from_millis(3000),
];

struct Driver {
    /// When to announce the addresses again (as master), and how many
    /// announcements of [`ANNOUNCE_AGAIN`] are made.
    announce_again: Option<(Instant, usize)>,
    spec: RouterSpec,
    interface: Interface,
    socket: VrrpSocket,
    addresses: Addresses,
    router: VirtualRouter,
    status: Arc<Mutex<RouterStatus>>,
}

fn reason(e: &PacketError) -> &'static str {
    match e {
        PacketError::Ttl(_) => "ttl",
        PacketError::Truncated(_) => "truncated",
        PacketError::Version(_) => "version",
        PacketError::Type(_) => "type",
        PacketError::Vrid => "vrid",
        PacketError::Length { .. } => "length",
        PacketError::NoAddress => "no_address",
        PacketError::Interval => "interval",
        PacketError::Checksum { .. } => "checksum",
        PacketError::Family => "family",
    }
}

fn state_number(state: State) -> f64 {
    match state {
        State::Initialize => 0.0,
        State::Backup => 1.0,
        State::Master => 2.0,
    }
}

impl Driver {
    fn vrid(&self) -> String {
        self.spec.router.vrid.to_string()
    }

    /// A received packet: validated, counted, and handed over when it is a
    /// valid advertisement of this VRID.
    fn on_packet(&mut self, packet: Received) {
        let vrid = self.vrid();
        let source = packet.source;
        if source == self.spec.address || source.is_ipv4() != self.spec.address.is_ipv4() {
            return;
        }
        let adv = match Advertisement::decode(
            &packet.message,
            packet.source,
            packet.destination,
            packet.ttl,
            self.spec.checksum,
        ) {
            Ok(adv) => adv,
            Err(e) => {
                warn!(vrid = %vrid, %source, error = %e, "advertisement refused");
                metrics::counter!("hapool_vip_invalid_total", "vrid" => vrid, "reason" => reason(&e))
                    .increment(1);
                self.status.lock().expect("status lock").invalid += 1;
                return;
            }
        };
        if adv.vrid != self.spec.router.vrid {
            // Another virtual router on the same link: not an error.
            return;
        }
        if adv.addresses != self.spec.router.addresses {
            debug!(vrid = %vrid, %source, "advertised addresses differ from ours");
        }
        metrics::counter!("hapool_vip_advertisements_total", "vrid" => vrid, "direction" => "in")
            .increment(1);
        self.status.lock().expect("status lock").received += 1;
        self.router
            .handle_advertisement(packet.source, &adv, StdInstant::now());
    }

    /// Carries out what the state machine asked for.
    async fn act(&mut self) {
        while let Some(action) = self.router.poll_action() {
            match action {
                Action::Send(adv) => self.send(&adv).await,
                Action::TakeAddresses => self.take_addresses().await,
                Action::ReleaseAddresses => self.release_addresses().await,
                Action::Announce => {
                    self.announce();
                    self.announce_again = Some((Instant::now() + ANNOUNCE_AGAIN[0], 0));
                }
                Action::StateChanged { from, to } => self.changed(from, to),
            }
        }
        let mut status = self.status.lock().expect("status lock");
        status.state = self.router.state();
        status.priority = self.router.priority();
    }

    async fn send(&mut self, adv: &Advertisement) {
        let source = self.spec.address;
        let group = adv.encode(source, self.socket.group(), self.spec.checksum);
        if let Err(e) = self.socket.send_to_group(&group).await {
            warn!(vrid = self.spec.router.vrid, error = %e, "cannot send the advertisement");
        }
        for peer in &self.spec.unicast_peers {
            let bytes = adv.encode(source, *peer, self.spec.checksum);
            if let Err(e) = self.socket.send(&bytes, *peer).await {
                warn!(vrid = self.spec.router.vrid, %peer, error = %e, "cannot send the advertisement");
            }
        }
        metrics::counter!("hapool_vip_advertisements_total", "vrid" => self.vrid(), "direction" => "out")
            .increment(1 + self.spec.unicast_peers.len() as u64);
        self.status.lock().expect("status lock").sent += 1;
    }

    async fn take_addresses(&mut self) {
        for address in self.spec.router.addresses.to_vec() {
            if let Err(e) = self
                .addresses
                .add(&self.interface, address, self.spec.prefix_len)
                .await
            {
                warn!(vrid = self.spec.router.vrid, %address, error = %e, "cannot take the virtual address");
                continue;
            }
        }
        self.announce();
        self.announce_again = Some((Instant::now() + ANNOUNCE_AGAIN[0], 0));
    }

    /// Gratuitous ARP (IPv4) or an unsolicited neighbour advertisement
    /// (IPv6) for every virtual address (twice: one can be lost).
    fn announce(&self) {
        for address in self.spec.router.addresses.to_vec() {
            for _ in 0..2 {
                let sent = match address {
                    IpAddr::V4(v4) => gratuitous_arp(&self.interface, v4),
                    IpAddr::V6(v6) => unsolicited_neighbour_advertisement(&self.interface, v6),
                };
                if let Err(e) = sent {
                    warn!(%address, error = %e, "announcing the virtual address failed");
                }
            }
        }
    }

    async fn release_addresses(&mut self) {
        self.announce_again = None;
        for address in self.spec.router.addresses.to_vec() {
            if let Err(e) = self.addresses.remove(&self.interface, address).await {
                warn!(vrid = self.spec.router.vrid, %address, error = %e, "cannot release the virtual address");
            }
        }
    }

    fn changed(&self, from: State, to: State) {
        let vrid = self.vrid();
        info!(vrid = %vrid, ?from, ?to, priority = self.router.priority(), "state change");
        metrics::gauge!("hapool_vip_state", "vrid" => vrid.clone()).set(state_number(to));
        let name = match to {
            State::Initialize => "INITIALIZE",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
        };
        metrics::counter!("hapool_vip_transitions_total", "vrid" => vrid.clone(), "to" => name)
            .increment(1);
        if let Some(command) = &self.spec.notify {
            let command = format!("{command} {name} {vrid}");
            tokio::spawn(async move {
                match tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .status()
                    .await
                {
                    Ok(s) if s.success() => {}
                    Ok(s) => warn!(%command, status = %s, "notify command failed"),
                    Err(e) => warn!(%command, error = %e, "notify command could not run"),
                }
            });
        }
    }
}

async fn run(mut d: Driver, mut commands: mpsc::Receiver<Command>) {
    d.router.handle_startup(StdInstant::now());
    d.act().await;
    metrics::gauge!("hapool_vip_priority", "vrid" => d.vrid()).set(f64::from(d.router.priority()));
    loop {
        let deadline = d.router.poll_timeout().map(Instant::from_std);
        tokio::select! {
            packet = d.socket.recv() => match packet {
                Ok(packet) => d.on_packet(packet),
                Err(e) => warn!(error = %e, "VRRP receive failed"),
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                d.router.handle_timeout(StdInstant::now());
            }
            () = sleep_until(d.announce_again.map_or_else(Instant::now, |a| a.0)), if d.announce_again.is_some() => {
                let (_, done) = d.announce_again.take().expect("scheduled");
                if d.router.state() == State::Master {
                    d.announce();
                    if let Some(next) = ANNOUNCE_AGAIN.get(done + 1) {
                        let since_first = *next - ANNOUNCE_AGAIN[done];
                        d.announce_again = Some((Instant::now() + since_first, done + 1));
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Command::SetPriority(p)) => {
                    d.router.set_priority(p, StdInstant::now());
                    metrics::gauge!("hapool_vip_priority", "vrid" => d.vrid()).set(f64::from(d.router.priority()));
                }
                Some(Command::Shutdown(done)) => {
                    d.router.handle_shutdown(StdInstant::now());
                    d.act().await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    d.router.handle_shutdown(StdInstant::now());
                    d.act().await;
                    return;
                }
            },
        }
        d.act().await;
    }
}
