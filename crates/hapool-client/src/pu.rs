//! A pool user: resolves pools through the registrars, with a cache.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hapool_wire::{AsapMessage, PoolElement, PoolElementId, PoolHandle, ResolutionOutcome};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::warn;

use crate::ClientError;
use crate::connection::{ClientTls, RegistrarConnection};

/// How a pool user reaches the registrars.
#[derive(Clone, Debug)]
pub struct PuConfig {
    /// Registrars to use, in order of preference.
    pub registrars: Vec<SocketAddr>,
    /// How long a resolution is reused before asking again. Default 1 s;
    /// zero asks every time.
    pub cache_ttl: Duration,
    /// PEs to ask for per resolution; `None` lets the registrar choose.
    pub items: Option<u32>,
    /// How long to wait for a TCP connection to a registrar. Default 1 s.
    pub connect_timeout: Duration,
    /// How long to wait for a registrar's answer. Default 2 s.
    pub request_timeout: Duration,
    /// Reach the registrars over TLS (their TLS port); plain TCP when absent.
    pub tls: Option<ClientTls>,
}

impl PuConfig {
    /// The defaults for these registrars.
    pub fn new(registrars: Vec<SocketAddr>) -> Self {
        Self {
            registrars,
            cache_ttl: Duration::from_secs(1),
            items: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            tls: None,
        }
    }
}

/// A pool user. Requests go over one connection at a time; when a
/// registrar fails, the next request goes to the next one of the list.
pub struct PoolUser {
    config: PuConfig,
    connection: tokio::sync::Mutex<Option<(usize, RegistrarConnection)>>,
    cache: Mutex<HashMap<PoolHandle, (Instant, Vec<PoolElement>)>>,
}

impl PoolUser {
    /// A pool user; it connects on its first request.
    pub fn new(config: PuConfig) -> Self {
        Self {
            config,
            connection: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The registrars it asks, in order of preference.
    pub fn registrars(&self) -> &[SocketAddr] {
        &self.config.registrars
    }

    /// The PEs of `pool`, best first by the pool's policy, from the cache
    /// while it is fresh.
    pub async fn resolve(&self, pool: &PoolHandle) -> Result<Vec<PoolElement>, ClientError> {
        if let Some((at, elements)) = self.cache.lock().expect("cache lock").get(pool)
            && at.elapsed() < self.config.cache_ttl
        {
            return Ok(elements.clone());
        }
        let request = AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: pool.clone(),
            items: self.config.items,
        };
        let response = self
            .request(&request, |m| {
                matches!(m, AsapMessage::HandleResolutionResponse { pool_handle, .. } if pool_handle == pool)
            })
            .await?;
        let AsapMessage::HandleResolutionResponse { outcome, .. } = response else {
            unreachable!("matched above");
        };
        match outcome {
            ResolutionOutcome::Members { elements, .. } => {
                self.cache
                    .lock()
                    .expect("cache lock")
                    .insert(pool.clone(), (Instant::now(), elements.clone()));
                Ok(elements)
            }
            ResolutionOutcome::Error(e) => Err(ClientError::Refused(
                e.causes
                    .first()
                    .map_or(hapool_wire::CauseCode::INVALID_VALUES, |c| c.code),
            )),
        }
    }

    /// Connects to a PE of `pool`: tries them in the order the registrar
    /// chose them (its policy), reports each that refuses or does not
    /// answer within the connect timeout as unreachable, and returns the
    /// first that accepts. When none does, resolves once more (the pool
    /// may have changed) before giving up.
    pub async fn connect(
        &self,
        pool: &PoolHandle,
    ) -> Result<(PoolElement, TcpStream), ClientError> {
        for _ in 0..2 {
            for element in self.resolve(pool).await? {
                let Some(addr) = element.user_transport.socket_addr() else {
                    continue;
                };
                match timeout(self.config.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => return Ok((element, stream)),
                    Ok(Err(_)) | Err(_) => {
                        warn!(pool = %pool, pe_id = %element.id, %addr, "pool element unreachable");
                        let _ = self.report_unreachable(pool, element.id).await;
                    }
                }
            }
            self.invalidate(pool);
        }
        Err(ClientError::NoElement(pool.to_string()))
    }

    /// Every PE of `pool` the registrar will name (up to its per-request
    /// maximum, 128 by default), not from the cache.
    pub async fn members(&self, pool: &PoolHandle) -> Result<Vec<PoolElement>, ClientError> {
        let request = AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: pool.clone(),
            items: Some(u32::MAX),
        };
        let response = self
            .request(&request, |m| {
                matches!(m, AsapMessage::HandleResolutionResponse { pool_handle, .. } if pool_handle == pool)
            })
            .await?;
        match response {
            AsapMessage::HandleResolutionResponse {
                outcome: ResolutionOutcome::Members { elements, .. },
                ..
            } => Ok(elements),
            AsapMessage::HandleResolutionResponse {
                outcome: ResolutionOutcome::Error(e),
                ..
            } => Err(ClientError::Refused(
                e.causes
                    .first()
                    .map_or(hapool_wire::CauseCode::INVALID_VALUES, |c| c.code),
            )),
            _ => unreachable!("matched above"),
        }
    }

    /// Forgets the cached resolution of `pool`.
    pub fn invalidate(&self, pool: &PoolHandle) {
        self.cache.lock().expect("cache lock").remove(pool);
    }

    /// Tells the registrar that `pe_id` of `pool` could not be reached, and
    /// drops it from the cache.
    pub async fn report_unreachable(
        &self,
        pool: &PoolHandle,
        pe_id: PoolElementId,
    ) -> Result<(), ClientError> {
        if let Some((_, elements)) = self.cache.lock().expect("cache lock").get_mut(pool) {
            elements.retain(|e| e.id != pe_id);
        }
        let message = AsapMessage::EndpointUnreachable {
            pool_handle: pool.clone(),
            pe_id,
        };
        let mut guard = self.connection.lock().await;
        let (_, conn) = self.connected(&mut guard).await?;
        if let Err(e) = conn.send(&message).await {
            *guard = None;
            return Err(e);
        }
        Ok(())
    }

    async fn connected<'a>(
        &self,
        slot: &'a mut Option<(usize, RegistrarConnection)>,
    ) -> Result<&'a mut (usize, RegistrarConnection), ClientError> {
        if slot.is_none() {
            *slot = Some(
                RegistrarConnection::connect(
                    &self.config.registrars,
                    0,
                    self.config.connect_timeout,
                    self.config.tls.as_ref(),
                )
                .await?,
            );
        }
        Ok(slot.as_mut().expect("just connected"))
    }

    /// Sends `request` and waits for the first message `is_answer` accepts;
    /// on a failed connection, tries once more with the next registrar.
    async fn request(
        &self,
        request: &AsapMessage,
        is_answer: impl Fn(&AsapMessage) -> bool,
    ) -> Result<AsapMessage, ClientError> {
        let mut guard = self.connection.lock().await;
        let mut last = ClientError::NoRegistrar { tried: 0 };
        for _ in 0..2 {
            let (index, conn) = self.connected(&mut guard).await?;
            let index = *index;
            let outcome = timeout(self.config.request_timeout, async {
                conn.send(request).await?;
                loop {
                    let message = conn.recv().await?;
                    if is_answer(&message) {
                        return Ok(message);
                    }
                }
            })
            .await;
            match outcome {
                Ok(Ok(message)) => return Ok(message),
                Ok(Err(e)) => last = e,
                Err(_) => last = ClientError::Timeout(self.config.request_timeout),
            }
            // Start over with the next registrar of the list.
            let next = (index + 1) % self.config.registrars.len();
            *guard = Some(
                RegistrarConnection::connect(
                    &self.config.registrars,
                    next,
                    self.config.connect_timeout,
                    self.config.tls.as_ref(),
                )
                .await?,
            );
        }
        Err(last)
    }
}
