//! One simulated node: a bare `shoal_crdt::Replica` behind the `StatePort` the reconcile pass
//! talks to, the same `Planner` and `Executor` the daemon runs (over `FakeRuntime`,
//! `FakeNetwork` and `FakeImages`), and a `ManualClock` with the machine's skew.
//!
//! Persisting is keeping the replica: the daemon writes every change to redb before it is
//! acknowledged, so a crashed daemon or a lost machine comes back with exactly the state it
//! had (the peers' summaries it observed included, which the daemon keeps only from its
//! last compaction: losing them would only delay garbage collection). What does not survive
//! is the daemon's memory (the planner's restart bookkeeping and failures, the gossip's sync
//! history) and, with a lost machine, its containers and network namespaces.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shoal_crdt::{ClusterState, Delta, NodeId, NodeMeta, Replica, ReplicaError, Timestamp};
use shoal_oci::network::FakeNetwork;

use super::runtime::SimRuntime;
use super::scenario::Machine;
use crate::containers::{Executor, FakeImages, StatePort};
use crate::schedule::records::{self, BatchResult, RecordBatch};
use crate::schedule::{ClusterView, Planner, PlannerSettings};
use crate::state::{Clock, ManualClock, NodeError, members};

/// Image paths under this prefix are refused, as a missing or corrupt image would be.
pub(crate) const BAD_IMAGE_PREFIX: &str = "/images/missing/";

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The daemon runs.
    Running,
    /// The daemon crashed; the machine and its containers are still there.
    DaemonDown,
    /// The machine is gone (powered off, rebooted): no containers, no daemon, no heartbeat.
    MachineGone,
}

/// Who wrote a local change, for the ownership check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// A reconcile pass's record batch (`StatePort::commit`).
    Pass,
    /// `Node::heartbeat`: this node's metadata.
    Heartbeat,
    /// An operator's `shoal service apply` or `remove` sent to this node.
    Operator,
}

/// The replicated state of one node as the reconcile pass sees it; what the daemon's
/// `state::Node` is to a real pass.
pub(crate) struct NodeState {
    me: NodeId,
    replica: RefCell<Replica>,
    clock: Arc<ManualClock>,
    down_after_ms: u64,
    /// Deltas committed by passes and not yet taken by the world (to check and push).
    committed: RefCell<Vec<Delta>>,
}

impl StatePort for NodeState {
    fn view(&self) -> ClusterView {
        let replica = self.replica.borrow();
        let live = members::live_set(
            replica.state(),
            &self.me,
            &members::Liveness::heartbeats(self.clock.now(), self.down_after_ms),
        );
        ClusterView::read(replica.state(), &self.me, &live)
    }

    /// As `Node::write_batch`: the whole batch is one delta (one commit, one push).
    fn commit(&self, batch: &RecordBatch) -> Result<BatchResult, NodeError> {
        let mut replica = self.replica.borrow_mut();
        let since = replica.own_counter();
        let result = records::apply_batch(&mut replica, self.clock.now(), batch);
        let delta = replica.own_delta_since(since);
        if !delta.is_empty() {
            self.committed.borrow_mut().push(delta);
        }
        Ok(result)
    }

    fn report_status(&self, status: &shoal_crdt::NodeStatus) -> Result<(), NodeError> {
        let mut replica = self.replica.borrow_mut();
        let since = replica.own_counter();
        if let Err(source) = records::report_status(&mut replica, self.clock.now(), status) {
            return Err(NodeError::Operation {
                what: "container status report".to_owned(),
                source,
            });
        }
        let delta = replica.own_delta_since(since);
        if !delta.is_empty() {
            self.committed.borrow_mut().push(delta);
        }
        Ok(())
    }

    fn fail_update(
        &self,
        failure: &crate::schedule::plan::UpdateFailure,
    ) -> Result<bool, NodeError> {
        let mut replica = self.replica.borrow_mut();
        let since = replica.own_counter();
        let wrote =
            records::fail_update(&mut replica, self.clock.now(), failure).map_err(|source| {
                NodeError::Operation {
                    what: format!("the failed update of {}", failure.service),
                    source,
                }
            })?;
        let delta = replica.own_delta_since(since);
        if !delta.is_empty() {
            self.committed.borrow_mut().push(delta);
        }
        Ok(wrote)
    }
}

pub(crate) struct SimNode {
    pub(crate) id: NodeId,
    pub(crate) machine: Machine,
    pub(crate) state: NodeState,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) runtime: Arc<SimRuntime>,
    pub(crate) network: Arc<FakeNetwork>,
    pub(crate) executor: Executor,
    pub(crate) planner: Mutex<Planner>,
    pub(crate) status: Status,
    /// Simulated time the daemon started, for the startup grace.
    pub(crate) daemon_started_ms: u64,
    /// Per peer, when this daemon last completed an exchange it asked for (its sync history:
    /// lost with the daemon).
    pub(crate) synced_ms: BTreeMap<usize, u64>,
    /// A wake-up of the reconcile loop is already scheduled.
    pub(crate) wake_pending: bool,
    /// The daemon dies inside its next pass that commits something, on this call of the
    /// pass's `stopping` (the first comes right after the commit).
    pub(crate) crash_in_pass: Option<u32>,
}

impl SimNode {
    pub(crate) fn new(
        index: usize,
        machine: Machine,
        settings: PlannerSettings,
        planner_seed: u64,
        clock_ms: u64,
        down_after_ms: u64,
        max_drift: std::time::Duration,
    ) -> SimNode {
        let id: NodeId = format!("node-{index}").parse().expect("a valid node id");
        let clock = Arc::new(ManualClock::at_ms(clock_ms));
        let runtime = SimRuntime::new();
        let network = Arc::new(FakeNetwork::new(machine.subnet, &netns_prefix(index)));
        let executor = executor(&runtime, &network);
        SimNode {
            state: NodeState {
                me: id.clone(),
                replica: RefCell::new(Replica::new(id.clone(), max_drift)),
                clock: clock.clone(),
                down_after_ms,
                committed: RefCell::new(Vec::new()),
            },
            planner: Mutex::new(Planner::new(id.clone(), settings, planner_seed)),
            id,
            machine,
            clock,
            runtime,
            network,
            executor,
            status: Status::Running,
            daemon_started_ms: 0,
            synced_ms: BTreeMap::new(),
            wake_pending: false,
            crash_in_pass: None,
        }
    }

    pub(crate) fn replica(&self) -> std::cell::Ref<'_, Replica> {
        self.state.replica.borrow()
    }

    pub(crate) fn replica_mut(&self) -> std::cell::RefMut<'_, Replica> {
        self.state.replica.borrow_mut()
    }

    pub(crate) fn state(&self) -> std::cell::Ref<'_, ClusterState> {
        std::cell::Ref::map(self.state.replica.borrow(), Replica::state)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.status == Status::Running
    }

    /// Whether a pass committed something not yet taken.
    pub(crate) fn has_committed(&self) -> bool {
        !self.state.committed.borrow().is_empty()
    }

    /// The deltas passes committed since the last call.
    pub(crate) fn take_committed(&self) -> Vec<Delta> {
        std::mem::take(&mut *self.state.committed.borrow_mut())
    }

    /// Runs local operations on the replica as one commit (as `Node::write_batch`); returns
    /// their value and the delta, if they wrote anything.
    pub(crate) fn write<T>(
        &self,
        operations: impl FnOnce(&mut Replica, shoal_crdt::NTP64) -> T,
    ) -> (T, Option<Delta>) {
        let mut replica = self.replica_mut();
        let since = replica.own_counter();
        let value = operations(&mut replica, self.clock.now());
        let delta = replica.own_delta_since(since);
        (value, (!delta.is_empty()).then_some(delta))
    }

    /// `Node::heartbeat`'s write: this node's address, capacity, subnet and a fresh
    /// heartbeat. Returns whether its metadata was new (which wakes the planner).
    pub(crate) fn heartbeat(&self) -> (Result<bool, ReplicaError>, Option<Delta>) {
        let drain = self.state().node(&self.id).and_then(|meta| meta.drain);
        self.write_meta(drain)
    }

    /// Writes this node's metadata with `drain` (a heartbeat keeps the one in the state, as
    /// the daemon's does; the operator's drain and undrain set it). Returns whether it was
    /// the node's first.
    pub(crate) fn write_meta(
        &self,
        drain: Option<shoal_crdt::Drain>,
    ) -> (Result<bool, ReplicaError>, Option<Delta>) {
        let machine = self.machine.clone();
        let me = self.id.clone();
        self.write(|replica, now| {
            let first = replica.state().node(&me).is_none();
            let meta = NodeMeta {
                address: machine.address,
                capacity: machine.capacity,
                subnet: Some(machine.subnet),
                heartbeat: Timestamp::new(now, me.hlc_id()),
                labels: machine.labels.clone(),
                incarnation: None,
                drain,
            };
            replica.put_node_meta(now, meta).map(|_| first)
        })
    }

    /// A restarted daemon: a new planner (empty bookkeeping, fresh id sequence), a new
    /// executor over the machine's runtime and network, no sync history. As at a daemon's
    /// start, containers that ended stay in the runtime with their exit status, so the
    /// next pass restarts them per policy or removes them.
    pub(crate) fn start_daemon(
        &mut self,
        settings: PlannerSettings,
        planner_seed: u64,
        now_ms: u64,
    ) {
        self.planner = Mutex::new(Planner::new(self.id.clone(), settings, planner_seed));
        self.executor = executor(&self.runtime, &self.network);
        self.status = Status::Running;
        self.daemon_started_ms = now_ms;
        self.synced_ms.clear();
        self.wake_pending = false;
        self.crash_in_pass = None;
    }

    /// The machine is gone (power lost): every container's process with it, but not the
    /// containers' state on disk, which the runtime reports as ended with an unknown status
    /// when the machine is back; the namespaces are gone. Its replica is its disk. Returns
    /// the ids of the containers that were still running.
    pub(crate) fn lose_machine(&mut self, index: usize) -> Vec<String> {
        let lost = self.runtime.running();
        self.runtime.power_loss();
        self.network = Arc::new(FakeNetwork::new(self.machine.subnet, &netns_prefix(index)));
        self.executor = executor(&self.runtime, &self.network);
        self.status = Status::MachineGone;
        self.crash_in_pass = None;
        lost
    }

    /// Whether the reconcile loop places yet (`Reconciler::view_is_fresh`): it knows no
    /// other member, has completed an exchange since it started, or waited out the grace.
    pub(crate) fn view_is_fresh(&self, now_ms: u64, startup_grace_ms: u64) -> bool {
        let knows_peers = self.state().nodes().any(|(id, _)| *id != self.id);
        !knows_peers
            || !self.synced_ms.is_empty()
            || now_ms.saturating_sub(self.daemon_started_ms) >= startup_grace_ms
    }
}

fn netns_prefix(index: usize) -> String {
    format!("shoal.n{index}.")
}

fn executor(runtime: &Arc<SimRuntime>, network: &Arc<FakeNetwork>) -> Executor {
    Executor::new(
        runtime.clone(),
        Some(network.clone()),
        Arc::new(FakeImages::new(BAD_IMAGE_PREFIX)),
        0,
    )
}
