//! Malformed input for every parameter type: truncated, overlong,
//! mis-padded, duplicated and nested where it does not belong. Each case
//! expects its specific error. Inputs are assembled by hand from the wire
//! layout with the small helpers below, not by the encoder under test.

use hapool_wire::{AsapMessage, CauseCode, DecodeError, EnrpMessage, Message, ParamType, Policy};

/// A parameter with a correct length field, padded.
fn tlv(t: u16, value: &[u8]) -> Vec<u8> {
    tlv_len(t, 4 + value.len() as u16, value)
}

/// A parameter with the given length field, padded after its value.
fn tlv_len(t: u16, len: u16, value: &[u8]) -> Vec<u8> {
    let mut v = t.to_be_bytes().to_vec();
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

/// An ASAP message with a correct length field.
fn asap(message_type: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![message_type, 0];
    v.extend_from_slice(&(4 + body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// An ENRP message from registrar 1 to registrar 2.
fn enrp(message_type: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![message_type, 0];
    v.extend_from_slice(&(12 + body.len() as u16).to_be_bytes());
    v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    v.extend_from_slice(body);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn handle() -> Vec<u8> {
    tlv(0x0009, b"Echo")
}
fn pe_id() -> Vec<u8> {
    tlv(0x000E, &[0, 0, 0, 7])
}
fn ipv4() -> Vec<u8> {
    tlv(0x0001, &[10, 0, 0, 1])
}
fn ipv6() -> Vec<u8> {
    tlv(0x0002, &[0; 16])
}
fn tcp_with(addresses: &[u8]) -> Vec<u8> {
    tlv(0x0005, &cat(&[&[0, 80, 0, 0], addresses]))
}
fn tcp() -> Vec<u8> {
    tcp_with(&ipv4())
}
fn lu() -> Vec<u8> {
    tlv(0x0008, &[0x40, 0, 0, 1, 0, 0, 0, 9])
}
/// A pool element with the given nested parameters.
fn pe(nested: &[u8]) -> Vec<u8> {
    tlv(
        0x000A,
        &cat(&[&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0x75, 0x30], nested]),
    )
}
/// An ASAP_REGISTRATION of a PE with the given nested parameters.
fn registration(nested: &[u8]) -> Vec<u8> {
    asap(0x01, &cat(&[&handle(), &pe(nested)]))
}
fn server_info(nested: &[u8]) -> Vec<u8> {
    tlv(0x000B, &cat(&[&[0, 0, 0, 1], nested]))
}
fn checksum() -> Vec<u8> {
    tlv(0x000F, &[0x12, 0x34])
}
fn presence(body: &[u8]) -> Vec<u8> {
    enrp(0x01, body)
}

fn asap_err(bytes: &[u8]) -> DecodeError {
    match AsapMessage::decode(bytes) {
        Ok(d) => panic!("decoded {:?} from {}", d.message, hex::encode(bytes)),
        Err(e) => e,
    }
}

fn enrp_err(bytes: &[u8]) -> DecodeError {
    match EnrpMessage::decode(bytes) {
        Ok(d) => panic!("decoded {:?} from {}", d.message, hex::encode(bytes)),
        Err(e) => e,
    }
}

macro_rules! expect {
    ($err:expr, $pat:pat $(if $guard:expr)?) => {{
        let err = $err;
        assert!(matches!(err, $pat $(if $guard)?), "got {err:?}");
        err
    }};
}

#[test]
fn the_helpers_build_valid_messages() {
    AsapMessage::decode(&registration(&cat(&[&tcp(), &lu()]))).unwrap();
    AsapMessage::decode(&asap(0x02, &cat(&[&handle(), &pe_id()]))).unwrap();
    EnrpMessage::decode(&presence(&cat(&[&checksum(), &server_info(&tcp())]))).unwrap();
}

// ---- Pool handle -------------------------------------------------------

#[test]
fn pool_handle() {
    // Truncated: the length runs past the end of the message.
    expect!(
        asap_err(&asap(0x05, &tlv_len(0x0009, 16, b"Echo"))),
        DecodeError::ParameterOverrun {
            param_type: 0x0009,
            declared: 16,
            available: 8,
            ..
        }
    );
    // Overlong: the length swallows the PE identifier that follows.
    let mut bytes = asap(0x02, &cat(&[&handle(), &pe_id()]));
    bytes[6..8].copy_from_slice(&16u16.to_be_bytes());
    expect!(
        asap_err(&bytes),
        DecodeError::MissingParameter {
            expected: ParamType::PeIdentifier,
            ..
        }
    );
    // Empty.
    expect!(
        asap_err(&asap(0x05, &tlv(0x0009, b""))),
        DecodeError::InvalidValue {
            param: ParamType::PoolHandle,
            ..
        }
    );
    // Mis-padded: "abc" without its padding byte before the PE identifier;
    // the reader steps over the PE id's first byte and reads a header of
    // type 0x0e00 with length 0x0800, which overruns the message.
    let unpadded = cat(&[&[0, 9, 0, 7], b"abc", &pe_id()]);
    expect!(
        asap_err(&asap(0x02, &unpadded)),
        DecodeError::ParameterOverrun {
            param_type: 0x0e00,
            declared: 0x0800,
            available: 7,
            ..
        }
    );
    // Mis-padded at the very end (message length excludes the padding):
    // accepted, as Wireshark accepts it.
    let mut bytes = asap(0x05, &tlv(0x0009, b"abc"));
    bytes.pop();
    bytes[3] -= 1;
    AsapMessage::decode(&bytes).unwrap();
    // Duplicated.
    let err = expect!(
        asap_err(&asap(0x02, &cat(&[&handle(), &handle(), &pe_id()]))),
        DecodeError::DuplicateParameter {
            param: ParamType::PoolHandle,
            ..
        }
    );
    assert_eq!(err.cause().unwrap().code, CauseCode::INVALID_VALUES);
    assert_eq!(&err.cause().unwrap().info[..], &handle()[..]);
    // Nested where it does not belong: a pool handle in server information.
    expect!(
        enrp_err(&presence(&cat(&[&checksum(), &server_info(&handle())]))),
        DecodeError::UnexpectedParameter {
            context: "server information",
            found: ParamType::PoolHandle,
            ..
        }
    );
}

// ---- Addresses ---------------------------------------------------------

#[test]
fn ipv4_address() {
    for (len, value) in [
        (7u16, &[10u8, 0, 0][..]),
        (12, &[10, 0, 0, 1, 0, 0, 0, 0][..]),
    ] {
        expect!(
            asap_err(&registration(&cat(&[&tcp_with(&tlv_len(0x0001, len, value)), &lu()]))),
            DecodeError::ParameterLength { param: ParamType::Ipv4Address, length, .. } if length == usize::from(len)
        );
    }
    // Two addresses on a single-homed transport.
    expect!(
        asap_err(&registration(&cat(&[
            &tcp_with(&cat(&[&ipv4(), &ipv4()])),
            &lu()
        ]))),
        DecodeError::InvalidValue {
            param: ParamType::TcpTransport,
            ..
        }
    );
    // An address directly in the pool element instead of in a transport.
    expect!(
        asap_err(&registration(&cat(&[&ipv4(), &lu()]))),
        DecodeError::UnexpectedParameter {
            context: "pool element",
            found: ParamType::Ipv4Address,
            ..
        }
    );
    // An address nested in an address (the length grows past 8).
    expect!(
        asap_err(&registration(&cat(&[
            &tcp_with(&tlv(0x0001, &ipv4())),
            &lu()
        ]))),
        DecodeError::ParameterLength {
            param: ParamType::Ipv4Address,
            length: 12,
            ..
        }
    );
}

#[test]
fn ipv6_address() {
    for len in [19u16, 24] {
        let value = vec![0u8; usize::from(len) - 4];
        expect!(
            asap_err(&registration(&cat(&[
                &tcp_with(&tlv_len(0x0002, len, &value)),
                &lu()
            ]))),
            DecodeError::ParameterLength {
                param: ParamType::Ipv6Address,
                ..
            }
        );
    }
    let udp = tlv(0x0006, &cat(&[&[0, 80, 0, 0], &ipv6(), &ipv6()]));
    expect!(
        asap_err(&registration(&cat(&[&udp, &lu()]))),
        DecodeError::InvalidValue {
            param: ParamType::UdpTransport,
            ..
        }
    );
    expect!(
        asap_err(&asap(0x01, &cat(&[&handle(), &ipv6()]))),
        DecodeError::UnexpectedParameter {
            context: "ASAP_REGISTRATION",
            found: ParamType::Ipv6Address,
            ..
        }
    );
}

// ---- Transports --------------------------------------------------------

#[test]
fn transports() {
    for (t, param, fixed) in [
        (0x0003u16, ParamType::DccpTransport, 8usize),
        (0x0004, ParamType::SctpTransport, 4),
        (0x0005, ParamType::TcpTransport, 4),
        (0x0006, ParamType::UdpTransport, 4),
        (0x0007, ParamType::UdpLiteTransport, 4),
    ] {
        // Fixed fields cut short.
        expect!(
            asap_err(&registration(&cat(&[&tlv(t, &[0, 80]), &lu()]))),
            DecodeError::Truncated { what: "transport parameter", needed, available: 2 } if needed == fixed
        );
        let fields = vec![0u8; fixed];
        // No address.
        expect!(
            asap_err(&registration(&cat(&[&tlv(t, &fields), &lu()]))),
            DecodeError::InvalidValue { param: p, .. } if p == param
        );
        let good = tlv(t, &cat(&[&fields, &ipv4()]));
        AsapMessage::decode(&registration(&cat(&[&good, &lu()]))).unwrap();
        // Overlong: its length runs past the pool element.
        let mut long = good.clone();
        long[3] += 8;
        expect!(
            asap_err(&registration(&cat(&[&long, &lu()]))),
            DecodeError::MissingParameter {
                expected: ParamType::Policy,
                ..
            } | DecodeError::ParameterOverrun { .. }
        );
        let mut past_end = good.clone();
        past_end[2..4].copy_from_slice(&200u16.to_be_bytes());
        expect!(
            asap_err(&registration(&cat(&[&past_end, &lu()]))),
            DecodeError::ParameterOverrun { declared: 200, .. }
        );
        // Duplicated user transport.
        expect!(
            asap_err(&registration(&cat(&[&good, &good, &lu()]))),
            DecodeError::DuplicateParameter { param: p, .. } if p == param
        );
        // A transport nested in a transport.
        let nested = tlv(t, &cat(&[&fields, &ipv4(), &tcp()]));
        expect!(
            asap_err(&registration(&cat(&[&nested, &lu()]))),
            DecodeError::UnexpectedParameter {
                context: "transport parameter",
                found: ParamType::TcpTransport,
                ..
            }
        );
    }
    // Transport use other than 0 or 1.
    let bad_use = tlv(0x0005, &cat(&[&[0, 80, 0, 2], &ipv4()]));
    expect!(
        asap_err(&registration(&cat(&[&bad_use, &lu()]))),
        DecodeError::InvalidValue {
            param: ParamType::TcpTransport,
            ..
        }
    );
}

// ---- Policy ------------------------------------------------------------

#[test]
fn policy() {
    // Shorter than the policy type.
    expect!(
        asap_err(&registration(&cat(&[&tcp(), &tlv(0x0008, &[0x40, 0])]))),
        DecodeError::ParameterLength {
            param: ParamType::Policy,
            length: 6,
            ..
        }
    );
    // LUD needs two value words; one is given.
    expect!(
        asap_err(&registration(&cat(&[
            &tcp(),
            &tlv(0x0008, &[0x40, 0, 0, 2, 0, 0, 0, 1])
        ]))),
        DecodeError::ParameterLength {
            param: ParamType::Policy,
            length: 12,
            ..
        }
    );
    // Overlong: extra words after the known ones are ignored.
    let long = tlv(0x0008, &[0x40, 0, 0, 1, 0, 0, 0, 9, 0xff, 0xff, 0xff, 0xff]);
    let d = AsapMessage::decode(&registration(&cat(&[&tcp(), &long]))).unwrap();
    let AsapMessage::Registration { pool_element, .. } = d.message else {
        panic!()
    };
    assert_eq!(pool_element.policy, Policy::LeastUsed { load: 9 });
    // Values that are not whole 32-bit words (length not 8 + 4n).
    expect!(
        asap_err(&registration(&cat(&[
            &tcp(),
            &tlv(0x0008, &[0x60, 0, 0, 0, 0xab, 0xcd])
        ]))),
        DecodeError::ParameterLength {
            param: ParamType::Policy,
            length: 10,
            ..
        }
    );
    // Duplicated.
    expect!(
        asap_err(&registration(&cat(&[&tcp(), &lu(), &lu()]))),
        DecodeError::DuplicateParameter {
            param: ParamType::Policy,
            ..
        }
    );
    // Missing.
    expect!(
        asap_err(&registration(&tcp())),
        DecodeError::MissingParameter {
            context: "pool element",
            expected: ParamType::Policy
        }
    );
    // Nested in a transport.
    expect!(
        asap_err(&registration(&cat(&[
            &tcp_with(&cat(&[&ipv4(), &lu()])),
            &lu()
        ]))),
        DecodeError::UnexpectedParameter {
            context: "transport parameter",
            found: ParamType::Policy,
            ..
        }
    );
}

// ---- Pool element ------------------------------------------------------

#[test]
fn pool_element() {
    expect!(
        asap_err(&asap(0x01, &cat(&[&handle(), &tlv(0x000A, &[0; 8])]))),
        DecodeError::Truncated {
            what: "pool element",
            needed: 12,
            available: 8
        }
    );
    let mut bytes = registration(&cat(&[&tcp(), &lu()]));
    bytes[14..16].copy_from_slice(&500u16.to_be_bytes());
    expect!(
        asap_err(&bytes),
        DecodeError::ParameterOverrun {
            param_type: 0x000A,
            declared: 500,
            ..
        }
    );
    let one = pe(&cat(&[&tcp(), &lu()]));
    expect!(
        asap_err(&asap(0x01, &cat(&[&handle(), &one, &one]))),
        DecodeError::DuplicateParameter {
            param: ParamType::PoolElement,
            ..
        }
    );
    // A pool element nested in a pool element.
    expect!(
        asap_err(&registration(&cat(&[&tcp(), &lu(), &one]))),
        DecodeError::UnexpectedParameter {
            context: "pool element",
            found: ParamType::PoolElement,
            ..
        }
    );
    // Three levels: a PE in a PE in a PE is refused at the first nesting.
    let deep = pe(&cat(&[&tcp(), &lu(), &pe(&cat(&[&tcp(), &lu(), &one]))]));
    expect!(
        asap_err(&asap(0x01, &cat(&[&handle(), &deep]))),
        DecodeError::UnexpectedParameter {
            context: "pool element",
            found: ParamType::PoolElement,
            ..
        }
    );
    // Mis-padded: the last nested parameter (a skippable unknown one of
    // five bytes) without its padding in the pool element's length:
    // accepted, as Wireshark accepts it.
    let odd = tlv(0x8123, b"x");
    let mut bytes = registration(&cat(&[&tcp(), &lu(), &odd]));
    let pe_len = u16::from_be_bytes([bytes[14], bytes[15]]) - 3;
    bytes[14..16].copy_from_slice(&pe_len.to_be_bytes());
    AsapMessage::decode(&bytes).unwrap();
    // A business card must carry at least one.
    expect!(
        asap_err(&asap(0x0D, &handle())),
        DecodeError::MissingParameter {
            expected: ParamType::PoolElement,
            ..
        }
    );
}

// ---- Server information -----------------------------------------------

#[test]
fn server_information() {
    expect!(
        enrp_err(&presence(&cat(&[&checksum(), &tlv(0x000B, &[0, 0])]))),
        DecodeError::Truncated {
            what: "server information",
            needed: 4,
            available: 2
        }
    );
    expect!(
        enrp_err(&presence(&cat(&[&checksum(), &server_info(&[])]))),
        DecodeError::MissingParameter {
            context: "server information",
            ..
        }
    );
    let si = server_info(&tcp());
    let mut long = si.clone();
    long[2..4].copy_from_slice(&64u16.to_be_bytes());
    expect!(
        enrp_err(&presence(&cat(&[&checksum(), &long]))),
        DecodeError::ParameterOverrun {
            param_type: 0x000B,
            declared: 64,
            ..
        }
    );
    expect!(
        enrp_err(&presence(&cat(&[&checksum(), &si, &si]))),
        DecodeError::DuplicateParameter {
            param: ParamType::ServerInformation,
            ..
        }
    );
    expect!(
        enrp_err(&presence(&cat(&[
            &checksum(),
            &server_info(&cat(&[&tcp(), &si]))
        ]))),
        DecodeError::UnexpectedParameter {
            context: "server information",
            found: ParamType::ServerInformation,
            ..
        }
    );
}

// ---- Operation error ---------------------------------------------------

#[test]
fn operation_error() {
    let reason = |bytes: &[u8]| match asap_err(bytes) {
        DecodeError::InvalidValue {
            param: ParamType::OperationError,
            reason,
            ..
        } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason(&asap(0x0E, &tlv(0x000C, &[]))),
        "operation error without a cause"
    );
    assert_eq!(
        reason(&asap(0x0E, &tlv(0x000C, &[0, 1]))),
        "error cause header truncated"
    );
    assert_eq!(
        reason(&asap(0x0E, &tlv(0x000C, &[0, 1, 0, 2]))),
        "error cause length below 4"
    );
    assert_eq!(
        reason(&asap(0x0E, &tlv(0x000C, &[0, 1, 0, 12, 0, 0, 0, 0]))),
        "error cause overruns the operation error"
    );
    // Mis-padded last cause (one info byte, operation error length leaves
    // out the cause's padding): accepted.
    let op = tlv_len(0x000C, 9, &[0, 6, 0, 5, 0xaa]);
    AsapMessage::decode(&asap(0x0E, &op)).unwrap();
    let good = tlv(0x000C, &[0, 6, 0, 4]);
    expect!(
        asap_err(&asap(0x0E, &cat(&[&good, &good]))),
        DecodeError::DuplicateParameter {
            param: ParamType::OperationError,
            ..
        }
    );
    expect!(
        asap_err(&registration(&cat(&[&tcp(), &lu(), &good]))),
        DecodeError::UnexpectedParameter {
            context: "pool element",
            found: ParamType::OperationError,
            ..
        }
    );
    expect!(
        asap_err(&asap(0x0E, &[])),
        DecodeError::MissingParameter {
            expected: ParamType::OperationError,
            ..
        }
    );
}

// ---- Cookie ------------------------------------------------------------

#[test]
fn cookie() {
    expect!(
        asap_err(&asap(0x0B, &tlv_len(0x000D, 40, b"abcd"))),
        DecodeError::ParameterOverrun {
            param_type: 0x000D,
            ..
        }
    );
    let c = tlv(0x000D, b"abc");
    expect!(
        asap_err(&asap(0x0B, &cat(&[&c, &c]))),
        DecodeError::DuplicateParameter {
            param: ParamType::Cookie,
            ..
        }
    );
    let mut unpadded = asap(0x0C, &c);
    unpadded.pop();
    unpadded[3] -= 1;
    AsapMessage::decode(&unpadded).unwrap();
    expect!(
        asap_err(&registration(&cat(&[&tcp(), &lu(), &c]))),
        DecodeError::UnexpectedParameter {
            found: ParamType::Cookie,
            ..
        }
    );
    expect!(
        asap_err(&asap(0x0B, &[])),
        DecodeError::MissingParameter {
            expected: ParamType::Cookie,
            ..
        }
    );
}

// ---- PE identifier, PE checksum, handle-resolution option ---------------

#[test]
fn pe_identifier() {
    for (len, value) in [(6u16, &[0u8, 7][..]), (12, &[0, 0, 0, 7, 0, 0, 0, 0][..])] {
        expect!(
            asap_err(&asap(
                0x02,
                &cat(&[&handle(), &tlv_len(0x000E, len, value)])
            )),
            DecodeError::ParameterLength {
                param: ParamType::PeIdentifier,
                ..
            }
        );
    }
    expect!(
        asap_err(&asap(0x02, &cat(&[&handle(), &pe_id(), &pe_id()]))),
        DecodeError::DuplicateParameter {
            param: ParamType::PeIdentifier,
            ..
        }
    );
    expect!(
        asap_err(&registration(&cat(&[
            &tcp_with(&cat(&[&ipv4(), &pe_id()])),
            &lu()
        ]))),
        DecodeError::UnexpectedParameter {
            context: "transport parameter",
            found: ParamType::PeIdentifier,
            ..
        }
    );
}

#[test]
fn pe_checksum() {
    for len in [4u16, 5, 7] {
        let value = vec![0u8; usize::from(len) - 4];
        expect!(
            enrp_err(&presence(&tlv_len(0x000F, len, &value))),
            DecodeError::ParameterLength {
                param: ParamType::PeChecksum,
                ..
            }
        );
    }
    // Length 8 (padding counted) is accepted.
    EnrpMessage::decode(&presence(&tlv_len(0x000F, 8, &[0x12, 0x34, 0, 0]))).unwrap();
    expect!(
        enrp_err(&presence(&cat(&[&checksum(), &checksum()]))),
        DecodeError::DuplicateParameter {
            param: ParamType::PeChecksum,
            ..
        }
    );
    expect!(
        enrp_err(&presence(&cat(&[
            &checksum(),
            &server_info(&cat(&[&tcp(), &checksum()]))
        ]))),
        DecodeError::UnexpectedParameter {
            context: "server information",
            found: ParamType::PeChecksum,
            ..
        }
    );
}

#[test]
fn handle_resolution_option() {
    for len in [6u16, 12] {
        let value = vec![0u8; usize::from(len) - 4];
        expect!(
            asap_err(&asap(
                0x05,
                &cat(&[&handle(), &tlv_len(0x803F, len, &value)])
            )),
            DecodeError::ParameterLength {
                param: ParamType::HandleResolutionOption,
                ..
            }
        );
    }
    let opt = tlv(0x803F, &[0, 0, 0, 3]);
    expect!(
        asap_err(&asap(0x05, &cat(&[&handle(), &opt, &opt]))),
        DecodeError::DuplicateParameter {
            param: ParamType::HandleResolutionOption,
            ..
        }
    );
    expect!(
        asap_err(&asap(0x02, &cat(&[&handle(), &opt, &pe_id()]))),
        DecodeError::UnexpectedParameter {
            found: ParamType::HandleResolutionOption,
            ..
        }
    );
}

// ---- Unknown parameters and messages ------------------------------------

#[test]
fn unknown_parameters_by_action_bits() {
    let unknown = |t: u16| tlv(t, &[1, 2, 3, 4]);
    // 10: skip silently; 11: skip and report, in the pool element too.
    let d = AsapMessage::decode(&registration(&cat(&[
        &tcp(),
        &unknown(0x8123),
        &lu(),
        &unknown(0xC124),
    ])))
    .unwrap();
    assert_eq!(d.reports.len(), 1);
    assert_eq!(d.reports[0].code, CauseCode::UNRECOGNIZED_PARAMETER);
    assert_eq!(&d.reports[0].info[..], &unknown(0xC124)[..]);
    // 00: stop, silently; 01: stop and report.
    let err = expect!(
        asap_err(&asap(0x02, &cat(&[&handle(), &unknown(0x0123), &pe_id()]))),
        DecodeError::UnrecognizedParameter {
            param_type: 0x0123,
            report: false,
            ..
        }
    );
    assert_eq!(err.cause(), None);
    let err = expect!(
        asap_err(&asap(0x02, &cat(&[&handle(), &unknown(0x4123), &pe_id()]))),
        DecodeError::UnrecognizedParameter {
            param_type: 0x4123,
            report: true,
            ..
        }
    );
    let cause = err.cause().unwrap();
    assert_eq!(cause.code, CauseCode::UNRECOGNIZED_PARAMETER);
    assert_eq!(&cause.info[..], &unknown(0x4123)[..]);
}

#[test]
fn message_level_errors() {
    // Unknown message type: the cause carries the whole message.
    let msg = asap(0x42, &handle());
    let err = expect!(
        asap_err(&msg),
        DecodeError::UnrecognizedMessage {
            message_type: 0x42,
            ..
        }
    );
    let cause = err.cause().unwrap();
    assert_eq!(cause.code, CauseCode::UNRECOGNIZED_MESSAGE);
    assert_eq!(&cause.info[..], &msg[..]);
    expect!(
        enrp_err(&enrp(0x0B, &[])),
        DecodeError::UnrecognizedMessage {
            protocol: "ENRP",
            ..
        }
    );
    // Length field and frame disagree.
    let mut msg = asap(0x02, &cat(&[&handle(), &pe_id()]));
    msg[3] += 4;
    expect!(
        asap_err(&msg),
        DecodeError::MessageLength {
            declared: 24,
            actual: 20
        }
    );
    // Shorter than a header.
    expect!(
        asap_err(&[1, 0, 0]),
        DecodeError::Truncated {
            what: "message header",
            ..
        }
    );
    expect!(
        enrp_err(&[5, 0, 0, 8, 0, 0, 0, 1]),
        DecodeError::Truncated {
            what: "message header",
            needed: 12,
            available: 8
        }
    );
    // Fixed fields cut short.
    expect!(
        asap_err(&asap(0x07, &[0, 0])),
        DecodeError::Truncated {
            what: "ASAP_ENDPOINT_KEEP_ALIVE",
            ..
        }
    );
    expect!(
        enrp_err(&enrp(0x07, &[0, 0])),
        DecodeError::Truncated {
            what: "ENRP takeover target",
            ..
        }
    );
    // An update action that is neither ADD_PE nor DEL_PE.
    let body = cat(&[&[0, 7, 0, 0], &handle(), &pe(&cat(&[&tcp(), &lu()]))]);
    expect!(
        enrp_err(&enrp(0x04, &body)),
        DecodeError::InvalidField { value: 7, .. }
    );
    // Parameters in messages that carry none.
    expect!(
        enrp_err(&enrp(0x05, &handle())),
        DecodeError::UnexpectedParameter {
            context: "ENRP_LIST_REQUEST",
            ..
        }
    );
}
