//! Wireshark's VRRP dissector reads our advertisements as we meant them.
//!
//! Needs `tshark` (Debian package `tshark`); without it the test says
//! SKIPPED, unless `HAPOOL_REQUIRE_TOOLS=1` (as CI sets). Generated
//! advertisements, IPv4 and IPv6, go into a pcap as raw IP packets (TTL /
//! hop limit 255, to the VRRP group); tshark must verify every checksum,
//! show no expert item, and show every field as encoded.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use hapool_vrrp::packet::{GROUP_V4, GROUP_V6, PROTOCOL, TTL};
use hapool_vrrp::{Addresses, Advertisement, ChecksumMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn ipv4_header_checksum(h: &[u8]) -> u16 {
    let mut acc: u32 = h
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The advertisement as an IP packet from `src`.
fn packet(adv: &Advertisement, src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(s) => {
            let body = adv.encode(src, IpAddr::V4(GROUP_V4), ChecksumMode::PseudoHeader);
            let mut p = vec![0x45, 0xc0];
            p.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&GROUP_V4.octets());
            let c = ipv4_header_checksum(&p);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(&body);
            p
        }
        IpAddr::V6(s) => {
            let body = adv.encode(src, IpAddr::V6(GROUP_V6), ChecksumMode::PseudoHeader);
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&(body.len() as u16).to_be_bytes());
            p.extend_from_slice(&[PROTOCOL, TTL]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&GROUP_V6.octets());
            p.extend_from_slice(&body);
            p
        }
    }
}

/// A pcap of raw IP packets (link type 101).
fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut f = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0002_0004, 0, 0, 65_535, 101] {
        match v {
            0x0002_0004 => f.extend_from_slice(&[2, 0, 4, 0]),
            _ => f.extend_from_slice(&v.to_le_bytes()),
        }
    }
    for (i, p) in packets.iter().enumerate() {
        for v in [i as u32, 0, p.len() as u32, p.len() as u32] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(p);
    }
    f
}

fn tshark_available() -> bool {
    let ok = Command::new("tshark").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var("HAPOOL_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "HAPOOL_REQUIRE_TOOLS=1 but tshark is not installed"
        );
        eprintln!("SKIPPED: tshark is not installed");
    }
    ok
}

#[test]
fn tshark_decodes_our_advertisements() {
    if !tshark_available() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(112);
    let mut advs = Vec::new();
    let mut packets = Vec::new();
    for i in 0..100u32 {
        let v6 = i % 2 == 1;
        let count = rng.random_range(1..=4);
        let (addresses, src) = if v6 {
            let a = (0..count)
                .map(|_| Ipv6Addr::from(rng.random::<u128>()))
                .collect();
            (
                Addresses::V6(a),
                IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1 + i as u16)),
            )
        } else {
            let a = (0..count)
                .map(|_| Ipv4Addr::from(rng.random::<u32>()))
                .collect();
            (
                Addresses::V4(a),
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i as u8)),
            )
        };
        let adv = Advertisement {
            vrid: rng.random_range(1..=255),
            priority: rng.random(),
            max_adver_int: rng.random_range(1..=4095),
            addresses,
        };
        packets.push(packet(&adv, src));
        advs.push(adv);
    }
    let dir = std::env::temp_dir().join(format!("hapool-vrrp-tshark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vrrp.pcap");
    std::fs::write(&file, pcap(&packets)).unwrap();
    let out = Command::new("tshark")
        .args([
            "-r",
            file.to_str().unwrap(),
            "-o",
            "vrrp.v3_checksum_as_in_v2:FALSE",
            "-T",
            "fields",
            "-E",
            "separator=|",
        ])
        .args([
            "-e",
            "vrrp.version",
            "-e",
            "vrrp.type",
            "-e",
            "vrrp.virt_rtr_id",
            "-e",
            "vrrp.prio",
        ])
        .args([
            "-e",
            "vrrp.addr_count",
            "-e",
            "vrrp.short_adver_int",
            "-e",
            "vrrp.checksum.status",
        ])
        .args([
            "-e",
            "vrrp.ip_addr",
            "-e",
            "vrrp.ipv6_addr",
            "-e",
            "_ws.expert",
            "-e",
            "_ws.malformed",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), advs.len(), "{text}");
    for (line, adv) in lines.iter().zip(&advs) {
        let f: Vec<&str> = line.split('|').collect();
        let (addresses, count) = match &adv.addresses {
            Addresses::V4(a) => (
                a.iter().map(ToString::to_string).collect::<Vec<_>>(),
                a.len(),
            ),
            Addresses::V6(a) => (
                a.iter().map(ToString::to_string).collect::<Vec<_>>(),
                a.len(),
            ),
        };
        let shown_addresses = if f[7].is_empty() { f[8] } else { f[7] };
        let expected = [
            "3".to_owned(),
            "1".to_owned(),
            adv.vrid.to_string(),
            adv.priority.to_string(),
            count.to_string(),
            adv.max_adver_int.to_string(),
            // 1: "Good" (0 is bad, 2 unverified).
            "1".to_owned(),
            addresses.join(","),
        ];
        let got = [f[0], f[1], f[2], f[3], f[4], f[5], f[6], shown_addresses];
        assert_eq!(got.map(str::to_owned), expected, "{line}");
        assert!(
            f[9].is_empty() && f[10].is_empty(),
            "expert or malformed: {line}"
        );
    }
}
