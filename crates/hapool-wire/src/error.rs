//! Decode and encode errors, and their mapping to RFC 5354 error causes.

use bytes::Bytes;

use crate::param::{CauseCode, ErrorCause, ParamType};

/// Why a message could not be decoded.
///
/// Every variant maps to the RFC 5354 error cause that a peer would be sent
/// (see [`DecodeError::cause`]); the variants that carry `tlv` keep the
/// offending parameter so that it can be echoed back as the cause's
/// information, as RFC 5354 asks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside a fixed-size structure.
    #[error("truncated {what}: {needed} bytes needed, {available} available")]
    Truncated {
        /// The structure that was cut short.
        what: &'static str,
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The message header's length field disagrees with the frame.
    #[error("message length field says {declared} bytes, frame has {actual}")]
    MessageLength {
        /// The value of the length field.
        declared: usize,
        /// The number of bytes handed to the decoder.
        actual: usize,
    },
    /// A message is longer than the configured maximum.
    #[error("message of {declared} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// The value of the length field.
        declared: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The message type is not one this protocol defines.
    #[error("unrecognized {protocol} message type {message_type:#04x}")]
    UnrecognizedMessage {
        /// "ASAP" or "ENRP".
        protocol: &'static str,
        /// The type byte.
        message_type: u8,
        /// The whole message, for the error cause.
        message: Bytes,
    },
    /// A parameter's length field runs past the structure that encloses it.
    #[error("parameter {param_type:#06x} claims {declared} bytes, only {available} remain")]
    ParameterOverrun {
        /// The raw parameter type (with action bits).
        param_type: u16,
        /// The value of its length field.
        declared: usize,
        /// Bytes left in the enclosing structure.
        available: usize,
        /// The bytes that were there.
        tlv: Bytes,
    },
    /// A parameter length that no parameter of that type can have.
    #[error("{param:?} parameter with impossible length {length}")]
    ParameterLength {
        /// The parameter.
        param: ParamType,
        /// Its length field.
        length: usize,
        /// The parameter as received.
        tlv: Bytes,
    },
    /// An unknown parameter type whose action bits say "stop processing".
    #[error("unrecognized parameter type {param_type:#06x}")]
    UnrecognizedParameter {
        /// The raw parameter type (with action bits).
        param_type: u16,
        /// Whether the action bits ask for a report to the sender.
        report: bool,
        /// The parameter as received.
        tlv: Bytes,
    },
    /// A parameter the message requires is absent.
    #[error("{context}: missing {expected:?} parameter")]
    MissingParameter {
        /// The message or parameter being decoded.
        context: &'static str,
        /// The parameter that should have come next.
        expected: ParamType,
    },
    /// A known parameter where it does not belong: a parameter nested in one
    /// that cannot hold it, or one in a message that has no place for it.
    #[error("{context}: unexpected {found:?} parameter")]
    UnexpectedParameter {
        /// The message or parameter being decoded.
        context: &'static str,
        /// The parameter that was found.
        found: ParamType,
        /// The parameter as received.
        tlv: Bytes,
    },
    /// A parameter that may appear only once appears again.
    #[error("{context}: duplicate {param:?} parameter")]
    DuplicateParameter {
        /// The message or parameter being decoded.
        context: &'static str,
        /// The repeated parameter.
        param: ParamType,
        /// The second occurrence as received.
        tlv: Bytes,
    },
    /// A fixed field of a message with a value the protocol does not define.
    #[error("invalid {what}: {value:#x}")]
    InvalidField {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// A well-formed parameter with a value the protocol forbids.
    #[error("invalid {param:?} parameter: {reason}")]
    InvalidValue {
        /// The parameter.
        param: ParamType,
        /// What is wrong with it.
        reason: &'static str,
        /// The parameter as received.
        tlv: Bytes,
    },
}

impl DecodeError {
    /// The error cause to send back to the peer, or `None` when the
    /// protocol says to discard the message silently (an unrecognized
    /// parameter whose action bits do not ask for a report).
    pub fn cause(&self) -> Option<ErrorCause> {
        let (code, info) = match self {
            Self::UnrecognizedMessage { message, .. } => {
                (CauseCode::UNRECOGNIZED_MESSAGE, message.clone())
            }
            Self::UnrecognizedParameter { report, tlv, .. } => {
                if !report {
                    return None;
                }
                (CauseCode::UNRECOGNIZED_PARAMETER, tlv.clone())
            }
            Self::MessageTooLarge { .. } => (CauseCode::LACK_OF_RESOURCES, Bytes::new()),
            Self::ParameterOverrun { tlv, .. }
            | Self::ParameterLength { tlv, .. }
            | Self::UnexpectedParameter { tlv, .. }
            | Self::DuplicateParameter { tlv, .. }
            | Self::InvalidValue { tlv, .. } => (CauseCode::INVALID_VALUES, tlv.clone()),
            Self::Truncated { .. }
            | Self::MessageLength { .. }
            | Self::InvalidField { .. }
            | Self::MissingParameter { .. } => (CauseCode::INVALID_VALUES, Bytes::new()),
        };
        Some(ErrorCause { code, info })
    }

    /// Whether the byte stream this came from can no longer be trusted to
    /// be framed correctly, so the connection must be closed. Only a bad
    /// message length does that; every other error spoils one message.
    pub fn breaks_framing(&self) -> bool {
        matches!(
            self,
            Self::MessageTooLarge { .. }
                | Self::MessageLength { .. }
                | Self::Truncated {
                    what: "message header",
                    ..
                }
        )
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A message or parameter would exceed the 65,535 bytes its 16-bit
    /// length field can describe.
    #[error("{what} of {length} bytes does not fit a 16-bit length field")]
    TooLarge {
        /// The structure that grew too large.
        what: &'static str,
        /// Its length in bytes.
        length: usize,
    },
    /// A value that the protocol cannot carry.
    #[error("cannot encode {what}: {reason}")]
    Invalid {
        /// The structure being encoded.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}
