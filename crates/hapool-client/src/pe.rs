//! A pool element: keeps a server registered in its pool.
//!
//! [`PeHandle::start`] spawns a task that drives the pool element state
//! machine ([`hapool_proto::PeSession`]): it connects to a registrar of the
//! list, registers, answers keep-alives, re-registers on a timer and when
//! the policy values (such as the load) change, moves to the next registrar
//! at once when its registrar fails, and deregisters on [`PeHandle::stop`].
//! The task only does the I/O; every decision is the state machine's, the
//! same one the cluster simulation runs.

use std::net::SocketAddr;
use std::time::Duration;

use hapool_proto::{PeEvent, PeOutput, PeSession, PeSessionConfig};
use hapool_wire::{AsapMessage, CauseCode, Policy, PoolElement, PoolElementId, PoolHandle};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::ClientError;
use crate::connection::{ClientTls, RegistrarConnection};

/// How a pool element registers.
#[derive(Clone, Debug)]
pub struct PeConfig {
    /// Registrars to use, in order of preference.
    pub registrars: Vec<SocketAddr>,
    /// The pool to join.
    pub pool_handle: PoolHandle,
    /// The PE: its transport, policy and registration life. An id of 0 is
    /// replaced by a random one.
    pub element: PoolElement,
    /// How often to re-register without a change. Default 10 s, or a
    /// third of the registration life when that is shorter.
    pub reregistration_interval: Duration,
    /// How long to wait for a TCP connection to a registrar. Default 1 s.
    pub connect_timeout: Duration,
    /// How long to wait for a registrar's answer. Default 2 s.
    pub request_timeout: Duration,
    /// How long to wait before trying the list again when no registrar
    /// answered or the registration was refused. Default 1 s.
    pub retry_interval: Duration,
    /// Reach the registrars over TLS (their TLS port); plain TCP when absent.
    pub tls: Option<ClientTls>,
    /// A shared secret sent with every registration, for registrars whose
    /// rules name tokens. It travels in the clear unless `tls` is set.
    pub auth_token: Option<bytes::Bytes>,
}

impl PeConfig {
    /// The defaults for `element` in `pool_handle`.
    pub fn new(registrars: Vec<SocketAddr>, pool_handle: PoolHandle, element: PoolElement) -> Self {
        Self {
            registrars,
            pool_handle,
            element,
            reregistration_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            retry_interval: Duration::from_secs(1),
            tls: None,
            auth_token: None,
        }
    }
}

/// Where a pool element stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeState {
    /// Looking for a registrar.
    Connecting,
    /// Registered with this registrar.
    Registered {
        /// The registrar.
        registrar: SocketAddr,
    },
    /// The last registration was refused (it is retried).
    Refused(CauseCode),
    /// Deregistered and stopped.
    Stopped,
}

enum Command {
    SetPolicy(Policy),
    Stop(oneshot::Sender<()>),
}

/// A running pool element.
pub struct PeHandle {
    id: PoolElementId,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<PeState>,
    task: JoinHandle<()>,
}

impl PeHandle {
    /// Starts keeping the PE registered.
    pub fn start(mut config: PeConfig) -> Self {
        if config.element.id.0 == 0 {
            config.element.id = PoolElementId(rand::rng().random_range(1..=u32::MAX));
        }
        let id = config.element.id;
        let (commands, command_rx) = mpsc::channel(16);
        let (state_tx, state) = watch::channel(PeState::Connecting);
        let task = tokio::spawn(run(config, command_rx, state_tx));
        Self {
            id,
            commands,
            state,
            task,
        }
    }

    /// The PE's identifier.
    pub fn id(&self) -> PoolElementId {
        self.id
    }

    /// Where it stands now.
    pub fn state(&self) -> PeState {
        self.state.borrow().clone()
    }

    /// Waits until the PE is registered, for at most `limit`.
    pub async fn wait_registered(&mut self, limit: Duration) -> Result<SocketAddr, ClientError> {
        let wait = self
            .state
            .wait_for(|s| matches!(s, PeState::Registered { .. }));
        match timeout(limit, wait).await {
            Ok(Ok(state)) => match &*state {
                PeState::Registered { registrar } => Ok(*registrar),
                _ => unreachable!("waited for Registered"),
            },
            Ok(Err(_)) => Err(ClientError::Connection("pool element task ended".into())),
            Err(_) => Err(ClientError::Timeout(limit)),
        }
    }

    /// Changes the policy values (e.g. the load) and re-registers.
    pub async fn set_policy(&self, policy: Policy) {
        let _ = self.commands.send(Command::SetPolicy(policy)).await;
    }

    /// Deregisters and stops.
    pub async fn stop(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Stop(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }

    /// Stops at once, without deregistering: as if the process died.
    pub fn abort(self) {
        self.task.abort();
    }
}

async fn run(
    config: PeConfig,
    mut commands: mpsc::Receiver<Command>,
    state: watch::Sender<PeState>,
) {
    let PeConfig {
        registrars,
        pool_handle,
        element,
        reregistration_interval,
        connect_timeout,
        request_timeout,
        retry_interval,
        tls,
        auth_token,
    } = config;
    let mut session = PeSession::new(PeSessionConfig {
        registrars,
        pool_handle,
        element,
        reregistration_interval,
        // The session's own deadline covers the whole attempt; connecting
        // is bounded by the connect timeout below.
        request_timeout: connect_timeout + request_timeout,
        retry_interval,
        auth_token,
    });
    session.handle_start(std_now());
    let mut conn: Option<RegistrarConnection> = None;
    let mut stopping: Option<Option<oneshot::Sender<()>>> = None;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                PeOutput::Connect(addr) => {
                    conn = None;
                    match timeout(
                        connect_timeout,
                        RegistrarConnection::open_to(addr, tls.as_ref()),
                    )
                    .await
                    {
                        Ok(Ok(c)) => {
                            conn = Some(c);
                            session.handle_connected(std_now());
                        }
                        Ok(Err(e)) => {
                            debug!(registrar = %addr, error = %e, "registrar unreachable");
                            session.handle_connect_failed(std_now());
                        }
                        Err(_) => {
                            debug!(registrar = %addr, "registrar connect timed out");
                            session.handle_connect_failed(std_now());
                        }
                    }
                }
                PeOutput::Send(message) => {
                    if let Some(c) = conn.as_mut()
                        && c.send(&message).await.is_err()
                    {
                        conn = None;
                        session.handle_disconnected(std_now());
                    }
                }
                // When stopping, the connection stays open until the
                // deregistration is answered.
                PeOutput::Close if stopping.is_none() => conn = None,
                PeOutput::Close => {}
            }
        }
        while let Some(event) = session.poll_event() {
            let pe_id = session.config().element.id;
            match event {
                PeEvent::Registered(registrar) => {
                    info!(%registrar, pool = %session.config().pool_handle, %pe_id, "registered");
                    state.send_replace(PeState::Registered { registrar });
                }
                PeEvent::Refused(registrar, cause) => {
                    warn!(%registrar, %pe_id, ?cause, "registration refused");
                    state.send_replace(PeState::Refused(cause));
                }
                PeEvent::Lost(registrar) => {
                    warn!(%registrar, %pe_id, "registrar lost or unreachable; trying the next one");
                    // A refusal stays visible until a registration succeeds.
                    state.send_if_modified(|s| {
                        let changed = !matches!(s, PeState::Refused(_) | PeState::Connecting);
                        if changed {
                            *s = PeState::Connecting;
                        }
                        changed
                    });
                }
            }
        }
        if let Some(done) = stopping {
            if let Some(c) = conn.as_mut() {
                wait_deregistered(c, request_timeout).await;
            }
            state.send_replace(PeState::Stopped);
            if let Some(done) = done {
                let _ = done.send(());
            }
            return;
        }
        let deadline = session.poll_timeout().map(Instant::from_std);
        tokio::select! {
            message = recv(conn.as_mut()) => match message {
                Ok(message) => session.handle_message(message, std_now()),
                Err(_) => {
                    conn = None;
                    session.handle_disconnected(std_now());
                }
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                session.handle_timeout(std_now());
            }
            command = commands.recv() => match command {
                Some(Command::SetPolicy(policy)) => session.set_policy(policy, std_now()),
                Some(Command::Stop(done)) => {
                    session.stop();
                    stopping = Some(Some(done));
                }
                None => {
                    session.stop();
                    stopping = Some(None);
                }
            },
        }
    }
}

fn std_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// The next message on `conn`, or never when there is none.
async fn recv(conn: Option<&mut RegistrarConnection>) -> Result<AsapMessage, ClientError> {
    match conn {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits (at most `limit`) for the answer to the deregistration just sent.
async fn wait_deregistered(conn: &mut RegistrarConnection, limit: Duration) {
    let answered = timeout(limit, async {
        while let Ok(m) = conn.recv().await {
            if matches!(m, AsapMessage::DeregistrationResponse { .. }) {
                return true;
            }
        }
        false
    })
    .await;
    if answered == Ok(true) {
        info!("deregistered");
    }
}
