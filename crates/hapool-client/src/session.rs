//! Sessions between a pool user and a pool element that survive the pool
//! element's death: state cookies, business cards and failover.
//!
//! Both sides speak [`SessionFrame`]s on one TCP connection (see
//! `hapool_wire::SessionFrame` for the layout): application data, and the
//! ASAP control messages that travel between a PU and a PE.
//!
//! - [`ElementSession`] is the PE's side of one accepted connection: it
//!   receives data, or first a COOKIE_ECHO when the PU failed over to it,
//!   and sends data, COOKIE (its state, whenever it changes) and
//!   BUSINESS_CARD (the PEs that should take its sessions over).
//! - [`PoolSession`] is the PU's side: `send` and `recv` on a pool. It keeps
//!   the latest cookie and business card; when the PE fails it reports it
//!   unreachable, connects to another PE (the business card's first, while
//!   they are still in the handlespace, then the pool policy's order),
//!   sends COOKIE_ECHO with the latest cookie
//!   before anything else, and sends again the data not yet answered (so a
//!   request/response protocol sees no failure; delivery is at least once).
//!   A PE fails when its connection breaks or ends, and also when it is
//!   no longer registered while the session waits for its answer
//!   ([`SessionConfig::liveness_check`]): a hung process or a machine that
//!   died without a word breaks nothing, but its home registrar removes it.
//!   [`PoolSession::events`] says when a failover started and finished.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hapool_wire::{AsapMessage, PoolElement, PoolElementId, PoolHandle, SessionFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;
use tracing::{info, warn};

use crate::{ClientError, PoolUser};

/// Limits of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest frame accepted (data or control), bytes. Default 1 MiB.
    pub max_frame: usize,
    /// Largest state cookie, bytes. Default 64 KiB. A larger cookie is
    /// refused with [`ClientError::CookieTooLarge`] when sent, and ignored
    /// (with a warning) when received.
    pub max_cookie: usize,
    /// How long to wait for a PE to accept a connection. Default 1 s.
    pub connect_timeout: Duration,
    /// PEs to try in one failover before giving up. Default 8.
    pub failover_attempts: usize,
    /// While data sent to the PE is unanswered, how often the pool user
    /// asks the registrars whether the PE is still registered; once it is
    /// not, the session fails over. A PE whose process hangs or whose
    /// machine dies without a word breaks no connection (the kernel of a
    /// hung process still accepts and acknowledges; a dead machine sends
    /// nothing), but its home registrar removes it when it stops answering
    /// keep-alives. A PE that is slow but registered is waited for. `None`:
    /// wait for the connection alone. Default 1 s.
    pub liveness_check: Option<Duration>,
    /// The pool's cookie key: when set, a PE signs every cookie it sends
    /// (HMAC-SHA-256, the tag appended) and refuses an echoed cookie whose
    /// tag does not match, so a PU cannot forge or alter session state.
    /// Every PE of the pool needs the same key; PUs never need it.
    pub cookie_key: Option<CookieKey>,
}

/// A pool's key for signing state cookies.
#[derive(Clone)]
pub struct CookieKey(ring::hmac::Key);

impl CookieKey {
    /// A key from secret bytes (at least 16; 32 random bytes are best).
    pub fn new(secret: &[u8]) -> Result<Self, ClientError> {
        if secret.len() < 16 {
            return Err(ClientError::WeakKey(secret.len()));
        }
        Ok(Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret)))
    }

    /// `state` with its tag appended.
    fn sign(&self, state: &[u8]) -> Bytes {
        let tag = ring::hmac::sign(&self.0, state);
        let mut signed = BytesMut::with_capacity(state.len() + TAG_LEN);
        signed.extend_from_slice(state);
        signed.extend_from_slice(tag.as_ref());
        signed.freeze()
    }

    /// The state inside a signed cookie, when its tag is right.
    fn open(&self, cookie: &Bytes) -> Option<Bytes> {
        let split = cookie.len().checked_sub(TAG_LEN)?;
        ring::hmac::verify(&self.0, &cookie[..split], &cookie[split..]).ok()?;
        Some(cookie.slice(..split))
    }
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// Bytes of an HMAC-SHA-256 tag.
const TAG_LEN: usize = 32;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            max_cookie: 64 << 10,
            connect_timeout: Duration::from_secs(1),
            failover_attempts: 8,
            liveness_check: Some(Duration::from_secs(1)),
            cookie_key: None,
        }
    }
}

/// One TCP connection speaking session frames.
struct FrameConnection {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    buffer: BytesMut,
    max_frame: usize,
}

impl FrameConnection {
    fn new(stream: TcpStream, max_frame: usize) -> Self {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        Self {
            reader,
            writer,
            buffer: BytesMut::with_capacity(4096),
            max_frame,
        }
    }

    async fn send(&mut self, frame: &SessionFrame) -> Result<(), ClientError> {
        let bytes = frame
            .to_bytes()
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        self.writer
            .write_all(&bytes)
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))
    }

    /// The next frame; `None` when the peer closed the connection.
    async fn recv(&mut self) -> Result<Option<SessionFrame>, ClientError> {
        loop {
            if let Some(frame) = SessionFrame::decode(&mut self.buffer, self.max_frame)
                .map_err(|e| ClientError::Connection(format!("malformed session frame: {e}")))?
            {
                return Ok(Some(frame));
            }
            let n = self
                .reader
                .read_buf(&mut self.buffer)
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            if n == 0 {
                return Ok(None);
            }
        }
    }
}

/// What a pool element receives on a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The PU failed over to this PE: the state its previous PE last sent
    /// (checked against the pool's cookie key when there is one). It comes
    /// before any data.
    CookieEcho(Bytes),
    /// The PU echoed a cookie that this PE refuses: too large, or its
    /// signature does not match the pool's key. The session goes on with
    /// fresh state.
    CookieRefused(CookieRefusal),
    /// The PU is itself a PE of a pool: the pool, and its PEs, through
    /// which this PE can reach the PU's side again.
    BusinessCard {
        /// The PU's pool.
        pool: PoolHandle,
        /// Its PEs, in order of preference.
        elements: Vec<PoolElement>,
    },
    /// Application data.
    Data(Bytes),
}

/// Why an echoed cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieRefusal {
    /// Longer than the session's limit.
    TooLarge {
        /// Its length.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// Not signed with the pool's key (forged, altered, or from another
    /// pool).
    BadSignature,
}

/// The pool element's side of one session.
pub struct ElementSession {
    conn: FrameConnection,
    config: SessionConfig,
}

impl ElementSession {
    /// A session on a connection this PE accepted.
    pub fn new(stream: TcpStream, config: SessionConfig) -> Self {
        Self {
            conn: FrameConnection::new(stream, config.max_frame),
            config,
        }
    }

    /// The next thing the PU sent; `None` when it closed the session.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, ClientError> {
        loop {
            match self.conn.recv().await? {
                None => return Ok(None),
                Some(SessionFrame::Data(data)) => return Ok(Some(Incoming::Data(data))),
                Some(SessionFrame::Control(AsapMessage::CookieEcho { cookie })) => {
                    return Ok(Some(self.check_echo(&cookie)));
                }
                Some(SessionFrame::Control(AsapMessage::BusinessCard {
                    pool_handle,
                    elements,
                    ..
                })) => {
                    return Ok(Some(Incoming::BusinessCard {
                        pool: pool_handle,
                        elements,
                    }));
                }
                Some(SessionFrame::Control(other)) => {
                    warn!(message = ?other.message_type(), "control message a PE does not take; ignored");
                }
            }
        }
    }

    /// The state in an echoed cookie, or why it is refused.
    fn check_echo(&self, cookie: &Bytes) -> Incoming {
        let max = self.config.max_cookie + self.config.cookie_key.as_ref().map_or(0, |_| TAG_LEN);
        if cookie.len() > max {
            warn!(length = cookie.len(), max, "cookie echo too large; refused");
            return Incoming::CookieRefused(CookieRefusal::TooLarge {
                length: cookie.len(),
                max,
            });
        }
        match &self.config.cookie_key {
            None => Incoming::CookieEcho(cookie.clone()),
            Some(key) => match key.open(cookie) {
                Some(state) => Incoming::CookieEcho(state),
                None => {
                    warn!("echoed cookie not signed with the pool's key; refused");
                    Incoming::CookieRefused(CookieRefusal::BadSignature)
                }
            },
        }
    }

    /// Sends application data.
    pub async fn send(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.conn.send(&SessionFrame::Data(data)).await
    }

    /// Sends the session's state as a COOKIE (signed with the pool's key
    /// when there is one): the PU hands it to the next PE if this one
    /// fails.
    pub async fn send_cookie(&mut self, cookie: Bytes) -> Result<(), ClientError> {
        if cookie.len() > self.config.max_cookie {
            return Err(ClientError::CookieTooLarge {
                length: cookie.len(),
                max: self.config.max_cookie,
            });
        }
        let cookie = match &self.config.cookie_key {
            Some(key) => key.sign(&cookie),
            None => cookie,
        };
        self.conn
            .send(&SessionFrame::Control(AsapMessage::Cookie { cookie }))
            .await
    }

    /// Sends a BUSINESS_CARD: the PEs of `pool` that should take this
    /// session over if this PE fails, in order of preference (the last
    /// will).
    pub async fn send_business_card(
        &mut self,
        pool: PoolHandle,
        elements: Vec<PoolElement>,
    ) -> Result<(), ClientError> {
        self.conn
            .send(&SessionFrame::Control(AsapMessage::BusinessCard {
                pool_handle: pool,
                policy: None,
                elements,
            }))
            .await
    }
}

/// What happened to a pool session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The PE failed; the session looks for another.
    FailoverStarted {
        /// The PE that failed.
        from: PoolElementId,
    },
    /// The session goes on with another PE.
    FailoverFinished {
        /// The new PE.
        to: PoolElementId,
        /// Whether the state was handed over (a cookie was echoed).
        cookie_echoed: bool,
    },
}

/// The pool user's side of a session with a pool. See the module
/// documentation.
pub struct PoolSession {
    pu: Arc<PoolUser>,
    pool: PoolHandle,
    config: SessionConfig,
    element: PoolElement,
    conn: FrameConnection,
    cookie: Option<Bytes>,
    last_will: Vec<PoolElement>,
    unanswered: Vec<Bytes>,
    events: VecDeque<SessionEvent>,
}

impl PoolSession {
    /// Opens a session with a PE of `pool`, chosen by the pool's policy.
    pub async fn open(
        pu: Arc<PoolUser>,
        pool: PoolHandle,
        config: SessionConfig,
    ) -> Result<Self, ClientError> {
        let (element, conn) = connect_first(&pu, &pool, &config, &[], None).await?;
        info!(pool = %pool, pe_id = %element.id, "session opened");
        Ok(Self {
            pu,
            pool,
            config,
            element,
            conn,
            cookie: None,
            last_will: Vec::new(),
            unanswered: Vec::new(),
            events: VecDeque::new(),
        })
    }

    /// The PE the session is with now.
    pub fn element(&self) -> &PoolElement {
        &self.element
    }

    /// The latest state cookie the PE sent.
    pub fn cookie(&self) -> Option<&Bytes> {
        self.cookie.as_ref()
    }

    /// What happened since the last call.
    pub fn events(&mut self) -> Vec<SessionEvent> {
        self.events.drain(..).collect()
    }

    /// Tells the PE that this PU is itself a PE of `pool` (a
    /// BUSINESS_CARD), so that the PE can reach this side again through the
    /// pool if this side's element fails and comes back elsewhere.
    pub async fn send_business_card(
        &mut self,
        pool: PoolHandle,
        elements: Vec<PoolElement>,
    ) -> Result<(), ClientError> {
        let card = AsapMessage::BusinessCard {
            pool_handle: pool,
            policy: None,
            elements,
        };
        if self
            .conn
            .send(&SessionFrame::Control(card.clone()))
            .await
            .is_err()
        {
            self.fail_over().await?;
            self.conn.send(&SessionFrame::Control(card)).await?;
        }
        Ok(())
    }

    /// Sends data to the PE; when the PE fails, fails over first.
    pub async fn send(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.unanswered.push(data.clone());
        if self.conn.send(&SessionFrame::Data(data)).await.is_err() {
            self.fail_over().await?;
        }
        Ok(())
    }

    /// The next data from the PE. Cookies and business cards are taken on
    /// the way; when the PE fails, the session fails over and waits for
    /// the new PE's data.
    pub async fn recv(&mut self) -> Result<Bytes, ClientError> {
        loop {
            let frame = match self.config.liveness_check {
                Some(every) if !self.unanswered.is_empty() => {
                    match timeout(every, self.conn.recv()).await {
                        Ok(frame) => frame,
                        Err(_) => {
                            if self.element_gone().await {
                                self.fail_over().await?;
                            }
                            continue;
                        }
                    }
                }
                _ => self.conn.recv().await,
            };
            match frame {
                Ok(Some(SessionFrame::Data(data))) => {
                    self.unanswered.clear();
                    return Ok(data);
                }
                Ok(Some(SessionFrame::Control(AsapMessage::Cookie { cookie }))) => {
                    // A signed cookie carries its tag on top of the state.
                    if cookie.len() > self.config.max_cookie + TAG_LEN {
                        warn!(
                            length = cookie.len(),
                            max = self.config.max_cookie,
                            "cookie too large; ignored"
                        );
                    } else {
                        self.cookie = Some(cookie);
                    }
                }
                Ok(Some(SessionFrame::Control(AsapMessage::BusinessCard { elements, .. }))) => {
                    self.last_will = elements;
                }
                Ok(Some(SessionFrame::Control(other))) => {
                    warn!(message = ?other.message_type(), "control message a PU does not take; ignored");
                }
                Ok(None) | Err(_) => self.fail_over().await?,
            }
        }
    }

    /// Whether the registrars no longer list the PE the session waits on
    /// (not when they cannot be asked: then nothing is known).
    async fn element_gone(&self) -> bool {
        match self.pu.members(&self.pool).await {
            Ok(members) => !members.iter().any(|m| m.id == self.element.id),
            Err(ClientError::Refused(cause)) => {
                cause == hapool_wire::CauseCode::UNKNOWN_POOL_HANDLE
            }
            Err(_) => false,
        }
    }

    /// Replaces the failed PE: reports it, connects to the last will's
    /// PEs first and then to the policy's, echoes the cookie, and sends
    /// again what was not answered.
    async fn fail_over(&mut self) -> Result<(), ClientError> {
        let failed = self.element.id;
        warn!(pool = %self.pool, pe_id = %failed, "pool element failed; failing over");
        self.events
            .push_back(SessionEvent::FailoverStarted { from: failed });
        let _ = self.pu.report_unreachable(&self.pool, failed).await;
        let preferred: Vec<PoolElement> = self
            .last_will
            .iter()
            .filter(|e| e.id != failed)
            .cloned()
            .collect();
        let (element, mut conn) =
            connect_first(&self.pu, &self.pool, &self.config, &preferred, Some(failed)).await?;
        let cookie_echoed = match &self.cookie {
            Some(cookie) => {
                let echo = AsapMessage::CookieEcho {
                    cookie: cookie.clone(),
                };
                conn.send(&SessionFrame::Control(echo)).await?;
                true
            }
            None => false,
        };
        for data in &self.unanswered {
            conn.send(&SessionFrame::Data(data.clone())).await?;
        }
        info!(pool = %self.pool, from = %failed, to = %element.id, cookie_echoed, "failed over");
        self.events.push_back(SessionEvent::FailoverFinished {
            to: element.id,
            cookie_echoed,
        });
        self.element = element;
        self.conn = conn;
        Ok(())
    }
}

/// Connects to the first PE that accepts: `preferred` first, then the
/// pool's PEs in the order the registrar chose them, never `failed`. Each
/// PE that does not accept is reported unreachable.
async fn connect_first(
    pu: &PoolUser,
    pool: &PoolHandle,
    config: &SessionConfig,
    preferred: &[PoolElement],
    failed: Option<PoolElementId>,
) -> Result<(PoolElement, FrameConnection), ClientError> {
    pu.invalidate(pool);
    // The last will's PEs count while they are still in the handlespace
    // (when the registrars cannot be asked, they are tried anyway).
    let preferred: Vec<PoolElement> = match (preferred.is_empty(), pu.members(pool).await) {
        (false, Ok(members)) => preferred
            .iter()
            .filter(|p| members.iter().any(|m| m.id == p.id))
            .cloned()
            .collect(),
        _ => preferred.to_vec(),
    };
    let mut candidates: Vec<PoolElement> = preferred;
    for e in pu.resolve(pool).await.unwrap_or_default() {
        if !candidates.iter().any(|c| c.id == e.id) {
            candidates.push(e);
        }
    }
    candidates.retain(|e| Some(e.id) != failed);
    for element in candidates.into_iter().take(config.failover_attempts) {
        let Some(addr) = element.user_transport.socket_addr() else {
            continue;
        };
        match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((element, FrameConnection::new(stream, config.max_frame))),
            Ok(Err(_)) | Err(_) => {
                warn!(pool = %pool, pe_id = %element.id, %addr, "pool element unreachable");
                let _ = pu.report_unreachable(pool, element.id).await;
            }
        }
    }
    Err(ClientError::NoElement(pool.to_string()))
}
