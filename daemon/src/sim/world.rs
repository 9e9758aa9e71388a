//! The simulated world and its event loop: the nodes, the network, the event queue, the
//! faults, and the run from the first heartbeat to the final checks.
//!
//! Call order inside one run: events are taken from the queue in (time, sequence) order, so
//! time never goes backwards and ties are broken by the order in which events were
//! scheduled, which the seed alone decides. Before a node acts, every node's `ManualClock`
//! reads simulated time plus its machine's skew.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_crdt::{Delta, NodeId};

use super::checks;
use super::checks::Violation;
use super::ledger::Ledger;
use super::network::{Envelope, LATE_DUPLICATE_MS_MAX, Network};
use super::node::{SimNode, Status, Writer};
use super::scenario::Scenario;
use super::trace::Trace;
use super::transitions::Transitions;
use super::{Config, Failure, Report, Stats};
use crate::schedule::PlannerSettings;
use crate::schedule::plan::STARTS_PER_PASS_MAX;

/// Simulated wall time of the first event (2024-01-01), so HLCs look real.
pub(crate) const EPOCH_MS: u64 = 1_704_067_200_000;

#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// The reconcile loop's interval ticked.
    Reconcile(usize),
    /// The reconcile loop was woken (plan inputs changed, or starts were left over).
    Wake(usize),
    Heartbeat(usize),
    /// An anti-entropy round.
    Gossip(usize),
    Deliver(Envelope),
    /// The operator sends a command to some node.
    Command,
    /// Some running container ends on its own.
    ContainerExit,
    Partition,
    Heal,
    LoseMachine(usize),
    ReturnMachine(usize),
    CrashDaemon {
        node: usize,
        mid_pass: bool,
    },
    RestartDaemon(usize),
    FailNextCreate(usize),
}

/// What one pass did, as the settle rounds need to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PassResult {
    /// It committed a delta, or started, restarted, removed or failed to restart a container.
    pub(crate) changed: bool,
    /// Placement wants more starts than one pass makes.
    pub(crate) more_to_start: bool,
}

pub(crate) struct World {
    pub(crate) config: Config,
    pub(crate) scenario: Scenario,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) now_ms: u64,
    sequence: u64,
    pub(crate) queue: BTreeMap<(u64, u64), Event>,
    pub(crate) network: Network,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) index_of: BTreeMap<NodeId, usize>,
    pub(crate) ledger: Ledger,
    /// The replacements rollouts began and that are not over (invariant 14).
    pub(crate) transitions: Transitions,
    pub(crate) stats: Stats,
    pub(crate) trace: Trace,
    /// The faults are over: no pushes or wake-ups any more, `settle` drives the nodes.
    pub(crate) settling: bool,
    pub(crate) settings: PlannerSettings,
}

/// Records a trace line (always digested, kept when the run is traced).
macro_rules! trace {
    ($world:expr, $($arg:tt)*) => {{
        let at_ms = $world.now_ms;
        $world.trace.record(at_ms, format_args!($($arg)*));
    }};
}
pub(crate) use trace;

/// Runs one seed to completion and checks it.
pub(crate) fn run(seed: u64, config: &Config) -> Result<Report, Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scenario = Scenario::generate(&mut rng, config.duration_ms, config.max_clock_drift_ms);
    let mut world = World::new(config.clone(), scenario, rng);
    trace!(world, "seed {seed}: {:?}", world.scenario);
    match world.execute() {
        Ok(digest) => {
            let (trace_digest, trace) = world.trace.finish();
            Ok(Report {
                seed,
                scenario: world.scenario,
                stats: world.stats,
                digest,
                trace_digest,
                trace,
            })
        }
        Err(Violation(message)) => {
            let at_ms = world.now_ms;
            trace!(world, "FAILURE: {message}");
            let (_, trace) = world.trace.finish();
            Err(Failure {
                seed,
                at_ms,
                message,
                trace,
            })
        }
    }
}

impl World {
    fn new(config: Config, scenario: Scenario, mut rng: ChaCha8Rng) -> Self {
        let settings = PlannerSettings {
            starts_per_pass_max: STARTS_PER_PASS_MAX,
            retry_after_failure_ms: config.reconcile_interval_ms,
        };
        let max_drift = Duration::from_millis(config.max_clock_drift_ms);
        let nodes: Vec<SimNode> = scenario
            .machines
            .iter()
            .enumerate()
            .map(|(index, machine)| {
                let clock_ms = EPOCH_MS.saturating_add_signed(machine.skew_ms);
                SimNode::new(
                    index,
                    machine.clone(),
                    settings,
                    rng.next_u64(),
                    clock_ms,
                    config.down_after_ms,
                    max_drift,
                )
            })
            .collect();
        let index_of = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| (node.id.clone(), index))
            .collect();
        let network = Network::new(
            scenario.nodes(),
            scenario.latency_ms_max,
            scenario.loss_percent,
            scenario.duplicate_percent,
            LATE_DUPLICATE_MS_MAX,
        );
        let stats = Stats {
            nodes: scenario.nodes(),
            ..Stats::default()
        };
        Self {
            trace: Trace::new(config.trace),
            config,
            scenario,
            rng,
            now_ms: 0,
            sequence: 0,
            queue: BTreeMap::new(),
            network,
            nodes,
            index_of,
            ledger: Ledger::default(),
            transitions: Transitions::default(),
            stats,
            settling: false,
            settings,
        }
    }

    pub(crate) fn schedule(&mut self, at_ms: u64, event: Event) {
        assert!(
            at_ms >= self.now_ms,
            "events are never scheduled in the past"
        );
        self.sequence += 1;
        self.queue.insert((at_ms, self.sequence), event);
    }

    /// Moves simulated time forward and every node's clock with it.
    pub(crate) fn advance_to(&mut self, at_ms: u64) {
        assert!(at_ms >= self.now_ms, "time never goes backwards");
        self.now_ms = at_ms;
        for node in &self.nodes {
            let clock_ms = EPOCH_MS.saturating_add_signed(node.machine.skew_ms) + at_ms;
            node.clock.set_ms(clock_ms);
        }
    }

    fn execute(&mut self) -> Result<[u8; 32], Violation> {
        self.bootstrap()?;
        self.schedule_timers();
        self.schedule_faults();
        while let Some((&(at_ms, _), _)) = self.queue.first_key_value() {
            if at_ms >= self.config.duration_ms {
                break;
            }
            let (_, event) = self.queue.pop_first().expect("the queue is not empty");
            self.advance_to(at_ms);
            self.count_event()?;
            // Besides a delivery that applied something, these can bring connected nodes
            // to one view (invariant 14 looks only then).
            let topology = matches!(
                event,
                Event::Partition
                    | Event::Heal
                    | Event::LoseMachine(_)
                    | Event::ReturnMachine(_)
                    | Event::CrashDaemon { .. }
                    | Event::RestartDaemon(_)
            );
            let crashes = self.stats.daemon_crashes;
            self.handle(event)?;
            if topology || self.stats.daemon_crashes != crashes {
                self.transitions.views_moved();
            }
            self.check_transitions()?;
        }
        self.advance_to(self.config.duration_ms);
        let rounds = self.settle()?;
        self.stats.settle_rounds = rounds;
        trace!(self, "settled after {rounds} rounds; checking");
        let settled = checks::settled(self)?;
        self.stats.services_unplaced = settled.services_unplaced;
        self.stats.containers_left_stopped = settled.left_stopped;
        self.stats.removals_lost_with_machine = settled.lost_removals;
        trace!(self, "every check passed; stats {:?}", self.stats);
        Ok(settled.digest)
    }

    pub(crate) fn count_event(&mut self) -> Result<(), Violation> {
        self.stats.events += 1;
        if self.stats.events > self.config.events_max {
            return Err(Violation(format!(
                "runaway: more than {} events",
                self.config.events_max
            )));
        }
        Ok(())
    }

    /// Every node writes its metadata and all learn all of it, as a fleet starts from
    /// configured seed peers; then everyone is a member from the first event.
    fn bootstrap(&mut self) -> Result<(), Violation> {
        let mut deltas = Vec::new();
        for index in 0..self.nodes.len() {
            if let Some(delta) = self.heartbeat_write(index, false)? {
                deltas.push((index, shoal_crdt::codec::encode_delta(&delta)));
            }
        }
        for (from, bytes) in &deltas {
            for to in 0..self.nodes.len() {
                if to != *from {
                    self.receive(to, *from, bytes)?;
                }
            }
        }
        trace!(
            self,
            "bootstrap: {} nodes know each other",
            self.nodes.len()
        );
        Ok(())
    }

    /// The daemons' timers: reconcile, heartbeat and anti-entropy of every node.
    fn schedule_timers(&mut self) {
        for node in 0..self.nodes.len() {
            let reconcile = self.rng.gen_range(0..self.config.reconcile_interval_ms);
            self.schedule(reconcile, Event::Reconcile(node));
            let heartbeat = self.rng.gen_range(1..=self.config.heartbeat_interval_ms);
            self.schedule(heartbeat, Event::Heartbeat(node));
            let gossip = self.rng.gen_range(0..=self.config.gossip_jitter_ms);
            self.schedule(gossip, Event::Gossip(node));
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Reconcile(node) => {
                if self.nodes[node].is_running() {
                    self.pass(node)?;
                }
                let next = self.now_ms + self.config.reconcile_interval_ms;
                self.schedule(next, Event::Reconcile(node));
            }
            Event::Wake(node) => {
                self.nodes[node].wake_pending = false;
                if self.nodes[node].is_running() {
                    self.pass(node)?;
                }
            }
            Event::Heartbeat(node) => {
                if self.nodes[node].is_running() {
                    self.heartbeat(node)?;
                }
                let next = self.now_ms + self.config.heartbeat_interval_ms;
                self.schedule(next, Event::Heartbeat(node));
            }
            Event::Gossip(node) => {
                if self.nodes[node].is_running() {
                    self.gossip_round(node);
                }
                let jitter = self.rng.gen_range(0..=self.config.gossip_jitter_ms);
                let next = self.now_ms + self.config.gossip_interval_ms + jitter;
                self.schedule(next, Event::Gossip(node));
            }
            Event::Deliver(envelope) => self.deliver(envelope)?,
            Event::Command => {
                self.command()?;
                let gap = self
                    .rng
                    .gen_range(1..=2 * self.scenario.command_interval_ms_mean);
                self.schedule(self.now_ms + gap, Event::Command);
            }
            Event::ContainerExit => {
                self.container_exit()?;
                let gap = self
                    .rng
                    .gen_range(1..=2 * self.scenario.exit_interval_ms_mean);
                self.schedule(self.now_ms + gap, Event::ContainerExit);
            }
            Event::Partition => {
                let sides = self.network.partition(&mut self.rng);
                self.stats.partitions += 1;
                trace!(self, "partition: sides {sides:?}");
                let heal_at = self.now_ms + self.rng.gen_range(1_000..=8_000);
                self.schedule(heal_at, Event::Heal);
            }
            Event::Heal => {
                self.network.heal();
                trace!(self, "partition healed");
                let next = self.now_ms + self.rng.gen_range(1_000..=6_000);
                self.schedule(next, Event::Partition);
            }
            Event::LoseMachine(node) => self.lose_machine(node),
            Event::ReturnMachine(node) => {
                if self.nodes[node].status == Status::MachineGone {
                    self.return_machine(node)?;
                }
            }
            Event::CrashDaemon { node, mid_pass } => {
                if self.nodes[node].is_running() && self.nodes[node].crash_in_pass.is_none() {
                    self.crash_daemon(node, mid_pass);
                }
            }
            Event::RestartDaemon(node) => {
                if self.nodes[node].status == Status::DaemonDown {
                    self.restart_daemon(node)?;
                }
            }
            Event::FailNextCreate(node) => {
                if self.nodes[node].status != Status::MachineGone {
                    self.nodes[node].runtime.fail_next_create();
                    self.stats.create_failures_injected += 1;
                    trace!(
                        self,
                        "{}: the next container create will fail", self.nodes[node].id
                    );
                }
            }
        }
        Ok(())
    }

    /// A local change of `node`: checked to touch only what it owns, written down, and
    /// pushed to every live member (unless the daemon died before its pusher ran).
    pub(crate) fn local_change(
        &mut self,
        node: usize,
        writer: Writer,
        delta: &Delta,
        push: bool,
    ) -> Result<(), Violation> {
        let id = self.nodes[node].id.clone();
        checks::own_delta(&id, writer, delta)?;
        match writer {
            Writer::Pass => self.ledger.pass_delta(&id, delta, self.now_ms)?,
            Writer::Operator => self.ledger.operator_delta(&id, delta, self.now_ms),
            Writer::Heartbeat => {}
        }
        self.stats.local_commits += 1;
        if push && !self.settling {
            self.push(node, delta);
        }
        Ok(())
    }

    /// Wakes the reconcile loop of `node` (coalesced, as a `watch` channel does).
    pub(crate) fn wake(&mut self, node: usize) {
        if self.settling || self.nodes[node].wake_pending || !self.nodes[node].is_running() {
            return;
        }
        self.nodes[node].wake_pending = true;
        let at = self.now_ms + self.rng.gen_range(1..=10);
        self.schedule(at, Event::Wake(node));
    }

    /// Writes this node's heartbeat, pushed or not; returns its delta.
    fn heartbeat_write(&mut self, node: usize, push: bool) -> Result<Option<Delta>, Violation> {
        let (result, delta) = self.nodes[node].heartbeat();
        let first = result
            .map_err(|error| format!("{}: heartbeat refused: {error}", self.nodes[node].id))?;
        if first {
            self.wake(node);
        }
        if let Some(delta) = &delta {
            self.local_change(node, Writer::Heartbeat, delta, push)?;
        }
        Ok(delta)
    }

    /// `Node::heartbeat`: the metadata write, pushed, then garbage collection. Members are
    /// never evicted: `sync.evict_after_ms` (a day) is longer than any run.
    pub(crate) fn heartbeat(&mut self, node: usize) -> Result<(), Violation> {
        self.heartbeat_write(node, true)?;
        let collected = self.nodes[node].replica_mut().collect_garbage();
        self.stats.tombstones_collected += collected;
        Ok(())
    }
}
