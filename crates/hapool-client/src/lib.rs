//! Client libraries of hapool: [`PeHandle`] keeps a server registered in a
//! pool; [`PoolUser`] finds servers of a pool and connects to one, failing
//! over to the next when one is down; [`PoolSession`] and
//! [`ElementSession`] carry a session between them that survives the
//! server's death (state cookies, business cards).
//!
//! Runnable examples: `examples/echo_pe.rs` (an echo server that registers
//! itself) and `examples/echo_pu.rs` (a client that keeps talking to the
//! pool while its servers die).
//!
//! Both speak ASAP over TCP to any registrar of a list and move to the
//! next one when a registrar fails.

#![forbid(unsafe_code)]

mod connection;
mod discover;
pub mod pe;
mod pu;
pub mod session;

pub use connection::ClientTls;
pub use discover::discover;
pub use pe::{PeConfig, PeHandle, PeState};
pub use pu::{PoolUser, PuConfig};
pub use session::{
    CookieKey, CookieRefusal, ElementSession, Incoming, PoolSession, SessionConfig, SessionEvent,
};

/// Why a request to the registrars failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No registrar of the list could be reached.
    #[error("no registrar reachable (tried {tried})")]
    NoRegistrar {
        /// How many addresses were tried.
        tried: usize,
    },
    /// The registrar answered with an error.
    #[error("registrar refused: {0:?}")]
    Refused(hapool_wire::CauseCode),
    /// The registrar did not answer in time.
    #[error("registrar did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// No pool element of the pool accepted a connection.
    #[error("no pool element of pool {0:?} accepted a connection")]
    NoElement(String),
    /// The connection failed while waiting for an answer.
    #[error("connection failed: {0}")]
    Connection(String),
    /// A cookie key shorter than 16 bytes.
    #[error("a cookie key of {0} bytes is too short (at least 16)")]
    WeakKey(usize),
    /// A state cookie larger than the session allows.
    #[error("cookie of {length} bytes exceeds the limit of {max}")]
    CookieTooLarge {
        /// Its length.
        length: usize,
        /// The limit.
        max: usize,
    },
}
