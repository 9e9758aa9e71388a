//! Runs the deterministic cluster simulator (`shoal::sim`) over many seeds: issue 10's CI
//! check that placement, the planner, the reconcile pass and sync keep the cluster's
//! invariants under partitions, loss, node loss and return, daemon crashes and clock skew.
//!
//! `SHOAL_CLUSTER_SIM_SEEDS=N` sets how many seeds (default below), starting at
//! `SHOAL_CLUSTER_SIM_FIRST_SEED` (default 0); `SHOAL_CLUSTER_SIM_SEED=S` replays exactly
//! one seed and prints its full event trace; `SHOAL_CLUSTER_SIM_TIMES=1` prints every seed's
//! size, settle rounds and run time. A failing seed is printed with the command that
//! replays it.

use shoal::sim::{Config, Failure, Stats, run};
use shoal_crdt::sim::harness::{Seeds, assert_exercised, print_replay, report, run_seeds};

/// Seeds per run when `SHOAL_CLUSTER_SIM_SEEDS` is not set: 1000 in an optimised build
/// (what `scripts/test-all.sh` runs with `--release`); an unoptimised `cargo test
/// --workspace` runs a few so it stays quick.
const SEEDS_DEFAULT: u64 = if cfg!(debug_assertions) { 20 } else { 1000 };

fn replay_command(seed: u64) -> String {
    format!(
        "SHOAL_CLUSTER_SIM_SEED={seed} cargo test -p shoal --release --test cluster_simulator seeds_keep_the_cluster_invariants -- --nocapture"
    )
}

fn passed<T>(result: Result<T, Failure>) -> T {
    result.unwrap_or_else(|failure| panic!("{}", report(&failure, &replay_command)))
}

#[test]
fn seeds_keep_the_cluster_invariants() {
    let range = match Seeds::from_env("SHOAL_CLUSTER_SIM", SEEDS_DEFAULT) {
        Seeds::Replay(seed) => {
            let config = Config {
                trace: true,
                ..Config::default()
            };
            let outcome = print_replay(run(seed, &config), |o| &o.trace, &replay_command);
            println!("seed {seed} passed: {:#?}", outcome.stats);
            return;
        }
        Seeds::Range(range) => range,
    };
    let seeds = range.end - range.start;
    let config = Config::default();
    let mut totals = Stats::default();
    let started = std::time::Instant::now();
    let mut slowest = (0.0, 0, 0);
    let mut largest = 0;
    let print_times = std::env::var_os("SHOAL_CLUSTER_SIM_TIMES").is_some();
    run_seeds(
        range,
        &replay_command,
        |seed| {
            let seed_started = std::time::Instant::now();
            run(seed, &config).map(|outcome| (outcome, seed_started.elapsed().as_secs_f64()))
        },
        |seed, (outcome, seconds)| {
            if print_times {
                let (nodes, rounds) = (outcome.stats.nodes, outcome.stats.settle_rounds);
                println!("seed {seed}: {nodes} nodes, {rounds} settle rounds, {seconds:.3} s");
            }
            largest = largest.max(outcome.stats.nodes);
            if seconds > slowest.0 {
                slowest = (seconds, seed, outcome.stats.nodes);
            }
            totals.accumulate(&outcome.stats);
        },
    );
    println!(
        "{seeds} seeds in {:.1} s (slowest: seed {} with {} nodes, {:.2} s), totals: {totals:#?}",
        started.elapsed().as_secs_f64(),
        slowest.1,
        slowest.2,
        slowest.0
    );
    // The faults must really have happened across the seeds.
    assert_exercised(
        seeds,
        &[
            ("partitions", totals.partitions),
            ("lost messages", totals.messages_lost),
            ("duplicated messages", totals.messages_duplicated),
            ("stale pushes (409)", totals.refused_stale),
            ("machine losses", totals.machine_losses),
            ("machine returns", totals.machine_returns),
            ("machines lost for good", totals.machines_dead),
            ("daemon crashes", totals.daemon_crashes),
            ("daemon crashes in a pass", totals.daemon_crashes_mid_pass),
            ("container exits", totals.container_exits),
            ("container restarts", totals.containers_restarted),
            (
                "containers left stopped by policy",
                totals.containers_left_stopped,
            ),
            ("failed creates", totals.create_failures_injected),
            ("bad images applied", totals.bad_image_applies),
            ("failed starts", totals.starts_failed),
            ("services scaled", totals.services_scaled),
            ("services removed", totals.services_removed),
            ("nodes drained", totals.nodes_drained),
            ("nodes undrained", totals.nodes_undrained),
            ("services with unplaced replicas", totals.services_unplaced),
            ("tombstones collected", totals.tombstones_collected),
            ("replacements begun by rollouts", totals.replacements_begun),
            (
                "synced components checked for paced rollouts",
                totals.transition_checks,
            ),
            (
                "rollout checks at max_parallel",
                totals.transition_checks_at_limit,
            ),
        ],
    );
    if seeds >= 200 {
        assert!(
            largest >= 30,
            "the largest of {seeds} seeds had {largest} nodes: large clusters are not exercised"
        );
    }
}

/// A shorter run, for the tests that run seeds twice.
fn short() -> Config {
    Config {
        duration_ms: 8_000,
        ..Config::default()
    }
}

#[test]
fn one_seed_gives_one_trace() {
    for seed in [3, 17] {
        let first = passed(run(seed, &short()));
        let second = passed(run(seed, &short()));
        assert!(
            first.stats.events > 100,
            "seed {seed} ran only {} events",
            first.stats.events
        );
        assert_eq!(
            first.trace_digest, second.trace_digest,
            "seed {seed} is not deterministic"
        );
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.stats, second.stats);
    }
}

#[test]
fn a_traced_run_is_the_same_run() {
    let plain = passed(run(5, &short()));
    let traced = passed(run(
        5,
        &Config {
            trace: true,
            ..short()
        },
    ));
    assert!(plain.trace.is_empty());
    assert!(traced.trace.len() > 50, "{} lines", traced.trace.len());
    assert_eq!(plain.trace_digest, traced.trace_digest);
}

#[test]
fn different_seeds_give_different_runs() {
    let one = passed(run(1, &short()));
    let two = passed(run(2, &short()));
    assert_ne!(one.trace_digest, two.trace_digest);
}
