//! The TCP proxy: any protocol, one client connection to one member
//! connection (over TLS when the pool says so), sessions kept together by
//! the client's address or by the TLS session.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, copy_bidirectional};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{debug, warn};

use crate::access_log::TcpLine;
use crate::pool::{Lease, Member, Pool, Port};
use crate::serve::Origin;
use crate::sessions::SessionKey;
use crate::{Affinity, Limits, Shared};

/// One TCP listener's proxy.
pub(crate) struct TcpProxy {
    pub(crate) pool: Arc<Pool>,
    /// The limits this listener's connections are served with.
    pub(crate) limits: Arc<Limits>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) affinity: Affinity,
}

/// How a connection ended: the bytes sent to the member and back (or
/// why they are not known), the bytes the member sent as counted on the
/// way, and whether the member's side ended (closed, or failed) before
/// the client's.
struct Carried {
    ended: std::io::Result<(u64, u64)>,
    down: u64,
    member_first: bool,
}

/// A connection to a member.
pub(crate) enum MemberStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MemberStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MemberStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What an [`OnRead`] stream saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A read brought this many bytes.
    Bytes(usize),
    /// A read found the stream's end.
    End,
    /// A read or a write failed.
    Failed,
}

/// `inner`, telling `on_read` what it sees: each read that brings bytes
/// (the TCP proxy notes that its connection moved), and its end or
/// failure (which side of a connection closed first).
pub struct OnRead<S, F> {
    inner: S,
    on_read: F,
}

impl<S, F> OnRead<S, F> {
    /// `inner`, calling `on_read` with what each read or failed write
    /// saw.
    pub fn new(inner: S, on_read: F) -> Self {
        Self { inner, on_read }
    }
}

impl<S, F: FnMut(Seen)> OnRead<S, F> {
    fn failed<T>(&mut self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(_)) = &polled {
            (self.on_read)(Seen::Failed);
        }
        polled
    }
}

impl<S: AsyncRead + Unpin, F: FnMut(Seen) + Unpin> AsyncRead for OnRead<S, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let room = buf.remaining() > 0;
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        let came = buf.filled().len() - before;
        match &read {
            Poll::Ready(Ok(())) if came > 0 => (self.on_read)(Seen::Bytes(came)),
            Poll::Ready(Ok(())) if room => (self.on_read)(Seen::End),
            Poll::Ready(Err(_)) => (self.on_read)(Seen::Failed),
            _ => {}
        }
        read
    }
}

impl<S: AsyncWrite + Unpin, F: FnMut(Seen) + Unpin> AsyncWrite for OnRead<S, F> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.failed(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        self.failed(flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let shut = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.failed(shut)
    }
}

/// Connects to the member at `address`, within `limit`: sends `preface`
/// first (a PROXY protocol header, or nothing), then goes over TLS when
/// `tls` is set (the member's certificate must name its IP address).
pub(crate) async fn connect_member(
    address: SocketAddr,
    preface: &[u8],
    tls: Option<&TlsConnector>,
    limit: Duration,
) -> std::io::Result<MemberStream> {
    let connect = async {
        let mut stream = TcpStream::connect(address).await?;
        let _ = stream.set_nodelay(true);
        if !preface.is_empty() {
            stream.write_all(preface).await?;
        }
        match tls {
            None => Ok(MemberStream::Plain(stream)),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
                let stream = tls.connect(name, stream).await?;
                Ok(MemberStream::Tls(Box::new(stream)))
            }
        }
    };
    timeout(limit, connect)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The session keys of one client connection.
struct Keys {
    /// The session it continues, looked up in the table.
    continues: Option<SessionKey>,
    /// The session recorded for it once it is placed.
    records: Option<SessionKey>,
}

impl Keys {
    fn of(affinity: Affinity, origin: &Origin) -> Self {
        match (affinity, origin.tls) {
            (Affinity::ClientAddress, _) => {
                let key = Some(SessionKey::Client(origin.peer.ip()));
                Self {
                    continues: key,
                    records: key,
                }
            }
            // A resumed session continues under the id of the tickets
            // this connection was given.
            (Affinity::TlsSession, Some(tls)) => Self {
                continues: tls.resumed.map(SessionKey::Tls),
                records: Some(SessionKey::Tls(tls.issued)),
            },
            _ => Self {
                continues: None,
                records: None,
            },
        }
    }
}

impl TcpProxy {
    /// Connects `client` to a member and carries bytes both ways until
    /// either side closes.
    pub(crate) async fn serve<S>(&self, mut client: S, origin: &Origin)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let peer = origin.peer;
        let started = Instant::now();
        let preface = match (self.pool.settings().proxy_protocol, origin.local) {
            (None, _) => Vec::new(),
            (Some(version), Some(local)) => version.header(peer, local),
            (Some(_), None) => {
                warn!(pool = %self.pool.handle(), client = %peer, "the address the client connected to is unknown, and the pool's members expect a PROXY protocol header: connection closed");
                self.log(peer, None, None, started);
                return;
            }
        };
        let keys = Keys::of(self.affinity, origin);
        let Some((lease, mut member)) = self.connect(keys, &preface).await else {
            self.shared.metrics.failed.increment(1);
            warn!(pool = %self.pool.handle(), client = %peer, "no pool element can take the connection");
            self.log(peer, None, None, started);
            return;
        };
        let Carried {
            ended,
            down,
            member_first,
        } = self.carry(&mut client, &mut member).await;
        if down > 0 {
            self.shared
                .count_toward_error_limit(&self.pool, lease.member(), Port::Main, false);
        }
        let carried = match ended {
            Ok((up, down)) => {
                lease.member().count_bytes(up + down);
                Some((up, down))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.shared
                    .limit_hit("tcp_idle_timeout", self.pool.handle());
                debug!(pool = %self.pool.handle(), pe_id = %lease.member().id, client = %peer, "idle connection closed");
                None
            }
            Err(e) => {
                debug!(pool = %self.pool.handle(), pe_id = %lease.member().id, error = %e, "connection ended with an error");
                None
            }
        };
        self.log(peer, Some(lease.member()), carried, started);
        if member_first && down == 0 {
            self.closed_unanswered(lease, peer);
        }
    }

    /// The member closed (or broke) a connection before the client did,
    /// with not a byte in answer: the member's failure, which
    /// `error_limit` counts as the HTTP proxy counts a failed exchange. A
    /// port that accepts while the server behind it closes every
    /// connection is found so, where a TCP probe passes.
    #[cold]
    fn closed_unanswered(&self, lease: Lease, client: SocketAddr) {
        let member = lease.member().clone();
        debug!(pool = %self.pool.handle(), pe_id = %member.id, %client, "the pool element closed the connection without answering");
        lease.fail();
        self.shared
            .count_toward_error_limit(&self.pool, &member, Port::Main, true);
    }

    /// Carries bytes both ways until either side closes (the bytes sent
    /// to the member and back), or until nothing has moved either way for
    /// the idle timeout (`TimedOut`); and what the member sent and whether
    /// it ended first, however the connection ended.
    async fn carry<S>(&self, client: &mut S, member: &mut MemberStream) -> Carried
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let idle = self.limits.tcp_idle_timeout;
        let moved = AtomicBool::new(false);
        let client_ended = AtomicBool::new(false);
        let member_first = AtomicBool::new(false);
        let down = AtomicU64::new(0);
        let mut client = OnRead::new(client, |seen| {
            if let Seen::Bytes(_) = seen {
                moved.store(true, Ordering::Relaxed);
            } else {
                client_ended.store(true, Ordering::Relaxed);
            }
        });
        let mut member = OnRead::new(member, |seen| {
            if let Seen::Bytes(n) = seen {
                moved.store(true, Ordering::Relaxed);
                down.fetch_add(n as u64, Ordering::Relaxed);
            } else if !client_ended.load(Ordering::Relaxed) {
                member_first.store(true, Ordering::Relaxed);
            }
        });
        let ended = copy_until_idle(&mut client, &mut member, &moved, idle).await;
        Carried {
            ended,
            down: down.load(Ordering::Relaxed),
            member_first: member_first.load(Ordering::Relaxed),
        }
    }

    /// A line in the access log, when there is one, for a connection from
    /// `client` served by `member` that carried `carried` bytes (to the
    /// member, and back; unknown when it ended with an error).
    fn log(
        &self,
        client: SocketAddr,
        member: Option<&Member>,
        carried: Option<(u64, u64)>,
        started: Instant,
    ) {
        self.shared.access_log.with(|log| {
            log.tcp(&TcpLine {
                client,
                pool: &self.pool.handle().to_string(),
                member: member.map(|m| (m.id, m.address)),
                sent: carried.map(|(up, _)| up),
                received: carried.map(|(_, down)| down),
                duration: started.elapsed(),
            });
        });
    }

    /// The member for the session the connection continues (its affine
    /// member while that can take it), connected; members that refuse are
    /// reported and the next is tried.
    async fn connect(&self, keys: Keys, preface: &[u8]) -> Option<(Lease, MemberStream)> {
        let now = Instant::now();
        let session = keys
            .continues
            .and_then(|key| self.pool.sessions.touch(key, now));
        let mut tried = Vec::with_capacity(2);
        for attempt in 0..=self.limits.retries {
            let affine = session
                .as_ref()
                .filter(|_| attempt == 0)
                .and_then(|s| self.pool.member(s.member))
                .filter(|m| self.pool.availability(m, Port::Main).keeps_session());
            let lease = match affine {
                Some(member) => Pool::lease(member),
                None => {
                    self.pool
                        .choose(&tried, std::time::Instant::now(), Port::Main)?
                        .lease
                }
            };
            let member = lease.member().clone();
            tried.push(member.id);
            self.shared.metrics.requests.increment(1);
            match connect_member(
                member.address,
                preface,
                self.shared.member_tls_for(&self.pool).as_ref(),
                self.limits.connect_timeout,
            )
            .await
            {
                Ok(stream) => {
                    if let Some(key) = keys.records
                        && !self.pool.sessions.bind(
                            key,
                            member.id,
                            session.as_ref().map(|s| s.member),
                            None,
                            now,
                        )
                    {
                        self.shared.limit_hit("session_table", self.pool.handle());
                    }
                    return Some((lease, stream));
                }
                Err(e) => {
                    debug!(pool = %self.pool.handle(), pe_id = %member.id, error = %e, "cannot reach the pool element");
                    lease.fail();
                    self.shared.unreachable(&self.pool, &member, Port::Main);
                    self.shared.metrics.retries.increment(1);
                }
            }
        }
        None
    }
}

/// `copy_bidirectional`, or `TimedOut` once nothing has moved for
/// `idle`.
async fn copy_until_idle<A, B>(
    client: &mut A,
    member: &mut B,
    moved: &AtomicBool,
    idle: Duration,
) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copy = copy_bidirectional(client, member);
    tokio::pin!(copy);
    // Looked at eight times per idle timeout: closed at most an
    // eighth of it late.
    let mut look = tokio::time::interval((idle / 8).max(Duration::from_millis(1)));
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_moved = Instant::now();
    loop {
        tokio::select! {
            carried = &mut copy => return carried,
            now = look.tick() => {
                if moved.swap(false, Ordering::Relaxed) {
                    last_moved = now;
                } else if now.duration_since(last_moved) >= idle {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
            }
        }
    }
}
