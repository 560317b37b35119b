//! Finding registrars by their ASAP_SERVER_ANNOUNCE messages.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use hapool_wire::{AsapMessage, Message, RegistrarId, Transport};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

/// Listens on `channel` for `wait` and returns the registrars that
/// announced themselves, with the address of their ASAP endpoint (TCP).
///
/// `channel` is a multicast group and port (239.0.0.50:3863 by convention;
/// the group is joined on every interface) or a unicast address to bind.
/// An announcement without a TCP transport, or with an unspecified
/// address, stands for the address it was sent from (and, without a
/// transport, the ASAP port 3863).
pub async fn discover(
    channel: SocketAddr,
    wait: Duration,
) -> std::io::Result<Vec<(RegistrarId, SocketAddr)>> {
    let socket = match channel.ip() {
        IpAddr::V4(group) if group.is_multicast() => {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, channel.port())).await?;
            socket.join_multicast_v4(group, Ipv4Addr::UNSPECIFIED)?;
            socket
        }
        _ => UdpSocket::bind(channel).await?,
    };
    let deadline = Instant::now() + wait;
    let mut found: Vec<(RegistrarId, SocketAddr)> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok(received) = timeout_at(deadline, socket.recv_from(&mut buf)).await {
        let (n, from) = received?;
        let Ok(decoded) = AsapMessage::decode(&buf[..n]) else {
            debug!(%from, "not an ASAP message; ignored");
            continue;
        };
        let AsapMessage::ServerAnnounce {
            registrar_id,
            transports,
        } = decoded.message
        else {
            continue;
        };
        let mut endpoints: Vec<SocketAddr> = transports
            .iter()
            .filter(|t| matches!(t, Transport::Tcp { .. }))
            .filter_map(Transport::socket_addr)
            .map(|a| {
                if a.ip().is_unspecified() {
                    SocketAddr::new(from.ip(), a.port())
                } else {
                    a
                }
            })
            .collect();
        if transports.is_empty() {
            endpoints.push(SocketAddr::new(from.ip(), hapool_wire::ASAP_PORT));
        }
        for endpoint in endpoints {
            if !found.contains(&(registrar_id, endpoint)) {
                found.push((registrar_id, endpoint));
            }
        }
    }
    Ok(found)
}
