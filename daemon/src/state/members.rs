//! Who is in the cluster and who is live, as pure functions of the replicated state, the
//! time and, in a daemon, what SWIM says (`PeerStates`, soft state kept by `sync::swim`).
//!
//! A member SWIM has an entry for is live unless SWIM says it is down (a suspected member
//! still counts: it may refute). A member SWIM does not know (not yet contacted, or
//! forgotten long after it went down) is live when its metadata was written less than
//! `down_after_ms` ago. Without SWIM (the simulators, tests of one node) that heartbeat rule
//! is the only one. This node is always live to itself. The node, the planner's view and the
//! cluster simulator all ask these functions, so they agree on liveness.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use shoal_crdt::state::Change;
use shoal_crdt::{ClusterState, Delta, NTP64, NodeId, NodeMeta};

use super::clock::millis_between;

/// What SWIM says of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerState {
    Alive,
    /// Someone's probe went unanswered; live until it is declared down.
    Suspect,
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Alive => "alive",
            PeerState::Suspect => "suspect",
            PeerState::Down => "down",
        }
    }
}

/// One member in SWIM's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub state: PeerState,
    /// Raised by the member each time it refutes a suspicion.
    pub incarnation: u16,
    pub address: SocketAddr,
}

/// SWIM's view of the other members, by node id.
pub type PeerStates = BTreeMap<NodeId, PeerView>;

/// How liveness is judged at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Liveness<'a> {
    pub now: NTP64,
    pub down_after_ms: u64,
    /// SWIM's view, when a SWIM driver runs.
    pub swim: Option<&'a PeerStates>,
}

impl Liveness<'_> {
    /// Liveness by heartbeats alone.
    pub fn heartbeats(now: NTP64, down_after_ms: u64) -> Liveness<'static> {
        Liveness {
            now,
            down_after_ms,
            swim: None,
        }
    }

    /// Whether the member `id` with metadata `meta` is live (not counting "it is me").
    pub fn is_live(&self, id: &NodeId, meta: &NodeMeta) -> bool {
        match self.swim.and_then(|peers| peers.get(id)) {
            Some(view) => view.state != PeerState::Down,
            None => heartbeat_is_recent(meta, self.now, self.down_after_ms),
        }
    }

    /// SWIM's entry for `id`, if any.
    pub fn swim_view(&self, id: &NodeId) -> Option<&PeerView> {
        self.swim.and_then(|peers| peers.get(id))
    }
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub meta: NodeMeta,
    pub live: bool,
    pub is_self: bool,
    /// Age of its latest metadata write (heartbeat or refresh) at `now`.
    pub heartbeat_age_ms: u64,
    /// SWIM's entry for it, when SWIM runs and knows it.
    pub swim: Option<PeerView>,
}

/// Whether `meta`'s heartbeat is recent at `now`.
pub fn heartbeat_is_recent(meta: &NodeMeta, now: NTP64, down_after_ms: u64) -> bool {
    millis_between(now, *meta.heartbeat.get_time()) < down_after_ms
}

/// Every member in the node-metadata map, with its liveness.
pub fn members(state: &ClusterState, me: &NodeId, liveness: &Liveness) -> Vec<Member> {
    state
        .nodes()
        .map(|(id, meta)| {
            let is_self = id == me;
            Member {
                id: id.clone(),
                meta: meta.clone(),
                live: is_self || liveness.is_live(id, meta),
                is_self,
                heartbeat_age_ms: millis_between(liveness.now, *meta.heartbeat.get_time()),
                swim: liveness.swim_view(id).filter(|_| !is_self).cloned(),
            }
        })
        .collect()
}

/// The ids of the live members (this node included once it has written its metadata).
pub fn live_set(state: &ClusterState, me: &NodeId, liveness: &Liveness) -> BTreeSet<NodeId> {
    state
        .nodes()
        .filter(|(id, meta)| *id == me || liveness.is_live(id, meta))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Whether `delta` changes what a reconcile loop plans from, judged against the state
/// before it is applied: any service, and any member that is new, removed, was not live,
/// or changes its address, capacity, subnet or labels, and any container status (mesh forwarding
/// follows which replicas run). A plain heartbeat of a live member does not.
pub fn changes_plan_inputs(state: &ClusterState, delta: &Delta, liveness: &Liveness) -> bool {
    delta.changes().iter().any(|change| match change {
        Change::Service { .. } => true,
        Change::Node { node, entry } => match (state.node(node), &entry.value) {
            (Some(old), Some(new)) => {
                !liveness.is_live(node, old)
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

#[cfg(test)]
mod tests {
    use shoal_crdt::{Capacity, Replica};

    use super::*;

    fn id(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    /// A state holding the metadata of `a` and `b`, written at 1 s.
    fn state() -> ClusterState {
        let at = NTP64::from(std::time::Duration::from_secs(1));
        let mut merged = Replica::new(id("a"), std::time::Duration::from_secs(1));
        for name in ["a", "b"] {
            let mut replica = Replica::new(id(name), std::time::Duration::from_secs(1));
            let meta = NodeMeta {
                address: "127.0.0.1:7000".parse().unwrap(),
                capacity: Capacity {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                },
                subnet: None,
                heartbeat: shoal_crdt::Timestamp::new(NTP64(0), id(name).hlc_id()),
                labels: BTreeMap::new(),
                incarnation: None,
                drain: None,
            };
            let delta = replica.put_node_meta(at, meta).unwrap();
            merged.apply_delta(at, &id(name), &delta).unwrap();
        }
        merged.state().clone()
    }

    fn swim(state: PeerState) -> PeerStates {
        [(
            id("b"),
            PeerView {
                state,
                incarnation: 1,
                address: "127.0.0.1:7000".parse().unwrap(),
            },
        )]
        .into()
    }

    #[test]
    fn swim_decides_for_members_it_knows_and_the_metadata_age_for_the_others() {
        let state = state();
        let fresh = NTP64::from(std::time::Duration::from_secs(2));
        let stale = NTP64::from(std::time::Duration::from_secs(100));
        let live = |now, peers: Option<&PeerStates>| {
            live_set(
                &state,
                &id("a"),
                &Liveness {
                    now,
                    down_after_ms: 5_000,
                    swim: peers,
                },
            )
            .contains(&id("b"))
        };
        // Without SWIM: the heartbeat's age.
        assert!(live(fresh, None));
        assert!(!live(stale, None));
        // SWIM's word wins over the age either way; a suspect is still live.
        assert!(live(stale, Some(&swim(PeerState::Alive))));
        assert!(live(stale, Some(&swim(PeerState::Suspect))));
        assert!(!live(fresh, Some(&swim(PeerState::Down))));
        // A member SWIM has no entry for falls back to the age.
        let empty = PeerStates::new();
        assert!(live(fresh, Some(&empty)));
        assert!(!live(stale, Some(&empty)));
    }
}
