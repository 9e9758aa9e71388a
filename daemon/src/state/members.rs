//! Who is in the cluster and who is live, as pure functions of the replicated state and the
//! time: a member is live when its heartbeat (the HLC of its latest metadata write) is less
//! than `down_after_ms` old; this node is always live to itself. The node, the planner's view
//! and the cluster simulator all ask these functions, so they agree on liveness.

use std::collections::BTreeSet;

use shoal_crdt::state::Change;
use shoal_crdt::{ClusterState, Delta, NTP64, NodeId, NodeMeta};

use super::clock::millis_between;

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub meta: NodeMeta,
    pub live: bool,
    pub is_self: bool,
    /// Age of its latest heartbeat at `now`.
    pub heartbeat_age_ms: u64,
}

/// Whether `meta`'s heartbeat is recent at `now`.
pub fn heartbeat_is_recent(meta: &NodeMeta, now: NTP64, down_after_ms: u64) -> bool {
    millis_between(now, *meta.heartbeat.get_time()) < down_after_ms
}

/// Every member in the node-metadata map, with its liveness at `now`.
pub fn members(state: &ClusterState, me: &NodeId, now: NTP64, down_after_ms: u64) -> Vec<Member> {
    state
        .nodes()
        .map(|(id, meta)| {
            let is_self = id == me;
            Member {
                id: id.clone(),
                meta: meta.clone(),
                live: is_self || heartbeat_is_recent(meta, now, down_after_ms),
                is_self,
                heartbeat_age_ms: millis_between(now, *meta.heartbeat.get_time()),
            }
        })
        .collect()
}

/// The ids of the live members (this node included once it has written its metadata).
pub fn live_set(
    state: &ClusterState,
    me: &NodeId,
    now: NTP64,
    down_after_ms: u64,
) -> BTreeSet<NodeId> {
    state
        .nodes()
        .filter(|(id, meta)| *id == me || heartbeat_is_recent(meta, now, down_after_ms))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Whether `delta` changes what a reconcile loop plans from, judged against the state
/// before it is applied: any service, and any member that is new, removed, was not live,
/// or changes its address, capacity, subnet or labels, and any container status (mesh forwarding
/// follows which replicas run). A plain heartbeat of a live member does not.
pub fn changes_plan_inputs(
    state: &ClusterState,
    delta: &Delta,
    now: NTP64,
    down_after_ms: u64,
) -> bool {
    delta.changes().iter().any(|change| match change {
        Change::Service { .. } => true,
        Change::Node { node, entry } => match (state.node(node), &entry.value) {
            (Some(old), Some(new)) => {
                !heartbeat_is_recent(old, now, down_after_ms)
                    || old.address != new.meta.address
                    || old.capacity != new.meta.capacity
                    || old.subnet != new.meta.subnet
                    || old.labels != new.meta.labels
            }
            _ => true,
        },
        Change::Status { .. } => true,
        Change::Container { .. } | Change::Counter { .. } | Change::Ip { .. } => false,
    })
}
