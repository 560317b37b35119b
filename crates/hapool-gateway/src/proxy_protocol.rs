//! The PROXY protocol header (HAProxy's specification, versions 1 and 2):
//! what a TCP pool's member reads first on a connection from the gateway,
//! to learn the client's address and the address it connected to, as it
//! would without a proxy in between. HAProxy (`accept-proxy`), nginx
//! (`proxy_protocol`), Postfix, Dovecot and most mail and directory
//! servers read it. The gateway reads it too, on a listener behind another
//! proxy or load balancer that sends it ([`read_header`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

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

/// What a PROXY protocol header said about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// The client's address.
    pub(crate) client: SocketAddr,
    /// The address the client connected to (at the proxy that sent the
    /// header).
    pub(crate) local: SocketAddr,
}

/// Why a connection's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    /// The connection does not start with a header.
    #[error("the connection does not start with a PROXY protocol header (it starts {0:?})")]
    Missing(String),
    /// It starts with one that breaks the specification.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// The connection failed or closed first.
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;

/// Reads the PROXY protocol header (either version) that `stream` starts
/// with, and nothing after it. `None` for a connection the sender made
/// for itself (version 2 LOCAL, version 1 UNKNOWN, or a family other than
/// TCP over IPv4 or IPv6): it names no client.
pub(crate) async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<Relayed>, HeaderError> {
    let mut start = [0u8; 8];
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE[..8] {
        let mut fixed = [0u8; 8];
        stream.read_exact(&mut fixed).await?;
        if fixed[..4] != V2_SIGNATURE[8..] {
            return Err(HeaderError::Malformed(
                "a broken version 2 signature".into(),
            ));
        }
        let [_, _, _, _, version_command, family, high, low] = fixed;
        if version_command >> 4 != 2 {
            return Err(HeaderError::Malformed(format!(
                "version {} (2 expected)",
                version_command >> 4
            )));
        }
        let mut body = vec![0u8; usize::from(u16::from_be_bytes([high, low]))];
        stream.read_exact(&mut body).await?;
        return match version_command & 0x0f {
            0x0 => Ok(None),
            0x1 => v2_addresses(family, &body),
            other => Err(HeaderError::Malformed(format!("command {other}"))),
        };
    }
    if &start[..6] != b"PROXY " {
        return Err(HeaderError::Missing(
            String::from_utf8_lossy(&start).into_owned(),
        ));
    }
    // Byte by byte, so that nothing after the line is taken.
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(HeaderError::Malformed(format!(
                "a version 1 line longer than {V1_MAX} bytes"
            )));
        }
        line.push(stream.read_u8().await?);
    }
    v1_addresses(&line[..line.len() - 2])
}

/// The addresses of a version 2 PROXY command of `family`.
fn v2_addresses(family: u8, body: &[u8]) -> Result<Option<Relayed>, HeaderError> {
    let short = || {
        HeaderError::Malformed(format!(
            "{} address bytes for family {family:#04x}",
            body.len()
        ))
    };
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match family {
        V2_TCP4 => {
            let b: &[u8; 12] = body
                .get(..12)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(short)?;
            let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]));
            Ok(Some(Relayed {
                client: SocketAddr::new(ip(0), port(8)),
                local: SocketAddr::new(ip(4), port(10)),
            }))
        }
        V2_TCP6 => {
            let b: &[u8; 36] = body
                .get(..36)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(short)?;
            let ip = |at: usize| {
                let octets: [u8; 16] = b[at..at + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Ok(Some(Relayed {
                client: SocketAddr::new(ip(0), port(32)),
                local: SocketAddr::new(ip(16), port(34)),
            }))
        }
        // UNSPEC, UDP, UNIX sockets: nothing the gateway can use.
        _ => Ok(None),
    }
}

/// The addresses of a version 1 line (without its CRLF).
fn v1_addresses(line: &[u8]) -> Result<Option<Relayed>, HeaderError> {
    let malformed = |what: &str| {
        HeaderError::Malformed(format!("{what} in {:?}", String::from_utf8_lossy(line)))
    };
    let text = std::str::from_utf8(line).map_err(|_| malformed("bytes that are not text"))?;
    let words: Vec<&str> = text.split(' ').collect();
    match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        [
            "PROXY",
            family @ ("TCP4" | "TCP6"),
            client,
            local,
            client_port,
            local_port,
        ] => {
            let ip = |s: &str| -> Result<IpAddr, HeaderError> {
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| malformed("an address that does not parse"))?;
                if ip.is_ipv4() != (*family == "TCP4") {
                    return Err(malformed("an address not of the family named"));
                }
                Ok(ip)
            };
            let port = |s: &str| -> Result<u16, HeaderError> {
                s.parse()
                    .map_err(|_| malformed("a port that does not parse"))
            };
            Ok(Some(Relayed {
                client: SocketAddr::new(ip(client)?, port(client_port)?),
                local: SocketAddr::new(ip(local)?, port(local_port)?),
            }))
        }
        _ => Err(malformed("not PROXY TCP4|TCP6|UNKNOWN and four fields")),
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

    /// Reads a header from `bytes`; what it said, and what is left.
    async fn read(bytes: &[u8]) -> (Result<Option<Relayed>, HeaderError>, Vec<u8>) {
        let mut stream = bytes;
        let said = read_header(&mut stream).await;
        (said, stream.to_vec())
    }

    #[tokio::test]
    async fn a_header_reads_back_as_written_and_nothing_after_it_is_taken() {
        for (client, local) in [
            ("192.0.2.7:56324", "198.51.100.1:443"),
            ("[2001:db8::7]:1025", "[2001:db8::1]:25"),
        ] {
            for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
                let mut bytes = version.header(at(client), at(local));
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let (said, rest) = read(&bytes).await;
                assert_eq!(
                    said.unwrap(),
                    Some(Relayed {
                        client: at(client),
                        local: at(local)
                    }),
                    "{version:?}"
                );
                assert_eq!(rest, b"GET / HTTP/1.1\r\n");
            }
        }
        for version in [ProxyProtocol::V1, ProxyProtocol::V2] {
            let mut bytes = version.local_header();
            bytes.push(b'x');
            let (said, rest) = read(&bytes).await;
            assert_eq!(said.unwrap(), None, "{version:?}");
            assert_eq!(rest, b"x");
        }
    }

    #[tokio::test]
    async fn a_bad_header_is_refused_naming_what_is_wrong() {
        let v2 = |tail: &[u8]| [&V2_SIGNATURE[..], tail].concat();
        for (bytes, expected) in [
            (
                &b"GET / HTTP/1.1\r\n"[..],
                "does not start with a PROXY protocol header",
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "four fields"),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "not of the family named"),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
                "a port that does not parse",
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
                "an address that does not parse",
            ),
            (
                &[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(),
                "longer than 107 bytes",
            ),
            (&v2(&[0x11, 0x11, 0, 12])[..], "version 1 (2 expected)"),
            (&v2(&[0x22, 0x11, 0, 0])[..], "command 2"),
            (&v2(&[0x21, 0x11, 0, 4, 1, 2, 3, 4])[..], "4 address bytes"),
            (b"PROXY TCP4 1.2.3.4", "reading the PROXY protocol header"),
            (
                &v2(&[0x21, 0x11, 0, 12, 1, 2])[..],
                "reading the PROXY protocol header",
            ),
        ] {
            let (said, _) = read(bytes).await;
            let error = said.unwrap_err().to_string();
            assert!(error.contains(expected), "{error} (expected {expected:?})");
        }
        // Families the gateway cannot use name no client.
        let (said, _) = read(&v2(&[0x21, 0x31, 0, 0])).await;
        assert_eq!(said.unwrap(), None);
    }
}
