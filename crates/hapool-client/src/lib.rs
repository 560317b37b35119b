//! Client libraries of hapool: [`PoolElement`](pe::PeHandle) keeps a server
//! registered in a pool; [`PoolUser`] finds servers of a pool.
//!
//! Both speak ASAP over TCP to any registrar of a list and move to the
//! next one when a registrar fails.

#![forbid(unsafe_code)]

mod connection;
pub mod pe;
mod pu;

pub use pe::{PeConfig, PeHandle, PeState};
pub use pu::{PoolUser, PuConfig};

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
    /// The connection failed while waiting for an answer.
    #[error("connection to the registrar failed: {0}")]
    Connection(String),
}
