//! The HTTP proxy: HTTP/1.1 and HTTP/2 from clients (over TLS when the
//! listener terminates it), HTTP/1.1 to members; session affinity by a
//! cookie or by TLS session, state cookies handed on when a session moves,
//! and retries on
//! another member when that is safe. An HTTP/1.1 upgrade (WebSocket, for
//! one), or its HTTP/2 form, an extended CONNECT (RFC 8441), that the
//! member accepts becomes a tunnel between client and member for as long
//! as both keep it open.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::future::{self, FutureExt};
use hapool_wire::PoolElementId;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use metrics::counter;
use smallvec::SmallVec;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::access_log::HttpLine;
use crate::body::{AtEnd, IdleLimit, IdleLimitError, OnEnd, Upload, UploadProgress};
use crate::deadline::{Clock, Elapsed};
use crate::hedge;
use crate::http2_idle::OpenStream;
use crate::member_http::{self, InUse, MemberError, MemberHttp, MemberRequest, Target};
use crate::pool::{Lease, Member, Pool, Port};
use crate::select::Availability;
use crate::serve::TlsSession;
use crate::sessions::{Session, SessionKey};
use crate::{Affinity, Limits, Shared};

/// The body of a request to a member: kept in memory (so it can be sent
/// again), or streamed from the client.
pub(crate) type MemberBody = Either<Full<Bytes>, Upload>;

/// The body of a response to a client.
pub(crate) type ClientBody = Either<LeasedBody, Full<Bytes>>;

/// What an exchange with a member came to: the answer's head and the
/// connection it came on, or why there is none.
type Exchanged = Result<(Response<Incoming>, InUse), MemberError>;

/// What sending a request to a member came to, within the request
/// timeout.
type Sent = Result<Exchanged, Elapsed>;

/// An exchange with a member as a future of its own
/// ([`HttpProxy::exchange_apart`]).
type Apart = Pin<Box<dyn Future<Output = Exchanged> + Send>>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The name of the gateway's affinity cookie.
pub const AFFINITY_COOKIE: &str = "hapool";

/// The header a member sets on a response to hand the gateway its state
/// cookie for the session, and that the gateway sets on a request when the
/// session moves to another member.
pub const STATE_HEADER: &str = "x-hapool-state";
const STATE: HeaderName = HeaderName::from_static(STATE_HEADER);

/// A response body that keeps the member's session open until it is done,
/// and then gives the member connection back for the next request.
pub(crate) type LeasedBody = OnEnd<IdleLimit<Incoming>, Released>;

/// A member connection and the session it carries, until the response on
/// it has been read; and the client's HTTP/2 stream it answers, in its
/// connection's count of open streams until then (`http2_idle`).
pub(crate) struct Released {
    connection: InUse,
    lease: Lease,
    _stream: Option<OpenStream>,
}

impl AtEnd for Released {
    fn at_end(self) {
        self.connection.release();
    }

    /// The member broke its answer off (it closed, sent a malformed body,
    /// or sent nothing more of it for `answer_idle_timeout`): the client's
    /// connection or stream is cut, so that the client
    /// sees the answer unfinished; the member's connection closes, and the
    /// session counts as the member's failure.
    #[cold]
    fn broken(self, error: &(dyn std::error::Error + 'static)) {
        let member = self.lease.member();
        // hyper's error names the step ("error reading a body"), its
        // sources what went wrong.
        let mut why = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            why = format!("{why}: {cause}");
            source = cause.source();
        }
        warn!(pe_id = %member.id, address = %member.address, error = %why, "pool element broke its answer off");
        counter!("hapool_gateway_broken_answers_total").increment(1);
        if let Some(IdleLimitError::Stalled(_)) =
            error.downcast_ref::<IdleLimitError<hyper::Error>>()
        {
            counter!("hapool_gateway_limit_hits_total", "limit" => "answer_idle_timeout")
                .increment(1);
        }
        self.lease.fail();
    }
}

/// The answer to a request whose body could not be read: malformed, or
/// the client gone before its end.
#[cold]
fn unreadable_body() -> Response<ClientBody> {
    plain(
        StatusCode::BAD_REQUEST,
        "the request body could not be read\n",
    )
}

#[cold]
fn body_too_slow() -> Response<ClientBody> {
    plain(
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive in time\n",
    )
}

/// The request body as the proxy holds it.
enum Held {
    /// In memory: can be sent to another member.
    Kept(Bytes),
    /// Streamed: can be sent once; and how it is getting on.
    Streamed(Option<Upload>, UploadProgress),
}

impl Held {
    /// Whether the client's side of a streamed body failed.
    fn broken_off(&self) -> bool {
        matches!(self, Self::Streamed(_, progress) if progress.broken_off())
    }

    /// Whether a streamed body's member waits for the client's next part.
    fn waiting_for_client(&self) -> bool {
        matches!(self, Self::Streamed(_, progress) if progress.waiting_for_client())
    }
}

/// One HTTP listener's proxy.
pub(crate) struct HttpProxy {
    pub(crate) pool: Arc<Pool>,
    /// The limits this listener's connections are served with.
    pub(crate) limits: Arc<Limits>,
    pub(crate) shared: Arc<Shared>,
    /// This worker's connections to members.
    pub(crate) members: Arc<MemberHttp>,
    /// Whether clients reach this listener over TLS.
    pub(crate) tls: bool,
    /// The port of the members its requests go to (the HTTPS port, when
    /// the pool has one, for a TLS listener).
    pub(crate) port: Port,
    /// What keeps sessions together: the cookie, the TLS session, or
    /// nothing.
    pub(crate) affinity: Affinity,
    /// This worker's deadlines.
    pub(crate) clock: Clock,
}

/// Who served a request, for the access log: the member that answered
/// (with its address), and how many members took part: those that
/// failed the request, plus that one.
#[derive(Clone, Copy, Debug)]
struct Served {
    member: (PoolElementId, SocketAddr),
    attempts: u32,
}

/// A request's line in the access log: written when its answer's head
/// is ready, or, when the request is dropped unanswered (its client reset
/// its HTTP/2 stream or closed its HTTP/2 connection, or closed its
/// HTTP/1.1 connection on a listener with `abort_on_close`, or the
/// gateway's shutdown grace ran out), as it is dropped, with `status=-`
/// and the time it waited as `head_ms`: a client that gives up on a slow
/// member leaves a line, as nginx's 499 or HAProxy's `-1` would.
struct PendingLine {
    proxy: Arc<HttpProxy>,
    started: Instant,
    method: Method,
    version: Version,
    target: String,
    client: HeaderValue,
    written: bool,
}

impl PendingLine {
    fn write(&mut self, response: Option<&Response<ClientBody>>) {
        self.written = true;
        self.proxy.shared.access_log.with(|log| {
            let served = response.and_then(|r| r.extensions().get::<Served>());
            log.http(&HttpLine {
                client: self.client.to_str().unwrap_or("-"),
                pool: &self.proxy.pool.handle().to_string(),
                method: self.method.as_str(),
                target: &self.target,
                version: self.version,
                status: response.map(|r| r.status().as_u16()),
                member: served.map(|s| s.member),
                attempts: served.map_or(0, |s| s.attempts),
                length: response.and_then(|r| {
                    r.headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                }),
                head: self.started.elapsed(),
            });
        });
    }
}

impl Drop for PendingLine {
    fn drop(&mut self) {
        if !self.written {
            self.write(None);
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The gateway's affinity cookie: the session's id and the member the
/// session was bound to when the cookie was set. Any gateway in front of
/// the pool can send the session home by the member it names, also one
/// that has never seen the session (the virtual IP moved to it), much as
/// HAProxy's inserted server cookie does; the session table then learns
/// the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AffinityCookie {
    session: u128,
    /// Absent in cookies of gateways before the member was named.
    member: Option<PoolElementId>,
}

impl AffinityCookie {
    /// `<session, 32 hex digits>-<member, 8 hex digits>`.
    fn value(session: u128, member: PoolElementId) -> String {
        format!("{session:032x}-{:08x}", member.0)
    }

    fn parse(value: &str) -> Option<Self> {
        let (session, member) = match value.split_once('-') {
            Some((session, member)) => (session, Some(member)),
            None => (value, None),
        };
        Some(Self {
            session: u128::from_str_radix(session, 16).ok()?,
            member: match member {
                Some(member) => Some(PoolElementId(u32::from_str_radix(member, 16).ok()?)),
                None => None,
            },
        })
    }
}

/// The affinity cookie in `headers`, if the client sent one.
fn affinity_cookie(headers: &HeaderMap) -> Option<AffinityCookie> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == AFFINITY_COOKIE).then(|| AffinityCookie::parse(value))?
        })
}

/// A request to switch its connection (HTTP/1.1) or stream (HTTP/2) to
/// another protocol.
#[derive(Debug, PartialEq, Eq)]
struct UpgradeAsked {
    /// The protocol (`websocket`, for one).
    protocol: HeaderValue,
    /// Asked by an HTTP/2 extended CONNECT with a `:protocol` rather than
    /// by HTTP/1.1 `Upgrade`: the member is asked with a GET and an
    /// `Upgrade` header, and the client is answered 200 rather than 101.
    extended_connect: bool,
}

/// What the request asks to upgrade to, if it asks: over HTTP/1.1 by
/// `Upgrade` with `upgrade` among the `Connection` tokens, over HTTP/2 by
/// CONNECT with a `:protocol`. Asked only of a request hyper handed over
/// with an `OnUpgrade` (see [`HttpProxy::answer`]): no other can be one.
fn upgrade_asked(parts: &http::request::Parts) -> Option<UpgradeAsked> {
    if parts.version == Version::HTTP_2 && parts.method == Method::CONNECT {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
        return Some(UpgradeAsked {
            protocol: HeaderValue::from_str(protocol.as_str()).ok()?,
            extended_connect: true,
        });
    }
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let headers = &parts.headers;
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()?;
    Some(UpgradeAsked {
        protocol,
        extended_connect: false,
    })
}

/// A `Sec-WebSocket-Key` for a WebSocket upgrade asked over HTTP/2, where
/// the client sends none (RFC 8441 section 5): 16 random bytes, base64.
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    HeaderValue::from_str(&key).expect("base64 is a header value")
}

/// Whether `name` is a header that belongs to one connection. Asked of
/// every header of every message: one comparison of the (lower-case)
/// name.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Whether the client's `TE` names `trailers`.
fn takes_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// What [`strip`] found of the headers it leaves.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stripped {
    /// The value of the gateway's state header ([`STATE_HEADER`]), taken out.
    state: Option<HeaderValue>,
    /// Whether a `Host` header stays.
    host: bool,
    /// Whether a `Set-Cookie` header stays.
    set_cookie: bool,
}

/// Removes what the gateway does not pass on: the headers that belong to
/// one connection, those the `Connection` header names, and its own state
/// header, whose value it returns. The names are looked at once, and only
/// headers that are there are removed (each removal is a hash and a
/// probe): a client's request usually carries none of them, a member's
/// response `Connection: keep-alive` alone. The usual `Connection` tokens
/// (`keep-alive`, `upgrade`: headers removed anyway; `close`: an option)
/// are not looked up. The same walk notes what the caller asks of the
/// headers left (a request's `Host`, a response's `Set-Cookie`), which
/// would each take a lookup of their own.
fn strip(headers: &mut HeaderMap) -> Stripped {
    let mut present: SmallVec<[HeaderName; 4]> = SmallVec::new();
    let (mut state, mut host, mut set_cookie) = (false, false, false);
    for name in headers.keys() {
        if is_hop_by_hop(name) {
            present.push(name.clone());
        } else if name == header::HOST {
            host = true;
        } else if name == header::SET_COOKIE {
            set_cookie = true;
        } else if name == STATE {
            state = true;
        }
    }
    let state = if state { headers.remove(STATE) } else { None };
    if present.is_empty() {
        return Stripped {
            state,
            host,
            set_cookie,
        };
    }
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
    {
        let usual = [&b"keep-alive"[..], b"close", b"upgrade"]
            .iter()
            .any(|t| token.eq_ignore_ascii_case(t));
        if !usual
            && let Ok(name) = HeaderName::from_bytes(token)
            && headers.contains_key(&name)
            && !present.contains(&name)
        {
            present.push(name);
        }
    }
    // A length beside a transfer coding is wrong, and the coding wins
    // (RFC 9112, 6.3): the length is not passed on, as the coding is
    // not, so that the message goes on with the length of what it holds.
    if present.contains(&header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
    {
        present.push(header::CONTENT_LENGTH);
    }
    for name in &present {
        headers.remove(name);
    }
    Stripped {
        state,
        host: host && !present.contains(&header::HOST),
        set_cookie: set_cookie && !present.contains(&header::SET_COOKIE),
    }
}

/// An authority as a `Host` header has it: without user information.
fn host_of(authority: &http::uri::Authority) -> &str {
    let all = authority.as_str();
    all.rsplit_once('@').map_or(all, |(_, host)| host)
}

/// What is wrong with a request's `Host` header, if anything (RFC 9112,
/// 3.2): an HTTP/1.1 request has one, and no request has more than one.
/// `host` says whether it has one (from [`strip`]'s walk); only when some
/// header has several values is `Host` looked up.
fn host_fault(version: Version, host: bool, headers: &HeaderMap) -> Option<&'static str> {
    if !host {
        return (version == Version::HTTP_11)
            .then_some("an HTTP/1.1 request needs a Host header\n");
    }
    let several = headers.len() != headers.keys_len()
        && headers.get_all(header::HOST).iter().nth(1).is_some();
    several.then_some("a request has one Host header, not more\n")
}

/// The gateway's own answer (an error's: off the usual path).
#[cold]
fn plain(status: StatusCode, text: &'static str) -> Response<ClientBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.extensions_mut().insert(OwnAnswer(text));
    response
}

/// Marks an answer of the gateway's own (not a member's), with its text.
#[derive(Clone, Copy)]
struct OwnAnswer(&'static str);

/// Whether `request` is a gRPC call: HTTP/2, `application/grpc…`.
fn is_grpc<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_2
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// An answer of the gateway's own to a gRPC call, as gRPC clients read
/// one: status 200 and no message, the gRPC status (mapped from the HTTP
/// one as gRPC maps them) and the text in `grpc-status` and
/// `grpc-message`. A member's answer goes as it is.
fn for_grpc(response: Response<ClientBody>) -> Response<ClientBody> {
    let Some(&OwnAnswer(text)) = response.extensions().get::<OwnAnswer>() else {
        return response;
    };
    let code: u16 = match response.status().as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    };
    let mut answer = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    // Printable ASCII goes as it is, anything else percent-encoded.
    let mut message = String::new();
    for byte in text.trim_end().bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            message.push(char::from(byte));
        } else {
            message.push_str(&format!("%{byte:02X}"));
        }
    }
    if let Ok(message) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", message);
    }
    *answer.extensions_mut() = response.into_parts().0.extensions;
    answer
}

impl HttpProxy {
    /// Serves one request from `client`.
    ///
    /// Not an `async fn`: one would keep the request as its argument and
    /// the answer's future, which holds it again, beside it; hyper moves
    /// this future into place for every request.
    pub(crate) fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        forwarded_for: HeaderValue,
        tls: Option<TlsSession>,
        stream: Option<OpenStream>,
    ) -> impl Future<Output = Result<Response<ClientBody>, Infallible>> + Send + 'static {
        let grpc = is_grpc(&request);
        let answer = if self.shared.access_log.is_on() {
            // On the heap: the request's own future stays as small when
            // nothing is logged.
            future::Either::Left(Box::pin(self.answer_logged(
                request,
                forwarded_for,
                tls,
                stream,
            )))
        } else {
            future::Either::Right(self.answer(request, forwarded_for, tls, stream))
        };
        answer.map(move |Ok(answer)| Ok(if grpc { for_grpc(answer) } else { answer }))
    }

    /// [`Self::answer`], with a line in the access log once the answer's
    /// head is ready, or once the request is given up unanswered.
    async fn answer_logged(
        self: Arc<Self>,
        request: Request<Incoming>,
        forwarded_for: HeaderValue,
        tls: Option<TlsSession>,
        stream: Option<OpenStream>,
    ) -> Result<Response<ClientBody>, Infallible> {
        let mut line = PendingLine {
            started: Instant::now(),
            method: request.method().clone(),
            version: request.version(),
            target: request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().to_string(), ToString::to_string),
            client: forwarded_for.clone(),
            proxy: self.clone(),
            written: false,
        };
        let Ok(response) = self.answer(request, forwarded_for, tls, stream).await;
        line.write(Some(&response));
        Ok(response)
    }

    /// Answers `request`: from a member when one can serve it, else with
    /// the gateway's own error.
    ///
    /// The request is taken apart before the future is made, so that the
    /// future holds its parts alone, not the request beside them.
    fn answer(
        self: Arc<Self>,
        request: Request<Incoming>,
        forwarded_for: HeaderValue,
        tls: Option<TlsSession>,
        stream: Option<OpenStream>,
    ) -> impl Future<Output = Result<Response<ClientBody>, Infallible>> + Send + 'static {
        let (mut parts, body) = request.into_parts();
        async move {
            // hyper hands over a request that has an `Upgrade` header or is
            // a CONNECT with the means to take its connection (`OnUpgrade`),
            // which a tunnel needs anyway: any other asks for no upgrade,
            // and its headers are not looked at.
            let upgrade = parts
                .extensions
                .get::<hyper::upgrade::OnUpgrade>()
                .and_then(|_| upgrade_asked(&parts));
            if upgrade.is_some() && self.pool.http2() {
                return Ok(plain(
                    StatusCode::NOT_IMPLEMENTED,
                    "upgrades (WebSocket) are not carried to members spoken to in HTTP/2\n",
                ));
            }
            let client_upgrade = upgrade
                .is_some()
                .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
                .flatten();
            let extended_connect = upgrade.as_ref().is_some_and(|u| u.extended_connect);
            if extended_connect {
                parts.method = Method::GET;
            } else if parts.method == Method::CONNECT {
                // A tunnel to an address of the client's choosing: a forward
                // proxy's job, not this one's.
                return Ok(plain(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "CONNECT is not proxied (only an HTTP/2 CONNECT with a protocol)\n",
                ));
            }
            let mut held = match self.hold(body).await {
                Ok(held) => held,
                Err(response) => return Ok(response),
            };
            let limits = &self.limits;
            let (key, session, cookie_names) = self.session_of(&parts.headers, tls);
            let (mut headers, host) = match self.member_headers(&mut parts, forwarded_for) {
                Ok(headers) => headers,
                Err(fault) => return Ok(plain(StatusCode::BAD_REQUEST, fault)),
            };
            if let (Some(upgrade), Some(_)) = (&upgrade, &client_upgrade) {
                // The upgrade is between client and member: its headers go on.
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, upgrade.protocol.clone());
                if upgrade.extended_connect
                    && upgrade
                        .protocol
                        .as_bytes()
                        .eq_ignore_ascii_case(b"websocket")
                    && !headers.contains_key(header::SEC_WEBSOCKET_KEY)
                {
                    headers.insert(header::SEC_WEBSOCKET_KEY, websocket_key());
                }
            }
            let idempotent = is_idempotent(&parts.method);
            // Members that failed this request (allocated on the first).
            let mut tried = Vec::new();
            let mut handoff = None;
            for attempt in 0..=limits.retries {
                // When this attempt starts: for the choice, and as the time its
                // request goes out.
                let now = Instant::now();
                let affine = session
                    .as_ref()
                    .filter(|_| attempt == 0)
                    .and_then(|s| self.pool.member(s.member))
                    .filter(|m| self.pool.availability(m, self.port).keeps_session());
                let (lease, hedge) = match affine {
                    Some(member) => (Pool::lease(member), None),
                    None => {
                        let Some(chosen) = self.pool.choose(&tried, now.into_std(), self.port)
                        else {
                            break;
                        };
                        if let Some(s) = &session
                            && s.member != chosen.lease.member().id
                        {
                            handoff.clone_from(&s.state);
                        }
                        (chosen.lease, chosen.hedge)
                    }
                };
                let lease = lease.awaiting_answer();
                // Sent to a second member too if its own stops answering: a
                // safe request that no session ties to a member (and, below,
                // whose body is in memory).
                let hedge = hedge.filter(|_| {
                    matches!(parts.method, Method::GET | Method::HEAD)
                        && session.is_none()
                        && client_upgrade.is_none()
                });
                let member = lease.member().clone();
                let body = match &mut held {
                    Held::Kept(bytes) => Either::Left(Full::new(bytes.clone())),
                    Held::Streamed(body, _) => match body.take() {
                        Some(body) => Either::Right(body),
                        None => break,
                    },
                };
                // The map hyper parsed goes out, a copy stays for another
                // attempt: the member's connection parses its answer into the
                // map it sent, and this one has room for an answer's headers
                // (hyper parsed the request into the previous answer's map),
                // where a copy, only as large as its contents, would grow.
                let copy = headers.clone();
                let outgoing = self.member_request(
                    &parts,
                    (std::mem::replace(&mut headers, copy), host),
                    &member,
                    handoff.as_ref(),
                    body,
                );
                self.shared.metrics.requests.increment(1);
                let target = self.pool.target(&member, self.port);
                let (mut sent, lease) = match (hedge, &held) {
                    (Some(delays), Held::Kept(bytes)) => {
                        let copy = |to: &Member| {
                            let body = Either::Left(Full::new(bytes.clone()));
                            self.member_request(&parts, (headers.clone(), host), to, None, body)
                        };
                        self.send_hedged(
                            lease, &member, target, outgoing, now, delays, &mut tried, copy,
                        )
                        .await
                    }
                    _ => {
                        let exchange = exchange(&self.members, &member, target, outgoing, now);
                        // One wait either way; an upload's, rare, on the heap,
                        // so that every request's future stays as small.
                        let sent = match &held {
                            Held::Kept(_) => future::Either::Left(
                                self.clock.within(limits.request_timeout, exchange),
                            ),
                            Held::Streamed(_, progress) => future::Either::Right(Box::pin(
                                self.within_upload(progress, exchange),
                            )),
                        };
                        (sent.await, lease)
                    }
                };
                // The member whose answer (or failure) this is: another one when
                // a hedge won.
                let (member, target) = if Arc::ptr_eq(lease.member(), &member) {
                    (member, target)
                } else {
                    let other = lease.member().clone();
                    let target = self.pool.target(&other, self.port);
                    (other, target)
                };
                if let Ok(Err(MemberError::Stale(_))) = &sent
                    && idempotent
                    && let Held::Kept(bytes) = &held
                {
                    // The member closed a kept connection as the request went
                    // out: once more, on a new connection.
                    self.shared.metrics.retries.increment(1);
                    let body = Either::Left(Full::new(bytes.clone()));
                    let again = self.member_request(
                        &parts,
                        (headers.clone(), host),
                        &member,
                        handoff.as_ref(),
                        body,
                    );
                    sent = self
                        .clock
                        .within(
                            limits.request_timeout,
                            exchange(&self.members, &member, target, again, Instant::now()),
                        )
                        .await;
                }
                match sent {
                    Ok(Ok((response, connection))) => {
                        let mut lease = lease;
                        lease.answered();
                        self.shared.count_toward_error_limit(
                            &self.pool,
                            &member,
                            self.port,
                            response.status().is_server_error(),
                        );
                        let served = Served {
                            member: (member.id, member.address),
                            attempts: u32::try_from(tried.len()).map_or(u32::MAX, |n| n + 1),
                        };
                        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                            let Some(client_upgrade) = client_upgrade else {
                                return Ok(self.switched_unasked(lease));
                            };
                            // The connection is the tunnel's now.
                            drop(connection);
                            let mut answer = self.tunnel(
                                response,
                                lease,
                                client_upgrade,
                                extended_connect,
                                stream,
                            );
                            self.note_served(&mut answer, served);
                            return Ok(answer);
                        }
                        if extended_connect && response.status().is_success() {
                            // A 2xx would open the client's tunnel to nothing.
                            return Ok(plain(
                                StatusCode::BAD_GATEWAY,
                                "the pool element did not switch protocols\n",
                            ));
                        }
                        let mut answer = self.respond(
                            response,
                            Released {
                                connection,
                                lease,
                                _stream: stream,
                            },
                            key,
                            session.as_ref().map(|s| s.member),
                            cookie_names,
                        );
                        self.note_served(&mut answer, served);
                        return Ok(answer);
                    }
                    Ok(Err(_)) if held.broken_off() => {
                        // The client's body failed, and the exchange with
                        // it: the member is not at fault.
                        debug!(pool = %self.pool.handle(), pe_id = %member.id, "the client's request body failed on its way to the member");
                        lease.end_for_client();
                        return Ok(unreadable_body());
                    }
                    Ok(Err(mut e)) => {
                        self.count_failure(lease, &e, &mut tried);
                        // A streamed body that never left goes to the next
                        // member.
                        if let Held::Streamed(slot, _) = &mut held
                            && let Some(unsent) = e.take_unsent()
                            && let Either::Right(body) = unsent.into_body()
                        {
                            *slot = Some(body);
                        }
                        let safe = e.unsent() || idempotent;
                        if !safe || matches!(held, Held::Streamed(None, _)) {
                            self.shared.metrics.failed.increment(1);
                            return Ok(plain(
                                StatusCode::BAD_GATEWAY,
                                "the pool element failed during the request\n",
                            ));
                        }
                        self.shared.metrics.retries.increment(1);
                    }
                    Err(_) if held.waiting_for_client() => {
                        // The member waits for the rest of a body the
                        // client does not send.
                        lease.end_for_client();
                        self.shared.limit_hit("request_timeout", self.pool.handle());
                        return Ok(body_too_slow());
                    }
                    Err(_) => {
                        let member = lease.member().clone();
                        lease.fail();
                        self.shared
                            .count_toward_error_limit(&self.pool, &member, self.port, true);
                        self.shared.limit_hit("request_timeout", self.pool.handle());
                        self.shared.metrics.failed.increment(1);
                        return Ok(plain(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the pool element did not answer in time\n",
                        ));
                    }
                }
            }
            Ok(self.unavailable(tried.len()))
        }
    }

    /// The member answered a request that asked for no upgrade with 101
    /// (Switching Protocols): no answer to pass on (over HTTP/2 none can
    /// be), and its connection is in a protocol the gateway does not know.
    #[cold]
    fn switched_unasked(&self, lease: Lease) -> Response<ClientBody> {
        let member = lease.member().clone();
        warn!(pool = %self.pool.handle(), pe_id = %member.id, "pool element switched protocols unasked");
        lease.fail();
        self.shared
            .count_toward_error_limit(&self.pool, &member, self.port, true);
        self.shared.metrics.failed.increment(1);
        plain(
            StatusCode::BAD_GATEWAY,
            "the pool element switched protocols unasked\n",
        )
    }

    /// The answer when no member could serve a request (`tried` of them
    /// failed it).
    #[cold]
    fn unavailable(&self, tried: usize) -> Response<ClientBody> {
        self.shared.metrics.failed.increment(1);
        warn!(pool = %self.pool.handle(), tried, "no pool element can serve the request");
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no pool element can serve the request\n",
        )
    }

    /// [`exchange`] as a future of its own, which can go on after
    /// the request that started it has its answer from elsewhere (a
    /// hedge's): on the heap, so that it is not moved once started.
    fn exchange_apart(
        &self,
        member: Arc<Member>,
        target: Target,
        request: MemberRequest,
        sending: Instant,
    ) -> Apart {
        let members = Arc::clone(&self.members);
        Box::pin(async move { exchange(&members, &member, target, request, sending).await })
    }

    /// The exchange of a hedged request that did not give its answer:
    /// finished apart, within the request's `deadline`, so that its
    /// connection carries another request rather than being closed (and
    /// one made again for the next). The member had the request already;
    /// reading its answer costs less than a new connection, unless the
    /// answer is long ([`member_http::finish_unheard`]).
    fn finish_apart(&self, exchange: Apart, deadline: Instant) {
        let clock = self.clock.clone();
        tokio::spawn(async move {
            let finished = clock.until(deadline, async move {
                if let Ok((response, connection)) = exchange.await {
                    member_http::finish_unheard(response, connection).await;
                }
            });
            let _ = finished.await;
        });
    }

    /// Sends `request` to `member` (leased by `lease`) at `sending`; once
    /// the member has answered nothing for as long as `delays` say, goes
    /// on with [`Self::hedge`]. The hedge's future is on the heap, so that
    /// the request's own future, which every request moves into place,
    /// stays small.
    #[allow(clippy::too_many_arguments)]
    async fn send_hedged(
        &self,
        lease: Lease,
        member: &Arc<Member>,
        target: Target,
        request: MemberRequest,
        sending: Instant,
        delays: hedge::Delays,
        tried: &mut Vec<PoolElementId>,
        copy: impl FnOnce(&Member) -> MemberRequest,
    ) -> (Sent, Lease) {
        let deadline = sending + self.limits.request_timeout;
        let mut first = self.exchange_apart(Arc::clone(member), target, request, sending);
        let mut check = Instant::from_std(delays.first_look(sending.into_std()));
        loop {
            if check >= deadline {
                return (self.clock.until(deadline, first).await, lease);
            }
            if let Ok(done) = self.clock.until(check, &mut first).await {
                return (Ok(done), lease);
            }
            // This request is one of the member's open sessions.
            let busy = member.active() > 1;
            let due = delays.due(
                sending.into_std(),
                member.quiet_from(),
                member.response_time(check.into_std()),
                busy,
            );
            let due = Instant::from_std(due);
            if due <= check {
                break;
            }
            check = due;
        }
        Box::pin(self.hedge(lease, member, first, sending, tried, copy)).await
    }

    /// `first`, the exchange with `member` (leased by `lease`, sent at
    /// `sending`), has waited while the member answered nothing: if the
    /// pool's hedge allowance and another available member allow, sends
    /// `copy` of the request to that member too (`hedge.rs`). The first
    /// answer wins; a failure waits for the other exchange. The exchange
    /// that lost is finished apart ([`Self::finish_apart`]); a first
    /// member that lost has the time it had taken so far recorded as its
    /// response time, a floor of the real one, which its answer replaces
    /// when it comes; the lease of the member that lost ends counted as
    /// neither served nor failed. Returns the outcome with the lease of
    /// the member it came from; a member that failed while the other
    /// exchange went on is counted failed here and added to `tried`.
    async fn hedge(
        &self,
        lease: Lease,
        member: &Member,
        mut first: Apart,
        sending: Instant,
        tried: &mut Vec<PoolElementId>,
        copy: impl FnOnce(&Member) -> MemberRequest,
    ) -> (Sent, Lease) {
        let deadline = sending + self.limits.request_timeout;
        let mut skip = tried.clone();
        skip.push(member.id);
        let now = Instant::now();
        let second_lease = match self
            .pool
            .take_hedge()
            .then(|| self.pool.choose(&skip, now.into_std(), self.port))
        {
            Some(Some(second)) if second.availability == Availability::Available => {
                Some(second.lease.awaiting_answer())
            }
            Some(Some(other)) => {
                // Only busy members left: not worth a second load.
                other.lease.cancel();
                None
            }
            _ => None,
        };
        let Some(second_lease) = second_lease else {
            return (self.clock.until(deadline, first).await, lease);
        };
        self.shared.metrics.hedges.increment(1);
        let second_member = second_lease.member().clone();
        let second_target = self.pool.target(&second_member, self.port);
        let request = copy(&second_member);
        let mut second = self.exchange_apart(second_member, second_target, request, now);
        let raced = self
            .clock
            .until(deadline, async {
                tokio::select! {
                    sent = &mut first => (true, sent),
                    sent = &mut second => (false, sent),
                }
            })
            .await;
        match raced {
            Err(elapsed) => {
                second_lease.fail();
                (Err(elapsed), lease)
            }
            Ok((true, Ok(answer))) => {
                self.finish_apart(second, deadline);
                (Ok(Ok(answer)), lease)
            }
            Ok((false, Ok(answer))) => {
                self.shared.metrics.hedge_wins.increment(1);
                let at = Instant::now();
                member.record_response_time(at - sending, at.into_std());
                self.finish_apart(first, deadline);
                (Ok(Ok(answer)), second_lease)
            }
            Ok((true, Err(e))) => {
                self.count_failure(lease, &e, tried);
                (self.clock.until(deadline, second).await, second_lease)
            }
            Ok((false, Err(e))) => {
                self.count_failure(second_lease, &e, tried);
                (self.clock.until(deadline, first).await, lease)
            }
        }
    }

    /// The member of `lease` failed a request: counted failed, reported
    /// unreachable when it could not be reached, else counted toward
    /// `error_limit` (unless a kept connection went stale under it), and
    /// added to `tried`.
    #[cold]
    fn count_failure(&self, lease: Lease, error: &MemberError, tried: &mut Vec<PoolElementId>) {
        let member = lease.member().clone();
        debug!(pool = %self.pool.handle(), pe_id = %member.id, %error, connect = error.is_connect(), "request to member failed");
        tried.push(member.id);
        lease.fail();
        if error.is_connect() {
            self.shared.unreachable(&self.pool, &member, self.port);
        } else if !matches!(error, MemberError::Stale(_)) {
            // A kept connection the member closed as the request went out
            // is the keep-alive's race, not a sign of a failing member.
            self.shared
                .count_toward_error_limit(&self.pool, &member, self.port, true);
        }
    }

    /// The key a session of this request is (or would be) kept under, the
    /// session when there is one, and the member the client's affinity
    /// cookie names. By cookie: the client's cookie, if it sent one; a
    /// session this gateway does not know goes to the member its cookie
    /// names. By TLS session: the session of this connection's tickets,
    /// which an earlier request on the connection may have started, else
    /// the session the client resumed.
    fn session_of(
        &self,
        headers: &HeaderMap,
        tls: Option<TlsSession>,
    ) -> (Option<SessionKey>, Option<Session>, Option<PoolElementId>) {
        let sessions = &self.pool.sessions;
        match (self.affinity, tls) {
            (Affinity::Cookie, _) => {
                let Some(cookie) = affinity_cookie(headers) else {
                    return (None, None, None);
                };
                let key = SessionKey::Cookie(cookie.session);
                let now = Instant::now();
                let session = sessions.touch(key, now).or_else(|| {
                    cookie.member.map(|member| Session {
                        member,
                        state: None,
                        last_seen: now,
                        requests: 0,
                    })
                });
                (Some(key), session, cookie.member)
            }
            (Affinity::TlsSession, Some(tls)) => {
                let now = Instant::now();
                let own = SessionKey::Tls(tls.issued);
                let session = sessions.touch(own, now).or_else(|| {
                    tls.resumed
                        .and_then(|id| sessions.touch(SessionKey::Tls(id), now))
                });
                (Some(own), session, None)
            }
            _ => (None, None, None),
        }
    }

    /// Keeps a small body in memory (so the request can be retried);
    /// streams a large one.
    async fn hold(&self, body: Incoming) -> Result<Held, Response<ClientBody>> {
        let limit = self.limits.retry_body_limit;
        if body.is_end_stream() {
            return Ok(Held::Kept(Bytes::new()));
        }
        if body
            .size_hint()
            .upper()
            .is_none_or(|upper| upper > limit as u64)
        {
            let (upload, progress) = Upload::new(body);
            return Ok(Held::Streamed(Some(upload), progress));
        }
        match self
            .clock
            .within(
                self.limits.request_timeout,
                Limited::new(body, limit).collect(),
            )
            .await
        {
            Ok(Ok(collected)) => Ok(Held::Kept(collected.to_bytes())),
            Ok(Err(_)) => Err(unreadable_body()),
            Err(_) => {
                self.shared.limit_hit("request_timeout", self.pool.handle());
                Err(body_too_slow())
            }
        }
    }

    /// Runs `exchange`, a request whose body is streamed, for as long as
    /// the body keeps coming and then `request_timeout` more: the limit
    /// is counted from the last part of the body the client sent (or its
    /// end), so a long upload is not cut off for its length, nor a client
    /// that stops sending kept for ever. Whose the fault is when it runs
    /// out, the client's or the member's, [`Held::waiting_for_client`]
    /// says.
    async fn within_upload<F: Future>(
        &self,
        progress: &UploadProgress,
        exchange: F,
    ) -> Result<F::Output, Elapsed> {
        let limit = self.limits.request_timeout;
        let mut exchange = std::pin::pin!(exchange);
        let mut deadline = self.clock.deadline(Instant::now() + limit);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            while Pin::new(&mut deadline).poll(cx).is_ready() {
                let at = progress.last_part() + limit;
                if at <= Instant::now() {
                    return Poll::Ready(Err(Elapsed));
                }
                deadline.reset(at);
            }
            Poll::Pending
        })
        .await
    }

    /// Notes on `answer` who served it, for the access log (only when
    /// there is one).
    fn note_served(&self, answer: &mut Response<ClientBody>, served: Served) {
        if self.shared.access_log.is_on() {
            answer.extensions_mut().insert(served);
        }
    }

    /// The headers every attempt sends: the client's, less hop-by-hop
    /// headers and any state cookie of its own, with `Host` (the
    /// authority the request names, if it names one: HTTP/2 clients send
    /// one instead) and the `X-Forwarded-` headers;
    /// and whether they have a `Host` (a client that sent neither leaves
    /// it to [`Self::member_request`]); or what is wrong with the request's
    /// `Host` ([`host_fault`]).
    fn member_headers(
        &self,
        parts: &mut http::request::Parts,
        forwarded_for: HeaderValue,
    ) -> Result<(HeaderMap, bool), &'static str> {
        let mut headers = std::mem::take(&mut parts.headers);
        // A client that takes trailers (gRPC's do) says so to an HTTP/2
        // member too: the one value of TE that HTTP/2 allows.
        let trailers = self.pool.http2() && takes_trailers(&headers);
        let mut host = strip(&mut headers).host;
        if let Some(fault) = host_fault(parts.version, host, &headers) {
            return Err(fault);
        }
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        // A request that names its authority (an HTTP/2 one, or HTTP/1.1
        // in absolute form) goes to the member with that as its `Host`,
        // whatever `Host` it had (RFC 9112, 3.2.2; RFC 9113, 8.3.1), so the
        // member answers for the site the gateway took it to be for.
        if let Some(authority) = parts.uri.authority()
            && let Ok(value) = HeaderValue::from_str(host_of(authority))
        {
            headers.insert(header::HOST, value);
            host = true;
        }
        headers.append(X_FORWARDED_FOR, forwarded_for);
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.tls { "https" } else { "http" }),
        );
        Ok((headers, host))
    }

    /// The request to `member`: origin-form, with the client's `Host` (the
    /// member's address when `headers` have none: `host` says).
    fn member_request(
        &self,
        parts: &http::request::Parts,
        (mut headers, host): (HeaderMap, bool),
        member: &Member,
        handoff: Option<&Bytes>,
        body: MemberBody,
    ) -> MemberRequest {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        if !host && let Ok(value) = HeaderValue::from_str(member.authority.as_str()) {
            headers.insert(header::HOST, value);
        }
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.version_mut() = Version::HTTP_11;
        *request.uri_mut() = http::Uri::from(path);
        *request.headers_mut() = headers;
        if let Some(state) = handoff
            && let Ok(value) = HeaderValue::from_bytes(state)
        {
            request.headers_mut().insert(STATE, value);
        }
        Box::new(request)
    }

    /// The member switched protocols: its 101 goes to the client (as 200,
    /// without the HTTP/1.1 upgrade headers, to an extended CONNECT), and
    /// once both sides are handed over, the bytes are copied both ways
    /// until either side closes. The member counts the tunnel as an open
    /// session meanwhile.
    #[cold]
    fn tunnel(
        &self,
        mut response: Response<Incoming>,
        lease: Lease,
        client: hyper::upgrade::OnUpgrade,
        extended_connect: bool,
        stream: Option<OpenStream>,
    ) -> Response<ClientBody> {
        let member = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        answer_in_own_version(&mut parts);
        // A 101's `Connection` and `Upgrade` go on to the client.
        parts.headers.remove(STATE);
        if extended_connect {
            parts.status = StatusCode::OK;
            for name in [
                header::CONNECTION,
                header::UPGRADE,
                header::SEC_WEBSOCKET_ACCEPT,
                header::CONTENT_LENGTH,
            ] {
                parts.headers.remove(name);
            }
        }
        let pool = self.pool.handle().clone();
        tokio::spawn(async move {
            let lease = lease;
            // An HTTP/2 stream carrying the tunnel is open while it lasts.
            let _stream = stream;
            match tokio::try_join!(client, member) {
                Ok((client, member)) => {
                    let (mut client, mut member) = (TokioIo::new(client), TokioIo::new(member));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut member).await {
                        debug!(%pool, pe_id = %lease.member().id, error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => {
                    lease.fail();
                    debug!(%pool, error = %e, "upgrade not completed");
                }
            }
        });
        Response::from_parts(parts, Either::Right(Full::new(Bytes::new())))
    }

    fn set_affinity_cookie(&self, headers: &mut HeaderMap, session: u128, member: PoolElementId) {
        let secure = if self.tls { "; Secure" } else { "" };
        let value = AffinityCookie::value(session, member);
        let cookie = format!("{AFFINITY_COOKIE}={value}; Path=/; HttpOnly{secure}");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }

    /// Passes the member's response on: takes its state cookie, binds the
    /// session, and sets the affinity cookie on a new cookie session (and
    /// again when the session moved to another member).
    fn respond(
        &self,
        response: Response<Incoming>,
        released: Released,
        key: Option<SessionKey>,
        was: Option<PoolElementId>,
        cookie_names: Option<PoolElementId>,
    ) -> Response<ClientBody> {
        let (mut parts, body) = response.into_parts();
        answer_in_own_version(&mut parts);
        let stripped = strip(&mut parts.headers);
        let state = stripped.state.map(|v| Bytes::copy_from_slice(v.as_bytes()));
        let member = released.lease.member().id;
        if self.affinity != Affinity::None {
            let starts = state.is_some() || stripped.set_cookie;
            let kept = match key {
                Some(key) if was.is_some() || starts => {
                    let kept = self
                        .pool
                        .sessions
                        .bind(key, member, was, state, Instant::now());
                    // The cookie names the session's member again when the
                    // session moved (or the cookie named none).
                    if let SessionKey::Cookie(id) = key
                        && kept
                        && cookie_names != Some(member)
                    {
                        self.set_affinity_cookie(&mut parts.headers, id, member);
                    }
                    kept
                }
                None if starts => {
                    let id: u128 = rand::random();
                    let kept = self.pool.sessions.bind(
                        SessionKey::Cookie(id),
                        member,
                        None,
                        state,
                        Instant::now(),
                    );
                    if kept {
                        self.set_affinity_cookie(&mut parts.headers, id, member);
                    }
                    kept
                }
                _ => true,
            };
            if !kept {
                self.shared.limit_hit("session_table", self.pool.handle());
            }
        }
        Response::from_parts(
            parts,
            Either::Left(OnEnd::new(
                IdleLimit::new(body, self.limits.answer_idle_timeout, &self.clock),
                released,
            )),
        )
    }
}

/// A proxy answers in its own HTTP version, not its member's (RFC 9110,
/// 6.2): a member's HTTP/1.0 answer goes to an HTTP/1.1 client as
/// HTTP/1.1 (its body chunked when the member ended it by closing), so
/// the client keeps its connection. hyper writes HTTP/1.0 to a client
/// that asked in it, and ignores the version over HTTP/2.
fn answer_in_own_version(parts: &mut http::response::Parts) {
    parts.version = Version::HTTP_11;
}

/// Sends `request` on `members` to `member` at `target`, at `sending`;
/// its answer's response time is recorded for the member.
async fn exchange(
    members: &Arc<MemberHttp>,
    member: &Member,
    target: Target,
    request: MemberRequest,
    sending: Instant,
) -> Exchanged {
    let sent = members.send(target, request).await;
    if sent.is_ok() {
        let at = Instant::now();
        member.record_response_time(at - sending, at.into_std());
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        size_of::<R>()
    }

    #[test]
    fn a_request_future_stays_small() {
        // hyper writes it into place for every request, into a slot that
        // with many connections is out of the cache: each 64 bytes is a
        // cache line written cold (docs/performance.md, "Counting instead
        // of timing"). 1,840 bytes when this was written; 4,352 before.
        let size = returned_size(HttpProxy::handle);
        assert!(size <= 2_048, "a request's future is {size} bytes");
    }

    #[test]
    fn an_authority_loses_its_user_information_as_a_host() {
        let host = |a: &'static str| host_of(&http::uri::Authority::from_static(a)).to_owned();
        assert_eq!(host("example.org:8080"), "example.org:8080");
        assert_eq!(host("user:secret@example.org"), "example.org");
        assert_eq!(host("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn a_request_has_one_host_and_an_http11_one_has_one_at_least() {
        let fault = |version, headers: &mut HeaderMap| {
            let host = strip(headers).host;
            host_fault(version, host, headers)
        };
        let mut headers = HeaderMap::new();
        headers.append(header::ACCEPT, HeaderValue::from_static("a/b"));
        headers.append(header::ACCEPT, HeaderValue::from_static("c/d"));
        assert_eq!(
            fault(Version::HTTP_11, &mut headers),
            Some("an HTTP/1.1 request needs a Host header\n")
        );
        assert_eq!(fault(Version::HTTP_10, &mut headers), None);
        assert_eq!(fault(Version::HTTP_2, &mut headers), None);
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        assert_eq!(fault(Version::HTTP_11, &mut headers), None);
        headers.append(header::HOST, HeaderValue::from_static("b"));
        for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(
                fault(version, &mut headers),
                Some("a request has one Host header, not more\n")
            );
        }
    }

    #[test]
    fn the_affinity_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; hapool=00ff"));
        assert_eq!(
            affinity_cookie(&headers),
            Some(AffinityCookie {
                session: 0xff,
                member: None
            })
        );
        let value = AffinityCookie::value(0xabc, PoolElementId(0x101));
        assert_eq!(value, format!("{:032x}-00000101", 0xabc));
        let mut headers = HeaderMap::new();
        let cookie = format!("x=2; hapool={value}");
        headers.append(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        assert_eq!(
            affinity_cookie(&headers),
            Some(AffinityCookie {
                session: 0xabc,
                member: Some(PoolElementId(0x101))
            })
        );
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("hapoolx=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("hapool=zz"));
        headers.append(header::COOKIE, HeaderValue::from_static("hapool=ff-zz"));
        assert_eq!(affinity_cookie(&headers), None);
    }

    fn parts(
        method: Method,
        version: Version,
        headers: &[(&str, &'static str)],
    ) -> http::request::Parts {
        let mut request = Request::builder()
            .method(method)
            .version(version)
            .uri("/chat");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_upgrade_is_asked_by_both_headers_over_http_1_1() {
        let websocket = Some(UpgradeAsked {
            protocol: HeaderValue::from_static("websocket"),
            extended_connect: false,
        });
        let upgrade = ("upgrade", "websocket");
        let connection = ("connection", "keep-alive, Upgrade");
        assert_eq!(
            upgrade_asked(&parts(Method::GET, Version::HTTP_11, &[upgrade])),
            None
        );
        assert_eq!(
            upgrade_asked(&parts(
                Method::GET,
                Version::HTTP_11,
                &[upgrade, connection]
            )),
            websocket
        );
        assert_eq!(
            upgrade_asked(&parts(Method::GET, Version::HTTP_2, &[upgrade, connection])),
            None
        );
        assert_eq!(
            upgrade_asked(&parts(Method::GET, Version::HTTP_11, &[connection])),
            None
        );
    }

    #[test]
    fn an_upgrade_is_asked_over_http_2_by_connect_with_a_protocol() {
        let mut connect = parts(Method::CONNECT, Version::HTTP_2, &[]);
        assert_eq!(
            upgrade_asked(&connect),
            None,
            "a plain CONNECT asks no upgrade"
        );
        connect
            .extensions
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert_eq!(
            upgrade_asked(&connect),
            Some(UpgradeAsked {
                protocol: HeaderValue::from_static("websocket"),
                extended_connect: true,
            })
        );
        let key = websocket_key();
        assert_eq!(key.len(), 24);
        assert_ne!(key, websocket_key());
    }

    #[test]
    fn hop_by_hop_headers_and_the_state_header_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Other"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-other", HeaderValue::from_static("2"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(STATE_HEADER, HeaderValue::from_static("cart=3"));
        let found = strip(&mut headers);
        assert_eq!(
            found,
            Stripped {
                state: Some(HeaderValue::from_static("cart=3")),
                ..Stripped::default()
            }
        );
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::ACCEPT));

        // A member's usual answer: only `Connection` goes.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        assert_eq!(strip(&mut headers), Stripped::default());
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::CONTENT_LENGTH));

        // An answer with a length and a transfer coding: the coding wins,
        // and neither goes on.
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert_eq!(strip(&mut headers), Stripped::default());
        assert!(headers.is_empty(), "{headers:?}");
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));

        // An answer that sets a cookie: found, and it stays, unless
        // `Connection` names it.
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("id=1"));
        let found = strip(&mut headers);
        assert!(found.set_cookie, "{found:?}");
        assert_eq!(headers.len(), 2, "{headers:?}");
        headers.insert(header::CONNECTION, HeaderValue::from_static("set-cookie"));
        assert_eq!(strip(&mut headers), Stripped::default());
        assert_eq!(headers.len(), 1, "{headers:?}");

        // A client's usual request: nothing goes; its `Host` is found.
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("example.com"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let found = strip(&mut headers);
        assert_eq!(
            found,
            Stripped {
                host: true,
                ..Stripped::default()
            }
        );
        assert_eq!(headers.len(), 2, "{headers:?}");

        // A `Host` that `Connection` names goes, and counts as not there.
        headers.insert(header::CONNECTION, HeaderValue::from_static("host"));
        assert_eq!(strip(&mut headers), Stripped::default());
        assert_eq!(headers.len(), 1, "{headers:?}");
    }
}
