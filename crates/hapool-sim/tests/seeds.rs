//! The cluster invariants over many seeds. `HAPOOL_SIM_SEEDS=A..B` runs
//! another range (the default is 0..2000).

use hapool_sim::{SimConfig, run};

fn seeds() -> std::ops::Range<u64> {
    match std::env::var("HAPOOL_SIM_SEEDS") {
        Ok(range) => {
            let (a, b) = range
                .split_once("..")
                .expect("HAPOOL_SIM_SEEDS looks like 0..100000");
            a.parse().expect("a number")..b.parse().expect("a number")
        }
        Err(_) => 0..2_000,
    }
}

#[test]
fn every_seed_keeps_the_invariants() {
    let config = SimConfig::default();
    let mut failures = Vec::new();
    let mut takeovers = 0;
    let seeds = seeds();
    let count = seeds.end - seeds.start;
    for seed in seeds {
        match run(seed, &config) {
            Ok(report) => takeovers += report.takeovers,
            Err(violation) => failures.push(violation.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The faults did make registrars take over (the runs are not trivial).
    assert!(
        takeovers > count as usize / 20,
        "only {takeovers} takeovers in {count} seeds"
    );
}

/// One seed gives one run, event for event.
#[test]
fn a_seed_reproduces_its_run() {
    let config = SimConfig::default();
    for seed in [1, 77, 1_234] {
        assert_eq!(run(seed, &config), run(seed, &config));
    }
}

/// Without faults the cluster converges with no takeover at all.
#[test]
fn a_quiet_cluster_never_takes_over() {
    let config = SimConfig {
        fault_time: std::time::Duration::ZERO,
        ..SimConfig::default()
    };
    for seed in 0..50 {
        let report = run(seed, &config).unwrap();
        assert_eq!(report.takeovers, 0, "seed {seed}");
        assert_eq!(report.faults, 0);
    }
}
