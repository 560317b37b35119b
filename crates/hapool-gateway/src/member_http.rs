//! One worker's HTTP connections to members.
//!
//! Members of pools that speak HTTP/2 ([`Target::http2`]) get one
//! connection each, which carries every request of the worker to them at
//! once; one the member closed (or went away on) is replaced at the next
//! request. What follows is about HTTP/1.1, one request at a time per
//! connection.
//!
//! A request goes on an idle connection to its member when there is one,
//! the most recently used first (so that the others fall idle and close
//! when traffic drops), else on a new connection. A connection returns to
//! the idle stack once its response has been read to the end; one that the
//! member closed, or that stayed idle longer than the idle timeout, is
//! dropped. A request that an idle connection gives back unsent goes on the
//! next one, or on a new one. A kept connection that fails under a request
//! before any answer is stale, most likely closed by the member as the
//! request went out: the idle connections older than it are dropped with
//! it, and the caller may send the request again if it can
//! ([`MemberError::Stale`]).
//!
//! A message's head and body go out in one buffer, with one `send`,
//! rather than as a gather write (`writev`) of their separate buffers:
//! for the small messages most requests and responses are, the kernel's
//! extra work on a vector costs more than copying the body, and client
//! connections are written the same way (docs/performance.md).
//!
//! A request goes out after the worker's other ready reads, as answers to
//! clients do ([`ConnectionIo`]).
//!
//! Each worker thread has its own [`MemberHttp`], so the lock on the idle
//! stacks is never contended; it exists only because hyper's server asks
//! for `Send` futures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tracing::debug;

use crate::connection_io::ConnectionIo;
use crate::http::MemberBody;
use crate::tcp::{MemberStream, connect_member};
use crate::{Limits, MemberTrust};

/// Where a connection goes: a member's address, over TLS or not, in
/// HTTP/2 or HTTP/1.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub(crate) address: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) http2: bool,
}

/// Why a request to a member failed, and whether any of it was sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemberError {
    /// No connection could be made: the member is unreachable.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error, Unsent),
    /// The connection failed before the request was written: the request
    /// can go to another member whatever its method.
    #[error("connection failed before the request was sent: {0}")]
    NotSent(hyper::Error, Unsent),
    /// A connection kept from an earlier request failed under this one
    /// before any answer: most likely the member closed it, idle, as the
    /// request went out. The member may or may not have seen the request.
    #[error("a kept connection failed before any answer: {0}")]
    Stale(hyper::Error),
    /// The connection failed once the request had been (partly) sent.
    #[error("{0}")]
    Failed(hyper::Error),
}

/// A request on its way to a member, on the heap: it is handed down
/// through the exchange's futures, each of which would otherwise hold a
/// copy of it (some 260 bytes), and every request writes its futures
/// into place.
pub(crate) type MemberRequest = Box<Request<MemberBody>>;

/// The request a failure before sending gives back, so that a body that
/// can be read only once (streamed from the client) can still go to
/// another member.
#[derive(Default)]
pub(crate) struct Unsent(Option<MemberRequest>);

impl std::fmt::Debug for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "request given back"
        } else {
            "-"
        })
    }
}

impl MemberError {
    /// Whether the member saw none of the request.
    pub(crate) fn unsent(&self) -> bool {
        matches!(self, Self::Connect(..) | Self::NotSent(..))
    }

    /// Whether no connection could be made.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(..))
    }

    /// The request, when the failure came before it was sent.
    pub(crate) fn take_unsent(&mut self) -> Option<MemberRequest> {
        match self {
            Self::Connect(_, unsent) | Self::NotSent(_, unsent) => unsent.0.take(),
            Self::Stale(_) | Self::Failed(_) => None,
        }
    }

    /// This failure, giving `request` back if it came before sending.
    fn giving_back(self, request: MemberRequest) -> Self {
        let back = || Unsent(Some(request));
        match self {
            Self::Connect(e, _) => Self::Connect(e, back()),
            Self::NotSent(e, _) => Self::NotSent(e, back()),
            other => other,
        }
    }

    /// A failed send on a new connection, or on a member's HTTP/2 one:
    /// unsent, with the request given back, when hyper kept it; unsent too
    /// when the member did not process the stream (it refused it, or it is
    /// above the last stream of the member's GOAWAY: the request's body,
    /// if kept, can go elsewhere); else failed.
    fn on_send(mut error: TrySendError<Request<MemberBody>>) -> Self {
        match error.take_message() {
            Some(unsent) => {
                Self::NotSent(error.into_error(), Unsent::default()).giving_back(Box::new(unsent))
            }
            None => {
                let error = error.into_error();
                if unprocessed_stream(&error) {
                    Self::NotSent(error, Unsent::default())
                } else {
                    Self::Failed(error)
                }
            }
        }
    }

    /// The error of a request sent on a kept connection.
    fn on_kept_connection(error: hyper::Error) -> Self {
        let closed = error.is_incomplete_message()
            || error.is_canceled()
            || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>());
        if closed {
            Self::Stale(error)
        } else {
            Self::Failed(error)
        }
    }
}

struct Idle {
    sender: SendRequest<MemberBody>,
    since: Instant,
}

/// A worker's connections to members (see the module's documentation).
pub(crate) struct MemberHttp {
    /// Looked up twice a request: a fast hash (randomly seeded), as the
    /// keys are member addresses, which clients do not choose.
    idle: Mutex<foldhash::HashMap<Target, Vec<Idle>>>,
    /// The one connection to each member spoken to in HTTP/2, or the one
    /// being made.
    http2: Mutex<foldhash::HashMap<Target, Http2Connection>>,
    /// How connections to members over TLS are made (HTTP/1.1, and HTTP/2
    /// by ALPN), which a reload may change; without trust they fail.
    trust: watch::Receiver<MemberTrust>,
    /// How many times the trust changed while it ran: a connection to a
    /// member over TLS made before the last change is not kept.
    trust_changes: AtomicU64,
    /// The gateway's limits, of which the connect and idle timeouts count
    /// here; a reload may change them (read at each connect and sweep).
    limits: watch::Receiver<Arc<Limits>>,
}

/// A member's HTTP/2 connection.
enum Http2Connection {
    /// Open, and when a request last went on it.
    Ready(http2::SendRequest<MemberBody>, Instant),
    /// Being made, by a task of its own that every request waiting for it
    /// hears from: as many requests at once as there are, one connection.
    Connecting(watch::Receiver<Option<Made>>),
}

/// How making an HTTP/2 connection went (the error as text: every request
/// waiting for the connection gets it).
type Made = Result<http2::SendRequest<MemberBody>, String>;

/// An HTTP/1.1 connection whose response is being read;
/// [`InUse::release`] puts it back among the idle ones, dropping it
/// closes it. (An HTTP/2 connection stays shared meanwhile.)
pub(crate) enum InUse {
    Own {
        home: Arc<MemberHttp>,
        target: Target,
        sender: SendRequest<MemberBody>,
        /// [`MemberHttp::trust_changes`] when it was made or taken.
        trust_changes: u64,
    },
    Shared,
}

impl InUse {
    /// The response has been read to the end: the connection can carry
    /// the next request.
    pub(crate) fn release(self) {
        if let Self::Own {
            home,
            target,
            sender,
            trust_changes,
        } = self
        {
            home.give_back(target, sender, trust_changes);
        }
    }
}

/// The longest answer [`finish_unheard`] reads to keep its connection.
pub(crate) const UNHEARD_LIMIT: usize = 64 * 1024;

/// Reads to its end an answer that nobody waits for any more (the
/// exchange a hedge made unnecessary), so that its connection goes back
/// among the idle ones instead of being closed. An answer longer than
/// [`UNHEARD_LIMIT`] (a download, say) is not read for the sake of one
/// connection: its connection is closed once that much has come, or at
/// once when its length says so.
pub(crate) async fn finish_unheard(response: Response<Incoming>, connection: InUse) {
    let mut body = response.into_body();
    if body.size_hint().lower() > UNHEARD_LIMIT as u64 {
        return;
    }
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return };
        read += frame.data_ref().map_or(0, Bytes::len);
        if read > UNHEARD_LIMIT {
            return;
        }
    }
    connection.release();
}

impl MemberHttp {
    /// Connections made within the limits' `connect_timeout` (over TLS
    /// with `tls`), closed after `member_idle_timeout` unused, as the
    /// limits are at the time. Spawns the task that closes idle
    /// connections on the current runtime; it ends with the last handle.
    pub(crate) fn start(
        trust: watch::Receiver<MemberTrust>,
        limits: watch::Receiver<Arc<Limits>>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            idle: Mutex::new(foldhash::HashMap::default()),
            http2: Mutex::new(foldhash::HashMap::default()),
            trust: trust.clone(),
            trust_changes: AtomicU64::new(0),
            limits,
        });
        tokio::spawn(close_idle(Arc::downgrade(&this), trust));
        this
    }

    /// Sends `request` (its URI in origin form, with a `Host` header) to
    /// the member at `target`, and returns the response's head with the
    /// connection it came on.
    pub(crate) async fn send(
        self: &Arc<Self>,
        target: Target,
        mut request: MemberRequest,
    ) -> Result<(Response<Incoming>, InUse), MemberError> {
        if target.http2 {
            // Boxed: an HTTP/2 exchange's future would otherwise make every
            // request's future larger, and every request moves its future.
            return Box::pin(self.send_http2(target, request)).await;
        }
        loop {
            // Read before the connection is taken: a change of trust after
            // it makes it one not to keep.
            let trust_changes = self.trust_changes();
            let Some(mut sender) = self.take_idle(target) else {
                break;
            };
            match sender.try_send_request(*request).await {
                Ok(response) => return Ok((response, self.in_use(target, sender, trust_changes))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = Box::new(unsent),
                    None => {
                        // The ones idle longer than this one are no fresher.
                        self.idle
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&target);
                        return Err(MemberError::on_kept_connection(e.into_error()));
                    }
                },
            }
        }
        // Boxed: connecting (TLS above all) takes a large future, which
        // would otherwise make every request's future as large.
        let (mut sender, trust_changes) = match Box::pin(self.connect(target)).await {
            Ok(made) => made,
            Err(e) => return Err(e.giving_back(request)),
        };
        match sender.try_send_request(*request).await {
            Ok(response) => Ok((response, self.in_use(target, sender, trust_changes))),
            Err(e) => Err(MemberError::on_send(e)),
        }
    }

    /// [`Self::send`] to a member spoken to in HTTP/2: on its connection,
    /// or on a new one when it has none or the member closed it.
    async fn send_http2(
        self: &Arc<Self>,
        target: Target,
        request: MemberRequest,
    ) -> Result<(Response<Incoming>, InUse), MemberError> {
        let mut request = in_http2(*request, target.tls);
        // A connection found closed as the request went out is replaced
        // once.
        for _ in 0..2 {
            let mut sender = match self.http2_connection(target).await {
                Ok(sender) => sender,
                Err(e) => return Err(e.giving_back(Box::new(request))),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, InUse::Shared)),
                Err(mut e) => {
                    if sender.is_closed()
                        && let Some(unsent) = e.take_message()
                    {
                        request = unsent;
                        continue;
                    }
                    return Err(MemberError::on_send(e));
                }
            }
        }
        Err(MemberError::Connect(
            std::io::Error::other("the member closed each new connection at once"),
            Unsent(Some(Box::new(request))),
        ))
    }

    /// The open HTTP/2 connection to `target`; one made when there is
    /// none (or the member closed it), or the one being made.
    async fn http2_connection(
        self: &Arc<Self>,
        target: Target,
    ) -> Result<http2::SendRequest<MemberBody>, MemberError> {
        let mut making = {
            let mut connections = self.http2.lock().unwrap_or_else(PoisonError::into_inner);
            match connections.get_mut(&target) {
                Some(Http2Connection::Ready(sender, used)) if !sender.is_closed() => {
                    *used = Instant::now();
                    return Ok(sender.clone());
                }
                Some(Http2Connection::Connecting(making)) => making.clone(),
                _ => {
                    let (made, making) = watch::channel(None);
                    connections.insert(target, Http2Connection::Connecting(making.clone()));
                    tokio::spawn(self.clone().make_http2(target, made));
                    making
                }
            }
        };
        let made = making
            .wait_for(Option::is_some)
            .await
            .map(|made| made.clone())
            .ok()
            .flatten()
            .unwrap_or_else(|| Err("the connection attempt was abandoned".into()));
        made.map_err(|e| MemberError::Connect(std::io::Error::other(e), Unsent::default()))
    }

    /// Makes the HTTP/2 connection to `target`, and tells those waiting.
    async fn make_http2(self: Arc<Self>, target: Target, made: watch::Sender<Option<Made>>) {
        let trust_changes = self.trust_changes();
        let result = self.connect_http2(target).await.map_err(|e| match e {
            MemberError::Connect(e, _) => e.to_string(),
            e => e.to_string(),
        });
        let mut connections = self.http2.lock().unwrap_or_else(PoisonError::into_inner);
        match &result {
            // Made with the trust before a change: used by the requests
            // that waited for it, not kept.
            Ok(_) if target.tls && trust_changes != self.trust_changes() => {
                connections.remove(&target);
            }
            Ok(sender) => {
                connections.insert(
                    target,
                    Http2Connection::Ready(sender.clone(), Instant::now()),
                );
            }
            Err(_) => {
                connections.remove(&target);
            }
        }
        drop(connections);
        made.send_replace(Some(result));
    }

    fn in_use(
        self: &Arc<Self>,
        target: Target,
        sender: SendRequest<MemberBody>,
        trust_changes: u64,
    ) -> InUse {
        InUse::Own {
            home: self.clone(),
            target,
            sender,
            trust_changes,
        }
    }

    fn trust_changes(&self) -> u64 {
        self.trust_changes.load(Ordering::Relaxed)
    }

    /// The trust changed: connections to members over TLS made before are
    /// closed once their answers are read (those idle at once), and new
    /// ones are checked with the new trust.
    fn forget_tls_connections(&self) {
        self.trust_changes.fetch_add(1, Ordering::Relaxed);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|target, _| !target.tls);
        self.http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|target, _| !target.tls);
    }

    /// A new connection to `target`, over TLS if it says so.
    async fn open(&self, target: Target) -> Result<ConnectionIo<MemberStream>, MemberError> {
        let tls = if target.tls {
            let connector = self.trust.borrow().connector(target.http2);
            Some(connector.ok_or_else(|| {
                MemberError::Connect(
                    std::io::Error::other("no trust for members over TLS"),
                    Unsent::default(),
                )
            })?)
        } else {
            None
        };
        let connect_timeout = self.limits.borrow().connect_timeout;
        let stream = connect_member(target.address, &[], tls.as_ref(), connect_timeout)
            .await
            .map_err(|e| MemberError::Connect(e, Unsent::default()))?;
        Ok(ConnectionIo::member(stream))
    }

    /// A new HTTP/2 connection to `target`; its I/O runs in a task of its
    /// own, until the member closes it or the last sender is dropped.
    async fn connect_http2(
        &self,
        target: Target,
    ) -> Result<http2::SendRequest<MemberBody>, MemberError> {
        let stream = self.open(target).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| MemberError::NotSent(e, Unsent::default()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(address = %target.address, error = %e, "member connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A new connection to `target`, with [`Self::trust_changes`] as it
    /// was made; its I/O runs in a task of its own (which hands the
    /// connection over when the member switches protocols).
    async fn connect(&self, target: Target) -> Result<(SendRequest<MemberBody>, u64), MemberError> {
        let trust_changes = self.trust_changes();
        let stream = self.open(target).await?;
        let (sender, connection) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| MemberError::NotSent(e, Unsent::default()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                debug!(address = %target.address, error = %e, "member connection ended with an error");
            }
        });
        Ok((sender, trust_changes))
    }

    /// The most recently used idle connection to `target` that can take a
    /// request; closed ones found on the way are dropped.
    fn take_idle(&self, target: Target) -> Option<SendRequest<MemberBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let stack = idle.get_mut(&target)?;
        while let Some(entry) = stack.pop() {
            // Not ready right after its response: still finishing it, or
            // closed. Either way not this request's.
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn give_back(&self, target: Target, sender: SendRequest<MemberBody>, trust_changes: u64) {
        if sender.is_closed() || (target.tls && trust_changes != self.trust_changes()) {
            return;
        }
        let entry = Idle {
            sender,
            since: Instant::now(),
        };
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(target)
            .or_default()
            .push(entry);
    }

    /// How long a connection may stay idle.
    fn idle_timeout(&self) -> Duration {
        self.limits.borrow().member_idle_timeout
    }

    /// Drops the connections idle since before `now` less the idle
    /// timeout, and those the member closed. An HTTP/2 connection counts
    /// from the last request sent on it; answers still under way on it
    /// when it is dropped are read to their end before it closes.
    fn close_idle_until(&self, now: Instant) {
        let idle_timeout = self.idle_timeout();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, stack| {
            stack.retain(|entry| {
                !entry.sender.is_closed() && now.duration_since(entry.since) < idle_timeout
            });
            !stack.is_empty()
        });
        drop(idle);
        self.http2
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, connection| match connection {
                Http2Connection::Ready(sender, used) => {
                    !sender.is_closed() && now.duration_since(*used) < idle_timeout
                }
                Http2Connection::Connecting(_) => true,
            });
    }

    /// How many idle connections to `target` there are.
    #[cfg(test)]
    fn idle_count(&self, target: Target) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .map_or(0, Vec::len)
    }
}

/// Whether `error` says the member did not process the HTTP/2 stream: it
/// refused it (`RST_STREAM` with REFUSED_STREAM, RFC 9113 8.7), or the
/// stream is above the last one its GOAWAY names (RFC 9113 6.8; h2 gives
/// the GOAWAY as the error of those streams alone: a stream at or below
/// it that the closing connection cuts short fails as a broken pipe).
fn unprocessed_stream(error: &hyper::Error) -> bool {
    crate::h2_cause(error).is_some_and(|h2| {
        h2.is_remote()
            && (h2.is_go_away()
                || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)))
    })
}

/// `request` (origin-form, with a `Host` header) as HTTP/2 wants it: the
/// host and scheme in the URI, for the `:authority` and `:scheme` pseudo
/// headers, and no `Host`.
fn in_http2(request: Request<MemberBody>, tls: bool) -> Request<MemberBody> {
    let (mut parts, body) = request.into_parts();
    parts.version = Version::HTTP_2;
    let host = parts.headers.remove(header::HOST);
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme = Some(if tls { Scheme::HTTPS } else { Scheme::HTTP });
    uri.authority = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    // Without an authority (no usable Host), the URI stays origin-form.
    if uri.authority.is_none() {
        uri.scheme = None;
    }
    parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    Request::from_parts(parts, body)
}

/// Closes idle connections about every second (more often for an idle
/// timeout under two seconds), for as long as the connections' owner lives.
/// Forgets the connections over TLS when the trust changes.
async fn close_idle(home: Weak<MemberHttp>, mut trust: watch::Receiver<MemberTrust>) {
    let mut trusted = true;
    loop {
        let Some(every) = home.upgrade().map(|h| {
            (h.idle_timeout() / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
        }) else {
            return;
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {
                let Some(home) = home.upgrade() else { return };
                home.close_idle_until(Instant::now());
            }
            // Once the gateway has dropped the trust's sender, it stops
            // changing.
            changed = trust.changed(), if trusted => match changed {
                Ok(()) => {
                    let Some(home) = home.upgrade() else { return };
                    home.forget_tls_connections();
                }
                Err(_) => trusted = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// No trust for members over TLS.
    fn no_trust() -> watch::Receiver<MemberTrust> {
        watch::channel(MemberTrust::default()).1
    }

    /// Limits with a connect timeout of one second and `idle`.
    fn timeouts(idle: Duration) -> watch::Receiver<Arc<Limits>> {
        watch::channel(Arc::new(Limits {
            connect_timeout: Duration::from_secs(1),
            member_idle_timeout: idle,
            ..Limits::default()
        }))
        .1
    }

    /// A member answering each request with "ok"; counts the connections
    /// it accepted, and closes a connection without a word when a request
    /// comes after `per_connection` answered on it (as a member whose
    /// keep-alive timeout runs out just as the request arrives).
    async fn member(per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        member_answering(
            per_connection,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        )
        .await
    }

    /// [`member`], answering with `answer` (head and body).
    async fn member_answering(
        per_connection: usize,
        answer: impl AsRef<[u8]> + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let answer = Arc::new(answer);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    for answered in 0.. {
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if answered == per_connection {
                            return;
                        }
                        if write.write_all((*answer).as_ref()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, accepted)
    }

    fn get(address: SocketAddr) -> MemberRequest {
        let mut request = Request::new(Either::Left(Full::new(Bytes::new())));
        *request.uri_mut() = "/".parse().unwrap();
        request
            .headers_mut()
            .insert(header::HOST, address.to_string().parse().unwrap());
        Box::new(request)
    }

    async fn read_all(members: &Arc<MemberHttp>, target: Target) -> Result<Bytes, MemberError> {
        let (response, in_use) = members.send(target, get(target.address)).await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        in_use.release();
        Ok(body)
    }

    fn target(address: SocketAddr) -> Target {
        Target {
            address,
            tls: false,
            http2: false,
        }
    }

    /// `address` without TLS, in HTTP/2.
    fn target_http2(address: SocketAddr) -> Target {
        Target {
            http2: true,
            ..target(address)
        }
    }

    #[tokio::test]
    async fn an_answer_nobody_waits_for_is_read_and_its_connection_kept() {
        let (address, accepted) = member(usize::MAX).await;
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        let (response, in_use) = members.send(target(address), get(address)).await.unwrap();
        finish_unheard(response, in_use).await;
        assert_eq!(read_all(&members, target(address)).await.unwrap(), "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the connection was kept"
        );
    }

    #[tokio::test]
    async fn a_long_answer_nobody_waits_for_closes_its_connection() {
        let body = "x".repeat(UNHEARD_LIMIT + 1);
        let with_length = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        // Without a length: read until the limit is passed.
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        for answer in [with_length, chunked] {
            let (address, accepted) = member_answering(usize::MAX, answer).await;
            let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
            let (response, in_use) = members.send(target(address), get(address)).await.unwrap();
            finish_unheard(response, in_use).await;
            assert_eq!(
                read_all(&members, target(address)).await.unwrap().len(),
                body.len()
            );
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                2,
                "the connection was closed"
            );
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_is_read() {
        let (address, accepted) = member(usize::MAX).await;
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        for _ in 0..5 {
            assert_eq!(read_all(&members, target(address)).await.unwrap(), "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(members.idle_count(target(address)), 1);
        // A response still being read keeps its connection: a second
        // request meanwhile opens another.
        let (first, held) = members.send(target(address), get(address)).await.unwrap();
        assert_eq!(read_all(&members, target(address)).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop((first, held));
        assert_eq!(members.idle_count(target(address)), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_closed_under_a_request_is_stale_and_older_ones_go_too() {
        // The member answers one request per connection.
        let (address, accepted) = member(1).await;
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        // Two connections, both idle after their first answer.
        let (first, held) = members.send(target(address), get(address)).await.unwrap();
        read_all(&members, target(address)).await.unwrap();
        first.into_body().collect().await.unwrap();
        held.release();
        assert_eq!(members.idle_count(target(address)), 2);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        let e = read_all(&members, target(address)).await.unwrap_err();
        assert!(matches!(e, MemberError::Stale(_)), "{e:?}");
        assert!(!e.unsent());
        assert_eq!(members.idle_count(target(address)), 0);
        // The next request goes on a new connection.
        assert_eq!(read_all(&members, target(address)).await.unwrap(), "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_the_member_closed_after_its_answer_is_not_kept() {
        // A member that answers once and closes.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let mut line = String::new();
                while read.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = write.write_all(answer).await;
            }
        });
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        assert_eq!(read_all(&members, target(address)).await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
        members.close_idle_until(Instant::now());
        assert_eq!(members.idle_count(target(address)), 0);
        // The next request goes on a new connection, without an error.
        assert_eq!(read_all(&members, target(address)).await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let (address, accepted) = member(usize::MAX).await;
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_millis(100)));
        read_all(&members, target(address)).await.unwrap();
        assert_eq!(members.idle_count(target(address)), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(members.idle_count(target(address)), 0);
        read_all(&members, target(address)).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_shorter_idle_timeout_takes_effect_on_connections_already_idle() {
        let (address, _) = member(usize::MAX).await;
        let (limits, watched) = watch::channel(Arc::new(Limits::default()));
        let members = MemberHttp::start(no_trust(), watched);
        read_all(&members, target(address)).await.unwrap();
        assert_eq!(members.idle_count(target(address)), 1);
        limits.send_modify(|l| {
            *l = Arc::new(Limits {
                member_idle_timeout: Duration::from_millis(100),
                ..Limits::clone(l)
            });
        });
        // The sweep that was waiting its second under the old timeout
        // closes the connection under the new one.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(members.idle_count(target(address)), 0);
    }

    /// An answer in two halves, 300 ms apart.
    struct Halves(Option<Pin<Box<tokio::time::Sleep>>>, u8);

    impl Body for Halves {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            let half = match self.1 {
                0 => "first ",
                1 => {
                    let sleep = self.0.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep(Duration::from_millis(300)))
                    });
                    std::task::ready!(sleep.as_mut().poll(cx));
                    "second"
                }
                _ => return std::task::Poll::Ready(None),
            };
            self.1 += 1;
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from(half)))))
        }
    }

    /// A member speaking HTTP/2 only, answering in [`Halves`]; counts the
    /// connections it accepted and those that have ended.
    async fn h2_member() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (accepted, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, e) = (accepted.clone(), ended.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let e = e.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Halves(None, 0)))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (address, accepted, ended)
    }

    #[tokio::test]
    async fn an_http2_member_gets_one_connection_closed_when_idle_after_its_answers() {
        let (address, accepted, ended) = h2_member().await;
        let target = target_http2(address);
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        // Three answers under way at once, on one connection.
        let mut answers = Vec::new();
        for _ in 0..3 {
            let (response, in_use) = members.send(target, get(address)).await.unwrap();
            assert!(matches!(in_use, InUse::Shared));
            answers.push(response);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Idle for longer than the timeout (as a sweep an hour on would
        // find it): dropped, yet the answers under way end whole.
        members.close_idle_until(Instant::now() + Duration::from_secs(3600));
        for response in answers {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "first second");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            ended.load(Ordering::SeqCst),
            1,
            "the idle connection closed"
        );
        // The next request opens a new one.
        let (response, _) = members.send(target, get(address)).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn requests_at_once_to_an_http2_member_wait_for_one_new_connection() {
        let (address, accepted, _) = h2_member().await;
        let target = target_http2(address);
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        let sends: Vec<_> = (0..20)
            .map(|_| {
                let members = members.clone();
                tokio::spawn(async move { members.send(target, get(address)).await })
            })
            .collect();
        for send in sends {
            let (response, _) = send.await.unwrap().unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "first second");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // To a member that cannot be reached: every request is told so, and
        // given back unsent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = Target {
            address: listener.local_addr().unwrap(),
            ..target
        };
        drop(listener);
        let sends: Vec<_> = (0..5)
            .map(|_| {
                let members = members.clone();
                tokio::spawn(async move { members.send(gone, get(gone.address)).await })
            })
            .collect();
        for send in sends {
            let Err(mut e) = send.await.unwrap() else {
                panic!("answered by a member that is gone");
            };
            assert!(e.is_connect(), "{e:?}");
            assert!(e.take_unsent().is_some(), "{e:?}");
            assert!(e.to_string().starts_with("cannot connect: "), "{e}");
            assert!(!e.to_string().contains("cannot connect: cannot"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_stream_an_http2_member_refuses_is_unsent() {
        // A member that refuses every stream, as one at its limit of
        // streams or shutting down does.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(stream).await.unwrap();
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
            }
        });
        let target = target_http2(address);
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        let Err(e) = members.send(target, get(address)).await else {
            panic!("a refused stream answered");
        };
        assert!(matches!(e, MemberError::NotSent(..)), "{e:?}");
        assert!(e.unsent() && !e.is_connect());
    }

    #[tokio::test]
    async fn an_unreachable_member_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let members = MemberHttp::start(no_trust(), timeouts(Duration::from_secs(60)));
        let e = read_all(&members, target(address)).await.unwrap_err();
        assert!(matches!(e, MemberError::Connect(..)), "{e:?}");
        assert!(e.unsent());
        let over_tls = Target {
            address,
            tls: true,
            http2: false,
        };
        let e = read_all(&members, over_tls).await.unwrap_err();
        assert!(e.to_string().contains("no trust"), "{e}");
    }
}
