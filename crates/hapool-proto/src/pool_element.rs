//! A pool element's side of ASAP, without I/O: register with one registrar
//! of a list, answer its keep-alives, re-register on a timer and when the
//! policy values change, move to the next registrar at once when the
//! current one fails or refuses, and deregister on stop.
//!
//! # Call order
//!
//! The driver calls [`PeSession::handle_start`] once, then reports what
//! happened to the connection it was asked to open
//! ([`PeSession::handle_connected`], [`PeSession::handle_connect_failed`],
//! [`PeSession::handle_disconnected`]) and every message on it
//! ([`PeSession::handle_message`]). After each call it drains
//! [`PeSession::poll_output`], and it calls [`PeSession::handle_timeout`] at
//! [`PeSession::poll_timeout`]. There is at most one connection at a time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hapool_wire::{AsapMessage, CauseCode, Policy, PoolElement, PoolHandle};

/// The shortest re-registration interval a short registration life leads
/// to.
const MIN_REREGISTRATION_INTERVAL: Duration = Duration::from_millis(100);

/// How a pool element registers.
#[derive(Clone, Debug)]
pub struct PeSessionConfig {
    /// Registrars to use, in order of preference.
    pub registrars: Vec<SocketAddr>,
    /// The pool to join.
    pub pool_handle: PoolHandle,
    /// The PE: its id, transport, policy and registration life.
    pub element: PoolElement,
    /// How often to re-register without a change; a third of the
    /// registration life when that is shorter.
    pub reregistration_interval: Duration,
    /// How long to wait for a connection and for a registration response.
    pub request_timeout: Duration,
    /// How long to wait before going round the list again when no registrar
    /// took the registration.
    pub retry_interval: Duration,
    /// A shared secret that the registrars' rules may require.
    pub auth_token: Option<Bytes>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeOutput {
    /// Open a connection to this registrar (closing any other).
    Connect(SocketAddr),
    /// Send this message on the open connection.
    Send(AsapMessage),
    /// Close the connection.
    Close,
}

/// Where the PE stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeStatus {
    /// Not started, or waiting to go round the registrar list again.
    Idle,
    /// Opening a connection to this registrar.
    Connecting(SocketAddr),
    /// Waiting for this registrar's answer to the registration.
    Registering(SocketAddr),
    /// Registered with this registrar.
    Registered(SocketAddr),
    /// Stopped (deregistered).
    Stopped,
}

/// A notable change, for logs and for the driver's own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeEvent {
    /// Registered with this registrar.
    Registered(SocketAddr),
    /// This registrar refused the registration.
    Refused(SocketAddr, CauseCode),
    /// The connection to this registrar failed or ended.
    Lost(SocketAddr),
}

/// The pool element state machine. See the module documentation.
#[derive(Debug)]
pub struct PeSession {
    config: PeSessionConfig,
    status: PeStatus,
    /// Index in the list of the registrar in use (or tried last).
    current: usize,
    /// Registrars tried since the last success.
    failures: usize,
    /// When the pending step (connect, response, retry, re-registration)
    /// runs out.
    deadline: Option<Instant>,
    /// When the answer to a re-registration is due: a registrar that does
    /// not answer in time counts as failed, even if its connection looks
    /// open (a host that died without closing it).
    answer_due: Option<Instant>,
    output: VecDeque<PeOutput>,
    events: VecDeque<PeEvent>,
}

impl PeSession {
    /// A session that has not started.
    pub fn new(config: PeSessionConfig) -> Self {
        Self {
            config,
            status: PeStatus::Idle,
            current: 0,
            failures: 0,
            deadline: None,
            answer_due: None,
            output: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The configuration, with the policy values in force.
    pub fn config(&self) -> &PeSessionConfig {
        &self.config
    }

    /// Where the PE stands.
    pub fn status(&self) -> &PeStatus {
        &self.status
    }

    /// Starts with the first registrar of the list.
    pub fn handle_start(&mut self, now: Instant) {
        self.connect(0, now);
    }

    fn connect(&mut self, index: usize, now: Instant) {
        if self.config.registrars.is_empty() {
            self.status = PeStatus::Idle;
            self.deadline = Some(now + self.config.retry_interval);
            return;
        }
        self.current = index % self.config.registrars.len();
        let registrar = self.config.registrars[self.current];
        self.status = PeStatus::Connecting(registrar);
        self.deadline = Some(now + self.config.request_timeout);
        self.output.push_back(PeOutput::Connect(registrar));
    }

    /// The current registrar failed: the next one is tried at once, or,
    /// after a whole round of failures, after the retry interval.
    fn next_registrar(&mut self, now: Instant) {
        if let PeStatus::Connecting(r) | PeStatus::Registering(r) | PeStatus::Registered(r) =
            self.status
        {
            self.events.push_back(PeEvent::Lost(r));
        }
        self.output.push_back(PeOutput::Close);
        self.answer_due = None;
        self.failures += 1;
        if self.failures >= self.config.registrars.len().max(1) {
            self.failures = 0;
            self.status = PeStatus::Idle;
            self.deadline = Some(now + self.config.retry_interval);
        } else {
            self.connect(self.current + 1, now);
        }
    }

    /// How often the PE re-registers: as configured, and at least three
    /// times in a registration life. The registrars other than its home
    /// renew their copies only at its registrations; if the home stalls
    /// and is taken over, the new home gives the PE one life from the
    /// takeover, and a PE that re-registered less often than its life would
    /// find another registrar only after its copies ran out.
    fn reregistration_interval(&self) -> Duration {
        let life = Duration::from_millis(u64::from(self.config.element.registration_life));
        let by_life = (life / 3).max(MIN_REREGISTRATION_INTERVAL);
        self.config.reregistration_interval.min(by_life)
    }

    fn registration(&self) -> AsapMessage {
        AsapMessage::Registration {
            pool_handle: self.config.pool_handle.clone(),
            pool_element: self.config.element.clone(),
            auth_token: self.config.auth_token.clone(),
        }
    }

    /// The connection asked for is open: the registration goes out.
    pub fn handle_connected(&mut self, now: Instant) {
        if let PeStatus::Connecting(r) = self.status {
            self.status = PeStatus::Registering(r);
            self.deadline = Some(now + self.config.request_timeout);
            self.output.push_back(PeOutput::Send(self.registration()));
        }
    }

    /// The connection asked for could not be opened.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if matches!(self.status, PeStatus::Connecting(_)) {
            self.next_registrar(now);
        }
    }

    /// The connection ended.
    pub fn handle_disconnected(&mut self, now: Instant) {
        if matches!(
            self.status,
            PeStatus::Connecting(_) | PeStatus::Registering(_) | PeStatus::Registered(_)
        ) {
            self.next_registrar(now);
        }
    }

    /// A message from the registrar.
    pub fn handle_message(&mut self, message: AsapMessage, now: Instant) {
        match (&self.status, message) {
            (
                PeStatus::Registering(r) | PeStatus::Registered(r),
                AsapMessage::RegistrationResponse { reject, error, .. },
            ) => {
                let r = *r;
                if reject {
                    let cause = error
                        .and_then(|e| e.causes.first().map(|c| c.code))
                        .unwrap_or(CauseCode::INVALID_VALUES);
                    self.events.push_back(PeEvent::Refused(r, cause));
                    self.next_registrar(now);
                } else if matches!(self.status, PeStatus::Registered(_)) {
                    self.answer_due = None;
                } else {
                    self.failures = 0;
                    self.status = PeStatus::Registered(r);
                    self.deadline = Some(now + self.reregistration_interval());
                    self.events.push_back(PeEvent::Registered(r));
                }
            }
            (
                PeStatus::Registering(_) | PeStatus::Registered(_),
                AsapMessage::EndpointKeepAlive { pool_handle, .. },
            ) => {
                // The registrar on this connection is the home, whether or
                // not it says it took the PE over (H bit).
                self.output
                    .push_back(PeOutput::Send(AsapMessage::EndpointKeepAliveAck {
                        pool_handle,
                        pe_id: self.config.element.id,
                    }));
            }
            _ => {}
        }
    }

    /// The policy values (such as the load) changed: re-register now.
    pub fn set_policy(&mut self, policy: Policy, now: Instant) {
        self.config.element.policy = policy;
        if matches!(self.status, PeStatus::Registered(_)) {
            self.reregister(now);
        }
    }

    fn reregister(&mut self, now: Instant) {
        self.output.push_back(PeOutput::Send(self.registration()));
        self.deadline = Some(now + self.reregistration_interval());
        self.answer_due
            .get_or_insert(now + self.config.request_timeout);
    }

    /// Deregisters (when registered) and stops.
    pub fn stop(&mut self) {
        if matches!(self.status, PeStatus::Registered(_)) {
            self.output
                .push_back(PeOutput::Send(AsapMessage::Deregistration {
                    pool_handle: self.config.pool_handle.clone(),
                    pe_id: self.config.element.id,
                }));
        }
        self.output.push_back(PeOutput::Close);
        self.status = PeStatus::Stopped;
        self.deadline = None;
        self.answer_due = None;
    }

    /// Time has come to `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.answer_due.is_some_and(|d| d <= now) {
            self.next_registrar(now);
            return;
        }
        if self.deadline.is_none_or(|d| d > now) {
            return;
        }
        match self.status {
            PeStatus::Idle => self.connect(self.current + 1, now),
            PeStatus::Connecting(_) | PeStatus::Registering(_) => self.next_registrar(now),
            PeStatus::Registered(_) => self.reregister(now),
            PeStatus::Stopped => self.deadline = None,
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<PeOutput> {
        self.output.pop_front()
    }

    /// The next notable change.
    pub fn poll_event(&mut self) -> Option<PeEvent> {
        self.events.pop_front()
    }

    /// When [`PeSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.answer_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
