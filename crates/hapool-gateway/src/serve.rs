//! How a worker accepts a listener's connections and serves each: the
//! admission and hand-off between workers, the PROXY protocol header from
//! a proxy in front, the TLS handshake with its SNI certificate and
//! session, then the connection as HTTP (hyper, with the gateway's
//! [`HttpProxy`] as its service) or as TCP ([`TcpProxy`]), until it ends
//! or the worker drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderValue, Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::admission::{Admission, Admitted, Handed, Placed};
use crate::config::{Affinity, Limits, ListenerConfig, Protocol};
use crate::connection_io::{ConnectionIo, SendStalled};
use crate::deadline::Clock;
use crate::drain::{FIRST_REQUEST_WINDOW, FirstRequest, Lingered, UntilDrained};
use crate::http::HttpProxy;
use crate::http2_idle::Http2Streams;
use crate::member_http::MemberHttp;
use crate::pool::Pool;
use crate::proxy_protocol;
use crate::tcp::TcpProxy;
use crate::tls::LiveTls;
use crate::{Shared, Spec};

/// Returns once the worker drains (or is gone).
async fn drained(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

/// A listener as one worker serves it.
pub(crate) struct WorkerListener {
    pub(crate) socket: std::net::TcpListener,
    /// What new connections are served with (shared with its other
    /// workers; a reload may change it).
    pub(crate) spec: watch::Receiver<Arc<Spec>>,
    /// Connections other workers accepted for this one.
    pub(crate) inbox: UnboundedReceiver<Handed>,
    /// Which of the listener's workers this is.
    pub(crate) worker: usize,
    pub(crate) admission: Arc<Admission>,
    /// Set when a reload closes the listener.
    pub(crate) closed: watch::Receiver<bool>,
}

/// Accepts `listener`'s connections for its worker until the worker
/// drains or a reload closes the listener; then asks the connections it
/// serves to finish.
pub(crate) async fn accept_loop(
    listener: WorkerListener,
    shared: Arc<Shared>,
    members: Arc<MemberHttp>,
    mut draining: watch::Receiver<bool>,
) {
    let WorkerListener {
        socket,
        mut spec,
        mut inbox,
        worker,
        admission,
        mut closed,
    } = listener;
    let address = spec.borrow().config.address;
    let socket = match TcpListener::from_std(socket) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(%address, error = %e, "cannot serve a listener");
            return;
        }
    };
    // Set for this listener's connections when it stops.
    let (finish, finishing) = watch::channel(false);
    let mut limits = shared.limits.subscribe();
    let serve_as = |spec: &Spec, limits: Arc<Limits>| {
        Serving::new(
            &spec.config,
            spec.tls.clone(),
            spec.pool.clone(),
            limits,
            shared.clone(),
            members.clone(),
            finishing.clone(),
        )
    };
    let mut serving = serve_as(
        &spec.borrow_and_update(),
        limits.borrow_and_update().clone(),
    );
    let place = |serving: &Serving, stream: TcpStream, peer: SocketAddr| match admission
        .admit_and_place(worker, stream, peer)
    {
        Placed::Here(stream, admitted) => serving.spawn(stream, peer, admitted),
        Placed::Handed => serving.shared.metrics.handed.increment(1),
        Placed::Full => serving
            .shared
            .limit_hit("max_connections", serving.pool.handle()),
        Placed::Lost(e) => {
            warn!(client = %peer, error = %e, "cannot hand a connection to another worker");
        }
    };
    let (mut failures, mut last_warning) = (0u64, None);
    loop {
        let accepted = tokio::select! {
            biased;
            // Draining, or closed by a reload: see below.
            () = drained(&mut draining) => break,
            () = drained(&mut closed) => break,
            // A reload respecified the listener, or changed the limits:
            // new connections are served so; open ones keep what they
            // were served with.
            Ok(()) = spec.changed() => {
                serving = serve_as(&spec.borrow_and_update(), serving.limits.clone());
                continue;
            }
            Ok(()) = limits.changed() => {
                serving = serve_as(&spec.borrow(), limits.borrow_and_update().clone());
                continue;
            }
            Some(handed) = inbox.recv() => {
                serving.spawn_handed(handed);
                continue;
            }
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => place(&serving, stream, peer),
            Err(e) => {
                // Out of descriptors, most likely: wait a little rather
                // than fail again at once, and say so once a second.
                failures += 1;
                if last_warning
                    .is_none_or(|at: std::time::Instant| at.elapsed() >= Duration::from_secs(1))
                {
                    warn!(%address, error = %e, failures, "accept failed (logged at most once a second)");
                    last_warning = Some(std::time::Instant::now());
                    failures = 0;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    // The socket closes: new connections go to the other sockets on its
    // address (a successor's, or those of the listener that replaces this
    // one), or are refused when there are none. The connections the kernel
    // has already queued for it, and those handed to this worker, were
    // accepted: they are served here (the other workers' loops may be
    // ending too); like every connection asked to finish before its first
    // request, each still waits a little for one (`FirstRequest`). The
    // queue is asked of the socket itself: the runtime's record of its
    // readiness may be older than the last connections.
    if let Ok(socket) = socket.into_std() {
        while let Ok((stream, peer)) = socket.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            match (stream, admission.admit(worker)) {
                (Ok(stream), Some(admitted)) => serving.spawn(stream, peer, admitted),
                (Ok(_), None) => serving
                    .shared
                    .limit_hit("max_connections", serving.pool.handle()),
                (Err(e), _) => warn!(client = %peer, error = %e, "cannot serve a connection"),
            }
        }
    }
    inbox.close();
    while let Ok(handed) = inbox.try_recv() {
        serving.spawn_handed(handed);
    }
    let _ = finish.send(true);
}

/// What serving one listener's connections on one worker takes.
struct Serving {
    acceptor: Option<LiveTls>,
    /// Connections start with a PROXY protocol header to read first.
    relayed: bool,
    by_tls_session: bool,
    http: Option<(Arc<auto::Builder<TokioExecutor>>, Arc<HttpProxy>)>,
    tcp: Arc<TcpProxy>,
    /// The limits its connections are served with.
    limits: Arc<Limits>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    /// Set when the worker drains.
    draining: watch::Receiver<bool>,
}

impl Serving {
    fn new(
        listener: &ListenerConfig,
        tls: Option<LiveTls>,
        pool: Arc<Pool>,
        limits: Arc<Limits>,
        shared: Arc<Shared>,
        members: Arc<MemberHttp>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        let http = (listener.protocol == Protocol::Http).then(|| {
            // The header timer and the request timeouts of this worker's
            // connections (`deadline.rs`).
            let clock = Clock::start();
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                // One buffer, written with one `send`: see `member_http`.
                .writev(false)
                // Unless the listener gives requests up on the client's
                // close, a client that shuts its sending side after its
                // request still gets the answer. (hyper otherwise watches
                // for the client's end of stream while a request is
                // served, and each look takes a fresh read buffer while
                // the request still holds the last one.)
                .half_close(!listener.abort_on_close)
                .timer(clock.clone())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192));
            builder
                .http2()
                .timer(TokioTimer::new())
                .enable_connect_protocol()
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            (
                Arc::new(builder),
                Arc::new(HttpProxy {
                    pool: pool.clone(),
                    limits: limits.clone(),
                    shared: shared.clone(),
                    members,
                    tls: listener.tls.is_some(),
                    port: pool.port_for(listener.tls.is_some()),
                    affinity: listener.affinity,
                    clock,
                }),
            )
        });
        let tcp = Arc::new(TcpProxy {
            pool: pool.clone(),
            limits: limits.clone(),
            shared: shared.clone(),
            affinity: listener.affinity,
        });
        Self {
            acceptor: tls,
            relayed: listener.accept_proxy_protocol,
            by_tls_session: listener.affinity == Affinity::TlsSession,
            http,
            tcp,
            limits,
            shared,
            pool,
            draining,
        }
    }

    /// Serves a connection another worker accepted for this one.
    fn spawn_handed(&self, handed: Handed) {
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => self.spawn(stream, handed.peer, handed.admitted),
            Err(e) => warn!(client = %handed.peer, error = %e, "cannot serve a handed connection"),
        }
    }

    /// Serves the client connection `stream` from `peer` in a task of its
    /// own, holding its admission until it closes.
    fn spawn(&self, mut stream: TcpStream, peer: SocketAddr, admitted: Admitted) {
        let _ = stream.set_nodelay(true);
        let relayed = self.relayed;
        let acceptor = self.acceptor.as_ref().map(LiveTls::acceptor);
        // Only TCP connections may need it, for a PROXY protocol header
        // (one read from the proxy in front names it instead).
        let local = match self.http {
            None if !self.relayed => stream.local_addr().ok(),
            _ => None,
        };
        let by_tls_session = self.by_tls_session;
        let http = self.http.clone();
        let tcp = self.tcp.clone();
        let limits = self.limits.clone();
        let shared = self.shared.clone();
        let pool = self.pool.clone();
        let draining = self.draining.clone();
        tokio::spawn(async move {
            let _admitted = admitted;
            // Behind another proxy: the client is the one its header names.
            let (peer, local) = if relayed {
                let limit = limits.header_read_timeout;
                match timeout(limit, proxy_protocol::read_header(&mut stream)).await {
                    Ok(Ok(Some(said))) => (said.client, Some(said.local)),
                    Ok(Ok(None)) => (peer, local),
                    Ok(Err(e)) => {
                        shared.limit_hit("proxy_protocol", pool.handle());
                        debug!(from = %peer, error = %e, "connection closed");
                        return;
                    }
                    Err(_) => {
                        shared.limit_hit("header_read_timeout", pool.handle());
                        return;
                    }
                }
            } else {
                (peer, local)
            };
            let with = Served {
                tcp: &tcp,
                limits: &limits,
                shared: &shared,
                pool: &pool,
            };
            match acceptor {
                Some(acceptor) => {
                    // On the heap: a TLS connection's state would otherwise
                    // make every connection's task, which is moved into
                    // place as the connection is accepted, as large.
                    let tls = TlsClient {
                        acceptor,
                        by_tls_session,
                        peer,
                        local,
                    };
                    Box::pin(tls.serve(stream, http, with, draining)).await;
                }
                None => {
                    let origin = Origin {
                        peer,
                        local,
                        tls: None,
                    };
                    serve_connection(stream, origin, http, with, draining).await;
                }
            }
        });
    }
}

/// A client connection on a TLS listener, before its handshake.
struct TlsClient {
    acceptor: tokio_rustls::TlsAcceptor,
    /// Whether the listener keeps sessions by TLS session.
    by_tls_session: bool,
    /// The client's address.
    peer: SocketAddr,
    /// The gateway's address it connected to, when TCP listeners need it.
    local: Option<SocketAddr>,
}

impl TlsClient {
    /// Completes the handshake on `stream`, then serves the connection.
    async fn serve(
        self,
        stream: TcpStream,
        http: Option<(Arc<auto::Builder<TokioExecutor>>, Arc<HttpProxy>)>,
        with: Served<'_>,
        draining: watch::Receiver<bool>,
    ) {
        let Self {
            acceptor,
            by_tls_session,
            peer,
            local,
        } = self;
        // With TLS-session affinity, every ticket this connection is given
        // names a fresh session; the ticket it resumed with, if any, names
        // the session it continues.
        let issued: Option<u128> = by_tls_session.then(rand::random);
        let accept = acceptor.accept_with(stream, |tls| {
            if let Some(issued) = issued {
                tls.set_resumption_data(&issued.to_be_bytes());
            }
        });
        match timeout(with.limits.header_read_timeout, accept).await {
            Ok(Ok(tls)) => {
                let resumed = tls
                    .get_ref()
                    .1
                    .received_resumption_data()
                    .and_then(|data| <[u8; 16]>::try_from(data).ok())
                    .map(u128::from_be_bytes);
                let origin = Origin {
                    peer,
                    local,
                    tls: issued.map(|issued| TlsSession { issued, resumed }),
                };
                serve_connection(tls, origin, http, with, draining).await;
            }
            Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
            Err(_) => with
                .shared
                .limit_hit("header_read_timeout", with.pool.handle()),
        }
    }
}

/// Where a client connection comes from.
pub(crate) struct Origin {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The gateway's address it connected to (TCP listeners, for the
    /// PROXY protocol header).
    pub(crate) local: Option<SocketAddr>,
    /// Its TLS session, when the listener keeps sessions by TLS session.
    pub(crate) tls: Option<TlsSession>,
}

/// The TLS session of a client connection, as session affinity sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TlsSession {
    /// The session id carried by the tickets this connection was given.
    pub(crate) issued: u128,
    /// The session id of the ticket the client resumed with.
    pub(crate) resumed: Option<u128>,
}

/// What a client connection is served with, besides its HTTP service.
struct Served<'a> {
    tcp: &'a TcpProxy,
    limits: &'a Limits,
    shared: &'a Shared,
    pool: &'a Pool,
}

/// Whether the gateway's HTTP/2 side ended the connection with a GOAWAY
/// `ENHANCE_YOUR_CALM`: the client went past one of the HTTP/2 library's
/// limits on misuse (streams reset as they are opened, "rapid reset";
/// header blocks continued without end; too many streams it had to
/// reset for errors).
fn calmed_down(e: &(dyn std::error::Error + 'static)) -> bool {
    crate::h2_cause(e).is_some_and(|h2| {
        h2.is_go_away() && !h2.is_remote() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
    })
}

/// Serves one client connection, after its PROXY protocol header and TLS
/// handshake: as TCP to one member, or as HTTP request by request, until
/// it ends or the worker drains; a limit that ended it is counted.
async fn serve_connection<S>(
    stream: S,
    origin: Origin,
    http: Option<(Arc<auto::Builder<TokioExecutor>>, Arc<HttpProxy>)>,
    with: Served<'_>,
    mut draining: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Served {
        tcp,
        limits,
        shared,
        pool,
    } = with;
    let Some((builder, proxy)) = http else {
        tcp.serve(stream, &origin).await;
        return;
    };
    let peer = origin.peer;
    let forwarded_for =
        HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a header value");
    let tls = origin.tls;
    let first = Arc::new(FirstRequest::default());
    let asked = first.clone();
    let streams = Arc::new(Http2Streams::default());
    let opened = streams.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        asked.came();
        // An HTTP/2 stream counts as open until its answer's body has
        // been read from the member (or the answer is the gateway's own).
        let stream = (request.version() == Version::HTTP_2).then(|| opened.opened());
        proxy
            .clone()
            .handle(request, forwarded_for.clone(), tls, stream)
    });
    // Asked to finish before its first request (as a connection accepted
    // just before its listener stopped may be), a connection still waits a
    // little for one.
    let window = FIRST_REQUEST_WINDOW.min(limits.header_read_timeout);
    // An HTTP/2 connection with no stream open for the header read
    // timeout is shut down (GOAWAY), and given up if it has not closed
    // within as long again (`http2_idle`).
    let idle_limit = limits.header_read_timeout;
    let idle = streams.clone();
    let drain = async move {
        tokio::select! {
            () = async {
                drained(&mut draining).await;
                first.within(window).await;
            } => None,
            () = idle.idle(idle_limit) => {
                shared.limit_hit("header_read_timeout", pool.handle());
                Some(idle_limit)
            }
        }
    };
    // hyper's header timeout starts once it knows the protocol; a client
    // that sends nothing at all, or part of the HTTP/2 preface, is cut off
    // here. Answers go out after the worker's other ready reads.
    let stream = ConnectionIo::client(
        stream,
        limits.header_read_timeout,
        limits.send_timeout,
        streams,
    );
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // Draining: the request under way finishes, then the connection
    // closes (HTTP/2: GOAWAY).
    let served = UntilDrained::new(connection, drain, |connection| {
        connection.graceful_shutdown();
    })
    .await;
    let served = match served {
        Ok(served) => served,
        Err(Lingered(bound)) => {
            debug!(client = %peer, ?bound, "idle HTTP/2 connection closed without its GOAWAY answered");
            return;
        }
    };
    if let Err(e) = served {
        let io = e.downcast_ref::<std::io::Error>().or_else(|| {
            std::error::Error::source(&*e).and_then(|s| s.downcast_ref::<std::io::Error>())
        });
        let timed_out = io.is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        let stalled = io
            .and_then(|e| e.get_ref())
            .is_some_and(|e| e.is::<SendStalled>());
        match e.downcast_ref::<hyper::Error>() {
            _ if stalled => shared.limit_hit("send_timeout", pool.handle()),
            _ if timed_out => shared.limit_hit("header_read_timeout", pool.handle()),
            Some(e) if e.is_timeout() => shared.limit_hit("header_read_timeout", pool.handle()),
            Some(e) if e.is_parse_too_large() => {
                shared.limit_hit("max_header_bytes", pool.handle());
            }
            _ if calmed_down(&*e) => shared.limit_hit("http2_enhance_your_calm", pool.handle()),
            _ => debug!(client = %peer, error = %e, "client connection ended with an error"),
        }
    }
}
