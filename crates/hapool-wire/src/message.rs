//! What ASAP and ENRP messages have in common: the header, the decode
//! result, and the [`Message`] trait the frame decoder works with.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::param::ErrorCause;
use crate::tlv::patch_length;

/// A decoded message and the unrecognized parameters its sender asked to
/// hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<M> {
    /// The message.
    pub message: M,
    /// "Unrecognized Parameter" error causes for skipped parameters whose
    /// action bits ask for a report; empty almost always. The receiver
    /// sends them back in an ASAP_ERROR or ENRP_ERROR.
    pub reports: Vec<ErrorCause>,
}

/// A message of one of the two protocols.
pub trait Message: Sized {
    /// "ASAP" or "ENRP".
    const PROTOCOL: &'static str;
    /// Bytes of the fixed header (4 for ASAP, 12 for ENRP).
    const HEADER_LEN: usize;

    /// Decodes one message; `frame` must hold exactly the message.
    fn decode(frame: &[u8]) -> Result<Decoded<Self>, DecodeError>;

    /// Appends the encoded message to `dst`.
    fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;

    /// The encoded message as bytes.
    fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut dst = BytesMut::with_capacity(64);
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }
}

/// The common header fields.
pub(crate) struct Header<'a> {
    pub(crate) message_type: u8,
    pub(crate) flags: u8,
    /// Everything after the first four bytes.
    pub(crate) rest: &'a [u8],
}

/// Splits the four-byte common header off `frame` and checks the length
/// field against the frame and the protocol's minimum.
pub(crate) fn split_header(frame: &[u8], header_len: usize) -> Result<Header<'_>, DecodeError> {
    let Some((head, rest)) = frame.split_first_chunk::<4>() else {
        return Err(DecodeError::Truncated {
            what: "message header",
            needed: header_len,
            available: frame.len(),
        });
    };
    let declared = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if declared != frame.len() {
        return Err(DecodeError::MessageLength {
            declared,
            actual: frame.len(),
        });
    }
    if declared < header_len {
        return Err(DecodeError::Truncated {
            what: "message header",
            needed: header_len,
            available: declared,
        });
    }
    Ok(Header {
        message_type: head[0],
        flags: head[1],
        rest,
    })
}

/// Writes the common header with a length to be patched by
/// [`end_message`]; returns where the message starts.
pub(crate) fn begin_message(dst: &mut BytesMut, message_type: u8, flags: u8) -> usize {
    let start = dst.len();
    dst.put_u8(message_type);
    dst.put_u8(flags);
    dst.put_u16(0);
    start
}

/// Patches the length of the message begun at `start`.
pub(crate) fn end_message(dst: &mut BytesMut, start: usize) -> Result<(), EncodeError> {
    patch_length(dst, start + 2, dst.len() - start, "message")
}

/// A flag bit as a bool.
pub(crate) fn flag(flags: u8, bit: u8) -> bool {
    flags & bit != 0
}

/// A bool as a flag bit.
pub(crate) fn bit(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}
