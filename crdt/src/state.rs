//! `ClusterState`: the replicated document. Six entry tables (services,
//! node metadata, containers, resource counters, IP allocations, container statuses), a per-origin
//! index of entries by dot (with each live entry's hash once a digest needed it, so a digest
//! after a change encodes only the new entries), and the read-only queries the scheduler uses.
//!
//! Queries are deterministic: the same entries give the same answers in the
//! same order on every node, conflicts included. *Invariant:* one dot names one stored
//! entry; a change whose dot is already indexed is refused before anything changes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uhlc::Timestamp;

use crate::entry::{Dot, Entry, MergeOutcome, Position, Table};
use crate::record_check::{self, Checked, Held, Lineup, RecordFault, WriteKey};
use crate::status::{NodeStatus, StatusError};
use crate::{
    ContainerId, ContainerRecord, IpAllocation, IpConflict, NodeId, NodeMeta, Resource,
    ServiceName, ServiceRecord, ServiceSpec, SpecError, Subnet, SubnetConflict,
};

/// Node metadata as stored: the meta plus when this node first claimed its
/// current subnet (heartbeats rewrite the meta but keep the claim time, so
/// the earliest claim keeps winning a subnet conflict).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRecord {
    pub meta: NodeMeta,
    pub subnet_claimed: Option<Timestamp>,
}

/// A PN-Counter entry: totals of increments and decrements by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Counts {
    pub increments: u64,
    pub decrements: u64,
}

/// The element of the IP OR-Set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpClaim {
    pub container: ContainerId,
    pub node: NodeId,
}

/// Where an entry lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    Service(ServiceName),
    Node(NodeId),
    Container(ContainerId, Dot),
    Counter(NodeId, Resource),
    Ip(Ipv4Addr, Dot),
    Status(NodeId),
}

/// One entry with its key: the unit of deltas and snapshots.
// A service's record (spec, history, rollout marks) is the largest variant; changes are
// built once per entry and moved into vectors, so boxing it would add an allocation per
// service entry without saving a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Change {
    /// Specs travel as JSON inside the binary encoding, so fields added later with
    /// defaults do not change the format.
    Service {
        name: ServiceName,
        #[serde(with = "crate::entry::json_value")]
        entry: Entry<ServiceRecord>,
    },
    /// Node metadata travels as JSON inside the binary encoding, like specs.
    Node {
        node: NodeId,
        #[serde(with = "crate::entry::json_value")]
        entry: Entry<NodeRecord>,
    },
    Container {
        id: ContainerId,
        add: Dot,
        entry: Entry<ContainerRecord>,
    },
    Counter {
        node: NodeId,
        resource: Resource,
        entry: Entry<Counts>,
    },
    Ip {
        ip: Ipv4Addr,
        add: Dot,
        entry: Entry<IpClaim>,
    },
    /// A node's report on its own containers (JSON inside, like specs).
    Status {
        node: NodeId,
        #[serde(with = "crate::entry::json_value")]
        entry: Entry<NodeStatus>,
    },
}

impl Change {
    pub fn dot(&self) -> &Dot {
        match self {
            Change::Service { entry, .. } => &entry.dot,
            Change::Node { entry, .. } => &entry.dot,
            Change::Container { entry, .. } => &entry.dot,
            Change::Counter { entry, .. } => &entry.dot,
            Change::Ip { entry, .. } => &entry.dot,
            Change::Status { entry, .. } => &entry.dot,
        }
    }

    pub fn hlc(&self) -> Timestamp {
        match self {
            Change::Service { entry, .. } => entry.hlc,
            Change::Node { entry, .. } => entry.hlc,
            Change::Container { entry, .. } => entry.hlc,
            Change::Counter { entry, .. } => entry.hlc,
            Change::Ip { entry, .. } => entry.hlc,
            Change::Status { entry, .. } => entry.hlc,
        }
    }

    pub fn is_tombstone(&self) -> bool {
        match self {
            Change::Service { entry, .. } => entry.is_tombstone(),
            Change::Node { entry, .. } => entry.is_tombstone(),
            Change::Container { entry, .. } => entry.is_tombstone(),
            Change::Counter { entry, .. } => entry.is_tombstone(),
            Change::Ip { entry, .. } => entry.is_tombstone(),
            Change::Status { entry, .. } => entry.is_tombstone(),
        }
    }

    pub fn key(&self) -> Key {
        match self {
            Change::Service { name, .. } => Key::Service(name.clone()),
            Change::Node { node, .. } => Key::Node(node.clone()),
            Change::Container { id, add, .. } => Key::Container(id.clone(), add.clone()),
            Change::Counter { node, resource, .. } => Key::Counter(node.clone(), *resource),
            Change::Ip { ip, add, .. } => Key::Ip(*ip, add.clone()),
            Change::Status { node, .. } => Key::Status(node.clone()),
        }
    }

    /// The order that decides between two writes claiming one dot (one dot, two writes: a
    /// lying peer, or two daemons with one name): greater HLC, then key, then wire bytes.
    /// Total, and the same on every replica.
    pub fn collision_rank(&self) -> (Timestamp, Key, Vec<u8>) {
        let bytes = postcard::to_allocvec(self).expect("in-memory entries serialize");
        (self.hlc(), self.key(), bytes)
    }

    /// Checks what every replica relies on: the HLC carries the writer's id,
    /// owner-only entries are written by their owner, adds use their own dot
    /// as add-dot, counters never hold tombstones, specs are valid.
    pub fn validate(&self) -> Result<(), InvalidChange> {
        self.validate_with_writer_id(&self.dot().node.hlc_id())
    }

    /// `validate` with the writer's HLC id already computed (it is a hash, and
    /// a delta carries many entries of few writers).
    pub fn validate_with_writer_id(&self, writer_id: &uhlc::ID) -> Result<(), InvalidChange> {
        self.validate_beside(writer_id, None).map(|_| ())
    }

    /// The part of `validate` that does not look at the value: a counter above 0 and the
    /// writer's id in the HLC.
    pub(crate) fn validate_stamp(&self, writer_id: &uhlc::ID) -> Result<(), InvalidChange> {
        let dot = self.dot();
        if dot.counter == 0 {
            return Err(InvalidChange::ZeroCounter { dot: dot.clone() });
        }
        if self.hlc().get_id() != writer_id {
            return Err(InvalidChange::ForeignHlc { dot: dot.clone() });
        }
        Ok(())
    }

    /// `validate_with_writer_id` for a service entry whose name holds `held` here: the
    /// versions of the record it shares with `held` are not checked again
    /// (`record_check`). Returns what the check of a service record with history found.
    pub(crate) fn validate_beside(
        &self,
        writer_id: &uhlc::ID,
        held: Option<Held<'_>>,
    ) -> Result<Option<Checked>, InvalidChange> {
        self.validate_stamp(writer_id)?;
        match self {
            Change::Service { name, entry } => {
                // Fields only: a spec written before its size was bounded still loads and
                // travels (see `ServiceSpec::validate_fields`).
                if let Some(record) = &entry.value {
                    return record_check::check(record, held).map_err(|fault| match fault {
                        RecordFault::Spec(source) => InvalidChange::Spec {
                            service: name.clone(),
                            source,
                        },
                        RecordFault::Record(source) => InvalidChange::ServiceRecord {
                            service: name.clone(),
                            source,
                        },
                    });
                }
            }
            Change::Node { node, entry } => {
                if let Some(record) = &entry.value {
                    if &entry.dot.node != node {
                        return Err(InvalidChange::NodeMetaWriter {
                            node: node.clone(),
                            writer: entry.dot.node.clone(),
                        });
                    }
                    if record.meta.subnet.is_some() != record.subnet_claimed.is_some() {
                        return Err(InvalidChange::SubnetClaim { node: node.clone() });
                    }
                    record
                        .meta
                        .validate()
                        .map_err(|source| InvalidChange::NodeMeta {
                            node: node.clone(),
                            source,
                        })?;
                }
            }
            Change::Container { id, add, entry } => {
                if let Some(record) = &entry.value
                    && (add != &entry.dot || &record.id != id || record.node != add.node)
                {
                    return Err(InvalidChange::ContainerAdd {
                        id: id.clone(),
                        add: add.clone(),
                    });
                }
            }
            Change::Counter {
                node,
                resource,
                entry,
            } => {
                if &entry.dot.node != node || entry.value.is_none() {
                    return Err(InvalidChange::Counter {
                        node: node.clone(),
                        resource: *resource,
                        writer: entry.dot.node.clone(),
                    });
                }
            }
            Change::Ip { ip, add, entry } => {
                if let Some(claim) = &entry.value
                    && (add != &entry.dot || claim.node != add.node)
                {
                    return Err(InvalidChange::IpAdd {
                        ip: *ip,
                        add: add.clone(),
                    });
                }
            }
            Change::Status { node, entry } => {
                if let Some(status) = &entry.value {
                    if &entry.dot.node != node {
                        return Err(InvalidChange::StatusWriter {
                            node: node.clone(),
                            writer: entry.dot.node.clone(),
                        });
                    }
                    status.validate().map_err(|source| InvalidChange::Status {
                        node: node.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(None)
    }
}

/// Why an entry is one no honest replica writes; the whole delta or snapshot carrying it is
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChange {
    #[error("entry {dot:?} has counter 0")]
    ZeroCounter { dot: Dot },
    #[error("entry {dot:?} carries an hlc id that is not its writer's")]
    ForeignHlc { dot: Dot },
    #[error("service {service}: {source}")]
    Spec {
        service: ServiceName,
        #[source]
        source: SpecError,
    },
    #[error("service {service}: {source}")]
    ServiceRecord {
        service: ServiceName,
        #[source]
        source: crate::rollout::RecordError,
    },
    #[error("node meta of {node} written by {writer}")]
    NodeMetaWriter { node: NodeId, writer: NodeId },
    #[error("node meta of {node}: subnet and claim time disagree")]
    SubnetClaim { node: NodeId },
    #[error("node meta of {node}: {source}")]
    NodeMeta {
        node: NodeId,
        #[source]
        source: crate::drain::DrainError,
    },
    #[error("container add {id} at {add:?} is inconsistent")]
    ContainerAdd { id: ContainerId, add: Dot },
    #[error("counter {node}/{resource:?} written by {writer} or removed")]
    Counter {
        node: NodeId,
        resource: Resource,
        writer: NodeId,
    },
    #[error("ip add {ip} at {add:?} is inconsistent")]
    IpAdd { ip: Ipv4Addr, add: Dot },
    #[error("container status of {node} written by {writer}")]
    StatusWriter { node: NodeId, writer: NodeId },
    #[error("container status of {node}: {source}")]
    Status {
        node: NodeId,
        #[source]
        source: StatusError,
    },
}

/// A change was refused because its dot already names another stored entry (one dot, two
/// writes: a lying peer, or two daemons with one name). Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotTaken {
    pub dot: Dot,
    pub held: Key,
}

/// What the by-dot index holds for one dot: where the entry is, whether it is live, and its
/// hash once a digest needed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Indexed {
    key: Key,
    /// Tombstones are left out of the digest.
    live: bool,
    hash: HashCache,
}

/// A hash computed from the state on first use and kept until the state changes.
type HashCache = Derived<OnceLock<[u8; 32]>>;

/// Data derived from the state and kept beside it, so not part of equality.
#[derive(Debug, Clone, Default)]
struct Derived<T>(T);

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Derived<T> {}

/// The hash of one entry as the digest uses it: over its wire encoding (specs and statuses
/// as JSON, whose new fields are skipped while default), so replicas of different releases
/// holding the same entries agree.
fn entry_hash(change: &Change) -> [u8; 32] {
    let bytes = postcard::to_allocvec(change).expect("in-memory entries serialize");
    Sha256::digest(&bytes).into()
}

/// A service write as held when a write of that service was checked beside it: where the
/// services table keeps it, and which write it is (a position is reused once its key is
/// removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldAt {
    position: Position,
    write: WriteKey,
}

#[cfg(test)]
impl HeldAt {
    /// Whether both were found in the same slot.
    pub(crate) fn same_slot(&self, other: &HeldAt) -> bool {
        self.position == other.position
    }
}

/// The replicated document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// With, for a record from a peer, the bound of its encoding that `record_check` found
    /// (the next write of the service is bounded from it): it goes when the write is replaced
    /// or removed, and after a restart there is none.
    services: Table<ServiceName, ServiceRecord, Option<usize>>,
    nodes: Table<NodeId, NodeRecord>,
    containers: Table<(ContainerId, Dot), ContainerRecord>,
    counters: Table<(NodeId, Resource), Counts>,
    ips: Table<(Ipv4Addr, Dot), IpClaim>,
    statuses: Table<NodeId, NodeStatus>,
    /// origin -> counter -> the entry holding that dot. Lets a delta be computed from the
    /// missing dot ranges without scanning the state, and the digest without encoding it.
    by_dot: BTreeMap<NodeId, BTreeMap<u64, Indexed>>,
    /// The digest, computed once per state and dropped on every change.
    digest: HashCache,
}

impl ClusterState {
    /// Merges one entry; keeps the by-dot index in step. A change whose dot already names a
    /// stored entry is refused and changes nothing.
    pub(crate) fn apply_change(&mut self, change: Change) -> Result<MergeOutcome, DotTaken> {
        if let Some(indexed) = self.indexed(change.dot()) {
            return Err(DotTaken {
                dot: change.dot().clone(),
                held: indexed.key.clone(),
            });
        }
        Ok(self.apply_free_change(change, None))
    }

    /// `apply_change` of a change whose dot the caller found free (an uncovered dot of a
    /// delta the replica checked: every stored dot is covered), with the bound `record_check`
    /// found for a service record's encoding, kept with the write if it is stored.
    pub(crate) fn apply_free_change(
        &mut self,
        change: Change,
        record_bytes_max: Option<usize>,
    ) -> MergeOutcome {
        debug_assert!(self.indexed(change.dot()).is_none(), "the dot is free");
        let dot = change.dot().clone();
        let key = change.key();
        let live = !change.is_tombstone();
        let outcome = match change {
            Change::Service { name, entry } => {
                self.services
                    .merge_entry_deriving(name, entry, record_bytes_max)
            }
            Change::Node { node, entry } => self.nodes.merge_entry(node, entry),
            Change::Container { id, add, entry } => self.containers.merge_entry((id, add), entry),
            Change::Counter {
                node,
                resource,
                entry,
            } => self.counters.merge_entry((node, resource), entry),
            Change::Ip { ip, add, entry } => self.ips.merge_entry((ip, add), entry),
            Change::Status { node, entry } => self.statuses.merge_entry(node, entry),
        };
        if let MergeOutcome::Stored { replaced } = &outcome {
            self.index_stored(&dot, key, live, replaced.as_ref());
        }
        outcome
    }

    /// Indexes the entry just stored at `key` with `dot` (free: checked by the caller), in
    /// place of the entry it `replaced`.
    fn index_stored(&mut self, dot: &Dot, key: Key, live: bool, replaced: Option<&Dot>) {
        if let Some(old) = replaced {
            self.unindex(old);
        }
        let counters = match self.by_dot.get_mut(&dot.node) {
            Some(counters) => counters,
            None => self.by_dot.entry(dot.node.clone()).or_default(),
        };
        counters.insert(
            dot.counter,
            Indexed {
                key,
                live,
                hash: HashCache::default(),
            },
        );
        self.digest = HashCache::default();
    }

    /// Removes the index of the write at `dot` and returns the key it named.
    fn take_index(&mut self, dot: &Dot) -> Option<Key> {
        self.digest = HashCache::default();
        let counters = self.by_dot.get_mut(&dot.node)?;
        let taken = counters.remove(&dot.counter);
        if counters.is_empty() {
            self.by_dot.remove(&dot.node);
        }
        taken.map(|indexed| indexed.key)
    }

    /// `apply_change` of a service write whose record's versions line up with the record of
    /// the write `held` stored under `name` (`record_check::check` found `lineup`): when it
    /// replaces that write, the record stored takes the held record's versions instead of a
    /// copy of the incoming ones (they are equal). Otherwise the incoming entry is copied.
    pub(crate) fn apply_service_lined_up(
        &mut self,
        name: &ServiceName,
        entry: &Entry<ServiceRecord>,
        held: HeldAt,
        lineup: Lineup,
        bytes_max: usize,
    ) -> MergeOutcome {
        let copied = |entry: &Entry<ServiceRecord>| Change::Service {
            name: name.clone(),
            entry: entry.clone(),
        };
        debug_assert!(self.indexed(&entry.dot).is_none(), "the dot is free");
        // The held write is where it was found unless a key was removed since (a snapshot's
        // drop): then the position holds another write, or none, and the entry is copied.
        let (Some(incoming), Some((current, bound))) =
            (&entry.value, self.services.at_mut(held.position))
        else {
            return self.apply_free_change(copied(entry), Some(bytes_max));
        };
        if record_check::write_key(current) != held.write || !entry.supersedes(current) {
            return self.apply_free_change(copied(entry), Some(bytes_max));
        }
        let Some(held_record) = current.value.as_mut() else {
            return self.apply_free_change(copied(entry), Some(bytes_max));
        };
        // `entry` supersedes the held write and its dot is free: it is stored, as
        // `apply_change` would store it, in the held write's place.
        record_check::rebuild(incoming, held_record, lineup);
        *bound = Some(bytes_max);
        current.hlc = entry.hlc;
        let replaced = std::mem::replace(&mut current.dot, entry.dot.clone());
        // The replaced write's key names the same service: moved to the new dot, not copied.
        let key = self
            .take_index(&replaced)
            .unwrap_or_else(|| Key::Service(name.clone()));
        self.index_stored(&entry.dot, key, true, None);
        MergeOutcome::Stored {
            replaced: Some(replaced),
        }
    }

    fn indexed(&self, dot: &Dot) -> Option<&Indexed> {
        self.by_dot
            .get(&dot.node)
            .and_then(|counters| counters.get(&dot.counter))
    }

    fn unindex(&mut self, dot: &Dot) {
        self.take_index(dot);
    }

    /// The entry stored at `key`, as a change.
    pub(crate) fn change_at(&self, key: &Key) -> Option<Change> {
        Some(match key {
            Key::Service(name) => Change::Service {
                name: name.clone(),
                entry: self.services.get(name)?.clone(),
            },
            Key::Node(node) => Change::Node {
                node: node.clone(),
                entry: self.nodes.get(node)?.clone(),
            },
            Key::Container(id, add) => Change::Container {
                id: id.clone(),
                add: add.clone(),
                entry: self.containers.get(&(id.clone(), add.clone()))?.clone(),
            },
            Key::Counter(node, resource) => Change::Counter {
                node: node.clone(),
                resource: *resource,
                entry: self.counters.get(&(node.clone(), *resource))?.clone(),
            },
            Key::Ip(ip, add) => Change::Ip {
                ip: *ip,
                add: add.clone(),
                entry: self.ips.get(&(*ip, add.clone()))?.clone(),
            },
            Key::Status(node) => Change::Status {
                node: node.clone(),
                entry: self.statuses.get(node)?.clone(),
            },
        })
    }

    /// Drops the entry at `key` entirely (tombstone collection, snapshot).
    pub(crate) fn remove_key(&mut self, key: &Key) -> Option<Change> {
        let change = self.change_at(key)?;
        match key {
            Key::Service(name) => _ = self.services.remove(name),
            Key::Node(node) => _ = self.nodes.remove(node),
            Key::Container(id, add) => _ = self.containers.remove(&(id.clone(), add.clone())),
            Key::Counter(node, resource) => _ = self.counters.remove(&(node.clone(), *resource)),
            Key::Ip(ip, add) => _ = self.ips.remove(&(*ip, add.clone())),
            Key::Status(node) => _ = self.statuses.remove(node),
        }
        self.unindex(change.dot());
        Some(change)
    }

    /// Keys of the entries written by `origin` with counters in `(since, until]`.
    pub(crate) fn keys_in_range(
        &self,
        origin: &NodeId,
        since: u64,
        until: u64,
    ) -> impl Iterator<Item = &Key> {
        let lower = since.saturating_add(1);
        self.by_dot
            .get(origin)
            .filter(|_| lower <= until)
            .into_iter()
            .flat_map(move |counters| {
                counters
                    .range(lower..=until)
                    .map(|(_, indexed)| &indexed.key)
            })
    }

    /// Whether the entry stored with `change`'s dot is `change` itself; `None` when no entry
    /// has that dot. Compared in place: `change_at_dot` copies the stored entry, a whole
    /// service record with its history.
    pub(crate) fn holds_write(&self, change: &Change) -> Option<bool> {
        let key = &self.indexed(change.dot())?.key;
        Some(match (key, change) {
            (Key::Service(name), Change::Service { name: other, entry }) => {
                name == other && self.services.get(name) == Some(entry)
            }
            (Key::Node(node), Change::Node { node: other, entry }) => {
                node == other && self.nodes.get(node) == Some(entry)
            }
            (
                Key::Container(id, add),
                Change::Container {
                    id: other,
                    add: other_add,
                    entry,
                },
            ) => {
                id == other
                    && add == other_add
                    && self.containers.get(&(id.clone(), add.clone())) == Some(entry)
            }
            (
                Key::Counter(node, resource),
                Change::Counter {
                    node: other,
                    resource: other_resource,
                    entry,
                },
            ) => {
                node == other
                    && resource == other_resource
                    && self.counters.get(&(node.clone(), *resource)) == Some(entry)
            }
            (
                Key::Ip(ip, add),
                Change::Ip {
                    ip: other,
                    add: other_add,
                    entry,
                },
            ) => {
                ip == other && add == other_add && self.ips.get(&(*ip, add.clone())) == Some(entry)
            }
            (Key::Status(node), Change::Status { node: other, entry }) => {
                node == other && self.statuses.get(node) == Some(entry)
            }
            _ => false,
        })
    }

    /// Whether an entry with exactly this dot is stored.
    pub(crate) fn holds_dot(&self, dot: &Dot) -> bool {
        let Some(counters) = self.by_dot.get(&dot.node) else {
            return false;
        };
        // The dots asked about are mostly a writer's next writes, above every one stored: the
        // greatest stored counter answers those without a search.
        counters
            .last_key_value()
            .is_some_and(|(greatest, _)| *greatest >= dot.counter)
            && counters.contains_key(&dot.counter)
    }

    /// The stored entry with exactly this dot.
    pub(crate) fn change_at_dot(&self, dot: &Dot) -> Option<Change> {
        self.change_at(&self.indexed(dot)?.key)
    }

    /// The stored entry of `origin` with the lowest counter above `counter`, if any.
    pub(crate) fn next_change_above(&self, origin: &NodeId, counter: u64) -> Option<Change> {
        let (_, indexed) = self
            .by_dot
            .get(origin)?
            .range(counter.saturating_add(1)..)
            .next()?;
        self.change_at(&indexed.key)
    }

    /// The highest counter of `origin` among the stored entries (0 if none): a write of
    /// `origin` this replica can show.
    pub(crate) fn highest_counter(&self, origin: &NodeId) -> u64 {
        self.by_dot
            .get(origin)
            .and_then(|counters| counters.last_key_value())
            .map_or(0, |(counter, _)| *counter)
    }

    /// The key of every entry, tombstones included, in the order `all_changes` lists them.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Key> {
        self.by_dot
            .values()
            .flat_map(|counters| counters.values().map(|indexed| &indexed.key))
    }

    /// Every entry, tombstones included, in dot order.
    pub(crate) fn all_changes(&self) -> Vec<Change> {
        let mut changes = Vec::with_capacity(self.entry_count());
        for counters in self.by_dot.values() {
            for indexed in counters.values() {
                changes.push(self.change_at(&indexed.key).expect("indexed key is stored"));
            }
        }
        changes
    }

    /// Tombstones with their keys and dots (GC candidates).
    pub(crate) fn tombstones(&self) -> Vec<(Key, Dot)> {
        let mut found = Vec::new();
        let mut collect = |key: Key, dot: &Dot| found.push((key, dot.clone()));
        for (name, entry) in self.services.iter().filter(|(_, e)| e.is_tombstone()) {
            collect(Key::Service(name.clone()), &entry.dot);
        }
        for (node, entry) in self.nodes.iter().filter(|(_, e)| e.is_tombstone()) {
            collect(Key::Node(node.clone()), &entry.dot);
        }
        for ((id, add), entry) in self.containers.iter().filter(|(_, e)| e.is_tombstone()) {
            collect(Key::Container(id.clone(), add.clone()), &entry.dot);
        }
        for ((ip, add), entry) in self.ips.iter().filter(|(_, e)| e.is_tombstone()) {
            collect(Key::Ip(*ip, add.clone()), &entry.dot);
        }
        for (node, entry) in self.statuses.iter().filter(|(_, e)| e.is_tombstone()) {
            collect(Key::Status(node.clone()), &entry.dot);
        }
        found
    }

    /// What `node` last reported about its own containers.
    pub fn node_status(&self, node: &NodeId) -> Option<&NodeStatus> {
        self.statuses.value(node)
    }

    pub(crate) fn node_entry(&self, node: &NodeId) -> Option<&Entry<NodeRecord>> {
        self.nodes.get(node)
    }

    pub(crate) fn counter(&self, node: &NodeId, resource: Resource) -> Counts {
        self.counters
            .value(&(node.clone(), resource))
            .copied()
            .unwrap_or_default()
    }

    /// Live add-dots of a container id.
    pub(crate) fn container_adds(&self, id: &ContainerId) -> Vec<(Dot, ContainerRecord)> {
        let lower = (
            id.clone(),
            Dot {
                node: min_node(),
                counter: 0,
            },
        );
        self.containers
            .range(lower..)
            .take_while(|((key_id, _), _)| key_id == id)
            .filter_map(|((_, add), entry)| {
                entry
                    .value
                    .as_ref()
                    .map(|record| (add.clone(), record.clone()))
            })
            .collect()
    }

    /// Live add-dots of an IP.
    pub(crate) fn ip_adds(&self, ip: Ipv4Addr) -> Vec<(Dot, IpClaim)> {
        let lower = (
            ip,
            Dot {
                node: min_node(),
                counter: 0,
            },
        );
        self.ips
            .range(lower..)
            .take_while(|((key_ip, _), _)| *key_ip == ip)
            .filter_map(|((_, add), entry)| {
                entry
                    .value
                    .as_ref()
                    .map(|claim| (add.clone(), claim.clone()))
            })
            .collect()
    }

    /// Live allocations of addresses inside `subnet` (by anyone), by IP.
    pub(crate) fn allocations_in(&self, subnet: &Subnet) -> Vec<(Ipv4Addr, IpClaim)> {
        let lower = (
            subnet.addr,
            Dot {
                node: min_node(),
                counter: 0,
            },
        );
        self.ips
            .range(lower..)
            .take_while(|((ip, _), _)| subnet.contains(*ip))
            .filter_map(|((ip, _), entry)| entry.value.as_ref().map(|claim| (*ip, claim.clone())))
            .collect()
    }

    // ---- queries ----

    /// Live services with the HLC of their current definition (their version).
    pub fn services(&self) -> impl Iterator<Item = (&ServiceName, &ServiceSpec, Timestamp)> {
        self.services
            .live()
            .map(|(name, entry, record)| (name, &record.spec, entry.hlc))
    }

    /// A service's stored entry (a tombstone too).
    #[cfg(test)]
    pub(crate) fn service_entry(&self, name: &ServiceName) -> Option<&Entry<ServiceRecord>> {
        self.services.get(name)
    }

    /// A service's stored entry (a tombstone too), where it is kept, to store a write in its
    /// place without finding it again (`apply_service_lined_up`), and its record's kept bound.
    pub(crate) fn find_service(
        &self,
        name: &ServiceName,
    ) -> Option<(HeldAt, &Entry<ServiceRecord>, Option<usize>)> {
        let (position, entry, bound) = self.services.find(name)?;
        Some((
            HeldAt {
                position,
                write: record_check::write_key(entry),
            },
            entry,
            *bound,
        ))
    }

    /// The bound kept for the service record stored under `name` (`apply_free_change`).
    #[cfg(test)]
    pub(crate) fn record_bound(&self, name: &ServiceName) -> Option<usize> {
        self.services.find(name).and_then(|(_, _, bound)| *bound)
    }

    /// One live service's record (its spec, history and rollout marks) and its version.
    pub fn service_record(&self, name: &ServiceName) -> Option<(&ServiceRecord, Timestamp)> {
        self.services
            .get(name)
            .and_then(|entry| entry.value.as_ref().map(|record| (record, entry.hlc)))
    }

    /// One live service and its version.
    pub fn service(&self, name: &ServiceName) -> Option<(&ServiceSpec, Timestamp)> {
        self.services
            .get(name)
            .and_then(|entry| entry.value.as_ref().map(|record| (&record.spec, entry.hlc)))
    }

    /// Live containers, one per id (the latest add if an id was re-added), by id.
    pub fn containers(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.containers_written().map(|(_, record)| record)
    }

    /// Live containers as `containers` gives them, each with the HLC of its add: when the
    /// record was written, which is when its container was first placed.
    pub fn containers_written(&self) -> impl Iterator<Item = (Timestamp, &ContainerRecord)> {
        let mut latest: BTreeMap<&ContainerId, (Timestamp, &ContainerRecord)> = BTreeMap::new();
        for ((id, _), entry, record) in self.containers.live() {
            let slot = latest.entry(id).or_insert((entry.hlc, record));
            if entry.hlc > slot.0 {
                *slot = (entry.hlc, record);
            }
        }
        latest.into_values()
    }

    /// One live container.
    pub fn container(&self, id: &ContainerId) -> Option<&ContainerRecord> {
        self.containers().find(|record| &record.id == id)
    }

    /// Live (not evicted) nodes and their metadata, by node id.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeId, &NodeMeta)> {
        self.nodes
            .live()
            .map(|(node, _, record)| (node, &record.meta))
    }

    pub fn node(&self, node: &NodeId) -> Option<&NodeMeta> {
        self.nodes.value(node).map(|record| &record.meta)
    }

    /// Whether `node` was evicted (its metadata entry is a tombstone).
    pub fn is_evicted(&self, node: &NodeId) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|entry| entry.is_tombstone())
    }

    /// A node's PN-Counter value: increments minus decrements.
    pub fn resource_used(&self, node: &NodeId, resource: Resource) -> i64 {
        let counts = self.counter(node, resource);
        let value = i128::from(counts.increments) - i128::from(counts.decrements);
        i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
    }

    /// All live allocations, grouped by IP, earliest (the winner) first.
    fn allocations_by_ip(&self) -> BTreeMap<Ipv4Addr, Vec<IpAllocation>> {
        let mut by_ip: BTreeMap<Ipv4Addr, Vec<IpAllocation>> = BTreeMap::new();
        for ((ip, _), entry, claim) in self.ips.live() {
            by_ip.entry(*ip).or_default().push(IpAllocation {
                ip: *ip,
                container: claim.container.clone(),
                node: claim.node.clone(),
                allocated: entry.hlc,
            });
        }
        for allocations in by_ip.values_mut() {
            allocations.sort_by(|a, b| {
                (a.allocated, &a.node, &a.container).cmp(&(b.allocated, &b.node, &b.container))
            });
        }
        by_ip
    }

    /// The winning allocation of every allocated IP, by IP.
    pub fn ip_allocations(&self) -> Vec<IpAllocation> {
        self.allocations_by_ip()
            .into_values()
            .filter_map(|mut list| (!list.is_empty()).then(|| list.remove(0)))
            .collect()
    }

    /// IPs with more than one live allocation; the earliest wins everywhere.
    pub fn ip_conflicts(&self) -> Vec<IpConflict> {
        self.allocations_by_ip()
            .into_iter()
            .filter(|(_, list)| list.len() > 1)
            .map(|(ip, mut list)| {
                let winner = list.remove(0);
                IpConflict {
                    ip,
                    winner,
                    losers: list,
                }
            })
            .collect()
    }

    /// Live nodes' subnet claims, earliest first: `(claimed, node, subnet)`.
    fn subnet_claims(&self) -> Vec<(Timestamp, &NodeId, Subnet)> {
        let mut claims: Vec<_> = self
            .nodes
            .live()
            .filter_map(|(node, _, record)| {
                Some((record.subnet_claimed?, node, record.meta.subnet?))
            })
            .collect();
        claims.sort();
        claims
    }

    /// Who may allocate from `subnet`: the earliest live claim overlapping it,
    /// if that claim is for exactly this subnet.
    pub fn subnet_owner(&self, subnet: &Subnet) -> Option<NodeId> {
        let (_, node, claimed) = self
            .subnet_claims()
            .into_iter()
            .find(|(_, _, claimed)| claimed.overlaps(subnet))?;
        (claimed == *subnet).then(|| node.clone())
    }

    /// Claims that overlap an earlier claim, grouped by the earlier claim.
    pub fn subnet_conflicts(&self) -> Vec<SubnetConflict> {
        let claims = self.subnet_claims();
        let mut conflicts: Vec<SubnetConflict> = Vec::new();
        for (index, (_, node, subnet)) in claims.iter().enumerate() {
            let beaten_by = claims[..index]
                .iter()
                .find(|(_, _, earlier)| earlier.overlaps(subnet));
            if let Some((_, winner, winning_subnet)) = beaten_by {
                match conflicts.iter_mut().find(|c| &c.winner == *winner) {
                    Some(conflict) => conflict.losers.push((*node).clone()),
                    None => conflicts.push(SubnetConflict {
                        subnet: *winning_subnet,
                        winner: (*winner).clone(),
                        losers: vec![(*node).clone()],
                    }),
                }
            }
        }
        conflicts
    }

    /// Tombstones currently held (bounded by GC).
    pub fn tombstone_count(&self) -> usize {
        self.services.tombstone_count()
            + self.nodes.tombstone_count()
            + self.containers.tombstone_count()
            + self.ips.tombstone_count()
            + self.statuses.tombstone_count()
    }

    /// All stored entries, tombstones included.
    pub fn entry_count(&self) -> usize {
        self.services.len()
            + self.nodes.len()
            + self.containers.len()
            + self.counters.len()
            + self.ips.len()
            + self.statuses.len()
    }

    /// SHA-256 over the hashes of the live entries (key, value, HLC, dot, as on the wire),
    /// in dot order. Tombstones are left out so that when GC runs does not change it. Equal
    /// live entries give equal digests on every replica; replicas that cover the same writes
    /// and disagree here hold different entries for them (see `Replica::delta_for`). Cached
    /// until the next change; each entry is hashed once, the first time a digest needs it.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.0.get_or_init(|| {
            let mut hasher = Sha256::new();
            hasher.update(b"shoal state digest 2");
            for counters in self.by_dot.values() {
                for indexed in counters.values().filter(|indexed| indexed.live) {
                    let hash = indexed.hash.0.get_or_init(|| {
                        entry_hash(&self.change_at(&indexed.key).expect("indexed key is stored"))
                    });
                    hasher.update(hash);
                }
            }
            hasher.finalize().into()
        })
    }
}

fn min_node() -> NodeId {
    // The smallest valid node id in string order ("0" < "00" < ... < "a").
    "0".parse().expect("\"0\" is a valid node id")
}
