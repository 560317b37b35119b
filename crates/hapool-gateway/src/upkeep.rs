//! The background work that keeps each pool's members current: asking the
//! registrars for a registrar pool's members (keeping the last answer, and
//! the on-disk cache, while none answers) and passing on reports of
//! unreachable members; probing every member, a new one before it is
//! chosen; and sweeping expired sessions and drained members.

use std::sync::Arc;
use std::time::Duration;

use ::http::HeaderValue;
use hapool_client::PoolUser;
use hapool_wire::{PoolElementId, PoolHandle};
use http_body_util::{BodyExt, Either, Full};
use metrics::counter;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};
use tracing::{debug, info, warn};

use crate::member_cache::MemberCache;
use crate::member_http::Target;
use crate::pool::{Member, Pool, PoolSet, ProbeKind};
use crate::proxy_protocol::ProxyProtocol;
use crate::{Shared, tcp};

/// Resolves every registrar pool once; keeps the last answer of a pool
/// when no registrar answers.
pub(crate) async fn refresh(
    pu: &PoolUser,
    pools: &[Arc<Pool>],
    shared: &Shared,
    probe_timeout: Duration,
    cache: &mut Option<MemberCache>,
) {
    for pool in pools {
        match pu.members(pool.handle()).await {
            Ok(elements) => {
                if let Some(cache) = cache {
                    cache.record(pool.handle(), &elements);
                }
                let fresh = pool.update(&elements);
                for member in fresh {
                    probe_one(pool, &member, shared, probe_timeout).await;
                }
            }
            Err(hapool_client::ClientError::Refused(cause)) => {
                // The registrars know no such pool (any more): it is empty.
                debug!(pool = %pool.handle(), ?cause, "registrars name no member");
                if let Some(cache) = cache {
                    cache.record(pool.handle(), &[]);
                }
                pool.update(&[]);
            }
            Err(e) => {
                counter!("hapool_gateway_registrar_errors_total").increment(1);
                warn!(pool = %pool.handle(), error = %e, "no registrar answered; serving from the last known members");
            }
        }
    }
}

/// Resolves the registrar pools every `every`, and reports members found
/// unreachable to the registrars.
pub(crate) async fn refresher(
    pu: Arc<PoolUser>,
    pools: PoolSet,
    shared: Arc<Shared>,
    mut reports: mpsc::Receiver<(PoolHandle, PoolElementId)>,
    every: Duration,
    probe_timeout: Duration,
    mut cache: Option<MemberCache>,
) {
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let registrar_pools: Vec<Arc<Pool>> =
                    pools.all().into_iter().filter(|p| p.from_registrars()).collect();
                refresh(&pu, &registrar_pools, &shared, probe_timeout, &mut cache).await;
            }
            Some((pool, pe_id)) = reports.recv() => {
                if let Err(e) = pu.report_unreachable(&pool, pe_id).await {
                    debug!(pool = %pool, pe_id = %pe_id, error = %e, "cannot report an unreachable pool element");
                }
            }
        }
    }
}

/// Probes `member` as its pool says (a TCP connect, or an HTTP request
/// answered below 500), and marks it reachable or not.
pub(crate) async fn probe_one(
    pool: &Pool,
    member: &Arc<Member>,
    shared: &Shared,
    probe_timeout: Duration,
) {
    let ok = match &pool.settings().probe {
        ProbeKind::Tcp => {
            let tls = shared.member_tls_for(pool);
            // A connection of the gateway's own, with no client to name.
            let preface = pool
                .settings()
                .proxy_protocol
                .map_or(Vec::new(), ProxyProtocol::local_header);
            tcp::connect_member(member.address, &preface, tls.as_ref(), probe_timeout)
                .await
                .is_ok()
        }
        ProbeKind::Http { path } => {
            let target = Target {
                address: member.address,
                tls: pool.tls(),
            };
            match (
                path.parse::<hyper::Uri>(),
                HeaderValue::from_str(member.authority.as_str()),
            ) {
                (Ok(uri), Ok(host)) => {
                    let mut request =
                        hyper::Request::new(Either::Left(Full::new(bytes::Bytes::new())));
                    *request.uri_mut() = uri;
                    request.headers_mut().insert(hyper::header::HOST, host);
                    match timeout(probe_timeout, shared.probes.send(target, request)).await {
                        Ok(Ok((response, connection))) => {
                            let ok = response.status().as_u16() < 500;
                            // Read the body so the connection can be reused.
                            if let Ok(Ok(_)) =
                                timeout(probe_timeout, response.into_body().collect()).await
                            {
                                connection.release();
                            }
                            ok
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        }
    };
    let settings = pool.settings();
    if member.record_probe(ok, settings.probe_rise, settings.probe_fall) {
        if ok {
            info!(pool = %pool.handle(), pe_id = %member.id, address = %member.address, "pool element answers");
        } else {
            warn!(pool = %pool.handle(), pe_id = %member.id, address = %member.address, "pool element does not answer its probe");
        }
    }
}

/// Probes every member of `pools` at once.
pub(crate) async fn probe_all(pools: &[Arc<Pool>], shared: &Shared, probe_timeout: Duration) {
    let members: Vec<(&Arc<Pool>, Arc<Member>)> = pools
        .iter()
        .flat_map(|pool| pool.members().into_iter().map(move |m| (pool, m)))
        .collect();
    join_all(
        members
            .iter()
            .map(|(pool, member)| probe_one(pool, member, shared, probe_timeout)),
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

/// Probes every member every `every`.
pub(crate) async fn prober(
    pools: PoolSet,
    shared: Arc<Shared>,
    every: Duration,
    probe_timeout: Duration,
) {
    let mut tick = interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        probe_all(&pools.all(), &shared, probe_timeout).await;
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
