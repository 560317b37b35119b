//! The advertisement codec: the byte vectors of the wire reference, every
//! receive check, and round trips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hapool_vrrp::packet::{GROUP_V4, GROUP_V6, checksum};
use hapool_vrrp::{Addresses, Advertisement, ChecksumMode, PacketError};
use proptest::prelude::*;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

fn ipv4_vector() -> Advertisement {
    Advertisement {
        vrid: 1,
        priority: 100,
        max_adver_int: 100,
        addresses: Addresses::V4(vec![Ipv4Addr::new(192, 0, 2, 254)]),
    }
}

#[test]
fn ipv4_vector_with_and_without_pseudo_header() {
    let src = v4(192, 0, 2, 1);
    let dst = IpAddr::V4(GROUP_V4);
    let bytes = ipv4_vector().encode(src, dst, ChecksumMode::PseudoHeader);
    assert_eq!(&bytes[..], &hex("31 01 64 01 00 64 05 0a c0 00 02 fe")[..]);
    let legacy = ipv4_vector().encode(src, dst, ChecksumMode::MessageOnly);
    assert_eq!(&legacy[6..8], &[0xa7, 0x9a]);
    assert_eq!(
        Advertisement::decode(&bytes, src, dst, 255, ChecksumMode::PseudoHeader).unwrap(),
        ipv4_vector()
    );
    // Each mode accepts what it should.
    assert!(Advertisement::decode(&legacy, src, dst, 255, ChecksumMode::PseudoHeader).is_err());
    assert!(Advertisement::decode(&legacy, src, dst, 255, ChecksumMode::MessageOnly).is_ok());
    assert!(Advertisement::decode(&legacy, src, dst, 255, ChecksumMode::Either).is_ok());
    assert!(Advertisement::decode(&bytes, src, dst, 255, ChecksumMode::Either).is_ok());
}

#[test]
fn ipv6_vector() {
    let src = IpAddr::V6("fe80::1".parse().unwrap());
    let dst = IpAddr::V6(GROUP_V6);
    let adv = Advertisement {
        vrid: 1,
        priority: 100,
        max_adver_int: 100,
        addresses: Addresses::V6(vec!["fe80::1:1".parse::<Ipv6Addr>().unwrap()]),
    };
    let bytes = adv.encode(src, dst, ChecksumMode::PseudoHeader);
    assert_eq!(
        &bytes[..],
        &hex("31 01 64 01 00 64 6d f7 fe 80 00 00 00 00 00 00 00 00 00 00 00 01 00 01")[..]
    );
    assert_eq!(
        Advertisement::decode(&bytes, src, dst, 255, ChecksumMode::PseudoHeader).unwrap(),
        adv
    );
}

#[test]
fn every_receive_check_names_its_fault() {
    let (src, dst) = (v4(192, 0, 2, 1), IpAddr::V4(GROUP_V4));
    let good = ipv4_vector()
        .encode(src, dst, ChecksumMode::PseudoHeader)
        .to_vec();
    let decode =
        |b: &[u8], ttl| Advertisement::decode(b, src, dst, ttl, ChecksumMode::PseudoHeader);
    assert_eq!(decode(&good, 254), Err(PacketError::Ttl(254)));
    assert_eq!(decode(&good[..5], 255), Err(PacketError::Truncated(5)));
    // Rewrites a field and fixes the checksum, so only that field is wrong.
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b[6..8].fill(0);
        let c = checksum(&b, src, dst, true);
        b[6..8].copy_from_slice(&c.to_be_bytes());
        b
    };
    assert_eq!(
        decode(&with(&|b| b[0] = 0x21), 255),
        Err(PacketError::Version(2))
    );
    assert_eq!(
        decode(&with(&|b| b[0] = 0x32), 255),
        Err(PacketError::Type(2))
    );
    assert_eq!(decode(&with(&|b| b[1] = 0), 255), Err(PacketError::Vrid));
    assert_eq!(
        decode(&with(&|b| b[3] = 2), 255),
        Err(PacketError::Length {
            actual: 12,
            count: 2,
            expected: 16
        })
    );
    assert_eq!(
        decode(
            &with(&|b| {
                b[3] = 0;
                b.truncate(8);
            }),
            255
        ),
        Err(PacketError::NoAddress)
    );
    assert_eq!(
        decode(&with(&|b| b[4..6].fill(0)), 255),
        Err(PacketError::Interval)
    );
    let mut bad = good.clone();
    bad[11] ^= 1;
    assert!(matches!(
        decode(&bad, 255),
        Err(PacketError::Checksum { .. })
    ));
    assert_eq!(
        Advertisement::decode(&good, src, IpAddr::V6(GROUP_V6), 255, ChecksumMode::Either),
        Err(PacketError::Family)
    );
    // The reserved bits are ignored on receive.
    assert!(decode(&with(&|b| b[4] |= 0xf0), 255).is_ok());
}

proptest! {
    #[test]
    fn round_trips(
        vrid in 1u8..=255,
        priority in any::<u8>(),
        interval in 1u16..=4095,
        v6 in any::<bool>(),
        raw in proptest::collection::vec(any::<[u8; 16]>(), 1..8),
        mode in prop_oneof![Just(ChecksumMode::PseudoHeader), Just(ChecksumMode::MessageOnly), Just(ChecksumMode::Either)],
    ) {
        let (addresses, src, dst) = if v6 {
            (
                Addresses::V6(raw.iter().map(|b| Ipv6Addr::from(*b)).collect()),
                IpAddr::V6("fe80::7".parse().unwrap()),
                IpAddr::V6(GROUP_V6),
            )
        } else {
            (
                Addresses::V4(raw.iter().map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3])).collect()),
                v4(10, 1, 1, 7),
                IpAddr::V4(GROUP_V4),
            )
        };
        let adv = Advertisement { vrid, priority, max_adver_int: interval, addresses };
        let bytes = adv.encode(src, dst, mode);
        prop_assert_eq!(Advertisement::decode(&bytes, src, dst, 255, mode), Ok(adv));
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Advertisement::decode(&bytes, v4(10, 0, 0, 1), IpAddr::V4(GROUP_V4), 255, ChecksumMode::Either);
    }
}

#[test]
fn an_address_list_is_of_one_family() {
    let v4: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
    let list = Addresses::from_ips(&v4).unwrap();
    assert!(matches!(list, Addresses::V4(_)));
    assert_eq!(list.to_vec(), v4);
    let v6: Vec<IpAddr> = vec!["fe80::1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
    assert_eq!(Addresses::from_ips(&v6).unwrap().to_vec(), v6);
    let mixed: Vec<IpAddr> = vec!["fe80::1".parse().unwrap(), "10.0.0.1".parse().unwrap()];
    assert_eq!(Addresses::from_ips(&mixed), None);
}
