//! Framing for stream transports (TCP, TLS): one RFC-formatted message
//! after another, each delimited by the length field of its header.

use std::marker::PhantomData;

use bytes::BytesMut;

use crate::error::DecodeError;
use crate::message::{Decoded, Message};

/// The default largest message accepted: 64 KiB, which is every length the
/// 16-bit length field can express.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// Cuts messages of type `M` out of a byte stream.
///
/// Feed it by appending received bytes to a [`BytesMut`] and calling
/// [`FrameDecoder::decode`] until it returns `Ok(None)`: it handles
/// messages split across reads and several messages in one read. A length
/// field below the header size or above the maximum is refused before any
/// buffer is grown for it; such an error breaks the framing
/// ([`DecodeError::breaks_framing`]) and the connection must be closed.
/// Any other error spoils one message only; the stream stays in step.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    max_message: usize,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE)
    }
}

impl<M: Message> FrameDecoder<M> {
    /// A decoder that refuses messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            _message: PhantomData,
        }
    }

    /// The length of the next complete message in `buf`, if it is all
    /// there. Reserves room for the rest of a partial message.
    pub fn next_frame_len(&self, buf: &mut BytesMut) -> Result<Option<usize>, DecodeError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if declared < M::HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "message header",
                needed: M::HEADER_LEN,
                available: declared,
            });
        }
        if declared > self.max_message {
            return Err(DecodeError::MessageTooLarge {
                declared,
                max: self.max_message,
            });
        }
        if buf.len() < declared {
            buf.reserve(declared - buf.len());
            return Ok(None);
        }
        Ok(Some(declared))
    }

    /// Takes the next complete message out of `buf` and decodes it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded<M>>, DecodeError> {
        let Some(len) = self.next_frame_len(buf)? else {
            return Ok(None);
        };
        let frame = buf.split_to(len);
        M::decode(&frame).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asap::AsapMessage;
    use crate::param::{PoolElementId, PoolHandle};

    fn unreachable_msg(id: u32) -> AsapMessage {
        AsapMessage::EndpointUnreachable {
            pool_handle: PoolHandle::from("pool"),
            pe_id: PoolElementId(id),
        }
    }

    #[test]
    fn split_and_coalesced_reads() {
        let mut stream = Vec::new();
        for id in 0..5 {
            stream.extend_from_slice(&unreachable_msg(id).to_bytes().unwrap());
        }
        // Feed the stream in every chunk size from 1 byte to all at once.
        for chunk in 1..=stream.len() {
            let mut decoder = FrameDecoder::<AsapMessage>::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(d) = decoder.decode(&mut buf).unwrap() {
                    got.push(d.message);
                }
            }
            assert!(buf.is_empty());
            assert_eq!(
                got,
                (0..5).map(unreachable_msg).collect::<Vec<_>>(),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn oversize_length_refused_before_allocation() {
        let mut decoder = FrameDecoder::<AsapMessage>::new(1024);
        let mut buf = BytesMut::from(&[0x01, 0x00, 0xFF, 0xFF][..]);
        let capacity = buf.capacity();
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            DecodeError::MessageTooLarge {
                declared: 0xFFFF,
                max: 1024
            }
        );
        assert!(err.breaks_framing());
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn length_below_header_refused() {
        let mut decoder = FrameDecoder::<crate::enrp::EnrpMessage>::default();
        let mut buf = BytesMut::from(&[0x05, 0x00, 0x00, 0x08, 0, 0, 0, 0][..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(err.breaks_framing(), "{err:?}");
    }

    #[test]
    fn bad_message_keeps_stream_in_step() {
        // An unknown message type between two good ones.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&unreachable_msg(1).to_bytes().unwrap());
        buf.extend_from_slice(&[0x7F, 0x00, 0x00, 0x08, 1, 2, 3, 4]);
        buf.extend_from_slice(&unreachable_msg(2).to_bytes().unwrap());
        let mut decoder = FrameDecoder::<AsapMessage>::default();
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().message,
            unreachable_msg(1)
        );
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(!err.breaks_framing());
        assert!(matches!(
            err,
            DecodeError::UnrecognizedMessage {
                message_type: 0x7F,
                ..
            }
        ));
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().message,
            unreachable_msg(2)
        );
    }
}
