//! The cluster's invariants, each failure naming the node, service or container that broke
//! it. Checked along the run:
//! - (4) a node only ever writes its own records: every delta a node emits, of a pass, a
//!   heartbeat or an operator command, carries only the changes that writer may make;
//! - (5) after every pass that ran to its end, the node's runtime holds no container without
//!   a record, and (2) its network holds no address twice;
//! - (6) a removed container id is never recorded again (`Ledger::pass_delta`) nor left in
//!   the runtime that removed it;
//! - (14) rolling updates pace themselves: wherever the up nodes of a connected component
//!   share one view of a service, at most its current `update.max_parallel` of the
//!   replacements that view's rollout began are in transition there: current replicas
//!   started beyond their node's count and not yet reported ready, and places a stopped
//!   outdated replica left empty. Judged along the run from the records and runtimes
//!   (`transitions` tracks what each pass began; `pacing` counts, and says why holes,
//!   drained nodes and views not shared are left out).
//!
//! Checked once the cluster is at rest (`settled`):
//! 7. every up node's replica has the same digest, and all agree who is live: the up nodes;
//! 1. every service has, on every live node, exactly the replicas the converged placement
//!    gives that node (so `replicas` minus what placement reports unplaced cluster-wide),
//!    each running unless its restart policy leaves it stopped after how it last ended; a
//!    service whose image is refused has none, and an error on every node placed to run it;
//! 2. no address is held twice: no conflicting allocations, every allocation is the address
//!    of a recorded container and every recorded address is allocated, and no node's
//!    network attaches one address twice or an address other than its record's;
//! 3. every live node's counters equal what its records reserve;
//! 5. every live node's runtime holds only containers it has records of;
//! 6. no removed container id is held anywhere, nor recorded again once the converged
//!    state holds its removal, and a service removed at HLC r is absent or present only with
//!    a version after r (a removal only its writer held, lost for good with its machine,
//!    is counted instead; a removal by a node that is up is always in the converged state);
//! 8. every live node routes to the subnet of every other live node, and to nothing else;
//! 9. published host ports are unique per node: no live node holds containers of two
//!    host-mode services whose ports collide, nor two containers of one, and a port a
//!    mesh-mode service runs with is published by no other running service;
//! 10. every up node's status report in the converged state lists exactly its records, and
//!     says running exactly for the containers its runtime runs;
//! 11. no container runs on a node its service's constraints exclude;
//! 12. after the heal one version: every replica runs its service's current spec (rolling
//!     updates finished), unless the update is paused (it failed with nothing to roll back to);
//! 13. no drained live node holds a container.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use shoal_crdt::state::Change;
use shoal_crdt::{ContainerId, ContainerRecord, Delta, NodeId, Resource};
use shoal_oci::ContainerStatus;

use super::ledger::{Ledger, Removal};
use super::node::{BAD_IMAGE_PREFIX, SimNode, Writer};
use super::world::World;
use crate::schedule::ClusterView;
use crate::schedule::records::reserved_by_records;
use crate::schedule::restarts::{short_digest, spec_digest};
use crate::state::Clock;
use crate::state::members::{Liveness, live_set};

pub(crate) use shoal_crdt::sim::harness::Violation;

/// What a settled run looked like, for its report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) digest: [u8; 32],
    pub(crate) services_unplaced: usize,
    pub(crate) left_stopped: usize,
    /// Removals a machine lost for good took with it before anyone received them.
    pub(crate) lost_removals: usize,
}

/// Invariant 4: the changes of a local commit of `writer` are its own to make.
pub(crate) fn own_delta(writer: &NodeId, source: Writer, delta: &Delta) -> Result<(), Violation> {
    for change in delta.changes() {
        let dot = change.dot();
        if &dot.node != writer {
            return Err(Violation(format!(
                "a {source:?} commit of {writer} carries a write of {} ({:?})",
                dot.node,
                change.key()
            )));
        }
        let mine = match (source, change) {
            (Writer::Pass, Change::Container { id, add, entry }) => {
                if &add.node != writer {
                    return Err(Violation(format!(
                        "{writer}'s pass removed container {id}, which {} recorded",
                        add.node
                    )));
                }
                entry
                    .value
                    .as_ref()
                    .is_none_or(|record| &record.node == writer)
            }
            (Writer::Pass, Change::Ip { ip, add, entry }) => {
                if &add.node != writer {
                    return Err(Violation(format!(
                        "{writer}'s pass released address {ip}, which {} allocated",
                        add.node
                    )));
                }
                entry
                    .value
                    .as_ref()
                    .is_none_or(|claim| &claim.node == writer)
            }
            (Writer::Pass, Change::Counter { node, .. }) => node == writer,
            (Writer::Pass, Change::Status { node, entry }) => {
                node == writer && entry.value.is_some()
            }
            (Writer::Heartbeat, Change::Node { node, entry }) => {
                node == writer && entry.value.is_some()
            }
            (Writer::Operator, Change::Service { .. }) => true,
            // A pass writes a service only as a failed update's outcome: the last good
            // spec back, or the failed one paused.
            (Writer::Pass, Change::Service { entry, .. }) => entry
                .value
                .as_ref()
                .is_some_and(|record| record.rollback_of.is_some() || record.failed.is_some()),
            _ => false,
        };
        if !mine {
            return Err(Violation(format!(
                "a {source:?} commit of {writer} wrote {:?}, which is not its own to write",
                change.key()
            )));
        }
    }
    Ok(())
}

/// After a pass that ran to its end: invariants 5, 2 and 6 on that node.
pub(crate) fn after_pass(node: &SimNode, ledger: &Ledger) -> Result<(), Violation> {
    let me = &node.id;
    let state = node.state();
    let records: BTreeMap<&str, &ContainerRecord> = state
        .containers()
        .filter(|record| &record.node == me)
        .map(|record| (record.id.as_str(), record))
        .collect();
    for (id, status) in node.runtime.containers() {
        if !records.contains_key(id.as_str()) {
            return Err(Violation(format!(
                "{me} holds container {id} ({status:?}) without a record after a pass"
            )));
        }
        if let Some(removal) = ledger.was_removed(&id) {
            return Err(Violation(format!(
                "{me} holds container {id} after {} removed its record at {} ms",
                removal.by, removal.at_ms
            )));
        }
    }
    unique_attachments(node, &records)
}

/// No address attached twice on `node`, and each attachment with its record's address.
fn unique_attachments(
    node: &SimNode,
    records: &BTreeMap<&str, &ContainerRecord>,
) -> Result<(), Violation> {
    let me = &node.id;
    let mut holders: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (id, ip) in node.network.attachments() {
        if let Some(other) = holders.insert(ip, id.clone()) {
            return Err(Violation(format!(
                "{me} attached address {ip} to both {other} and {id}"
            )));
        }
        if let Some(record) = records.get(id.as_str())
            && record.ip != Some(ip)
        {
            return Err(Violation(format!(
                "{me} attached container {id} with {ip}, its record says {:?}",
                record.ip
            )));
        }
    }
    Ok(())
}

/// The checks of a cluster at rest.
pub(crate) fn settled(world: &World) -> Result<Settled, Violation> {
    let up: Vec<&SimNode> = world
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .collect();
    let reference = up.first().ok_or("no node is up at the end")?;
    let digest = converged(&up)?;
    let state = reference.state();
    let up_ids: BTreeSet<NodeId> = up.iter().map(|node| node.id.clone()).collect();
    for node in &up {
        let live = live_set(
            &node.state(),
            &node.id,
            &Liveness::heartbeats(node.clock.now(), world.config.down_after_ms),
        );
        if live != up_ids {
            return Err(Violation(format!(
                "{} sees {live:?} live, the up nodes are {up_ids:?}",
                node.id
            )));
        }
    }
    let view = ClusterView::read(&state, &reference.id, &up_ids);
    let placement = view.placement();
    let mut left_stopped = 0;
    let mut lost_removals = 0;

    // 1. Replicas as placed, running unless their policy leaves them stopped.
    for (name, spec, _) in state.services() {
        let bad_image = spec.image.starts_with(BAD_IMAGE_PREFIX);
        let unplaced = placement.unplaced.get(name).copied().unwrap_or(0);
        let recorded = state
            .containers()
            .filter(|record| &record.service == name && up_ids.contains(&record.node))
            .count();
        let placeable = if spec.mode.is_replicated() {
            spec.replicas.checked_sub(unplaced).ok_or_else(|| {
                format!(
                    "service {name}: {unplaced} unplaced of {} replicas",
                    spec.replicas
                )
            })?
        } else {
            // Global: one per eligible node with room.
            placement
                .replicas
                .get(name)
                .map_or(0, |nodes| nodes.values().sum())
        };
        let wanted = if bad_image { 0 } else { placeable };
        // A paused update (it failed without a good version to roll back to) leaves the
        // outdated replicas serving.
        let paused = state
            .service_record(name)
            .is_some_and(|(record, _)| record.failed.is_some());
        if recorded != wanted as usize && !paused {
            return Err(Violation(format!(
                "service {name} has {recorded} containers on live nodes, wants {} replicas of \
                 which {unplaced} found no room{}",
                spec.replicas,
                if bad_image {
                    ", and its image is refused"
                } else {
                    ""
                }
            )));
        }
        for (index, node) in world.nodes.iter().enumerate() {
            if !node.is_running() {
                continue;
            }
            let records: Vec<&ContainerRecord> = state
                .containers()
                .filter(|record| &record.service == name && record.node == node.id)
                .collect();
            let placed = placement.on(name, &node.id);
            if paused {
                continue;
            }
            if bad_image {
                if let Some(record) = records.first() {
                    return Err(Violation(format!(
                        "service {name} has image {} that is refused, yet {} records container {}",
                        spec.image, node.id, record.id
                    )));
                }
                if placed > 0 && !planner_errors(node).contains_key(name) {
                    return Err(Violation(format!(
                        "service {name} has image {} that is refused; placement gives {} {placed} \
                         replicas and it reports no error for the service",
                        spec.image, node.id
                    )));
                }
                continue;
            }
            if records.len() != placed as usize {
                let ids: Vec<&str> = records.iter().map(|record| record.id.as_str()).collect();
                return Err(Violation(format!(
                    "service {name} (replicas {}, unplaced {unplaced}): {} holds {} records \
                     {ids:?}, placement gives it {placed}",
                    spec.replicas,
                    node.id,
                    records.len()
                )));
            }
            let statuses: BTreeMap<String, ContainerStatus> =
                node.runtime.containers().into_iter().collect();
            for record in records {
                let id = record.id.as_str();
                let status = statuses.get(id);
                if status == Some(&ContainerStatus::Running) {
                    continue;
                }
                world
                    .ledger
                    .may_stay_stopped(index, id, spec.restart)
                    .map_err(|why| {
                        format!(
                            "service {name}: container {id} on {} is {status:?} with restart \
                             {:?}, but {why}",
                            node.id, spec.restart
                        )
                    })?;
                left_stopped += 1;
            }
        }
    }
    for record in state.containers() {
        if up_ids.contains(&record.node) && state.service(&record.service).is_none() {
            return Err(Violation(format!(
                "{} still records container {} of service {}, which is removed",
                record.node, record.id, record.service
            )));
        }
    }

    // 2. No address held twice.
    addresses(&state, &up)?;

    // 3. Counters follow records.
    for node in &up {
        let reserved = reserved_by_records(&state, &node.id);
        for (resource, expected) in [
            (Resource::CpuMillis, reserved.cpu_millis),
            (Resource::MemoryBytes, reserved.memory_bytes),
            (Resource::Containers, u64::from(reserved.containers)),
        ] {
            let used = state.resource_used(&node.id, resource);
            if i64::try_from(expected).ok() != Some(used) {
                return Err(Violation(format!(
                    "{}'s {resource:?} counter is {used}, its records reserve {expected}",
                    node.id
                )));
            }
        }
    }

    // 5. No container without a record.
    for node in world.nodes.iter() {
        let own: BTreeSet<&str> = state
            .containers()
            .filter(|record| record.node == node.id)
            .map(|record| record.id.as_str())
            .collect();
        for (id, status) in node.runtime.containers() {
            if !node.is_running() {
                // A machine lost for good keeps its ended containers on its disk; it
                // must not run any.
                if status == shoal_oci::ContainerStatus::Running {
                    return Err(Violation(format!(
                        "{}, lost for good, still runs container {id}",
                        node.id
                    )));
                }
                continue;
            }
            if !own.contains(id.as_str()) {
                return Err(Violation(format!(
                    "{} holds container {id} ({status:?}) without a record",
                    node.id
                )));
            }
        }
    }

    // 6. Nothing removed comes back: every removal the converged state holds (all but
    // those a machine lost for good took with it) is still in force.
    let converged_vv = reference.replica().version_vector().clone();
    let holds = |removal: &Removal| converged_vv.get(&removal.by) >= removal.counter;
    for (id, removal) in world.ledger.removed() {
        for node in &up {
            if node.runtime.holds(id.as_str()) {
                return Err(Violation(format!(
                    "container {id}, removed by {} at {} ms, is held by {}",
                    removal.by, removal.at_ms, node.id
                )));
            }
        }
        if !holds(removal) {
            lost_removals += 1;
            continue;
        }
        if let Some(record) = state.container(id) {
            return Err(Violation(format!(
                "container {id}, removed by {} at {} ms, is recorded again on {}",
                removal.by, removal.at_ms, record.node
            )));
        }
    }
    for (name, removal) in world.ledger.service_removals() {
        if !holds(removal) {
            lost_removals += 1;
            continue;
        }
        if let Some((_, version)) = state.service(name)
            && version <= removal.hlc
        {
            return Err(Violation(format!(
                "service {name}, removed by {} at {}, is back with version {version}",
                removal.by, removal.hlc
            )));
        }
    }
    for removal in world.ledger.removed().values().chain(
        world
            .ledger
            .service_removals()
            .iter()
            .map(|(_, removal)| removal),
    ) {
        if !holds(removal) && up_ids.contains(&removal.by) {
            return Err(Violation(format!(
                "a removal by {} at {} ms (dot {}) is not in the converged state, yet {0} is up",
                removal.by, removal.at_ms, removal.counter
            )));
        }
    }

    // 8. Routes to every other live member's subnet.
    for node in &up {
        let expected: BTreeMap<_, _> = up
            .iter()
            .filter(|other| other.id != node.id)
            .filter_map(|other| match other.machine.address.ip() {
                IpAddr::V4(ip) => Some((other.machine.subnet, ip)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let routes = node.network.routes();
        if routes != expected {
            return Err(Violation(format!(
                "{} routes {routes:?}, the other live members' subnets are {expected:?}",
                node.id
            )));
        }
    }

    // 9. Host ports unique per node.
    host_ports(&state, &up_ids)?;

    // 11. No container on a live node its service's constraints exclude, and a global
    // service on every eligible node that has room (placement says which; 1. checked the
    // records). A node that is down cannot remove its records (they are owner-only): they
    // stay, whatever the spec says now, until it comes back or is evicted. A paused update
    // (failed with no version to roll back to) leaves its outdated replicas where the
    // earlier spec placed them.
    for record in state.containers().filter(|record| {
        up_ids.contains(&record.node)
            && state
                .service_record(&record.service)
                .is_none_or(|(service, _)| service.failed.is_none())
    }) {
        let (Some((spec, _)), Some(meta)) =
            (state.service(&record.service), state.node(&record.node))
        else {
            continue;
        };
        if let Some(constraint) = spec
            .placement_constraints()
            .unwrap_or_default()
            .iter()
            .find(|constraint| !constraint.matches(&meta.labels))
        {
            return Err(Violation(format!(
                "{} runs container {} of service {}, whose constraint {constraint:?} it fails \
                 (labels {:?})",
                record.node, record.id, record.service, meta.labels
            )));
        }
    }

    // 10. Status reports are the runtimes' truth.
    for node in &up {
        let report = state.node_status(&node.id).cloned().unwrap_or_default();
        let own: BTreeSet<&ContainerId> = state
            .containers()
            .filter(|record| record.node == node.id)
            .map(|record| &record.id)
            .collect();
        let reported: BTreeSet<&ContainerId> = report.containers.keys().collect();
        if own != reported {
            return Err(Violation(format!(
                "{} reports containers {reported:?}, its records are {own:?}",
                node.id
            )));
        }
        let statuses: BTreeMap<String, ContainerStatus> =
            node.runtime.containers().into_iter().collect();
        for (id, status) in &report.containers {
            let runs = statuses.get(id.as_str()) == Some(&ContainerStatus::Running);
            if runs != (status.state == shoal_crdt::RunState::Running) {
                return Err(Violation(format!(
                    "{} reports container {id} as {}, its runtime says {:?}",
                    node.id,
                    status.state.label(),
                    statuses.get(id.as_str())
                )));
            }
        }
    }

    // 12. One version: every replica on an up node runs its service's current spec (its
    // status says which), unless the service's update is paused.
    for (name, spec, _) in state.services() {
        let paused = state
            .service_record(name)
            .is_some_and(|(record, _)| record.failed.is_some());
        if paused {
            continue;
        }
        let current = short_digest(&spec_digest(spec));
        for record in state
            .containers()
            .filter(|record| &record.service == name && up_ids.contains(&record.node))
        {
            let runs = state
                .node_status(&record.node)
                .and_then(|status| status.containers.get(&record.id))
                .and_then(|status| status.spec.clone());
            if runs.as_ref().is_some_and(|runs| *runs != current) {
                return Err(Violation(format!(
                    "{} still runs {} of service {name} from spec {runs:?}, the current one is {current}",
                    record.node, record.id
                )));
            }
        }
    }

    // 13. A drained node runs nothing once the cluster is at rest: its replicas were
    // started elsewhere and stopped on it, or stopped at the drain's deadline.
    for record in state.containers() {
        let drained = state
            .node(&record.node)
            .is_some_and(|meta| meta.drain.is_some());
        if drained && up_ids.contains(&record.node) {
            return Err(Violation(format!(
                "drained {} still holds container {} of {}",
                record.node, record.id, record.service
            )));
        }
    }

    Ok(Settled {
        digest,
        services_unplaced: placement.unplaced.len(),
        left_stopped,
        lost_removals,
    })
}

/// Invariant 9: no live node publishes one host port for two containers, and no mesh port
/// is taken by another running service.
fn host_ports(state: &shoal_crdt::ClusterState, live: &BTreeSet<NodeId>) -> Result<(), Violation> {
    let mut taken: BTreeMap<&NodeId, Vec<(shoal_crdt::HostPort, &ContainerId)>> = BTreeMap::new();
    let mut mesh: Vec<(shoal_crdt::HostPort, &shoal_crdt::ServiceName)> = Vec::new();
    for record in state
        .containers()
        .filter(|record| live.contains(&record.node))
    {
        let Some((spec, _)) = state.service(&record.service) else {
            continue;
        };
        for port in spec.host_ports() {
            if !spec.publish.mode.is_host() {
                if let Some((_, holder)) = mesh
                    .iter()
                    .find(|(other, holder)| other.collides(&port) && *holder != &record.service)
                {
                    return Err(Violation(format!(
                        "mesh port {port} runs for services {holder} and {}",
                        record.service
                    )));
                }
                mesh.push((port, &record.service));
                continue;
            }
            let node = taken.entry(&record.node).or_default();
            if let Some((_, other)) = node.iter().find(|(held, _)| held.collides(&port)) {
                return Err(Violation(format!(
                    "{} publishes host port {port} for containers {other} and {}",
                    record.node, record.id
                )));
            }
            node.push((port, &record.id));
        }
    }
    for (port, service) in &mesh {
        for (node, held) in &taken {
            if let Some((_, id)) = held.iter().find(|(other, _)| other.collides(port)) {
                return Err(Violation(format!(
                    "{node} publishes host port {port} for container {id} while mesh service \
                     {service} runs with it"
                )));
            }
        }
    }
    Ok(())
}

/// Invariant 7: every up node's replica has the same digest; returns it.
fn converged(up: &[&SimNode]) -> Result<[u8; 32], Violation> {
    let reference = up.first().ok_or("no node is up at the end")?;
    let digest = reference.replica().digest();
    for node in up {
        if node.replica().digest() != digest {
            return Err(Violation(format!(
                "{} and {} did not converge: version vectors {:?} and {:?}",
                reference.id,
                node.id,
                reference.replica().version_vector(),
                node.replica().version_vector()
            )));
        }
    }
    Ok(digest)
}

/// Invariant 2 on the converged state and every up node's network.
fn addresses(state: &shoal_crdt::ClusterState, up: &[&SimNode]) -> Result<(), Violation> {
    if let Some(conflict) = state.ip_conflicts().first() {
        return Err(Violation(format!(
            "address {} is held by container {} on {} and by {:?}",
            conflict.ip, conflict.winner.container, conflict.winner.node, conflict.losers
        )));
    }
    let records: BTreeMap<&ContainerId, &ContainerRecord> = state
        .containers()
        .map(|record| (&record.id, record))
        .collect();
    let allocations = state.ip_allocations();
    let mut allocated: BTreeMap<&ContainerId, Ipv4Addr> = BTreeMap::new();
    for allocation in &allocations {
        let record = records.get(&allocation.container);
        if record
            .is_none_or(|record| record.node != allocation.node || record.ip != Some(allocation.ip))
        {
            return Err(Violation(format!(
                "address {} is allocated to container {} on {}, whose record is {record:?}",
                allocation.ip, allocation.container, allocation.node
            )));
        }
        if let Some(first) = allocated.insert(&allocation.container, allocation.ip) {
            return Err(Violation(format!(
                "container {} on {} holds two addresses, {first} and {}",
                allocation.container, allocation.node, allocation.ip
            )));
        }
    }
    for record in records.values() {
        if let Some(ip) = record.ip
            && allocated.get(&record.id) != Some(&ip)
        {
            return Err(Violation(format!(
                "container {} on {} has address {ip} in its record and no allocation of it",
                record.id, record.node
            )));
        }
    }
    for node in up {
        let own: BTreeMap<&str, &ContainerRecord> = state
            .containers()
            .filter(|record| record.node == node.id)
            .map(|record| (record.id.as_str(), record))
            .collect();
        unique_attachments(node, &own)?;
        for (id, ip) in node.network.attachments() {
            if !own.contains_key(id.as_str()) {
                return Err(Violation(format!(
                    "{} attaches container {id} with {ip} and has no record of it",
                    node.id
                )));
            }
        }
    }
    Ok(())
}

fn planner_errors(node: &SimNode) -> BTreeMap<shoal_crdt::ServiceName, String> {
    node.planner
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .errors()
}
