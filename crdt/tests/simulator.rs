//! Runs the deterministic simulator over many seeds (a CI check).
//!
//! `SHOAL_SIM_SEEDS=N` sets how many seeds (default 1000 with `--release`, 30
//! in a debug build), starting at `SHOAL_SIM_FIRST_SEED` (default 0);
//! `SHOAL_SIM_SEED=S` replays exactly one seed with its full event trace. A failing seed is printed with the command
//! that replays it.

use shoal_crdt::sim::harness::{Seeds, assert_exercised, print_replay, run_seeds};
use shoal_crdt::sim::{Config, Stats, run};

/// 1000 seeds in an optimised build (what CI runs with `--release`); an
/// unoptimised `cargo test --workspace` runs 30 so it stays quick.
const SEEDS_DEFAULT: u64 = if cfg!(debug_assertions) { 30 } else { 1000 };

fn replay_command(seed: u64) -> String {
    format!(
        "SHOAL_SIM_SEED={seed} cargo test -p shoal-crdt --release --test simulator -- --nocapture"
    )
}

#[test]
fn seeds_converge_and_keep_every_acknowledged_write() {
    let range = match Seeds::from_env("SHOAL_SIM", SEEDS_DEFAULT) {
        Seeds::Replay(seed) => {
            let config = Config {
                trace: true,
                ..Config::default()
            };
            let outcome = print_replay(run(seed, &config), |o| &o.trace, &replay_command);
            println!("seed {seed} passed: {:?}", outcome.stats);
            return;
        }
        Seeds::Range(range) => range,
    };
    let seeds = range.end - range.start;
    let config = Config::default();
    let mut totals = Stats::default();
    run_seeds(
        range,
        &replay_command,
        |seed| run(seed, &config),
        |_, outcome| totals.accumulate(&outcome.stats),
    );
    println!("{seeds} seeds, totals: {totals:#?}");
    // The faults must really have happened across the seeds.
    assert_exercised(
        seeds,
        &[
            ("drift refusals", totals.refused_drift),
            ("stale refusals", totals.refused_stale),
            ("crashes", totals.crashes),
            ("partitions", totals.partitions),
            ("lost messages", totals.messages_lost),
            ("duplicated messages", totals.messages_duplicated),
            ("collected tombstones", totals.tombstones_collected),
        ],
    );
}
