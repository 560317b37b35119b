//! The gateway's configuration as the library takes it: listeners, pools,
//! limits and timers, with the checks a configuration must pass before a
//! gateway starts or reloads with it. (`hapool gateway` reads it from its
//! TOML file.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hapool_wire::PoolHandle;
use serde::Serialize;

use crate::GatewayError;
use crate::pool::{MemberSource, Pool, PoolSettings, ProbeKind};
use crate::sessions::SessionTable;
use crate::tickets::TicketKeys;

/// What a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Any protocol over TCP, connection by connection.
    Tcp,
    /// HTTP/1.1 and HTTP/2, request by request.
    Http,
}

/// What keeps a client's session with one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Affinity {
    /// Nothing: each connection (TCP) or request (HTTP) is placed afresh.
    None,
    /// HTTP: the gateway's `hapool` cookie.
    Cookie,
    /// TCP: the client's IP address.
    ClientAddress,
    /// TLS listeners (TCP or HTTP): the TLS session. Every session ticket
    /// the gateway issues carries a session id; a client that resumes with
    /// it returns to the member its earlier connection went to, whatever
    /// address it comes from and without cookies.
    TlsSession,
}

impl Affinity {
    /// The usual affinity for `protocol`: the cookie for HTTP, the client's
    /// address for TCP.
    pub fn usual(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http => Self::Cookie,
            Protocol::Tcp => Self::ClientAddress,
        }
    }

    /// Why this affinity cannot be used on a listener of `protocol`, with
    /// or without TLS; `None` when it can.
    pub fn unusable(self, protocol: Protocol, tls: bool) -> Option<&'static str> {
        match (self, protocol) {
            (Self::None, _)
            | (Self::Cookie, Protocol::Http)
            | (Self::ClientAddress, Protocol::Tcp) => None,
            (Self::TlsSession, _) if tls => None,
            (Self::TlsSession, _) => Some("tls-session affinity needs a TLS listener"),
            (Self::Cookie, Protocol::Tcp) => {
                Some("a TCP listener has no cookie: use client-address or tls-session")
            }
            (Self::ClientAddress, Protocol::Http) => Some(
                "HTTP listeners keep sessions by cookie or by TLS session, not by client address",
            ),
        }
    }
}

/// One listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Where it listens.
    pub address: SocketAddr,
    /// What it speaks.
    pub protocol: Protocol,
    /// The pool it serves.
    pub pool: PoolHandle,
    /// TLS termination, when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What keeps a session with its member. Usually the cookie (HTTP) or
    /// the client's address (TCP); see [`Affinity::usual`].
    pub affinity: Affinity,
    /// Connections open at once; more are closed at once. Default 10,000.
    pub max_connections: usize,
    /// Every connection starts with a PROXY protocol header (either
    /// version) from the proxy or load balancer in front of the gateway,
    /// naming the client; a connection without one is closed. Off by
    /// default.
    pub accept_proxy_protocol: bool,
    /// HTTP/1.1: a request whose client closes its connection (or shuts
    /// its sending side) before the answer is given up at once, its
    /// member's exchange dropped, as nginx does by default and HAProxy
    /// with `option abortonclose`. Off by default: the client's close is
    /// then seen when the answer is written, so the member finishes the
    /// request, and a client that half-closes after its request still
    /// gets the answer; on, each request also takes a read buffer of its
    /// own (docs/performance.md, "Half-closed clients"). HTTP/2 requests
    /// are given up on a reset or a closed connection either way.
    pub abort_on_close: bool,
}

/// Limits and timers shared by every listener. A reload may change them:
/// connections accepted after it are served with the new ones, open ones
/// keep theirs; the member connect and idle timeouts apply at once.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Connecting to a member. Default 1 s.
    pub connect_timeout: Duration,
    /// From sending a request to a member to its response headers (and
    /// for reading a small request body); for a streamed request body,
    /// from its last part, so that an upload has as long as it keeps
    /// coming. Default 30 s.
    pub request_timeout: Duration,
    /// A client has this long for the TLS handshake and for each request's
    /// headers (slow clients). Default 10 s.
    pub header_read_timeout: Duration,
    /// The largest request head in bytes (at least 8,192). Default 16 KiB.
    pub max_header_bytes: usize,
    /// Further members tried after a failure that is safe to retry.
    /// Default 3.
    pub retries: u32,
    /// Request bodies up to this size are kept so the request can be sent
    /// again. Default 64 KiB.
    pub retry_body_limit: usize,
    /// Idle connections to members are closed after this (within a
    /// second). Default 4 s: under the keep-alive timeouts of common
    /// servers (5 s for Apache httpd and Node.js), so the gateway closes an
    /// idle connection before the member does.
    pub member_idle_timeout: Duration,
    /// On shutdown, how long open connections may take to finish (HTTP
    /// connections end after their current request). Default 10 s.
    pub shutdown_grace: Duration,
    /// A client that takes nothing of what the gateway sends it for this
    /// long is disconnected (HTTP). Default 60 s.
    pub send_timeout: Duration,
    /// A member that sends nothing more of an answer's body for this long
    /// has the answer broken off (HTTP): the client sees it unfinished,
    /// and the member connection closes. Default 60 s.
    pub answer_idle_timeout: Duration,
    /// A TCP connection that carries no byte either way for this long is
    /// closed (to within an eighth of it). Default 1 h.
    pub tcp_idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            retries: 3,
            retry_body_limit: 64 * 1024,
            member_idle_timeout: Duration::from_secs(4),
            shutdown_grace: Duration::from_secs(10),
            send_timeout: Duration::from_secs(60),
            answer_idle_timeout: Duration::from_secs(60),
            tcp_idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// The whole gateway's configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Pools.
    pub pools: Vec<PoolSettings>,
    /// Registrars to resolve pools with (pools whose members come from
    /// registrars).
    pub registrars: Vec<SocketAddr>,
    /// How often registrar pools are resolved again. Default 1 s.
    pub refresh: Duration,
    /// How often every member is probed. Default 1 s.
    pub probe_interval: Duration,
    /// How long a probe may take. Default 500 ms.
    pub probe_timeout: Duration,
    /// Sessions are forgotten after this idle time. Default 30 min.
    pub session_idle: Duration,
    /// The most sessions a pool's table keeps. Default 1,000,000.
    pub session_capacity: usize,
    /// Limits and timers.
    pub limits: Limits,
    /// Workers serving the listeners, each on a thread of its own (a
    /// single worker started from a single-threaded runtime runs on it).
    /// Default: one per core.
    pub workers: usize,
    /// Whether workers on threads of their own are pinned each to a CPU
    /// of its own, when there are no more of them than CPUs the process
    /// may run on (`worker_runtime`). Default: yes.
    pub pin_workers: bool,
    /// How members of pools with [`PoolSettings::tls`] are reached: the
    /// authorities their certificates must come from (a member's
    /// certificate names its IP address). `None`: no pool may use TLS.
    pub member_tls: Option<Arc<rustls::ClientConfig>>,
    /// Where the members of registrar pools are kept across restarts
    /// (see `member_cache`). None by default.
    pub member_cache: Option<std::path::PathBuf>,
    /// The file the access log is appended to: a line per HTTP request
    /// answered and per TCP connection closed (see `access_log`). None
    /// (no access log) by default.
    pub access_log: Option<std::path::PathBuf>,
    /// A Unix socket on which the gateway hands its listening sockets to a
    /// gateway started to replace it, and from which it first asks the
    /// gateway before for them (see `handover`). None by default: a
    /// successor binds its own sockets beside.
    pub handover: Option<std::path::PathBuf>,
    /// Addresses the gateway binds (one socket each, `SO_REUSEPORT`) for
    /// the program around it to serve, such as an admin port, and hands to
    /// a successor with its listeners ([`crate::Gateway::side_listener`]). None by
    /// default.
    pub side_listeners: Vec<SocketAddr>,
    /// Session ticket keys shared with other gateways, so that a TLS
    /// session begun at one resumes at another ([`crate::tickets`]). `None`
    /// (each gateway makes its own keys) by default.
    pub ticket_keys: Option<TicketKeys>,
}

impl GatewayConfig {
    /// What a gateway cannot start (or reload) with: a pool configured
    /// twice, or listing a member twice, or reaching its members in a way
    /// not configured; a listener serving no configured pool, or keeping
    /// sessions by a key its protocol does not have.
    pub fn check(&self) -> Result<(), GatewayError> {
        for (i, settings) in self.pools.iter().enumerate() {
            let handle = || settings.handle.to_string();
            if self.pools[..i].iter().any(|p| p.handle == settings.handle) {
                return Err(GatewayError::DuplicatePool(handle()));
            }
            if settings.tls && self.member_tls.is_none() {
                return Err(GatewayError::NoMemberTrust(handle()));
            }
            if matches!(settings.probe, ProbeKind::Grpc { .. }) && !settings.http2 {
                return Err(GatewayError::GrpcProbeWithoutHttp2(handle()));
            }
            if settings.https_port.is_some() {
                if settings.tls {
                    return Err(GatewayError::HttpsPortWithTls(handle()));
                }
                if self.member_tls.is_none() {
                    return Err(GatewayError::NoMemberTrust(handle()));
                }
            }
            match &settings.source {
                MemberSource::Registrars if self.registrars.is_empty() => {
                    return Err(GatewayError::NoRegistrars(handle()));
                }
                MemberSource::Registrars => {}
                MemberSource::Static(members) => {
                    for (j, member) in members.iter().enumerate() {
                        if members[..j].iter().any(|m| m.address == member.address) {
                            return Err(GatewayError::DuplicateMember {
                                pool: handle(),
                                address: member.address,
                            });
                        }
                    }
                }
            }
        }
        for listener in &self.listeners {
            if let Some(reason) = listener
                .affinity
                .unusable(listener.protocol, listener.tls.is_some())
            {
                return Err(GatewayError::Affinity {
                    listener: listener.address,
                    reason,
                });
            }
            let Some(pool) = self.pools.iter().find(|p| p.handle == listener.pool) else {
                return Err(GatewayError::UnknownPool {
                    listener: listener.address,
                    pool: listener.pool.to_string(),
                });
            };
            if listener.protocol == Protocol::Http && pool.proxy_protocol.is_some() {
                return Err(GatewayError::ProxyProtocolOverHttp {
                    listener: listener.address,
                    pool: pool.handle.to_string(),
                });
            }
        }
        Ok(())
    }

    /// A new pool with `settings`, its session table as this
    /// configuration says.
    pub(crate) fn new_pool(&self, settings: &PoolSettings) -> Pool {
        Pool::new(
            settings.clone(),
            SessionTable::new(self.session_idle, self.session_capacity),
        )
    }

    /// A configuration with these listeners and pools and every default.
    pub fn new(listeners: Vec<ListenerConfig>, pools: Vec<PoolSettings>) -> Self {
        Self {
            listeners,
            pools,
            registrars: Vec::new(),
            refresh: Duration::from_secs(1),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            session_idle: Duration::from_secs(30 * 60),
            session_capacity: 1_000_000,
            limits: Limits::default(),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            pin_workers: true,
            member_tls: None,
            member_cache: None,
            access_log: None,
            handover: None,
            side_listeners: Vec::new(),
            ticket_keys: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::pool::StaticMember;
    use crate::proxy_protocol::ProxyProtocol;

    fn member(port: u16) -> StaticMember {
        StaticMember {
            address: (Ipv4Addr::LOCALHOST, port).into(),
            weight: 1,
            priority: 0,
        }
    }

    fn pool(handle: &str) -> PoolSettings {
        PoolSettings::new(
            PoolHandle::from(handle),
            MemberSource::Static(vec![member(8001), member(8002)]),
        )
    }

    fn listener(port: u16, protocol: Protocol, pool: &str) -> ListenerConfig {
        ListenerConfig {
            address: (Ipv4Addr::LOCALHOST, port).into(),
            protocol,
            pool: PoolHandle::from(pool),
            tls: None,
            affinity: Affinity::usual(protocol),
            max_connections: 10_000,
            accept_proxy_protocol: false,
            abort_on_close: false,
        }
    }

    /// An HTTP listener on pool `web` and a TCP one on pool `mail`.
    fn config() -> GatewayConfig {
        GatewayConfig::new(
            vec![
                listener(8080, Protocol::Http, "web"),
                listener(2525, Protocol::Tcp, "mail"),
            ],
            vec![pool("web"), pool("mail")],
        )
    }

    fn member_trust() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    fn refusal(config: &GatewayConfig) -> String {
        config
            .check()
            .expect_err("the configuration is refused")
            .to_string()
    }

    #[test]
    fn a_configuration_of_known_pools_and_fitting_affinities_passes() {
        config().check().expect("passes");
    }

    #[test]
    fn a_pool_configured_twice_is_refused() {
        let mut config = config();
        config.pools.push(pool("web"));
        assert_eq!(refusal(&config), "pool \"web\" is configured twice");
    }

    #[test]
    fn a_member_listed_twice_is_refused() {
        let mut config = config();
        config.pools[0].source = MemberSource::Static(vec![member(8001), member(8001)]);
        assert_eq!(
            refusal(&config),
            "pool \"web\" lists the member 127.0.0.1:8001 twice"
        );
    }

    #[test]
    fn members_over_tls_need_an_authority_for_their_certificates() {
        let mut config = config();
        config.pools[0].tls = true;
        assert!(refusal(&config).contains("no authority for their certificates"));
        config.member_tls = Some(member_trust());
        config.check().expect("passes with an authority");
    }

    #[test]
    fn an_https_port_needs_an_authority_and_no_tls_of_the_pool() {
        let mut config = config();
        config.pools[0].https_port = Some(8443);
        assert!(refusal(&config).contains("no authority for their certificates"));
        config.member_tls = Some(member_trust());
        config.check().expect("passes with an authority");
        config.pools[0].tls = true;
        assert!(refusal(&config).contains("has an https_port and tls"));
    }

    #[test]
    fn the_grpc_probe_needs_http2_to_members() {
        let mut config = config();
        config.pools[0].probe = ProbeKind::Grpc {
            service: String::new(),
        };
        assert!(refusal(&config).contains("which needs http2"));
        config.pools[0].http2 = true;
        config.check().expect("passes over HTTP/2");
    }

    #[test]
    fn registrar_pools_need_registrars() {
        let mut config = config();
        config.pools[1].source = MemberSource::Registrars;
        assert_eq!(
            refusal(&config),
            "pool \"mail\" takes its members from registrars, but no registrar is configured"
        );
        config.registrars.push((Ipv4Addr::LOCALHOST, 3863).into());
        config.check().expect("passes with a registrar");
    }

    #[test]
    fn a_listener_of_a_pool_not_configured_is_refused() {
        let mut config = config();
        config
            .listeners
            .push(listener(8081, Protocol::Http, "shop"));
        assert_eq!(
            refusal(&config),
            "listener 127.0.0.1:8081 serves pool \"shop\", which is not configured"
        );
    }

    #[test]
    fn an_affinity_the_listener_cannot_key_by_is_refused() {
        for (protocol, affinity) in [
            (Protocol::Tcp, Affinity::Cookie),
            (Protocol::Http, Affinity::ClientAddress),
            (Protocol::Http, Affinity::TlsSession),
        ] {
            let mut config = config();
            let index = usize::from(protocol == Protocol::Tcp);
            config.listeners[index].affinity = affinity;
            let refused = refusal(&config);
            let address = config.listeners[index].address;
            assert!(
                refused.starts_with(&format!("listener {address}: ")),
                "{protocol:?} with {affinity:?}: {refused}"
            );
        }
    }

    #[test]
    fn the_proxy_protocol_to_members_is_for_tcp_listeners_only() {
        let mut config = config();
        config.pools[1].proxy_protocol = Some(ProxyProtocol::V2);
        config.check().expect("a TCP listener may");
        config.pools[0].proxy_protocol = Some(ProxyProtocol::V1);
        assert!(
            refusal(&config).contains("is HTTP, and pool \"web\" sends the PROXY protocol header")
        );
    }
}
