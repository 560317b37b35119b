//! Health probes, shared by `hapool pe` (is the server up?) and
//! `hapool vip` (tracking: is this machine fit to hold the address?).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::timeout;

/// One way to tell whether something is healthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A TCP connection is accepted within 1 s.
    Tcp(SocketAddr),
    /// An HTTP GET answers 2xx within 2 s.
    Http(String),
    /// A shell command exits with status 0 within 5 s.
    Command(String),
}

impl Probe {
    /// Whether the probe passes now.
    pub(crate) async fn passes(&self) -> bool {
        match self {
            Self::Tcp(addr) => matches!(
                timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
                Ok(Ok(_))
            ),
            Self::Http(url) => matches!(
                timeout(Duration::from_secs(2), crate::admin::http_get(url)).await,
                Ok(Ok((code, _))) if code.is_success()
            ),
            Self::Command(command) => {
                let status = timeout(
                    Duration::from_secs(5),
                    tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(command)
                        .status(),
                )
                .await;
                matches!(status, Ok(Ok(s)) if s.success())
            }
        }
    }
}
