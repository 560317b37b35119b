//! The gRPC health checking protocol (`grpc.health.v1.Health/Check`), as
//! a probe of members that speak gRPC: the request asks after one service
//! (or, empty, the server as a whole), and the member passes when it
//! answers SERVING. Each message is a length-prefixed protobuf message;
//! the two used here have one field each, so they are written and read by
//! hand.

use bytes::{BufMut, Bytes, BytesMut};

/// The method a probe calls.
pub(crate) const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// The framed `HealthCheckRequest { service }`: uncompressed, its length
/// (big-endian), then field 1 (a string) unless empty.
pub(crate) fn check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    framed.put_slice(&message);
    framed.freeze()
}

/// Whether the framed `HealthCheckResponse` in `body` says SERVING. A
/// compressed, truncated or malformed message does not.
pub(crate) fn is_serving(body: &[u8]) -> bool {
    let Some((&0, rest)) = body.split_first() else {
        return false;
    };
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let Some(message) = message.get(..u32::from_be_bytes(*length) as usize) else {
        return false;
    };
    status(message) == Some(SERVING)
}

/// Field 1 (a varint) of a protobuf message, skipping any other field;
/// the last one when repeated, as protobuf reads it.
fn status(mut message: &[u8]) -> Option<u64> {
    let mut status = None;
    while !message.is_empty() {
        let key = varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = Some(varint(&mut message)?),
            (_, 0) => {
                varint(&mut message)?;
            }
            (_, 1) => message = message.get(8..)?,
            (_, 2) => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            (_, 5) => message = message.get(4..)?,
            _ => return None,
        }
    }
    status
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(into: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        into.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    into.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    #[test]
    fn the_request_names_the_service_or_nothing() {
        assert_eq!(&check_request("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &check_request("hapool.Echo")[..],
            b"\x00\x00\x00\x00\x0d\x0a\x0bhapool.Echo"
        );
        let long = "s".repeat(300);
        let request = check_request(&long);
        // A length of 300 takes two bytes as a varint.
        assert_eq!(&request[..8], b"\x00\x00\x00\x01\x2f\x0a\xac\x02");
        assert_eq!(request.len(), 5 + 3 + 300);
    }

    #[test]
    fn only_serving_passes() {
        assert!(is_serving(&framed(&[0x08, 0x01])));
        for status in [0u8, 2, 3] {
            assert!(!is_serving(&framed(&[0x08, status])), "{status}");
        }
        // No status at all: UNKNOWN.
        assert!(!is_serving(&framed(&[])));
        // Unknown fields of every wire type are skipped.
        let mut with_others = vec![0x10, 0x96, 0x01, 0x19];
        with_others.extend_from_slice(&[0; 8]);
        with_others.extend_from_slice(&[0x22, 0x02, b'h', b'i', 0x2d, 1, 2, 3, 4, 0x08, 0x01]);
        assert!(is_serving(&framed(&with_others)));
        // The last of a repeated field counts.
        assert!(!is_serving(&framed(&[0x08, 0x01, 0x08, 0x02])));
    }

    #[test]
    fn malformed_answers_do_not_pass() {
        let good = framed(&[0x08, 0x01]);
        // Compressed, cut short, or with bytes missing from the message.
        let mut compressed = good.clone();
        compressed[0] = 1;
        assert!(!is_serving(&compressed));
        for cut in 0..good.len() {
            assert!(!is_serving(&good[..cut]), "{cut}");
        }
        assert!(!is_serving(&framed(&[0x08])));
        assert!(!is_serving(&framed(&[0x08, 0x81])));
        assert!(!is_serving(&framed(&[0x0a, 0x05, b'x'])));
        assert!(!is_serving(&framed(&[0x0b])));
        assert!(!is_serving(&framed(&[0xff; 11])));
    }
}
