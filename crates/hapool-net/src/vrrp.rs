//! VRRP on Linux: the raw IP socket for protocol 112, the virtual
//! addresses (through rtnetlink), gratuitous ARP and unsolicited neighbour
//! advertisements. IPv4 and IPv6.
//!
//! - [`VrrpSocket`] sends advertisements to the VRRP group (or to unicast
//!   peers) with TTL / hop limit 255 from the interface's address (its
//!   link-local address over IPv6), and receives every advertisement on
//!   the interface with its IP source, destination and TTL / hop limit, so
//!   that the receive checks of RFC 5798 can be made.
//! - [`Addresses`] adds and removes the virtual addresses (IPv6 ones
//!   without duplicate address detection, which would hold a taken-over
//!   address back for a second or more).
//! - [`gratuitous_arp`] and [`unsolicited_neighbour_advertisement`] tell
//!   the link that a virtual address is now here.
//!
//! A missing interface, or a process without CAP_NET_RAW / CAP_NET_ADMIN,
//! is an error that says so.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::path::Path;

use futures_util::TryStreamExt;
use socket2::{Domain, MaybeUninitSlice, MsgHdrMut, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::net::UdpSocket;

/// IP protocol number of VRRP.
const VRRP: i32 = 112;
/// The VRRP IPv4 group.
const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The VRRP IPv6 group.
const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// All nodes on the link (unsolicited neighbour advertisements).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A network interface as the kernel knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its hardware (MAC) address.
    pub mac: [u8; 6],
}

impl Interface {
    /// Looks `name` up (in `/sys/class/net`).
    pub fn find(name: &str) -> io::Result<Self> {
        let dir = Path::new("/sys/class/net").join(name);
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("interface {name:?} not found ({e})"),
                )
            })
        };
        let index = read("ifindex")?.trim().parse().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{name}: ifindex: {e}"))
        })?;
        let mut mac = [0u8; 6];
        let text = read("address")?;
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 6 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: no Ethernet address ({text:?})"),
            ));
        }
        for (byte, part) in mac.iter_mut().zip(parts) {
            *byte = u8::from_str_radix(part, 16).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{name}: address: {e}"))
            })?;
        }
        Ok(Self {
            name: name.to_owned(),
            index,
            mac,
        })
    }
}

impl Interface {
    /// Its IPv6 link-local address, once duplicate address detection has
    /// let it be used (from `/proc/net/if_inet6`). `None` when it has none
    /// yet.
    pub fn link_local(&self) -> io::Result<Option<Ipv6Addr>> {
        let table = std::fs::read_to_string("/proc/net/if_inet6")?;
        Ok(parse_if_inet6(&table, &self.name))
    }
}

/// The usable link-local address of interface `name` in the text of
/// `/proc/net/if_inet6`: lines of address (32 hex digits), index, prefix
/// length, scope (0x20: link), flags (0x40: tentative) and name.
fn parse_if_inet6(table: &str, name: &str) -> Option<Ipv6Addr> {
    const LINK: u32 = 0x20;
    const TENTATIVE: u32 = 0x40;
    table.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [address, _, _, scope, flags, iface] = f[..] else {
            return None;
        };
        let scope = u32::from_str_radix(scope, 16).ok()?;
        let flags = u32::from_str_radix(flags, 16).ok()?;
        if iface != name || scope != LINK || flags & TENTATIVE != 0 {
            return None;
        }
        u128::from_str_radix(address, 16).ok().map(Ipv6Addr::from)
    })
}

/// Says which capability an operation lacked, when that is why it failed.
fn explain(e: io::Error, what: &str, capability: &str) -> io::Error {
    if e.kind() == io::ErrorKind::PermissionDenied {
        io::Error::new(
            e.kind(),
            format!("{what}: permission denied (needs root or {capability})"),
        )
    } else {
        io::Error::new(e.kind(), format!("{what}: {e}"))
    }
}

/// An advertisement as received: the VRRP message and its IP envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The IP source (the sender's primary address).
    pub source: IpAddr,
    /// The IP destination (the group, or this router for unicast).
    pub destination: IpAddr,
    /// The TTL it arrived with.
    pub ttl: u8,
    /// The VRRP message.
    pub message: Vec<u8>,
}

/// The raw socket of one interface for VRRP.
pub struct VrrpSocket {
    io: Io,
    interface: Interface,
    address: IpAddr,
}

enum Io {
    /// Tokio's datagram socket drives it: `recv_from` and `send_to` are
    /// the same calls for a raw IPv4 socket, which delivers the IP header
    /// too.
    V4(UdpSocket),
    /// An IPv6 raw socket delivers no header: the hop limit and the
    /// destination come as control messages of `recvmsg`.
    V6(AsyncFd<Socket>),
}

impl VrrpSocket {
    /// Opens the socket on `interface`, whose own address is `address`
    /// (for IPv6, its link-local address), and joins the VRRP group there.
    pub fn open(interface: &Interface, address: IpAddr) -> io::Result<Self> {
        let io = match address {
            IpAddr::V4(v4) => Io::V4(open_v4(interface, v4)?),
            IpAddr::V6(v6) => Io::V6(open_v6(interface, v6)?),
        };
        Ok(Self {
            io,
            interface: interface.clone(),
            address,
        })
    }

    /// The interface.
    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// This router's address on the interface (the advertisements' source).
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Sends a VRRP message to `to` (the group, or a unicast peer) of this
    /// socket's family.
    pub async fn send(&self, message: &[u8], to: IpAddr) -> io::Result<()> {
        match (&self.io, to) {
            (Io::V4(socket), IpAddr::V4(to)) => socket
                .send_to(message, SocketAddrV4::new(to, 0))
                .await
                .map(|_| ()),
            (Io::V6(socket), IpAddr::V6(to)) => {
                // Link-local and multicast destinations need the interface.
                let scope = if to.is_unicast_link_local() || to.is_multicast() {
                    self.interface.index
                } else {
                    0
                };
                let to = SockAddr::from(SocketAddrV6::new(to, 0, 0, scope));
                loop {
                    let mut ready = socket.writable().await?;
                    if let Ok(sent) = ready.try_io(|s| s.get_ref().send_to(message, &to)) {
                        return sent.map(|_| ());
                    }
                }
            }
            (_, to) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{to}: not the family of {}", self.address),
            )),
        }
    }

    /// The VRRP group of this socket's family.
    pub fn group(&self) -> IpAddr {
        match self.io {
            Io::V4(_) => IpAddr::V4(GROUP),
            Io::V6(_) => IpAddr::V6(GROUP_V6),
        }
    }

    /// Sends to the VRRP group.
    pub async fn send_to_group(&self, message: &[u8]) -> io::Result<()> {
        self.send(message, self.group()).await
    }

    /// The next packet of protocol 112 on the interface. IPv4 packets too
    /// short for an IP header are skipped.
    pub async fn recv(&self) -> io::Result<Received> {
        match &self.io {
            Io::V4(socket) => recv_v4(socket).await,
            Io::V6(socket) => loop {
                let mut ready = socket.readable().await?;
                if let Ok(received) = ready.try_io(|s| recv_v6(s.get_ref())) {
                    return received;
                }
            },
        }
    }
}

fn open_v4(interface: &Interface, address: Ipv4Addr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(VRRP)))
        .map_err(|e| explain(e, "VRRP raw socket", "CAP_NET_RAW"))?;
    socket
        .bind_device(Some(interface.name.as_bytes()))
        .map_err(|e| explain(e, &format!("binding to {}", interface.name), "CAP_NET_RAW"))?;
    socket.join_multicast_v4(&GROUP, &address).map_err(|e| {
        explain(
            e,
            &format!("joining {GROUP} on {}", interface.name),
            "CAP_NET_RAW",
        )
    })?;
    socket.set_multicast_if_v4(&address)?;
    socket.set_multicast_ttl_v4(255)?;
    socket.set_ttl_v4(255)?;
    socket.set_multicast_loop_v4(false)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

fn open_v6(interface: &Interface, address: Ipv6Addr) -> io::Result<AsyncFd<Socket>> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(VRRP)))
        .map_err(|e| explain(e, "VRRP raw IPv6 socket", "CAP_NET_RAW"))?;
    socket
        .bind_device(Some(interface.name.as_bytes()))
        .map_err(|e| explain(e, &format!("binding to {}", interface.name), "CAP_NET_RAW"))?;
    socket
        .join_multicast_v6(&GROUP_V6, interface.index)
        .map_err(|e| {
            explain(
                e,
                &format!("joining {GROUP_V6} on {}", interface.name),
                "CAP_NET_RAW",
            )
        })?;
    socket.set_multicast_if_v6(interface.index)?;
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    socket.set_recv_hoplimit_v6(true)?;
    set_recv_pktinfo_v6(&socket)?;
    // Advertisements leave from the link-local address.
    socket
        .bind(&SockAddr::from(SocketAddrV6::new(
            address,
            0,
            0,
            interface.index,
        )))
        .map_err(|e| {
            explain(
                e,
                &format!("binding to {address} on {}", interface.name),
                "CAP_NET_RAW",
            )
        })?;
    socket.set_nonblocking(true)?;
    register(socket)
}

/// Hands `socket` to tokio's reactor.
#[allow(unsafe_code)]
fn register(socket: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: `socket` owns its descriptor, which is open; the `AsyncFd`
    // takes ownership of the socket, so the descriptor stays open and the
    // same until the `AsyncFd` is dropped, and `Socket::as_raw_fd` always
    // returns it.
    unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)
}

/// Asks for the destination of each received IPv6 packet (IPV6_PKTINFO).
#[allow(unsafe_code)]
fn set_recv_pktinfo_v6(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the open socket `socket` owns; the option
    // value is a live `c_int` whose size is passed with it, and the kernel
    // only reads it.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn recv_v4(socket: &UdpSocket) -> io::Result<Received> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, _) = socket.recv_from(&mut buf).await?;
        let packet = &buf[..n];
        let header_len = usize::from(packet.first().copied().unwrap_or(0) & 0x0f) * 4;
        if n < 20 || header_len < 20 || n < header_len {
            continue;
        }
        let ip = |at: usize| {
            IpAddr::V4(Ipv4Addr::new(
                packet[at],
                packet[at + 1],
                packet[at + 2],
                packet[at + 3],
            ))
        };
        return Ok(Received {
            source: ip(12),
            destination: ip(16),
            ttl: packet[8],
            message: packet[header_len..].to_vec(),
        });
    }
}

/// A byte buffer as the uninitialised memory `recvmsg` fills.
#[allow(unsafe_code)]
fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and every byte of
    // `buf` is initialised; the kernel writes only initialised bytes into
    // it and nothing here writes uninitialised ones, so `buf` stays valid.
    unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) }
}

/// One IPv6 packet: its source from the address, its destination and hop
/// limit from the control messages.
fn recv_v6(socket: &Socket) -> io::Result<Received> {
    let mut data = vec![0u8; 65_536];
    let mut control = [0u8; 128];
    let mut source = SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
    let (n, control_len) = {
        let mut buffers = [MaybeUninitSlice::new(as_uninit(&mut data))];
        let mut message = MsgHdrMut::new()
            .with_addr(&mut source)
            .with_buffers(&mut buffers)
            .with_control(as_uninit(&mut control));
        let n = socket.recvmsg(&mut message, 0)?;
        (n, message.control_len())
    };
    let (hop_limit, destination) = parse_control(&control[..control_len.min(control.len())]);
    let source = source
        .as_socket_ipv6()
        .map_or(Ipv6Addr::UNSPECIFIED, |a| *a.ip());
    Ok(Received {
        source: IpAddr::V6(source),
        // Without the control message (never on Linux) the group is the
        // likely destination; the checksum then tells.
        destination: IpAddr::V6(destination.unwrap_or(GROUP_V6)),
        // A missing hop limit fails the check rather than passing it.
        ttl: hop_limit.unwrap_or(0),
        message: data[..n].to_vec(),
    })
}

/// The hop limit and destination in the control messages of `recvmsg`
/// (Linux layout: each message a `cmsghdr` of length, level and type,
/// then its data, aligned to the size of a `size_t`).
fn parse_control(control: &[u8]) -> (Option<u8>, Option<Ipv6Addr>) {
    let word = size_of::<usize>();
    let header = size_of::<libc::cmsghdr>();
    let (mut hop_limit, mut destination) = (None, None);
    let mut at = 0;
    while at + header <= control.len() {
        let field = |from: usize, len: usize| &control[at + from..at + from + len];
        let len = usize::from_ne_bytes(field(0, word).try_into().expect("a word"));
        let level = i32::from_ne_bytes(field(word, 4).try_into().expect("4 bytes"));
        let kind = i32::from_ne_bytes(field(word + 4, 4).try_into().expect("4 bytes"));
        if len < header || at + len > control.len() {
            break;
        }
        let data = &control[at + header..at + len];
        if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT && data.len() >= 4 {
            let value = i32::from_ne_bytes(data[..4].try_into().expect("4 bytes"));
            hop_limit = u8::try_from(value).ok();
        }
        if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO && data.len() >= 16 {
            let bytes: [u8; 16] = data[..16].try_into().expect("16 bytes");
            destination = Some(Ipv6Addr::from(bytes));
        }
        at += len.div_ceil(word) * word;
    }
    (hop_limit, destination)
}

/// Adds and removes addresses on interfaces (rtnetlink).
pub struct Addresses {
    handle: rtnetlink::Handle,
}

impl Addresses {
    /// A netlink connection (its task runs on the current tokio runtime).
    pub fn connect() -> io::Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| explain(e, "netlink", "CAP_NET_ADMIN"))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Adds `address/prefix` to `interface`; already there is fine. (One
    /// netlink round trip: a new master's takeover waits for it.)
    pub async fn add(&self, interface: &Interface, address: IpAddr, prefix: u8) -> io::Result<()> {
        let mut request = self.handle.address().add(interface.index, address, prefix);
        if address.is_ipv6() {
            // Usable at once: duplicate address detection would hold a
            // taken-over address back (a backup takes it over precisely
            // because the other holder is gone).
            request.message_mut().header.flags |=
                rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
        }
        match request.execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
            other => other,
        }
        .map_err(|e| {
            netlink_error(
                e,
                &format!("adding {address}/{prefix} to {}", interface.name),
            )
        })
    }

    /// The netlink messages of `address` on `interface` (none or one).
    async fn find(
        &self,
        interface: &Interface,
        address: IpAddr,
    ) -> io::Result<Vec<rtnetlink::packet_route::address::AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(interface.index)
            .set_address_filter(address)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error(e, &format!("listing addresses of {}", interface.name)))
    }

    /// Removes `address` from `interface`; not there is fine.
    pub async fn remove(&self, interface: &Interface, address: IpAddr) -> io::Result<()> {
        for message in self.find(interface, address).await? {
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(|e| {
                    netlink_error(e, &format!("removing {address} from {}", interface.name))
                })?;
        }
        Ok(())
    }

    /// Whether `interface` has `address`.
    pub async fn has(&self, interface: &Interface, address: IpAddr) -> io::Result<bool> {
        Ok(!self.find(interface, address).await?.is_empty())
    }
}

fn netlink_error(e: rtnetlink::Error, what: &str) -> io::Error {
    let text = e.to_string();
    let kind = if text.contains("Operation not permitted") || text.contains("EPERM") {
        io::ErrorKind::PermissionDenied
    } else {
        io::ErrorKind::Other
    };
    explain(io::Error::new(kind, text), what, "CAP_NET_ADMIN")
}

/// Broadcasts a gratuitous ARP request for `address` from `interface`: the
/// link learns that `address` is at this interface's MAC.
pub fn gratuitous_arp(interface: &Interface, address: Ipv4Addr) -> io::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let socket = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(i32::from(ETH_P_ARP.to_be()))),
    )
    .map_err(|e| explain(e, "ARP socket", "CAP_NET_RAW"))?;
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet, IPv4, request
    arp.extend_from_slice(&interface.mac);
    arp.extend_from_slice(&address.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&address.octets());
    let target = link_layer_broadcast(interface.index, ETH_P_ARP)?;
    socket.send_to(&arp, &target).map_err(|e| {
        explain(
            e,
            &format!("gratuitous ARP on {}", interface.name),
            "CAP_NET_RAW",
        )
    })?;
    Ok(())
}

/// Sends an unsolicited neighbour advertisement for `address` from
/// `interface` to all nodes (RFC 4861 §7.2.6, Override set): the link
/// learns that `address` is at this interface's MAC.
pub fn unsolicited_neighbour_advertisement(
    interface: &Interface,
    address: Ipv6Addr,
) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(|e| explain(e, "ICMPv6 socket", "CAP_NET_RAW"))?;
    socket
        .bind_device(Some(interface.name.as_bytes()))
        .map_err(|e| explain(e, &format!("binding to {}", interface.name), "CAP_NET_RAW"))?;
    socket.set_multicast_if_v6(interface.index)?;
    // Neighbour discovery messages must arrive with hop limit 255.
    socket.set_multicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    let mut na = Vec::with_capacity(32);
    // Type 136, code 0, checksum (the kernel fills it in for ICMPv6
    // sockets), flags: Override.
    na.extend_from_slice(&[136, 0, 0, 0, 0x20, 0, 0, 0]);
    na.extend_from_slice(&address.octets());
    // Option: target link-layer address (type 2, 8 bytes).
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&interface.mac);
    let to = SockAddr::from(SocketAddrV6::new(ALL_NODES, 0, 0, interface.index));
    socket.send_to(&na, &to).map_err(|e| {
        explain(
            e,
            &format!("neighbour advertisement on {}", interface.name),
            "CAP_NET_RAW",
        )
    })?;
    Ok(())
}

/// The link-layer broadcast address of interface `index` for `protocol`,
/// as a `sockaddr_ll`.
#[allow(unsafe_code)]
fn link_layer_broadcast(index: u32, protocol: u16) -> io::Result<SockAddr> {
    let index = i32::try_from(index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface index too large"))?;
    // SAFETY: `try_init` hands us a zeroed `sockaddr_storage`, which is
    // larger than a `sockaddr_ll` and aligned for any socket address. We
    // write one complete `sockaddr_ll` at its start and report exactly its
    // size, so the kernel reads only initialised bytes of the right type.
    let ((), address) = unsafe {
        SockAddr::try_init(|storage, len| {
            let ll = libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as libc::c_ushort,
                sll_protocol: protocol.to_be(),
                sll_ifindex: index,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 6,
                sll_addr: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0],
            };
            storage.cast::<libc::sockaddr_ll>().write(ll);
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
    }?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usable_link_local_address_is_found() {
        let table = "\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000000000000000000a 02 40 20 c0     eth1
fe800000000000000000000000000002 03 40 20 40     eth0
fd000000000000000000000000000002 03 40 00 80     eth0
fe800000000000000000000000000003 03 40 20 80     eth0
";
        assert_eq!(
            parse_if_inet6(table, "eth0"),
            Some("fe80::3".parse().unwrap()),
            "the tentative one and the global one are passed over"
        );
        assert_eq!(parse_if_inet6(table, "eth2"), None);
    }

    #[test]
    fn control_messages_give_hop_limit_and_destination() {
        let word = size_of::<usize>();
        let header = size_of::<libc::cmsghdr>();
        let mut control = Vec::new();
        let mut push = |kind: i32, data: &[u8]| {
            let len = header + data.len();
            let mut m = vec![0u8; len.div_ceil(word) * word];
            m[..word].copy_from_slice(&len.to_ne_bytes());
            m[word..word + 4].copy_from_slice(&libc::IPPROTO_IPV6.to_ne_bytes());
            m[word + 4..word + 8].copy_from_slice(&kind.to_ne_bytes());
            m[header..len].copy_from_slice(data);
            control.extend_from_slice(&m);
        };
        let mut pktinfo = GROUP_V6.octets().to_vec();
        pktinfo.extend_from_slice(&3u32.to_ne_bytes());
        push(libc::IPV6_PKTINFO, &pktinfo);
        push(libc::IPV6_HOPLIMIT, &255i32.to_ne_bytes());
        assert_eq!(parse_control(&control), (Some(255), Some(GROUP_V6)));
        // A cut-off message is not read past its end.
        assert_eq!(parse_control(&control[..header + 3]), (None, None));
    }
}
