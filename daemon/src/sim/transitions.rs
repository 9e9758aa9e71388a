//! The replacements rollouts begin, tracked from what the passes really did to the records
//! and runtimes, never from the planner's arithmetic, for invariant 14 (`pacing`):
//!
//! - After each pass, the node's records and runtime are compared with placement's count for
//!   the node in its own view. A replica is *current* when its record has the service's
//!   version or its runtime container was created from the current workload; *outdated*
//!   otherwise, and then it holds a place only while it runs (and the service keeps an
//!   earlier workload: without one, outdated replicas go at once, unpaced).
//! - A current replica the pass started that took the node beyond its count, outdated
//!   replicas included, *began a replacement* (start-first). One that only brought the node
//!   up to its count filled a hole, which is never paced: a lost node's share, a failed
//!   start, a new service, a scale-up, a drained node's share. A running outdated replica the
//!   pass stopped that left the node short of its count began a replacement too (stop-first,
//!   or a start-first replacement with no room beside its outdated replica): the empty place
//!   is in transition, and the replica that later fills it carries the transition on.
//! - A transition ends when its node reports the new replica ready, or its record is gone.
//!   One whose replica was ready and later restarts is over: that is no pacing decision.
//! - Each transition keeps the view it was decided on: the service's version and the live
//!   members. The guarantee is per view, so only transitions decided on the checked view's
//!   version and membership count. Another version is another rollout (a spec, scale or
//!   policy change, a rollback), whose views count the earlier rollout's replicas as in
//!   transition before starting more; another membership is another view (each side of a
//!   partition paces itself; a node seen as down no longer has its replicas counted).

use std::collections::{BTreeMap, BTreeSet};

use shoal_crdt::state::Change;
use shoal_crdt::{
    ClusterState, ContainerId, ContainerRecord, Delta, NodeId, ServiceName, ServiceRecord,
    Timestamp,
};
use shoal_oci::ContainerStatus;

use super::world::{World, trace};
use crate::schedule::ClusterView;
use crate::schedule::plan::Plan;
use crate::schedule::restarts::spec_digest;
use crate::state::Clock;
use crate::state::members::{Liveness, live_set};

/// What a node's runtime holds: each container's status and the spec digest written on it.
pub(crate) type RuntimeSpecs = BTreeMap<String, (ContainerStatus, Option<String>)>;

/// How a replacement began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Begun {
    /// This current replica was started beyond its node's count.
    Started(ContainerId),
    /// This running outdated replica was stopped and left its node short: its place is in
    /// transition until a replica is started into it.
    Stopped(ContainerId),
    /// The place the outdated replica left was filled by the started one.
    Refilled {
        stopped: ContainerId,
        started: ContainerId,
    },
}

/// One replacement a rollout began on a node.
#[derive(Debug, Clone)]
pub(super) struct Transition {
    pub(super) service: ServiceName,
    pub(super) begun: Begun,
    /// The version of the service in the view it was decided on.
    pub(super) version: Timestamp,
    /// The live members of that view.
    pub(super) live: BTreeSet<NodeId>,
    pub(super) at_ms: u64,
}

/// The open transitions, by node index. Bounded by the run: at most one per container a
/// pass starts or stops, and each ends with its replica's readiness, record or version.
#[derive(Debug, Default)]
pub(crate) struct Transitions {
    pub(super) open: BTreeMap<usize, Vec<Transition>>,
    /// Something happened since the last check that can bring connected nodes to one view.
    moved: bool,
}

impl Transitions {
    /// A node applied a peer's writes, or which nodes are up or connected changed: the
    /// next check looks again for connected nodes that share a view.
    pub(crate) fn views_moved(&mut self) {
        self.moved = true;
    }

    /// Whether views moved since the last call.
    pub(super) fn take_moved(&mut self) -> bool {
        std::mem::take(&mut self.moved)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.open.values().all(Vec::is_empty)
    }
}

/// What one pass did to one service on its node, as its records and runtime show.
#[derive(Debug)]
struct PassEffect {
    service: ServiceName,
    version: Timestamp,
    /// Current replicas the pass started beyond the node's count.
    beyond: Vec<ContainerId>,
    /// Current replicas the pass started into empty places.
    fills: Vec<ContainerId>,
    /// Running outdated replicas the pass stopped.
    stopped: Vec<ContainerId>,
    /// Places the node's replicas hold after the pass, and placement's count for it.
    held: u32,
    wanted: u32,
}

impl PassEffect {
    /// Places placement gives the node that nothing holds after the pass.
    fn shortfall(&self) -> u32 {
        self.wanted.saturating_sub(self.held)
    }
}

/// The current version of a service: its record, version and workload digest.
pub(super) struct Current<'a> {
    pub(super) record: &'a ServiceRecord,
    pub(super) version: Timestamp,
    digest: String,
}

impl<'a> Current<'a> {
    pub(super) fn of(state: &'a ClusterState, service: &ServiceName) -> Option<Current<'a>> {
        let (record, version) = state.service_record(service)?;
        Some(Current {
            record,
            version,
            digest: spec_digest(&record.spec),
        })
    }

    /// Whether `record` runs the current workload: it was recorded for this version, or
    /// its runtime container was created from the same workload.
    pub(super) fn runs(&self, record: &ContainerRecord, runtime: &RuntimeSpecs) -> bool {
        record.spec_version == self.version
            || runtime
                .get(record.id.as_str())
                .and_then(|(_, digest)| digest.as_ref())
                .is_some_and(|digest| *digest == self.digest)
    }

    /// How many places `records` (one node's, of this service) hold: every current
    /// replica, and every running outdated one while the service keeps an earlier
    /// workload (without one, outdated replicas go at once).
    pub(super) fn held(&self, records: &[&ContainerRecord], runtime: &RuntimeSpecs) -> u32 {
        let has_earlier = self.record.has_earlier_workload();
        let held = records
            .iter()
            .filter(|record| {
                self.runs(record, runtime) || (has_earlier && running(runtime, &record.id))
            })
            .count();
        u32::try_from(held).unwrap_or(u32::MAX)
    }
}

fn running(runtime: &RuntimeSpecs, id: &ContainerId) -> bool {
    runtime
        .get(id.as_str())
        .is_some_and(|(status, _)| *status == ContainerStatus::Running)
}

/// Whether `node` reports container `id` ready in `state`.
pub(super) fn reported_ready(state: &ClusterState, node: &NodeId, id: &ContainerId) -> bool {
    state
        .node_status(node)
        .and_then(|status| status.containers.get(id))
        .is_some_and(|status| status.ready)
}

impl World {
    /// After a pass of `node`, whose runtime was `before` when it began and which
    /// committed `committed`: the replacements it began, and the node's transitions that
    /// ended.
    pub(crate) fn note_transitions(
        &mut self,
        node: usize,
        plan: &Plan,
        committed: &[Delta],
        before: &RuntimeSpecs,
    ) {
        let effects = self.pass_effects(node, plan, committed, before);
        if effects.is_empty() && self.transitions.open.get(&node).is_none_or(Vec::is_empty) {
            return;
        }
        let sim = &self.nodes[node];
        let me = &sim.id;
        let state = sim.state();
        let live = live_set(
            &state,
            me,
            &Liveness::heartbeats(sim.clock.now(), self.config.down_after_ms),
        );
        let now_ms = self.now_ms;
        let open = self.transitions.open.entry(node).or_default();
        // Over for good: the service is gone or at another version (no later view counts
        // these, and a later start must not refill their places).
        open.retain(|transition| {
            state
                .service(&transition.service)
                .is_some_and(|(_, version)| version == transition.version)
        });
        let mut lines = Vec::new();
        for effect in effects {
            let service = &effect.service;
            let begin = |begun: Begun| Transition {
                service: service.clone(),
                begun,
                version: effect.version,
                live: live.clone(),
                at_ms: now_ms,
            };
            // A place a stop left empty is filled by the pass's first starts into empty
            // places (all are alike); the started replica carries the transition on.
            let mut fills = effect.fills.iter();
            for transition in open.iter_mut().filter(|t| &t.service == service) {
                if let Begun::Stopped(stopped) = &transition.begun
                    && let Some(started) = fills.next()
                {
                    transition.begun = Begun::Refilled {
                        stopped: stopped.clone(),
                        started: started.clone(),
                    };
                }
            }
            let places = format!(
                "{} places held of placement's {}",
                effect.held, effect.wanted
            );
            for id in &effect.beyond {
                lines.push(format!(
                    "{me}: rollout of {service} started {id} as a replacement ({places})"
                ));
                open.push(begin(Begun::Started(id.clone())));
            }
            // The places left empty are at most the node's shortfall: the pass's stops
            // first (a stop of a replica beyond the count leaves no place empty), then the
            // newest of the earlier ones.
            let shortfall = effect.shortfall() as usize;
            let stops = effect.stopped.len().min(shortfall);
            keep_newest_empty(open, service, shortfall - stops);
            for id in effect.stopped.iter().take(stops) {
                lines.push(format!(
                    "{me}: rollout of {service} stopped {id}, leaving its place empty ({places})"
                ));
                open.push(begin(Begun::Stopped(id.clone())));
            }
        }
        // Over: the new replica is reported ready, or its record is gone.
        let own: BTreeSet<&ContainerId> = state
            .containers()
            .filter(|record| &record.node == me)
            .map(|record| &record.id)
            .collect();
        open.retain(|transition| match &transition.begun {
            Begun::Started(id) | Begun::Refilled { started: id, .. } => {
                own.contains(id) && !reported_ready(&state, me, id)
            }
            Begun::Stopped(_) => true,
        });
        let begun = lines.len();
        drop(state);
        self.stats.replacements_begun += begun;
        for line in lines {
            trace!(self, "{line}");
        }
    }
}

/// Keeps the newest `count` of the places stops left empty for `service` on one node.
fn keep_newest_empty(open: &mut Vec<Transition>, service: &ServiceName, count: usize) {
    let empty: Vec<usize> = open
        .iter()
        .enumerate()
        .filter(|(_, t)| &t.service == service && matches!(t.begun, Begun::Stopped(_)))
        .map(|(index, _)| index)
        .collect();
    let stale: BTreeSet<usize> = empty
        .iter()
        .take(empty.len().saturating_sub(count))
        .copied()
        .collect();
    let mut index = 0;
    open.retain(|_| {
        index += 1;
        !stale.contains(&(index - 1))
    });
}

impl World {
    /// What the pass of `node` did to each service it started or stopped a replica of,
    /// judged by the node's records and runtime after it against placement's count in the
    /// node's view.
    fn pass_effects(
        &self,
        node: usize,
        plan: &Plan,
        committed: &[Delta],
        before: &RuntimeSpecs,
    ) -> Vec<PassEffect> {
        let mut added: BTreeSet<&ContainerId> = BTreeSet::new();
        let mut forgotten: BTreeSet<&ContainerId> = BTreeSet::new();
        for change in committed.iter().flat_map(Delta::changes) {
            match change {
                Change::Container { id, entry, .. } if entry.value.is_some() => {
                    added.insert(id);
                }
                Change::Container { id, .. } => {
                    forgotten.insert(id);
                }
                // A failed update rewrote a service in this pass, so placement may differ
                // from the one the pass planned from: its starts and stops are not judged
                // (leaving them out only weakens the check).
                Change::Service { .. } => return Vec::new(),
                _ => {}
            }
        }
        // A failed start's record is undone in the same pass.
        added.retain(|id| !forgotten.contains(*id));
        let sim = &self.nodes[node];
        let me = &sim.id;
        let state = sim.state();
        let own: Vec<&ContainerRecord> = state
            .containers()
            .filter(|record| &record.node == me)
            .collect();
        let mut touched: BTreeMap<&ServiceName, (Vec<ContainerId>, Vec<&ContainerRecord>)> =
            BTreeMap::new();
        for record in &own {
            if added.contains(&record.id) {
                let (started, _) = touched.entry(&record.service).or_default();
                started.push(record.id.clone());
            }
        }
        for record in plan
            .removals
            .iter()
            .filter_map(|removal| removal.record.as_ref())
        {
            if forgotten.contains(&record.id) && running(before, &record.id) {
                let (_, stopped) = touched.entry(&record.service).or_default();
                stopped.push(record);
            }
        }
        if touched.is_empty() {
            return Vec::new();
        }
        let live = live_set(
            &state,
            me,
            &Liveness::heartbeats(sim.clock.now(), self.config.down_after_ms),
        );
        let placement = ClusterView::read(&state, me, &live).placement();
        let after = sim.runtime.specs();
        let mut effects = Vec::new();
        for (service, (mut started, stopped)) in touched {
            let Some(current) = Current::of(&state, service) else {
                continue;
            };
            let mine: Vec<&ContainerRecord> = own
                .iter()
                .filter(|record| &record.service == service)
                .copied()
                .collect();
            let held = current.held(&mine, &after);
            let wanted = placement.on(service, me);
            started.sort();
            let beyond = (held.saturating_sub(wanted) as usize).min(started.len());
            let fills = started.split_off(beyond);
            // Outdated replicas of a service without an earlier workload go at once.
            let stopped = if current.record.has_earlier_workload() {
                stopped
                    .into_iter()
                    .filter(|record| !current.runs(record, before))
                    .map(|record| record.id.clone())
                    .collect()
            } else {
                Vec::new()
            };
            effects.push(PassEffect {
                service: service.clone(),
                version: current.version,
                beyond: started,
                fills,
                stopped,
                held,
                wanted,
            });
        }
        effects
    }
}
