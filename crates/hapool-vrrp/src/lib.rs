//! VRRP version 3 (RFC 5798) without I/O.
//!
//! - [`packet`]: the ADVERTISEMENT, encoded and decoded byte-exact, with
//!   the checksum over the pseudo-header and every receive check of
//!   RFC 5798 §7.1 ([`PacketError`] names each).
//! - [`router`]: one virtual router's state machine (Initialize, Backup,
//!   Master; Master_Down_Interval with skew; preemption and preempt delay;
//!   the owner's priority 255; priority 0 on shutdown; accept mode).
//!
//! Like the other state machines of hapool, the router takes `now` as an
//! argument and never reads the clock, sleeps or touches a socket; the
//! Linux driver (raw sockets, netlink) lives elsewhere.

#![forbid(unsafe_code)]

pub mod packet;
pub mod router;

pub use packet::{Addresses, Advertisement, ChecksumMode, PacketError};
pub use router::{Action, RouterConfig, State, VirtualRouter};
