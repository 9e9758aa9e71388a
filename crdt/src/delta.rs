//! What replicas exchange: a `Summary` (what I have) and a `Delta` (what you
//! lack: entries for per-origin dot ranges, or a full snapshot when the other
//! side is below the GC floor).

use serde::{Deserialize, Serialize};
use uhlc::Timestamp;

use crate::state::Change;
use crate::{NodeId, VersionVector};

/// What a replica has seen: for each origin, every write up to a counter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub vv: VersionVector,
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

    /// Nothing to send: no range and no entry.
    pub fn is_empty(&self) -> bool {
        match &self.base {
            DeltaBase::Ranges(ranges) => ranges.is_empty() && self.changes.is_empty(),
            DeltaBase::Full { vv, .. } => vv.is_empty() && self.changes.is_empty(),
        }
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

    /// The dot ranges (empty for a full snapshot).
    pub fn origin_ranges(&self) -> &[OriginRange] {
        match &self.base {
            DeltaBase::Ranges(ranges) => ranges,
            DeltaBase::Full { .. } => &[],
        }
    }

    /// The entries carried.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}
