//! What replicas exchange: a `Summary` (what I have, and a digest of it) and a `Delta`
//! (what you lack: entries for per-origin dot ranges, a full snapshot when the other side is
//! below the GC floor, or every entry for a repair when two replicas cover the same writes
//! but hold different entries).

use serde::{Deserialize, Serialize};
use uhlc::Timestamp;

use crate::state::Change;
use crate::{NodeId, VersionVector};

/// What a replica has seen: for each origin, every write up to a counter; and the digest of
/// the entries it holds for them (`None` when the sender did not compute one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub vv: VersionVector,
    pub digest: Option<[u8; 32]>,
}

/// Writes of `node` with counters in `(since, until]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRange {
    pub node: NodeId,
    pub since: u64,
    pub until: u64,
}

/// How a delta relates to the receiver's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaBase {
    /// Entries for these dot ranges; the receiver must already cover `since`.
    Ranges(Vec<OriginRange>),
    /// The sender's whole state: every entry it holds for the writes `vv`
    /// covers. Sent when the receiver is below the sender's GC floor.
    Full {
        vv: VersionVector,
        gc_floor: VersionVector,
    },
    /// Every entry the sender holds for the writes `vv` covers, sent because the receiver
    /// covers the same writes but its digest differs: one of the two misses entries a lying
    /// or buggy peer left out. The receiver (which must cover `vv`) keeps the greater of the
    /// two for every key and dot, whatever its version vector says; so does the sender with
    /// what it gets back.
    Repair { vv: VersionVector },
}

/// A set of changes: the current entries for a set of writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub(crate) base: DeltaBase,
    pub(crate) changes: Vec<Change>,
}

impl Delta {
    pub(crate) fn ranges(ranges: Vec<OriginRange>, changes: Vec<Change>) -> Self {
        Self {
            base: DeltaBase::Ranges(ranges),
            changes,
        }
    }

    /// A delta from its parts, as a peer may send it: nothing is checked here (the
    /// receiver's `Replica::apply_delta` checks everything). For tests and fuzzers.
    pub fn from_parts(base: DeltaBase, changes: Vec<Change>) -> Self {
        Self { base, changes }
    }

    /// How the delta relates to the receiver's state.
    pub fn base(&self) -> &DeltaBase {
        &self.base
    }

    /// Nothing to send: no range and no entry.
    pub fn is_empty(&self) -> bool {
        match &self.base {
            DeltaBase::Ranges(ranges) => ranges.is_empty() && self.changes.is_empty(),
            DeltaBase::Full { vv, .. } => vv.is_empty() && self.changes.is_empty(),
            DeltaBase::Repair { .. } => self.changes.is_empty(),
        }
    }

    /// Whether it is what a peer that is not a member may push: it joins with it (it carries
    /// its own live node metadata) and carries nothing but its own writes (ranges and entries
    /// of its own origin only). So it cannot relay, forge or advance another node's writes.
    /// (A node publishes its metadata before anything else, but an operator may write to a
    /// new node before its first sync; those writes travel with its metadata.)
    pub fn is_join_of(&self, peer: &NodeId) -> bool {
        let DeltaBase::Ranges(ranges) = &self.base else {
            return false;
        };
        ranges.iter().all(|range| &range.node == peer)
            && self
                .changes
                .iter()
                .all(|change| &change.dot().node == peer)
            && self.changes.iter().any(|change| {
                matches!(change, Change::Node { node, entry } if node == peer && entry.value.is_some())
            })
    }

    /// Number of entries carried.
    pub fn entry_count(&self) -> usize {
        self.changes.len()
    }

    /// The latest HLC carried (checked against the receiver's drift limit).
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        self.changes.iter().map(Change::hlc).max()
    }

    /// Whether this is a full snapshot rather than ranges.
    pub fn is_full(&self) -> bool {
        matches!(self.base, DeltaBase::Full { .. })
    }

    /// Whether this is a repair (every entry of the sender) rather than ranges.
    pub fn is_repair(&self) -> bool {
        matches!(self.base, DeltaBase::Repair { .. })
    }

    /// The dot ranges (empty for a full snapshot or a repair).
    pub fn origin_ranges(&self) -> &[OriginRange] {
        match &self.base {
            DeltaBase::Ranges(ranges) => ranges,
            DeltaBase::Full { .. } | DeltaBase::Repair { .. } => &[],
        }
    }

    /// The entries carried.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}
