//! A connection to one registrar of a list, with failover to the next.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use hapool_net::tls::{ServerName, TlsConnector};
use hapool_net::{MessageReader, write_message};
use hapool_wire::{AsapMessage, DEFAULT_MAX_MESSAGE};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use crate::ClientError;

/// How to reach the registrars over TLS.
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// Trusted authorities and, to be known by name, a client certificate
    /// (see [`hapool_net::tls::client_config`]).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the registrars' certificates must carry (a DNS name or an
    /// IP address).
    pub server_name: ServerName<'static>,
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// An open ASAP connection to a registrar.
pub(crate) struct RegistrarConnection {
    pub(crate) reader: MessageReader<Reader, AsapMessage>,
    pub(crate) writer: Writer,
}

impl RegistrarConnection {
    /// Connects to the first registrar of `registrars` that answers,
    /// starting at index `start` and going round the list once.
    pub(crate) async fn connect(
        registrars: &[SocketAddr],
        start: usize,
        connect_timeout: Duration,
        tls: Option<&ClientTls>,
    ) -> Result<(usize, Self), ClientError> {
        for k in 0..registrars.len() {
            let i = (start + k) % registrars.len();
            let addr = registrars[i];
            match timeout(connect_timeout, Self::open(addr, tls)).await {
                Ok(Ok((reader, writer))) => {
                    return Ok((
                        i,
                        Self {
                            reader: MessageReader::new(reader, DEFAULT_MAX_MESSAGE),
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

    /// A connection to the registrar at `addr`.
    pub(crate) async fn open_to(
        addr: SocketAddr,
        tls: Option<&ClientTls>,
    ) -> std::io::Result<Self> {
        let (reader, writer) = Self::open(addr, tls).await?;
        Ok(Self {
            reader: MessageReader::new(reader, DEFAULT_MAX_MESSAGE),
            writer,
        })
    }

    /// A TCP connection to `addr`, secured when `tls` says so.
    async fn open(addr: SocketAddr, tls: Option<&ClientTls>) -> std::io::Result<(Reader, Writer)> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        match tls {
            Some(tls) => {
                let connector = TlsConnector::from(tls.config.clone());
                let stream = connector.connect(tls.server_name.clone(), stream).await?;
                let (read, write) = tokio::io::split(stream);
                Ok((Box::new(read), Box::new(write)))
            }
            None => {
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
        }
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
