//! `hapool gateway`: the proxy in front of pools, from `[gateway]` of a
//! configuration file or from flags; and `hapool gateway ctl`, which lists
//! members and sessions and sets operator marks through the admin port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hapool_gateway::tickets::{self, TicketKeys, TicketKeysError};
use hapool_gateway::tls::{Certificate, server_config};
use hapool_gateway::{
    AdminState, Affinity, Gateway, GatewayConfig, GatewayView, Limits, ListenerConfig,
    MemberSource, PoolSettings, ProbeKind, Protocol, ProxyProtocol, Reloaded, StaticMember,
    Strategy,
};
use hapool_wire::{PoolElementId, PoolHandle};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::BadConfig;

/// `[gateway]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayFile {
    /// Where to serve the admin port; off when absent.
    admin: Option<SocketAddr>,
    /// `[gateway.admin_tls]`: the admin port over HTTPS, with an operator
    /// token.
    admin_tls: Option<crate::config::AdminTlsFile>,
    /// The authority (PEM) whose certificates members reached over TLS
    /// (`tls = true` pools) must present; each names its member's IP.
    member_ca: Option<PathBuf>,
    /// Registrars for pools without static members.
    #[serde(default)]
    registrars: Vec<SocketAddr>,
    /// A file keeping the members of registrar pools across restarts.
    member_cache: Option<PathBuf>,
    /// The file the access log is appended to; no access log when absent.
    access_log: Option<PathBuf>,
    /// A Unix socket for handing the listening sockets to a successor
    /// (and asking a predecessor for them); none when absent.
    handover: Option<PathBuf>,
    /// TLS session ticket keys shared with other gateways (one key of 64
    /// hex digits per line, the first sealing); each gateway makes its
    /// own when absent.
    ticket_keys: Option<PathBuf>,
    /// How long a ticket sealed with the shared keys resumes. Default 6h.
    #[serde(default, with = "humantime_serde")]
    ticket_lifetime: Option<Duration>,
    /// Worker threads serving the listeners. Default: one per core.
    threads: Option<usize>,
    /// How often registrar pools are resolved again. Default 1s.
    #[serde(default, with = "humantime_serde")]
    refresh: Option<Duration>,
    /// How often members are probed. Default 1s.
    #[serde(default, with = "humantime_serde")]
    probe_interval: Option<Duration>,
    /// How long a probe may take. Default 500ms.
    #[serde(default, with = "humantime_serde")]
    probe_timeout: Option<Duration>,
    /// Sessions are forgotten after this idle time. Default 30m.
    #[serde(default, with = "humantime_serde")]
    session_idle: Option<Duration>,
    /// The most sessions a pool keeps. Default 1000000.
    session_capacity: Option<usize>,
    /// Connecting to a member. Default 1s.
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    /// A member's response headers. Default 30s.
    #[serde(default, with = "humantime_serde")]
    request_timeout: Option<Duration>,
    /// A client's TLS handshake and request head. Default 10s.
    #[serde(default, with = "humantime_serde")]
    header_read_timeout: Option<Duration>,
    /// Largest request head. Default 16384 (at least 8192).
    max_header_bytes: Option<usize>,
    /// Further members tried after a failure that is safe to retry.
    /// Default 3.
    retries: Option<u32>,
    /// Request bodies up to this many bytes are kept for a retry. Default
    /// 65536.
    retry_body_limit: Option<usize>,
    /// Idle connections to members are closed after this. Default 4s.
    #[serde(default, with = "humantime_serde")]
    member_idle_timeout: Option<Duration>,
    /// On SIGTERM, how long open connections may take to finish. Default
    /// 10s.
    #[serde(default, with = "humantime_serde")]
    shutdown_grace: Option<Duration>,
    /// A client that takes nothing of an answer this long is dropped.
    /// Default 60s.
    #[serde(default, with = "humantime_serde")]
    send_timeout: Option<Duration>,
    /// A TCP connection idle both ways this long is closed. Default 1h.
    #[serde(default, with = "humantime_serde")]
    tcp_idle_timeout: Option<Duration>,
    /// `[[gateway.listener]]`.
    #[serde(default)]
    listener: Vec<ListenerFile>,
    /// `[[gateway.pool]]`.
    #[serde(default)]
    pool: Vec<PoolFile>,
}

/// `[[gateway.listener]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ListenerFile {
    /// Where to listen.
    listen: SocketAddr,
    /// "http" (default) or "tcp".
    protocol: Option<Protocol>,
    /// The pool it serves.
    pool: String,
    /// What keeps sessions together: true (the protocol's usual key),
    /// false, or "cookie", "client-address", "tls-session". Default true.
    affinity: Option<AffinityFile>,
    /// Connections at once. Default 10000.
    max_connections: Option<usize>,
    /// Connections start with a PROXY protocol header from a proxy in
    /// front of the gateway. Default false.
    accept_proxy_protocol: Option<bool>,
    /// `[[gateway.listener.certificate]]`: terminate TLS with these.
    #[serde(default)]
    certificate: Vec<CertificateFile>,
}

/// A listener's `affinity`: on or off, or the key to keep sessions by.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum AffinityFile {
    /// On (the protocol's usual key) or off.
    Switch(bool),
    /// The key.
    Key(Affinity),
    /// Anything else: refused with the choices named.
    Other(toml::Value),
}

/// `[[gateway.listener.certificate]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CertificateFile {
    /// Host names it serves (SNI); `*.example.com` for a wildcard.
    names: Vec<String>,
    /// PEM certificate chain, leaf first.
    cert: PathBuf,
    /// PEM private key.
    key: PathBuf,
}

/// `[[gateway.pool]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    /// The pool handle.
    handle: String,
    /// Static members; without them the registrars are asked.
    members: Option<Vec<MemberFile>>,
    /// "least-loaded", "round-robin", "random", "priority". Default: the
    /// pool's registered policy (registrar pools), least-loaded (static).
    strategy: Option<Strategy>,
    /// BUSY below this availability index. Default 10.
    availability_threshold: Option<u8>,
    /// MAXUSERS at this many open sessions per member. Default: no limit.
    max_sessions: Option<u32>,
    /// "http" or "tcp". Default: http when an HTTP listener serves the
    /// pool, else tcp.
    probe: Option<String>,
    /// The path an HTTP probe asks for. Default "/".
    probe_path: Option<String>,
    /// The service a gRPC probe asks after. Default "": the server.
    probe_service: Option<String>,
    /// Reach the members over TLS (HTTPS requests and probes). Default
    /// false.
    tls: Option<bool>,
    /// Speak HTTP/2 to the members (gRPC servers), with prior knowledge,
    /// or by ALPN over TLS. Default false: HTTP/1.1.
    http2: Option<bool>,
    /// The port on which the members also serve HTTPS: clients that came
    /// over TLS are sent there over TLS (needs gateway.member_ca).
    https_port: Option<u16>,
    /// Server errors (5xx) in a row that take a member out until its
    /// probes pass. Default: none do.
    error_limit: Option<u32>,
    /// The most requests, in percent, also sent to a second member when
    /// the first is slow to answer (GET and HEAD only). Default 5; 0: never.
    hedge_percent: Option<u32>,
    /// Probes answered in a row that bring back a member found
    /// unreachable. Default 2.
    probe_rise: Option<u32>,
    /// Probes failed in a row that take a member out. Default 2.
    probe_fall: Option<u32>,
    /// "v1" or "v2": each connection to a member starts with a PROXY
    /// protocol header naming the client (TCP listeners only). Default:
    /// none.
    proxy_protocol: Option<ProxyProtocol>,
}

/// A static member: "ADDR" or `{ address, weight, priority }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum MemberFile {
    Address(SocketAddr),
    Full {
        address: SocketAddr,
        #[serde(default)]
        weight: Option<u32>,
        #[serde(default)]
        priority: Option<u32>,
    },
}

/// A gateway to start: its configuration, admin port and threads.
pub(crate) struct Planned {
    config: GatewayConfig,
    admin: Option<SocketAddr>,
    admin_access: crate::admin::Access,
    threads: Option<usize>,
}

fn certificates(files: Vec<CertificateFile>, key: &str) -> Result<Vec<Certificate>, BadConfig> {
    files
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let chain = hapool_net::tls::certificates(&c.cert)
                .map_err(|e| BadConfig(format!("{key}.certificate[{i}].cert: {e}")))?;
            let private = hapool_net::tls::private_key(&c.key)
                .map_err(|e| BadConfig(format!("{key}.certificate[{i}].key: {e}")))?;
            if c.names.is_empty() {
                return Err(BadConfig(format!(
                    "{key}.certificate[{i}].names: at least one name"
                )));
            }
            Ok(Certificate {
                names: c.names,
                chain,
                key: private,
            })
        })
        .collect()
}

impl TryFrom<GatewayFile> for Planned {
    type Error = BadConfig;

    fn try_from(file: GatewayFile) -> Result<Self, BadConfig> {
        let mut listeners = Vec::new();
        for (i, l) in file.listener.into_iter().enumerate() {
            let key = format!("gateway.listener[{i}]");
            let protocol = l.protocol.unwrap_or(Protocol::Http);
            let tls = if l.certificate.is_empty() {
                None
            } else {
                let alpn: &[&[u8]] = match protocol {
                    Protocol::Http => &[b"h2", b"http/1.1"],
                    Protocol::Tcp => &[],
                };
                Some(
                    server_config(certificates(l.certificate, &key)?, alpn)
                        .map_err(|e| BadConfig(format!("{key}: {e}")))?,
                )
            };
            let affinity = match l.affinity.unwrap_or(AffinityFile::Switch(true)) {
                AffinityFile::Switch(true) => Affinity::usual(protocol),
                AffinityFile::Switch(false) => Affinity::None,
                AffinityFile::Key(key) => key,
                AffinityFile::Other(value) => {
                    return Err(BadConfig(format!(
                        "{key}.affinity = {value}: true, false, \"cookie\", \"client-address\" or \"tls-session\""
                    )));
                }
            };
            if let Some(reason) = affinity.unusable(protocol, tls.is_some()) {
                return Err(BadConfig(format!("{key}.affinity: {reason}")));
            }
            let max_connections = l.max_connections.unwrap_or(10_000);
            if max_connections == 0 {
                return Err(BadConfig(format!("{key}.max_connections = 0: at least 1")));
            }
            listeners.push(ListenerConfig {
                address: l.listen,
                protocol,
                pool: PoolHandle::from(l.pool.as_str()),
                tls,
                affinity,
                max_connections,
                accept_proxy_protocol: l.accept_proxy_protocol.unwrap_or(false),
            });
        }
        let mut pools = Vec::new();
        for (i, p) in file.pool.into_iter().enumerate() {
            let key = format!("gateway.pool[{i}]");
            let handle = PoolHandle::from(p.handle.as_str());
            let threshold = p.availability_threshold.unwrap_or(10);
            if threshold > 100 {
                return Err(BadConfig(format!(
                    "{key}.availability_threshold = {threshold}: 0 to 100"
                )));
            }
            if p.max_sessions == Some(0) {
                return Err(BadConfig(format!("{key}.max_sessions = 0: at least 1")));
            }
            let hedge_percent = p.hedge_percent.unwrap_or(PoolSettings::HEDGE_PERCENT);
            if hedge_percent > 100 {
                return Err(BadConfig(format!(
                    "{key}.hedge_percent = {hedge_percent}: 0 to 100"
                )));
            }
            let [probe_rise, probe_fall] = [
                ("probe_rise", p.probe_rise, PoolSettings::PROBE_RISE),
                ("probe_fall", p.probe_fall, PoolSettings::PROBE_FALL),
            ]
            .map(|(name, value, default)| match value {
                Some(0) => Err(BadConfig(format!("{key}.{name} = 0: at least 1"))),
                value => Ok(value.unwrap_or(default)),
            });
            let (probe_rise, probe_fall) = (probe_rise?, probe_fall?);
            let http_listener = listeners
                .iter()
                .any(|l| l.pool == handle && l.protocol == Protocol::Http);
            let probe = match p.probe.as_deref() {
                None if http_listener => "http",
                None => "tcp",
                Some(kind) => kind,
            };
            let probe = match probe {
                "tcp" => ProbeKind::Tcp,
                "http" => {
                    let path = p.probe_path.unwrap_or_else(|| "/".into());
                    if !path.starts_with('/')
                        || path.parse::<hyper::http::uri::PathAndQuery>().is_err()
                    {
                        return Err(BadConfig(format!(
                            "{key}.probe_path = {path:?}: a path starting with /"
                        )));
                    }
                    ProbeKind::Http { path }
                }
                "grpc" if p.http2 != Some(true) => {
                    return Err(BadConfig(format!(
                        "{key}.probe = \"grpc\" needs {key}.http2 = true (gRPC is spoken over HTTP/2)"
                    )));
                }
                "grpc" => ProbeKind::Grpc {
                    service: p.probe_service.clone().unwrap_or_default(),
                },
                other => {
                    return Err(BadConfig(format!(
                        "{key}.probe = {other:?}: http, tcp or grpc"
                    )));
                }
            };
            if p.probe_service.is_some() && !matches!(probe, ProbeKind::Grpc { .. }) {
                return Err(BadConfig(format!(
                    "{key}.probe_service: applies to probe = \"grpc\""
                )));
            }
            let member_tls = p.tls.unwrap_or(false);
            if p.error_limit == Some(0) {
                return Err(BadConfig(format!("{key}.error_limit = 0: at least 1")));
            }
            if p.https_port.is_some() && file.member_ca.is_none() {
                return Err(BadConfig(format!(
                    "{key}.https_port needs gateway.member_ca (the authority of the members' certificates)"
                )));
            }
            if p.https_port.is_some() && member_tls {
                return Err(BadConfig(format!(
                    "{key}.https_port and {key}.tls = true: with tls every request goes over TLS to the member's address"
                )));
            }
            if member_tls && file.member_ca.is_none() {
                return Err(BadConfig(format!(
                    "{key}.tls = true needs gateway.member_ca (the authority of the members' certificates)"
                )));
            }
            let source = match p.members {
                Some(members) if members.is_empty() => {
                    return Err(BadConfig(format!(
                        "{key}.members is empty: name members, or leave it out to ask the registrars"
                    )));
                }
                Some(members) => MemberSource::Static(
                    members
                        .into_iter()
                        .map(|m| match m {
                            MemberFile::Address(address) => StaticMember {
                                address,
                                weight: 1,
                                priority: 0,
                            },
                            MemberFile::Full {
                                address,
                                weight,
                                priority,
                            } => StaticMember {
                                address,
                                weight: weight.unwrap_or(1),
                                priority: priority.unwrap_or(0),
                            },
                        })
                        .collect(),
                ),
                None if file.registrars.is_empty() => {
                    return Err(BadConfig(format!(
                        "{key} ({:?}) has no members and gateway.registrars is empty",
                        p.handle
                    )));
                }
                None => MemberSource::Registrars,
            };
            let defaults = PoolSettings::new(handle, source);
            pools.push(PoolSettings {
                strategy: p.strategy.or(defaults.strategy),
                availability_threshold: threshold,
                max_sessions: p.max_sessions,
                probe,
                tls: member_tls,
                http2: p.http2.unwrap_or(false),
                https_port: p.https_port,
                error_limit: p.error_limit,
                hedge_percent,
                probe_rise,
                probe_fall,
                proxy_protocol: p.proxy_protocol,
                ..defaults
            });
        }
        for (i, l) in listeners.iter().enumerate() {
            if !pools.iter().any(|p| p.handle == l.pool) {
                return Err(BadConfig(format!(
                    "gateway.listener[{i}].pool = {:?}: no [[gateway.pool]] has this handle",
                    l.pool.to_string()
                )));
            }
        }
        if listeners.is_empty() {
            return Err(BadConfig("gateway: no [[gateway.listener]]".into()));
        }
        let defaults = Limits::default();
        let max_header_bytes = file.max_header_bytes.unwrap_or(defaults.max_header_bytes);
        if max_header_bytes < 8192 {
            return Err(BadConfig(format!(
                "gateway.max_header_bytes = {max_header_bytes}: at least 8192"
            )));
        }
        if file.threads == Some(0) {
            return Err(BadConfig("gateway.threads = 0: at least 1".into()));
        }
        let mut config = GatewayConfig::new(listeners, pools);
        config.member_tls = match &file.member_ca {
            Some(ca) => Some(
                hapool_net::tls::client_config(ca, None)
                    .map_err(|e| BadConfig(format!("gateway.member_ca: {e}")))?,
            ),
            None => None,
        };
        config.registrars = file.registrars;
        for (key, file) in [
            ("member_cache", &file.member_cache),
            ("access_log", &file.access_log),
            ("handover", &file.handover),
        ] {
            if let Some(file) = file {
                let dir = file
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                if !dir.is_dir() {
                    return Err(BadConfig(format!(
                        "gateway.{key} = {:?}: no directory {}",
                        file.display().to_string(),
                        dir.display()
                    )));
                }
            }
        }
        config.member_cache = file.member_cache;
        config.access_log = file.access_log;
        config.handover = file.handover;
        config.ticket_keys = match (&file.ticket_keys, file.ticket_lifetime) {
            (Some(path), lifetime) => Some(read_ticket_keys(path, lifetime)?),
            (None, Some(_)) => {
                return Err(BadConfig(
                    "gateway.ticket_lifetime: applies to gateway.ticket_keys, which is not set"
                        .into(),
                ));
            }
            (None, None) => None,
        };
        config.refresh = file.refresh.unwrap_or(config.refresh);
        config.probe_interval = file.probe_interval.unwrap_or(config.probe_interval);
        config.probe_timeout = file.probe_timeout.unwrap_or(config.probe_timeout);
        config.session_idle = file.session_idle.unwrap_or(config.session_idle);
        config.session_capacity = file.session_capacity.unwrap_or(config.session_capacity);
        config.limits = Limits {
            connect_timeout: file.connect_timeout.unwrap_or(defaults.connect_timeout),
            request_timeout: file.request_timeout.unwrap_or(defaults.request_timeout),
            header_read_timeout: file
                .header_read_timeout
                .unwrap_or(defaults.header_read_timeout),
            max_header_bytes,
            retries: file.retries.unwrap_or(defaults.retries),
            retry_body_limit: file.retry_body_limit.unwrap_or(defaults.retry_body_limit),
            member_idle_timeout: file
                .member_idle_timeout
                .unwrap_or(defaults.member_idle_timeout),
            shutdown_grace: file.shutdown_grace.unwrap_or(defaults.shutdown_grace),
            send_timeout: file.send_timeout.unwrap_or(defaults.send_timeout),
            tcp_idle_timeout: file.tcp_idle_timeout.unwrap_or(defaults.tcp_idle_timeout),
        };
        for (key, value) in [
            ("send_timeout", config.limits.send_timeout),
            ("tcp_idle_timeout", config.limits.tcp_idle_timeout),
        ] {
            if value.is_zero() {
                return Err(BadConfig(format!("gateway.{key} = 0s: more than 0")));
            }
        }
        config.check().map_err(|e| BadConfig(e.to_string()))?;
        Ok(Self {
            config,
            admin: file.admin,
            admin_access: crate::admin::Access::load(file.admin_tls.as_ref(), "gateway.admin_tls")?,
            threads: file.threads,
        })
    }
}

/// The shared ticket keys in `path`, good for `lifetime`. A file others
/// than its owner can read is taken, with a warning: whoever reads it can
/// read the session secrets of every ticket its keys sealed.
fn read_ticket_keys(
    path: &std::path::Path,
    lifetime: Option<Duration>,
) -> Result<TicketKeys, BadConfig> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadConfig(format!("gateway.ticket_keys: cannot read {shown}: {e}")))?;
    let keys = TicketKeys::parse(&text, lifetime.unwrap_or(tickets::DEFAULT_LIFETIME)).map_err(
        |e| match e {
            TicketKeysError::Lifetime(_) => BadConfig(format!("gateway.ticket_lifetime: {e}")),
            e => BadConfig(format!("gateway.ticket_keys: {shown}: {e}")),
        },
    )?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                file = %shown,
                mode = format!("{mode:o}"),
                "gateway.ticket_keys can be read by users other than its owner (chmod 600): whoever reads it can read the secrets of the TLS sessions its keys sealed"
            );
        }
    }
    Ok(keys)
}

/// One line per listener and pool, for `check-config`.
pub(crate) fn describe(file: GatewayFile) -> Result<Vec<String>, BadConfig> {
    let planned = Planned::try_from(file)?;
    let mut lines = Vec::new();
    for l in &planned.config.listeners {
        let affinity = match l.affinity {
            Affinity::None => "no affinity",
            Affinity::Cookie => "affinity by cookie",
            Affinity::ClientAddress => "affinity by client address",
            Affinity::TlsSession => "affinity by TLS session",
        };
        lines.push(format!(
            "gateway listener {} ({:?}{}) -> pool {}, {affinity}{}",
            l.address,
            l.protocol,
            if l.tls.is_some() { ", TLS" } else { "" },
            l.pool,
            if l.accept_proxy_protocol {
                ", client address from a PROXY protocol header"
            } else {
                ""
            }
        ));
    }
    for p in &planned.config.pools {
        lines.push(format!(
            "gateway pool {}: {}{}{}{}, busy below {}, {}{}",
            p.handle,
            match &p.source {
                MemberSource::Static(m) => format!("{} static member(s)", m.len()),
                MemberSource::Registrars => "members from the registrars".into(),
            },
            if p.tls { " reached over TLS" } else { "" },
            if p.http2 { " in HTTP/2" } else { "" },
            p.https_port.map_or(String::new(), |port| format!(
                ", HTTPS clients to port {port} over TLS"
            )),
            p.availability_threshold,
            p.max_sessions
                .map_or("no session limit".into(), |m| format!(
                    "at most {m} sessions per member"
                )),
            match p.proxy_protocol {
                Some(ProxyProtocol::V1) => ", PROXY protocol v1 header to members",
                Some(ProxyProtocol::V2) => ", PROXY protocol v2 header to members",
                None => "",
            },
        ));
    }
    if let Some(keys) = &planned.config.ticket_keys {
        lines.push(format!(
            "gateway TLS session tickets: {} shared key(s), sealing with {}, good for {}",
            keys.len(),
            keys.sealing_id(),
            humantime::format_duration(keys.lifetime())
        ));
    }
    Ok(lines)
}

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

#[derive(clap::Args)]
struct CtlArgs {
    #[command(flatten)]
    target: crate::admin::AdminTarget,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(clap::Subcommand)]
enum CtlAction {
    /// Every pool's members: state, availability, load, sessions.
    List,
    /// The listeners: address, protocol, pool, TLS, affinity, open
    /// connections.
    Listeners,
    /// A pool's sessions (most recently used first, at most 1000).
    Sessions {
        /// The pool handle.
        pool: String,
    },
    /// Reads the gateway's configuration file again and takes what can
    /// change while it runs (as SIGHUP does); says what takes a restart.
    Reload,
    /// Marks a member: active, restricted, out_of_service (drain) or
    /// pending_delete (drain, then remove).
    Set {
        /// The pool handle.
        pool: String,
        /// The member's PE identifier (hex, as `list` shows it).
        pe: String,
        /// The new state.
        state: String,
    },
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
struct Reloader {
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
    async fn reload(&self) -> anyhow::Result<Reloaded> {
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

/// `GET /sessions/{pool}`, `POST /pools/{pool}/members/{pe}/{state}` and
/// `POST /reload`.
fn control_routes(view: GatewayView, reloader: Arc<Reloader>) -> Router {
    let sessions_view = view.clone();
    Router::new()
        .route(
            "/reload",
            post(move || {
                let reloader = reloader.clone();
                async move {
                    match reloader.reload().await {
                        Ok(done) => Ok(axum::Json(done)),
                        Err(e) => Err((
                            StatusCode::BAD_REQUEST,
                            format!("reload refused, the gateway goes on as it was: {e:#}\n"),
                        )),
                    }
                }
            }),
        )
        .route(
            "/sessions/{pool}",
            get(move |Path(pool): Path<String>| {
                let view = sessions_view.clone();
                async move {
                    let Some(pool) = view.pool(&PoolHandle::from(pool.as_str())) else {
                        return Err((StatusCode::NOT_FOUND, format!("no pool {pool:?}\n")));
                    };
                    let sessions: Vec<Value> = pool
                        .sessions
                        .list(1000)
                        .into_iter()
                        .map(|(key, s)| {
                            serde_json::json!({
                                "session": key.to_string(),
                                "pe_id": format!("{:08x}", s.member.0),
                                "requests": s.requests,
                                "idle_ms": s.last_seen.elapsed().as_millis() as u64,
                                "state_cookie": s.state.is_some(),
                            })
                        })
                        .collect();
                    Ok(axum::Json(Value::Array(sessions)))
                }
            }),
        )
        .route(
            "/pools/{pool}/members/{pe}/{state}",
            post(
                move |Path((pool, pe, state)): Path<(String, String, String)>| {
                    let view = view.clone();
                    async move { set_state(&view, &pool, &pe, &state) }
                },
            ),
        )
}

fn set_state(view: &GatewayView, pool: &str, pe: &str, state: &str) -> (StatusCode, String) {
    let Some(target) = view.pool(&PoolHandle::from(pool)) else {
        return (StatusCode::NOT_FOUND, format!("no pool {pool:?}\n"));
    };
    let Ok(id) = u32::from_str_radix(pe.trim_start_matches("0x"), 16) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{pe:?} is not a hexadecimal PE identifier\n"),
        );
    };
    let Some(state) = AdminState::parse(state) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{state:?}: active, restricted, out_of_service or pending_delete\n"),
        );
    };
    if target.set_admin(PoolElementId(id), state) {
        (
            StatusCode::OK,
            format!("{pool} {id:08x} {}\n", state.as_str()),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            format!("pool {pool:?} has no member {id:08x}\n"),
        )
    }
}

/// The gateway's `/status` document.
async fn status(client: &crate::admin::AdminClient) -> anyhow::Result<Value> {
    let (code, body) = client.get("/status").await?;
    if !code.is_success() {
        bail!("{} answered {code}", client.base());
    }
    serde_json::from_slice(&body).context("/status is not JSON")
}

async fn control(args: CtlArgs) -> anyhow::Result<()> {
    let client = crate::admin::AdminClient::from_target(&args.target, "127.0.0.1:3882")?;
    match args.action {
        CtlAction::List => {
            let doc = status(&client).await?;
            println!(
                "{:<16} {:<9} {:<22} {:<15} {:<12} {:>5} {:>7} {:>10} {:>8} {:>9}",
                "POOL",
                "PE",
                "ADDRESS",
                "STATE",
                "AVAILABILITY",
                "INDEX",
                "ACTIVE",
                "SERVED",
                "SESSIONS",
                "ANSWER-MS"
            );
            for pool in doc["pools"].as_array().into_iter().flatten() {
                for m in pool["members"].as_array().into_iter().flatten() {
                    println!(
                        "{:<16} {:08x}  {:<22} {:<15} {:<12} {:>5} {:>7} {:>10} {:>8} {:>9}",
                        pool["pool"].as_str().unwrap_or("?"),
                        m["id"].as_u64().unwrap_or(0),
                        m["address"].as_str().unwrap_or("?"),
                        m["admin"].as_str().unwrap_or("?"),
                        m["availability"].as_str().unwrap_or("?"),
                        m["availability_index"].as_u64().unwrap_or(0),
                        m["active"].as_u64().unwrap_or(0),
                        m["served"].as_u64().unwrap_or(0),
                        m["bound_sessions"].as_u64().unwrap_or(0),
                        match m["response_time_us"].as_u64().unwrap_or(0) {
                            0 => "-".to_string(),
                            us => format!("{:.1}", us as f64 / 1000.0),
                        },
                    );
                    if let Some(https) = m["availability_https"].as_str() {
                        println!("{:<16} {:<9} HTTPS port: {https}", "", "");
                    }
                }
            }
        }
        CtlAction::Sessions { pool } => {
            let (code, body) = client.get(&format!("/sessions/{pool}")).await?;
            if !code.is_success() {
                bail!("{}", String::from_utf8_lossy(&body).trim());
            }
            let doc: Value = serde_json::from_slice(&body)?;
            println!(
                "{:<40} {:<9} {:>9} {:>9} STATE-COOKIE",
                "SESSION", "PE", "REQUESTS", "IDLE-MS"
            );
            for s in doc.as_array().into_iter().flatten() {
                println!(
                    "{:<40} {:<9} {:>9} {:>9} {}",
                    s["session"].as_str().unwrap_or("?"),
                    s["pe_id"].as_str().unwrap_or("?"),
                    s["requests"].as_u64().unwrap_or(0),
                    s["idle_ms"].as_u64().unwrap_or(0),
                    s["state_cookie"].as_bool().unwrap_or(false)
                );
            }
        }
        CtlAction::Listeners => {
            let doc = status(&client).await?;
            println!(
                "{:<24} {:<9} {:<16} {:<4} {:<15} {:>11} {:>7} {:>10} {:>6}",
                "ADDRESS",
                "PROTOCOL",
                "POOL",
                "TLS",
                "AFFINITY",
                "CONNECTIONS",
                "SOCKETS",
                "TAKEN-OVER",
                "PASSED"
            );
            for l in doc["listeners"].as_array().into_iter().flatten() {
                let per_socket = l["connections"].as_array();
                let open: u64 = per_socket
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64)
                    .sum();
                println!(
                    "{:<24} {:<9} {:<16} {:<4} {:<15} {:>11} {:>7} {:>10} {:>6}",
                    l["address"].as_str().unwrap_or("?"),
                    l["protocol"].as_str().unwrap_or("?"),
                    l["pool"].as_str().unwrap_or("?"),
                    if l["tls"].as_bool().unwrap_or(false) {
                        "yes"
                    } else {
                        "no"
                    },
                    l["affinity"].as_str().unwrap_or("?"),
                    open,
                    per_socket.map_or(0, Vec::len),
                    l["taken_over"].as_u64().unwrap_or(0),
                    l["passed"].as_u64().unwrap_or(0)
                );
            }
            let tickets = &doc["tickets"];
            if tickets["shared"].as_bool().unwrap_or(false) {
                println!(
                    "TLS session tickets: {} shared key(s), sealing with {}",
                    tickets["keys"].as_u64().unwrap_or(0),
                    tickets["sealing"].as_str().unwrap_or("?")
                );
            } else {
                println!("TLS session tickets: the gateway's own keys");
            }
        }
        CtlAction::Reload => {
            let (code, body) = client.post("/reload").await?;
            if !code.is_success() {
                bail!("{}", String::from_utf8_lossy(&body).trim());
            }
            let done: Reloaded =
                serde_json::from_slice(&body).context("/reload answered no report")?;
            for line in &done.applied {
                println!("in effect: {line}");
            }
            for line in &done.needs_restart {
                println!("takes a restart: {line}");
            }
            if done.applied.is_empty() && done.needs_restart.is_empty() {
                println!("nothing changed");
            }
        }
        CtlAction::Set { pool, pe, state } => {
            let (code, body) = client
                .post(&format!("/pools/{pool}/members/{pe}/{state}"))
                .await?;
            let text = String::from_utf8_lossy(&body);
            if !code.is_success() {
                bail!("{}", text.trim());
            }
            print!("{text}");
        }
    }
    Ok(())
}
