//! Byte-exact encoding and decoding of the Reliable Server Pooling
//! protocols: ASAP (RFC 5352) and ENRP (RFC 5353) messages, their RFC 5354
//! parameters and the RFC 5356 selection policies (with rsplib's extension
//! policies and the handle-resolution option draft).
//!
//! Main types: [`AsapMessage`] and [`EnrpMessage`] (both [`Message`]s),
//! [`PoolElement`], [`Transport`], [`Policy`], [`OperationError`], and
//! [`FrameDecoder`], which cuts messages out of a TCP byte stream.
//!
//! Decoding is total: it never panics on any input, checks every length
//! before reading, allocates at most a small multiple of its input, and
//! reports every malformed input as a [`DecodeError`] that maps to the RFC
//! 5354 error cause a peer would be sent ([`DecodeError::cause`]). Unknown
//! parameters are handled by their action bits; the reports they ask for
//! come back in [`Decoded::reports`].
//!
//! This crate never does I/O, never reads the clock and never depends on an
//! async runtime.
//!
//! ```
//! use bytes::BytesMut;
//! use hapool_wire::{AsapMessage, FrameDecoder, Message, PoolElementId, PoolHandle};
//!
//! // A pool user reports a PE it could not reach.
//! let report = AsapMessage::EndpointUnreachable {
//!     pool_handle: PoolHandle::from("Echo"),
//!     pe_id: PoolElementId(0x1122_3344),
//! };
//! let bytes = report.to_bytes()?;
//! assert_eq!(bytes.len(), 20);
//!
//! // The registrar cuts it out of its TCP stream, which may deliver it in pieces.
//! let mut stream = BytesMut::new();
//! let mut decoder = FrameDecoder::<AsapMessage>::default();
//! stream.extend_from_slice(&bytes[..7]);
//! assert!(decoder.decode(&mut stream)?.is_none());
//! stream.extend_from_slice(&bytes[7..]);
//! let decoded = decoder.decode(&mut stream)?.expect("a whole message");
//! assert_eq!(decoded.message, report);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

mod asap;
mod enrp;
mod error;
mod frame;
mod message;
mod param;
mod policy;
mod session;
mod tlv;

#[cfg(feature = "proptest")]
pub mod strategy;

pub use asap::{AsapMessage, AsapType, ResolutionOutcome};
pub use enrp::{EnrpBody, EnrpMessage, EnrpType, PoolEntries, UpdateAction};
pub use error::{DecodeError, EncodeError};
pub use frame::{DEFAULT_MAX_MESSAGE, FrameDecoder};
pub use message::{Decoded, Message};
pub use param::{
    CauseCode, ErrorCause, OperationError, ParamType, PoolElement, PoolElementId, PoolHandle,
    RegistrarId, ServerInformation, Transport, TransportUse,
};
pub use policy::{Policy, PolicyType};
pub use session::{SESSION_HEADER_LEN, SessionFrame};

/// IANA port of ASAP over SCTP, TCP and UDP.
pub const ASAP_PORT: u16 = 3863;
/// Port of ASAP over TLS.
pub const ASAP_TLS_PORT: u16 = 3864;
/// IANA port of ENRP.
pub const ENRP_PORT: u16 = 9901;
/// Port of ENRP over TLS.
pub const ENRP_TLS_PORT: u16 = 9902;
/// SCTP payload protocol identifier of ASAP.
pub const ASAP_PPID: u32 = 11;
/// SCTP payload protocol identifier of ENRP.
pub const ENRP_PPID: u32 = 12;
