//! Taking a new configuration while the gateway serves
//! ([`GatewayView::reload`]).
//!
//! What a reload can change is what the gateway reads per connection or
//! per choice: a TLS listener's certificates (`tls::LiveTls`), the keys
//! every TLS listener seals and opens session tickets with
//! (`tickets::SessionTickets`, changed in place), a pool's
//! settings and static members ([`Pool::reconfigure`]), and the set of
//! listeners and pools itself. A listener whose other settings change
//! (protocol, pool, TLS on or off, affinity, `max_connections`, the PROXY
//! protocol) keeps its sockets: its workers serve new connections with the
//! new settings, and open ones go on as they were; so too with new limits
//! and timeouts (`Limits`), for every listener, except that the member
//! connect and idle timeouts apply at once. (Binding a new socket
//! beside the old and closing the old lost connections: those the kernel
//! queued on the old socket between its last accept and its close were
//! reset.) A listener no longer configured closes: it takes what the
//! kernel has queued for it first, and its open connections finish. The
//! upkeep's timers (refresh, probes) apply from their next round, and new
//! session bounds to every pool's table at once. New registrars are asked
//! at once for every registrar pool that stays (a pool none of them
//! answers for keeps the members it had), and from then on by the
//! refresher and by reports of unreachable members. The access log can
//! be started, moved to another file or stopped: requests answered (and
//! TCP connections closed) from then on are logged to the new file. The
//! trust for members over TLS is taken as read again (a new authority
//! file, or the same file with new contents): connections to members
//! made from then on are checked with it (`MemberTrust`). A new member
//! cache file is written with the registrars' answers, asked for at
//! once. The handover socket is opened, moved or closed (listeners keep
//! copies of their sockets whether or not there is one, for that). The
//! number of workers (threads) and what a pool is at heart (where its
//! members come from, TLS to them) take a restart; the reload names each
//! such difference rather than half-apply it. The new configuration is
//! checked whole, and every new listener bound, before anything changes:
//! a reload that cannot be done changes nothing.

use std::sync::{Arc, PoisonError};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::handover;
use crate::pool::Pool;
use crate::upkeep::{Upkeep, pool_user, probe_all, probe_one, refresh};
use crate::{
    GatewayConfig, GatewayError, GatewayView, Limits, ListenerConfig, Listening, MemberTrust,
    PoolSettings, open_access_log,
};

/// What a reload did, and what it left for a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reloaded {
    /// Changes in effect from now on, one line each.
    pub applied: Vec<String>,
    /// Differences between the new configuration and the running gateway
    /// that only a restart brings into effect, one line each. The gateway
    /// goes on as before in these.
    pub needs_restart: Vec<String>,
}

/// The names of the settings marked changed, in order.
pub(crate) fn changed_names<const N: usize>(
    settings: [(&'static str, bool); N],
) -> Vec<&'static str> {
    settings
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

impl ListenerConfig {
    /// What a running listener cannot take from `new` in place (a new
    /// listener replaces it); `None` when it can (new certificates, or
    /// nothing new).
    fn fixed_change(&self, new: &Self) -> Option<&'static str> {
        if new.protocol != self.protocol {
            Some("protocol")
        } else if new.pool != self.pool {
            Some("pool")
        } else if new.tls.is_some() != self.tls.is_some() {
            Some("TLS on or off")
        } else if new.affinity != self.affinity {
            Some("affinity")
        } else if new.max_connections != self.max_connections {
            Some("max_connections")
        } else if new.accept_proxy_protocol != self.accept_proxy_protocol {
            Some("accept_proxy_protocol")
        } else if new.abort_on_close != self.abort_on_close {
            Some("abort_on_close")
        } else {
            None
        }
    }
}

impl Limits {
    /// Which limits differ in `new`, by name.
    fn changes(&self, new: &Self) -> Vec<&'static str> {
        let old = self;
        changed_names([
            (
                "connect_timeout",
                new.connect_timeout != old.connect_timeout,
            ),
            (
                "request_timeout",
                new.request_timeout != old.request_timeout,
            ),
            (
                "header_read_timeout",
                new.header_read_timeout != old.header_read_timeout,
            ),
            (
                "max_header_bytes",
                new.max_header_bytes != old.max_header_bytes,
            ),
            ("retries", new.retries != old.retries),
            (
                "retry_body_limit",
                new.retry_body_limit != old.retry_body_limit,
            ),
            (
                "member_idle_timeout",
                new.member_idle_timeout != old.member_idle_timeout,
            ),
            ("shutdown_grace", new.shutdown_grace != old.shutdown_grace),
            ("send_timeout", new.send_timeout != old.send_timeout),
            (
                "answer_idle_timeout",
                new.answer_idle_timeout != old.answer_idle_timeout,
            ),
            (
                "tcp_idle_timeout",
                new.tcp_idle_timeout != old.tcp_idle_timeout,
            ),
        ])
    }
}

impl GatewayConfig {
    /// What differs from `running` outside listeners, pools, limits and
    /// upkeep: each setting by name. None of these changes while the
    /// gateway runs.
    fn fixed_changes(&self, running: &Self) -> Vec<&'static str> {
        changed_names([
            ("threads", self.workers != running.workers),
            ("pin_workers", self.pin_workers != running.pin_workers),
        ])
    }
}

/// What a reload does with one configured listener.
enum Plan {
    /// The running listener at this index stays (with new certificates,
    /// if it has TLS).
    Keep(usize),
    /// The running listener at this index serves new connections with
    /// new settings (naming what changed), on its sockets.
    Respec(usize, Arc<Pool>, &'static str),
    /// A new listener, the next of those bound.
    Open,
    /// Its pool takes a restart: the running listener at the index, if
    /// any, goes on as it is.
    Hold(Option<usize>),
}

impl GatewayView {
    /// Takes `config` while the gateway serves, as far as that can be
    /// done without a restart, and says what it did and what it could not
    /// ([`Reloaded`]; the module's documentation says which is which). A
    /// configuration the gateway could not start with, or a new listener
    /// that cannot be bound, changes nothing. Reloads run one at a time.
    pub async fn reload(&self, config: GatewayConfig) -> Result<Reloaded, GatewayError> {
        let _one_at_a_time = self.reloading.lock().await;
        config.check()?;
        let mut done = Reloaded::default();

        // Pools: new ones, changed ones, and those that take a restart.
        let mut held = Vec::new();
        let mut changed: Vec<(Arc<Pool>, &PoolSettings)> = Vec::new();
        let mut added: Vec<Arc<Pool>> = Vec::new();
        for settings in &config.pools {
            let handle = &settings.handle;
            let why_not = match self.pools.get(handle) {
                Some(pool) => {
                    let running = pool.settings();
                    let fixed = running.fixed_change(settings);
                    if fixed.is_none() && *running != *settings {
                        changed.push((pool, settings));
                    }
                    fixed
                }
                None => {
                    added.push(Arc::new(config.new_pool(settings)));
                    None
                }
            };
            if let Some(why) = why_not {
                done.needs_restart.push(format!("pool {handle}: {why}"));
                held.push(handle);
            }
        }

        // Listeners: matched to the running ones by configured address.
        let running = self.listening();
        let mut matched = vec![false; running.len()];
        let mut plans = Vec::with_capacity(config.listeners.len());
        let mut opened = Vec::new();
        for new in &config.listeners {
            let found = (0..running.len())
                .find(|&i| !matched[i] && running[i].current().config.address == new.address);
            if let Some(i) = found {
                matched[i] = true;
            }
            if held.contains(&&new.pool) {
                done.needs_restart.push(format!(
                    "listener {}: its pool {} takes a restart",
                    new.address, new.pool
                ));
                plans.push(Plan::Hold(found));
                continue;
            }
            let pool = added
                .iter()
                .find(|p| *p.handle() == new.pool)
                .cloned()
                .or_else(|| self.pools.get(&new.pool))
                .expect("checked: every listener's pool is configured");
            match found.map(|i| (i, running[i].current().config.fixed_change(new))) {
                Some((i, None)) => plans.push(Plan::Keep(i)),
                Some((i, Some(what))) => plans.push(Plan::Respec(i, pool, what)),
                None => {
                    opened.push(Listening::open(
                        new,
                        &pool,
                        self.workers.len(),
                        &self.shared.tickets,
                        Vec::new(),
                        Vec::new(),
                    )?);
                    plans.push(Plan::Open);
                }
            }
        }

        let tickets = self
            .shared
            .tickets
            .prepare(config.ticket_keys.as_ref())
            .map_err(GatewayError::Tickets)?;
        // A new access log file is opened now, and a new handover socket
        // bound (last: it replaces a socket file at its path), so that one
        // that cannot be changes nothing.
        let access_log = if config.access_log == self.shared.access_log.path() {
            None
        } else {
            Some(open_access_log(config.access_log.as_deref())?)
        };
        let handover = if config.handover == self.handover.path() {
            None
        } else {
            Some(config.handover.as_deref().map(handover::bind).transpose()?)
        };

        // Everything that can fail has been done; from here on, changes.
        // The ticket keys first: every TLS listener, new or kept, seals
        // with the same.
        if let Some((tickets, line)) = tickets {
            self.shared.tickets.install(tickets);
            done.applied.push(line);
        }
        // Trust for members over TLS, as read again: connections made
        // from now on use it.
        if config.member_tls.is_some() || self.shared.member_trust.borrow().is_some() {
            self.shared
                .member_trust
                .send_replace(MemberTrust::new(config.member_tls.as_ref()));
            done.applied.push(if config.member_tls.is_some() {
                "member trust: loaded (connections to members made from now on)".to_owned()
            } else {
                "member trust: none".to_owned()
            });
        }
        if config.member_cache != *self.member_cache.borrow() {
            done.applied.push(match &config.member_cache {
                Some(path) => format!(
                    "member_cache: {} (written with the registrars' next answers)",
                    path.display()
                ),
                None => "member_cache: off".to_owned(),
            });
            self.member_cache.send_replace(config.member_cache.clone());
        }
        if let Some(socket) = handover {
            done.applied.push(match &socket {
                Some((_, path)) => format!(
                    "handover: {} (listening sockets handed to a successor that asks there)",
                    path.display()
                ),
                None => "handover: off".to_owned(),
            });
            self.handover.set(socket, &self.listeners, &self.side).await;
        }
        if let Some(log) = access_log {
            done.applied.push(match &log {
                Some((path, _)) => {
                    format!("access_log: {} (from the next request)", path.display())
                }
                None => "access_log: off".to_owned(),
            });
            self.shared.access_log.set(log);
        }
        // Then the limits, so that listeners opened or respecified below
        // start with them.
        let limits = self.shared.limits();
        let what = limits.changes(&config.limits);
        if !what.is_empty() {
            self.shared
                .limits
                .send_replace(Arc::new(config.limits.clone()));
            done.applied.push(format!(
                "limits: {} (connections accepted from now on; member connect and idle timeouts at once)",
                what.join(", ")
            ));
        }
        let upkeep = Upkeep::of(&config);
        let what = self.shared.upkeep.borrow().changes(&upkeep);
        if !what.is_empty() {
            self.shared.upkeep.send_replace(upkeep);
            for pool in self.pools.all() {
                pool.sessions
                    .set_bounds(upkeep.session_idle, upkeep.session_capacity);
            }
            done.applied.push(format!(
                "upkeep: {} (from the next round; session bounds at once)",
                what.join(", ")
            ));
        }
        // The registrars before the pools, so that a new registrar pool is
        // resolved by the new registrars.
        let asking = self.registrars.borrow().clone();
        let asked = asking.as_ref().map_or(&[][..], |pu| pu.registrars());
        if config.registrars != asked {
            let pu = pool_user(&config.registrars);
            self.registrars.send_replace(pu.clone());
            done.applied.push(match pu {
                None => "registrars: none".to_owned(),
                Some(pu) => {
                    // Every registrar pool that stays is asked again now.
                    let staying: Vec<Arc<Pool>> = self
                        .pools
                        .all()
                        .into_iter()
                        .filter(|p| {
                            p.from_registrars()
                                && config.pools.iter().any(|c| c.handle == *p.handle())
                        })
                        .collect();
                    let list: Vec<String> =
                        config.registrars.iter().map(ToString::to_string).collect();
                    let list = list.join(", ");
                    if staying.is_empty() {
                        format!("registrars: {list}")
                    } else {
                        let answered = refresh(&pu, &staying, &self.shared, &mut None).await;
                        format!(
                            "registrars: {list} ({answered} of {} registrar pool(s) resolved by them)",
                            staying.len()
                        )
                    }
                }
            });
        }
        for pool in &added {
            if pool.from_registrars() {
                let asking = self.registrars.borrow().clone();
                if let Some(pu) = asking {
                    let pools = std::slice::from_ref(pool);
                    refresh(&pu, pools, &self.shared, &mut None).await;
                }
            } else {
                probe_all(std::slice::from_ref(pool), &self.shared).await;
            }
            self.pools.add(pool.clone());
            let members = pool.members();
            let answering = members.iter().filter(|m| m.is_reachable()).count();
            done.applied.push(format!(
                "pool {}: added ({} member(s), {answering} answering)",
                pool.handle(),
                members.len()
            ));
        }
        for (pool, settings) in changed {
            let what = pool.settings().changes(settings).join(", ");
            let fresh = pool.reconfigure(settings.clone());
            for member in &fresh {
                probe_one(&pool, member, &self.shared).await;
            }
            let answering = fresh.iter().filter(|m| m.is_reachable()).count();
            done.applied.push(if fresh.is_empty() {
                format!("pool {}: {what}", pool.handle())
            } else {
                format!(
                    "pool {}: {what} ({} new member(s), {answering} answering)",
                    pool.handle(),
                    fresh.len()
                )
            });
        }
        let mut opened = opened.into_iter();
        let mut listeners = Vec::with_capacity(plans.len());
        for (plan, new) in plans.into_iter().zip(&config.listeners) {
            match plan {
                Plan::Keep(i) => {
                    let kept = &running[i];
                    if let (Some(live), Some(tls)) = (&kept.current().tls, &new.tls) {
                        live.replace(tls);
                        done.applied
                            .push(format!("listener {}: certificates loaded", kept.address()));
                    }
                    listeners.push(kept.clone());
                }
                Plan::Hold(found) => listeners.extend(found.map(|i| running[i].clone())),
                Plan::Respec(i, pool, what) => {
                    let listening = &running[i];
                    listening.respec(new, &pool, &self.shared.tickets);
                    done.applied.push(format!(
                        "listener {}: {what} changed (new connections; open ones go on as they were)",
                        listening.address()
                    ));
                    listeners.push(listening.clone());
                }
                Plan::Open => {
                    let (listening, per_worker) = opened.next().expect("one bound per plan");
                    for (i, serve) in per_worker.into_iter().enumerate() {
                        // A worker that has stopped serves nothing more.
                        let _ = self.workers[i % self.workers.len()].send(serve);
                    }
                    done.applied
                        .push(format!("listener {}: opened", listening.address()));
                    listeners.push(listening);
                }
            }
        }
        for (old, _) in running.iter().zip(&matched).filter(|(_, m)| !**m) {
            old.close();
            done.applied.push(format!(
                "listener {}: closed; its open connections finish",
                old.address()
            ));
        }
        *self
            .listeners
            .write()
            .unwrap_or_else(PoisonError::into_inner) = listeners;
        for pool in self.pools.all() {
            if !config.pools.iter().any(|p| p.handle == *pool.handle()) {
                self.pools.remove(pool.handle());
                done.applied
                    .push(format!("pool {}: removed", pool.handle()));
            }
        }
        for name in config.fixed_changes(&self.config) {
            done.needs_restart.push(format!("{name} changed"));
        }
        for line in &done.applied {
            info!(change = %line, "reload: in effect");
        }
        for line in &done.needs_restart {
            warn!(change = %line, "reload: takes a restart, not in effect");
        }
        Ok(done)
    }
}
