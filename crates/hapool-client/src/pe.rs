//! A pool element: keeps a server registered in its pool.
//!
//! [`PeHandle::start`] spawns a task that connects to a registrar of the
//! list, registers, answers keep-alives, re-registers on a timer and when
//! the policy values (such as the load) change, moves to the next registrar
//! at once when its registrar fails, and deregisters on [`PeHandle::stop`].

use std::net::SocketAddr;
use std::time::Duration;

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
    /// How often to re-register without a change. Default 10 s.
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

enum SessionEnd {
    Stopped,
    Lost,
    Refused(CauseCode),
}

async fn run(
    mut config: PeConfig,
    mut commands: mpsc::Receiver<Command>,
    state: watch::Sender<PeState>,
) {
    let mut start = 0;
    loop {
        state.send_replace(PeState::Connecting);
        let connected = RegistrarConnection::connect(
            &config.registrars,
            start,
            config.connect_timeout,
            config.tls.as_ref(),
        )
        .await;
        let retry = match connected {
            Ok((i, mut conn)) => {
                match session(&mut config, &mut conn, &mut commands, &state).await {
                    SessionEnd::Stopped => return,
                    SessionEnd::Lost => {
                        warn!(registrar = %conn.addr, pe_id = %config.element.id, "registrar lost; trying the next one");
                        start = (i + 1) % config.registrars.len();
                        false
                    }
                    SessionEnd::Refused(cause) => {
                        warn!(registrar = %conn.addr, pe_id = %config.element.id, ?cause, "registration refused");
                        state.send_replace(PeState::Refused(cause));
                        start = (i + 1) % config.registrars.len();
                        true
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "no registrar reachable");
                true
            }
        };
        if retry {
            // Wait before going round the list again, still obeying commands.
            let until = Instant::now() + config.retry_interval;
            loop {
                tokio::select! {
                    () = sleep_until(until) => break,
                    command = commands.recv() => match command {
                        Some(Command::SetPolicy(p)) => config.element.policy = p,
                        Some(Command::Stop(done)) => {
                            state.send_replace(PeState::Stopped);
                            let _ = done.send(());
                            return;
                        }
                        None => {
                            state.send_replace(PeState::Stopped);
                            return;
                        }
                    },
                }
            }
        }
    }
}

fn registration(config: &PeConfig) -> AsapMessage {
    AsapMessage::Registration {
        pool_handle: config.pool_handle.clone(),
        pool_element: config.element.clone(),
    }
}

/// Registers over `conn` and serves the registrar until the connection
/// fails or the PE stops.
async fn session(
    config: &mut PeConfig,
    conn: &mut RegistrarConnection,
    commands: &mut mpsc::Receiver<Command>,
    state: &watch::Sender<PeState>,
) -> SessionEnd {
    if conn.send(&registration(config)).await.is_err() {
        return SessionEnd::Lost;
    }
    let answer = timeout(config.request_timeout, async {
        loop {
            match conn.recv().await? {
                AsapMessage::RegistrationResponse { reject, error, .. } => {
                    return Ok::<_, ClientError>((reject, error));
                }
                other => debug!(?other, "message before the registration response"),
            }
        }
    })
    .await;
    match answer {
        Ok(Ok((false, _))) => {}
        Ok(Ok((true, error))) => {
            let cause = error
                .and_then(|e| e.causes.first().map(|c| c.code))
                .unwrap_or(CauseCode::INVALID_VALUES);
            return SessionEnd::Refused(cause);
        }
        Ok(Err(_)) | Err(_) => return SessionEnd::Lost,
    }
    info!(registrar = %conn.addr, pool = %config.pool_handle, pe_id = %config.element.id, "registered");
    state.send_replace(PeState::Registered {
        registrar: conn.addr,
    });
    let mut next_registration = Instant::now() + config.reregistration_interval;
    loop {
        tokio::select! {
            message = conn.recv() => match message {
                Ok(AsapMessage::EndpointKeepAlive { pool_handle, .. }) => {
                    let ack = AsapMessage::EndpointKeepAliveAck {
                        pool_handle,
                        pe_id: config.element.id,
                    };
                    if conn.send(&ack).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                Ok(AsapMessage::RegistrationResponse { reject: true, error, .. }) => {
                    let cause = error
                        .and_then(|e| e.causes.first().map(|c| c.code))
                        .unwrap_or(CauseCode::INVALID_VALUES);
                    return SessionEnd::Refused(cause);
                }
                Ok(other) => debug!(?other, "ignored message from the registrar"),
                Err(_) => return SessionEnd::Lost,
            },
            () = sleep_until(next_registration) => {
                next_registration = Instant::now() + config.reregistration_interval;
                if conn.send(&registration(config)).await.is_err() {
                    return SessionEnd::Lost;
                }
            }
            command = commands.recv() => match command {
                Some(Command::SetPolicy(policy)) => {
                    config.element.policy = policy;
                    next_registration = Instant::now() + config.reregistration_interval;
                    if conn.send(&registration(config)).await.is_err() {
                        return SessionEnd::Lost;
                    }
                }
                Some(Command::Stop(done)) => {
                    deregister(config, conn).await;
                    state.send_replace(PeState::Stopped);
                    let _ = done.send(());
                    return SessionEnd::Stopped;
                }
                None => {
                    deregister(config, conn).await;
                    state.send_replace(PeState::Stopped);
                    return SessionEnd::Stopped;
                }
            },
        }
    }
}

async fn deregister(config: &PeConfig, conn: &mut RegistrarConnection) {
    let message = AsapMessage::Deregistration {
        pool_handle: config.pool_handle.clone(),
        pe_id: config.element.id,
    };
    if conn.send(&message).await.is_err() {
        return;
    }
    let _ = timeout(config.request_timeout, async {
        while let Ok(m) = conn.recv().await {
            if matches!(m, AsapMessage::DeregistrationResponse { .. }) {
                break;
            }
        }
    })
    .await;
    info!(pool = %config.pool_handle, pe_id = %config.element.id, "deregistered");
}
