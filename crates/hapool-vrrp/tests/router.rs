//! The virtual router state machine, transition by transition, with a
//! virtual clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hapool_vrrp::{Action, Addresses, Advertisement, RouterConfig, State, VirtualRouter};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn config(priority: u8, last: u8) -> RouterConfig {
    RouterConfig {
        vrid: 7,
        priority,
        advert_interval: 100,
        preempt: true,
        preempt_delay: Duration::ZERO,
        accept_mode: false,
        primary_address: ip(last),
        addresses: Addresses::V4(vec![Ipv4Addr::new(10, 0, 0, 100)]),
    }
}

fn adv(priority: u8) -> Advertisement {
    Advertisement {
        vrid: 7,
        priority,
        max_adver_int: 100,
        addresses: Addresses::V4(vec![Ipv4Addr::new(10, 0, 0, 100)]),
    }
}

fn actions(r: &mut VirtualRouter) -> Vec<Action> {
    std::iter::from_fn(|| r.poll_action()).collect()
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

#[test]
fn the_owner_becomes_master_at_once() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(255, 1));
    r.handle_startup(t0);
    assert_eq!(
        actions(&mut r),
        [
            Action::Send(adv(255)),
            Action::TakeAddresses,
            Action::StateChanged {
                from: State::Initialize,
                to: State::Master
            }
        ]
    );
    assert_eq!(r.poll_timeout(), Some(ms(t0, 1000)));
    assert!(r.accepts_packets());
    // It ignores every advertisement, even a higher one.
    r.handle_advertisement(ip(9), &adv(254), t0);
    assert_eq!(r.state(), State::Master);
}

#[test]
fn a_backup_takes_over_after_master_down_interval() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(100, 1));
    r.handle_startup(t0);
    assert_eq!(
        actions(&mut r),
        [Action::StateChanged {
            from: State::Initialize,
            to: State::Backup
        }]
    );
    // Skew (256-100)*100/256 = 60 cs; down interval 3*100 + 60 = 360 cs.
    assert_eq!(r.skew_time(), Duration::from_millis(600));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 3600)));
    // A master's advertisement restarts the timer.
    r.handle_advertisement(ip(2), &adv(150), ms(t0, 1000));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 4600)));
    r.handle_timeout(ms(t0, 4599));
    assert_eq!(r.state(), State::Backup);
    r.handle_timeout(ms(t0, 4600));
    assert_eq!(
        actions(&mut r),
        [
            Action::Send(adv(100)),
            Action::TakeAddresses,
            Action::StateChanged {
                from: State::Backup,
                to: State::Master
            }
        ]
    );
    // Not the owner, no accept mode: the driver keeps packets out.
    assert!(!r.accepts_packets());
    // Advertisements every interval.
    r.handle_timeout(ms(t0, 5600));
    assert_eq!(actions(&mut r), [Action::Send(adv(100))]);
}

#[test]
fn a_backup_adopts_the_masters_interval() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(100, 1));
    r.handle_startup(t0);
    let slow = Advertisement {
        max_adver_int: 200,
        ..adv(150)
    };
    r.handle_advertisement(ip(2), &slow, t0);
    // 3*200 + (156*200/256 = 121) = 721 cs.
    assert_eq!(r.poll_timeout(), Some(ms(t0, 7210)));
}

#[test]
fn priority_zero_means_take_over_after_the_skew() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(100, 1));
    r.handle_startup(t0);
    r.handle_advertisement(ip(2), &adv(0), ms(t0, 100));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 700)));
}

#[test]
fn a_higher_priority_backup_preempts_unless_told_not_to() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(200, 1));
    r.handle_startup(t0);
    // A lower master's advertisements are discarded: the timer runs out.
    r.handle_advertisement(ip(2), &adv(100), ms(t0, 1000));
    let down = r.poll_timeout().unwrap();
    // Priority 200: skew (256-200)*100/256 = 21 cs, down interval 321 cs.
    assert_eq!(down, ms(t0, 3210));
    r.handle_timeout(down);
    assert_eq!(r.state(), State::Master);

    let mut cfg = config(200, 1);
    cfg.preempt = false;
    let mut r = VirtualRouter::new(cfg);
    r.handle_startup(t0);
    r.handle_advertisement(ip(2), &adv(100), ms(t0, 1000));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 1000 + 3210)));
}

#[test]
fn preempt_delay_holds_preemption_after_start_up() {
    let t0 = Instant::now();
    let mut cfg = config(200, 1);
    cfg.preempt_delay = Duration::from_secs(10);
    let mut r = VirtualRouter::new(cfg);
    r.handle_startup(t0);
    r.handle_advertisement(ip(2), &adv(100), ms(t0, 1000));
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 4210)),
        "accepted within the delay"
    );
    r.handle_advertisement(ip(2), &adv(100), ms(t0, 4000));
    assert_eq!(
        r.poll_timeout(),
        Some(ms(t0, 7210)),
        "accepted within the delay"
    );
    r.handle_advertisement(ip(2), &adv(100), ms(t0, 11_000));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 7210)), "discarded after it");
}

#[test]
fn a_master_yields_to_higher_priority_and_to_a_higher_address_on_a_tie() {
    let t0 = Instant::now();
    let master = |t0| {
        let mut r = VirtualRouter::new(config(100, 5));
        r.handle_startup(t0);
        r.handle_timeout(ms(t0, 3600));
        actions(&mut r);
        r
    };
    let mut r = master(t0);
    r.handle_advertisement(ip(2), &adv(99), ms(t0, 4000));
    assert_eq!(r.state(), State::Master, "lower priority: it stays master");
    // ... and says so at once, announcing its addresses again.
    assert_eq!(actions(&mut r), [Action::Send(adv(100)), Action::Announce]);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 5000)));
    r.handle_advertisement(ip(2), &adv(100), ms(t0, 4000));
    assert_eq!(
        r.state(),
        State::Master,
        "equal, lower address: it stays master"
    );
    actions(&mut r);
    r.handle_advertisement(ip(9), &adv(100), ms(t0, 4000));
    assert_eq!(
        actions(&mut r),
        [
            Action::ReleaseAddresses,
            Action::StateChanged {
                from: State::Master,
                to: State::Backup
            }
        ]
    );
    let mut r = master(t0);
    r.handle_advertisement(ip(2), &adv(101), ms(t0, 4000));
    assert_eq!(r.state(), State::Backup);
    // A master hearing priority 0 answers at once.
    let mut r = master(t0);
    r.handle_advertisement(ip(2), &adv(0), ms(t0, 4000));
    assert_eq!(actions(&mut r), [Action::Send(adv(100))]);
    assert_eq!(r.poll_timeout(), Some(ms(t0, 5000)));
}

#[test]
fn shutdown_of_a_master_says_priority_zero() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(255, 1));
    r.handle_startup(t0);
    actions(&mut r);
    r.handle_shutdown(ms(t0, 10));
    assert_eq!(
        actions(&mut r),
        [
            Action::Send(adv(0)),
            Action::ReleaseAddresses,
            Action::StateChanged {
                from: State::Master,
                to: State::Initialize
            }
        ]
    );
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn tracking_lowers_the_priority_and_a_master_says_so() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(150, 1));
    r.handle_startup(t0);
    r.handle_timeout(ms(t0, 3600));
    actions(&mut r);
    r.set_priority(50, ms(t0, 4000));
    assert_eq!(actions(&mut r), [Action::Send(adv(50))]);
    assert_eq!(r.priority(), 50);
    // The owner's priority does not move.
    let mut owner = VirtualRouter::new(config(255, 2));
    owner.set_priority(10, t0);
    assert_eq!(owner.priority(), 255);
}

#[test]
fn advertisements_for_another_vrid_are_ignored() {
    let t0 = Instant::now();
    let mut r = VirtualRouter::new(config(100, 1));
    r.handle_startup(t0);
    let other = Advertisement {
        vrid: 8,
        ..adv(200)
    };
    r.handle_advertisement(ip(2), &other, ms(t0, 1000));
    assert_eq!(r.poll_timeout(), Some(ms(t0, 3600)));
}
