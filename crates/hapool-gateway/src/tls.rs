//! TLS termination: one listener, several certificates, chosen by the name
//! the client asks for (SNI); the first certificate serves clients that ask
//! for no name or for one no certificate carries.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::tickets::SessionTickets;

/// One certificate and the names it serves.
#[derive(Debug)]
pub struct Certificate {
    /// Host names (`www.example.com`, or `*.example.com` for any one
    /// label in front of `example.com`).
    pub names: Vec<String>,
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

/// Why a TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// No certificate given.
    #[error("a TLS listener needs at least one certificate")]
    NoCertificate,
    /// A private key of a kind rustls cannot sign with.
    #[error("the private key for {names:?} is not usable: {source}")]
    Key {
        /// The names of its certificate.
        names: Vec<String>,
        /// What rustls said.
        source: rustls::Error,
    },
    /// Two certificates claim one name.
    #[error("the name {0:?} is given to two certificates")]
    DuplicateName(String),
}

#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
        self.by_name
            .get(&name)
            .or_else(|| wildcard.and_then(|w| self.by_name.get(&w)))
            .or(Some(&self.default))
            .cloned()
    }
}

/// A server configuration that picks among `certificates` by SNI and
/// offers the application protocols `alpn` (e.g. `h2`, `http/1.1`).
pub fn server_config(
    certificates: Vec<Certificate>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let mut by_name = HashMap::new();
    let mut default = None;
    for certificate in certificates {
        let key = any_supported_type(&certificate.key).map_err(|source| TlsSetupError::Key {
            names: certificate.names.clone(),
            source,
        })?;
        let certified = Arc::new(CertifiedKey::new(certificate.chain, key));
        for name in &certificate.names {
            if by_name
                .insert(name.to_ascii_lowercase(), certified.clone())
                .is_some()
            {
                return Err(TlsSetupError::DuplicateName(name.clone()));
            }
        }
        default.get_or_insert(certified);
    }
    let default = default.ok_or(TlsSetupError::NoCertificate)?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default versions")
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(SniResolver { by_name, default }));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A TLS listener's server configuration, shared by the workers that
/// accept its connections. A reload replaces it (new certificates): a
/// connection accepted after takes the new one, those open keep theirs.
#[derive(Clone, Debug)]
pub(crate) struct LiveTls(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl LiveTls {
    /// Serves with `config`'s certificates and settings, and the
    /// gateway's session tickets (stateless: any number of clients can
    /// resume, and each ticket carries the session id that TLS session
    /// affinity keys on).
    pub(crate) fn new(config: &rustls::ServerConfig, tickets: &Arc<SessionTickets>) -> Self {
        let mut config = config.clone();
        config.ticketer = tickets.clone();
        Self(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// What accepts the next connection.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current().into()
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes `new`'s certificates and settings, but keeps the session
    /// ticket keys and session cache in use: clients resume their sessions
    /// across the change (and, with TLS session affinity, stay with their
    /// members).
    pub(crate) fn replace(&self, new: &rustls::ServerConfig) {
        let current = self.current();
        let mut next = new.clone();
        next.ticketer = current.ticketer.clone();
        next.session_storage = current.session_storage.clone();
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
    }
}
