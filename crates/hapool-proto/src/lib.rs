//! Sans-IO protocol state machines of hapool.
//!
//! Main type so far: [`Registrar`]: its ASAP side (registration,
//! deregistration, handle resolution, keep-alive supervision,
//! unreachability reports, per-connection rate limits) and its ENRP side
//! (presence, handle table copies, updates, audits, takeovers), over a
//! [`hapool_handlespace::Handlespace`]; and [`PeSession`], a pool
//! element's registration with one registrar of a list.
//!
//! State machines here take input through `handle_*` methods with `now` as
//! an argument and give output through `poll_*` methods. They never read
//! the clock, never sleep, never spawn and never touch a socket; their
//! randomness comes from a seeded RNG they hold. That is what lets one seed
//! reproduce a run in simulation.

#![forbid(unsafe_code)]

mod pool_element;
mod rate;
mod registrar;

pub use pool_element::{PeEvent, PeOutput, PeSession, PeSessionConfig, PeStatus};
pub use rate::RateLimit;
pub use registrar::peering::{EnrpConfig, PeerStatus};
pub use registrar::{
    Announcement, Event, Registrar, RegistrarConfig, RegistrationRule, RemovalReason, Transmit,
};
