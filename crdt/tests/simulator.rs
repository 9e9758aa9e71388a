//! Runs the deterministic simulator over many seeds (issue 2's CI check).
//!
//! `SHOAL_SIM_SEEDS=N` sets how many seeds (default 1000 with `--release`, 30
//! in a debug build), starting at `SHOAL_SIM_FIRST_SEED` (default 0);
//! `SHOAL_SIM_SEED=S` replays exactly one seed with its full event trace. A failing seed is printed with the command
//! that replays it.

use shoal_crdt::sim::{Config, Failure, Stats, run};

/// 1000 seeds in an optimised build (what CI runs with `--release`); an
/// unoptimised `cargo test --workspace` runs 30 so it stays quick.
const SEEDS_DEFAULT: u64 = if cfg!(debug_assertions) { 30 } else { 1000 };

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("{name}={value:?} is not a u64: {error}")),
    )
}

fn replay_command(seed: u64) -> String {
    format!(
        "SHOAL_SIM_SEED={seed} cargo test -p shoal-crdt --release --test simulator -- --nocapture"
    )
}

fn report(failure: &Failure) -> String {
    format!("{failure}\nreplay with: {}", replay_command(failure.seed))
}

#[test]
fn seeds_converge_and_keep_every_acknowledged_write() {
    if let Some(seed) = env_u64("SHOAL_SIM_SEED") {
        let config = Config {
            trace: true,
            ..Config::default()
        };
        match run(seed, &config) {
            Ok(outcome) => {
                for line in &outcome.trace {
                    println!("{line}");
                }
                println!("seed {seed} passed: {:?}", outcome.stats);
            }
            Err(failure) => {
                for line in &failure.trace {
                    println!("{line}");
                }
                panic!("{}", report(&failure));
            }
        }
        return;
    }
    let seeds = env_u64("SHOAL_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let first = env_u64("SHOAL_SIM_FIRST_SEED").unwrap_or(0);
    assert!(seeds > 0, "SHOAL_SIM_SEEDS must be at least 1");
    let config = Config::default();
    let mut failures = Vec::new();
    let mut totals = Stats::default();
    for seed in first..first + seeds {
        match run(seed, &config) {
            Ok(outcome) => totals.accumulate(&outcome.stats),
            Err(failure) => {
                eprintln!("{}", report(&failure));
                failures.push(failure.seed);
            }
        }
    }
    println!("{seeds} seeds, totals: {totals:#?}");
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed: {failures:?}; replay one with: {}",
        failures.len(),
        replay_command(failures[0])
    );
    // The faults must really have happened across the seeds.
    if seeds >= 20 {
        let exercised = [
            ("drift refusals", totals.refused_drift),
            ("stale refusals", totals.refused_stale),
            ("crashes", totals.crashes),
            ("partitions", totals.partitions),
            ("lost messages", totals.messages_lost),
            ("duplicated messages", totals.messages_duplicated),
            ("collected tombstones", totals.tombstones_collected),
        ];
        for (what, count) in exercised {
            assert!(
                count > 0,
                "no {what} in {seeds} seeds: the simulator is not exercising it"
            );
        }
    }
}
