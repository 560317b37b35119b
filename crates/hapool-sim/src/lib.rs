//! Deterministic simulation of a hapool registrar cluster.
//!
//! [`run`] drives the real state machines of `hapool-proto` (the
//! [`Registrar`](hapool_proto::Registrar) with its ENRP side, and
//! [`PeSession`](hapool_proto::PeSession) for every pool
//! element) against a simulated network and a virtual clock. One `u64` seed
//! decides everything: the cluster's size, the faults (registrar and PE
//! crashes and restarts, partitions between registrars, loss, delay and
//! reordering of ENRP messages), and every delay. Every ENRP and ASAP
//! message crosses the simulated network as bytes, through the codec.
//!
//! # Invariants
//!
//! Every 10 ms of simulated time, each registrar's incremental owner
//! checksums equal the checksums computed from scratch over its
//! handlespace. After every event:
//! - (3) a PE registered with a live registrar is held by every registrar
//!   that serves, once the network has been healthy, the registrar serving
//!   and the PE registered for longer than the propagation bound (three
//!   heartbeats, max-time-last-heard and two max-time-no-response: a lost
//!   update is repaired by the next audit);
//! - (4) a dead PE is gone from every registrar once the network has been
//!   healthy for its registration life + the keep-alive round + that bound
//!   (a PE that died with its home is removed by the registrar that took it
//!   over when its life runs out);
//! - a pool user asking a serving registrar for a pool with PEs that (3)
//!   says it must hold gets a non-empty answer.
//!
//! When the faults are over and the healed network has been quiet for
//! [`SimConfig::quiet_time`]:
//! - (1) every registrar serves and holds the same PEs with the same homes
//!   (so the same checksums);
//! - (2) every registered PE's home is the registrar it is registered with,
//!   which is alive, in every registrar's view;
//! - no dead PE is left anywhere.
//!
//! A failure names the seed; `cargo run -p hapool-sim --release -- --seed N
//! --trace` replays it with a trace.

#![forbid(unsafe_code)]

mod network;
mod world;

use std::time::Duration;

pub use world::{Report, Violation, run};

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
