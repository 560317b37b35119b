//! VRRP on Linux: the raw IP socket for protocol 112, the virtual
//! addresses (through rtnetlink), and gratuitous ARP. IPv4.
//!
//! - [`VrrpSocket`] sends advertisements to the VRRP group (or to unicast
//!   peers) with TTL 255 from the interface's address, and receives every
//!   advertisement on the interface with its IP source, destination and
//!   TTL, so that the receive checks of RFC 5798 can be made.
//! - [`Addresses`] adds and removes the virtual addresses.
//! - [`gratuitous_arp`] tells the link that a virtual address is now here.
//!
//! A missing interface, or a process without CAP_NET_RAW / CAP_NET_ADMIN,
//! is an error that says so.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::path::Path;

use futures_util::TryStreamExt;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::UdpSocket;

/// IP protocol number of VRRP.
const VRRP: i32 = 112;
/// The VRRP IPv4 group.
const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);

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
///
/// (Tokio's datagram socket drives it: `recv_from` and `send_to` are the
/// same calls for a raw IP socket, which delivers the IP header too.)
pub struct VrrpSocket {
    socket: UdpSocket,
    interface: Interface,
    address: Ipv4Addr,
}

impl VrrpSocket {
    /// Opens the socket on `interface`, whose own IPv4 address is
    /// `address`, and joins the VRRP group there.
    pub fn open(interface: &Interface, address: Ipv4Addr) -> io::Result<Self> {
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
        Ok(Self {
            socket: UdpSocket::from_std(std::net::UdpSocket::from(socket))?,
            interface: interface.clone(),
            address,
        })
    }

    /// The interface.
    pub fn interface(&self) -> &Interface {
        &self.interface
    }

    /// This router's address on the interface (the advertisements' source).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Sends a VRRP message to `to` (the group, or a unicast peer).
    pub async fn send(&self, message: &[u8], to: Ipv4Addr) -> io::Result<()> {
        self.socket
            .send_to(message, SocketAddrV4::new(to, 0))
            .await
            .map(|_| ())
    }

    /// Sends to the VRRP group.
    pub async fn send_to_group(&self, message: &[u8]) -> io::Result<()> {
        self.send(message, GROUP).await
    }

    /// The next IPv4 packet of protocol 112 on the interface. Packets too
    /// short for an IP header are skipped.
    pub async fn recv(&self) -> io::Result<Received> {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, _) = self.socket.recv_from(&mut buf).await?;
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

    /// Adds `address/prefix` to `interface`; already there is fine.
    pub async fn add(&self, interface: &Interface, address: IpAddr, prefix: u8) -> io::Result<()> {
        if self.has(interface, address).await? {
            return Ok(());
        }
        self.handle
            .address()
            .add(interface.index, address, prefix)
            .execute()
            .await
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
