//! What a deterministic simulator reports and how its test drives many seeds; shared by this
//! crate's replica simulator and the daemon's cluster simulator. A broken invariant is a
//! `Violation` inside a run and a `Failure` (seed, time, message, trace) out of it; the test
//! harness reads its seeds from the environment, runs them, prints each failure with the
//! command that replays it, and checks that the faults really happened.

use std::fmt;
use std::ops::Range;

/// A broken invariant, in words that name the node, key or container at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Violation(pub String);

impl From<String> for Violation {
    fn from(message: String) -> Self {
        Violation(message)
    }
}

impl From<&str> for Violation {
    fn from(message: &str) -> Self {
        Violation(message.to_string())
    }
}

/// A run that broke an invariant; `trace` holds the events up to the failure when the run
/// was traced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub at_ms: u64,
    pub message: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed at {} ms: {}",
            self.seed, self.at_ms, self.message
        )
    }
}

impl std::error::Error for Failure {}

/// Which seeds a simulator test runs, from `<PREFIX>_SEED` (replay one, traced) or
/// `<PREFIX>_SEEDS` and `<PREFIX>_FIRST_SEED` (a range; `default_seeds` when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seeds {
    Replay(u64),
    Range(Range<u64>),
}

impl Seeds {
    pub fn from_env(prefix: &str, default_seeds: u64) -> Seeds {
        if let Some(seed) = env_u64(&format!("{prefix}_SEED")) {
            return Seeds::Replay(seed);
        }
        let count = env_u64(&format!("{prefix}_SEEDS")).unwrap_or(default_seeds);
        let first = env_u64(&format!("{prefix}_FIRST_SEED")).unwrap_or(0);
        assert!(count > 0, "{prefix}_SEEDS must be at least 1");
        Seeds::Range(first..first + count)
    }
}

/// A u64 from the environment; a value that is not one is a panic naming it.
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|error| panic!("{name}={value:?} is not a u64: {error}")),
    )
}

/// A failure and the command that replays it.
pub fn report(failure: &Failure, replay: &dyn Fn(u64) -> String) -> String {
    format!("{failure}\nreplay with: {}", replay(failure.seed))
}

/// Prints a replayed run's trace, then panics with the failure if it failed.
pub fn print_replay<T>(
    result: Result<T, Failure>,
    trace: impl Fn(&T) -> &[String],
    replay: &dyn Fn(u64) -> String,
) -> T {
    match result {
        Ok(outcome) => {
            for line in trace(&outcome) {
                println!("{line}");
            }
            outcome
        }
        Err(failure) => {
            for line in &failure.trace {
                println!("{line}");
            }
            panic!("{}", report(&failure, replay));
        }
    }
}

/// Runs every seed of `seeds`, handing each passing outcome to `passed`; every failure is
/// printed with its replay command, and any failure fails the test.
pub fn run_seeds<T>(
    seeds: Range<u64>,
    replay: &dyn Fn(u64) -> String,
    mut run: impl FnMut(u64) -> Result<T, Failure>,
    mut passed: impl FnMut(u64, T),
) {
    let count = seeds.end - seeds.start;
    let mut failures = Vec::new();
    for seed in seeds {
        match run(seed) {
            Ok(outcome) => passed(seed, outcome),
            Err(failure) => {
                eprintln!("{}", report(&failure, replay));
                failures.push(failure.seed);
            }
        }
    }
    if let Some(first) = failures.first() {
        panic!(
            "{} of {count} seeds failed: {failures:?}; replay one with: {}",
            failures.len(),
            replay(*first)
        );
    }
}

/// Checks that every fault and path a run of `seeds` seeds should exercise happened at
/// least once (only from 20 seeds on: a short run may miss some).
pub fn assert_exercised(seeds: u64, exercised: &[(&str, usize)]) {
    if seeds < 20 {
        return;
    }
    for (what, count) in exercised {
        assert!(
            *count > 0,
            "no {what} in {seeds} seeds: the simulator is not exercising it"
        );
    }
}
