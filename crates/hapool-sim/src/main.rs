//! Runs the simulation: one seed with a trace, or a range of seeds.
//!
//! ```text
//! cargo run -p hapool-sim --release -- --seed 42 --trace
//! cargo run -p hapool-sim --release -- --seeds 0..100000
//! ```

use std::process::ExitCode;
use std::time::Instant;

use hapool_sim::{SimConfig, run};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = 0..2_000u64;
    let mut config = SimConfig::default();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                let Some(seed) = args.get(i + 1).and_then(|s| s.parse().ok()) else {
                    eprintln!("--seed needs a number");
                    return ExitCode::from(64);
                };
                seeds = seed..seed + 1;
                i += 1;
            }
            "--seeds" => {
                let range = args.get(i + 1).and_then(|s| {
                    let (a, b) = s.split_once("..")?;
                    Some(a.parse().ok()?..b.parse().ok()?)
                });
                let Some(range) = range else {
                    eprintln!("--seeds needs a range such as 0..10000");
                    return ExitCode::from(64);
                };
                seeds = range;
                i += 1;
            }
            "--trace" => config.trace = true,
            other => {
                eprintln!("unknown argument {other}; use --seed N, --seeds A..B, --trace");
                return ExitCode::from(64);
            }
        }
        i += 1;
    }
    let started = Instant::now();
    let count = seeds.end - seeds.start;
    let mut failed = 0;
    for seed in seeds {
        match run(seed, &config) {
            Ok(report) if count == 1 => println!("seed {seed}: ok {report:?}"),
            Ok(_) => {}
            Err(violation) => {
                failed += 1;
                println!("{violation}");
            }
        }
    }
    println!(
        "{count} seeds, {failed} failed, in {:.1?}",
        started.elapsed()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
