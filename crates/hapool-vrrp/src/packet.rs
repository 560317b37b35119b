//! The VRRPv3 ADVERTISEMENT (RFC 5798 §5), byte-exact, with its checksum.
//!
//! ```text
//!  0        4        8               16              24              32
//! +--------+--------+---------------+---------------+---------------+
//! |Version | Type   | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! +--------+--------+---------------+---------------+---------------+
//! | rsvd   |     Max Adver Int      |          Checksum             |
//! +--------+------------------------+-------------------------------+
//! |                   IPvX Address(es) ...                          |
//! ```
//!
//! The checksum covers a pseudo-header (source, destination, protocol 112,
//! length) and the message. Some VRRPv3-over-IPv4 implementations leave the
//! pseudo-header out (the VRRPv2 way); [`ChecksumMode`] chooses what is sent
//! and what is accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

/// IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// The IPv4 multicast group of VRRP.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The IPv6 multicast group of VRRP.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The TTL / hop limit every advertisement is sent with and must arrive
/// with.
pub const TTL: u8 = 255;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 8;

/// The virtual addresses of an advertisement: all IPv4 or all IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addresses {
    /// IPv4 virtual addresses.
    V4(Vec<Ipv4Addr>),
    /// IPv6 virtual addresses (the first is the virtual link-local one).
    V6(Vec<Ipv6Addr>),
}

impl Addresses {
    /// How many.
    pub fn len(&self) -> usize {
        match self {
            Self::V4(a) => a.len(),
            Self::V6(a) => a.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each as an [`IpAddr`].
    pub fn to_vec(&self) -> Vec<IpAddr> {
        match self {
            Self::V4(a) => a.iter().copied().map(IpAddr::V4).collect(),
            Self::V6(a) => a.iter().copied().map(IpAddr::V6).collect(),
        }
    }

    /// `ips` as one family's list (the family of the first); `None` when
    /// they are of both families. An empty list is IPv4.
    pub fn from_ips(ips: &[IpAddr]) -> Option<Self> {
        if ips.first().is_some_and(IpAddr::is_ipv6) {
            ips.iter()
                .map(|ip| match ip {
                    IpAddr::V6(a) => Some(*a),
                    IpAddr::V4(_) => None,
                })
                .collect::<Option<_>>()
                .map(Self::V6)
        } else {
            ips.iter()
                .map(|ip| match ip {
                    IpAddr::V4(a) => Some(*a),
                    IpAddr::V6(_) => None,
                })
                .collect::<Option<_>>()
                .map(Self::V4)
        }
    }
}

/// A VRRPv3 ADVERTISEMENT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertisement {
    /// Virtual router id, 1–255.
    pub vrid: u8,
    /// 0 (the master stops), 1–254, or 255 (the address owner).
    pub priority: u8,
    /// Advertisement interval in centiseconds, 1–4095.
    pub max_adver_int: u16,
    /// The virtual addresses.
    pub addresses: Addresses,
}

/// Which checksum is sent, and which is accepted, over IPv4.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChecksumMode {
    /// With the pseudo-header, as RFC 5798 says (and keepalived does).
    #[default]
    PseudoHeader,
    /// Without it, as some implementations do over IPv4.
    MessageOnly,
    /// Send with the pseudo-header; accept either.
    Either,
}

/// Why a received packet is not a valid advertisement. Each is counted
/// and logged by the driver, never acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The TTL / hop limit was not 255: the packet crossed a router.
    #[error("TTL {0}, not 255")]
    Ttl(u8),
    /// Shorter than the header.
    #[error("{0} bytes: shorter than the 8-byte header")]
    Truncated(usize),
    /// Not version 3.
    #[error("version {0}, not 3")]
    Version(u8),
    /// Not an ADVERTISEMENT.
    #[error("type {0}, not 1 (ADVERTISEMENT)")]
    Type(u8),
    /// VRID 0.
    #[error("virtual router id 0")]
    Vrid,
    /// The length does not match the address count.
    #[error("{actual} bytes, but {count} addresses make {expected}")]
    Length {
        /// Bytes received.
        actual: usize,
        /// The count field.
        count: u8,
        /// Bytes the count implies.
        expected: usize,
    },
    /// No addresses.
    #[error("no virtual address")]
    NoAddress,
    /// Advertisement interval 0.
    #[error("advertisement interval 0")]
    Interval,
    /// The checksum does not verify.
    #[error("checksum {found:#06x}, expected {expected:#06x}")]
    Checksum {
        /// The checksum field.
        found: u16,
        /// What it should be.
        expected: u16,
    },
    /// The source and destination are not of the same family.
    #[error("source and destination of different address families")]
    Family,
}

/// One's-complement sum of `data` as 16-bit big-endian words, added to
/// `acc` (odd length: a zero byte is added for the sum only).
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        acc += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of `message` (its checksum field zero) sent from `src` to
/// `dst`, with or without the pseudo-header.
pub fn checksum(message: &[u8], src: IpAddr, dst: IpAddr, pseudo_header: bool) -> u16 {
    let mut acc = 0;
    if pseudo_header {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                acc = sum(acc, &s.octets());
                acc = sum(acc, &d.octets());
                acc = sum(acc, &[0, PROTOCOL]);
                acc = sum(acc, &(message.len() as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                acc = sum(acc, &s.octets());
                acc = sum(acc, &d.octets());
                acc = sum(acc, &(message.len() as u32).to_be_bytes());
                acc = sum(acc, &[0, 0, 0, PROTOCOL]);
            }
            _ => {}
        }
    }
    fold(sum(acc, message))
}

impl Advertisement {
    /// The message as sent from `src` to `dst`, checksum filled in.
    pub fn encode(&self, src: IpAddr, dst: IpAddr, mode: ChecksumMode) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER_LEN + 16 * self.addresses.len());
        b.put_u8(0x31);
        b.put_u8(self.vrid);
        b.put_u8(self.priority);
        b.put_u8(self.addresses.len() as u8);
        b.put_u16(self.max_adver_int & 0x0fff);
        b.put_u16(0);
        match &self.addresses {
            Addresses::V4(a) => a.iter().for_each(|ip| b.put_slice(&ip.octets())),
            Addresses::V6(a) => a.iter().for_each(|ip| b.put_slice(&ip.octets())),
        }
        let pseudo = mode != ChecksumMode::MessageOnly || src.is_ipv6();
        let c = checksum(&b, src, dst, pseudo);
        b[6..8].copy_from_slice(&c.to_be_bytes());
        b.freeze()
    }

    /// Decodes and validates a message that arrived from `src` to `dst`
    /// with TTL / hop limit `ttl`, in the order RFC 5798 §7.1 checks.
    pub fn decode(
        message: &[u8],
        src: IpAddr,
        dst: IpAddr,
        ttl: u8,
        mode: ChecksumMode,
    ) -> Result<Self, PacketError> {
        if ttl != TTL {
            return Err(PacketError::Ttl(ttl));
        }
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(PacketError::Family);
        }
        let Some(header) = message.first_chunk::<HEADER_LEN>() else {
            return Err(PacketError::Truncated(message.len()));
        };
        let version = header[0] >> 4;
        if version != 3 {
            return Err(PacketError::Version(version));
        }
        let count = header[3];
        let width = if src.is_ipv4() { 4 } else { 16 };
        let expected = HEADER_LEN + width * usize::from(count);
        if message.len() != expected {
            return Err(PacketError::Length {
                actual: message.len(),
                count,
                expected,
            });
        }
        let found = u16::from_be_bytes([header[6], header[7]]);
        let mut zeroed = message.to_vec();
        zeroed[6..8].fill(0);
        let with = checksum(&zeroed, src, dst, true);
        let without = checksum(&zeroed, src, dst, false);
        let ok = match (mode, src.is_ipv4()) {
            (_, false) | (ChecksumMode::PseudoHeader, true) => found == with,
            (ChecksumMode::MessageOnly, true) => found == without,
            (ChecksumMode::Either, true) => found == with || found == without,
        };
        if !ok {
            let expected = if mode == ChecksumMode::MessageOnly && src.is_ipv4() {
                without
            } else {
                with
            };
            return Err(PacketError::Checksum { found, expected });
        }
        let kind = header[0] & 0x0f;
        if kind != 1 {
            return Err(PacketError::Type(kind));
        }
        if header[1] == 0 {
            return Err(PacketError::Vrid);
        }
        if count == 0 {
            return Err(PacketError::NoAddress);
        }
        let max_adver_int = u16::from_be_bytes([header[4], header[5]]) & 0x0fff;
        if max_adver_int == 0 {
            return Err(PacketError::Interval);
        }
        let body = &message[HEADER_LEN..];
        let addresses = if src.is_ipv4() {
            Addresses::V4(
                body.chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect(),
            )
        } else {
            Addresses::V6(
                body.chunks_exact(16)
                    .map(|c| Ipv6Addr::from(<[u8; 16]>::try_from(c).expect("16 bytes")))
                    .collect(),
            )
        };
        Ok(Self {
            vrid: header[1],
            priority: header[2],
            max_adver_int,
            addresses,
        })
    }
}
