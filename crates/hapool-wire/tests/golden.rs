//! Golden byte vectors, one or more per message type, written by hand from
//! the wire reference (RFC 5352/5353/5354 layouts), not produced by our
//! encoder. Each vector must decode to the expected value and the value must
//! encode to exactly these bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use hapool_wire::{
    AsapMessage, CauseCode, EnrpBody, EnrpMessage, ErrorCause, Message, OperationError, Policy,
    PoolElement, PoolElementId, PoolEntries, PoolHandle, RegistrarId, ResolutionOutcome,
    ServerInformation, Transport, TransportUse, UpdateAction,
};

/// Hex with spaces, newlines and `|`-comments removed.
fn unhex(s: &str) -> Vec<u8> {
    let digits: String = s
        .lines()
        .map(|l| l.split('|').next().unwrap())
        .flat_map(|l| l.chars().filter(|c| c.is_ascii_hexdigit()))
        .collect();
    hex::decode(digits).unwrap()
}

fn check<M: Message + std::fmt::Debug + PartialEq>(golden: &str, expected: M) {
    let bytes = unhex(golden);
    let decoded = M::decode(&bytes).unwrap_or_else(|e| panic!("{expected:?}: {e}"));
    assert_eq!(decoded.message, expected);
    assert!(decoded.reports.is_empty());
    assert_eq!(
        hex::encode(expected.to_bytes().unwrap()),
        hex::encode(&bytes),
        "encoding of {expected:?}"
    );
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn echo() -> PoolHandle {
    PoolHandle::from("Echo")
}

fn tcp(port: u16, address: IpAddr) -> Transport {
    Transport::Tcp {
        port,
        transport_use: TransportUse::DataOnly,
        address,
    }
}

const REGISTRATION: &str = "
01 00 00 38                                 | ASAP_REGISTRATION, length 56
00 09 00 08 45 63 68 6f                     | pool handle 'Echo'
00 0a 00 2c                                 | pool element, length 44
   11 22 33 44 00 00 00 00 00 00 75 30      |   PE id, home 0, life 30000 ms
   00 05 00 10 00 07 00 00                  |   TCP transport port 7, data only
      00 01 00 08 0a 00 00 01               |     IPv4 10.0.0.1
   00 08 00 0c 40 00 00 01 40 00 00 00      |   policy LU, load 25 %
";

fn registration_pe() -> PoolElement {
    PoolElement {
        id: PoolElementId(0x1122_3344),
        home_registrar: RegistrarId(0),
        registration_life: 30_000,
        user_transport: tcp(7, v4(10, 0, 0, 1)),
        policy: Policy::LeastUsed { load: 0x4000_0000 },
        asap_transport: None,
    }
}

#[test]
fn asap_registration() {
    check(
        REGISTRATION,
        AsapMessage::Registration {
            pool_handle: echo(),
            pool_element: registration_pe(),
            auth_token: None,
        },
    );
}

/// The authentication token extension parameter (0xBD00: skip silently
/// where unknown), padded like any TLV.
#[test]
fn asap_registration_with_a_token() {
    // The registration vector, 12 bytes longer.
    let with_token = REGISTRATION.replace("01 00 00 38", "01 00 00 44")
        + "bd 00 00 0a 73 65 63 72 65 74 00 00 | token 'secret', 2 bytes padding\n";
    check(
        &with_token,
        AsapMessage::Registration {
            pool_handle: echo(),
            pool_element: registration_pe(),
            auth_token: Some(Bytes::from_static(b"secret")),
        },
    );
}

#[test]
fn asap_deregistration() {
    check(
        "02 00 00 14  00 09 00 08 45 63 68 6f  00 0e 00 08 11 22 33 44",
        AsapMessage::Deregistration {
            pool_handle: echo(),
            pe_id: PoolElementId(0x1122_3344),
        },
    );
}

#[test]
fn asap_registration_response_rejected() {
    check(
        "
        03 01 00 1c                          | R flag set
        00 09 00 08 45 63 68 6f
        00 0e 00 08 11 22 33 44
        00 0c 00 08 00 04 00 04              | operation error: non-unique PE id
        ",
        AsapMessage::RegistrationResponse {
            reject: true,
            pool_handle: echo(),
            pe_id: PoolElementId(0x1122_3344),
            error: Some(OperationError::single(ErrorCause::new(
                CauseCode::NON_UNIQUE_PE_IDENTIFIER,
            ))),
        },
    );
}

#[test]
fn asap_registration_response_accepted() {
    check(
        "03 00 00 14  00 09 00 08 45 63 68 6f  00 0e 00 08 11 22 33 44",
        AsapMessage::RegistrationResponse {
            reject: false,
            pool_handle: echo(),
            pe_id: PoolElementId(0x1122_3344),
            error: None,
        },
    );
}

#[test]
fn asap_deregistration_response() {
    check(
        "04 00 00 14  00 09 00 08 45 63 68 6f  00 0e 00 08 11 22 33 44",
        AsapMessage::DeregistrationResponse {
            pool_handle: echo(),
            pe_id: PoolElementId(0x1122_3344),
            error: None,
        },
    );
}

#[test]
fn asap_handle_resolution() {
    check(
        "05 00 00 14  00 09 00 08 45 63 68 6f  80 3f 00 08 00 00 00 05",
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: echo(),
            items: Some(5),
        },
    );
    check(
        "05 00 00 0c  00 09 00 08 45 63 68 6f",
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: echo(),
            items: None,
        },
    );
}

#[test]
fn asap_handle_resolution_response() {
    check(
        "
        06 00 00 48                                 | length 72
        00 09 00 08 45 63 68 6f
        00 08 00 08 00 00 00 01                     | overall policy: round robin
        00 0a 00 34                                 | pool element, length 52
           00 00 00 01 0a 0b 0c 0d 00 00 27 10      |   PE 1, home 0x0a0b0c0d, life 10 s
           00 06 00 1c 1f 90 00 00                  |   UDP port 8080
              00 02 00 14 00000000 00000000 00000000 00000001 | IPv6 ::1
           00 08 00 08 00 00 00 01                  |   policy round robin
        ",
        AsapMessage::HandleResolutionResponse {
            accepted: false,
            pool_handle: echo(),
            outcome: ResolutionOutcome::Members {
                policy: Some(Policy::RoundRobin),
                elements: vec![PoolElement {
                    id: PoolElementId(1),
                    home_registrar: RegistrarId(0x0a0b_0c0d),
                    registration_life: 10_000,
                    user_transport: Transport::Udp {
                        port: 8080,
                        address: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    },
                    policy: Policy::RoundRobin,
                    asap_transport: None,
                }],
            },
        },
    );
    check(
        "
        06 00 00 14
        00 09 00 08 45 63 68 6f
        00 0c 00 08 00 09 00 04                     | unknown pool handle
        ",
        AsapMessage::HandleResolutionResponse {
            accepted: false,
            pool_handle: echo(),
            outcome: ResolutionOutcome::Error(OperationError::single(ErrorCause::new(
                CauseCode::UNKNOWN_POOL_HANDLE,
            ))),
        },
    );
}

#[test]
fn asap_endpoint_keep_alive() {
    check(
        "07 01 00 18  12 34 56 78  00 09 00 08 45 63 68 6f  00 0e 00 08 11 22 33 44",
        AsapMessage::EndpointKeepAlive {
            home: true,
            registrar_id: RegistrarId(0x1234_5678),
            pool_handle: echo(),
            pe_id: Some(PoolElementId(0x1122_3344)),
        },
    );
}

#[test]
fn asap_endpoint_keep_alive_ack() {
    // The wire reference's example (with its length corrected to 20).
    check(
        "08 00 00 14  00 09 00 08 45 63 68 6f  00 0e 00 08 11 22 33 44",
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: echo(),
            pe_id: PoolElementId(0x1122_3344),
        },
    );
}

#[test]
fn asap_endpoint_unreachable() {
    check(
        "09 00 00 14  00 09 00 08 45 63 68 6f  00 0e 00 08 11 22 33 44",
        AsapMessage::EndpointUnreachable {
            pool_handle: echo(),
            pe_id: PoolElementId(0x1122_3344),
        },
    );
}

#[test]
fn asap_server_announce() {
    check(
        "
        0a 00 00 30  12 34 56 78
        00 04 00 18 0f 17 00 00                     | SCTP port 3863
           00 01 00 08 7f 00 00 01                  |   127.0.0.1
           00 01 00 08 c0 00 02 01                  |   192.0.2.1
        00 05 00 10 0f 17 00 01                     | TCP port 3863, data plus control
           00 01 00 08 7f 00 00 01
        ",
        AsapMessage::ServerAnnounce {
            registrar_id: RegistrarId(0x1234_5678),
            transports: vec![
                Transport::Sctp {
                    port: 3863,
                    transport_use: TransportUse::DataOnly,
                    addresses: vec![v4(127, 0, 0, 1), v4(192, 0, 2, 1)],
                },
                Transport::Tcp {
                    port: 3863,
                    transport_use: TransportUse::DataPlusControl,
                    address: v4(127, 0, 0, 1),
                },
            ],
        },
    );
}

#[test]
fn asap_cookie_and_echo() {
    check(
        "0b 00 00 0c  00 0d 00 07 61 62 63 00",
        AsapMessage::Cookie {
            cookie: Bytes::from_static(b"abc"),
        },
    );
    check(
        "0c 00 00 0c  00 0d 00 08 01 02 03 04",
        AsapMessage::CookieEcho {
            cookie: Bytes::from_static(&[1, 2, 3, 4]),
        },
    );
}

#[test]
fn asap_business_card() {
    check(
        "
        0d 00 00 38
        00 09 00 08 45 63 68 6f
        00 0a 00 2c
           00 00 00 02 00 00 00 00 00 00 00 00
           00 05 00 10 00 50 00 00 00 01 00 08 0a 00 00 02
           00 08 00 0c 00 00 00 02 00 00 00 03      | WRR weight 3
        ",
        AsapMessage::BusinessCard {
            pool_handle: echo(),
            policy: None,
            elements: vec![PoolElement {
                id: PoolElementId(2),
                home_registrar: RegistrarId(0),
                registration_life: 0,
                user_transport: tcp(80, v4(10, 0, 0, 2)),
                policy: Policy::WeightedRoundRobin { weight: 3 },
                asap_transport: None,
            }],
        },
    );
}

#[test]
fn asap_error() {
    check(
        "
        0e 00 00 10
        00 0c 00 0c
           00 01 00 08 41 23 00 04                  | unrecognized parameter 0x4123
        ",
        AsapMessage::Error {
            error: OperationError::single(ErrorCause {
                code: CauseCode::UNRECOGNIZED_PARAMETER,
                info: Bytes::from_static(&[0x41, 0x23, 0x00, 0x04]),
            }),
        },
    );
}

fn enrp(body: EnrpBody) -> EnrpMessage {
    EnrpMessage {
        sender: RegistrarId(0x0a0b_0c0d),
        receiver: RegistrarId(0),
        body,
    }
}

fn server_info(id: u32, last_octet: u8) -> ServerInformation {
    ServerInformation {
        registrar_id: RegistrarId(id),
        transport: tcp(9901, v4(127, 0, 0, last_octet)),
    }
}

#[test]
fn enrp_presence() {
    check(
        "
        01 01 00 2c  0a 0b 0c 0d  00 00 00 00       | R flag, sender, receiver 0
        00 0f 00 06 48 95 00 00                     | PE checksum 0x4895, length 6
        00 0b 00 18 0a 0b 0c 0d                     | server information
           00 05 00 10 26 ad 00 00 00 01 00 08 7f 00 00 01 | TCP 127.0.0.1:9901
        ",
        enrp(EnrpBody::Presence {
            reply_required: true,
            checksum: 0x4895,
            server_info: Some(server_info(0x0a0b_0c0d, 1)),
        }),
    );
}

#[test]
fn enrp_handle_table_request() {
    check(
        "02 01 00 0c  0a 0b 0c 0d  00 00 00 00",
        enrp(EnrpBody::HandleTableRequest {
            own_children_only: true,
        }),
    );
}

#[test]
fn enrp_handle_table_response() {
    check(
        "
        03 02 00 50  0a 0b 0c 0d  00 00 00 00       | M flag
        00 09 00 07 4f 64 64 00                     | pool handle 'Odd', padded
        00 0a 00 3c
           01 02 03 04 0a 0b 0c 0d 00 00 00 00
           00 05 00 10 00 07 00 00 00 01 00 08 0a 00 00 01
           00 08 00 0c 40 00 00 01 00 00 00 00      | LU load 0
           00 04 00 10 0f 17 00 00 00 01 00 08 0a 00 00 01 | ASAP transport SCTP
        ",
        enrp(EnrpBody::HandleTableResponse {
            reject: false,
            more_to_send: true,
            pools: vec![PoolEntries {
                pool_handle: PoolHandle::from("Odd"),
                elements: vec![PoolElement {
                    id: PoolElementId(0x0102_0304),
                    home_registrar: RegistrarId(0x0a0b_0c0d),
                    registration_life: 0,
                    user_transport: tcp(7, v4(10, 0, 0, 1)),
                    policy: Policy::LeastUsed { load: 0 },
                    asap_transport: Some(Transport::Sctp {
                        port: 3863,
                        transport_use: TransportUse::DataOnly,
                        addresses: vec![v4(10, 0, 0, 1)],
                    }),
                }],
            }],
        }),
    );
}

#[test]
fn enrp_handle_update() {
    check(
        "
        04 00 00 58  0a 0b 0c 0d  00 00 00 00
        00 01 00 00                                 | DEL_PE, reserved
        00 09 00 08 45 63 68 6f
        00 0a 00 40
           11 22 33 44 0a 0b 0c 0d 00 00 75 30
           00 05 00 10 00 07 00 00 00 01 00 08 0a 00 00 01
           00 08 00 10 40 00 00 02 00 00 00 01 00 00 00 02 | LUD load 1 degradation 2
           00 05 00 10 0f 17 00 00 00 01 00 08 7f 00 00 01 | ASAP transport TCP
        ",
        enrp(EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::DelPe,
            pool_handle: echo(),
            pool_element: PoolElement {
                id: PoolElementId(0x1122_3344),
                home_registrar: RegistrarId(0x0a0b_0c0d),
                registration_life: 30_000,
                user_transport: tcp(7, v4(10, 0, 0, 1)),
                policy: Policy::LeastUsedDegradation {
                    load: 1,
                    degradation: 2,
                },
                asap_transport: Some(tcp(3863, v4(127, 0, 0, 1))),
            },
        }),
    );
}

#[test]
fn enrp_list_request() {
    check(
        "05 00 00 0c  0a 0b 0c 0d  00 00 00 00",
        enrp(EnrpBody::ListRequest),
    );
}

#[test]
fn enrp_list_response() {
    check(
        "
        06 00 00 3c  0a 0b 0c 0d  00 00 00 00
        00 0b 00 18 0a 0b 0c 0d 00 05 00 10 26 ad 00 00 00 01 00 08 7f 00 00 01
        00 0b 00 18 01 02 03 04 00 05 00 10 26 ad 00 00 00 01 00 08 7f 00 00 02
        ",
        enrp(EnrpBody::ListResponse {
            reject: false,
            servers: vec![server_info(0x0a0b_0c0d, 1), server_info(0x0102_0304, 2)],
        }),
    );
}

#[test]
fn enrp_takeover_messages() {
    let target = RegistrarId(0x0bad_beef);
    check(
        "07 00 00 10  0a 0b 0c 0d  00 00 00 00  0b ad be ef",
        enrp(EnrpBody::InitTakeover { target }),
    );
    check(
        "08 00 00 10  0a 0b 0c 0d  00 00 00 00  0b ad be ef",
        enrp(EnrpBody::InitTakeoverAck { target }),
    );
    check(
        "09 00 00 10  0a 0b 0c 0d  00 00 00 00  0b ad be ef",
        enrp(EnrpBody::TakeoverServer { target }),
    );
}

#[test]
fn enrp_error() {
    check(
        "
        0a 00 00 18  0a 0b 0c 0d  00 00 00 00
        00 0c 00 0c 00 02 00 08 7f 00 00 04         | unrecognized message 0x7f
        ",
        enrp(EnrpBody::Error {
            error: OperationError::single(ErrorCause {
                code: CauseCode::UNRECOGNIZED_MESSAGE,
                info: Bytes::from_static(&[0x7f, 0, 0, 4]),
            }),
        }),
    );
}

/// Every policy's parameter, as laid out in the wire reference (part B).
#[test]
fn every_policy_layout() {
    let cases: &[(&str, Policy)] = &[
        ("00080008 00000001", Policy::RoundRobin),
        (
            "0008000c 00000002 00000007",
            Policy::WeightedRoundRobin { weight: 7 },
        ),
        ("00080008 00000003", Policy::Random),
        (
            "0008000c 00000004 00000007",
            Policy::WeightedRandom { weight: 7 },
        ),
        (
            "0008000c 00000005 00000009",
            Policy::Priority { priority: 9 },
        ),
        (
            "0008000c 40000001 00000011",
            Policy::LeastUsed { load: 0x11 },
        ),
        (
            "00080010 40000002 00000011 00000022",
            Policy::LeastUsedDegradation {
                load: 0x11,
                degradation: 0x22,
            },
        ),
        (
            "00080010 40000003 00000011 00000022",
            Policy::PriorityLeastUsed {
                load: 0x11,
                degradation: 0x22,
            },
        ),
        (
            "0008000c 40000004 00000011",
            Policy::RandomizedLeastUsed { load: 0x11 },
        ),
        (
            "00080010 b0001001 00000011 00000022",
            Policy::RandomizedPriorityLeastUsed {
                load: 0x11,
                degradation: 0x22,
            },
        ),
        (
            "00080010 b0001002 00000011 00000022",
            Policy::RandomizedLeastUsedDegradation {
                load: 0x11,
                degradation: 0x22,
            },
        ),
        (
            "00080010 b0001003 00000011 00000022",
            Policy::PriorityLeastUsedDegradation {
                load: 0x11,
                degradation: 0x22,
            },
        ),
        (
            "00080010 b0001004 00000011 00000022",
            Policy::RandomizedPriorityLeastUsedDegradation {
                load: 0x11,
                degradation: 0x22,
            },
        ),
        (
            "00080014 b0002001 00000007 00000033 00000044",
            Policy::WeightedRandomDpf {
                weight: 7,
                weight_dpf: 0x33,
                distance: 0x44,
            },
        ),
        (
            "00080014 b0002002 00000011 00000033 00000044",
            Policy::LeastUsedDpf {
                load: 0x11,
                load_dpf: 0x33,
                distance: 0x44,
            },
        ),
        (
            "00080018 b0002003 00000011 00000022 00000033 00000044",
            Policy::LeastUsedDegradationDpf {
                load: 0x11,
                degradation: 0x22,
                load_dpf: 0x33,
                distance: 0x44,
            },
        ),
        (
            "00080018 b0002004 00000011 00000022 00000033 00000044",
            Policy::PriorityLeastUsedDpf {
                load: 0x11,
                degradation: 0x22,
                load_dpf: 0x33,
                distance: 0x44,
            },
        ),
        (
            "00080018 b0002005 00000011 00000022 00000033 00000044",
            Policy::PriorityLeastUsedDegradationDpf {
                load: 0x11,
                degradation: 0x22,
                load_dpf: 0x33,
                distance: 0x44,
            },
        ),
        (
            "0008000c 60000000 abcd0123",
            Policy::Other {
                policy_type: hapool_wire::PolicyType(0x6000_0000),
                values: Bytes::from_static(&[0xab, 0xcd, 0x01, 0x23]),
            },
        ),
    ];
    for (policy_hex, policy) in cases {
        // Wrap the policy in a business card's pool element.
        let policy_bytes = unhex(policy_hex);
        let pe_len = 16 + 16 + policy_bytes.len().next_multiple_of(4);
        let mut golden = unhex("0d000000 000900084563686f");
        golden.extend_from_slice(&unhex("000a"));
        golden.extend_from_slice(&(pe_len as u16).to_be_bytes());
        golden.extend_from_slice(&unhex(
            "000000020000000000000000 000500100050000000010008 0a000002",
        ));
        golden.extend_from_slice(&policy_bytes);
        let total = golden.len() as u16;
        golden[2..4].copy_from_slice(&total.to_be_bytes());
        let expected = AsapMessage::BusinessCard {
            pool_handle: echo(),
            policy: None,
            elements: vec![PoolElement {
                id: PoolElementId(2),
                home_registrar: RegistrarId(0),
                registration_life: 0,
                user_transport: tcp(80, v4(10, 0, 0, 2)),
                policy: policy.clone(),
                asap_transport: None,
            }],
        };
        check(&hex::encode(&golden), expected);
    }
}

/// Test vectors of the PE checksum TLV and the DCCP/UDP-Lite transports.
#[test]
fn remaining_transports() {
    let pe = |user_transport| AsapMessage::Registration {
        pool_handle: echo(),
        pool_element: PoolElement {
            user_transport,
            ..registration_pe()
        },
        auth_token: None,
    };
    check(
        "
        01 00 00 3c  00 09 00 08 45 63 68 6f
        00 0a 00 30 11 22 33 44 00 00 00 00 00 00 75 30
           00 03 00 14 00 21 00 00 de ad be ef      | DCCP port 33, service code
              00 01 00 08 0a 00 00 01
           00 08 00 0c 40 00 00 01 40 00 00 00
        ",
        pe(Transport::Dccp {
            port: 33,
            service_code: 0xdead_beef,
            address: v4(10, 0, 0, 1),
        }),
    );
    check(
        "
        01 00 00 38  00 09 00 08 45 63 68 6f
        00 0a 00 2c 11 22 33 44 00 00 00 00 00 00 75 30
           00 07 00 10 00 21 00 00 00 01 00 08 0a 00 00 01 | UDP-Lite port 33
           00 08 00 0c 40 00 00 01 40 00 00 00
        ",
        pe(Transport::UdpLite {
            port: 33,
            address: v4(10, 0, 0, 1),
        }),
    );
}
