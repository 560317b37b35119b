//! Configuration files. A file is TOML with one table per daemon
//! (`[registrar]`, `[gateway]`, `[vip]`); unknown keys are errors; durations are written
//! as text ("500ms", "5s"). A file is turned into the runtime configuration
//! with `TryFrom`, so a configuration that passed start-up is valid, and
//! every error names the key and the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hapool_handlespace::HandlespaceConfig;
use hapool_proto::{RateLimit, RegistrarConfig, RegistrationRule};
use hapool_wire::RegistrarId;
use serde::{Deserialize, Serialize};

use crate::BadConfig;

/// A configuration file.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// The registrar's settings.
    pub(crate) registrar: Option<RegistrarFile>,
    /// The virtual IP daemon's settings.
    pub(crate) vip: Option<VipFile>,
    /// The gateway's settings.
    pub(crate) gateway: Option<crate::gateway::GatewayFile>,
}

/// `[vip]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VipFile {
    /// Where to serve the admin port; off when absent.
    pub(crate) admin: Option<SocketAddr>,
    /// `[vip.admin_tls]`: the admin port over HTTPS, with an operator token.
    pub(crate) admin_tls: Option<AdminTlsFile>,
    /// `[[vip.router]]`: the virtual routers.
    #[serde(default)]
    pub(crate) router: Vec<VipRouterFile>,
}

/// `[[vip.router]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VipRouterFile {
    /// The interface.
    pub(crate) interface: String,
    /// This machine's address on it: its IPv4 address (required for IPv4
    /// routers), or for IPv6 routers its link-local address (default: the
    /// one the interface has).
    pub(crate) address: Option<std::net::IpAddr>,
    /// Virtual router id, 1-255.
    pub(crate) vrid: u8,
    /// 1-255 (255: owner of the addresses), or "primary" (200),
    /// "secondary" (150), "backup" (100). Default 100.
    pub(crate) priority: Option<toml::Value>,
    /// Between advertisements; 10ms to 40.95s, in steps of 10ms. Default 1s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) advert_interval: Option<Duration>,
    /// Take over from a lower-priority master. Default true.
    pub(crate) preempt: Option<bool>,
    /// Wait this long after start-up before preempting. Default 0s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) preempt_delay: Option<Duration>,
    /// Accept packets to the virtual addresses when master without owning
    /// them. Default false.
    pub(crate) accept_mode: Option<bool>,
    /// The virtual addresses, "A.B.C.D/PREFIX" or "X::Y/PREFIX", all of one
    /// family (one prefix for all).
    pub(crate) addresses: Vec<String>,
    /// Peers to advertise to directly (links without multicast).
    #[serde(default)]
    pub(crate) unicast_peers: Vec<std::net::IpAddr>,
    /// "pseudo-header" (RFC 5798, default), "message-only" or "either".
    pub(crate) checksum: Option<String>,
    /// A command run on each state change with STATE VRID appended.
    pub(crate) notify: Option<String>,
    /// `[[vip.router.track]]`: checks that lower the priority when they fail.
    #[serde(default)]
    pub(crate) track: Vec<TrackFile>,
}

/// `[[vip.router.track]]`: exactly one of `tcp`, `http`, `command`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrackFile {
    /// A TCP address that must accept.
    pub(crate) tcp: Option<SocketAddr>,
    /// A URL that must answer 2xx (such as a local gateway's or registrar's
    /// admin `/status`).
    pub(crate) http: Option<String>,
    /// A shell command that must exit 0.
    pub(crate) command: Option<String>,
    /// How much the priority drops while the check fails. Default 50.
    pub(crate) weight: Option<u8>,
    /// Between checks. Default 1s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) interval: Option<Duration>,
}

/// `[registrar]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistrarFile {
    /// Registrar identifier in hex; random when absent.
    pub(crate) id: Option<String>,
    /// Where to serve ASAP. Default 127.0.0.1:3863.
    pub(crate) listen: Option<SocketAddr>,
    /// Where to serve the admin port; off when absent.
    pub(crate) admin: Option<SocketAddr>,
    /// `[registrar.admin_tls]`: the admin port over HTTPS, with an
    /// operator token.
    pub(crate) admin_tls: Option<AdminTlsFile>,
    /// `[registrar.keep_alive]`.
    #[serde(default)]
    pub(crate) keep_alive: KeepAliveFile,
    /// `[registrar.limits]`.
    #[serde(default)]
    pub(crate) limits: LimitsFile,
    /// `[[registrar.rules]]`: who may register into which pools.
    #[serde(default)]
    pub(crate) rules: Vec<RuleFile>,
    /// `[registrar.tls]`: ASAP over TLS.
    pub(crate) tls: Option<TlsFile>,
    /// `[registrar.announce]`: ASAP_SERVER_ANNOUNCE by UDP.
    pub(crate) announce: Option<AnnounceFile>,
    /// `[registrar.enrp]`: the registrar cluster.
    pub(crate) enrp: Option<EnrpFile>,
}

/// `[registrar.admin_tls]`, `[gateway.admin_tls]`, `[vip.admin_tls]`:
/// the admin port over HTTPS. With a token, requests that change
/// something need it, and `/config` hands out keys, certificates and
/// secrets (for `hapool clone`) only to a request that carries it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminTlsFile {
    /// The admin port's certificate chain (PEM).
    pub(crate) certificate: PathBuf,
    /// Its private key (PEM).
    pub(crate) key: PathBuf,
    /// A file holding the operator's token (16 characters or more).
    pub(crate) token_file: Option<PathBuf>,
}

/// `[registrar.enrp]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrpFile {
    /// Where to serve ENRP. Default 127.0.0.1:9901.
    pub(crate) listen: Option<SocketAddr>,
    /// The address peers reach this registrar's ENRP port at; default the
    /// listen address (which must then not be 0.0.0.0 or ::).
    pub(crate) address: Option<SocketAddr>,
    /// ENRP addresses of the other registrars.
    #[serde(default)]
    pub(crate) peers: Vec<SocketAddr>,
    /// An IPv4 multicast group and port for presences (registrars find
    /// each other there); off when absent.
    pub(crate) multicast: Option<SocketAddr>,
    /// Between presences to each peer (PEER-HEARTBEAT-CYCLE). Default 30s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) heartbeat: Option<Duration>,
    /// Silence before a peer is asked for a presence (MAX-TIME-LAST-HEARD).
    /// Default 61s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_time_last_heard: Option<Duration>,
    /// Wait for a peer's answer before it counts as dead
    /// (MAX-TIME-NO-RESPONSE). Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_time_no_response: Option<Duration>,
    /// Wait for a mentor at start-up, per attempt. Default 2s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) server_hunt_timeout: Option<Duration>,
    /// How long a takeover waits for the other peers to agree. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) takeover_expiry: Option<Duration>,
    /// `[registrar.enrp.tls]`: ENRP over mutual TLS.
    pub(crate) tls: Option<EnrpTlsFile>,
}

/// `[registrar.enrp.tls]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrpTlsFile {
    /// This registrar's certificate chain (PEM), presented to peers both
    /// as server and as client; it must name the registrar's IP address.
    pub(crate) certificate: PathBuf,
    /// Its private key (PEM).
    pub(crate) key: PathBuf,
    /// The cluster's authority (PEM): peers must present a certificate it
    /// issued.
    pub(crate) ca: PathBuf,
}

/// `[registrar.announce]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnnounceFile {
    /// Where to send: a multicast group and port (239.0.0.50:3863 by
    /// convention) or an address. Required.
    pub(crate) to: Option<SocketAddr>,
    /// Between announcements. Default 1s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) interval: Option<Duration>,
}

/// `[registrar.tls]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFile {
    /// Where to serve ASAP over TLS. Default 127.0.0.1:3864.
    pub(crate) listen: Option<SocketAddr>,
    /// The server's certificate chain (PEM).
    pub(crate) certificate: PathBuf,
    /// The server's private key (PEM).
    pub(crate) key: PathBuf,
    /// Authorities whose client certificates identify clients (PEM);
    /// clients without a certificate stay anonymous.
    pub(crate) client_ca: Option<PathBuf>,
}

/// `[[registrar.rules]]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    /// Pool handles, or prefixes ending in `*`.
    pub(crate) pools: Vec<String>,
    /// Authenticated identities allowed to register into them.
    #[serde(default)]
    pub(crate) identities: Vec<String>,
    /// Shared secrets a registration may carry to be allowed in.
    #[serde(default)]
    pub(crate) tokens: Vec<String>,
}

/// `[registrar.keep_alive]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeepAliveFile {
    /// Between keep-alives to a PE. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) interval: Option<Duration>,
    /// For a PE to answer. Default 5s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<Duration>,
}

/// `[registrar.limits]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    /// Registrations per second per connection; 0 for none. Default 100.
    pub(crate) registration_rate: Option<f64>,
    /// Handle resolutions per second per connection; 0 for none. Default 1000.
    pub(crate) resolution_rate: Option<f64>,
    /// Unreachability reports per second per connection; 0 for none. Default 1.
    pub(crate) unreachable_rate: Option<f64>,
    /// Longest pool handle in bytes. Default 64.
    pub(crate) max_pool_handle_length: Option<usize>,
    /// Most pools. Default 10000.
    pub(crate) max_pools: Option<usize>,
    /// Most PEs in one pool. Default 100000.
    pub(crate) max_elements_per_pool: Option<usize>,
    /// PEs returned when a resolution does not say. Default 3.
    pub(crate) default_items: Option<usize>,
    /// Most PEs returned by one resolution. Default 128.
    pub(crate) max_items: Option<usize>,
    /// How many returned PEs count as selected; 0 for all. Default 1.
    pub(crate) max_increment: Option<usize>,
    /// Distinct reporters that remove a PE. Default 3.
    pub(crate) max_bad_pe_reports: Option<usize>,
    /// How long a report counts. Default 60s.
    #[serde(default, with = "humantime_serde")]
    pub(crate) bad_report_window: Option<Duration>,
}

/// Reads and parses `path`.
pub(crate) fn read(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BadConfig(format!(
            "cannot read configuration file {}: {e}",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|e| {
        anyhow::Error::new(BadConfig(format!("{}: {}", path.display(), e.message())))
            .context(location(&text, e.span()))
    })
}

/// "line N" for an error span, when there is one.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => format!("at line {}", text[..span.start].lines().count().max(1)),
        None => "in the file".into(),
    }
}

/// A rate limit from a per-second value; 0 means none.
pub(crate) fn rate(per_second: f64, key: &str) -> Result<RateLimit, BadConfig> {
    if !per_second.is_finite() || per_second < 0.0 {
        return Err(BadConfig(format!(
            "{key} = {per_second} is not a rate (0 or more per second)"
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

/// A registrar id from hex text.
pub(crate) fn parse_id(text: &str) -> Result<u32, String> {
    let id = u32::from_str_radix(text.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{text:?} is not a hexadecimal 32-bit id: {e}"))?;
    if id == 0 {
        return Err("0 is reserved".into());
    }
    Ok(id)
}

/// A valid registrar configuration: the state machine's, and where to serve.
pub(crate) struct Registrar {
    pub(crate) config: RegistrarConfig,
    pub(crate) listen: SocketAddr,
    pub(crate) admin: Option<SocketAddr>,
    /// Who may do what on the admin port.
    pub(crate) admin_access: crate::admin::Access,
    /// Where to serve ASAP over TLS, and how.
    pub(crate) tls: Option<(SocketAddr, std::sync::Arc<rustls::ServerConfig>)>,
    /// Where to send announcements.
    pub(crate) announce_to: Option<SocketAddr>,
    /// Where to serve ENRP, when in a cluster.
    pub(crate) enrp_listen: Option<SocketAddr>,
    /// The ENRP multicast group.
    pub(crate) enrp_multicast: Option<SocketAddr>,
    /// ENRP over mutual TLS.
    pub(crate) enrp_tls: Option<hapool_registrar::EnrpTls>,
}

impl Registrar {
    /// Where ENRP is served without TLS to more than this machine: anyone
    /// who reaches that port can change the handlespace and the
    /// registrar's view of its peers, so it is warned about.
    pub(crate) fn enrp_unprotected(&self) -> Option<SocketAddr> {
        self.enrp_listen
            .filter(|enrp| self.enrp_tls.is_none() && !enrp.ip().is_loopback())
    }
}

impl TryFrom<RegistrarFile> for Registrar {
    type Error = BadConfig;

    fn try_from(file: RegistrarFile) -> Result<Self, BadConfig> {
        let id = match &file.id {
            Some(text) => parse_id(text).map_err(|e| BadConfig(format!("registrar.id: {e}")))?,
            None => rand::Rng::random_range(&mut rand::rng(), 1..=u32::MAX),
        };
        let mut config = RegistrarConfig::new(RegistrarId(id));
        let k = &file.keep_alive;
        config.keep_alive_interval = k.interval.unwrap_or(config.keep_alive_interval);
        config.keep_alive_timeout = k.timeout.unwrap_or(config.keep_alive_timeout);
        for (key, value) in [
            ("registrar.keep_alive.interval", config.keep_alive_interval),
            ("registrar.keep_alive.timeout", config.keep_alive_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(BadConfig(format!(
                    "{key} = {value:?} is below the 10ms minimum"
                )));
            }
        }
        let l = &file.limits;
        if let Some(r) = l.registration_rate {
            config.registration_rate = rate(r, "registrar.limits.registration_rate")?;
        }
        if let Some(r) = l.resolution_rate {
            config.resolution_rate = rate(r, "registrar.limits.resolution_rate")?;
        }
        if let Some(r) = l.unreachable_rate {
            config.unreachable_rate = rate(r, "registrar.limits.unreachable_rate")?;
        }
        let d = HandlespaceConfig::default();
        config.handlespace = HandlespaceConfig {
            max_pool_handle_len: l.max_pool_handle_length.unwrap_or(d.max_pool_handle_len),
            max_pools: l.max_pools.unwrap_or(d.max_pools),
            max_elements_per_pool: l.max_elements_per_pool.unwrap_or(d.max_elements_per_pool),
            default_items: l.default_items.unwrap_or(d.default_items),
            max_items: l.max_items.unwrap_or(d.max_items),
            max_increment: l.max_increment.unwrap_or(d.max_increment),
            max_bad_pe_reports: l.max_bad_pe_reports.unwrap_or(d.max_bad_pe_reports),
            bad_report_window: l.bad_report_window.unwrap_or(d.bad_report_window),
        };
        let h = &config.handlespace;
        for (key, value) in [
            (
                "registrar.limits.max_pool_handle_length",
                h.max_pool_handle_len,
            ),
            ("registrar.limits.max_pools", h.max_pools),
            (
                "registrar.limits.max_elements_per_pool",
                h.max_elements_per_pool,
            ),
            ("registrar.limits.default_items", h.default_items),
            ("registrar.limits.max_items", h.max_items),
            ("registrar.limits.max_bad_pe_reports", h.max_bad_pe_reports),
        ] {
            if value == 0 {
                return Err(BadConfig(format!("{key} = 0: it must be at least 1")));
            }
        }
        if h.default_items > h.max_items {
            return Err(BadConfig(format!(
                "registrar.limits.default_items = {} is above registrar.limits.max_items = {}",
                h.default_items, h.max_items
            )));
        }
        for (i, rule) in file.rules.into_iter().enumerate() {
            if rule.pools.is_empty() || (rule.identities.is_empty() && rule.tokens.is_empty()) {
                return Err(BadConfig(format!(
                    "registrar.rules[{i}]: needs at least one pool and one identity or token"
                )));
            }
            if let Some(t) = rule.tokens.iter().find(|t| t.len() < 16) {
                return Err(BadConfig(format!(
                    "registrar.rules[{i}].tokens: a token of {} characters is too easy to guess (at least 16)",
                    t.len()
                )));
            }
            if let Some(p) = rule
                .pools
                .iter()
                .find(|p| p.is_empty() || p.trim_end_matches('*').contains('*'))
            {
                return Err(BadConfig(format!(
                    "registrar.rules[{i}].pools: {p:?} is neither a pool handle nor a prefix ending in *"
                )));
            }
            config.rules.push(RegistrationRule {
                pools: rule.pools,
                identities: rule.identities,
                tokens: rule.tokens,
            });
        }
        let tls = match file.tls {
            Some(t) => {
                let server =
                    hapool_net::tls::server_config(&t.certificate, &t.key, t.client_ca.as_deref())
                        .map_err(|e| BadConfig(format!("registrar.tls: {e}")))?;
                let listen = t
                    .listen
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3864)));
                Some((listen, server))
            }
            None => None,
        };
        let announce_to = match file.announce {
            Some(a) => {
                let to = a.to.ok_or_else(|| {
                    BadConfig(
                        "registrar.announce.to: required (such as \"239.0.0.50:3863\")".into(),
                    )
                })?;
                let interval = a.interval.unwrap_or(Duration::from_secs(1));
                if interval < Duration::from_millis(10) {
                    return Err(BadConfig(format!(
                        "registrar.announce.interval = {interval:?} is below the 10ms minimum"
                    )));
                }
                config.announce = Some(hapool_proto::Announcement {
                    interval,
                    transports: Vec::new(),
                });
                Some(to)
            }
            None => None,
        };
        let (enrp_listen, enrp_tls, enrp_multicast) = match file.enrp {
            Some(e) => {
                let multicast = e.multicast;
                if let Some(group) = multicast
                    && !(group.is_ipv4() && group.ip().is_multicast())
                {
                    return Err(BadConfig(format!(
                        "registrar.enrp.multicast = {group} is not an IPv4 multicast group and port"
                    )));
                }
                let (listen, tls) = enrp(e, &mut config.enrp)?;
                (Some(listen), tls, multicast)
            }
            None => (None, None, None),
        };
        Ok(Self {
            enrp_listen,
            enrp_multicast,
            enrp_tls,
            config,
            listen: file
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3863))),
            admin: file.admin,
            admin_access: crate::admin::Access::load(
                file.admin_tls.as_ref(),
                "registrar.admin_tls",
            )?,
            tls,
            announce_to,
        })
    }
}

/// Applies `[registrar.enrp]` to `config`; returns where to listen, and
/// the TLS configurations when ENRP runs over TLS.
fn enrp(
    file: EnrpFile,
    config: &mut hapool_proto::EnrpConfig,
) -> Result<(SocketAddr, Option<hapool_registrar::EnrpTls>), BadConfig> {
    let tls = match &file.tls {
        Some(t) => {
            let server = hapool_net::tls::mutual_server_config(&t.certificate, &t.key, &t.ca)
                .map_err(|e| BadConfig(format!("registrar.enrp.tls: {e}")))?;
            let client = hapool_net::tls::client_config(&t.ca, Some((&t.certificate, &t.key)))
                .map_err(|e| BadConfig(format!("registrar.enrp.tls: {e}")))?;
            Some(hapool_registrar::EnrpTls { server, client })
        }
        None => None,
    };
    let default_port = if tls.is_some() { 9902 } else { 9901 };
    let listen = file
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)));
    let address = file.address.unwrap_or(listen);
    if address.ip().is_unspecified() || address.port() == 0 {
        return Err(BadConfig(format!(
            "registrar.enrp.address = {address}: peers need a reachable address and port (set registrar.enrp.address)"
        )));
    }
    if let Some(own) = file.peers.iter().find(|p| **p == address) {
        return Err(BadConfig(format!(
            "registrar.enrp.peers: {own} is this registrar's own ENRP address"
        )));
    }
    config.address = Some(address);
    config.peers = file.peers;
    let timers = [
        (
            "registrar.enrp.heartbeat",
            file.heartbeat,
            &mut config.heartbeat_cycle,
        ),
        (
            "registrar.enrp.max_time_last_heard",
            file.max_time_last_heard,
            &mut config.max_time_last_heard,
        ),
        (
            "registrar.enrp.max_time_no_response",
            file.max_time_no_response,
            &mut config.max_time_no_response,
        ),
        (
            "registrar.enrp.server_hunt_timeout",
            file.server_hunt_timeout,
            &mut config.server_hunt_timeout,
        ),
        (
            "registrar.enrp.takeover_expiry",
            file.takeover_expiry,
            &mut config.takeover_expiry,
        ),
    ];
    for (key, value, slot) in timers {
        if let Some(value) = value {
            if value < Duration::from_millis(10) {
                return Err(BadConfig(format!(
                    "{key} = {value:?} is below the 10ms minimum"
                )));
            }
            *slot = value;
        }
    }
    if config.max_time_last_heard <= config.heartbeat_cycle {
        return Err(BadConfig(format!(
            "registrar.enrp.max_time_last_heard = {:?} must be longer than registrar.enrp.heartbeat = {:?}, or every peer is probed all the time",
            config.max_time_last_heard, config.heartbeat_cycle
        )));
    }
    Ok((listen, tls))
}
