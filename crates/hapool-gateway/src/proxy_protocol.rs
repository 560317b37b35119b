//! The PROXY protocol header (HAProxy's specification, versions 1 and 2):
//! what a TCP pool's member reads first on a connection from the gateway,
//! to learn the client's address and the address it connected to, as it
//! would without a proxy in between. HAProxy (`accept-proxy`), nginx
//! (`proxy_protocol`), Postfix, Dovecot and most mail and directory
//! servers read it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Which version of the header a pool's members get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// The text header: `PROXY TCP4 <client> <local> <port> <port>\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// The 12 bytes a version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
/// Version 2, command LOCAL: a connection of the proxy's own.
const V2_LOCAL: u8 = 0x20;
/// Address family INET (1) or INET6 (2), in the high nibble; transport
/// STREAM (1) in the low one.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

impl ProxyProtocol {
    /// The header for a connection from `client` to `local` (the
    /// gateway's address that the client connected to). When one of the
    /// two is IPv6 and the other IPv4, the IPv4 one is written as an
    /// IPv4-mapped IPv6 address (a header carries one family).
    pub fn header(self, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
        let both_v4 = match (client.ip(), local.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some((s, d)),
            _ => None,
        };
        let (source, destination) = (as_v6(client.ip()), as_v6(local.ip()));
        let (client_port, local_port) = (client.port(), local.port());
        match self {
            Self::V1 => match both_v4 {
                Some((s, d)) => {
                    format!("PROXY TCP4 {s} {d} {client_port} {local_port}\r\n").into_bytes()
                }
                None => format!("PROXY TCP6 {source} {destination} {client_port} {local_port}\r\n")
                    .into_bytes(),
            },
            Self::V2 => {
                let (family, addresses) = match both_v4 {
                    Some((s, d)) => (V2_TCP4, [&s.octets()[..], &d.octets()[..]].concat()),
                    None => (
                        V2_TCP6,
                        [&source.octets()[..], &destination.octets()[..]].concat(),
                    ),
                };
                let length = u16::try_from(addresses.len() + 4).expect("at most 36 bytes");
                let mut header = Vec::with_capacity(16 + usize::from(length));
                header.extend_from_slice(&V2_SIGNATURE);
                header.push(V2_PROXY);
                header.push(family);
                header.extend_from_slice(&length.to_be_bytes());
                header.extend_from_slice(&addresses);
                header.extend_from_slice(&client_port.to_be_bytes());
                header.extend_from_slice(&local_port.to_be_bytes());
                header
            }
        }
    }
}

impl ProxyProtocol {
    /// The header for a connection the gateway makes for itself (a
    /// probe): it names no client, and the member takes the connection's
    /// own addresses.
    pub fn local_header(self) -> Vec<u8> {
        match self {
            Self::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
            Self::V2 => {
                let mut header = V2_SIGNATURE.to_vec();
                // Family UNSPEC, no addresses.
                header.extend_from_slice(&[V2_LOCAL, 0x00, 0, 0]);
                header
            }
        }
    }
}

/// `ip` as IPv6: an IPv4 address IPv4-mapped.
fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_1_is_one_line_of_text() {
        assert_eq!(
            ProxyProtocol::V1.header(at("192.0.2.7:56324"), at("198.51.100.1:443")),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
        );
        assert_eq!(
            ProxyProtocol::V1.header(at("[2001:db8::7]:1025"), at("[2001:db8::1]:25")),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 1025 25\r\n"
        );
        assert_eq!(
            ProxyProtocol::V1.header(at("192.0.2.7:1025"), at("[2001:db8::1]:25")),
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1025 25\r\n"
        );
    }

    #[test]
    fn the_gateway_own_connections_name_no_client() {
        assert_eq!(ProxyProtocol::V1.local_header(), b"PROXY UNKNOWN\r\n");
        assert_eq!(
            ProxyProtocol::V2.local_header(),
            b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00"
        );
    }

    #[test]
    fn version_2_is_the_signature_then_the_addresses() {
        let header = ProxyProtocol::V2.header(at("192.0.2.7:56324"), at("198.51.100.1:443"));
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12]);
        expected.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        expected.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        assert_eq!(header, expected);

        let header = ProxyProtocol::V2.header(at("[::1]:1025"), at("192.0.2.1:25"));
        assert_eq!(&header[12..16], [0x21, 0x21, 0, 36]);
        assert_eq!(header.len(), 16 + 36);
        let mut source = [0u8; 16];
        source[15] = 1;
        assert_eq!(header[16..32], source);
        // The IPv4 address the client reached, IPv4-mapped.
        assert_eq!(
            header[32..48],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]
        );
        assert_eq!(header[48..], [0x04, 0x01, 0x00, 0x19]);
    }
}
