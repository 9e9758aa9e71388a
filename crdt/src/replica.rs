//! `Replica`: one node's view of the cluster. Local operations stamp writes
//! with the node's HLC and next dot and return the delta holding exactly that
//! change; remote deltas are validated in full before anything changes; peers'
//! summaries drive tombstone collection.
//!
//! A peer may lie or be buggy (trust model in ARCHITECTURE.md). What it says about dot
//! ranges is kept to what this replica can vouch for (`apply_delta`, `cover`,
//! `observe_summary`), and what cannot be checked is repaired: two replicas that cover the
//! same writes must hold the same live entries, so when their digests differ they send
//! each other every entry (`delta_for`, `merge_repair`). Regression tests against such
//! peers are in `replica_trust_tests.rs`.
//!
//! Tombstone GC (causal stability). For every member `m` (live nodes in the
//! node-metadata map, other than this one) the replica keeps the latest summary
//! `S_m` it has received and the latest one it has itself caught up with
//! (`own vv >= S_m`, called stable). A tombstone with dot `d` is dropped once
//! every member's stable summary covers `d`. Why that is safe:
//! - every member has the tombstone (or a write superseding it), so none will
//!   send the overwritten value as new; its dot is covered everywhere, and a
//!   covered dot is ignored on apply;
//! - this replica has seen every write the members had when they covered `d`;
//!   any write a member makes later was stamped after it observed the
//!   tombstone's HLC, so it legitimately wins over the removal;
//! - a peer whose summary lacks a collected dot (below `gc_floor`) gets a full
//!   snapshot instead of a delta, and applying a snapshot drops local entries
//!   the sender has seen and no longer holds.
//!
//! Evicting a node (tombstoning its metadata) removes it from the members, so
//! a dead node stops blocking GC. The price, as in any such scheme: a write by a
//! node that is not a member (evicted but alive, or writing before any member
//! knew it) that is concurrent with an already collected removal is kept by the
//! replicas that collected it and dropped by the others, so they diverge on that
//! key. Hence a node publishes its metadata and syncs before writing anything
//! else, and an evicted node rejoins with an empty state.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uhlc::{NTP64, Timestamp};

use crate::clock::{Clock, ClockError};
use crate::compact::{self, RecentOrigins};
use crate::delta::{Delta, DeltaBase, OriginRange, Summary};
use crate::entry::{Dot, Entry, MergeOutcome};
use crate::identity::{IdentityWatch, Sighting};
use crate::record_check::{Held, Lineup};
use crate::state::{Change, ClusterState, Counts, HeldAt, IpClaim, NodeRecord};
use crate::status::{NodeStatus, StatusError};
use crate::{
    ContainerId, ContainerRecord, NodeId, NodeMeta, Resource, ServiceName, ServiceRecord,
    ServiceSpec, SpecError, Subnet, VersionVector,
};

/// A local operation was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{what} belongs to node {owner}, not to this node")]
    NotOwner { what: String, owner: NodeId },
    #[error("node {node} has no subnet in its metadata")]
    NoSubnet { node: NodeId },
    #[error("subnet {subnet} is held by node {winner} (earlier claim)")]
    SubnetConflict { subnet: Subnet, winner: NodeId },
    #[error("subnet {subnet} has no free address")]
    SubnetExhausted { subnet: Subnet },
    #[error("counter {resource:?} would overflow")]
    CounterOverflow { resource: Resource },
    #[error("a node cannot evict itself ({node})")]
    EvictSelf { node: NodeId },
    #[error(
        "node {node} has used every dot counter it may (up to {DOT_COUNTER_MAX}); rejoin under a new node name"
    )]
    DotsExhausted { node: NodeId },
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Drain(#[from] crate::drain::DrainError),
    #[error("service {service}: {source}")]
    ServiceRecord {
        service: ServiceName,
        #[source]
        source: crate::rollout::RecordError,
    },
    #[error(
        "node {node} writes nothing while another writer uses its name ({evidence}, seen from {from})"
    )]
    Contested {
        node: NodeId,
        evidence: String,
        from: NodeId,
    },
}

/// A remote delta or a snapshot was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "delta from {from} starts at {origin}:{since} but this replica has only {origin}:{have}; pull again"
    )]
    StaleBase {
        from: NodeId,
        origin: NodeId,
        since: u64,
        have: u64,
    },
    #[error("delta from {from} refused: {source}")]
    ClockDrift {
        from: NodeId,
        #[source]
        source: ClockError,
    },
    #[error(
        "delta from {from} covers writes of this node up to {until}, beyond its own counter {own}: writes it did not make (a lying peer, or another daemon with this node's name)"
    )]
    OwnOrigin { from: NodeId, until: u64, own: u64 },
    #[error("invalid delta or snapshot: {0}")]
    Invalid(String),
}

/// The bound of a service record's encoding found while checking a delta: entry `index`
/// encodes to at most `bytes`; if it is stored it replaces the write `replaced`, and the
/// bound is kept with it in the index by dot.
struct RecordBound {
    index: usize,
    bytes: usize,
    replaced: Option<HeldAt>,
    /// How its versions line up with the record of `replaced`.
    lineup: Option<Lineup>,
}

/// What applying a delta did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries stored.
    pub entries_applied: usize,
    /// Entries already seen or superseded.
    pub entries_ignored: usize,
    /// Origins whose range a relay claimed beyond the writes this replica can show; it
    /// covers them only as far as it can (see `Replica::apply_delta`).
    pub ranges_clamped: usize,
}

/// What this replica knows of one peer's progress (version vectors of its summaries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The latest summary received.
    pub latest: VersionVector,
    /// The latest summary this replica had caught up with; drives GC.
    pub stable: Option<VersionVector>,
}

/// A full image of a replica for persistence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub node: NodeId,
    pub(crate) changes: Vec<Change>,
    pub(crate) vv: VersionVector,
    pub(crate) gc_floor: VersionVector,
    pub(crate) clock_last: NTP64,
    pub(crate) peers: BTreeMap<NodeId, PeerView>,
}

impl Snapshot {
    /// Entries held, tombstones included.
    pub fn entry_count(&self) -> usize {
        self.changes.len()
    }
}

/// One node's view: the state, its clock, its node id and its peers' summaries.
#[derive(Debug, Clone)]
pub struct Replica {
    node: NodeId,
    max_drift: Duration,
    clock: Clock,
    state: ClusterState,
    vv: VersionVector,
    /// Per origin, the highest counter of a tombstone this replica collected.
    gc_floor: VersionVector,
    peers: BTreeMap<NodeId, PeerView>,
    /// Peers whose latest summary this replica did not cover when it came: the only ones
    /// whose summary a later apply may make stable (`promote_stable_summaries`), so an apply
    /// checks those rather than every peer's whole summary (N^2 at N members).
    /// Not persisted: recomputed from `peers` on restore.
    unstable_peers: BTreeSet<NodeId>,
    /// Writers' HLC ids, so validating an entry does not hash its writer's name.
    hlc_ids: BTreeMap<NodeId, uhlc::ID>,
    /// What this replica saw of two writers with one name (`identity`); not persisted.
    identity: IdentityWatch,
    /// Replaying its own log (`set_replaying`).
    replaying: bool,
    /// The origins the version vector moved for lately (`compact`); not persisted.
    recent: RecentOrigins,
}

const HLC_ID_CACHE_ENTRIES_MAX: usize = 4096;
/// The highest dot counter any node writes, and the highest a delta or snapshot may name:
/// at a thousand writes a second a node reaches it in 8,900 years, so counters never wrap.
pub const DOT_COUNTER_MAX: u64 = 1 << 48;
/// The highest counter of its own a fresh replica adopts from a peer (what its previous
/// incarnation wrote): half the room, so whatever a peer claims, a node keeps 2^47 writes.
pub const ADOPTED_COUNTER_MAX: u64 = DOT_COUNTER_MAX / 2;
/// How far beyond its counter a contested node writes its announcement
/// (`Replica::announce_contest`).
pub const CONTEST_ANNOUNCE_JUMP: u64 = 1024;
/// Up to this many origins, a delta's ranges are searched linearly.
const SMALL_RANGE_COUNT: usize = 8;

/// Whether `a` covers every write `b` covers.
pub(crate) fn covers(a: &VersionVector, b: &VersionVector) -> bool {
    b.dots.iter().all(|(node, counter)| a.get(node) >= *counter)
}

fn covers_dot(vv: &VersionVector, dot: &Dot) -> bool {
    vv.get(&dot.node) >= dot.counter
}

impl Replica {
    pub fn new(node: NodeId, max_drift: Duration) -> Self {
        Self {
            clock: Clock::new(&node, max_drift),
            node,
            max_drift,
            state: ClusterState::default(),
            vv: VersionVector::new(),
            gc_floor: VersionVector::new(),
            peers: BTreeMap::new(),
            unstable_peers: BTreeSet::new(),
            hlc_ids: BTreeMap::new(),
            identity: IdentityWatch::default(),
            replaying: false,
            recent: RecentOrigins::default(),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// This replica's version vector.
    pub fn version_vector(&self) -> &VersionVector {
        &self.vv
    }

    pub(crate) fn recent_origins(&self) -> &RecentOrigins {
        &self.recent
    }

    /// Sets this replica's coverage of `origin`'s writes (0: none) at `at`; the one place
    /// the version vector changes, so the origins it moved for lately are known (`compact`).
    fn set_covered(&mut self, origin: &NodeId, counter: u64, at: NTP64) {
        let before = self.vv.get(origin);
        if before == counter {
            return;
        }
        compact::set(&mut self.vv, origin, counter);
        self.recent.moved(origin, before, at);
    }

    /// What this replica knows of its peers.
    pub fn peers(&self) -> &BTreeMap<NodeId, PeerView> {
        &self.peers
    }

    /// Per origin, the highest counter of a tombstone this replica collected.
    pub(crate) fn gc_floor(&self) -> &VersionVector {
        &self.gc_floor
    }

    // ---- identity ----

    /// Sets this daemon's incarnation (a random number drawn at its start), written into its
    /// node metadata from now on. `started` is the physical time after which a write of this
    /// node's name that it did not make is another live daemon's: when this one started.
    pub fn set_incarnation(&mut self, incarnation: u64, started: NTP64) {
        self.identity.set_incarnation(incarnation, started);
    }

    /// This daemon's incarnation, if set.
    pub fn incarnation(&self) -> Option<u64> {
        self.identity.incarnation()
    }

    /// Another writer uses this node's name: the latest evidence. While this is `Some`, every
    /// local operation is refused (`ReplicaError::Contested`) and peers' coverage of this
    /// node's writes is adopted as a fresh node adopts it (see `crate::identity`).
    pub fn contest(&self) -> Option<&Sighting> {
        self.identity.contest()
    }

    /// Lets this node write again (its caller saw nothing new of the other writer for long
    /// enough). Evidence already seen does not count again.
    pub fn clear_contest(&mut self) {
        self.identity.clear_contest();
    }

    /// Other nodes seen written by two writers, with the latest evidence.
    pub fn duplicates(&self) -> &BTreeMap<NodeId, Sighting> {
        self.identity.duplicates()
    }

    /// Forgets that `node` was seen written by two writers.
    pub fn forget_duplicate(&mut self, node: &NodeId) {
        self.identity.forget_duplicate(node);
    }

    /// Writes this node's metadata once more while its identity is contested, numbered
    /// `CONTEST_ANNOUNCE_JUMP` beyond its counter: the other daemon with this name, which may
    /// have won every colliding write so far, then sees coverage of its writes beyond its own
    /// counter and knows too. Returns an empty delta when not contested.
    pub fn announce_contest(&mut self, now: NTP64, meta: NodeMeta) -> Result<Delta, ReplicaError> {
        let since = self.own_counter();
        let Some(contest) = self.identity.contest().cloned() else {
            return Ok(Delta::ranges(Vec::new(), Vec::new()));
        };
        let counter = since
            .checked_add(CONTEST_ANNOUNCE_JUMP)
            .filter(|counter| *counter <= ADOPTED_COUNTER_MAX)
            .ok_or_else(|| ReplicaError::DotsExhausted {
                node: self.node.clone(),
            })?;
        let own = self.node.clone();
        self.set_covered(&own, counter - 1, now);
        self.identity.clear_contest();
        let result = self.put_node_meta(now, meta);
        self.identity.restore_contest(contest);
        let mut delta = match result {
            Ok(delta) => delta,
            Err(error) => {
                self.set_covered(&own, since, now);
                return Err(error);
            }
        };
        // One range from the counter peers know, so they take it as a continuation.
        if let DeltaBase::Ranges(ranges) = &mut delta.base {
            for range in ranges.iter_mut() {
                range.since = since;
            }
        }
        Ok(delta)
    }

    /// While on, deltas are this node's log being replayed at startup: what was accepted
    /// before is accepted again (own-origin coverage a contested identity adopted included),
    /// and nothing in them counts as evidence of another writer.
    pub fn set_replaying(&mut self, replaying: bool) {
        self.replaying = replaying;
    }

    /// Takes over what `other` (this node's replica before a reload) saw of identities.
    pub fn keep_identity_of(&mut self, other: &Replica) {
        self.identity = other.identity.clone();
    }

    // ---- local operations ----

    /// Refuses an operation that needs `count` more dots than this node has left.
    fn check_dots(&self, count: usize) -> Result<(), ReplicaError> {
        let left = DOT_COUNTER_MAX.saturating_sub(self.own_counter());
        if u64::try_from(count).map_or(true, |count| count > left) {
            return Err(ReplicaError::DotsExhausted {
                node: self.node.clone(),
            });
        }
        Ok(())
    }

    /// Stamps one local write: the next HLC and the next dot (checked, never wrapping).
    /// Refused while this node's identity is contested: every local operation stamps before
    /// it changes anything, so it is refused whole.
    fn stamp(&mut self, now: NTP64) -> Result<(Timestamp, Dot), ReplicaError> {
        if let Some(sighting) = self.identity.contest() {
            return Err(ReplicaError::Contested {
                node: self.node.clone(),
                evidence: sighting.evidence.to_string(),
                from: sighting.from.clone(),
            });
        }
        let counter = self
            .own_counter()
            .checked_add(1)
            .filter(|counter| *counter <= DOT_COUNTER_MAX)
            .ok_or_else(|| ReplicaError::DotsExhausted {
                node: self.node.clone(),
            })?;
        let hlc = self.clock.now(now);
        let own = self.node.clone();
        self.set_covered(&own, counter, now);
        Ok((
            hlc,
            Dot {
                node: self.node.clone(),
                counter,
            },
        ))
    }

    /// Applies local writes made with `stamp` and wraps them as one delta.
    fn commit(&mut self, since: u64, changes: Vec<Change>) -> Delta {
        let until = self.vv.get(&self.node);
        assert_eq!(
            until - since,
            changes.len() as u64,
            "one dot per local write"
        );
        for change in &changes {
            debug_assert!(
                change.validate().is_ok(),
                "local write is invalid: {change:?}"
            );
            // A local dot is above this replica's version vector, and every stored dot is
            // covered by it, so the dot is free; its HLC is above every one observed.
            let outcome = self.state.apply_change(change.clone());
            assert!(
                matches!(outcome, Ok(MergeOutcome::Stored { .. })),
                "local write was superseded or its dot taken: {change:?}"
            );
        }
        if changes.is_empty() {
            return Delta::ranges(Vec::new(), Vec::new());
        }
        Delta::ranges(
            vec![OriginRange {
                node: self.node.clone(),
                since,
                until,
            }],
            changes,
        )
    }

    pub fn put_service(
        &mut self,
        now: NTP64,
        name: ServiceName,
        spec: ServiceSpec,
    ) -> Result<Delta, ReplicaError> {
        spec.validate()?;
        let record = ServiceRecord::succeeding(self.state.service_record(&name), spec);
        self.write_service_record(now, name, record)
    }

    /// Writes a whole service record: a rollout's outcome (`ServiceRecord::after_failure`)
    /// or a rollback, with the history the record carries.
    pub fn put_service_record(
        &mut self,
        now: NTP64,
        name: ServiceName,
        record: ServiceRecord,
    ) -> Result<Delta, ReplicaError> {
        record.spec.validate()?;
        record
            .validate_history()
            .map_err(|source| ReplicaError::ServiceRecord {
                service: name.clone(),
                source,
            })?;
        self.write_service_record(now, name, record)
    }

    fn write_service_record(
        &mut self,
        now: NTP64,
        name: ServiceName,
        record: ServiceRecord,
    ) -> Result<Delta, ReplicaError> {
        let since = self.vv.get(&self.node);
        let (hlc, dot) = self.stamp(now)?;
        Ok(self.commit(
            since,
            vec![Change::Service {
                name,
                entry: Entry {
                    hlc,
                    dot,
                    value: Some(record),
                },
            }],
        ))
    }

    pub fn remove_service(
        &mut self,
        now: NTP64,
        name: &ServiceName,
    ) -> Result<Delta, ReplicaError> {
        if self.state.service(name).is_none() {
            return Err(ReplicaError::NotFound {
                what: format!("service {name}"),
            });
        }
        let since = self.vv.get(&self.node);
        let (hlc, dot) = self.stamp(now)?;
        Ok(self.commit(
            since,
            vec![Change::Service {
                name: name.clone(),
                entry: Entry {
                    hlc,
                    dot,
                    value: None,
                },
            }],
        ))
    }

    /// Writes this node's metadata. `meta.heartbeat` is set to the write's HLC, and
    /// `meta.incarnation` to this daemon's when it was set (`set_incarnation`).
    pub fn put_node_meta(&mut self, now: NTP64, mut meta: NodeMeta) -> Result<Delta, ReplicaError> {
        meta.validate()?;
        let since = self.vv.get(&self.node);
        let (hlc, dot) = self.stamp(now)?;
        meta.heartbeat = hlc;
        if let Some(incarnation) = self.identity.incarnation() {
            meta.incarnation = Some(incarnation);
        }
        let previous = self
            .state
            .node_entry(&self.node)
            .and_then(|entry| entry.value.as_ref());
        let subnet_claimed = match (meta.subnet, previous) {
            (Some(subnet), Some(old)) if old.meta.subnet == Some(subnet) => old.subnet_claimed,
            (Some(_), _) => Some(hlc),
            (None, _) => None,
        };
        let record = NodeRecord {
            meta,
            subnet_claimed,
        };
        Ok(self.commit(
            since,
            vec![Change::Node {
                node: self.node.clone(),
                entry: Entry {
                    hlc,
                    dot,
                    value: Some(record),
                },
            }],
        ))
    }

    /// Writes this node's report on its own containers. Callers write only on change.
    pub fn put_node_status(
        &mut self,
        now: NTP64,
        status: NodeStatus,
    ) -> Result<Delta, ReplicaError> {
        status.validate()?;
        let since = self.vv.get(&self.node);
        let (hlc, dot) = self.stamp(now)?;
        Ok(self.commit(
            since,
            vec![Change::Status {
                node: self.node.clone(),
                entry: Entry {
                    hlc,
                    dot,
                    value: Some(status),
                },
            }],
        ))
    }

    /// Removes a node from the member set (so it stops blocking GC).
    pub fn evict_node(&mut self, now: NTP64, node: &NodeId) -> Result<Delta, ReplicaError> {
        if node == &self.node {
            return Err(ReplicaError::EvictSelf { node: node.clone() });
        }
        if self.state.node(node).is_none() {
            return Err(ReplicaError::NotFound {
                what: format!("node {node}"),
            });
        }
        let since = self.vv.get(&self.node);
        let (hlc, dot) = self.stamp(now)?;
        self.peers.remove(node);
        self.unstable_peers.remove(node);
        Ok(self.commit(
            since,
            vec![Change::Node {
                node: node.clone(),
                entry: Entry {
                    hlc,
                    dot,
                    value: None,
                },
            }],
        ))
    }

    /// Adds a container this node runs; replaces an earlier record with the same id.
    pub fn add_container(
        &mut self,
        now: NTP64,
        record: ContainerRecord,
    ) -> Result<Delta, ReplicaError> {
        if record.node != self.node {
            return Err(ReplicaError::NotOwner {
                what: format!("container {}", record.id),
                owner: record.node,
            });
        }
        let adds = self.state.container_adds(&record.id);
        self.check_dots(adds.len() + 1)?;
        let since = self.vv.get(&self.node);
        let mut changes = Vec::new();
        for (add, _) in adds {
            let (hlc, dot) = self.stamp(now)?;
            changes.push(Change::Container {
                id: record.id.clone(),
                add,
                entry: Entry {
                    hlc,
                    dot,
                    value: None,
                },
            });
        }
        let (hlc, dot) = self.stamp(now)?;
        changes.push(Change::Container {
            id: record.id.clone(),
            add: dot.clone(),
            entry: Entry {
                hlc,
                dot,
                value: Some(record),
            },
        });
        Ok(self.commit(since, changes))
    }

    /// Removes every add of `id` this replica has observed (add-wins against concurrent adds).
    pub fn remove_container(
        &mut self,
        now: NTP64,
        id: &ContainerId,
    ) -> Result<Delta, ReplicaError> {
        let adds = self.state.container_adds(id);
        if adds.is_empty() {
            return Err(ReplicaError::NotFound {
                what: format!("container {id}"),
            });
        }
        self.check_dots(adds.len())?;
        let since = self.vv.get(&self.node);
        let mut changes = Vec::new();
        for (add, _) in adds {
            let (hlc, dot) = self.stamp(now)?;
            changes.push(Change::Container {
                id: id.clone(),
                add,
                entry: Entry {
                    hlc,
                    dot,
                    value: None,
                },
            });
        }
        Ok(self.commit(since, changes))
    }

    /// Adds `amount` (negative: subtracts) to this node's own counter.
    pub fn adjust_resource(
        &mut self,
        now: NTP64,
        resource: Resource,
        amount: i64,
    ) -> Result<Delta, ReplicaError> {
        let mut counts: Counts = self.state.counter(&self.node, resource);
        let magnitude = amount.unsigned_abs();
        let slot = if amount >= 0 {
            &mut counts.increments
        } else {
            &mut counts.decrements
        };
        *slot = slot
            .checked_add(magnitude)
            .ok_or(ReplicaError::CounterOverflow { resource })?;
        let since = self.vv.get(&self.node);
        if amount == 0 {
            return Ok(self.commit(since, Vec::new()));
        }
        let (hlc, dot) = self.stamp(now)?;
        Ok(self.commit(
            since,
            vec![Change::Counter {
                node: self.node.clone(),
                resource,
                entry: Entry {
                    hlc,
                    dot,
                    value: Some(counts),
                },
            }],
        ))
    }

    /// Allocates the lowest free address of this node's subnet to `container`.
    /// Returns the existing address (and an empty delta) if it already has one.
    pub fn allocate_ip(
        &mut self,
        now: NTP64,
        container: &ContainerId,
    ) -> Result<(Ipv4Addr, Delta), ReplicaError> {
        let subnet = self
            .state
            .node(&self.node)
            .and_then(|meta| meta.subnet)
            .ok_or_else(|| ReplicaError::NoSubnet {
                node: self.node.clone(),
            })?;
        match self.state.subnet_owner(&subnet) {
            Some(owner) if owner == self.node => {}
            Some(winner) => return Err(ReplicaError::SubnetConflict { subnet, winner }),
            None => {
                return Err(ReplicaError::NoSubnet {
                    node: self.node.clone(),
                });
            }
        }
        let allocations = self.state.allocations_in(&subnet);
        if let Some((ip, _)) = allocations
            .iter()
            .find(|(_, claim)| &claim.container == container && claim.node == self.node)
        {
            let since = self.vv.get(&self.node);
            return Ok((*ip, self.commit(since, Vec::new())));
        }
        let taken: BTreeSet<Ipv4Addr> = allocations.iter().map(|(ip, _)| *ip).collect();
        let ip = subnet
            .container_addresses()
            .find(|ip| !taken.contains(ip))
            .ok_or(ReplicaError::SubnetExhausted { subnet })?;
        let since = self.vv.get(&self.node);
        let (hlc, dot) = self.stamp(now)?;
        let claim = IpClaim {
            container: container.clone(),
            node: self.node.clone(),
        };
        let change = Change::Ip {
            ip,
            add: dot.clone(),
            entry: Entry {
                hlc,
                dot,
                value: Some(claim),
            },
        };
        Ok((ip, self.commit(since, vec![change])))
    }

    /// Releases this node's allocations of `ip`.
    pub fn release_ip(&mut self, now: NTP64, ip: Ipv4Addr) -> Result<Delta, ReplicaError> {
        let adds = self.state.ip_adds(ip);
        let Some((_, first)) = adds.first() else {
            return Err(ReplicaError::NotFound {
                what: format!("ip allocation {ip}"),
            });
        };
        let owner = first.node.clone();
        let mine: Vec<Dot> = adds
            .into_iter()
            .filter(|(_, claim)| claim.node == self.node)
            .map(|(add, _)| add)
            .collect();
        if mine.is_empty() {
            return Err(ReplicaError::NotOwner {
                what: format!("ip allocation {ip}"),
                owner,
            });
        }
        self.check_dots(mine.len())?;
        let since = self.vv.get(&self.node);
        let mut changes = Vec::new();
        for add in mine {
            let (hlc, dot) = self.stamp(now)?;
            changes.push(Change::Ip {
                ip,
                add,
                entry: Entry {
                    hlc,
                    dot,
                    value: None,
                },
            });
        }
        Ok(self.commit(since, changes))
    }

    // ---- sync ----

    /// What this replica covers, with the digest of what it holds.
    pub fn summary(&self) -> Summary {
        Summary {
            vv: self.vv.clone(),
            digest: Some(self.state.digest()),
        }
    }

    /// Everything `theirs` lacks: entries for the dot ranges it has not seen,
    /// found through the by-dot index (no scan of the state). A full snapshot
    /// if `theirs` is missing a tombstone this replica already collected. When `theirs`
    /// covers exactly the writes this replica covers but its digest differs, one side lacks
    /// entries a lying or buggy peer left out: every entry, as a repair.
    pub fn delta_for(&self, theirs: &Summary) -> Delta {
        let below_floor = self
            .gc_floor
            .dots
            .iter()
            .any(|(node, counter)| theirs.vv.get(node) < *counter);
        if below_floor {
            return Delta {
                base: DeltaBase::Full {
                    vv: self.vv.clone(),
                    gc_floor: self.gc_floor.clone(),
                },
                changes: self.state.all_changes(),
            };
        }
        // Compared as coverage: a peer's vector may name an origin at 0.
        if covers(&self.vv, &theirs.vv) && covers(&theirs.vv, &self.vv) {
            return match theirs.digest {
                Some(digest) if digest != self.state.digest() => Delta {
                    base: DeltaBase::Repair {
                        vv: self.vv.clone(),
                    },
                    changes: self.state.all_changes(),
                },
                _ => Delta::ranges(Vec::new(), Vec::new()),
            };
        }
        let mut ranges = Vec::new();
        let mut changes = Vec::new();
        for (node, until) in &self.vv.dots {
            let since = theirs.vv.get(node);
            if since >= *until {
                continue;
            }
            for key in self.state.keys_in_range(node, since, *until) {
                changes.push(self.state.change_at(key).expect("indexed key is stored"));
            }
            ranges.push(OriginRange {
                node: node.clone(),
                since,
                until: *until,
            });
        }
        Delta::ranges(ranges, changes)
    }

    /// This replica's own counter: the dot of its latest local write.
    pub fn own_counter(&self) -> u64 {
        self.vv.get(&self.node)
    }

    /// One delta for every local write after `since` (an earlier `own_counter`): what
    /// several local operations' deltas carry together, minus entries a later one of them
    /// superseded. A caller that runs a batch of operations persists and pushes this once
    /// instead of each operation's delta.
    pub fn own_delta_since(&self, since: u64) -> Delta {
        let until = self.own_counter();
        if since >= until {
            return Delta::ranges(Vec::new(), Vec::new());
        }
        let changes = self
            .state
            .keys_in_range(&self.node, since, until)
            .map(|key| self.state.change_at(key).expect("indexed key is stored"))
            .collect();
        Delta::ranges(
            vec![OriginRange {
                node: self.node.clone(),
                since,
                until,
            }],
            changes,
        )
    }

    /// Whether this replica has never accepted a write of another node: a new node, or one
    /// whose state was emptied, which learns from its first peers the counter its previous
    /// incarnation reached.
    fn is_fresh(&self) -> bool {
        self.vv.dots.keys().all(|node| node == &self.node)
    }

    /// Applies a remote delta: all of it or, on error, nothing. `from` is the peer it came
    /// from (this node itself when replaying its own log).
    ///
    /// What a peer says is checked before anything changes (see `validate_delta`): counters
    /// within `DOT_COUNTER_MAX`; no coverage of this node's own writes beyond its counter,
    /// except from itself (its log) or while it is fresh; no dot that names another stored
    /// entry. Then coverage of another member's writes is taken from a relay only as far as
    /// this replica can show a write of that member (see `cover`), and a repair merges
    /// entries whatever the version vector says.
    pub fn apply_delta(
        &mut self,
        now: NTP64,
        from: &NodeId,
        delta: &Delta,
    ) -> Result<Applied, ApplyError> {
        self.remember_writer_ids(delta);
        let bounds = match self.validate_delta(now, from, delta) {
            Ok(bounds) => bounds,
            Err(error) => {
                // Writes of this node it did not make: its name is contested. Nothing else
                // changes; the next such delta is adopted (`check_own_origin`).
                if let ApplyError::OwnOrigin { until, own, .. } = &error
                    && !self.replaying
                {
                    self.identity.coverage_beyond(from, *until, *own);
                }
                return Err(error);
            }
        };
        if let Some(max) = delta.max_timestamp() {
            self.clock
                .observe(now, &max)
                .map_err(|source| ApplyError::ClockDrift {
                    from: from.clone(),
                    source,
                })?;
        }
        if from != &self.node && !self.replaying {
            let own = self.own_counter();
            let claimed = match &delta.base {
                DeltaBase::Ranges(ranges) => ranges
                    .iter()
                    .find(|range| range.node == self.node)
                    .map_or(0, |range| range.until),
                DeltaBase::Full { vv, .. } => vv.get(&self.node),
                DeltaBase::Repair { .. } => 0,
            };
            // A contested replica adopts coverage of its writes beyond its counter (checked in
            // `check_own_origin`): more of the other writer's writes.
            if claimed > own && !self.is_fresh() && !self.leftover_writes(&delta.changes) {
                self.identity.coverage_beyond(from, claimed, own);
            }
            let vv = &self.vv;
            self.identity.observe(
                &self.node,
                &self.state,
                |dot| covers_dot(vv, dot),
                from,
                &delta.changes,
            );
        }
        let mut applied = Applied::default();
        match &delta.base {
            DeltaBase::Ranges(ranges) => {
                self.merge_changes(&delta.changes, &mut applied, &bounds);
                for range in ranges {
                    self.cover(from, &range.node, range.until, now, &mut applied);
                }
            }
            DeltaBase::Full { vv, gc_floor } => {
                let held: HashSet<&Dot> = delta.changes.iter().map(Change::dot).collect();
                let mut dropped = Vec::new();
                for (node, until) in &vv.dots {
                    for key in self.state.keys_in_range(node, 0, *until) {
                        let change = self.state.change_at(key).expect("indexed key is stored");
                        if !held.contains(change.dot()) {
                            dropped.push(key.clone());
                        }
                    }
                }
                for key in dropped {
                    self.state.remove_key(&key);
                }
                self.merge_changes(&delta.changes, &mut applied, &bounds);
                for (node, counter) in &vv.dots {
                    self.cover(from, node, *counter, now, &mut applied);
                }
                for (node, counter) in &gc_floor.dots {
                    // The floor stays within what this replica covers.
                    let floor = (*counter).min(self.vv.get(node));
                    if floor > self.gc_floor.get(node) {
                        self.gc_floor.dots.insert(node.clone(), floor);
                    }
                }
            }
            // A repair may replace a record by another write with the same dot (and HLC, from
            // a lying peer): the bound kept with the index entry goes with the write it bounds.
            DeltaBase::Repair { .. } => self.merge_repair(&delta.changes, &mut applied),
        }
        self.promote_stable_summaries();
        Ok(applied)
    }

    /// Raises this replica's coverage of `origin`'s writes towards `until`, as far as it can
    /// vouch for it. The origin itself is the authority on its own writes, and a member's
    /// writes relayed by another peer are covered only up to the highest of them this
    /// replica holds (or collected): a relay that claims more, without the entries, would
    /// otherwise hide that member's next writes here for good. Honest relays rarely claim
    /// more (only when the member's latest writes were superseded by another node's), and
    /// the rest comes with the member's next write or from the member itself. Writes of a
    /// node that is not a member (evicted, or never seen) are covered as claimed: it writes
    /// no more, and should it come back as itself, its own summary corrects this replica
    /// (`observe_summary`).
    fn cover(
        &mut self,
        from: &NodeId,
        origin: &NodeId,
        until: u64,
        at: NTP64,
        applied: &mut Applied,
    ) {
        let current = self.vv.get(origin);
        if until <= current {
            return;
        }
        let vouched = if origin == from || origin == &self.node || self.state.node(origin).is_none()
        {
            until
        } else {
            let shown = self
                .state
                .highest_counter(origin)
                .max(self.gc_floor.get(origin));
            if shown < until {
                applied.ranges_clamped += 1;
            }
            until.min(shown)
        };
        if vouched > current {
            self.set_covered(origin, vouched, at);
        }
    }

    /// Merges `changes` by the version vector, and keeps the `bounds` of those stored.
    fn merge_changes(&mut self, changes: &[Change], applied: &mut Applied, bounds: &[RecordBound]) {
        let mut bounds = bounds.iter().peekable();
        for (index, change) in changes.iter().enumerate() {
            let bound = bounds.next_if(|bound| bound.index == index);
            // Covered dot: this replica holds that write or one that superseded
            // it (possibly a tombstone since collected). Ignoring it is what
            // keeps removed things from coming back.
            if covers_dot(&self.vv, change.dot()) {
                applied.entries_ignored += 1;
                continue;
            }
            // An uncovered dot is not stored (every stored dot is covered; checked in
            // `validate_delta` too), so it is free and not looked up again.
            let merged = match (change, bound) {
                (
                    Change::Service { name, entry },
                    Some(RecordBound {
                        replaced: Some(replaced),
                        lineup: Some(lineup),
                        bytes,
                        ..
                    }),
                ) => self
                    .state
                    .apply_service_lined_up(name, entry, *replaced, *lineup, *bytes),
                (_, bound) => self
                    .state
                    .apply_free_change(change.clone(), bound.map(|bound| bound.bytes)),
            };
            match merged {
                MergeOutcome::Stored { .. } => applied.entries_applied += 1,
                MergeOutcome::Ignored => applied.entries_ignored += 1,
            }
        }
    }

    /// A repair: every entry is merged by its key, covered or not. Where the sender's entry
    /// and one stored here carry the same dot (one dot, two writes: a lying peer or two
    /// daemons with one name), the greater by `Change::collision_rank` is kept, the same on
    /// every replica.
    fn merge_repair(&mut self, changes: &[Change], applied: &mut Applied) {
        let mut losers = Vec::new();
        let mut incoming = Vec::with_capacity(changes.len());
        for change in changes {
            match self.state.change_at_dot(change.dot()) {
                Some(held) if &held == change => applied.entries_ignored += 1,
                Some(held) if change.collision_rank() > held.collision_rank() => {
                    losers.push(held.key());
                    incoming.push(change);
                }
                Some(_) => applied.entries_ignored += 1,
                None => incoming.push(change),
            }
        }
        for key in losers {
            self.state.remove_key(&key);
        }
        for change in incoming {
            match self.state.apply_change(change.clone()) {
                Ok(MergeOutcome::Stored { .. }) => applied.entries_applied += 1,
                Ok(MergeOutcome::Ignored) | Err(_) => applied.entries_ignored += 1,
            }
        }
    }

    /// Caches the HLC id (a SHA-256 of the name) of every writer in `delta`;
    /// a cluster has few writers, and the cache is bounded anyway.
    fn remember_writer_ids(&mut self, delta: &Delta) {
        for change in &delta.changes {
            let writer = &change.dot().node;
            if !self.hlc_ids.contains_key(writer) {
                if self.hlc_ids.len() >= HLC_ID_CACHE_ENTRIES_MAX {
                    self.hlc_ids.clear();
                }
                self.hlc_ids.insert(writer.clone(), writer.hlc_id());
            }
        }
    }

    /// Checks `delta` whole before anything changes. Returns, for the service entries that
    /// needed one, the bound of their record's encoding, by entry index.
    fn validate_delta(
        &self,
        now: NTP64,
        from: &NodeId,
        delta: &Delta,
    ) -> Result<Vec<RecordBound>, ApplyError> {
        let mut bounds = Vec::new();
        // A repair merges every entry, covered or not; the other deltas ignore a covered one.
        let merges_covered = matches!(delta.base, DeltaBase::Repair { .. });
        for (index, change) in delta.changes.iter().enumerate() {
            let writer = &change.dot().node;
            let id = match self.hlc_ids.get(writer) {
                Some(id) => *id,
                None => writer.hlc_id(),
            };
            if change.dot().counter > DOT_COUNTER_MAX {
                return Err(ApplyError::Invalid(format!(
                    "entry {:?} is beyond the highest counter {DOT_COUNTER_MAX}",
                    change.dot()
                )));
            }
            // A covered write is one this replica holds, or one it holds a successor of, so
            // the merge ignores it and its value is not checked again: the fleet's push
            // delivers every write about `push_fanout` times. Its stamp is still checked, and
            // the identity watch compares it with the held write.
            if !merges_covered && covers_dot(&self.vv, change.dot()) {
                change
                    .validate_stamp(&id)
                    .map_err(|error| ApplyError::Invalid(error.to_string()))?;
                continue;
            }
            let (held, replaced) = match change {
                Change::Service { name, entry } => self.held_record(name, entry),
                _ => (None, None),
            };
            if let Some(checked) = change
                .validate_beside(&id, held)
                .map_err(|error| ApplyError::Invalid(error.to_string()))?
            {
                bounds.push(RecordBound {
                    index,
                    bytes: checked.bytes_max,
                    replaced,
                    lineup: checked.lineup,
                });
            }
        }
        // One dot names one write. (Two entries for one key are harmless: the
        // merge keeps the greater, as it would across two deltas.)
        if delta.changes.len() > 1 {
            let mut dots = HashSet::with_capacity(delta.changes.len());
            if let Some(change) = delta
                .changes
                .iter()
                .find(|change| !dots.insert(change.dot()))
            {
                return Err(ApplyError::Invalid(format!(
                    "dot {:?} appears twice",
                    change.dot()
                )));
            }
        }
        // Every dot stored here is covered, so an uncovered one must be free; a peer that
        // names a stored dot for another write is refused before anything changes.
        if let Some(change) = delta.changes.iter().find(|change| {
            !covers_dot(&self.vv, change.dot()) && self.state.holds_dot(change.dot())
        }) {
            return Err(ApplyError::Invalid(format!(
                "entry {:?} names a dot this replica holds for another write",
                change.dot()
            )));
        }
        match &delta.base {
            DeltaBase::Ranges(ranges) => self.validate_ranges(from, ranges, &delta.changes)?,
            DeltaBase::Full { vv, gc_floor } => {
                if let Some(change) = delta.changes.iter().find(|c| !covers_dot(vv, c.dot())) {
                    return Err(ApplyError::Invalid(format!(
                        "snapshot entry {:?} is outside its vv",
                        change.dot()
                    )));
                }
                if !covers(vv, gc_floor) {
                    return Err(ApplyError::Invalid(
                        "snapshot gc floor is ahead of its vv".to_owned(),
                    ));
                }
                if let Some((node, counter)) = vv
                    .dots
                    .iter()
                    .find(|(_, counter)| **counter > DOT_COUNTER_MAX)
                {
                    return Err(ApplyError::Invalid(format!(
                        "snapshot covers {node} up to {counter}, beyond the highest counter {DOT_COUNTER_MAX}"
                    )));
                }
                self.check_own_origin(from, vv.get(&self.node), &delta.changes)?;
            }
            DeltaBase::Repair { vv } => {
                if let Some(change) = delta.changes.iter().find(|c| !covers_dot(vv, c.dot())) {
                    return Err(ApplyError::Invalid(format!(
                        "repair entry {:?} is outside its vv",
                        change.dot()
                    )));
                }
                // A repair only fills in writes both sides cover.
                if let Some((origin, since)) = vv
                    .dots
                    .iter()
                    .find(|(origin, counter)| self.vv.get(origin) < **counter)
                {
                    return Err(ApplyError::StaleBase {
                        from: from.clone(),
                        origin: origin.clone(),
                        since: *since,
                        have: self.vv.get(origin),
                    });
                }
            }
        }
        if let Some(max) = delta.max_timestamp() {
            self.clock
                .check(now, &max)
                .map_err(|source| ApplyError::ClockDrift {
                    from: from.clone(),
                    source,
                })?;
        }
        Ok(bounds)
    }

    /// The record stored under `name` that `incoming`, a write of that service, is checked
    /// beside, with the bound kept for it, and the write that holds it. No record when
    /// `incoming` needs no bound (no history).
    fn held_record(
        &self,
        name: &ServiceName,
        incoming: &Entry<ServiceRecord>,
    ) -> (Option<Held<'_>>, Option<HeldAt>) {
        let needs_bound = incoming
            .value
            .as_ref()
            .is_some_and(|record| !record.history.is_empty());
        if !needs_bound {
            return (None, None);
        }
        let Some((at, held, bytes_max)) = self.state.find_service(name) else {
            return (None, None);
        };
        let record = held.value.as_ref().map(|record| Held { record, bytes_max });
        (record, Some(at))
    }

    fn validate_ranges(
        &self,
        from: &NodeId,
        ranges: &[OriginRange],
        changes: &[Change],
    ) -> Result<(), ApplyError> {
        for (index, range) in ranges.iter().enumerate() {
            if range.since >= range.until {
                return Err(ApplyError::Invalid(format!(
                    "range of {} is empty ({}, {}]",
                    range.node, range.since, range.until
                )));
            }
            if range.until > DOT_COUNTER_MAX {
                return Err(ApplyError::Invalid(format!(
                    "range of {} ends at {}, beyond the highest counter {DOT_COUNTER_MAX}",
                    range.node, range.until
                )));
            }
            if ranges.len() <= SMALL_RANGE_COUNT
                && ranges[..index].iter().any(|other| other.node == range.node)
            {
                return Err(ApplyError::Invalid(format!(
                    "origin {} has two ranges",
                    range.node
                )));
            }
        }
        // Deltas usually carry one or a few origins: a linear search
        // beats building a map for every (often one-entry) delta.
        let mut by_origin: BTreeMap<&NodeId, &OriginRange> = BTreeMap::new();
        if ranges.len() > SMALL_RANGE_COUNT {
            for range in ranges {
                if by_origin.insert(&range.node, range).is_some() {
                    return Err(ApplyError::Invalid(format!(
                        "origin {} has two ranges",
                        range.node
                    )));
                }
            }
        }
        let find = |node: &NodeId| -> Option<&OriginRange> {
            if ranges.len() <= SMALL_RANGE_COUNT {
                ranges.iter().find(|range| &range.node == node)
            } else {
                by_origin.get(node).copied()
            }
        };
        for change in changes {
            let dot = change.dot();
            let inside =
                find(&dot.node).is_some_and(|r| r.since < dot.counter && dot.counter <= r.until);
            if !inside {
                return Err(ApplyError::Invalid(format!(
                    "entry {dot:?} is outside the delta's ranges"
                )));
            }
        }
        if let Some(own) = find(&self.node) {
            self.check_own_origin(from, own.until, changes)?;
        }
        for range in ranges {
            let have = self.vv.get(&range.node);
            if range.since > have {
                return Err(ApplyError::StaleBase {
                    from: from.clone(),
                    origin: range.node.clone(),
                    since: range.since,
                    have,
                });
            }
        }
        Ok(())
    }

    /// Only this node writes its dots: coverage of them beyond its own counter is writes it
    /// did not make, refused, except from its own log (`from` is itself), while it is fresh
    /// (it adopts what its previous incarnation wrote) and while its identity is contested (it
    /// writes nothing, and adopts what the other writer wrote), up to `ADOPTED_COUNTER_MAX`.
    ///
    /// Writes of this node's name beyond its counter that were all stamped before this daemon
    /// started (`set_incarnation`) are adopted too: a previous incarnation's, or those of a
    /// duplicate stopped before this one started, which this node missed.
    fn check_own_origin(
        &self,
        from: &NodeId,
        until: u64,
        changes: &[Change],
    ) -> Result<(), ApplyError> {
        let own = self.own_counter();
        let adopts = from == &self.node
            || self.replaying
            || ((self.is_fresh()
                || self.identity.contest().is_some()
                || self.leftover_writes(changes))
                && until <= ADOPTED_COUNTER_MAX);
        if until > own && !adopts {
            return Err(ApplyError::OwnOrigin {
                from: from.clone(),
                until,
                own,
            });
        }
        Ok(())
    }

    /// Whether `changes` hold writes of this node's name beyond its counter, all stamped
    /// before this daemon started (see `check_own_origin`).
    fn leftover_writes(&self, changes: &[Change]) -> bool {
        let Some(started) = self.identity.started() else {
            return false;
        };
        let own = self.own_counter();
        let mut beyond = changes
            .iter()
            .filter(|change| change.dot().node == self.node && change.dot().counter > own)
            .peekable();
        beyond.peek().is_some() && beyond.all(|change| *change.hlc().get_time() <= started)
    }

    /// Records a peer's summary (received from that peer, so `peer` comes from its
    /// certificate). The peer is the authority on its own writes: if this replica covers
    /// more of them than the peer says it made, that coverage came from a lying or buggy
    /// relay (or the peer lost its state), and whatever of it this replica cannot show (it
    /// holds no such write, and collected no tombstone of it) is taken back; those writes
    /// are then fetched again, so the peer's next writes are not ignored here. Returns
    /// whether the version vector changed; the caller persists it.
    pub fn observe_summary(&mut self, peer: &NodeId, summary: &Summary) -> bool {
        if peer == &self.node {
            return false;
        }
        // A summary covering this node's writes beyond its counter is not taken as evidence
        // of another writer: after a restart, peers may cover writes stamped before it
        // started (a duplicate since stopped). The delta that brings them tells (`apply_delta`).
        let covered = self.vv.get(peer);
        let mut corrected = false;
        if summary.vv.get(peer) < covered {
            let shown = self
                .state
                .highest_counter(peer)
                .max(self.gc_floor.get(peer));
            if shown < covered {
                let at = *self.clock.last().get_time();
                self.set_covered(peer, shown, at);
                corrected = true;
            }
        }
        let stable = covers(&self.vv, &summary.vv);
        let view = self.peers.entry(peer.clone()).or_default();
        view.latest = summary.vv.clone();
        if stable {
            view.stable = Some(summary.vv.clone());
            self.unstable_peers.remove(peer);
        } else {
            self.unstable_peers.insert(peer.clone());
        }
        corrected
    }

    fn promote_stable_summaries(&mut self) {
        let vv = &self.vv;
        let peers = &mut self.peers;
        self.unstable_peers.retain(|peer| {
            let Some(view) = peers.get_mut(peer) else {
                return false;
            };
            if !covers(vv, &view.latest) {
                return true;
            }
            view.stable = Some(view.latest.clone());
            false
        });
    }

    /// The writes every member is known to have seen, and this replica too.
    fn stable_vv(&self) -> Option<VersionVector> {
        let mut stable = self.vv.clone();
        for (member, _) in self.state.nodes() {
            if member == &self.node {
                continue;
            }
            let summary = self.peers.get(member)?.stable.as_ref()?;
            stable.glb(summary);
        }
        Some(stable)
    }

    /// Drops causally stable tombstones (see the module comment); returns how many.
    pub fn collect_garbage(&mut self) -> usize {
        let evicted: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|peer| self.state.is_evicted(peer))
            .cloned()
            .collect();
        for peer in evicted {
            self.peers.remove(&peer);
            self.unstable_peers.remove(&peer);
        }
        self.identity.prune(&self.state);
        let Some(stable) = self.stable_vv() else {
            return 0;
        };
        let mut collected = 0;
        for (key, dot) in self.state.tombstones() {
            if covers_dot(&stable, &dot) {
                self.state.remove_key(&key);
                let current = self.gc_floor.get(&dot.node);
                self.gc_floor
                    .dots
                    .insert(dot.node.clone(), current.max(dot.counter));
                collected += 1;
            }
        }
        collected
    }

    /// Digest of the replicated state only.
    pub fn digest(&self) -> [u8; 32] {
        self.state.digest()
    }

    // ---- persistence ----

    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            node: self.node.clone(),
            changes: self.state.all_changes(),
            vv: self.vv.clone(),
            gc_floor: self.gc_floor.clone(),
            clock_last: *self.clock.last().get_time(),
            peers: self.peers.clone(),
        }
    }

    pub fn from_snapshot(
        node: NodeId,
        max_drift: Duration,
        snapshot: Snapshot,
    ) -> Result<Self, ApplyError> {
        if snapshot.node != node {
            return Err(ApplyError::Invalid(format!(
                "snapshot is of node {}, not {node}",
                snapshot.node
            )));
        }
        if !covers(&snapshot.vv, &snapshot.gc_floor) {
            return Err(ApplyError::Invalid(
                "snapshot gc floor is ahead of its vv".to_owned(),
            ));
        }
        let mut state = ClusterState::default();
        let mut clock_last = snapshot.clock_last;
        for change in snapshot.changes {
            change
                .validate()
                .map_err(|error| ApplyError::Invalid(error.to_string()))?;
            if !covers_dot(&snapshot.vv, change.dot()) {
                return Err(ApplyError::Invalid(format!(
                    "snapshot entry {:?} is outside its vv",
                    change.dot()
                )));
            }
            if state.holds_dot(change.dot()) || state.change_at(&change.key()).is_some() {
                return Err(ApplyError::Invalid(format!(
                    "snapshot holds {:?} twice",
                    change.key()
                )));
            }
            clock_last = clock_last.max(*change.hlc().get_time());
            // Free dot and free key (checked above): stored.
            state.apply_change(change).map_err(|taken| {
                ApplyError::Invalid(format!("snapshot holds dot {:?} twice", taken.dot))
            })?;
        }
        Ok(Self {
            clock: Clock::resume(&node, max_drift, clock_last),
            node,
            max_drift,
            state,
            vv: snapshot.vv,
            gc_floor: snapshot.gc_floor,
            unstable_peers: snapshot
                .peers
                .iter()
                .filter(|(_, view)| view.stable.as_ref() != Some(&view.latest))
                .map(|(peer, _)| peer.clone())
                .collect(),
            peers: snapshot.peers,
            hlc_ids: BTreeMap::new(),
            identity: IdentityWatch::default(),
            replaying: false,
            recent: RecentOrigins::default(),
        })
    }

    /// The configured maximum clock drift.
    pub fn max_drift(&self) -> Duration {
        self.max_drift
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{DRIFT, meta, ms, node, replica};

    fn record(id: &str, owner: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.parse().unwrap(),
            service: "web".parse().unwrap(),
            node: node(owner),
            spec_version: Timestamp::new(NTP64(1), node(owner).hlc_id()),
            ip: None,
        }
    }

    /// `to` pulls everything it lacks from `from`.
    fn pull(from: &Replica, to: &mut Replica, now: NTP64) -> Applied {
        let delta = from.delta_for(&to.summary());
        to.apply_delta(now, from.node(), &delta).unwrap()
    }

    #[test]
    fn a_batch_of_local_writes_travels_as_one_delta() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_node_meta(ms(1), meta("10.0.1.0/24")).unwrap();
        pull(&a, &mut b, ms(1));
        let since = a.own_counter();
        assert_eq!(a.own_delta_since(since).entry_count(), 0);
        // A batch: two records with addresses, a counter written twice, one record removed.
        for id in ["web-1", "web-2"] {
            let (ip, _) = a.allocate_ip(ms(2), &id.parse().unwrap()).unwrap();
            let mut record = record(id, "a");
            record.ip = Some(ip);
            a.add_container(ms(2), record).unwrap();
        }
        a.adjust_resource(ms(3), Resource::Containers, 1).unwrap();
        a.adjust_resource(ms(3), Resource::Containers, 1).unwrap();
        a.remove_container(ms(4), &"web-1".parse().unwrap())
            .unwrap();
        let delta = a.own_delta_since(since);
        assert_eq!(delta.origin_ranges().len(), 1);
        assert_eq!(delta.origin_ranges()[0].since, since);
        assert_eq!(delta.origin_ranges()[0].until, a.own_counter());
        // Two IP claims, web-2's add, web-1's tombstone, the counter's last value: the first
        // counter write and web-1's add were superseded inside the batch.
        assert_eq!(delta.entry_count(), 5);
        let applied = b.apply_delta(ms(5), a.node(), &delta).unwrap();
        assert_eq!(applied.entries_applied, 5);
        assert_eq!(b.digest(), a.digest());
        assert_eq!(b.summary(), a.summary());
        assert_eq!(b.state().resource_used(&node("a"), Resource::Containers), 2);
        // Nothing new: an empty delta.
        assert!(a.own_delta_since(a.own_counter()).is_empty());
    }

    #[test]
    fn remove_relayed_through_a_third_replica_is_not_lost() {
        // crdts issue 160: a remove whose context did not advance the clock was
        // dropped when gossiped on. Here a remove is a write with its own dot.
        let (mut a, mut b, mut c) = (replica("a"), replica("b"), replica("c"));
        a.add_container(ms(1), record("web-1", "a")).unwrap();
        pull(&a, &mut b, ms(2));
        pull(&a, &mut c, ms(2));
        b.remove_container(ms(3), &"web-1".parse().unwrap())
            .unwrap();
        pull(&b, &mut c, ms(4)); // c learns the remove from b
        pull(&c, &mut a, ms(5)); // a learns it from c, never from b
        for replica in [&a, &b, &c] {
            assert_eq!(
                replica.state().containers().count(),
                0,
                "{}",
                replica.node()
            );
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(b.digest(), c.digest());
    }

    #[test]
    fn concurrent_add_survives_a_remove_that_did_not_see_it() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.add_container(ms(1), record("web-1", "a")).unwrap();
        pull(&a, &mut b, ms(2));
        a.add_container(ms(3), record("web-1", "a")).unwrap(); // re-add: new add-dot
        b.remove_container(ms(4), &"web-1".parse().unwrap())
            .unwrap(); // saw only the first add
        pull(&a, &mut b, ms(5));
        pull(&b, &mut a, ms(5));
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.state().containers().count(), 1, "add-wins");
    }

    #[test]
    fn removed_service_does_not_come_back_after_gc() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        b.put_node_meta(ms(1), meta("10.88.2.0/24")).unwrap();
        let put = a
            .put_service(ms(2), "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        pull(&a, &mut b, ms(3));
        pull(&b, &mut a, ms(3));
        a.remove_service(ms(4), &"web".parse().unwrap()).unwrap();
        pull(&a, &mut b, ms(5));
        a.observe_summary(b.node(), &b.summary());
        b.observe_summary(a.node(), &a.summary());
        assert_eq!(a.collect_garbage(), 1);
        assert_eq!(b.collect_garbage(), 1);
        assert_eq!(a.state().tombstone_count(), 0);
        // A duplicate of the old put arrives late: its dot is covered, so it is ignored.
        let applied = b.apply_delta(ms(6), a.node(), &put).unwrap();
        assert_eq!(
            applied,
            Applied {
                entries_applied: 0,
                entries_ignored: 1,
                ranges_clamped: 0,
            }
        );
        assert!(b.state().service(&"web".parse().unwrap()).is_none());
    }

    #[test]
    fn a_summary_ahead_of_this_replica_becomes_stable_once_it_catches_up_even_across_a_restore() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        b.put_node_meta(ms(1), meta("10.88.2.0/24")).unwrap();
        pull(&a, &mut b, ms(2));
        pull(&b, &mut a, ms(2));
        a.put_service(ms(3), "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        a.remove_service(ms(4), &"web".parse().unwrap()).unwrap();
        pull(&a, &mut b, ms(5));
        // b has seen the tombstone, but also wrote something a lacks: its summary is ahead.
        b.put_service(ms(6), "db".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        a.observe_summary(b.node(), &b.summary());
        assert_eq!(
            a.collect_garbage(),
            0,
            "b's summary is not covered by a yet"
        );
        let mut a = Replica::from_snapshot(node("a"), DRIFT, a.to_snapshot()).unwrap();
        assert_eq!(a.collect_garbage(), 0, "nor after a restore");
        // a catches up with b's summary: it is stable now, and the tombstone goes.
        pull(&b, &mut a, ms(7));
        assert_eq!(a.collect_garbage(), 1);
        assert_eq!(a.state().tombstone_count(), 0);
    }

    #[test]
    fn gc_waits_for_every_member_and_eviction_unblocks_it() {
        let (mut a, mut b, mut dead) = (replica("a"), replica("b"), replica("dead"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        b.put_node_meta(ms(1), meta("10.88.2.0/24")).unwrap();
        dead.put_node_meta(ms(1), meta("10.88.3.0/24")).unwrap();
        pull(&dead, &mut a, ms(2));
        pull(&b, &mut a, ms(2));
        pull(&a, &mut b, ms(2));
        a.put_service(ms(3), "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        a.remove_service(ms(4), &"web".parse().unwrap()).unwrap();
        pull(&a, &mut b, ms(5));
        a.observe_summary(b.node(), &b.summary());
        assert_eq!(a.collect_garbage(), 0, "no summary from member dead yet");
        a.observe_summary(dead.node(), &dead.summary());
        assert_eq!(a.collect_garbage(), 0, "dead has not seen the tombstone");
        a.evict_node(ms(6), dead.node()).unwrap();
        // The eviction is itself a tombstone that b must see before it is collected.
        assert_eq!(a.collect_garbage(), 1);
        assert_eq!(a.state().tombstone_count(), 1);
        pull(&a, &mut b, ms(7));
        a.observe_summary(b.node(), &b.summary());
        assert_eq!(a.collect_garbage(), 1);
        assert_eq!(a.state().tombstone_count(), 0);
    }

    #[test]
    fn a_peer_below_the_gc_floor_gets_a_snapshot_that_removes_what_it_missed() {
        let (mut a, mut b, mut late) = (replica("a"), replica("b"), replica("late"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        b.put_node_meta(ms(1), meta("10.88.2.0/24")).unwrap();
        pull(&b, &mut a, ms(2));
        a.add_container(ms(2), record("web-1", "a")).unwrap();
        pull(&a, &mut b, ms(3));
        pull(&a, &mut late, ms(3)); // late (not a member) holds the add
        b.remove_container(ms(4), &"web-1".parse().unwrap())
            .unwrap();
        pull(&b, &mut a, ms(5));
        a.observe_summary(b.node(), &b.summary());
        assert_eq!(a.collect_garbage(), 1);
        let delta = a.delta_for(&late.summary());
        assert!(delta.is_full());
        late.apply_delta(ms(6), a.node(), &delta).unwrap();
        assert_eq!(late.state().containers().count(), 0);
        assert_eq!(late.digest(), a.digest());
    }

    #[test]
    fn clock_drift_is_refused_and_changes_nothing() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        let delta = a
            .put_service(ms(10_000), "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        let before = (b.digest(), b.summary(), b.clock().last());
        let error = b.apply_delta(ms(8_000), a.node(), &delta).unwrap_err();
        assert!(matches!(error, ApplyError::ClockDrift { .. }), "{error}");
        assert_eq!((b.digest(), b.summary(), b.clock().last()), before);
        b.apply_delta(ms(9_500), a.node(), &delta).unwrap();
        assert!(b.state().service(&"web".parse().unwrap()).is_some());
    }

    #[test]
    fn a_delta_with_a_gap_is_refused_as_stale() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_service(ms(1), "one".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        let second = a
            .put_service(ms(2), "two".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        let before = b.digest();
        let error = b.apply_delta(ms(3), a.node(), &second).unwrap_err();
        assert!(
            matches!(
                error,
                ApplyError::StaleBase {
                    since: 1,
                    have: 0,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(b.digest(), before);
        pull(&a, &mut b, ms(4));
        assert_eq!(b.digest(), a.digest());
    }

    #[test]
    fn invalid_deltas_are_refused_whole() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        let mut delta = a
            .put_service(ms(1), "one".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        a.adjust_resource(ms(2), Resource::CpuMillis, 5).unwrap();
        // A counter entry claiming to be b's, written by a: owner-only is enforced.
        let mut forged = a.delta_for(&Summary::default());
        if let Some(Change::Counter { node: owner, .. }) = forged.changes.last_mut() {
            *owner = node("b");
        }
        let before = b.digest();
        assert!(matches!(
            b.apply_delta(ms(3), a.node(), &forged),
            Err(ApplyError::Invalid(_))
        ));
        if let Some(Change::Service { entry, .. }) = delta.changes.first_mut() {
            entry.value = Some(ServiceSpec::new("").into());
        }
        assert!(matches!(
            b.apply_delta(ms(3), a.node(), &delta),
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(b.digest(), before);
    }

    /// A write delivered again (the push reaches a member from several others) changes
    /// nothing and is not checked again. A copy with a different value for that dot is still
    /// ignored, and the identity watch sees two writes with one dot; its stamp is checked, and
    /// a repair, which merges covered writes too, still refuses a bad one.
    #[test]
    fn a_write_delivered_again_is_ignored_and_a_different_copy_is_seen() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        let delta = a
            .put_service(ms(1), "one".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        assert_eq!(
            b.apply_delta(ms(2), a.node(), &delta)
                .unwrap()
                .entries_applied,
            1
        );
        let held = b.digest();
        let again = b.apply_delta(ms(3), a.node(), &delta).unwrap();
        assert_eq!((again.entries_applied, again.entries_ignored), (0, 1));
        assert_eq!(b.digest(), held);
        assert!(b.duplicates().is_empty());

        // The same dot with a spec no honest node writes: ignored, not stored, and seen as a
        // second write with that dot (as a valid one would be).
        let mut other = delta.clone();
        if let Some(Change::Service { entry, .. }) = other.changes.first_mut() {
            entry.value = Some(ServiceSpec::new("").into());
        }
        let ignored = b.apply_delta(ms(4), a.node(), &other).unwrap();
        assert_eq!(ignored.entries_applied, 0);
        assert_eq!(b.digest(), held);
        assert!(
            b.duplicates().contains_key(a.node()),
            "{:?}",
            b.duplicates()
        );

        // A covered write still needs its writer's stamp.
        let mut foreign = delta.clone();
        if let Some(Change::Service { entry, .. }) = foreign.changes.first_mut() {
            entry.hlc = Timestamp::new(*entry.hlc.get_time(), node("c").hlc_id());
        }
        assert!(matches!(
            b.apply_delta(ms(5), a.node(), &foreign),
            Err(ApplyError::Invalid(_))
        ));
        // A repair merges covered writes: the bad value is refused there.
        let repair = Delta {
            base: DeltaBase::Repair {
                vv: b.version_vector().clone(),
            },
            changes: other.changes.clone(),
        };
        assert!(matches!(
            b.apply_delta(ms(6), a.node(), &repair),
            Err(ApplyError::Invalid(_))
        ));
        assert_eq!(b.digest(), held);
    }

    /// A spec of about 250 KiB: every field in bounds, three fill a record.
    fn large_spec(image: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(image);
        for index in 0..60 {
            spec.env.insert(format!("VAR_{index}"), "x".repeat(4096));
        }
        spec
    }

    #[test]
    fn a_record_on_top_of_the_held_one_is_still_refused_over_the_size_limit() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        let name: ServiceName = "big".parse().unwrap();
        for (at, image) in [(1, "/img/1"), (2, "/img/2"), (3, "/img/3")] {
            a.put_service(ms(at), name.clone(), large_spec(image))
                .unwrap();
            pull(&a, &mut b, ms(at));
        }
        let (held, _) = b.state().service_record(&name).unwrap();
        assert_eq!(held.history.len(), 2, "three versions fill the record");
        let oldest = held.history[1].clone();
        let since = a.own_counter();
        a.put_service(ms(4), name.clone(), large_spec("/img/4"))
            .unwrap();
        let honest = a.own_delta_since(since);
        // The writer dropped the oldest version to stay within the limit; a forged copy
        // keeps it. Every version lines up with what b holds.
        let mut forged = honest.clone();
        if let Some(Change::Service { entry, .. }) = forged.changes.first_mut()
            && let Some(record) = entry.value.as_mut()
        {
            assert_eq!(record.history.len(), 2);
            record.history.push(oldest);
            assert!(record.encoded_bytes() > crate::rollout::SERVICE_RECORD_BYTES_MAX);
        }
        let before = b.digest();
        let refused = b.apply_delta(ms(5), a.node(), &forged).unwrap_err();
        assert!(
            refused.to_string().contains("encodes to"),
            "refused for its size: {refused}"
        );
        assert_eq!(b.digest(), before);
        b.apply_delta(ms(5), a.node(), &honest).unwrap();
        assert_eq!(b.digest(), a.digest());
        // After a restart nothing is known of the records' sizes: they are counted again.
        let mut restored = Replica::from_snapshot(node("b"), DRIFT, b.to_snapshot()).unwrap();
        let since = a.own_counter();
        a.put_service(ms(6), name.clone(), large_spec("/img/5"))
            .unwrap();
        restored
            .apply_delta(ms(6), a.node(), &a.own_delta_since(since))
            .unwrap();
        assert_eq!(restored.digest(), a.digest());
    }

    #[test]
    fn a_record_bound_is_kept_with_its_write_and_goes_with_it() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        let name: ServiceName = "web".parse().unwrap();
        for (at, image) in [(1, "/img/1"), (2, "/img/2"), (3, "/img/3")] {
            a.put_service(ms(at), name.clone(), ServiceSpec::new(image))
                .unwrap();
            pull(&a, &mut b, ms(at));
            let entry = b.state().service_entry(&name).unwrap().clone();
            let record = entry.value.as_ref().unwrap();
            let bound = b.state().record_bound(&name);
            if record.history.is_empty() {
                assert_eq!(bound, None, "a bare spec is not bounded");
            } else {
                let bound = bound.expect("a record from a peer keeps its bound");
                assert!(bound >= record.encoded_bytes(), "{bound} bounds the record");
            }
        }
        let restored = Replica::from_snapshot(node("b"), DRIFT, b.to_snapshot()).unwrap();
        assert_eq!(restored.state().record_bound(&name), None, "not persisted");
        // A write made here replaces the peer's: the bound goes with the write it bounded.
        b.put_service(ms(4), name.clone(), ServiceSpec::new("/img/4"))
            .unwrap();
        assert!(
            !b.state()
                .service_record(&name)
                .unwrap()
                .0
                .history
                .is_empty()
        );
        assert_eq!(
            b.state().record_bound(&name),
            None,
            "replaced with its write"
        );
    }

    /// A write checked beside the held one comes back to it by position; when that key was
    /// removed meanwhile and its slot went to another service, the write is stored as a copy
    /// under its own name and the other service is left alone.
    #[test]
    fn a_lined_up_write_whose_held_slot_was_reused_is_stored_as_a_copy() {
        let writer = node("x");
        let write = |counter: u64, record: ServiceRecord| Entry {
            hlc: Timestamp::new(ms(counter), writer.hlc_id()),
            dot: Dot {
                node: writer.clone(),
                counter,
            },
            value: Some(record),
        };
        let (a, b): (ServiceName, ServiceName) = ("a".parse().unwrap(), "b".parse().unwrap());
        let first = ServiceRecord::from(ServiceSpec::new("/img/a1"));
        let mut state = ClusterState::default();
        let service = |name: &ServiceName, entry| Change::Service {
            name: name.clone(),
            entry,
        };
        state
            .apply_change(service(&a, write(1, first.clone())))
            .unwrap();
        let (held, _, _) = state.find_service(&a).unwrap();
        state.remove_key(&crate::state::Key::Service(a.clone()));
        let other = write(2, ServiceRecord::from(ServiceSpec::new("/img/b")));
        state.apply_change(service(&b, other.clone())).unwrap();
        assert!(
            state.find_service(&b).unwrap().0.same_slot(&held),
            "the slot is reused"
        );

        let next = write(
            3,
            ServiceRecord::succeeding(
                Some((&first, write(1, first.clone()).hlc)),
                ServiceSpec::new("/img/a2"),
            ),
        );
        let outcome = state.apply_service_lined_up(&a, &next, held, Lineup::OnTop, 1_000);
        assert_eq!(outcome, MergeOutcome::Stored { replaced: None });
        assert_eq!(state.service_entry(&a), Some(&next));
        assert_eq!(state.service_entry(&b), Some(&other));
        assert_eq!(state.record_bound(&a), Some(1_000));
        assert_eq!(state.record_bound(&b), None);
    }

    #[test]
    fn malformed_ranges_are_refused() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_service(ms(1), "one".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        let good = a.delta_for(&Summary::default());
        let range = |node_name: &str, since, until| OriginRange {
            node: node(node_name),
            since,
            until,
        };
        let with_ranges = |ranges: Vec<OriginRange>| Delta {
            base: DeltaBase::Ranges(ranges),
            changes: good.changes.clone(),
        };
        let many: Vec<OriginRange> = (0..SMALL_RANGE_COUNT + 2)
            .map(|i| range(&format!("x{i}"), 0, 1))
            .collect();
        let mut many_with_duplicate = many.clone();
        many_with_duplicate.push(range("a", 0, 1));
        many_with_duplicate.push(range("a", 0, 1));
        let mut many_with_a = many;
        many_with_a.push(range("a", 0, 1));
        let cases = [
            with_ranges(vec![range("a", 0, 1), range("a", 0, 1)]),
            with_ranges(vec![range("a", 1, 1)]),
            with_ranges(vec![range("b", 0, 1)]),
            with_ranges(vec![range("a", 1, 2)]),
            with_ranges(many_with_duplicate),
        ];
        let before = (b.digest(), b.summary());
        for delta in &cases {
            let result = b.apply_delta(ms(2), a.node(), delta);
            assert!(
                matches!(result, Err(ApplyError::Invalid(_))),
                "{delta:?}: {result:?}"
            );
            assert_eq!((b.digest(), b.summary()), before);
        }
        // The large-delta path accepts a valid delta with many origins.
        b.apply_delta(ms(2), a.node(), &with_ranges(many_with_a))
            .unwrap();
        assert_eq!(b.digest(), a.digest());
    }

    #[test]
    fn owner_only_operations() {
        let mut a = replica("a");
        let error = a.add_container(ms(1), record("web-1", "b")).unwrap_err();
        assert!(matches!(error, ReplicaError::NotOwner { .. }));
        assert!(matches!(
            a.evict_node(ms(1), &node("a")),
            Err(ReplicaError::EvictSelf { .. })
        ));
        assert!(matches!(
            a.remove_service(ms(1), &"web".parse().unwrap()),
            Err(ReplicaError::NotFound { .. })
        ));
        assert!(matches!(
            a.allocate_ip(ms(1), &"c".parse().unwrap()),
            Err(ReplicaError::NoSubnet { .. })
        ));
    }

    #[test]
    fn counters_are_machine_integers_with_checked_overflow() {
        // crdts' PNCounter counts in BigInt; ours is u64 per direction.
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.adjust_resource(ms(1), Resource::MemoryBytes, 1 << 40)
            .unwrap();
        a.adjust_resource(ms(2), Resource::MemoryBytes, -(1 << 20))
            .unwrap();
        b.adjust_resource(ms(1), Resource::MemoryBytes, 7).unwrap();
        pull(&a, &mut b, ms(3));
        pull(&b, &mut a, ms(3));
        assert_eq!(
            a.state().resource_used(&node("a"), Resource::MemoryBytes),
            (1 << 40) - (1 << 20)
        );
        assert_eq!(
            a.state().resource_used(&node("b"), Resource::MemoryBytes),
            7
        );
        assert_eq!(a.digest(), b.digest());
        a.adjust_resource(ms(4), Resource::Containers, i64::MAX)
            .unwrap();
        a.adjust_resource(ms(5), Resource::Containers, i64::MAX)
            .unwrap();
        let before = a.digest();
        let error = a
            .adjust_resource(ms(6), Resource::Containers, i64::MAX)
            .unwrap_err();
        assert_eq!(
            error,
            ReplicaError::CounterOverflow {
                resource: Resource::Containers
            }
        );
        assert_eq!(a.digest(), before);
    }

    #[test]
    fn ips_come_from_the_own_subnet_and_conflicts_resolve_the_same_everywhere() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        let (ip, _) = a.allocate_ip(ms(2), &"c1".parse().unwrap()).unwrap();
        assert_eq!(ip, "10.88.1.2".parse::<Ipv4Addr>().unwrap());
        let (again, delta) = a.allocate_ip(ms(3), &"c1".parse().unwrap()).unwrap();
        assert_eq!((again, delta.is_empty()), (ip, true));
        // b claims the same subnet later (concurrently): a's earlier claim wins.
        b.put_node_meta(ms(5), meta("10.88.1.0/24")).unwrap();
        let (b_ip, _) = b.allocate_ip(ms(6), &"c9".parse().unwrap()).unwrap();
        assert_eq!(b_ip, ip);
        pull(&a, &mut b, ms(7));
        pull(&b, &mut a, ms(7));
        assert_eq!(a.digest(), b.digest());
        for replica in [&a, &b] {
            let state = replica.state();
            assert_eq!(
                state.subnet_owner(&"10.88.1.0/24".parse().unwrap()),
                Some(node("a"))
            );
            let conflicts = state.subnet_conflicts();
            assert_eq!(conflicts.len(), 1);
            assert_eq!(
                (conflicts[0].winner.clone(), conflicts[0].losers.clone()),
                (node("a"), vec![node("b")])
            );
            let ip_conflicts = state.ip_conflicts();
            assert_eq!(ip_conflicts.len(), 1);
            assert_eq!(ip_conflicts[0].winner.node, node("a"));
            assert_eq!(ip_conflicts[0].losers[0].node, node("b"));
        }
        assert!(matches!(
            b.allocate_ip(ms(8), &"c8".parse().unwrap()),
            Err(ReplicaError::SubnetConflict { .. })
        ));
        // The loser releases; the conflict is gone on both after sync.
        b.release_ip(ms(9), ip).unwrap();
        pull(&b, &mut a, ms(10));
        assert!(a.state().ip_conflicts().is_empty());
        assert_eq!(a.state().ip_allocations().len(), 1);
    }

    #[test]
    fn heartbeats_keep_the_subnet_claim_time() {
        let mut a = replica("a");
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        let claimed = a
            .state()
            .node_entry(&node("a"))
            .unwrap()
            .value
            .as_ref()
            .unwrap()
            .subnet_claimed;
        a.put_node_meta(ms(2), meta("10.88.1.0/24")).unwrap();
        let record = a
            .state()
            .node_entry(&node("a"))
            .unwrap()
            .value
            .clone()
            .unwrap();
        assert_eq!(record.subnet_claimed, claimed);
        assert_eq!(record.meta.heartbeat, a.clock().last());
    }

    #[test]
    fn snapshot_round_trip_restores_everything() {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        a.put_service(ms(2), "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        a.remove_service(ms(3), &"web".parse().unwrap()).unwrap();
        a.observe_summary(&node("b"), &b.summary());
        pull(&a, &mut b, ms(3));
        let bytes = crate::codec::encode_snapshot(&a.to_snapshot());
        let restored = Replica::from_snapshot(
            node("a"),
            DRIFT,
            crate::codec::decode_snapshot(&bytes, 1 << 20).unwrap(),
        )
        .unwrap();
        assert_eq!(restored.digest(), a.digest());
        assert_eq!(restored.summary(), a.summary());
        assert_eq!(restored.peers(), a.peers());
        assert_eq!(restored.state().tombstone_count(), 1);
        assert_eq!(restored.clock().last(), a.clock().last());
        let wrong = Replica::from_snapshot(node("b"), DRIFT, a.to_snapshot());
        assert!(matches!(wrong, Err(ApplyError::Invalid(_))));
    }
}

#[cfg(test)]
#[path = "replica_trust_tests.rs"]
mod trust_tests;

#[cfg(test)]
#[path = "replica_identity_tests.rs"]
mod identity_tests;
