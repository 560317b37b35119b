//! `hapool registrar`, `hapool pe` and `hapool resolve`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use hapool_client::{PeConfig, PeHandle, PoolUser, PuConfig};
use hapool_proto::{RateLimit, RegistrarConfig};
use hapool_wire::{
    Policy, PolicyType, PoolElement, PoolElementId, PoolHandle, RegistrarId, Transport,
};
use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

use crate::BadConfig;

/// Options of `hapool registrar`.
#[derive(clap::Args)]
pub(crate) struct RegistrarArgs {
    /// Where to serve ASAP.
    #[arg(long, default_value = "127.0.0.1:3863")]
    listen: SocketAddr,
    /// The registrar identifier, in hex (random when absent).
    #[arg(long, value_parser = parse_hex_id)]
    id: Option<u32>,
    /// How often each PE is sent a keep-alive.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    keep_alive_interval: Duration,
    /// How long a PE has to answer a keep-alive.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    keep_alive_timeout: Duration,
    /// Registrations per second one connection may send (0: no limit).
    #[arg(long, default_value_t = 100.0)]
    registration_rate: f64,
    /// Handle resolutions per second one connection may send (0: no limit).
    #[arg(long, default_value_t = 1000.0)]
    resolution_rate: f64,
    /// Where to serve the admin HTTP port (`/status`, `/metrics`); off
    /// when absent.
    #[arg(long)]
    admin: Option<SocketAddr>,
}

/// A per-connection limit of `per_second`, with a two-second burst; 0
/// means none.
fn rate(per_second: f64, flag: &str) -> anyhow::Result<RateLimit> {
    if !per_second.is_finite() || per_second < 0.0 {
        bail!(BadConfig(format!(
            "{flag} {per_second} is not a rate (0 or more per second)"
        )));
    }
    Ok(if per_second == 0.0 {
        RateLimit::UNLIMITED
    } else {
        RateLimit {
            per_second,
            burst: (per_second * 2.0).ceil().min(f64::from(u32::MAX)) as u32,
        }
    })
}

fn parse_hex_id(s: &str) -> Result<u32, String> {
    let id = u32::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("not a hexadecimal 32-bit id: {e}"))?;
    if id == 0 {
        return Err("0 is reserved".into());
    }
    Ok(id)
}

pub(crate) async fn registrar(args: RegistrarArgs) -> anyhow::Result<()> {
    let id = args
        .id
        .unwrap_or_else(|| rand::rng().random_range(1..=u32::MAX));
    let mut config = RegistrarConfig::new(RegistrarId(id));
    config.keep_alive_interval = args.keep_alive_interval;
    config.keep_alive_timeout = args.keep_alive_timeout;
    config.registration_rate = rate(args.registration_rate, "--registration-rate")?;
    config.resolution_rate = rate(args.resolution_rate, "--resolution-rate")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    warn!("no registration rules configured: any client may register into any pool");
    let admin = match args.admin {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the admin port"))?,
        ),
        None => None,
    };
    let handle = hapool_registrar::start(config, listener)?;
    println!(
        "registrar {:08x} serving ASAP on {}",
        id,
        handle.local_addr()
    );
    if let Some(listener) = admin {
        let metrics = crate::admin::install_metrics()?;
        println!("admin HTTP on {}", listener.local_addr()?);
        let client = handle.client();
        let asap = handle.local_addr();
        let status: crate::admin::StatusFn = std::sync::Arc::new(move || {
            let client = client.clone();
            Box::pin(async move { registrar_status(RegistrarId(id), asap, &client).await })
        });
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, status, metrics).await {
                warn!(error = %format!("{e:#}"), "admin port stopped");
            }
        });
    }
    shutdown_signal().await;
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
    serde_json::json!({
        "registrar_id": id.to_string(),
        "asap": asap.to_string(),
        "pools": pools,
    })
}

/// Options of `hapool pe`.
#[derive(clap::Args)]
pub(crate) struct PeArgs {
    /// A registrar to use (repeat for failover, in order of preference).
    #[arg(long = "registrar", required = true)]
    registrars: Vec<SocketAddr>,
    /// The pool to join.
    #[arg(long)]
    pool: String,
    /// The server's address, as pool users reach it (TCP).
    #[arg(long)]
    address: SocketAddr,
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
    /// Registration life.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    life: Duration,
}

fn fraction(percent: f64) -> anyhow::Result<u32> {
    if !(0.0..=100.0).contains(&percent) {
        bail!(BadConfig(format!(
            "{percent} is not a percentage between 0 and 100"
        )));
    }
    Ok((percent / 100.0 * f64::from(u32::MAX)).round() as u32)
}

/// The policy named `name` with the values given on the command line.
fn policy(args: &PeArgs) -> anyhow::Result<Policy> {
    let (load, degradation) = (fraction(args.load)?, fraction(args.degradation)?);
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

async fn probe(address: SocketAddr) -> bool {
    matches!(
        timeout(Duration::from_secs(1), TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

pub(crate) async fn pe(args: PeArgs) -> anyhow::Result<()> {
    let policy = policy(&args)?;
    let life = u32::try_from(args.life.as_millis())
        .map_err(|_| BadConfig(format!("--life {:?} is longer than 49 days", args.life)))?;
    let element = PoolElement {
        id: PoolElementId(args.id.unwrap_or(0)),
        home_registrar: RegistrarId(0),
        registration_life: life,
        user_transport: Transport::tcp(args.address),
        policy,
        asap_transport: None,
    };
    let pool = PoolHandle::from(args.pool.as_str());
    let config = PeConfig::new(args.registrars.clone(), pool, element);
    let mut running: Option<PeHandle> = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let healthy = probe(args.address).await;
        match (healthy, running.take()) {
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
    let mut config = PuConfig::new(args.registrars);
    config.items = args.items;
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

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
