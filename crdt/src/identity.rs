//! Two writers with one node name: what a replica sees of it. Writes are not signed, so two
//! daemons started with the same name (and certificate) write the same dots; their peers keep
//! one write per dot and drop the other, and without this nothing says so.
//!
//! A replica watches what comes in (`IdentityWatch::observe`, called by `Replica` for every
//! delta it accepts, and for the own-origin refusals that show the same):
//! - of its own name, any write it did not make: its node metadata written by another
//!   incarnation after this one started (every daemon writes a random `NodeMeta::incarnation`,
//!   and a previous incarnation of this node stopped writing before this one started), an
//!   entry at one of its dots that differs from the one it holds, or that it does not hold but
//!   that is stamped after this daemon started and after a write of its own numbered higher (a
//!   daemon numbers and stamps its writes in one order), coverage of its writes beyond
//!   its own counter (`ApplyError::OwnOrigin`) unless every such write came with the delta and
//!   was stamped before this daemon started (a previous incarnation's, or a stopped
//!   duplicate's: adopted). That makes its identity
//!   contested (`Replica::contest`), and a contested replica writes nothing (`stamp` refuses
//!   with `ReplicaError::Contested`) and covers its own writes as far as peers have seen them,
//!   as a fresh node does, so it still converges; the daemon decides when it clears;
//! - of other nodes: two different entries at one dot, or their newer heartbeats alternating
//!   between two incarnations (`Replica::duplicates`).
//!
//! Each sighting counts only something new (a later heartbeat, a higher dot, more coverage),
//! so the same evidence coming back in a repair does not keep a contest alive. What is seen is
//! this replica's observation, not replicated state: two replicas may see different evidence.

use std::collections::BTreeMap;
use std::fmt;

use uhlc::{NTP64, Timestamp};

use crate::NodeId;
use crate::entry::Dot;
use crate::state::{Change, ClusterState};

/// What showed that two writers use one node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// The node's metadata written under its name by another incarnation, after this one
    /// started.
    ForeignIncarnation {
        incarnation: u64,
        heartbeat: Timestamp,
    },
    /// Two different writes claim one dot of the node.
    CollidingDot { counter: u64 },
    /// A write numbered below one of this node's own but stamped after it (a daemon's writes
    /// are numbered and stamped in the same order), and after this daemon started.
    OutOfOrder { counter: u64, later_than: u64 },
    /// Coverage of the node's writes beyond what this node wrote.
    CoverageBeyond { until: u64, own: u64 },
    /// The node's newer heartbeats alternate between two incarnations.
    AlternatingIncarnations { first: u64, second: u64 },
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Evidence::ForeignIncarnation {
                incarnation,
                heartbeat,
            } => write!(
                f,
                "its node metadata written by incarnation {incarnation:016x} at {}",
                heartbeat.get_time().to_string_rfc3339_lossy()
            ),
            Evidence::CollidingDot { counter } => write!(
                f,
                "two different writes claiming its write number {counter}"
            ),
            Evidence::OutOfOrder {
                counter,
                later_than,
            } => write!(
                f,
                "its write number {counter} stamped after its write number {later_than}"
            ),
            Evidence::CoverageBeyond { until, own } => write!(
                f,
                "its writes seen up to number {until}, beyond the {own} this daemon made"
            ),
            Evidence::AlternatingIncarnations { first, second } => write!(
                f,
                "its heartbeats alternating between incarnations {first:016x} and {second:016x}"
            ),
        }
    }
}

/// Evidence of two writers with one name: the latest, the peer it came from, how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub evidence: Evidence,
    /// The peer whose delta showed it.
    pub from: NodeId,
    /// Sightings of something new since the first; a caller that sees it grow knows that the
    /// other writer is still at it.
    pub count: u64,
}

/// A node's newest heartbeat seen, and the last change of incarnation in its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heartbeats {
    latest: Timestamp,
    incarnation: u64,
    /// The incarnation before the last change, if there was one.
    switched_from: Option<u64>,
}

/// What a replica has seen of writers sharing a name (module comment).
#[derive(Debug, Clone, Default)]
pub(crate) struct IdentityWatch {
    /// This daemon's incarnation, written into its node metadata.
    incarnation: Option<u64>,
    /// Physical time after which a write of this node's metadata by another incarnation is
    /// another live daemon, not a previous incarnation.
    started: NTP64,
    contest: Option<Sighting>,
    /// What was already counted, kept across `clear_contest` so that old evidence coming back
    /// does not count again.
    foreign_heartbeat_max: Option<Timestamp>,
    own_collision_max: u64,
    coverage_beyond_max: u64,
    duplicates: BTreeMap<NodeId, Sighting>,
    collision_max: BTreeMap<NodeId, u64>,
    heartbeats: BTreeMap<NodeId, Heartbeats>,
}

/// Members tracked in `heartbeats` and `collision_max` at most: the maps are pruned to the
/// members, and this bounds them whatever a peer sends.
const TRACKED_NODES_MAX: usize = 4096;

impl IdentityWatch {
    pub(crate) fn set_incarnation(&mut self, incarnation: u64, started: NTP64) {
        self.incarnation = Some(incarnation);
        self.started = started;
    }

    pub(crate) fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }

    /// When this daemon started (plus the drift), once its incarnation is set.
    pub(crate) fn started(&self) -> Option<NTP64> {
        self.incarnation.map(|_| self.started)
    }

    pub(crate) fn contest(&self) -> Option<&Sighting> {
        self.contest.as_ref()
    }

    pub(crate) fn clear_contest(&mut self) {
        self.contest = None;
    }

    pub(crate) fn restore_contest(&mut self, contest: Sighting) {
        self.contest = Some(contest);
    }

    pub(crate) fn duplicates(&self) -> &BTreeMap<NodeId, Sighting> {
        &self.duplicates
    }

    pub(crate) fn forget_duplicate(&mut self, node: &NodeId) {
        self.duplicates.remove(node);
    }

    /// Records that this node's identity is contested. `new` says whether the evidence is
    /// something not seen before (it counts); evidence seen before still contests an
    /// identity that is not contested now (it was cleared while the other writer's writes
    /// were still unabsorbed).
    fn contested(&mut self, from: &NodeId, evidence: Evidence, new: bool) {
        match &mut self.contest {
            Some(sighting) if new => {
                sighting.evidence = evidence;
                sighting.from = from.clone();
                sighting.count = sighting.count.saturating_add(1);
            }
            Some(_) => {}
            None => {
                self.contest = Some(Sighting {
                    evidence,
                    from: from.clone(),
                    count: 1,
                });
            }
        }
    }

    fn duplicated(&mut self, node: &NodeId, from: &NodeId, evidence: Evidence) {
        if self.duplicates.len() >= TRACKED_NODES_MAX && !self.duplicates.contains_key(node) {
            return;
        }
        let sighting = self.duplicates.entry(node.clone()).or_insert(Sighting {
            evidence: evidence.clone(),
            from: from.clone(),
            count: 0,
        });
        sighting.evidence = evidence;
        sighting.from = from.clone();
        sighting.count = sighting.count.saturating_add(1);
    }

    /// Coverage of this node's writes up to `until`, beyond its counter `own`, from `from`.
    pub(crate) fn coverage_beyond(&mut self, from: &NodeId, until: u64, own: u64) {
        debug_assert!(until > own);
        let new = until > self.coverage_beyond_max;
        self.coverage_beyond_max = self.coverage_beyond_max.max(until);
        self.contested(from, Evidence::CoverageBeyond { until, own }, new);
    }

    /// Looks at every change of an accepted delta from `from` before it is merged into
    /// `state` (the replica of node `me`), whose version vector `covers` a dot or not. An
    /// accepted delta's uncovered dots are free (`Replica::apply_delta` checked), so only a
    /// covered one is looked up among the stored writes.
    pub(crate) fn observe(
        &mut self,
        me: &NodeId,
        state: &ClusterState,
        covers: impl Fn(&Dot) -> bool,
        from: &NodeId,
        changes: &[Change],
    ) {
        for change in changes {
            let dot = change.dot();
            let held = if covers(dot) {
                state.holds_write(change)
            } else {
                None
            };
            match held {
                Some(false) => self.colliding(me, from, &dot.node, dot.counter),
                Some(true) => {}
                None if &dot.node == me => self.out_of_order(me, from, state, change),
                None => {}
            }
            if let Change::Node { node, entry } = change
                && let Some(record) = &entry.value
                && let Some(incarnation) = record.meta.incarnation
            {
                // Validated: live metadata is written by its node.
                if node == me {
                    self.own_heartbeat(from, incarnation, entry.hlc);
                } else {
                    self.heartbeat(node, from, incarnation, entry.hlc, state);
                }
            }
        }
    }

    fn colliding(&mut self, me: &NodeId, from: &NodeId, origin: &NodeId, counter: u64) {
        if origin == me {
            let new = counter > self.own_collision_max;
            self.own_collision_max = self.own_collision_max.max(counter);
            self.contested(from, Evidence::CollidingDot { counter }, new);
            return;
        }
        let seen = self.collision_max.get(origin).copied().unwrap_or(0);
        if counter <= seen {
            return;
        }
        if self.collision_max.len() < TRACKED_NODES_MAX || self.collision_max.contains_key(origin) {
            self.collision_max.insert(origin.clone(), counter);
        }
        self.duplicated(origin, from, Evidence::CollidingDot { counter });
    }

    /// A write of this node's name that it does not hold, stamped after this daemon started: a
    /// daemon stamps its writes in the order it numbers them, so if this node holds a write of
    /// its own numbered higher but stamped earlier, the incoming one is another daemon's.
    /// (Writes of a previous incarnation were stamped before this one started.)
    fn out_of_order(&mut self, me: &NodeId, from: &NodeId, state: &ClusterState, change: &Change) {
        if self.incarnation.is_none() || *change.hlc().get_time() <= self.started {
            return;
        }
        let counter = change.dot().counter;
        let Some(next) = state.next_change_above(me, counter) else {
            return;
        };
        if next.hlc() < change.hlc() {
            let new = counter > self.own_collision_max;
            self.own_collision_max = self.own_collision_max.max(counter);
            self.contested(
                from,
                Evidence::OutOfOrder {
                    counter,
                    later_than: next.dot().counter,
                },
                new,
            );
        }
    }

    /// This node's metadata in a peer's delta: written by another incarnation after this one
    /// started, it is another live daemon with this name.
    fn own_heartbeat(&mut self, from: &NodeId, incarnation: u64, heartbeat: Timestamp) {
        let Some(mine) = self.incarnation else {
            return;
        };
        if incarnation == mine || *heartbeat.get_time() <= self.started {
            return;
        }
        let new = self.foreign_heartbeat_max.is_none_or(|max| heartbeat > max);
        if new {
            self.foreign_heartbeat_max = Some(heartbeat);
        }
        self.contested(
            from,
            Evidence::ForeignIncarnation {
                incarnation,
                heartbeat,
            },
            new,
        );
    }

    /// Another node's metadata: a restart changes its incarnation once; newer heartbeats that
    /// change back to the incarnation before are two daemons writing as that node.
    fn heartbeat(
        &mut self,
        node: &NodeId,
        from: &NodeId,
        incarnation: u64,
        heartbeat: Timestamp,
        state: &ClusterState,
    ) {
        let held = state
            .node(node)
            .and_then(|meta| Some((meta.heartbeat, meta.incarnation?)));
        if !self.heartbeats.contains_key(node) {
            if self.heartbeats.len() >= TRACKED_NODES_MAX {
                return;
            }
            if let Some((latest, incarnation)) = held {
                self.heartbeats.insert(
                    node.clone(),
                    Heartbeats {
                        latest,
                        incarnation,
                        switched_from: None,
                    },
                );
            }
        }
        let Some(seen) = self.heartbeats.get_mut(node) else {
            self.heartbeats.insert(
                node.clone(),
                Heartbeats {
                    latest: heartbeat,
                    incarnation,
                    switched_from: None,
                },
            );
            return;
        };
        if heartbeat <= seen.latest {
            return;
        }
        seen.latest = heartbeat;
        if incarnation == seen.incarnation {
            return;
        }
        let previous = seen.incarnation;
        let alternating = seen.switched_from == Some(incarnation);
        seen.switched_from = Some(previous);
        seen.incarnation = incarnation;
        if alternating {
            self.duplicated(
                node,
                from,
                Evidence::AlternatingIncarnations {
                    first: previous,
                    second: incarnation,
                },
            );
        }
    }

    /// Drops what is kept of nodes that are no longer members.
    pub(crate) fn prune(&mut self, state: &ClusterState) {
        self.heartbeats.retain(|node, _| state.node(node).is_some());
        self.collision_max
            .retain(|node, _| state.node(node).is_some());
        self.duplicates.retain(|node, _| state.node(node).is_some());
    }
}
