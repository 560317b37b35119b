//! `hapool registrar`, `hapool pe` and `hapool resolve`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hapool_client::{PeConfig, PeHandle, PoolUser, PuConfig};

use crate::probe::Probe;
use hapool_wire::{
    Policy, PolicyType, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport,
};
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use crate::{BadConfig, config};

/// Options of `hapool registrar`. Each flag overrides the same setting of
/// the configuration file.
#[derive(clap::Args)]
pub(crate) struct RegistrarArgs {
    /// A configuration file (TOML, a `[registrar]` table).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to serve ASAP (default 127.0.0.1:3863).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The registrar identifier, in hex (random when absent).
    #[arg(long)]
    id: Option<String>,
    /// How often each PE is sent a keep-alive (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    keep_alive_interval: Option<Duration>,
    /// How long a PE has to answer a keep-alive (default 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    keep_alive_timeout: Option<Duration>,
    /// Registrations per second one connection may send (0: no limit;
    /// default 100).
    #[arg(long)]
    registration_rate: Option<f64>,
    /// Handle resolutions per second one connection may send (0: no
    /// limit; default 1000).
    #[arg(long)]
    resolution_rate: Option<f64>,
    /// Where to serve the admin HTTP port (`/status`, `/metrics`); off
    /// when absent.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Announce this registrar (ASAP_SERVER_ANNOUNCE, every second) to this
    /// UDP address, usually the multicast group 239.0.0.50:3863.
    #[arg(long)]
    announce: Option<SocketAddr>,
    /// Serve ENRP here to join a registrar cluster (9901 by convention).
    #[arg(long)]
    enrp_listen: Option<SocketAddr>,
    /// The ENRP address peers reach this registrar at (default: the
    /// --enrp-listen address).
    #[arg(long)]
    enrp_address: Option<SocketAddr>,
    /// Announce presence to this IPv4 multicast group and port (such as
    /// 239.0.0.51:9901) and find peers there.
    #[arg(long)]
    enrp_multicast: Option<SocketAddr>,
    /// The ENRP address of another registrar of the cluster (repeat for
    /// each).
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// ENRP heartbeat (default 30s); the other ENRP timers follow it
    /// unless the configuration file sets them: a silent peer is probed
    /// after two heartbeats and declared dead one heartbeat later.
    #[arg(long, value_parser = humantime::parse_duration)]
    enrp_heartbeat: Option<Duration>,
}

/// The configuration file (or the defaults) with the flags applied: as a
/// configuration file would say it (for `/config`), and checked.
fn registrar_config(args: &RegistrarArgs) -> anyhow::Result<(toml::Table, config::Registrar)> {
    let mut file = match &args.config {
        Some(path) => config::read(path)?
            .registrar
            .ok_or_else(|| BadConfig(format!("{}: no [registrar] table", path.display())))?,
        None => config::RegistrarFile::default(),
    };
    file.listen = args.listen.or(file.listen);
    file.id = args.id.clone().or(file.id);
    file.admin = args.admin.or(file.admin);
    if let Some(target) = args.announce {
        file.announce.get_or_insert_with(Default::default).to = Some(target);
    }
    file.keep_alive.interval = args.keep_alive_interval.or(file.keep_alive.interval);
    file.keep_alive.timeout = args.keep_alive_timeout.or(file.keep_alive.timeout);
    file.limits.registration_rate = args.registration_rate.or(file.limits.registration_rate);
    file.limits.resolution_rate = args.resolution_rate.or(file.limits.resolution_rate);
    if args.enrp_listen.is_some()
        || args.enrp_address.is_some()
        || args.enrp_multicast.is_some()
        || !args.peers.is_empty()
        || args.enrp_heartbeat.is_some()
    {
        let enrp = file.enrp.get_or_insert_with(Default::default);
        enrp.listen = args.enrp_listen.or(enrp.listen);
        enrp.address = args.enrp_address.or(enrp.address);
        enrp.multicast = args.enrp_multicast.or(enrp.multicast);
        if !args.peers.is_empty() {
            enrp.peers.clone_from(&args.peers);
        }
        if let Some(heartbeat) = args.enrp_heartbeat {
            let fast = hapool_proto::EnrpConfig::fast(heartbeat);
            enrp.heartbeat = Some(heartbeat);
            enrp.max_time_last_heard = enrp.max_time_last_heard.or(Some(fast.max_time_last_heard));
            enrp.max_time_no_response = enrp
                .max_time_no_response
                .or(Some(fast.max_time_no_response));
            enrp.server_hunt_timeout = enrp.server_hunt_timeout.or(Some(fast.server_hunt_timeout));
            enrp.takeover_expiry = enrp.takeover_expiry.or(Some(fast.takeover_expiry));
        }
    }
    let effective = toml::Table::try_from(config::File {
        registrar: Some(file),
        ..config::File::default()
    })
    .context("the configuration cannot be written as TOML")?;
    let registrar = config::Registrar::try_from(
        toml::Value::Table(effective.clone())
            .try_into::<config::File>()
            .context("the configuration does not read back")?
            .registrar
            .expect("written with a [registrar] table"),
    )?;
    Ok((effective, registrar))
}

pub(crate) async fn registrar(args: RegistrarArgs) -> anyhow::Result<()> {
    let (effective, registrar) = registrar_config(&args)?;
    let unprotected_enrp = registrar.enrp_unprotected();
    let config::Registrar {
        config,
        listen,
        admin,
        admin_access,
        tls,
        announce_to,
        enrp_listen,
        enrp_tls,
        enrp_multicast,
    } = registrar;
    let id = config.id.0;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(enrp) = unprotected_enrp {
        warn!(%enrp, "ENRP without TLS: anyone who reaches this port can change the handlespace and this registrar's view of its peers ([registrar.enrp.tls] makes it mutual TLS)");
    }
    if config.rules.is_empty() {
        warn!("no registration rules configured: any client may register into any pool");
    } else {
        info!(rules = config.rules.len(), "registration rules in force");
    }
    // The metrics recorder goes in before the registrar starts, so that
    // its first gauges are recorded.
    let admin = match admin {
        Some(addr) => Some(crate::admin::bind(addr).await?),
        None => None,
    };
    let tls = match tls {
        Some((addr, server)) => Some(hapool_registrar::TlsListener {
            listener: TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for ASAP over TLS"))?,
            config: server,
        }),
        None => None,
    };
    let enrp = match enrp_listen {
        Some(addr) => Some(hapool_registrar::EnrpListener {
            listener: TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for ENRP"))?,
            tls: enrp_tls,
            multicast: enrp_multicast,
        }),
        None => None,
    };
    let handle = hapool_registrar::start_serving(
        config,
        hapool_registrar::Listeners {
            asap: listener,
            tls,
            announce_to,
            enrp,
        },
    )?;
    println!(
        "registrar {:08x} serving ASAP on {}",
        id,
        handle.local_addr()
    );
    if let Some(addr) = handle.tls_addr() {
        println!("ASAP over TLS on {addr}");
    }
    if let Some(addr) = handle.enrp_addr() {
        println!("ENRP on {addr}");
    }
    if let Some((listener, metrics)) = admin {
        println!(
            "admin {} on {}",
            if admin_access.is_tls() {
                "HTTPS"
            } else {
                "HTTP"
            },
            listener.local_addr()?
        );
        let client = handle.client();
        let asap = handle.local_addr();
        let status: crate::admin::StatusFn = std::sync::Arc::new(move || {
            let client = client.clone();
            Box::pin(async move { registrar_status(RegistrarId(id), asap, &client).await })
        });
        let routes = crate::clone::config_route("registrar", effective, admin_access.clone());
        tokio::spawn(async move {
            if let Err(e) =
                crate::admin::serve_with(listener, admin_access, status, metrics, None, routes)
                    .await
            {
                warn!(error = %format!("{e:#}"), "admin port stopped");
            }
        });
    }
    let stop = shutdown_signal();
    tell_service_manager(hapool_net::notify::READY);
    stop.await;
    tell_service_manager(hapool_net::notify::STOPPING);
    info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// The registrar's `/status` document.
async fn registrar_status(
    id: RegistrarId,
    asap: SocketAddr,
    client: &hapool_registrar::RegistrarClient,
) -> serde_json::Value {
    let pools: Vec<serde_json::Value> = client
        .snapshot()
        .await
        .into_iter()
        .map(|pool| {
            let elements: Vec<serde_json::Value> = pool
                .elements
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "id": e.id.to_string(),
                        "transport": e.user_transport.to_string(),
                        "policy": e.policy.to_string(),
                        "load": e.policy.load().map(|l| f64::from(l) / f64::from(u32::MAX)),
                        "home": e.home_registrar.to_string(),
                        "registration_life_ms": e.registration_life,
                    })
                })
                .collect();
            serde_json::json!({
                "pool": pool.pool_handle.to_string(),
                "policy": pool.elements.first().map(|e| e.policy.policy_type().to_string()),
                "elements": elements,
            })
        })
        .collect();
    let peers: Vec<serde_json::Value> = client
        .peers()
        .await
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "id": p.id.to_string(),
                "address": p.address.to_string(),
                "last_heard_ms": p.last_heard.as_millis() as u64,
                "owned": p.owned,
            })
        })
        .collect();
    serde_json::json!({
        "registrar_id": id.to_string(),
        "asap": asap.to_string(),
        "pools": pools,
        "peers": peers,
    })
}

/// How `hapool pe` and `hapool resolve` reach registrars over TLS.
#[derive(clap::Args, Clone)]
pub(crate) struct ClientTlsArgs {
    /// Reach the registrars over TLS, trusting these authorities (PEM).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) to be known by the name in it.
    #[arg(long, requires = "tls_key", requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the registrars' certificates must carry (default: the
    /// first registrar's IP address).
    #[arg(long, requires = "tls_ca")]
    tls_server_name: Option<String>,
}

impl ClientTlsArgs {
    /// The TLS settings, or `None` for plain TCP.
    fn build(&self, first: SocketAddr) -> anyhow::Result<Option<hapool_client::ClientTls>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let config =
            hapool_net::tls::client_config(ca, identity).map_err(|e| BadConfig(e.to_string()))?;
        let name = self
            .tls_server_name
            .clone()
            .unwrap_or_else(|| first.ip().to_string());
        let server_name = hapool_net::tls::ServerName::try_from(name.clone()).map_err(|_| {
            BadConfig(format!(
                "--tls-server-name {name:?} is not a DNS name or an IP address"
            ))
        })?;
        Ok(Some(hapool_client::ClientTls {
            config,
            server_name,
        }))
    }
}

/// Options of `hapool pe`.
#[derive(clap::Args)]
pub(crate) struct PeArgs {
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// A registrar to use (repeat for failover, in order of preference).
    #[arg(long = "registrar", required = true)]
    registrars: Vec<SocketAddr>,
    /// The pool to join.
    #[arg(long)]
    pool: String,
    /// The server's address, as pool users reach it (TCP).
    #[arg(long)]
    address: SocketAddr,
    /// A file holding the shared token the registrars' rules ask for (sent
    /// with every registration; use TLS to keep it off the wire in the
    /// clear).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The pool's selection policy: rr, wrr, rand, wrand, pri, lu, lud,
    /// plu, rlu, rplu, rlud, plud, rplud, wrand-dpf, lu-dpf, lud-dpf,
    /// plu-dpf, plud-dpf.
    #[arg(long, default_value = "rr")]
    policy: String,
    /// Weight (weighted policies).
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Priority (priority policy; higher is preferred).
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// Load in percent (least-used policies).
    #[arg(long, default_value_t = 0.0)]
    load: f64,
    /// Load degradation in percent (degradation policies).
    #[arg(long, default_value_t = 0.0)]
    degradation: f64,
    /// PE identifier (random when absent).
    #[arg(long)]
    id: Option<u32>,
    /// How often to probe the server with a TCP connect; the PE is
    /// registered only while the probe passes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// Registration life (the PE re-registers every 10 s, or every third of
    /// this when that is shorter).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    life: Duration,
    /// Probe health with an HTTP GET of this URL (a 2xx answer passes)
    /// instead of a TCP connect.
    #[arg(long, conflicts_with = "probe_command")]
    probe_http: Option<String>,
    /// Probe health with this shell command (exit status 0 passes within
    /// 5 s; past that it is killed, with whatever it started) instead of a
    /// TCP connect.
    #[arg(long)]
    probe_command: Option<String>,
    /// Read the load (a percentage) from this shell command's output at
    /// every probe (within 5 s, as `--probe-command`), and re-register when
    /// it changes.
    #[arg(long, conflicts_with = "load_url")]
    load_command: Option<String>,
    /// Read the load (a percentage) from the body of a GET of this URL at
    /// every probe, and re-register when it changes.
    #[arg(long)]
    load_url: Option<String>,
}

fn fraction(percent: f64) -> anyhow::Result<u32> {
    if !(0.0..=100.0).contains(&percent) {
        bail!(BadConfig(format!(
            "{percent} is not a percentage between 0 and 100"
        )));
    }
    Ok((percent / 100.0 * f64::from(u32::MAX)).round() as u32)
}

/// The policy named by `--policy` with the values given on the command
/// line, and the load `load_percent`.
fn policy(args: &PeArgs, load_percent: f64) -> anyhow::Result<Policy> {
    let (load, degradation) = (fraction(load_percent)?, fraction(args.degradation)?);
    let weight = args.weight;
    let code = [
        PolicyType::ROUND_ROBIN,
        PolicyType::WEIGHTED_ROUND_ROBIN,
        PolicyType::RANDOM,
        PolicyType::WEIGHTED_RANDOM,
        PolicyType::PRIORITY,
        PolicyType::LEAST_USED,
        PolicyType::LEAST_USED_DEGRADATION,
        PolicyType::PRIORITY_LEAST_USED,
        PolicyType::RANDOMIZED_LEAST_USED,
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED,
        PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION,
        PolicyType::PRIORITY_LEAST_USED_DEGRADATION,
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION,
        PolicyType::WEIGHTED_RANDOM_DPF,
        PolicyType::LEAST_USED_DPF,
        PolicyType::LEAST_USED_DEGRADATION_DPF,
        PolicyType::PRIORITY_LEAST_USED_DPF,
        PolicyType::PRIORITY_LEAST_USED_DEGRADATION_DPF,
    ]
    .into_iter()
    .find(|t| {
        t.abbreviation()
            .is_some_and(|a| a.eq_ignore_ascii_case(&args.policy))
    })
    .ok_or_else(|| BadConfig(format!("unknown policy {:?} (see --help)", args.policy)))?;
    Ok(match code {
        PolicyType::ROUND_ROBIN => Policy::RoundRobin,
        PolicyType::WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight },
        PolicyType::RANDOM => Policy::Random,
        PolicyType::WEIGHTED_RANDOM => Policy::WeightedRandom { weight },
        PolicyType::PRIORITY => Policy::Priority {
            priority: args.priority,
        },
        PolicyType::LEAST_USED => Policy::LeastUsed { load },
        PolicyType::LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation { load, degradation },
        PolicyType::PRIORITY_LEAST_USED => Policy::PriorityLeastUsed { load, degradation },
        PolicyType::RANDOMIZED_LEAST_USED => Policy::RandomizedLeastUsed { load },
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED => {
            Policy::RandomizedPriorityLeastUsed { load, degradation }
        }
        PolicyType::RANDOMIZED_LEAST_USED_DEGRADATION => {
            Policy::RandomizedLeastUsedDegradation { load, degradation }
        }
        PolicyType::PRIORITY_LEAST_USED_DEGRADATION => {
            Policy::PriorityLeastUsedDegradation { load, degradation }
        }
        PolicyType::RANDOMIZED_PRIORITY_LEAST_USED_DEGRADATION => {
            Policy::RandomizedPriorityLeastUsedDegradation { load, degradation }
        }
        PolicyType::WEIGHTED_RANDOM_DPF => Policy::WeightedRandomDpf {
            weight,
            weight_dpf: 0,
            distance: 0,
        },
        PolicyType::LEAST_USED_DPF => Policy::LeastUsedDpf {
            load,
            load_dpf: 0,
            distance: 0,
        },
        PolicyType::LEAST_USED_DEGRADATION_DPF => Policy::LeastUsedDegradationDpf {
            load,
            degradation,
            load_dpf: 0,
            distance: 0,
        },
        PolicyType::PRIORITY_LEAST_USED_DPF => Policy::PriorityLeastUsedDpf {
            load,
            degradation,
            load_dpf: 0,
            distance: 0,
        },
        _ => Policy::PriorityLeastUsedDegradationDpf {
            load,
            degradation,
            load_dpf: 0,
            distance: 0,
        },
    })
}

/// Whether the server passes its health probe.
async fn healthy(args: &PeArgs) -> bool {
    let probe = if let Some(url) = &args.probe_http {
        Probe::Http(url.clone())
    } else if let Some(command) = &args.probe_command {
        Probe::Command(command.clone())
    } else {
        Probe::Tcp(args.address)
    };
    probe.passes().await
}

/// The server's load in percent, from `--load-command` or `--load-url`;
/// `None` when neither is given.
async fn read_load(args: &PeArgs) -> Option<anyhow::Result<f64>> {
    let text = if let Some(command) = &args.load_command {
        match crate::probe::run_shell(command, crate::probe::COMMAND_LIMIT).await {
            Ok((status, output)) if status.success() => {
                String::from_utf8_lossy(&output).into_owned()
            }
            Ok((status, _)) => {
                return Some(Err(anyhow::anyhow!("--load-command exited with {status}")));
            }
            Err(e) => return Some(Err(anyhow::anyhow!("--load-command {e}"))),
        }
    } else if let Some(url) = &args.load_url {
        match timeout(Duration::from_secs(2), crate::admin::http_get(url)).await {
            Ok(Ok((code, body))) if code.is_success() => {
                String::from_utf8_lossy(&body).into_owned()
            }
            Ok(Ok((code, _))) => return Some(Err(anyhow::anyhow!("--load-url answered {code}"))),
            Ok(Err(e)) => return Some(Err(e)),
            Err(_) => return Some(Err(anyhow::anyhow!("--load-url took over 2 s"))),
        }
    } else {
        return None;
    };
    Some(
        text.trim()
            .trim_end_matches('%')
            .parse::<f64>()
            .ok()
            .filter(|p| (0.0..=100.0).contains(p))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "load {:?} is not a percentage between 0 and 100",
                    text.trim()
                )
            }),
    )
}

pub(crate) async fn pe(args: PeArgs) -> anyhow::Result<()> {
    let mut load = args.load;
    let life = u32::try_from(args.life.as_millis())
        .map_err(|_| BadConfig(format!("--life {:?} is longer than 49 days", args.life)))?;
    let element = PoolElement {
        id: PoolElementId(args.id.unwrap_or(0)),
        home_registrar: RegistrarId(0),
        registration_life: life,
        user_transport: Transport::tcp(args.address),
        policy: policy(&args, load)?,
        asap_transport: None,
    };
    let pool = PoolHandle::from(args.pool.as_str());
    let mut config = PeConfig::new(args.registrars.clone(), pool, element);
    config.tls = args.tls.build(args.registrars[0])?;
    if let Some(path) = &args.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| {
            BadConfig(format!(
                "--token-file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(BadConfig(format!(
                "--token-file {}: the file is empty",
                path.display()
            ))
            .into());
        }
        config.auth_token = Some(bytes::Bytes::from(token.to_owned()));
    }
    let mut running: Option<PeHandle> = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        match read_load(&args).await {
            Some(Ok(now)) if (now - load).abs() >= 0.5 => {
                load = now;
                config.element.policy = policy(&args, load)?;
                if let Some(pe) = &running {
                    println!("load of {} is now {load}%: re-registering", args.address);
                    pe.set_policy(config.element.policy.clone()).await;
                }
            }
            Some(Err(e)) => {
                warn!(error = %format!("{e:#}"), "cannot read the load; keeping the last one");
            }
            _ => {}
        }
        match (healthy(&args).await, running.take()) {
            (true, None) => {
                let pe = PeHandle::start(config.clone());
                println!(
                    "{} is up: registering as PE {} in pool {}",
                    args.address,
                    pe.id(),
                    args.pool
                );
                running = Some(pe);
            }
            (false, Some(pe)) => {
                println!("{} is down: deregistering PE {}", args.address, pe.id());
                pe.stop().await;
            }
            (true, Some(pe)) => running = Some(pe),
            (false, None) => {}
        }
        tokio::select! {
            () = &mut stop => break,
            () = sleep(args.probe_interval) => {}
        }
    }
    if let Some(pe) = running {
        println!("deregistering PE {}", pe.id());
        pe.stop().await;
    }
    Ok(())
}

/// Options of `hapool resolve`.
#[derive(clap::Args)]
pub(crate) struct ResolveArgs {
    #[command(flatten)]
    tls: ClientTlsArgs,
    /// The pool to resolve.
    pool: String,
    /// A registrar to ask (repeat for failover).
    #[arg(long = "registrar", default_value = "127.0.0.1:3863")]
    registrars: Vec<SocketAddr>,
    /// How many PEs to ask for (the registrar's default when absent).
    #[arg(long)]
    items: Option<u32>,
}

pub(crate) async fn resolve(args: ResolveArgs) -> anyhow::Result<()> {
    let mut config = PuConfig::new(args.registrars.clone());
    config.items = args.items;
    config.tls = args.tls.build(args.registrars[0])?;
    let user = PoolUser::new(config);
    let pool = PoolHandle::from(args.pool.as_str());
    let elements = user
        .resolve(&pool)
        .await
        .with_context(|| format!("cannot resolve pool {:?}", args.pool))?;
    for e in elements {
        println!(
            "{}  {}  {}  home {}",
            e.id, e.user_transport, e.policy, e.home_registrar
        );
    }
    Ok(())
}

/// Tells the service manager `state` (`hapool_net::notify`: `READY=1`
/// and the like, for units of `Type=notify`) when it listens; one that
/// cannot be told is warned of, and the daemon goes on.
pub(crate) fn tell_service_manager(state: &str) {
    match hapool_net::notify::notify(state) {
        Ok(true) => debug!(state, "service manager told"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, state, "cannot tell the service manager"),
    }
}

/// Listens for Ctrl-C and SIGTERM from the call on (not from the first
/// poll), so that a process that tells its service manager it is ready
/// after calling this has its handlers in place: a manager may stop it at
/// once. The future resolves on either signal.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Options of `hapool discover`.
#[derive(clap::Args)]
pub(crate) struct DiscoverArgs {
    /// Where announcements arrive: a multicast group and port, or an
    /// address to bind.
    #[arg(long, default_value = "239.0.0.50:3863")]
    channel: SocketAddr,
    /// How long to listen.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// Prints the registrars that announce themselves within the wait.
pub(crate) async fn discover(args: DiscoverArgs) -> anyhow::Result<()> {
    let found = hapool_client::discover(args.channel, args.wait)
        .await
        .with_context(|| format!("cannot listen for announcements on {}", args.channel))?;
    if found.is_empty() {
        bail!(
            "no registrar announced itself on {} within {:?}",
            args.channel,
            args.wait
        );
    }
    for (id, addr) in found {
        println!("registrar {id} at {addr}");
    }
    Ok(())
}

/// Options of `hapool check-config`.
#[derive(clap::Args)]
pub(crate) struct CheckConfigArgs {
    /// The configuration file to check.
    file: PathBuf,
}

/// `hapool check-config`.
pub(crate) fn check_config(args: &CheckConfigArgs) -> anyhow::Result<()> {
    check_file(&args.file)
}

/// Validates the configuration file at `path` and says what it
/// configures.
pub(crate) fn check_file(path: &Path) -> anyhow::Result<()> {
    let file = config::read(path)?;
    if file.registrar.is_none() && file.vip.is_none() && file.gateway.is_none() {
        return Err(BadConfig(format!(
            "{}: no [registrar], [gateway] or [vip] table",
            path.display()
        ))
        .into());
    }
    if let Some(gateway) = file.gateway {
        let lines = crate::gateway::describe(gateway)?;
        if file.registrar.is_none() && file.vip.is_none() {
            println!("{}: valid", path.display());
        }
        for line in lines {
            println!("{line}");
        }
    }
    if let Some(vip) = file.vip {
        let lines = crate::vip::describe(vip)?;
        if file.registrar.is_none() {
            println!("{}: valid", path.display());
        }
        for line in lines {
            println!("{line}");
        }
    }
    let Some(registrar) = file.registrar else {
        return Ok(());
    };
    let r = config::Registrar::try_from(registrar)?;
    let c = &r.config;
    println!("{}: valid", path.display());
    println!(
        "registrar {:08x}: ASAP on {}, admin {}, keep-alive every {:?} (timeout {:?}), at most {} pools of {} PEs, {} registration rule(s)",
        c.id.0,
        r.listen,
        r.admin.map_or("off".to_owned(), |a| a.to_string()),
        c.keep_alive_interval,
        c.keep_alive_timeout,
        c.handlespace.max_pools,
        c.handlespace.max_elements_per_pool,
        c.rules.len(),
    );
    if let Some((addr, _)) = &r.tls {
        println!("ASAP over TLS on {addr}");
    }
    if let Some(listen) = r.enrp_listen {
        let e = &c.enrp;
        println!(
            "ENRP{} on {listen} (peers reach it at {}), {} peer(s), heartbeat {:?}, probe after {:?}, dead after {:?} more",
            if r.enrp_tls.is_some() {
                " over mutual TLS"
            } else {
                ""
            },
            e.address.map_or("?".to_owned(), |a| a.to_string()),
            e.peers.len(),
            e.heartbeat_cycle,
            e.max_time_last_heard,
            e.max_time_no_response
        );
    }
    if let Some(enrp) = r.enrp_unprotected() {
        println!(
            "warning: ENRP on {enrp} without TLS: anyone who reaches it can change the handlespace and the registrar's view of its peers"
        );
    }
    if c.rules.is_empty() {
        println!("warning: no registration rules: any client may register into any pool");
    }
    Ok(())
}
