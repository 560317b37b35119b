//! Deterministic simulation of a hapool registrar cluster.
//!
//! [`run`] drives the real state machines of `hapool-proto` (the
//! [`Registrar`] with its ENRP side, and [`PeSession`] for every pool
//! element) against a simulated network and a virtual clock. One `u64` seed
//! decides everything: the cluster's size, the faults (registrar and PE
//! crashes and restarts, partitions between registrars, loss, delay and
//! reordering of ENRP messages), and every delay. Every ENRP and ASAP
//! message crosses the simulated network as bytes, through the codec.
//!
//! After every event the simulation checks that each registrar's own
//! bookkeeping holds; every [`CHECK_EVERY`] of simulated time it checks the
//! cluster's invariants ([`Violation`] lists them); after the faults end and
//! the network has been quiet for a while, it checks that the cluster
//! converged. A failure names the seed; `cargo run -p hapool-sim --release
//! -- --seed N --trace` replays it with a trace.

#![forbid(unsafe_code)]

mod network;
mod world;

use std::time::Duration;

pub use world::{Report, Violation, run};

/// How often the cluster-wide invariants are checked, in simulated time.
pub const CHECK_EVERY: Duration = Duration::from_millis(10);

/// What a run looks like, apart from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// How long faults are injected, in simulated time.
    pub fault_time: Duration,
    /// How long the healed cluster then runs before the final checks.
    pub quiet_time: Duration,
    /// Print every event.
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            fault_time: Duration::from_secs(6),
            quiet_time: Duration::from_secs(4),
            trace: false,
        }
    }
}
