//! `hapool gateway`: the proxy in front of pools, from `[gateway]` of a
//! configuration file or from flags; and `hapool gateway ctl`, which lists
//! members and sessions and sets operator marks through the admin port.
//!
//! Here: the command's flags, the gateway's start, reloads and shutdown.
//! `file` reads `[gateway]` into the gateway it plans; `ctl` holds the
//! admin port's control routes and the `ctl` command that calls them.

mod ctl;
mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::{Context, bail};
use hapool_gateway::tickets::TicketKeys;
use hapool_gateway::{Gateway, GatewayView, Reloaded};
use serde_json::Value;
use tracing::{info, warn};

use crate::BadConfig;

use ctl::{CtlArgs, control, control_routes};
use file::Planned;
pub(crate) use file::{GatewayFile, describe};

/// Options of `hapool gateway`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct GatewayArgs {
    #[command(subcommand)]
    command: Option<GatewayCommand>,
    /// A configuration file with a `[gateway]` table.
    #[arg(long)]
    config: Option<PathBuf>,
    /// One listener from flags: where it listens.
    #[arg(long, conflicts_with = "config")]
    listen: Option<SocketAddr>,
    /// http (default) or tcp.
    #[arg(long, value_enum, requires = "listen")]
    protocol: Option<ProtocolArg>,
    /// The pool it serves.
    #[arg(long, requires = "listen")]
    pool: Option<String>,
    /// A static member (repeat); without any, the registrars are asked.
    #[arg(long = "member", requires = "listen")]
    members: Vec<SocketAddr>,
    /// A registrar (repeat).
    #[arg(long = "registrar", requires = "listen")]
    registrars: Vec<SocketAddr>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to serve the admin port (`/status`, `/metrics`, control).
    #[arg(long)]
    admin: Option<SocketAddr>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Http,
    Tcp,
}

#[derive(clap::Subcommand)]
enum GatewayCommand {
    /// Operate a running gateway through its admin port.
    Ctl(CtlArgs),
    /// Print a new TLS session ticket key: a line for the file that
    /// `gateway.ticket_keys` names.
    TicketKey,
}

/// The gateway the configuration file or the flags describe, and its
/// configuration as a file would say it (for `/config`).
fn planned(args: &GatewayArgs) -> anyhow::Result<(Planned, toml::Table)> {
    let mut file = if let Some(path) = &args.config {
        let file = crate::config::read(path)?;
        let Some(gateway) = file.gateway else {
            return Err(BadConfig(format!("{}: no [gateway] table", path.display())).into());
        };
        gateway
    } else {
        let Some(listen) = args.listen else {
            return Err(BadConfig(
                "hapool gateway needs --config FILE, or --listen ADDR --pool NAME with --member or --registrar".into(),
            )
            .into());
        };
        let Some(pool) = &args.pool else {
            return Err(BadConfig("--listen needs --pool NAME".into()).into());
        };
        let protocol = match args.protocol {
            Some(ProtocolArg::Tcp) => "tcp",
            _ => "http",
        };
        let members: Vec<String> = args.members.iter().map(|m| format!("\"{m}\"")).collect();
        let registrars: Vec<String> = args.registrars.iter().map(|r| format!("\"{r}\"")).collect();
        let text = format!(
            "registrars = [{}]\n[[listener]]\nlisten = \"{listen}\"\nprotocol = \"{protocol}\"\npool = {pool:?}\n[[pool]]\nhandle = {pool:?}\n{}",
            registrars.join(", "),
            if members.is_empty() {
                String::new()
            } else {
                format!("members = [{}]\n", members.join(", "))
            }
        );
        toml::from_str::<GatewayFile>(&text).context("flags")?
    };
    file.admin = args.admin.or(file.admin);
    file.threads = args.threads.or(file.threads);
    let mut effective = toml::Table::new();
    effective.insert(
        "gateway".into(),
        toml::Value::try_from(&file).context("the configuration cannot be written as TOML")?,
    );
    let mut planned = Planned::try_from(file)?;
    if let Some(threads) = planned.threads {
        planned.config.workers = threads;
    }
    planned.config.side_listeners = planned.admin.into_iter().collect();
    Ok((planned, effective))
}

/// `hapool gateway`: builds the runtime with the configured threads.
pub(crate) fn main(args: GatewayArgs) -> anyhow::Result<()> {
    match args.command {
        Some(GatewayCommand::Ctl(ctl)) => return crate::runtime()?.block_on(control(ctl)),
        Some(GatewayCommand::TicketKey) => {
            println!(
                "{}",
                TicketKeys::new_key().context("no random bytes for a key")?
            );
            return Ok(());
        }
        None => {}
    }
    without_huge_pages();
    // Taken before anything else opens a descriptor or reads the
    // configuration: a service manager's sockets are this process's.
    let passed = hapool_net::activation::passed_listeners()
        .map_err(|e| BadConfig(format!("socket activation: {e}")))?;
    let (planned, effective) = planned(&args)?;
    // This runtime serves the admin port, probes and registrar lookups;
    // the workers run their own, except a single worker, which runs on
    // this one (built as a worker's is, for that).
    hapool_gateway::worker_runtime()?.block_on(run(args, planned, effective, passed))
}

/// Turns transparent huge pages off for this process. The allocator
/// (mimalloc) asks for them for its arenas, and the kernel's khugepaged
/// then merges the arenas' pages into huge ones while the gateway serves:
/// it ran for 20 ms at a time, on a CPU the members and clients wait for,
/// while the gateway's own thread stalled as long, and every request
/// under way waited (docs/performance.md, "Stalls of 20–40 ms: huge
/// pages"); the CPU per request stayed within the noise without them.
fn without_huge_pages() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        warn!(error = %e, "transparent huge pages stay on: requests may stall while the kernel merges pages");
    }
}

/// Settings of `[gateway]` that only `hapool` reads and a reload cannot
/// change: a change to one takes a restart.
const FIXED_KEYS: [&str; 1] = ["admin"];

/// A running gateway and where its configuration comes from, for reloads.
pub(super) struct Reloader {
    args: GatewayArgs,
    view: GatewayView,
    /// The configuration as a file would say it: the one the gateway
    /// started with, or the last one a reload brought wholly into effect
    /// (`/config`).
    effective: Arc<RwLock<toml::Table>>,
    /// `[gateway]` as the gateway started with it.
    started: toml::Table,
    /// Who may do what on the admin port, which a reload may give a new
    /// certificate and token.
    admin_access: crate::admin::Access,
}

impl Reloader {
    /// Reads the configuration again and hands it to the running gateway:
    /// a file that cannot be read, or a configuration the gateway could
    /// not start with, changes nothing.
    pub(super) async fn reload(&self) -> anyhow::Result<Reloaded> {
        use crate::serve::tell_service_manager;
        use hapool_net::notify::{READY, RELOADING};
        tell_service_manager(RELOADING);
        let reloaded = self.reload_file().await;
        tell_service_manager(READY);
        reloaded
    }

    /// [`Self::reload`], between telling the service manager that the
    /// gateway reloads and that it is ready again.
    async fn reload_file(&self) -> anyhow::Result<Reloaded> {
        let Some(path) = &self.args.config else {
            bail!(
                "the gateway was started from flags: there is no configuration file to read again"
            );
        };
        let (planned, effective) =
            planned(&self.args).with_context(|| format!("{}", path.display()))?;
        let admin = planned.admin;
        let mut done = self.view.reload(planned.config).await?;
        // The admin port's certificate and token, as read again.
        match self.admin_access.replace(&planned.admin_access) {
            Ok(()) if admin.is_some() && planned.admin_access.is_tls() => done
                .applied
                .push("admin_tls: certificate and token loaded (connections from now on)".into()),
            Ok(()) => {}
            Err(why) => {
                warn!(change = %why, "reload: admin_tls not in effect");
                done.needs_restart.push(format!("admin_tls: {why}"));
            }
        }
        let gateway =
            |table: &toml::Table| table.get("gateway").and_then(|g| g.as_table()).cloned();
        let (new, old) = (gateway(&effective).unwrap_or_default(), &self.started);
        for key in FIXED_KEYS {
            let line = format!("{key} changed");
            if new.get(key) != old.get(key) && !done.needs_restart.contains(&line) {
                warn!(change = %line, "reload: takes a restart, not in effect");
                done.needs_restart.push(line);
            }
        }
        if done.needs_restart.is_empty() {
            *self
                .effective
                .write()
                .unwrap_or_else(PoisonError::into_inner) = effective;
        }
        Ok(done)
    }
}

async fn run(
    args: GatewayArgs,
    planned: Planned,
    effective: toml::Table,
    passed: Vec<(SocketAddr, std::net::TcpListener)>,
) -> anyhow::Result<()> {
    // Watched from the start: a SIGHUP once the gateway is up reloads it,
    // never ends it.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch for SIGHUP")?;
    // The recorder first, so that the gateway's first gauges are recorded;
    // the admin port's socket is the gateway's (a side listener, taken from
    // the gateway before like its listeners).
    let metrics = planned
        .admin
        .map(|_| crate::admin::install_metrics())
        .transpose()?;
    for (address, _) in &passed {
        println!("listening socket on {address} passed by the service manager");
    }
    let gateway = Gateway::start_with_passed(planned.config, passed)
        .await
        .map_err(|e| match e {
            hapool_gateway::GatewayError::Bind { address, source }
                if Some(address) == planned.admin =>
            {
                BadConfig(format!(
                    "cannot listen on {address} for the admin port: {source}"
                ))
            }
            e => BadConfig(e.to_string()),
        })?;
    let admin = match (planned.admin, metrics) {
        (Some(addr), Some(metrics)) => {
            let socket = gateway
                .side_listener(addr)
                .with_context(|| format!("the admin port {addr}"))?;
            Some(crate::admin::serve_on(socket, metrics)?)
        }
        _ => None,
    };
    let view = gateway.view();
    let reloader = Arc::new(Reloader {
        args,
        view: view.clone(),
        started: effective
            .get("gateway")
            .and_then(|g| g.as_table())
            .cloned()
            .unwrap_or_default(),
        effective: Arc::new(RwLock::new(effective)),
        admin_access: planned.admin_access.clone(),
    });
    for l in view.status().listeners {
        println!(
            "gateway on {} ({:?}{}) for pool {}",
            l.address,
            l.protocol,
            if l.tls { ", TLS" } else { "" },
            l.pool
        );
    }
    if let Some((listener, metrics)) = admin {
        let access = planned.admin_access;
        println!(
            "admin {} on {}",
            if access.is_tls() { "HTTPS" } else { "HTTP" },
            listener.local_addr()?
        );
        let status_view = view.clone();
        let status: crate::admin::StatusFn = Arc::new(move || {
            let doc = serde_json::to_value(status_view.status()).unwrap_or(Value::Null);
            Box::pin(async move { doc })
        });
        let metrics_view = view.clone();
        let more: crate::admin::MoreMetricsFn =
            Arc::new(move || crate::gateway_metrics::render(&metrics_view.status()));
        let routes = control_routes(view.clone(), reloader.clone()).merge(
            crate::clone::live_config_route("gateway", reloader.effective.clone(), access.clone()),
        );
        tokio::spawn(async move {
            if let Err(e) =
                crate::admin::serve_with(listener, access, status, metrics, Some(more), routes)
                    .await
            {
                warn!(error = %format!("{e:#}"), "admin port stopped");
            }
        });
    }
    let shutdown = crate::serve::shutdown_signal();
    crate::serve::tell_service_manager(hapool_net::notify::READY);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => {
                info!("SIGHUP: reading the configuration again");
                if let Err(e) = reloader.reload().await {
                    warn!(error = %format!("{e:#}"), "reload refused: the gateway goes on as it was");
                }
            }
        }
    }
    crate::serve::tell_service_manager(hapool_net::notify::STOPPING);
    info!("shutting down: no new connections; open ones finish their request");
    gateway.shutdown().await;
    Ok(())
}
