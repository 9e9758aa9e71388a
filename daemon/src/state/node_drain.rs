//! The node's operator changes of membership: its own drain (`set_drain`, written in its own
//! metadata, which every heartbeat then keeps) and the eviction of a member that is down
//! (`evict_member`). Another node's drain is not written here: the operator's node asks the
//! owner over sync, and the owner calls `set_drain` (see `sync::drain`).

use shoal_crdt::{Drain, NodeId, ReplicaError};

use super::{Node, NodeError};

/// Why an eviction was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvictRefused {
    #[error(
        "node {node} is this node: a node cannot evict itself; stop it and evict it from another node"
    )]
    Itself { node: NodeId },
    #[error(
        "node {node} is live (its last heartbeat is {heartbeat_age_ms} ms old): only a node that is down can be evicted; drain it with `shoal node drain {node}` or stop it first"
    )]
    Live { node: NodeId, heartbeat_age_ms: u64 },
}

impl Node {
    /// Drains this node for `deadline_ms` from now (`Some`), or ends its drain (`None`), in
    /// its own metadata; returns the drain now written. Refused, changing nothing, for a
    /// deadline out of bounds or while this node may not write. Undraining a node that is not
    /// drained writes nothing.
    pub fn set_drain(&self, deadline_ms: Option<u64>) -> Result<Option<Drain>, NodeError> {
        let me = self.options.node.clone();
        let what = || match deadline_ms {
            Some(_) => format!("drain of node {me}"),
            None => format!("undrain of node {me}"),
        };
        let drain = deadline_ms.map(|deadline_ms| Drain {
            since_unix_ms: self.clock.now_ms(),
            deadline_ms,
        });
        if let Some(drain) = &drain {
            drain.validate().map_err(|source| NodeError::Operation {
                what: what(),
                source: ReplicaError::Drain(source),
            })?;
        }
        self.check_clock_for_local_change()?;
        self.check_identity_for_local_change()?;
        let written = self.write_one(what, |replica, now| {
            let stored = replica.state().node(&self.options.node).cloned();
            if drain.is_none() && stored.as_ref().is_some_and(|meta| meta.drain.is_none()) {
                return Ok(false);
            }
            let mut meta = self.own_meta(stored.as_ref());
            meta.drain = drain;
            replica.put_node_meta(now, meta).map(|_| true)
        })?;
        if written {
            tracing::info!(?drain, "this node's drain changed");
            self.wake_planner();
        }
        Ok(drain)
    }

    /// This node's drain as its state holds it.
    pub fn own_drain(&self) -> Option<Drain> {
        self.read_state(|state| state.node(&self.options.node).and_then(|meta| meta.drain))
    }

    /// Whether `node` is a member: its metadata is in the state (not evicted).
    pub fn is_member(&self, node: &NodeId) -> bool {
        self.read_state(|state| state.node(node).is_some())
    }

    /// Evicts `node`, a member that is down in this node's view (its heartbeat older than
    /// `down_after_ms`): it leaves every node's member list and stops blocking tombstone GC. A
    /// node that comes back rejoins with its next heartbeat. Refused, changing nothing, for
    /// this node, an unknown node, a live one, or while this node may not write.
    pub fn evict_member(&self, node: &NodeId) -> Result<(), NodeError> {
        if node == &self.options.node {
            return Err(EvictRefused::Itself { node: node.clone() }.into());
        }
        let member = self
            .members()
            .into_iter()
            .find(|member| &member.id == node)
            .ok_or_else(|| NodeError::UnknownNode(node.clone()))?;
        if member.live {
            return Err(EvictRefused::Live {
                node: node.clone(),
                heartbeat_age_ms: member.heartbeat_age_ms,
            }
            .into());
        }
        self.check_clock_for_local_change()?;
        self.check_identity_for_local_change()?;
        tracing::info!(%node, "evicting a member on an operator's request");
        self.write_one(
            || format!("evict {node}"),
            |replica, now| replica.evict_node(now, node),
        )?;
        self.wake_planner();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::{Clock, ManualClock, NodeOptions};

    fn open(dir: &std::path::Path, name: &str, clock: &Arc<ManualClock>) -> Node {
        let options = NodeOptions::new(
            name.parse().unwrap(),
            dir.join(format!("{name}.redb")),
            "127.0.0.1:7443".parse().unwrap(),
        );
        Node::open(options, clock.clone()).unwrap()
    }

    #[test]
    fn a_drain_is_kept_by_heartbeats_and_across_a_restart_until_undrained() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
        let node = open(dir.path(), "a", &clock);
        node.heartbeat().unwrap();
        assert_eq!(node.own_drain(), None);
        let drain = node.set_drain(Some(60_000)).unwrap().unwrap();
        assert_eq!(drain.deadline_ms, 60_000);
        assert_eq!(drain.since_unix_ms, clock.now_ms());
        clock.advance_ms(500);
        node.heartbeat().unwrap();
        assert_eq!(
            node.own_drain(),
            Some(drain),
            "a heartbeat dropped the drain"
        );
        drop(node);
        let node = open(dir.path(), "a", &clock);
        clock.advance_ms(500);
        node.heartbeat().unwrap();
        assert_eq!(node.own_drain(), Some(drain), "a restart dropped the drain");
        assert_eq!(node.set_drain(None).unwrap(), None);
        node.heartbeat().unwrap();
        assert_eq!(node.own_drain(), None);
        // Undrained twice: the second writes nothing.
        let before = node.digest();
        assert_eq!(node.set_drain(None).unwrap(), None);
        assert_eq!(node.digest(), before);
    }

    #[test]
    fn a_deadline_out_of_bounds_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
        let node = open(dir.path(), "a", &clock);
        node.heartbeat().unwrap();
        let before = node.digest();
        for deadline_ms in [0, 999, 86_400_001] {
            let error = node.set_drain(Some(deadline_ms)).unwrap_err().to_string();
            assert!(
                error.contains(&format!("drain deadline of {deadline_ms} ms")),
                "{error}"
            );
        }
        assert_eq!(node.digest(), before);
    }

    #[test]
    fn only_a_member_that_is_down_can_be_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(1_700_000_000_000));
        let a = open(dir.path(), "a", &clock);
        let b = open(dir.path(), "b", &clock);
        a.heartbeat().unwrap();
        b.heartbeat().unwrap();
        let delta = b.delta_for(a.node_id(), &a.summary());
        a.apply_remote(b.node_id(), delta).unwrap();
        let before = a.digest();
        let itself = a.evict_member(a.node_id()).unwrap_err();
        assert!(matches!(
            itself,
            NodeError::Evict(EvictRefused::Itself { .. })
        ));
        let unknown = a.evict_member(&"zz".parse().unwrap()).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "node zz is not a member of this cluster (see `shoal nodes`)"
        );
        let live = a.evict_member(b.node_id()).unwrap_err().to_string();
        assert!(live.contains("node b is live"), "{live}");
        assert_eq!(a.digest(), before, "a refused eviction changed the state");
        clock.advance_ms(super::super::DOWN_AFTER_MS + 1);
        a.evict_member(b.node_id()).unwrap();
        assert!(!a.is_member(b.node_id()));
        assert!(a.is_member(a.node_id()));
    }
}
