//! The background work that keeps each pool's members current: asking the
//! registrars for a registrar pool's members (keeping the last answer, and
//! the on-disk cache, while none answers) and passing on reports of
//! unreachable members; probing every member, a new one before it is
//! chosen; and sweeping expired sessions and drained members. How often,
//! and for how long, is the [`Upkeep`] a reload may change: each round
//! reads it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderValue;
use hapool_client::{PoolUser, PuConfig};
use hapool_wire::{PoolElementId, PoolHandle};
use http_body_util::{BodyExt, Either, Full};
use metrics::counter;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, interval, sleep_until, timeout};
use tracing::{debug, info, warn};

use crate::grpc_health;
use crate::member_cache::MemberCache;
use crate::member_http::Target;
use crate::pool::{EmptyAnswer, Member, Pool, PoolSet, Port, ProbeKind};
use crate::proxy_protocol::ProxyProtocol;
use crate::reload::changed_names;
use crate::{GatewayConfig, Shared, tcp};

/// The timers of the upkeep, and the bounds of every pool's session table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Upkeep {
    /// How often registrar pools are resolved.
    pub(crate) refresh: Duration,
    /// How often every member is probed.
    pub(crate) probe_interval: Duration,
    /// How long a probe may take.
    pub(crate) probe_timeout: Duration,
    /// How long a session is kept unused.
    pub(crate) session_idle: Duration,
    /// How many sessions a pool keeps.
    pub(crate) session_capacity: usize,
}

impl Upkeep {
    /// The upkeep `config` asks for.
    pub(crate) fn of(config: &GatewayConfig) -> Self {
        Self {
            refresh: config.refresh,
            probe_interval: config.probe_interval,
            probe_timeout: config.probe_timeout,
            session_idle: config.session_idle,
            session_capacity: config.session_capacity,
        }
    }

    /// Which settings differ in `new`, by name.
    pub(crate) fn changes(&self, new: &Self) -> Vec<&'static str> {
        changed_names([
            ("refresh", new.refresh != self.refresh),
            ("probe_interval", new.probe_interval != self.probe_interval),
            ("probe_timeout", new.probe_timeout != self.probe_timeout),
            ("session_idle", new.session_idle != self.session_idle),
            (
                "session_capacity",
                new.session_capacity != self.session_capacity,
            ),
        ])
    }
}

/// Waits until `every` (read from `upkeep`) has passed since `started`;
/// a reload that changes it while this waits moves the end.
async fn next_round(
    upkeep: &mut watch::Receiver<Upkeep>,
    started: Instant,
    every: fn(&Upkeep) -> Duration,
) {
    loop {
        let due = started + every(&upkeep.borrow_and_update());
        tokio::select! {
            () = sleep_until(due) => return,
            changed = upkeep.changed() => {
                if changed.is_err() {
                    // Nothing will change it any more.
                    sleep_until(due).await;
                    return;
                }
            }
        }
    }
}

/// Resolves every registrar pool once; keeps the last answer of a pool
/// when no registrar answers. Returns how many pools a registrar
/// answered for.
pub(crate) async fn refresh(
    pu: &PoolUser,
    pools: &[Arc<Pool>],
    shared: &Shared,
    cache: &mut Option<MemberCache>,
) -> usize {
    let mut answered = 0;
    for pool in pools {
        let elements = match pu.members(pool.handle()).await {
            Ok(elements) => elements,
            Err(hapool_client::ClientError::Refused(cause)) => {
                // The registrars know no such pool (any more): it is empty.
                debug!(pool = %pool.handle(), ?cause, "registrars name no member");
                Vec::new()
            }
            Err(e) => {
                counter!("hapool_gateway_registrar_errors_total").increment(1);
                warn!(pool = %pool.handle(), error = %e, "no registrar answered; serving from the last known members");
                continue;
            }
        };
        answered += 1;
        if elements.is_empty() {
            match pool.registrars_name_none(Instant::now().into_std()) {
                EmptyAnswer::Held { first } => {
                    if first {
                        warn!(
                            pool = %pool.handle(),
                            hold = ?pool.settings().empty_answer_hold,
                            "the registrars name no member; keeping the last ones while their probes pass (a restarted registrar's PEs register again)"
                        );
                    }
                    continue;
                }
                EmptyAnswer::Taken { after_hold: true } => {
                    warn!(pool = %pool.handle(), "the registrars still name no member; the last ones are let go");
                }
                EmptyAnswer::Taken { after_hold: false } => {}
            }
        } else {
            pool.registrars_name_some();
        }
        // The pool first: the cache's write may wait for the disk.
        let fresh = pool.update(&elements);
        if let Some(cache) = cache {
            cache.record(pool.handle(), &elements).await;
        }
        for member in fresh {
            probe_one(pool, &member, shared).await;
        }
    }
    answered
}

/// The registrars the gateway asks, as one of their pool users: none
/// when the configuration names none. A reload may replace it.
pub(crate) type Registrars = watch::Sender<Option<Arc<PoolUser>>>;

/// A pool user of `registrars` for the gateway: it asks every time (the
/// gateway keeps the answers itself), or none for an empty list.
pub(crate) fn pool_user(registrars: &[SocketAddr]) -> Option<Arc<PoolUser>> {
    (!registrars.is_empty()).then(|| {
        let mut config = PuConfig::new(registrars.to_vec());
        config.cache_ttl = Duration::ZERO;
        Arc::new(PoolUser::new(config))
    })
}

/// Resolves the registrar pools every `refresh` (the first time one
/// `refresh` after it starts: the gateway resolved them as it started),
/// and between rounds reports members found unreachable to the
/// registrars. Each round and each report goes to the registrars
/// configured at that moment; the answers are kept in the `cache` file
/// named at that moment (`cache_path`: a new one is written from the
/// next answers, which a change brings at once).
pub(crate) async fn refresher(
    registrars: watch::Receiver<Option<Arc<PoolUser>>>,
    pools: PoolSet,
    shared: Arc<Shared>,
    mut reports: mpsc::Receiver<(PoolHandle, PoolElementId)>,
    mut cache: Option<MemberCache>,
    mut cache_path: watch::Receiver<Option<std::path::PathBuf>>,
) {
    let mut upkeep = shared.upkeep.subscribe();
    let mut started = Instant::now();
    let mut watching_cache = true;
    loop {
        let round = next_round(&mut upkeep, started, |u| u.refresh);
        tokio::pin!(round);
        loop {
            tokio::select! {
                () = &mut round => break,
                changed = cache_path.changed(), if watching_cache => {
                    if changed.is_err() {
                        // The gateway is going: the file stays as it is.
                        watching_cache = false;
                        continue;
                    }
                    // Empty: the next answers are all written.
                    cache = cache_path
                        .borrow_and_update()
                        .clone()
                        .map(MemberCache::empty);
                    break;
                }
                Some((pool, pe_id)) = reports.recv() => {
                    // Only registrar pools are reported, and they exist
                    // only while there are registrars.
                    let Some(pu) = registrars.borrow().clone() else { continue };
                    if let Err(e) = pu.report_unreachable(&pool, pe_id).await {
                        debug!(pool = %pool, pe_id = %pe_id, error = %e, "cannot report an unreachable pool element");
                    }
                }
            }
        }
        started = Instant::now();
        let Some(pu) = registrars.borrow().clone() else {
            continue;
        };
        let registrar_pools: Vec<Arc<Pool>> = pools
            .all()
            .into_iter()
            .filter(|p| p.from_registrars())
            .collect();
        refresh(&pu, &registrar_pools, &shared, &mut cache).await;
    }
}

/// Probes `member` as its pool says (a TCP connect, an HTTP request
/// answered below 500, or the gRPC health check), at its address and at
/// its HTTPS port when the pool has one, and marks each reachable or not.
pub(crate) async fn probe_one(pool: &Pool, member: &Arc<Member>, shared: &Shared) {
    let ports: &[Port] = if pool.https_port().is_some() {
        &[Port::Main, Port::Https]
    } else {
        &[Port::Main]
    };
    for &port in ports {
        let ok = probe_port(pool, member, port, shared).await;
        let settings = pool.settings();
        if member.record_probe_at(port, ok, settings.probe_rise, settings.probe_fall) {
            let address = pool.target(member, port).address;
            if ok {
                info!(pool = %pool.handle(), pe_id = %member.id, %address, "pool element answers");
            } else {
                warn!(pool = %pool.handle(), pe_id = %member.id, %address, "pool element does not answer its probe");
            }
        }
    }
}

/// One probe of `member`'s `port`: whether it passed.
async fn probe_port(pool: &Pool, member: &Member, port: Port, shared: &Shared) -> bool {
    let probe_timeout = shared.upkeep.borrow().probe_timeout;
    let target = pool.target(member, port);
    let Ok(host) = HeaderValue::from_str(&target.address.to_string()) else {
        return false;
    };
    let settings = pool.settings();
    match &settings.probe {
        ProbeKind::Tcp => {
            let tls = if target.tls {
                shared.member_trust.borrow().connector(false)
            } else {
                None
            };
            // A connection of the gateway's own, with no client to name.
            let preface = settings
                .proxy_protocol
                .map_or(Vec::new(), ProxyProtocol::local_header);
            tcp::connect_member(target.address, &preface, tls.as_ref(), probe_timeout)
                .await
                .is_ok()
        }
        ProbeKind::Grpc { service } => grpc_check(target, host, service, shared).await,
        ProbeKind::Http { path } => {
            let Ok(uri) = path.parse::<hyper::Uri>() else {
                return false;
            };
            let mut request = hyper::Request::new(Either::Left(Full::new(bytes::Bytes::new())));
            *request.uri_mut() = uri;
            request.headers_mut().insert(hyper::header::HOST, host);
            match timeout(probe_timeout, shared.probes.send(target, Box::new(request))).await {
                Ok(Ok((response, connection))) => {
                    let ok = response.status().as_u16() < 500;
                    // Read the body so the connection can be reused.
                    if let Ok(Ok(_)) = timeout(probe_timeout, response.into_body().collect()).await
                    {
                        connection.release();
                    }
                    ok
                }
                _ => false,
            }
        }
    }
}

/// The gRPC health check of `service` at `target`: answered SERVING, with
/// a gRPC status of OK, within the probe timeout.
async fn grpc_check(target: Target, host: HeaderValue, service: &str, shared: &Shared) -> bool {
    let probe_timeout = shared.upkeep.borrow().probe_timeout;
    let mut request =
        hyper::Request::new(Either::Left(Full::new(grpc_health::check_request(service))));
    *request.method_mut() = hyper::Method::POST;
    *request.uri_mut() = hyper::Uri::from_static(grpc_health::CHECK_PATH);
    let headers = request.headers_mut();
    headers.insert(hyper::header::HOST, host);
    headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    let check = async {
        let (response, connection) = shared.probes.send(target, Box::new(request)).await.ok()?;
        if response.status() != hyper::StatusCode::OK {
            return None;
        }
        // A status in the head: an answer without a message (an error).
        let in_head = response.headers().get("grpc-status").cloned();
        let collected = response.into_body().collect().await.ok()?;
        connection.release();
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .cloned()
            .or(in_head)?;
        Some(status == "0" && grpc_health::is_serving(&collected.to_bytes()))
    };
    timeout(probe_timeout, check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Probes every member of `pools` at once.
pub(crate) async fn probe_all(pools: &[Arc<Pool>], shared: &Shared) {
    let members: Vec<(&Arc<Pool>, Arc<Member>)> = pools
        .iter()
        .flat_map(|pool| pool.members().into_iter().map(move |m| (pool, m)))
        .collect();
    join_all(
        members
            .iter()
            .map(|(pool, member)| probe_one(pool, member, shared)),
    )
    .await;
}

/// Runs every future to completion, concurrently.
async fn join_all<F: Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Probes every member every `probe_interval` (the first time one
/// interval after it starts: the gateway probed them all as it started).
pub(crate) async fn prober(pools: PoolSet, shared: Arc<Shared>) {
    let mut upkeep = shared.upkeep.subscribe();
    let mut started = Instant::now();
    loop {
        next_round(&mut upkeep, started, |u| u.probe_interval).await;
        started = Instant::now();
        probe_all(&pools.all(), &shared).await;
    }
}

/// Once a second: drops expired sessions, and members drained of their
/// sessions after a pending delete.
pub(crate) async fn sweeper(pools: PoolSet) {
    let mut tick = interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Instant::now();
        for pool in &pools.all() {
            pool.sessions.sweep(now);
            pool.remove_drained();
        }
    }
}
