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

/// Seeds per run when `SHOAL_CLUSTER_SIM_SEEDS` is not set: 1000 in an optimised build
/// (what `scripts/test-all.sh` runs with `--release`); an unoptimised `cargo test
/// --workspace` runs a few so it stays quick.
const SEEDS_DEFAULT: u64 = if cfg!(debug_assertions) { 20 } else { 1000 };

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
        "SHOAL_CLUSTER_SIM_SEED={seed} cargo test -p shoal --release --test cluster_simulator seeds_keep_the_cluster_invariants -- --nocapture"
    )
}

fn report(failure: &Failure) -> String {
    format!("{failure}\nreplay with: {}", replay_command(failure.seed))
}

#[test]
fn seeds_keep_the_cluster_invariants() {
    if let Some(seed) = env_u64("SHOAL_CLUSTER_SIM_SEED") {
        let config = Config {
            trace: true,
            ..Config::default()
        };
        match run(seed, &config) {
            Ok(outcome) => {
                for line in &outcome.trace {
                    println!("{line}");
                }
                println!("seed {seed} passed: {:#?}", outcome.stats);
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
    let seeds = env_u64("SHOAL_CLUSTER_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let first = env_u64("SHOAL_CLUSTER_SIM_FIRST_SEED").unwrap_or(0);
    assert!(seeds > 0, "SHOAL_CLUSTER_SIM_SEEDS must be at least 1");
    let config = Config::default();
    let mut failures = Vec::new();
    let mut totals = Stats::default();
    let started = std::time::Instant::now();
    let mut slowest = (0.0, 0, 0);
    let mut largest = 0;
    for seed in first..first + seeds {
        let seed_started = std::time::Instant::now();
        let result = run(seed, &config);
        let seconds = seed_started.elapsed().as_secs_f64();
        if std::env::var_os("SHOAL_CLUSTER_SIM_TIMES").is_some() {
            let (nodes, rounds) = result.as_ref().map_or((0, 0), |outcome| {
                (outcome.stats.nodes, outcome.stats.settle_rounds)
            });
            println!("seed {seed}: {nodes} nodes, {rounds} settle rounds, {seconds:.3} s");
        }
        match result {
            Ok(outcome) => {
                largest = largest.max(outcome.stats.nodes);
                if seconds > slowest.0 {
                    slowest = (seconds, seed, outcome.stats.nodes);
                }
                totals.accumulate(&outcome.stats)
            }
            Err(failure) => {
                eprintln!("{}", report(&failure));
                failures.push(failure.seed);
            }
        }
    }
    println!(
        "{seeds} seeds in {:.1} s (slowest: seed {} with {} nodes, {:.2} s), totals: {totals:#?}",
        started.elapsed().as_secs_f64(),
        slowest.1,
        slowest.2,
        slowest.0
    );
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed: {failures:?}; replay one with: {}",
        failures.len(),
        replay_command(failures[0])
    );
    // The faults must really have happened across the seeds.
    if seeds >= 20 {
        let exercised = [
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
            ("services with unplaced replicas", totals.services_unplaced),
            ("tombstones collected", totals.tombstones_collected),
        ];
        for (what, count) in exercised {
            assert!(
                count > 0,
                "no {what} in {seeds} seeds: the simulator is not exercising it"
            );
        }
    }
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
        let first = run(seed, &short()).unwrap_or_else(|failure| panic!("{}", report(&failure)));
        let second = run(seed, &short()).unwrap_or_else(|failure| panic!("{}", report(&failure)));
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
    let plain = run(5, &short()).unwrap_or_else(|failure| panic!("{}", report(&failure)));
    let traced = run(
        5,
        &Config {
            trace: true,
            ..short()
        },
    )
    .unwrap_or_else(|failure| panic!("{}", report(&failure)));
    assert!(plain.trace.is_empty());
    assert!(traced.trace.len() > 50, "{} lines", traced.trace.len());
    assert_eq!(plain.trace_digest, traced.trace_digest);
}

#[test]
fn different_seeds_give_different_runs() {
    let one = run(1, &short()).unwrap_or_else(|failure| panic!("{}", report(&failure)));
    let two = run(2, &short()).unwrap_or_else(|failure| panic!("{}", report(&failure)));
    assert_ne!(one.trace_digest, two.trace_digest);
}
