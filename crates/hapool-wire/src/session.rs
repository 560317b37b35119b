//! Data and control on one TCP connection between a pool user and a pool
//! element.
//!
//! RSerPool carries ASAP control messages between a PU and a PE (COOKIE,
//! COOKIE_ECHO, BUSINESS_CARD) on the same association as the
//! application's data, told apart by the SCTP payload protocol identifier.
//! TCP has no such field, so a PE that registers with transport use
//! DATA_PLUS_CONTROL speaks this framing on its TCP port:
//!
//! ```text
//! 0      1      2      3      4              8
//! +------+------+------+------+--------------+----------------
//! | kind |    reserved (0)    | length (u32) | payload ...
//! +------+------+------+------+--------------+----------------
//! ```
//!
//! `kind` 0 is application data (the payload is opaque); `kind` 1 is one
//! ASAP message (the payload is the message, its own length field equal to
//! the frame's). The length counts the payload only; a frame longer than
//! the receiver's limit is refused before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::asap::AsapMessage;
use crate::error::{DecodeError, EncodeError};
use crate::message::Message;

/// Bytes of a session frame header.
pub const SESSION_HEADER_LEN: usize = 8;

const KIND_DATA: u8 = 0;
const KIND_CONTROL: u8 = 1;

/// One frame of a PU–PE session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionFrame {
    /// Application data.
    Data(Bytes),
    /// An ASAP message (COOKIE, COOKIE_ECHO, BUSINESS_CARD, ERROR).
    Control(AsapMessage),
}

impl SessionFrame {
    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Data(data) => {
                let length = u32::try_from(data.len()).map_err(|_| EncodeError::Invalid {
                    what: "session data",
                    reason: "longer than 4 GiB",
                })?;
                dst.reserve(SESSION_HEADER_LEN + data.len());
                dst.put_u8(KIND_DATA);
                dst.put_bytes(0, 3);
                dst.put_u32(length);
                dst.put_slice(data);
            }
            Self::Control(message) => {
                let encoded = message.to_bytes()?;
                dst.reserve(SESSION_HEADER_LEN + encoded.len());
                dst.put_u8(KIND_CONTROL);
                dst.put_bytes(0, 3);
                dst.put_u32(encoded.len() as u32);
                dst.put_slice(&encoded);
            }
        }
        Ok(())
    }

    /// The encoded frame.
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::new();
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    /// Takes one frame off the front of `buf` when it holds a whole one;
    /// `Ok(None)` when more bytes are needed. A frame whose payload exceeds
    /// `max_payload`, an unknown kind, non-zero reserved bytes and a
    /// control payload that is not one ASAP message are errors (the
    /// connection cannot go on).
    pub fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Option<Self>, DecodeError> {
        let Some(header) = buf.first_chunk::<SESSION_HEADER_LEN>() else {
            return Ok(None);
        };
        let kind = header[0];
        if kind != KIND_DATA && kind != KIND_CONTROL {
            return Err(DecodeError::InvalidField {
                what: "session frame kind",
                value: u32::from(kind),
            });
        }
        if header[1..4] != [0, 0, 0] {
            return Err(DecodeError::InvalidField {
                what: "session frame reserved bytes",
                value: u32::from_be_bytes([0, header[1], header[2], header[3]]),
            });
        }
        let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if length > max_payload {
            return Err(DecodeError::MessageTooLarge {
                declared: length,
                max: max_payload,
            });
        }
        if buf.len() < SESSION_HEADER_LEN + length {
            buf.reserve(SESSION_HEADER_LEN + length - buf.len());
            return Ok(None);
        }
        buf.advance(SESSION_HEADER_LEN);
        let payload = buf.split_to(length).freeze();
        Ok(Some(match kind {
            KIND_DATA => Self::Data(payload),
            _ => Self::Control(AsapMessage::decode(&payload)?.message),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_split_and_coalesced() {
        let frames = [
            SessionFrame::Data(Bytes::from_static(b"hello")),
            SessionFrame::Control(AsapMessage::Cookie {
                cookie: Bytes::from_static(b"state-42"),
            }),
            SessionFrame::Data(Bytes::new()),
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire).unwrap();
        }
        // Byte by byte.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = SessionFrame::decode(&mut buf, 1024).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_unknown_and_malformed_frames_are_refused() {
        let mut big = BytesMut::from(&[0u8, 0, 0, 0, 0, 1, 0, 0][..]);
        assert!(matches!(
            SessionFrame::decode(&mut big, 1024),
            Err(DecodeError::MessageTooLarge {
                declared: 65_536,
                ..
            })
        ));
        let mut kind = BytesMut::from(&[7u8, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(SessionFrame::decode(&mut kind, 1024).is_err());
        let mut reserved = BytesMut::from(&[0u8, 1, 0, 0, 0, 0, 0, 0][..]);
        assert!(SessionFrame::decode(&mut reserved, 1024).is_err());
        // A control frame whose payload is not an ASAP message.
        let mut bad = BytesMut::from(&[1u8, 0, 0, 0, 0, 0, 0, 2, 0xff, 0xff][..]);
        assert!(SessionFrame::decode(&mut bad, 1024).is_err());
    }
}
