//! Invariant 14, rolling updates pace themselves, checked: after every event that can bring
//! connected nodes to one view (a delivery that applied writes, a partition or heal, a node
//! going down or up) and in each settle round once every node has synced, for each
//! connected component of up nodes and each service with a replacement open on one of its
//! nodes (`transitions`), the component is *synced* when all its nodes compute the same
//! live and drained members, the same version of every service (placement depends on all
//! of them) and the same records and reported statuses of that service: one view. Then the
//! replacements that view's rollout began on the component's nodes (its version, its live
//! members), on nodes not drained, whose new replica is still recorded, current by its
//! runtime and not reported ready, or whose place is still empty by its node's records and
//! runtime, number at most the current spec's `update.max_parallel`.
//!
//! Left out, by design: holes (filled at once, never paced); replicas on drained nodes
//! (outdated by definition); nodes outside the component (their side paces itself); and
//! components whose nodes do not share a view (a view may lag, and only a shared one is
//! what the guarantee is about). Each only makes the check weaker, never stricter.

use std::collections::BTreeSet;

use shoal_crdt::{ClusterState, ContainerId, ContainerRecord, NodeId, ServiceName, Timestamp};

use super::checks::Violation;
use super::node::SimNode;
use super::transitions::{Begun, Current, Transition, reported_ready};
use super::world::World;
use crate::schedule::ClusterView;
use crate::state::Clock;
use crate::state::members::{Liveness, heartbeat_is_recent, live_set};

/// The view of one service a node plans from, as far as its rollout reads it (node
/// capacities and labels never change in a run, so the live and drained members fix
/// placement with the services' versions).
#[derive(Debug, PartialEq, Eq)]
struct ServiceView {
    live: BTreeSet<NodeId>,
    drained: BTreeSet<NodeId>,
    versions: Vec<(ServiceName, Timestamp)>,
    /// The service's records, each with the spec digest and readiness its node reports.
    replicas: Vec<(ContainerId, NodeId, Timestamp, Option<String>, bool)>,
}

/// The records of `service` in `state`, each with the spec digest and readiness its node
/// reports.
fn replicas_of<'a>(
    state: &'a ClusterState,
    service: &'a ServiceName,
) -> impl Iterator<
    Item = (
        &'a ContainerId,
        &'a NodeId,
        Timestamp,
        Option<&'a String>,
        bool,
    ),
> + 'a {
    state
        .containers()
        .filter(move |record| &record.service == service)
        .map(move |record| {
            let status = state
                .node_status(&record.node)
                .and_then(|status| status.containers.get(&record.id));
            (
                &record.id,
                &record.node,
                record.spec_version,
                status.and_then(|status| status.spec.as_ref()),
                status.is_some_and(|status| status.ready),
            )
        })
}

impl ServiceView {
    fn read(node: &SimNode, service: &ServiceName, down_after_ms: u64) -> ServiceView {
        let state = node.state();
        let live = live_set(
            &state,
            &node.id,
            &Liveness::heartbeats(node.clock.now(), down_after_ms),
        );
        let drained = state
            .nodes()
            .filter(|(id, meta)| meta.drain.is_some() && live.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        let versions = state
            .services()
            .map(|(name, _, version)| (name.clone(), version))
            .collect();
        let replicas = replicas_of(&state, service)
            .map(|(id, on, version, spec, ready)| {
                (id.clone(), on.clone(), version, spec.cloned(), ready)
            })
            .collect();
        ServiceView {
            live,
            drained,
            versions,
            replicas,
        }
    }

    /// Whether `node` plans `service` from this view too (compared piece by piece, without
    /// building its view: most of the time it differs). `same_state`: its replica holds the
    /// same writes as the one this view was read from, so only liveness may differ.
    fn shared_by(
        &self,
        node: &SimNode,
        service: &ServiceName,
        down_after_ms: u64,
        same_state: bool,
    ) -> bool {
        let state = node.state();
        if !same_state {
            let versions = state.services().map(|(name, _, version)| (name, version));
            if !versions.eq(self.versions.iter().map(|(name, version)| (name, *version))) {
                return false;
            }
            let replicas = replicas_of(&state, service);
            let mine = self
                .replicas
                .iter()
                .map(|(id, on, version, spec, ready)| (id, on, *version, spec.as_ref(), *ready));
            if !replicas.eq(mine) {
                return false;
            }
        }
        let now = node.clock.now();
        let (mut live, mut drained) = (0, 0);
        for (id, meta) in state.nodes() {
            if *id != node.id && !heartbeat_is_recent(meta, now, down_after_ms) {
                continue;
            }
            if !self.live.contains(id) {
                return false;
            }
            live += 1;
            if meta.drain.is_some() {
                if !self.drained.contains(id) {
                    return false;
                }
                drained += 1;
            }
        }
        live == self.live.len() && drained == self.drained.len()
    }
}

impl World {
    /// The connected components of up nodes: nodes whose daemons run, grouped by which
    /// can reach which.
    fn components(&self) -> Vec<Vec<usize>> {
        let mut components: Vec<Vec<usize>> = Vec::new();
        for node in (0..self.nodes.len()).filter(|node| self.nodes[*node].is_running()) {
            match components
                .iter_mut()
                .find(|component| self.network.connected(component[0], node))
            {
                Some(component) => component.push(node),
                None => components.push(vec![node]),
            }
        }
        components
    }

    /// The view of `service` every node of `component` plans from, if they share one.
    fn shared_view(&self, component: &[usize], service: &ServiceName) -> Option<ServiceView> {
        let down_after_ms = self.config.down_after_ms;
        let (first, others) = component.split_first()?;
        let first = &self.nodes[*first];
        let view = ServiceView::read(first, service, down_after_ms);
        for other in others {
            let other = &self.nodes[*other];
            // Equal version vectors are equal states; only liveness (by each node's own
            // clock) may still differ.
            let same_state = other.replica().version_vector() == first.replica().version_vector();
            if !view.shared_by(other, service, down_after_ms, same_state) {
                return None;
            }
        }
        Some(view)
    }

    /// Invariant 14 on every connected component of up nodes that shares one view of a
    /// service with a replacement open on one of its nodes.
    pub(crate) fn check_transitions(&mut self) -> Result<(), Violation> {
        if !self.transitions.take_moved() || self.transitions.is_empty() {
            return Ok(());
        }
        for component in self.components() {
            let services: BTreeSet<ServiceName> = component
                .iter()
                .filter_map(|node| self.transitions.open.get(node))
                .flatten()
                .map(|transition| transition.service.clone())
                .collect();
            for service in services {
                let Some(view) = self.shared_view(&component, &service) else {
                    continue;
                };
                let Some((count, max_parallel)) =
                    self.in_transition(&component, &service, &view)?
                else {
                    continue;
                };
                self.stats.transition_checks += 1;
                if count == max_parallel {
                    self.stats.transition_checks_at_limit += 1;
                }
            }
        }
        Ok(())
    }

    /// The replacements of `service` in transition on the nodes of `component`, which
    /// share `view`, and the current `max_parallel`; a violation if they are more. `None`
    /// when no replacement that view's rollout began is open there: nothing to check.
    fn in_transition(
        &self,
        component: &[usize],
        service: &ServiceName,
        view: &ServiceView,
    ) -> Result<Option<(u32, u32)>, Violation> {
        let first = &self.nodes[component[0]];
        let state = first.state();
        let Some(current) = Current::of(&state, service) else {
            return Ok(None);
        };
        let policy = &current.record.spec.update;
        let records: Vec<&ContainerRecord> = state
            .containers()
            .filter(|record| &record.service == service)
            .collect();
        let mut placement = None;
        let mut open_here = 0usize;
        let mut counted: Vec<String> = Vec::new();
        for &index in component {
            let node = &self.nodes[index];
            if view.drained.contains(&node.id) {
                continue;
            }
            let open: Vec<&Transition> = self
                .transitions
                .open
                .get(&index)
                .into_iter()
                .flatten()
                .filter(|t| {
                    &t.service == service && t.version == current.version && t.live == view.live
                })
                .collect();
            if open.is_empty() {
                continue;
            }
            open_here += open.len();
            let runtime = node.runtime.specs();
            let mine: Vec<&ContainerRecord> = records
                .iter()
                .filter(|record| record.node == node.id)
                .copied()
                .collect();
            let mut empty = Vec::new();
            for transition in open {
                match &transition.begun {
                    Begun::Started(id) | Begun::Refilled { started: id, .. } => {
                        let pending = mine
                            .iter()
                            .find(|record| &record.id == id)
                            .is_some_and(|record| current.runs(record, &runtime))
                            && !reported_ready(&state, &node.id, id);
                        if pending {
                            let how = match &transition.begun {
                                Begun::Refilled { stopped, .. } => {
                                    format!("stopped {stopped} and started {id}")
                                }
                                _ => format!("started {id}"),
                            };
                            counted.push(format!(
                                "{} {how} at {} ms, not reported ready",
                                node.id, transition.at_ms
                            ));
                        }
                    }
                    Begun::Stopped(id) => empty.push((id, transition.at_ms)),
                }
            }
            if !empty.is_empty() {
                let placement = placement.get_or_insert_with(|| {
                    ClusterView::read(&state, &first.id, &view.live).placement()
                });
                let shortfall = placement
                    .on(service, &node.id)
                    .saturating_sub(current.held(&mine, &runtime));
                for (id, at_ms) in empty.iter().rev().take(shortfall as usize) {
                    counted.push(format!(
                        "{} stopped {id} at {at_ms} ms, its place still empty",
                        node.id
                    ));
                }
            }
        }
        if open_here == 0 {
            return Ok(None);
        }
        let count = u32::try_from(counted.len()).unwrap_or(u32::MAX);
        if count > policy.max_parallel {
            let nodes: Vec<String> = component
                .iter()
                .map(|index| self.nodes[*index].id.to_string())
                .collect();
            return Err(Violation(format!(
                "service {service} ({:?}, max_parallel {}): {count} replacements in transition \
                 in the view {} connected nodes share ({}): {}",
                policy.order,
                policy.max_parallel,
                nodes.len(),
                nodes.join(" "),
                counted.join("; ")
            )));
        }
        Ok(Some((count, policy.max_parallel)))
    }
}
