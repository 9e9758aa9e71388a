//! Deterministic simulator of a shoal cluster's replicated state (feature `sim`).
//!
//! Sans-IO, single-threaded, and driven by one seed: the seed picks the number of
//! replicas, their clock skews, the fault rates, and every event that follows
//! (local operations of every kind, eager pushes and anti-entropy exchanges over
//! a network that delays, loses, duplicates and reorders messages, partitions
//! that form and heal, crashes that lose what was not persisted). Every message
//! crosses the real wire encoding (`codec`), and every replica "persists" with
//! `Replica::to_snapshot` after each acknowledged local operation and each
//! applied delta; a crash restores it from the last snapshot, so observed peer
//! summaries and garbage collection since then are lost.
//!
//! Runs are bounded (simulated duration, event budget, final sync rounds).
//! After the run everything heals and the replicas sync to quiescence, then the
//! checkers assert: equal digests and equal query answers; every acknowledged
//! write reflected per its type's semantics (`oracle`); no tombstone left after
//! garbage collection; and, along the way, that a refused delta (stale base or
//! clock drift) changed nothing, and that only the node with a clock beyond the
//! drift limit is ever refused for drift.
//!
//! `run(seed, &Config::default())` is the whole API; `Outcome::trace` holds the
//! event log when `Config::trace` is set, which is how a failing seed is replayed.

pub mod harness;
pub mod link;
mod network;
mod oracle;
mod scenario;
mod trace;
mod workload;
mod world;

pub use harness::Failure;
pub use scenario::Scenario;
pub use world::{Config, Outcome, Stats, run};

#[cfg(test)]
mod tests {
    use super::*;

    fn traced() -> Config {
        Config {
            trace: true,
            duration_ms: 3_000,
            ..Config::default()
        }
    }

    #[test]
    fn same_seed_gives_identical_trace_and_state() {
        for seed in [1, 4, 42] {
            let first = run(seed, &traced()).unwrap_or_else(|failure| panic!("{failure}"));
            let second = run(seed, &traced()).unwrap_or_else(|failure| panic!("{failure}"));
            assert!(
                first.trace.len() > 20,
                "seed {seed} traced only {} events",
                first.trace.len()
            );
            assert_eq!(
                first.trace, second.trace,
                "seed {seed} is not deterministic"
            );
            assert_eq!(first.digest, second.digest);
            assert_eq!(first.stats, second.stats);
        }
    }

    #[test]
    fn different_seeds_give_different_runs() {
        let one = run(1, &traced()).unwrap_or_else(|failure| panic!("{failure}"));
        let two = run(2, &traced()).unwrap_or_else(|failure| panic!("{failure}"));
        assert_ne!(one.trace, two.trace);
        assert_ne!(one.digest, two.digest);
    }
}
