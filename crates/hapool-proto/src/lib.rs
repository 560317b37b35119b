//! Sans-IO protocol state machines of hapool.
//!
//! Main type so far: [`Registrar`], the ASAP side of a registrar
//! (registration, deregistration, handle resolution, keep-alive supervision,
//! unreachability reports, per-connection rate limits), over a
//! [`hapool_handlespace::Handlespace`].
//!
//! State machines here take input through `handle_*` methods with `now` as
//! an argument and give output through `poll_*` methods. They never read
//! the clock, never sleep, never spawn and never touch a socket; their
//! randomness comes from a seeded RNG they hold. That is what lets one seed
//! reproduce a run in simulation.

#![forbid(unsafe_code)]

mod rate;
mod registrar;

pub use rate::RateLimit;
pub use registrar::{
    Announcement, Event, Registrar, RegistrarConfig, RegistrationRule, RemovalReason, Transmit,
};
