//! The simulated world: nodes, their clocks and persisted snapshots, the
//! network, the event queue, and the run from first event to final checks.
//!
//! Call order inside one run: events are taken from the queue in (time,
//! sequence) order, so time never goes backwards and ties are broken by the
//! order in which events were scheduled, which the seed alone decides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::harness::{Failure, Violation};
use super::link::{Fate, Network};
use super::network::{Envelope, LATE_DUPLICATE_MS_MAX, Payload};
use super::oracle::{History, Op, Write};
use super::scenario::Scenario;
use super::trace::Trace;
use super::workload;
use crate::{ApplyError, NTP64, NodeId, Replica, codec};

/// Simulated wall time of the first event (2024-01-01), so HLCs look real.
const EPOCH_MS: u64 = 1_704_067_200_000;

/// Run-wide limits; `Default` is what CI runs per seed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Simulated time during which operations and faults happen.
    pub duration_ms: u64,
    /// The replicas' maximum clock drift.
    pub max_drift_ms: u64,
    /// Events processed before the run is declared runaway (a failure).
    pub events_max: usize,
    /// Full-mesh sync rounds allowed after healing before non-convergence is a failure.
    pub sync_rounds_max: usize,
    /// Decode limit for every message and snapshot.
    pub message_bytes_max: usize,
    /// Keep the event log (for replays and the determinism test).
    pub trace: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            duration_ms: 6_000,
            max_drift_ms: 500,
            events_max: 2_000_000,
            sync_rounds_max: 8,
            message_bytes_max: 4 << 20,
            trace: false,
        }
    }
}

/// Counts of what a run did, to show the faults were really exercised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: usize,
    pub writes_acknowledged: usize,
    pub operations_refused: usize,
    pub messages_sent: usize,
    pub messages_lost: usize,
    pub messages_duplicated: usize,
    pub messages_partitioned: usize,
    pub message_bytes: usize,
    pub deltas_applied: usize,
    /// Full-state deltas, sent to a peer below the sender's GC floor.
    pub snapshots_applied: usize,
    pub refused_stale: usize,
    pub refused_drift: usize,
    pub partitions: usize,
    pub crashes: usize,
    pub tombstones_collected: usize,
    pub sync_rounds: usize,
}

impl Stats {
    /// Adds another run's counts (for totals over many seeds).
    pub fn accumulate(&mut self, other: &Stats) {
        let Stats {
            events,
            writes_acknowledged,
            operations_refused,
            messages_sent,
            messages_lost,
            messages_duplicated,
            messages_partitioned,
            message_bytes,
            deltas_applied,
            snapshots_applied,
            refused_stale,
            refused_drift,
            partitions,
            crashes,
            tombstones_collected,
            sync_rounds,
        } = other;
        self.events += events;
        self.writes_acknowledged += writes_acknowledged;
        self.operations_refused += operations_refused;
        self.messages_sent += messages_sent;
        self.messages_lost += messages_lost;
        self.messages_duplicated += messages_duplicated;
        self.messages_partitioned += messages_partitioned;
        self.message_bytes += message_bytes;
        self.deltas_applied += deltas_applied;
        self.snapshots_applied += snapshots_applied;
        self.refused_stale += refused_stale;
        self.refused_drift += refused_drift;
        self.partitions += partitions;
        self.crashes += crashes;
        self.tombstones_collected += tombstones_collected;
        self.sync_rounds += sync_rounds;
    }
}

/// A run that passed every check.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: Scenario,
    pub stats: Stats,
    /// The converged digest of the healthy replicas.
    pub digest: [u8; 32],
    pub trace: Vec<String>,
}

#[derive(Debug, Clone)]
enum Event {
    LocalOp(usize),
    AntiEntropy(usize),
    Deliver(Envelope),
    Partition,
    Heal,
    Crash(usize),
    Restart(usize),
    Die(usize),
    Evict(usize),
}

struct Node {
    id: NodeId,
    /// `None` while crashed (or dead).
    replica: Option<Replica>,
    /// The last persisted snapshot, encoded as on disk.
    persisted: Vec<u8>,
    /// The replica changed since `persisted` was encoded. Encoding is deferred
    /// until just before the next change that is not persisted (an observed
    /// summary, a GC) or a crash: the same image as encoding after every
    /// write, at a fraction of the cost.
    dirty: bool,
    /// Digest of the replicated state, while known to be current.
    digest: Option<[u8; 32]>,
    skew_ms: i64,
}

struct World {
    seed: u64,
    config: Config,
    scenario: Scenario,
    rng: ChaCha8Rng,
    now_ms: u64,
    sequence: u64,
    queue: BTreeMap<(u64, u64), Event>,
    network: Network,
    nodes: Vec<Node>,
    history: History,
    stats: Stats,
    trace: Trace,
    /// Set when the operations phase ends: no new operations, faults or ticks.
    quiescing: bool,
    /// Whether the dead node has been evicted (its tombstone may since be collected).
    evicted: bool,
}

macro_rules! trace {
    ($world:expr, $($arg:tt)*) => {
        if $world.trace.enabled() {
            let at_ms = $world.now_ms;
            $world.trace.record(at_ms, format_args!($($arg)*));
        }
    };
}

/// Runs one seed to completion and checks it.
pub fn run(seed: u64, config: &Config) -> Result<Outcome, Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scenario = Scenario::generate(&mut rng, config.duration_ms, config.max_drift_ms);
    let mut world = World::new(seed, config.clone(), scenario, rng);
    trace!(world, "seed {seed}: {:?}", world.scenario);
    match world.execute() {
        Ok(digest) => Ok(Outcome {
            seed,
            scenario: world.scenario.clone(),
            stats: world.stats.clone(),
            digest,
            trace: std::mem::take(&mut world.trace).into_lines(),
        }),
        Err(Violation(message)) => {
            let at_ms = world.now_ms;
            trace!(world, "FAILURE: {message}");
            Err(Failure {
                seed,
                at_ms,
                message,
                trace: std::mem::take(&mut world.trace).into_lines(),
            })
        }
    }
}

impl World {
    fn new(seed: u64, config: Config, scenario: Scenario, rng: ChaCha8Rng) -> Self {
        let max_drift = Duration::from_millis(config.max_drift_ms);
        let nodes = (0..scenario.replicas)
            .map(|index| {
                let id: NodeId = format!("node-{index}").parse().expect("valid node id");
                let replica = Replica::new(id.clone(), max_drift);
                let persisted = codec::encode_snapshot(&replica.to_snapshot());
                Node {
                    id,
                    replica: Some(replica),
                    persisted,
                    dirty: false,
                    digest: None,
                    skew_ms: scenario.skews_ms[index],
                }
            })
            .collect();
        let network = Network::new(
            scenario.replicas,
            scenario.latency_ms_max,
            scenario.loss_percent,
            scenario.duplicate_percent,
            LATE_DUPLICATE_MS_MAX,
        );
        Self {
            seed,
            trace: Trace::new(config.trace),
            config,
            scenario,
            rng,
            now_ms: 0,
            sequence: 0,
            queue: BTreeMap::new(),
            network,
            nodes,
            history: History::default(),
            stats: Stats::default(),
            quiescing: false,
            evicted: false,
        }
    }

    fn max_drift(&self) -> Duration {
        Duration::from_millis(self.config.max_drift_ms)
    }

    /// A node's physical clock reading now: simulated time plus its skew.
    fn physical(&self, node: usize) -> NTP64 {
        let millis = EPOCH_MS.saturating_add_signed(self.nodes[node].skew_ms) + self.now_ms;
        NTP64::from(Duration::from_millis(millis))
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        assert!(
            at_ms >= self.now_ms,
            "events are never scheduled in the past"
        );
        self.sequence += 1;
        self.queue.insert((at_ms, self.sequence), event);
    }

    fn is_up(&self, node: usize) -> bool {
        self.nodes[node].replica.is_some()
    }

    fn execute(&mut self) -> Result<[u8; 32], Violation> {
        self.bootstrap()?;
        let replicas = self.scenario.replicas;
        for node in 0..replicas {
            let first_op = self.rng.gen_range(1..=self.scenario.op_interval_ms_mean);
            self.schedule(first_op, Event::LocalOp(node));
            let first_tick = self.rng.gen_range(50..=400);
            self.schedule(first_tick, Event::AntiEntropy(node));
        }
        if self.scenario.partitions {
            let at = self.rng.gen_range(0..self.config.duration_ms / 2);
            self.schedule(at, Event::Partition);
        }
        if let Some((node, at)) = self.scenario.dead {
            self.schedule(at, Event::Die(node));
        }
        while let Some(((at_ms, _), event)) = self.queue.pop_first() {
            if !self.quiescing && at_ms >= self.config.duration_ms {
                self.begin_quiescence();
            }
            self.now_ms = at_ms;
            self.stats.events += 1;
            if self.stats.events > self.config.events_max {
                return Err(Violation(format!(
                    "runaway: more than {} events",
                    self.config.events_max
                )));
            }
            self.handle(event)?;
        }
        self.final_sync()
    }

    /// Every node writes its metadata and the cluster learns all of them before
    /// the first operation, as a fleet starts from configured seed peers. A node
    /// unknown to the others would not block their GC (see `Replica`).
    fn bootstrap(&mut self) -> Result<(), Violation> {
        let replicas = self.scenario.replicas;
        let mut deltas = Vec::new();
        for node in 0..replicas {
            let now = self.physical(node);
            let heartbeat = self.nodes[node]
                .replica
                .as_ref()
                .expect("up at start")
                .clock()
                .last();
            let mut meta = workload::node_meta(&mut self.rng, node, replicas, heartbeat);
            meta.subnet = Some(workload::subnet_of(node));
            let replica = self.nodes[node].replica.as_mut().expect("up at start");
            let observed = replica.version_vector().clone();
            let delta = replica
                .put_node_meta(now, meta.clone())
                .map_err(|error| format!("bootstrap meta: {error}"))?;
            let hlc = delta.max_timestamp().expect("meta write has a timestamp");
            self.history.record(Write {
                node: self.nodes[node].id.clone(),
                first_counter: 1,
                last_counter: 1,
                hlc,
                observed,
                op: Op::PutNodeMeta { meta },
            });
            self.stats.writes_acknowledged += 1;
            self.persist(node);
            deltas.push(codec::encode_delta(&delta));
        }
        for (from, bytes) in deltas.iter().enumerate() {
            for to in 0..replicas {
                if to != from {
                    self.receive_delta(to, from, bytes)?;
                }
            }
        }
        trace!(
            self,
            "bootstrap: every node knows every healthy node's metadata"
        );
        Ok(())
    }

    fn begin_quiescence(&mut self) {
        self.quiescing = true;
        self.network.heal();
        self.network.make_reliable();
        trace!(
            self,
            "operations phase over: network healed and reliable, draining"
        );
        for node in 0..self.scenario.replicas {
            let dead = self.scenario.dead.map(|(dead, _)| dead) == Some(node);
            if !self.is_up(node) && !dead {
                // Restart crashed nodes now; their pending Restart events become no-ops.
                self.restart(node);
            }
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::LocalOp(node) => {
                if self.quiescing {
                    return Ok(());
                }
                if self.is_up(node) {
                    self.local_op(node)?;
                }
                let gap = self
                    .rng
                    .gen_range(1..=2 * self.scenario.op_interval_ms_mean);
                self.schedule(self.now_ms + gap, Event::LocalOp(node));
            }
            Event::AntiEntropy(node) => {
                if self.quiescing {
                    return Ok(());
                }
                if self.is_up(node) {
                    self.anti_entropy(node);
                    let crashable =
                        self.scenario.is_healthy(node) || Some(node) == self.scenario.rogue;
                    if crashable && self.rng.gen_ratio(self.scenario.crash_per_mille, 1000) {
                        self.schedule(self.now_ms, Event::Crash(node));
                    }
                }
                let gap = self.rng.gen_range(100..=500);
                self.schedule(self.now_ms + gap, Event::AntiEntropy(node));
            }
            Event::Deliver(envelope) => self.deliver(envelope)?,
            Event::Partition => {
                if self.quiescing {
                    return Ok(());
                }
                let sides = self.network.partition(&mut self.rng);
                self.stats.partitions += 1;
                trace!(self, "partition: sides {sides:?}");
                let heal_at = self.now_ms + self.rng.gen_range(300..=3_000);
                self.schedule(heal_at, Event::Heal);
            }
            Event::Heal => {
                if self.quiescing {
                    return Ok(());
                }
                self.network.heal();
                trace!(self, "partition healed");
                let next = self.now_ms + self.rng.gen_range(200..=2_000);
                self.schedule(next, Event::Partition);
            }
            Event::Crash(node) => {
                if self.quiescing || !self.is_up(node) {
                    return Ok(());
                }
                self.crash(node)?;
                let restart_at = self.now_ms + self.rng.gen_range(100..=1_500);
                self.schedule(restart_at, Event::Restart(node));
            }
            Event::Restart(node) => {
                if !self.is_up(node) && !self.quiescing {
                    self.restart(node);
                }
            }
            Event::Die(node) => {
                if self.is_up(node) {
                    self.crash(node)?;
                }
                trace!(self, "{} is dead for good", self.nodes[node].id);
                // Evict it once nothing it sent can still be in flight.
                let evict_at =
                    self.now_ms + 2 * self.scenario.latency_ms_max + self.rng.gen_range(1..=1_000);
                self.schedule(evict_at, Event::Evict(node));
            }
            Event::Evict(dead) => self.evict(dead)?,
        }
        Ok(())
    }

    fn local_op(&mut self, node: usize) -> Result<(), Violation> {
        let now = self.physical(node);
        let replicas = self.scenario.replicas;
        let replica = self.nodes[node]
            .replica
            .as_mut()
            .expect("caller checked the node is up");
        let performed = workload::perform(&mut self.rng, replica, now, node, replicas);
        let id = self.nodes[node].id.clone();
        match performed.result {
            Ok(Some((write, delta))) => {
                trace!(
                    self,
                    "{id}: {} -> dots {}..={} at {}",
                    performed.label,
                    write.first_counter,
                    write.last_counter,
                    write.hlc
                );
                self.acknowledge(node, write, &delta);
            }
            Ok(None) => trace!(self, "{id}: {} -> nothing to write", performed.label),
            Err(error) => {
                self.stats.operations_refused += 1;
                trace!(self, "{id}: {} refused: {error}", performed.label);
            }
        }
        Ok(())
    }

    /// An acknowledged write: persisted, recorded, and pushed eagerly to every peer.
    fn acknowledge(&mut self, node: usize, write: Write, delta: &crate::Delta) {
        self.persist(node);
        self.history.record(write);
        self.stats.writes_acknowledged += 1;
        let bytes = codec::encode_delta(delta);
        for to in 0..self.scenario.replicas {
            if to != node {
                self.send(
                    node,
                    to,
                    Payload::Push {
                        delta: bytes.clone(),
                    },
                );
            }
        }
    }

    fn evict(&mut self, dead: usize) -> Result<(), Violation> {
        // The lowest healthy node that is up evicts; if none is up, retry later.
        let evictor = (0..self.scenario.replicas)
            .find(|node| self.scenario.is_healthy(*node) && self.is_up(*node));
        let Some(evictor) = evictor else {
            let retry_at = self.now_ms + 100;
            self.schedule(retry_at, Event::Evict(dead));
            return Ok(());
        };
        let now = self.physical(evictor);
        let dead_id = self.nodes[dead].id.clone();
        let replica = self.nodes[evictor].replica.as_mut().expect("checked up");
        if self.evicted {
            return Ok(());
        }
        let observed = replica.version_vector().clone();
        let before = observed.get(replica.node());
        match replica.evict_node(now, &dead_id) {
            Ok(delta) => {
                let after = replica.version_vector().get(replica.node());
                let hlc = delta.max_timestamp().expect("eviction writes a tombstone");
                let write = Write {
                    node: replica.node().clone(),
                    first_counter: before + 1,
                    last_counter: after,
                    hlc,
                    observed,
                    op: Op::Evict {
                        node: dead_id.clone(),
                    },
                };
                trace!(self, "{}: evict {dead_id}", self.nodes[evictor].id);
                self.evicted = true;
                self.acknowledge(evictor, write, &delta);
                Ok(())
            }
            Err(error) => Err(Violation(format!(
                "evicting dead {dead_id} failed: {error}"
            ))),
        }
    }

    fn anti_entropy(&mut self, node: usize) {
        self.flush(node);
        let replica = self.nodes[node]
            .replica
            .as_mut()
            .expect("caller checked the node is up");
        let collected = replica.collect_garbage();
        let summary = codec::encode_summary(&replica.summary());
        self.stats.tombstones_collected += collected;
        if collected > 0 {
            self.nodes[node].digest = None;
        }
        let replicas = self.scenario.replicas;
        let peer = (node + self.rng.gen_range(1..replicas)) % replicas;
        trace!(
            self,
            "{}: tick, collected {collected} tombstones, sync with {}",
            self.nodes[node].id,
            self.nodes[peer].id
        );
        self.send(node, peer, Payload::SyncRequest { summary });
    }

    fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.stats.messages_sent += 1;
        self.stats.message_bytes += payload.bytes();
        match self.network.send(&mut self.rng, self.now_ms, from, to) {
            Fate::Partitioned => self.stats.messages_partitioned += 1,
            Fate::Lost => self.stats.messages_lost += 1,
            Fate::Deliver {
                first_ms,
                duplicate_ms,
            } => {
                if let Some(at) = duplicate_ms {
                    self.stats.messages_duplicated += 1;
                    self.schedule(
                        at,
                        Event::Deliver(Envelope {
                            from,
                            to,
                            payload: payload.clone(),
                        }),
                    );
                }
                self.schedule(first_ms, Event::Deliver(Envelope { from, to, payload }));
            }
        }
    }

    fn deliver(&mut self, envelope: Envelope) -> Result<(), Violation> {
        let Envelope { from, to, payload } = envelope;
        if !self.is_up(to) || !self.network.connected(from, to) {
            trace!(
                self,
                "{} -> {}: {} dropped (down or partitioned)",
                self.nodes[from].id,
                self.nodes[to].id,
                payload.kind()
            );
            return Ok(());
        }
        let limit = self.config.message_bytes_max;
        match payload {
            Payload::SyncRequest { summary } => {
                let summary = codec::decode_summary(&summary, limit)
                    .map_err(|error| format!("summary: {error}"))?;
                let from_id = self.nodes[from].id.clone();
                self.flush(to);
                let replica = self.nodes[to].replica.as_mut().expect("checked up");
                let corrected = replica.observe_summary(&from_id, &summary);
                let delta = codec::encode_delta(&replica.delta_for(&summary));
                let own = codec::encode_summary(&replica.summary());
                if corrected {
                    self.persist(to);
                }
                trace!(
                    self,
                    "{} -> {}: sync-request answered with {} delta bytes",
                    self.nodes[from].id,
                    self.nodes[to].id,
                    delta.len()
                );
                self.send(
                    to,
                    from,
                    Payload::SyncResponse {
                        delta,
                        summary: own,
                    },
                );
            }
            Payload::SyncResponse { delta, summary } => {
                self.receive_delta(to, from, &delta)?;
                let summary = codec::decode_summary(&summary, limit)
                    .map_err(|error| format!("summary: {error}"))?;
                let from_id = self.nodes[from].id.clone();
                self.flush(to);
                let replica = self.nodes[to].replica.as_mut().expect("checked up");
                let corrected = replica.observe_summary(&from_id, &summary);
                let back = replica.delta_for(&summary);
                if corrected {
                    self.persist(to);
                }
                if !back.is_empty() {
                    let bytes = codec::encode_delta(&back);
                    self.send(to, from, Payload::Push { delta: bytes });
                }
            }
            Payload::Push { delta } => self.receive_delta(to, from, &delta)?,
        }
        Ok(())
    }

    /// Decodes and applies a delta; checks that a refusal changed nothing and
    /// that only the rogue node is ever refused for clock drift.
    fn receive_delta(&mut self, to: usize, from: usize, bytes: &[u8]) -> Result<(), Violation> {
        let delta = codec::decode_delta(bytes, self.config.message_bytes_max)
            .map_err(|error| format!("delta: {error}"))?;
        if delta.is_empty() {
            return Ok(());
        }
        let now = self.physical(to);
        let from_id = self.nodes[from].id.clone();
        let to_id = self.nodes[to].id.clone();
        let digest_before = self.digest(to);
        let replica = self.nodes[to]
            .replica
            .as_mut()
            .expect("caller checked the node is up");
        let vv_before = replica.version_vector().clone();
        match replica.apply_delta(now, &from_id, &delta) {
            Ok(applied) => {
                let changed = replica.version_vector() != &vv_before
                    || applied.entries_applied > 0
                    || delta.is_full();
                trace!(
                    self,
                    "{from_id} -> {to_id}: delta of {} entries{}: applied {}, ignored {}",
                    delta.entry_count(),
                    if delta.is_full() { " (snapshot)" } else { "" },
                    applied.entries_applied,
                    applied.entries_ignored
                );
                self.stats.deltas_applied += 1;
                self.stats.snapshots_applied += usize::from(delta.is_full());
                if changed {
                    self.persist(to);
                }
                Ok(())
            }
            Err(error) => {
                let unchanged =
                    replica.digest() == digest_before && replica.version_vector() == &vv_before;
                trace!(
                    self,
                    "{from_id} -> {to_id}: delta of {} entries refused: {error}",
                    delta.entry_count()
                );
                if !unchanged {
                    return Err(Violation(format!(
                        "{to_id} refused a delta from {from_id} ({error}) but its state changed"
                    )));
                }
                match error {
                    ApplyError::StaleBase { .. } => self.stats.refused_stale += 1,
                    ApplyError::ClockDrift { .. } => {
                        self.stats.refused_drift += 1;
                        let carries_rogue = self.scenario.rogue.is_some_and(|rogue| {
                            // Entries, not ranges: a full snapshot has no ranges.
                            delta
                                .changes()
                                .iter()
                                .any(|change| change.dot().node == self.nodes[rogue].id)
                        });
                        if !carries_rogue {
                            return Err(Violation(format!(
                                "{to_id} refused a delta from {from_id} for drift without any rogue write: {error}"
                            )));
                        }
                    }
                    ApplyError::Invalid(_) | ApplyError::OwnOrigin { .. } => {
                        return Err(Violation(format!(
                            "{to_id} refused a valid delta from {from_id}: {error}"
                        )));
                    }
                }
                Ok(())
            }
        }
    }

    /// Called after every acknowledged write and every applied delta.
    fn persist(&mut self, node: usize) {
        assert!(self.is_up(node), "only an up node persists");
        self.nodes[node].dirty = true;
        self.nodes[node].digest = None;
    }

    /// Encodes the pending persisted image (see `Node::dirty`).
    fn flush(&mut self, node: usize) {
        if self.nodes[node].dirty {
            let replica = self.nodes[node]
                .replica
                .as_ref()
                .expect("only an up node persists");
            self.nodes[node].persisted = codec::encode_snapshot(&replica.to_snapshot());
            self.nodes[node].dirty = false;
        }
    }

    fn digest(&mut self, node: usize) -> [u8; 32] {
        let Node {
            replica, digest, ..
        } = &mut self.nodes[node];
        let replica = replica.as_ref().expect("only an up node has a digest");
        *digest.get_or_insert_with(|| replica.digest())
    }

    fn crash(&mut self, node: usize) -> Result<(), Violation> {
        self.flush(node);
        self.nodes[node].digest = None;
        let replica = self.nodes[node]
            .replica
            .take()
            .expect("caller checked the node is up");
        self.stats.crashes += 1;
        trace!(
            self,
            "{} crashes (unpersisted memory lost)", self.nodes[node].id
        );
        // What it persisted must restore to the same replicated state.
        let restored = self.restore(node)?;
        if restored.digest() != replica.digest()
            || restored.version_vector() != replica.version_vector()
        {
            return Err(Violation(format!(
                "{}: the last snapshot does not restore its acknowledged state",
                self.nodes[node].id
            )));
        }
        Ok(())
    }

    fn restore(&self, node: usize) -> Result<Replica, Violation> {
        let snapshot = codec::decode_snapshot(&self.nodes[node].persisted, usize::MAX)
            .map_err(|error| format!("{}: persisted snapshot: {error}", self.nodes[node].id))?;
        Replica::from_snapshot(self.nodes[node].id.clone(), self.max_drift(), snapshot)
            .map_err(|error| Violation(format!("{}: restore: {error}", self.nodes[node].id)))
    }

    fn restart(&mut self, node: usize) {
        // `crash` already proved the snapshot restores.
        let replica = self.restore(node).expect("snapshot restored once already");
        trace!(self, "{} restarts from its snapshot", self.nodes[node].id);
        self.nodes[node].replica = Some(replica);
    }

    /// After the operations phase: everything is up and connected; full-mesh
    /// push-pull rounds until the healthy replicas agree, then one more round
    /// so every member's summary is current, then GC, then the checks.
    fn final_sync(&mut self) -> Result<[u8; 32], Violation> {
        assert!(self.queue.is_empty(), "the network is drained");
        if let Some((dead, _)) = self.scenario.dead
            && !self.evicted
        {
            self.evict(dead)?;
            self.queue.clear();
        }
        let participants: Vec<usize> = (0..self.scenario.replicas)
            .filter(|node| self.is_up(*node))
            .collect();
        let healthy: Vec<usize> = participants
            .iter()
            .copied()
            .filter(|node| self.scenario.is_healthy(*node))
            .collect();
        let mut converged = false;
        for round in 0..self.config.sync_rounds_max {
            self.stats.sync_rounds += 1;
            self.sync_round(&participants)?;
            if self.healthy_agree(&healthy) {
                trace!(
                    self,
                    "final sync: healthy replicas agree after {} rounds",
                    round + 1
                );
                converged = true;
                break;
            }
        }
        if !converged {
            let vvs: Vec<String> = healthy
                .iter()
                .map(|node| {
                    format!(
                        "{}: {:?}",
                        self.nodes[*node].id,
                        self.nodes[*node]
                            .replica
                            .as_ref()
                            .map(|r| r.version_vector())
                    )
                })
                .collect();
            return Err(Violation(format!(
                "no convergence after {} sync rounds: {}",
                self.config.sync_rounds_max,
                vvs.join("; ")
            )));
        }
        // One more round so every summary each replica holds is current (stable).
        self.sync_round(&participants)?;
        for node in &participants {
            self.flush(*node);
            let replica = self.nodes[*node]
                .replica
                .as_mut()
                .expect("participants are up");
            self.stats.tombstones_collected += replica.collect_garbage();
        }
        if !self.healthy_agree(&healthy) {
            return Err(Violation(
                "healthy replicas disagree after garbage collection".to_owned(),
            ));
        }
        self.check(&healthy)
    }

    /// Every participant pulls from every other one (push-pull, synchronously).
    fn sync_round(&mut self, participants: &[usize]) -> Result<(), Violation> {
        for &a in participants {
            for &b in participants {
                if a == b {
                    continue;
                }
                let a_id = self.nodes[a].id.clone();
                let b_id = self.nodes[b].id.clone();
                let summary_a = self.nodes[a].replica.as_ref().expect("up").summary();
                self.flush(b);
                let replica_b = self.nodes[b].replica.as_mut().expect("up");
                let corrected = replica_b.observe_summary(&a_id, &summary_a);
                let delta = codec::encode_delta(&replica_b.delta_for(&summary_a));
                let summary_b = replica_b.summary();
                if corrected {
                    self.persist(b);
                }
                self.receive_delta(a, b, &delta)?;
                self.flush(a);
                let corrected = self.nodes[a]
                    .replica
                    .as_mut()
                    .expect("up")
                    .observe_summary(&b_id, &summary_b);
                if corrected {
                    self.persist(a);
                }
            }
        }
        Ok(())
    }

    fn healthy_agree(&self, healthy: &[usize]) -> bool {
        let mut views = healthy.iter().map(|node| {
            let replica = self.nodes[*node]
                .replica
                .as_ref()
                .expect("healthy nodes are up");
            (replica.version_vector().clone(), replica.digest())
        });
        let Some(first) = views.next() else {
            return true;
        };
        views.all(|view| view == first)
    }

    fn check(&mut self, healthy: &[usize]) -> Result<[u8; 32], Violation> {
        let node_ids: Vec<NodeId> = self.nodes.iter().map(|node| node.id.clone()).collect();
        let first = self.nodes[healthy[0]].replica.as_ref().expect("up");
        let digest = first.digest();
        // Every write a healthy node acknowledged reached every healthy replica.
        let last_counters = self.history.last_counters();
        for &node in healthy {
            let id = &self.nodes[node].id;
            let acknowledged = last_counters.get(id).copied().unwrap_or(0);
            if first.version_vector().get(id) < acknowledged {
                return Err(Violation(format!(
                    "healthy {id} acknowledged writes up to {acknowledged} that were lost"
                )));
            }
        }
        if let Some(rogue) = self.scenario.rogue {
            let rogue_id = &self.nodes[rogue].id;
            if first.version_vector().get(rogue_id) != 0 {
                return Err(Violation(format!(
                    "a write of {rogue_id}, whose clock is beyond the drift limit, was accepted"
                )));
            }
            if last_counters.get(rogue_id).copied().unwrap_or(0) > 0
                && self.stats.refused_drift == 0
            {
                return Err(Violation(format!(
                    "{rogue_id} wrote but no delta was ever refused for clock drift"
                )));
            }
        }
        let reference = query_view(first, &node_ids);
        for &node in healthy {
            let replica = self.nodes[node].replica.as_ref().expect("up");
            self.history.check(replica, &node_ids)?;
            let tombstones = replica.state().tombstone_count();
            if tombstones != 0 {
                return Err(Violation(format!(
                    "{} holds {tombstones} tombstones after stabilisation and GC",
                    replica.node()
                )));
            }
            if query_view(replica, &node_ids) != reference {
                return Err(Violation(format!(
                    "{} answers queries differently from {}",
                    replica.node(),
                    first.node()
                )));
            }
        }
        trace!(
            self,
            "checked: {} healthy replicas agree on {}, {} writes in history, stats {:?}",
            healthy.len(),
            hex_prefix(&digest),
            self.history.len(),
            self.stats
        );
        let _ = self.seed;
        Ok(digest)
    }
}

/// Everything the scheduler reads, rendered for comparison between replicas.
fn query_view(replica: &Replica, nodes: &[NodeId]) -> String {
    let state = replica.state();
    let mut counters = BTreeSet::new();
    for node in nodes {
        for resource in [
            crate::Resource::CpuMillis,
            crate::Resource::MemoryBytes,
            crate::Resource::Containers,
        ] {
            counters.insert((
                node.clone(),
                format!("{resource:?}"),
                state.resource_used(node, resource),
            ));
        }
    }
    let subnet_owners: Vec<_> = (0..nodes.len())
        .map(|index| state.subnet_owner(&workload::subnet_of(index)))
        .collect();
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        state.services().collect::<Vec<_>>(),
        state.containers().collect::<Vec<_>>(),
        state.nodes().collect::<Vec<_>>(),
        counters,
        state.ip_allocations(),
        state.ip_conflicts(),
        state.subnet_conflicts(),
        subnet_owners
    )
}

fn hex_prefix(digest: &[u8; 32]) -> String {
    digest[..6]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
