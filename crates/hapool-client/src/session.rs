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
//!   unreachable, connects to another PE (the business card's first, then
//!   the pool policy's order), sends COOKIE_ECHO with the latest cookie
//!   before anything else, and sends again the data not yet answered (so a
//!   request/response protocol sees no failure; delivery is at least once).
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            max_cookie: 64 << 10,
            connect_timeout: Duration::from_secs(1),
            failover_attempts: 8,
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
    /// The PU failed over to this PE: the state its previous PE last sent.
    /// It comes before any data.
    CookieEcho(Bytes),
    /// Application data.
    Data(Bytes),
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

    /// The next thing the PU sent; `None` when it closed the session. A
    /// cookie echo larger than the configured limit is dropped with a
    /// warning (the session goes on with fresh state).
    pub async fn recv(&mut self) -> Result<Option<Incoming>, ClientError> {
        loop {
            match self.conn.recv().await? {
                None => return Ok(None),
                Some(SessionFrame::Data(data)) => return Ok(Some(Incoming::Data(data))),
                Some(SessionFrame::Control(AsapMessage::CookieEcho { cookie })) => {
                    if cookie.len() > self.config.max_cookie {
                        warn!(
                            length = cookie.len(),
                            max = self.config.max_cookie,
                            "cookie echo too large; ignored"
                        );
                        continue;
                    }
                    return Ok(Some(Incoming::CookieEcho(cookie)));
                }
                Some(SessionFrame::Control(other)) => {
                    warn!(message = ?other.message_type(), "control message a PE does not take; ignored");
                }
            }
        }
    }

    /// Sends application data.
    pub async fn send(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.conn.send(&SessionFrame::Data(data)).await
    }

    /// Sends the session's state as a COOKIE: the PU hands it to the next
    /// PE if this one fails.
    pub async fn send_cookie(&mut self, cookie: Bytes) -> Result<(), ClientError> {
        if cookie.len() > self.config.max_cookie {
            return Err(ClientError::CookieTooLarge {
                length: cookie.len(),
                max: self.config.max_cookie,
            });
        }
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
            match self.conn.recv().await {
                Ok(Some(SessionFrame::Data(data))) => {
                    self.unanswered.clear();
                    return Ok(data);
                }
                Ok(Some(SessionFrame::Control(AsapMessage::Cookie { cookie }))) => {
                    if cookie.len() > self.config.max_cookie {
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
    let mut candidates: Vec<PoolElement> = preferred.to_vec();
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
