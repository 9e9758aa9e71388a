//! The deterministic cluster simulator (feature `sim`): many shoal nodes on one thread, one
//! seed, simulated time. Each node is a `shoal_crdt::Replica` with the daemon's own reconcile
//! pass (`containers::run_pass`: the same `Planner`, placement, record batches and
//! `Executor`) over `FakeRuntime`, `FakeNetwork` and `FakeImages`, a `ManualClock` with the
//! machine's skew, liveness from `state::members`, and sync modelled on the daemon's (eager
//! push to live members, anti-entropy exchanges with a fanout, heartbeats, garbage
//! collection) over an in-memory network in the real wire encoding.
//!
//! The seed (ChaCha8) decides everything (`scenario`): 3 to 50 nodes, their capacities
//! (sometimes too small for every replica), clock skews, the network's latency, loss and
//! duplication, partitions that form and heal, machines lost (containers gone) that come
//! back or not, daemons that crash (sometimes in the middle of a pass) and restart with a
//! new planner, containers that exit on their own, container creates that fail, and an
//! operator who applies, scales and removes services on random nodes, sometimes with an
//! image that cannot be prepared (`workload`).
//!
//! A run is bounded: `Config::duration_ms` of faults, then the network heals, every machine
//! but a dead one returns, and `settle` runs at most `Config::settle_rounds_max` rounds
//! until two in a row change nothing; then `checks` asserts the cluster's invariants, each
//! failure naming the node, service or container that broke it. Along the way every delta
//! a node emits is checked to touch only what that node owns, and every rollout to pace
//! itself wherever connected nodes share a view (`transitions`, `pacing`).
//!
//! `run(seed, &config)` is the whole API; a failing seed replays with `Config::trace` set.

mod checks;
mod faults;
mod ledger;
mod network;
mod node;
mod pacing;
mod reconcile;
mod runtime;
mod scenario;
mod settle;
mod sync;
mod trace;
mod transitions;
mod workload;
mod world;

pub use scenario::{Machine, NODES_MAX, NODES_MIN, Scenario};

/// Run-wide settings; `Default` is what CI runs per seed. The intervals are the daemon's
/// defaults (`agent::config`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Simulated time during which the operator works and faults happen.
    pub duration_ms: u64,
    /// `containers.reconcile_interval_ms`; also the planner's retry after a failed start.
    pub reconcile_interval_ms: u64,
    /// `sync.heartbeat_interval_ms`.
    pub heartbeat_interval_ms: u64,
    /// `sync.interval_ms` and `sync.jitter_ms` of anti-entropy.
    pub gossip_interval_ms: u64,
    pub gossip_jitter_ms: u64,
    /// Peers per anti-entropy round (`GossipConfig::fanout`).
    pub fanout: usize,
    /// `sync.down_after_ms`: liveness, and the reconcile loop's startup grace.
    pub down_after_ms: u64,
    /// `sync.max_clock_drift_ms`.
    pub max_clock_drift_ms: u64,
    /// Settle rounds allowed after the faults before a run that has not come to rest fails.
    pub settle_rounds_max: usize,
    /// Events processed before the run is declared runaway (a failure).
    pub events_max: usize,
    /// Decode limit for every message.
    pub message_bytes_max: usize,
    /// Keep the event log (replays and the determinism test).
    pub trace: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            duration_ms: 30_000,
            reconcile_interval_ms: 1_000,
            heartbeat_interval_ms: 1_000,
            gossip_interval_ms: 1_000,
            gossip_jitter_ms: 200,
            fanout: 3,
            down_after_ms: 5_000,
            max_clock_drift_ms: 1_000,
            settle_rounds_max: 30,
            events_max: 5_000_000,
            message_bytes_max: 16 << 20,
            trace: false,
        }
    }
}

/// Counts of what a run did, to show the faults really happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: usize,
    pub nodes: usize,
    pub passes: usize,
    pub passes_waiting_for_sync: usize,
    pub containers_started: usize,
    pub containers_restarted: usize,
    pub containers_removed: usize,
    /// Starts and restarts that failed (a refused image, a failed create).
    pub starts_failed: usize,
    pub local_commits: usize,
    pub messages_sent: usize,
    pub messages_lost: usize,
    pub messages_duplicated: usize,
    pub messages_partitioned: usize,
    pub messages_dropped_down: usize,
    /// Messages that did not decode (counted as a fault; none are expected).
    pub messages_undecodable: usize,
    pub deltas_applied: usize,
    pub refused_stale: usize,
    pub tombstones_collected: usize,
    pub partitions: usize,
    pub machine_losses: usize,
    pub machine_returns: usize,
    pub machines_dead: usize,
    pub daemon_crashes: usize,
    pub daemon_crashes_mid_pass: usize,
    pub container_exits: usize,
    pub create_failures_injected: usize,
    pub services_applied: usize,
    pub services_scaled: usize,
    pub services_removed: usize,
    /// Drains and undrains the operator wrote.
    pub nodes_drained: usize,
    pub nodes_undrained: usize,
    pub bad_image_applies: usize,
    /// Services with replicas no live node had room for, at the end.
    pub services_unplaced: usize,
    /// Containers left stopped at the end because their restart policy says so.
    pub containers_left_stopped: usize,
    /// Removals a machine lost for good took with it before anyone received them.
    pub removals_lost_with_machine: usize,
    pub settle_rounds: usize,
    /// Replacements rollouts began: replicas started beyond their node's count, and
    /// outdated ones stopped that left their node short (invariant 14).
    pub replacements_begun: usize,
    /// Checks of invariant 14: a connected component that shared one view of a service
    /// with a replacement open on one of its nodes.
    pub transition_checks: usize,
    /// Of those, the checks that counted exactly `max_parallel` in transition.
    pub transition_checks_at_limit: usize,
}

impl Stats {
    /// Adds another run's counts (for totals over many seeds).
    pub fn accumulate(&mut self, other: &Stats) {
        let Stats {
            events,
            nodes,
            passes,
            passes_waiting_for_sync,
            containers_started,
            containers_restarted,
            containers_removed,
            starts_failed,
            local_commits,
            messages_sent,
            messages_lost,
            messages_duplicated,
            messages_partitioned,
            messages_dropped_down,
            messages_undecodable,
            deltas_applied,
            refused_stale,
            tombstones_collected,
            partitions,
            machine_losses,
            machine_returns,
            machines_dead,
            daemon_crashes,
            daemon_crashes_mid_pass,
            container_exits,
            create_failures_injected,
            services_applied,
            services_scaled,
            services_removed,
            nodes_drained,
            nodes_undrained,
            bad_image_applies,
            services_unplaced,
            containers_left_stopped,
            removals_lost_with_machine,
            settle_rounds,
            replacements_begun,
            transition_checks,
            transition_checks_at_limit,
        } = other;
        self.events += events;
        self.nodes += nodes;
        self.passes += passes;
        self.passes_waiting_for_sync += passes_waiting_for_sync;
        self.containers_started += containers_started;
        self.containers_restarted += containers_restarted;
        self.containers_removed += containers_removed;
        self.starts_failed += starts_failed;
        self.local_commits += local_commits;
        self.messages_sent += messages_sent;
        self.messages_lost += messages_lost;
        self.messages_duplicated += messages_duplicated;
        self.messages_partitioned += messages_partitioned;
        self.messages_dropped_down += messages_dropped_down;
        self.messages_undecodable += messages_undecodable;
        self.deltas_applied += deltas_applied;
        self.refused_stale += refused_stale;
        self.tombstones_collected += tombstones_collected;
        self.partitions += partitions;
        self.machine_losses += machine_losses;
        self.machine_returns += machine_returns;
        self.machines_dead += machines_dead;
        self.daemon_crashes += daemon_crashes;
        self.daemon_crashes_mid_pass += daemon_crashes_mid_pass;
        self.container_exits += container_exits;
        self.create_failures_injected += create_failures_injected;
        self.services_applied += services_applied;
        self.services_scaled += services_scaled;
        self.services_removed += services_removed;
        self.nodes_drained += nodes_drained;
        self.nodes_undrained += nodes_undrained;
        self.bad_image_applies += bad_image_applies;
        self.services_unplaced += services_unplaced;
        self.containers_left_stopped += containers_left_stopped;
        self.removals_lost_with_machine += removals_lost_with_machine;
        self.settle_rounds += settle_rounds;
        self.replacements_begun += replacements_begun;
        self.transition_checks += transition_checks;
        self.transition_checks_at_limit += transition_checks_at_limit;
    }
}

/// A run that passed every check.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub scenario: Scenario,
    pub stats: Stats,
    /// The converged digest of the replicas of the nodes that are up at the end.
    pub digest: [u8; 32],
    /// SHA-256 of every trace line, kept or not: equal for two runs of one seed.
    pub trace_digest: [u8; 32],
    /// The event log, when `Config::trace` was set.
    pub trace: Vec<String>,
}

pub use shoal_crdt::sim::harness::Failure;

/// Runs one seed to completion and checks it.
pub fn run(seed: u64, config: &Config) -> Result<Report, Failure> {
    world::run(seed, config)
}
