//! One virtual router (RFC 5798 §6), without I/O.
//!
//! The driver feeds it start-up and shutdown, every validated
//! advertisement for its VRID with the sender's address, and the time;
//! it takes back [`Action`]s (send an advertisement, take or release the
//! virtual addresses) and the next time it must be woken.
//!
//! Times are centiseconds on the wire; here they are [`Duration`]s.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::packet::{Addresses, Advertisement};

/// A virtual router's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Virtual router id, 1–255.
    pub vrid: u8,
    /// 1–254, or 255 for the owner of the virtual addresses. Default 100.
    pub priority: u8,
    /// Between advertisements while master, in centiseconds (1–4095).
    /// Default 100 (1 s).
    pub advert_interval: u16,
    /// Whether a higher-priority backup takes over from a lower-priority
    /// master. Default true.
    pub preempt: bool,
    /// How long after start-up a backup waits before it preempts a
    /// lower-priority master. Default zero.
    pub preempt_delay: Duration,
    /// Whether a master that does not own the addresses accepts packets
    /// sent to them (RFC 5798 default false).
    pub accept_mode: bool,
    /// This router's own address on the interface (the advertisements'
    /// source, which breaks ties between equal priorities).
    pub primary_address: IpAddr,
    /// The virtual addresses.
    pub addresses: Addresses,
}

/// The states of RFC 5798 §6.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not running.
    Initialize,
    /// Watching the master.
    Backup,
    /// Holding the virtual addresses.
    Master,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this advertisement to the group (and unicast peers).
    Send(Advertisement),
    /// Add the virtual addresses to the interface and announce them
    /// (gratuitous ARP, unsolicited neighbour advertisements).
    TakeAddresses,
    /// Remove the virtual addresses from the interface.
    ReleaseAddresses,
    /// Announce the virtual addresses again (gratuitous ARP, unsolicited
    /// neighbour advertisements): another master was heard, so hosts may
    /// have learnt its MAC for them.
    Announce,
    /// The state changed (for notify commands, logs and metrics).
    StateChanged {
        /// The old state.
        from: State,
        /// The new state.
        to: State,
    },
}

/// One virtual router. See the module documentation.
#[derive(Debug)]
pub struct VirtualRouter {
    config: RouterConfig,
    /// The priority in force: the configured one, lowered by tracking.
    priority: u8,
    state: State,
    /// The master's interval as last advertised (centiseconds).
    master_adver_interval: u16,
    /// Master_Down_Timer (backup).
    down_at: Option<Instant>,
    /// Adver_Timer (master).
    advert_at: Option<Instant>,
    started: Option<Instant>,
    actions: VecDeque<Action>,
}

fn cs(centiseconds: u32) -> Duration {
    Duration::from_millis(u64::from(centiseconds) * 10)
}

impl VirtualRouter {
    /// A router in Initialize.
    pub fn new(config: RouterConfig) -> Self {
        Self {
            priority: config.priority,
            master_adver_interval: config.advert_interval,
            config,
            state: State::Initialize,
            down_at: None,
            advert_at: None,
            started: None,
            actions: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The priority in force.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Whether this router owns the virtual addresses (priority 255).
    pub fn is_owner(&self) -> bool {
        self.config.priority == 255
    }

    /// Whether, as master, it accepts packets sent to the virtual
    /// addresses (the owner always does; others in accept mode).
    pub fn accepts_packets(&self) -> bool {
        self.state == State::Master && (self.is_owner() || self.config.accept_mode)
    }

    /// Skew_Time, from the local priority and the master's interval.
    pub fn skew_time(&self) -> Duration {
        cs((256 - u32::from(self.priority)) * u32::from(self.master_adver_interval) / 256)
    }

    /// Master_Down_Interval: three of the master's intervals and the skew.
    pub fn master_down_interval(&self) -> Duration {
        cs(3 * u32::from(self.master_adver_interval)) + self.skew_time()
    }

    fn advertisement(&self, priority: u8) -> Advertisement {
        Advertisement {
            vrid: self.config.vrid,
            priority,
            max_adver_int: self.config.advert_interval,
            addresses: self.config.addresses.clone(),
        }
    }

    fn set_state(&mut self, to: State) {
        let from = self.state;
        if from != to {
            self.state = to;
            self.actions.push_back(Action::StateChanged { from, to });
        }
    }

    fn become_master(&mut self, now: Instant) {
        self.down_at = None;
        self.actions
            .push_back(Action::Send(self.advertisement(self.priority)));
        self.actions.push_back(Action::TakeAddresses);
        self.advert_at = Some(now + cs(u32::from(self.config.advert_interval)));
        self.set_state(State::Master);
    }

    fn become_backup(&mut self, now: Instant) {
        let was_master = self.state == State::Master;
        self.advert_at = None;
        self.down_at = Some(now + self.master_down_interval());
        if was_master {
            self.actions.push_back(Action::ReleaseAddresses);
        }
        self.set_state(State::Backup);
    }

    /// Start-up: the owner becomes master at once; any other router
    /// becomes backup and waits Master_Down_Interval.
    pub fn handle_startup(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        self.started = Some(now);
        self.master_adver_interval = self.config.advert_interval;
        if self.is_owner() {
            self.become_master(now);
        } else {
            self.become_backup(now);
        }
    }

    /// Shutdown: a master says priority 0 (so a backup takes over after
    /// its skew time) and releases the addresses.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        match self.state {
            State::Initialize => return,
            State::Master => {
                self.actions.push_back(Action::Send(self.advertisement(0)));
                self.actions.push_back(Action::ReleaseAddresses);
            }
            State::Backup => {}
        }
        self.down_at = None;
        self.advert_at = None;
        self.set_state(State::Initialize);
    }

    /// A valid advertisement for this VRID arrived from `source` (its IP
    /// source address).
    pub fn handle_advertisement(&mut self, source: IpAddr, adv: &Advertisement, now: Instant) {
        if adv.vrid != self.config.vrid || self.is_owner() {
            // The owner ignores every advertisement (RFC 5798 §7.1).
            return;
        }
        match self.state {
            State::Initialize => {}
            State::Backup => {
                if adv.priority == 0 {
                    self.down_at = Some(now + self.skew_time());
                } else if !self.config.preempt
                    || adv.priority >= self.priority
                    || self.preemption_delayed(now)
                {
                    self.master_adver_interval = adv.max_adver_int;
                    self.down_at = Some(now + self.master_down_interval());
                }
                // Otherwise: a lower-priority master, discarded, so the
                // down timer runs out and this router preempts it.
            }
            State::Master => {
                if adv.priority == 0 {
                    self.actions
                        .push_back(Action::Send(self.advertisement(self.priority)));
                    self.advert_at = Some(now + cs(u32::from(self.config.advert_interval)));
                } else if adv.priority > self.priority
                    || (adv.priority == self.priority
                        && ip_key(source) > ip_key(self.config.primary_address))
                {
                    self.master_adver_interval = adv.max_adver_int;
                    self.become_backup(now);
                } else {
                    // Another master, which loses (a partition healing):
                    // RFC 5798 discards its advertisement. This master
                    // also advertises at once, so that the other steps
                    // down without waiting an interval, and announces the
                    // addresses again, since hosts may have learnt the
                    // other's MAC for them.
                    self.actions
                        .push_back(Action::Send(self.advertisement(self.priority)));
                    self.actions.push_back(Action::Announce);
                    self.advert_at = Some(now + cs(u32::from(self.config.advert_interval)));
                }
            }
        }
    }

    fn preemption_delayed(&self, now: Instant) -> bool {
        self.started
            .is_some_and(|s| now < s + self.config.preempt_delay)
    }

    /// Changes the priority in force (tracking lowers it when a check
    /// fails and restores it when it passes). The owner's priority does not
    /// change. A master advertises the new priority at once.
    pub fn set_priority(&mut self, priority: u8, now: Instant) {
        let priority = priority.clamp(1, 254);
        if self.is_owner() || priority == self.priority {
            return;
        }
        self.priority = priority;
        if self.state == State::Master {
            self.actions
                .push_back(Action::Send(self.advertisement(self.priority)));
            self.advert_at = Some(now + cs(u32::from(self.config.advert_interval)));
        }
    }

    /// Time has come to `now`: the backup's down timer and the master's
    /// advertisement timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Backup if self.down_at.is_some_and(|d| d <= now) => self.become_master(now),
            State::Master if self.advert_at.is_some_and(|a| a <= now) => {
                self.actions
                    .push_back(Action::Send(self.advertisement(self.priority)));
                self.advert_at = Some(now + cs(u32::from(self.config.advert_interval)));
            }
            _ => {}
        }
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`VirtualRouter::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Backup => self.down_at,
            State::Master => self.advert_at,
            State::Initialize => None,
        }
    }
}

/// An address as an unsigned integer in network byte order.
fn ip_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}
