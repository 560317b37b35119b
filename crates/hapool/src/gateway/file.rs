//! `[gateway]` of a configuration file: its tables as they are written,
//! and the gateway they plan (or a refusal naming the key at fault).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hapool_gateway::tickets::{self, TicketKeys, TicketKeysError};
use hapool_gateway::tls::{Certificate, server_config};
use hapool_gateway::{
    Affinity, GatewayConfig, Limits, ListenerConfig, MemberSource, PoolSettings, ProbeKind,
    Protocol, ProxyProtocol, StaticMember, Strategy,
};
use hapool_wire::PoolHandle;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::BadConfig;

/// `[gateway]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GatewayFile {
    /// Where to serve the admin port; off when absent.
    pub(super) admin: Option<SocketAddr>,
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
    pub(super) threads: Option<usize>,
    /// Whether worker threads are pinned each to a CPU of its own (when
    /// there are no more of them than CPUs). Default: true.
    pin_workers: Option<bool>,
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
    /// A member that sends nothing more of an answer for this long has it
    /// broken off. Default 60s.
    #[serde(default, with = "humantime_serde")]
    answer_idle_timeout: Option<Duration>,
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
    /// HTTP/1.1 requests given up when their client closes. Default false.
    abort_on_close: Option<bool>,
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
    /// Registrar pools: how long the last members are kept when the
    /// registrars answer that the pool has none. Default 30s; 0s: not at
    /// all.
    #[serde(default, with = "humantime_serde")]
    empty_answer_hold: Option<Duration>,
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
    pub(super) config: GatewayConfig,
    pub(super) admin: Option<SocketAddr>,
    pub(super) admin_access: crate::admin::Access,
    pub(super) threads: Option<usize>,
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
            let abort_on_close = l.abort_on_close.unwrap_or(false);
            if abort_on_close && protocol == Protocol::Tcp {
                return Err(BadConfig(format!(
                    "{key}.abort_on_close: for HTTP listeners (a TCP member sees its client's close as it is)"
                )));
            }
            listeners.push(ListenerConfig {
                address: l.listen,
                protocol,
                pool: PoolHandle::from(l.pool.as_str()),
                tls,
                affinity,
                max_connections,
                accept_proxy_protocol: l.accept_proxy_protocol.unwrap_or(false),
                abort_on_close,
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
            if p.empty_answer_hold.is_some() && source != MemberSource::Registrars {
                return Err(BadConfig(format!(
                    "{key}.empty_answer_hold: only for pools whose members come from the registrars (this one lists its members)"
                )));
            }
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
                empty_answer_hold: p.empty_answer_hold.unwrap_or(defaults.empty_answer_hold),
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
        config.pin_workers = file.pin_workers.unwrap_or(config.pin_workers);
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
            answer_idle_timeout: file
                .answer_idle_timeout
                .unwrap_or(defaults.answer_idle_timeout),
            tcp_idle_timeout: file.tcp_idle_timeout.unwrap_or(defaults.tcp_idle_timeout),
        };
        for (key, value) in [
            ("send_timeout", config.limits.send_timeout),
            ("answer_idle_timeout", config.limits.answer_idle_timeout),
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
            "gateway listener {} ({:?}{}) -> pool {}, {affinity}{}{}",
            l.address,
            l.protocol,
            if l.tls.is_some() { ", TLS" } else { "" },
            l.pool,
            if l.accept_proxy_protocol {
                ", client address from a PROXY protocol header"
            } else {
                ""
            },
            if l.abort_on_close {
                ", requests given up when their client closes"
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
