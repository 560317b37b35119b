//! `hapool vip`: virtual IP addresses that move to a surviving machine
//! (VRRPv3). One or more virtual routers from `[[vip.router]]` of the
//! configuration file, or one from the flags; tracking checks that lower
//! the priority while they fail; an admin port with `/status` and
//! `/metrics`; SIGTERM makes a master hand over at once (priority 0).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hapool_vip::{RouterSpec, RouterStatus, VipHandle};
use hapool_vrrp::{Addresses, ChecksumMode, RouterConfig, State};
use tracing::{info, warn};

use crate::BadConfig;
use crate::config::{self, TrackFile, VipFile, VipRouterFile};
use crate::probe::Probe;

/// Options of `hapool vip`.
#[derive(clap::Args)]
pub(crate) struct VipArgs {
    /// A configuration file with a `[vip]` table and `[[vip.router]]`s.
    #[arg(long)]
    config: Option<PathBuf>,
    /// One router from flags: its interface.
    #[arg(long, conflicts_with = "config")]
    interface: Option<String>,
    /// This machine's address on the interface: its IPv4 address, or for
    /// IPv6 virtual addresses its link-local address (default: the one
    /// the interface has).
    #[arg(long, requires = "interface")]
    address: Option<IpAddr>,
    /// The virtual router id (1-255).
    #[arg(long, requires = "interface")]
    vrid: Option<u8>,
    /// 1-255, or primary (200), secondary (150), backup (100).
    #[arg(long, requires = "interface")]
    priority: Option<String>,
    /// A virtual address, A.B.C.D/PREFIX or X::Y/PREFIX (repeat for
    /// more; all of one family).
    #[arg(long = "vip", requires = "interface")]
    vips: Vec<String>,
    /// Between advertisements (default 1s; 10ms steps).
    #[arg(long, value_parser = humantime::parse_duration, requires = "interface")]
    advert_interval: Option<Duration>,
    /// Do not take over from a lower-priority master.
    #[arg(long, requires = "interface")]
    no_preempt: bool,
    /// Where to serve the admin port (`/status`, `/metrics`).
    #[arg(long)]
    admin: Option<SocketAddr>,
}

/// A router to run, and its tracking checks.
struct Router {
    spec: RouterSpec,
    tracks: Vec<(Probe, u8, Duration)>,
}

fn priority(value: &toml::Value, key: &str) -> Result<u8, BadConfig> {
    match value {
        toml::Value::Integer(n) if (1..=255).contains(n) => Ok(*n as u8),
        toml::Value::String(s) => named_priority(s, key),
        other => Err(BadConfig(format!(
            "{key} = {other}: a priority is 1 to 255, or primary, secondary, backup"
        ))),
    }
}

fn named_priority(text: &str, key: &str) -> Result<u8, BadConfig> {
    match text {
        "primary" => Ok(200),
        "secondary" => Ok(150),
        "backup" => Ok(100),
        other => other.parse::<u8>().ok().filter(|p| *p >= 1).ok_or_else(|| {
            BadConfig(format!(
                "{key} = {other:?}: a priority is 1 to 255, or primary, secondary, backup"
            ))
        }),
    }
}

fn router(file: VipRouterFile, i: usize) -> Result<Router, BadConfig> {
    let key = |k: &str| format!("vip.router[{i}].{k}");
    if file.vrid == 0 {
        return Err(BadConfig(format!(
            "{} = 0: a VRID is 1 to 255",
            key("vrid")
        )));
    }
    let priority = match &file.priority {
        Some(v) => priority(v, &key("priority"))?,
        None => 100,
    };
    let interval = file.advert_interval.unwrap_or(Duration::from_secs(1));
    let centiseconds = interval.as_millis() / 10;
    if !(1..=4095).contains(&centiseconds) || interval.as_millis() % 10 != 0 {
        return Err(BadConfig(format!(
            "{} = {interval:?}: 10ms to 40.95s, in steps of 10ms",
            key("advert_interval")
        )));
    }
    if file.addresses.is_empty() {
        return Err(BadConfig(format!(
            "{}: at least one virtual address",
            key("addresses")
        )));
    }
    let mut vips = Vec::new();
    let mut prefix = None;
    for text in &file.addresses {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text.as_str(), None),
        };
        let ip: IpAddr = ip.parse().map_err(|e| {
            BadConfig(format!(
                "{} = {text:?}: not an IP address: {e}",
                key("addresses")
            ))
        })?;
        if vips
            .first()
            .is_some_and(|first: &IpAddr| first.is_ipv4() != ip.is_ipv4())
        {
            return Err(BadConfig(format!(
                "{} = {text:?}: every virtual address of a router is of one family (IPv4 or IPv6)",
                key("addresses")
            )));
        }
        let most = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .map_or(Some(most), |l| l.parse().ok())
            .filter(|l| *l <= most)
            .ok_or_else(|| {
                BadConfig(format!(
                    "{} = {text:?}: bad prefix length",
                    key("addresses")
                ))
            })?;
        if prefix.is_some_and(|p| p != len) {
            return Err(BadConfig(format!(
                "{}: every virtual address needs the same prefix length",
                key("addresses")
            )));
        }
        prefix = Some(len);
        vips.push(ip);
    }
    let v6 = vips.first().is_some_and(IpAddr::is_ipv6);
    let address = match (file.address, v6) {
        (Some(IpAddr::V4(a)), false) => IpAddr::V4(a),
        (None, false) => {
            return Err(BadConfig(format!(
                "{}: required for IPv4 virtual addresses (this machine's address on {})",
                key("address"),
                file.interface
            )));
        }
        (Some(IpAddr::V6(a)), true) if a.is_unicast_link_local() => IpAddr::V6(a),
        (None, true) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (Some(other), _) => {
            return Err(BadConfig(format!(
                "{} = {other}: for {} virtual addresses, {}",
                key("address"),
                if v6 { "IPv6" } else { "IPv4" },
                if v6 {
                    "this machine's link-local address (fe80::/10), or none"
                } else {
                    "this machine's IPv4 address"
                }
            )));
        }
    };
    if let Some(peer) = file.unicast_peers.iter().find(|p| p.is_ipv6() != v6) {
        return Err(BadConfig(format!(
            "{} = {peer}: not of the virtual addresses' family",
            key("unicast_peers")
        )));
    }
    let checksum = match file.checksum.as_deref() {
        None | Some("pseudo-header") => ChecksumMode::PseudoHeader,
        Some("message-only") => ChecksumMode::MessageOnly,
        Some("either") => ChecksumMode::Either,
        Some(other) => {
            return Err(BadConfig(format!(
                "{} = {other:?}: pseudo-header, message-only or either",
                key("checksum")
            )));
        }
    };
    let mut tracks = Vec::new();
    for (t, track) in file.track.into_iter().enumerate() {
        tracks.push(track_probe(track, &format!("vip.router[{i}].track[{t}]"))?);
    }
    Ok(Router {
        spec: RouterSpec {
            interface: file.interface,
            address,
            router: RouterConfig {
                vrid: file.vrid,
                priority,
                advert_interval: centiseconds as u16,
                preempt: file.preempt.unwrap_or(true),
                preempt_delay: file.preempt_delay.unwrap_or_default(),
                accept_mode: file.accept_mode.unwrap_or(false),
                primary_address: address,
                addresses: Addresses::from_ips(&vips).expect("one family: checked above"),
            },
            prefix_len: prefix.unwrap_or(if v6 { 128 } else { 32 }),
            unicast_peers: file.unicast_peers,
            checksum,
            notify: file.notify,
        },
        tracks,
    })
}

/// The advertisements' source as the operator reads it.
fn source_text(address: IpAddr) -> String {
    if address.is_unspecified() {
        "its IPv6 link-local address".to_owned()
    } else {
        address.to_string()
    }
}

fn track_probe(track: TrackFile, key: &str) -> Result<(Probe, u8, Duration), BadConfig> {
    let probe = match (track.tcp, track.http, track.command) {
        (Some(addr), None, None) => Probe::Tcp(addr),
        (None, Some(url), None) => Probe::Http(url),
        (None, None, Some(command)) => Probe::Command(command),
        _ => {
            return Err(BadConfig(format!(
                "{key}: exactly one of tcp, http, command"
            )));
        }
    };
    Ok((
        probe,
        track.weight.unwrap_or(50),
        track.interval.unwrap_or(Duration::from_secs(1)),
    ))
}

/// The routers, the admin address and who may use it, from the file or
/// the flags.
fn routers(
    args: &VipArgs,
) -> anyhow::Result<(Vec<Router>, Option<SocketAddr>, crate::admin::Access)> {
    let file = match &args.config {
        Some(path) => config::read(path)?
            .vip
            .ok_or_else(|| BadConfig(format!("{}: no [vip] table", path.display())))?,
        None => {
            let interface = args.interface.clone().ok_or_else(|| {
                BadConfig("give --config FILE, or --interface and the router's flags".into())
            })?;
            let address = args.address;
            let vrid = args
                .vrid
                .ok_or_else(|| BadConfig("--vrid is required".into()))?;
            VipFile {
                admin: None,
                admin_tls: None,
                router: vec![VipRouterFile {
                    interface,
                    address,
                    vrid,
                    priority: args.priority.clone().map(toml::Value::String),
                    advert_interval: args.advert_interval,
                    preempt: Some(!args.no_preempt),
                    preempt_delay: None,
                    accept_mode: None,
                    addresses: args.vips.clone(),
                    unicast_peers: Vec::new(),
                    checksum: None,
                    notify: None,
                    track: Vec::new(),
                }],
            }
        }
    };
    let admin = args.admin.or(file.admin);
    let access = crate::admin::Access::load(file.admin_tls.as_ref(), "vip.admin_tls")?;
    if file.router.is_empty() {
        return Err(BadConfig("[vip]: no [[vip.router]]".into()).into());
    }
    let routers = file
        .router
        .into_iter()
        .enumerate()
        .map(|(i, r)| router(r, i))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((routers, admin, access))
}

/// Validates a `[vip]` table for `hapool check-config`; returns what it
/// configures, one line per router.
pub(crate) fn describe(file: VipFile) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for (i, r) in file.router.into_iter().enumerate() {
        let r = router(r, i)?;
        let c = &r.spec.router;
        lines.push(format!(
            "virtual router {} on {} ({}): priority {}, advertisements every {} ms, addresses {:?}, {} tracking check(s)",
            c.vrid,
            r.spec.interface,
            source_text(r.spec.address),
            c.priority,
            u32::from(c.advert_interval) * 10,
            c.addresses.to_vec(),
            r.tracks.len()
        ));
    }
    Ok(lines)
}

fn status_json(status: &RouterStatus) -> serde_json::Value {
    serde_json::json!({
        "vrid": status.vrid,
        "interface": status.interface,
        "state": match status.state {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        },
        "priority": status.priority,
        "configured_priority": status.configured_priority,
        "addresses": status.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "advertisements_sent": status.sent,
        "advertisements_received": status.received,
        "invalid": status.invalid,
    })
}

/// Runs the tracking checks of one router: every check interval, the
/// priority is the configured one less the weights of the failing checks
/// (at least 1). The owner (255) is not tracked.
fn track(handle: &VipHandle, configured: u8, tracks: Vec<(Probe, u8, Duration)>) {
    if tracks.is_empty() || configured == 255 {
        return;
    }
    let period = tracks
        .iter()
        .map(|t| t.2)
        .min()
        .unwrap_or(Duration::from_secs(1));
    let setter = handle.priority_setter();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut last = configured;
        loop {
            tick.tick().await;
            let mut lowered = 0u16;
            for (probe, weight, _) in &tracks {
                if !probe.passes().await {
                    lowered += u16::from(*weight);
                }
            }
            let now = u16::from(configured).saturating_sub(lowered).max(1) as u8;
            if now != last {
                info!(from = last, to = now, "tracking changes the priority");
                last = now;
                if !setter.set(now).await {
                    return;
                }
            }
        }
    });
}

pub(crate) async fn vip(args: VipArgs) -> anyhow::Result<()> {
    let (routers, admin, access) = routers(&args)?;
    let admin = match admin {
        Some(addr) => Some(crate::admin::bind(addr).await?),
        None => None,
    };
    let mut handles = Vec::new();
    let mut sources: Vec<Arc<Mutex<RouterStatus>>> = Vec::new();
    for r in routers {
        let vrid = r.spec.router.vrid;
        let configured = r.spec.router.priority;
        let handle = hapool_vip::start(r.spec.clone())
            .with_context(|| format!("virtual router {vrid} on {}", r.spec.interface))?;
        println!(
            "virtual router {vrid} on {} ({}), priority {configured}",
            r.spec.interface,
            source_text(r.spec.address)
        );
        track(&handle, configured, r.tracks);
        sources.push(handle.status_source());
        handles.push(handle);
    }
    if let Some((listener, metrics)) = admin {
        println!("admin HTTP on {}", listener.local_addr()?);
        let status: crate::admin::StatusFn = Arc::new(move || {
            let routers: Vec<serde_json::Value> = sources
                .iter()
                .map(|s| status_json(&s.lock().expect("status lock")))
                .collect();
            Box::pin(async move { serde_json::json!({ "routers": routers }) })
        });
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, access, status, metrics).await {
                warn!(error = %format!("{e:#}"), "admin port stopped");
            }
        });
    }
    let stop = crate::serve::shutdown_signal();
    crate::serve::tell_service_manager(hapool_net::notify::READY);
    stop.await;
    crate::serve::tell_service_manager(hapool_net::notify::STOPPING);
    info!("shutting down: masters hand over");
    for handle in handles {
        handle.shutdown().await;
    }
    Ok(())
}
