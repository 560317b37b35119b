//! A connection to one registrar of a list, with failover to the next.

use std::net::SocketAddr;
use std::time::Duration;

use hapool_net::{MessageReader, write_message};
use hapool_wire::{AsapMessage, DEFAULT_MAX_MESSAGE};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tracing::debug;

use crate::ClientError;

/// An open ASAP connection to a registrar.
pub(crate) struct RegistrarConnection {
    pub(crate) addr: SocketAddr,
    pub(crate) reader: MessageReader<OwnedReadHalf, AsapMessage>,
    pub(crate) writer: OwnedWriteHalf,
}

impl RegistrarConnection {
    /// Connects to the first registrar of `registrars` that answers,
    /// starting at index `start` and going round the list once.
    pub(crate) async fn connect(
        registrars: &[SocketAddr],
        start: usize,
        connect_timeout: Duration,
    ) -> Result<(usize, Self), ClientError> {
        for k in 0..registrars.len() {
            let i = (start + k) % registrars.len();
            let addr = registrars[i];
            match timeout(connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (read, writer) = stream.into_split();
                    return Ok((
                        i,
                        Self {
                            addr,
                            reader: MessageReader::new(read, DEFAULT_MAX_MESSAGE),
                            writer,
                        },
                    ));
                }
                Ok(Err(e)) => debug!(registrar = %addr, error = %e, "registrar unreachable"),
                Err(_) => debug!(registrar = %addr, "registrar connect timed out"),
            }
        }
        Err(ClientError::NoRegistrar {
            tried: registrars.len(),
        })
    }

    pub(crate) async fn send(&mut self, message: &AsapMessage) -> Result<(), ClientError> {
        write_message(&mut self.writer, message)
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))
    }

    /// The next message from the registrar.
    pub(crate) async fn recv(&mut self) -> Result<AsapMessage, ClientError> {
        loop {
            match self.reader.next().await {
                Ok(Some(decoded)) => return Ok(decoded.message),
                Ok(None) => return Err(ClientError::Connection("closed by the registrar".into())),
                Err(e) if e.is_recoverable() => debug!(error = %e, "malformed message skipped"),
                Err(e) => return Err(ClientError::Connection(e.to_string())),
            }
        }
    }
}
