//! Two to nine virtual routers of one group on a simulated link, with a
//! virtual clock: crashes, graceful shutdowns, restarts, loss and
//! partitions, decided by a seed. After the link heals and the group has
//! had time to settle, exactly one running router is master, and it has
//! the highest priority. Every
//! advertisement crosses the link as bytes, through the codec.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hapool_vrrp::packet::GROUP_V4;
use hapool_vrrp::{
    Action, Addresses, Advertisement, ChecksumMode, RouterConfig, State, VirtualRouter,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

enum Ev {
    Timer(usize),
    Deliver {
        to: usize,
        from: usize,
        bytes: Vec<u8>,
    },
    Crash(usize),
    Shutdown(usize),
    Restart(usize),
    Partition(Vec<bool>),
    Loss(f64),
    Heal,
}

fn address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

fn run(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(2..=9);
    let t0 = Instant::now();
    let interval: u16 = 10; // centiseconds: 100 ms
    let mut routers: Vec<Option<VirtualRouter>> = Vec::new();
    let configs: Vec<RouterConfig> = (0..n)
        .map(|i| RouterConfig {
            vrid: 51,
            // Distinct or not: ties are broken by address.
            priority: rng.random_range(1..=254),
            advert_interval: interval,
            preempt: true,
            preempt_delay: Duration::ZERO,
            accept_mode: false,
            primary_address: address(i),
            addresses: Addresses::V4(vec![Ipv4Addr::new(10, 0, 0, 200)]),
        })
        .collect();
    let mut queue: BTreeMap<(Instant, u64), Ev> = BTreeMap::new();
    let mut seq = 0u64;
    let mut push = |q: &mut BTreeMap<(Instant, u64), Ev>, at: Instant, ev: Ev| {
        seq += 1;
        q.insert((at, seq), ev);
    };
    for (i, config) in configs.iter().enumerate() {
        let mut r = VirtualRouter::new(config.clone());
        // Start-up staggered over 50 ms.
        let start = t0 + Duration::from_millis(rng.random_range(0..50));
        r.handle_startup(start);
        routers.push(Some(r));
        push(&mut queue, start, Ev::Timer(i));
    }
    let fault_end = t0 + Duration::from_secs(5);
    for _ in 0..rng.random_range(1..=6) {
        let at = t0 + Duration::from_millis(rng.random_range(200..4500));
        let i = rng.random_range(0..n);
        let back = at + Duration::from_millis(rng.random_range(100..1500));
        match rng.random_range(0..4) {
            0 => {
                push(&mut queue, at, Ev::Crash(i));
                push(&mut queue, back, Ev::Restart(i));
            }
            1 => {
                push(&mut queue, at, Ev::Shutdown(i));
                push(&mut queue, back, Ev::Restart(i));
            }
            2 => {
                let sides = (0..n).map(|_| rng.random_bool(0.5)).collect();
                push(&mut queue, at, Ev::Partition(sides));
            }
            _ => push(&mut queue, at, Ev::Loss(rng.random_range(0.1..0.6))),
        }
    }
    push(&mut queue, fault_end, Ev::Heal);
    for i in 0..n {
        push(
            &mut queue,
            fault_end + Duration::from_millis(1),
            Ev::Restart(i),
        );
    }
    // Settled: several master-down intervals after the heal.
    let end = fault_end + Duration::from_secs(2);
    let mut sides: Option<Vec<bool>> = None;
    let mut loss = 0.0;
    while let Some(entry) = queue.first_entry() {
        let (at, _) = *entry.key();
        if at > end {
            break;
        }
        let ev = entry.remove();
        let mut touched = None;
        match ev {
            Ev::Timer(i) => {
                if let Some(r) = routers[i].as_mut() {
                    r.handle_timeout(at);
                    touched = Some(i);
                }
            }
            Ev::Deliver { to, from, bytes } => {
                if let Some(r) = routers[to].as_mut() {
                    let adv = Advertisement::decode(
                        &bytes,
                        address(from),
                        IpAddr::V4(GROUP_V4),
                        255,
                        ChecksumMode::PseudoHeader,
                    )
                    .map_err(|e| format!("seed {seed}: {e}"))?;
                    r.handle_advertisement(address(from), &adv, at);
                    touched = Some(to);
                }
            }
            Ev::Crash(i) => routers[i] = None,
            Ev::Shutdown(i) => {
                if let Some(r) = routers[i].as_mut() {
                    r.handle_shutdown(at);
                    touched = Some(i);
                }
            }
            Ev::Restart(i) => {
                let running = routers[i]
                    .as_ref()
                    .is_some_and(|r| r.state() != State::Initialize);
                if !running {
                    let mut r = VirtualRouter::new(configs[i].clone());
                    r.handle_startup(at);
                    routers[i] = Some(r);
                    touched = Some(i);
                }
            }
            Ev::Partition(s) => sides = Some(s),
            Ev::Loss(p) => loss = p,
            Ev::Heal => {
                sides = None;
                loss = 0.0;
            }
        }
        let Some(i) = touched else { continue };
        let r = routers[i].as_mut().expect("touched");
        let mut sends = Vec::new();
        while let Some(action) = r.poll_action() {
            if let Action::Send(adv) = action {
                sends.push(adv);
            }
        }
        if let Some(next) = r.poll_timeout() {
            push(&mut queue, next.max(at), Ev::Timer(i));
        }
        for adv in sends {
            let bytes = adv
                .encode(address(i), IpAddr::V4(GROUP_V4), ChecksumMode::PseudoHeader)
                .to_vec();
            for to in (0..n).filter(|&to| to != i) {
                let cut = sides.as_ref().is_some_and(|s| s[to] != s[i]);
                if cut || (loss > 0.0 && rng.random_bool(loss)) {
                    continue;
                }
                let delay = Duration::from_micros(rng.random_range(500..3000));
                push(
                    &mut queue,
                    at + delay,
                    Ev::Deliver {
                        to,
                        from: i,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }
    let masters: Vec<usize> = (0..n)
        .filter(|&i| {
            routers[i]
                .as_ref()
                .is_some_and(|r| r.state() == State::Master)
        })
        .collect();
    // A backup does not preempt a master of equal priority (RFC 5798:
    // only a lower one), so among equals either may hold the address; the
    // address breaks the tie only between two masters.
    let highest = configs.iter().map(|c| c.priority).max().expect("routers");
    if masters.len() != 1 || configs[masters[0]].priority != highest {
        let prios: Vec<u8> = configs.iter().map(|c| c.priority).collect();
        return Err(format!(
            "seed {seed}: masters {masters:?}, expected one of priority {highest} (priorities {prios:?})"
        ));
    }
    Ok(())
}

#[test]
fn after_healing_exactly_one_master_the_highest() {
    let failures: Vec<String> = (0..500).filter_map(|seed| run(seed).err()).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
