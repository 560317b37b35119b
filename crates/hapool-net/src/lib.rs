//! The only crate of hapool that touches sockets.
//!
//! So far: [`MessageReader`] and [`write_message`], which carry ASAP or ENRP
//! messages over any byte stream (TCP or TLS; SCTP later), one message after
//! another, framed by the length in each header; [`tls`], which builds
//! TLS configurations and reads client identities; [`vrrp`], VRRP's
//! raw socket, virtual addresses and gratuitous ARP on Linux;
//! [`passing`], open sockets handed to another process over a Unix
//! socket; [`activation`], listening sockets the service manager
//! passed to the process (socket activation); and [`notify`], the
//! daemon's state told to the service manager.
//!
//! Never holds protocol state: what a message means is for the state
//! machines in `hapool-proto` and `hapool-vrrp`.
//!
//! The one place of hapool with unsafe code is here: the system calls of
//! the VRRP socket that no safe interface offers (`vrrp.rs`), and taking
//! ownership of the descriptors a service manager passed by number
//! (`activation.rs`); each block says why it is sound. Everything else
//! denies unsafe code.

pub mod activation;
pub mod notify;
pub mod passing;
pub mod tls;
pub mod vrrp;

use std::io;
use std::marker::PhantomData;

use bytes::BytesMut;
use hapool_wire::{DecodeError, Decoded, EncodeError, FrameDecoder, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The socket failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
    /// A message was malformed. When [`DecodeError::breaks_framing`] is
    /// false the stream is still in step and reading may go on.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The peer closed the stream in the middle of a message.
    #[error("stream closed inside a message ({0} bytes of it received)")]
    Truncated(usize),
}

impl ReadError {
    /// Whether the stream can be read further.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, Self::Decode(e) if !e.breaks_framing())
    }
}

/// Reads messages of type `M` from a byte stream.
#[derive(Debug)]
pub struct MessageReader<R, M> {
    inner: R,
    buf: BytesMut,
    decoder: FrameDecoder<M>,
    _message: PhantomData<fn() -> M>,
}

impl<R: AsyncRead + Unpin, M: Message> MessageReader<R, M> {
    /// A reader refusing messages longer than `max_message` bytes.
    pub fn new(inner: R, max_message: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(4096),
            decoder: FrameDecoder::new(max_message),
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` when the peer closed the stream
    /// cleanly between messages.
    pub async fn next(&mut self) -> Result<Option<Decoded<M>>, ReadError> {
        loop {
            if let Some(decoded) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(decoded));
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(4096);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated(self.buf.len()))
                };
            }
        }
    }
}

/// Why a message could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The socket failed.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
    /// The message cannot be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[from] EncodeError),
}

/// Encodes `message` and writes it whole.
pub async fn write_message<W: AsyncWrite + Unpin, M: Message>(
    writer: &mut W,
    message: &M,
) -> Result<(), WriteError> {
    let bytes = message.to_bytes()?;
    writer.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapool_wire::{AsapMessage, PoolElementId, PoolHandle};

    fn unreachable(id: u32) -> AsapMessage {
        AsapMessage::EndpointUnreachable {
            pool_handle: PoolHandle::from("p"),
            pe_id: PoolElementId(id),
        }
    }

    #[tokio::test]
    async fn messages_over_a_stream() {
        let (mut a, b) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            for id in 0..20 {
                write_message(&mut a, &unreachable(id)).await.unwrap();
            }
        });
        let mut reader = MessageReader::<_, AsapMessage>::new(b, 65_536);
        for id in 0..20 {
            assert_eq!(
                reader.next().await.unwrap().unwrap().message,
                unreachable(id)
            );
        }
        writer.await.unwrap();
        assert!(reader.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_and_malformed() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0x7F, 0, 0, 4]).await.unwrap();
        a.write_all(&[0x09, 0, 0, 20, 0]).await.unwrap();
        drop(a);
        let mut reader = MessageReader::<_, AsapMessage>::new(b, 65_536);
        let err = reader.next().await.unwrap_err();
        assert!(err.is_recoverable(), "{err}");
        let err = reader.next().await.unwrap_err();
        assert!(matches!(err, ReadError::Truncated(5)), "{err}");
    }
}
