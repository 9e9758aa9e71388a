//! The primitive every CRDT here is built from: a table of HLC-stamped entries.
//!
//! Each key holds one `Entry`: the value (or a tombstone), the HLC of the write
//! that produced it and that write's dot. Merging keeps, per key, the entry with
//! the greater `(hlc, dot)`. That order is total (a dot names its node, and a
//! node never reuses a dot), so merge is a join: commutative, associative and
//! idempotent, and equal HLCs from different nodes still resolve the same way
//! everywhere.
//!
//! The five ADR types are tables with different keys:
//! - LWW-Register per service and LWW-Map of node metadata: key = name.
//! - OR-Set (containers, IPs): key = (element, add-dot). An add writes a fresh
//!   key; a remove writes a tombstone on exactly the add-dots it observed, so a
//!   concurrent add (another add-dot) survives: add-wins.
//! - PN-Counter: key = (node, resource), value = (increments, decrements),
//!   written only by its node, so every write is later and larger: LWW = max.
//!
//! Why not `crdts::{Orswot, LWWReg, PNCounter}` directly: they have no delta
//! mutators (sync would ship whole objects); `Orswot`'s remove context from
//! `derive_rm_ctx` does not advance the clock, so a remove relayed through a
//! third replica can be dropped (crdts issue 160); `LWWReg::validate_update`
//! fails on equal markers with different values, which two nodes with equal
//! clocks produce; `PNCounter` counts in `BigInt`. One dot per write from a
//! single per-node counter lets one version vector (`crdts::VClock`, which we
//! do use) summarise the whole document.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as Slot;
use std::fmt;

use serde::{Deserialize, Serialize};
use uhlc::Timestamp;

use crate::NodeId;

/// The identity of one write: the writer and its per-node write counter (from 1).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub node: NodeId,
    pub counter: u64,
}

impl fmt::Debug for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.node, self.counter)
    }
}

/// A key's current write: its value, or `None` for a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry<V> {
    pub hlc: Timestamp,
    pub dot: Dot,
    pub value: Option<V>,
}

/// Serde for an `Entry` whose value travels as JSON text inside the binary encoding:
/// (hlc, dot, Option<json>), laid out as the entry's own three fields. Used for values
/// whose fields grow over releases (specs, statuses): a field added with a default does
/// not change the format, and an older reader refuses a field it does not know instead of
/// misreading the bytes.
pub(crate) mod json_value {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use uhlc::Timestamp;

    use super::{Dot, Entry};

    pub fn serialize<S: Serializer, V: Serialize>(
        entry: &Entry<V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let json = entry
            .value
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(S::Error::custom)?;
        (&entry.hlc, &entry.dot, json).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: DeserializeOwned>(
        deserializer: D,
    ) -> Result<Entry<V>, D::Error> {
        let (hlc, dot, json): (Timestamp, Dot, Option<String>) =
            Deserialize::deserialize(deserializer)?;
        let value = json
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(D::Error::custom)?;
        Ok(Entry { hlc, dot, value })
    }
}

impl<V> Entry<V> {
    /// Whether this entry replaces `other` at the same key: greater `(hlc, dot)`.
    pub fn supersedes(&self, other: &Entry<V>) -> bool {
        (self.hlc, &self.dot) > (other.hlc, &other.dot)
    }

    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// A state-based CRDT.
///
/// Laws (checked by property tests): for all a, b, c
/// - commutative: `a ⊔ b == b ⊔ a`
/// - associative: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`
/// - idempotent:  `a ⊔ a == a`
pub trait Merge {
    fn merge(&mut self, other: &Self);
}

/// What happened to one incoming entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Stored; it replaced the entry with this dot, if any.
    Stored { replaced: Option<Dot> },
    /// The table already holds a greater or equal write.
    Ignored,
}

/// A map from keys to LWW entries.
///
/// The entries sit in slots the key map points into, so a caller that found an entry can
/// come back to it by its [`Position`] without searching the keys again: the replica checks
/// an incoming service write beside the held one, then stores it in that one's place.
///
/// Each entry may carry data derived from it, `D` (a service record's size bound), set as
/// the entry is stored: it goes when another write replaces the entry or the key is removed,
/// and it is not part of the table's equality.
#[derive(Debug, Clone)]
pub struct Table<K: Ord, V, D = ()> {
    positions: BTreeMap<K, Position>,
    slots: Slots<V, D>,
}

/// Where a table keeps one key's entry, until that key is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position(usize);

/// Entries kept in chunks of `SLOTS_PER_CHUNK`, so growing never moves the entries held (a
/// service's is large). Freed slots are reused: there are never more than the most keys
/// held at once, rounded up to a chunk.
#[derive(Debug, Clone)]
struct Slots<V, D> {
    /// Every chunk but the last is full; `None` is a free slot, listed in `free`.
    chunks: Vec<Vec<Option<Kept<V, D>>>>,
    free: Vec<Position>,
}

/// An entry in its slot, with the data derived from it.
#[derive(Debug, Clone)]
struct Kept<V, D> {
    entry: Entry<V>,
    derived: D,
}

const SLOTS_PER_CHUNK: usize = 64;

impl<V, D> Slots<V, D> {
    fn slot(&self, position: Position) -> Option<&Option<Kept<V, D>>> {
        self.chunks
            .get(position.0 / SLOTS_PER_CHUNK)?
            .get(position.0 % SLOTS_PER_CHUNK)
    }

    fn slot_mut(&mut self, position: Position) -> Option<&mut Option<Kept<V, D>>> {
        self.chunks
            .get_mut(position.0 / SLOTS_PER_CHUNK)?
            .get_mut(position.0 % SLOTS_PER_CHUNK)
    }

    fn get_mut(&mut self, position: Position) -> Option<&mut Kept<V, D>> {
        self.slot_mut(position)?.as_mut()
    }

    /// The entry of a key the table holds at `position`.
    fn held(&self, position: Position) -> &Kept<V, D> {
        self.slot(position)
            .and_then(Option::as_ref)
            .expect("a key's position holds its entry")
    }

    /// Keeps `kept` in a free slot, or a new one.
    fn place(&mut self, kept: Kept<V, D>) -> Position {
        if let Some(position) = self.free.pop() {
            *self
                .slot_mut(position)
                .expect("a free position names a slot") = Some(kept);
            return position;
        }
        let full = self
            .chunks
            .last()
            .is_none_or(|chunk| chunk.len() == SLOTS_PER_CHUNK);
        if full {
            self.chunks.push(Vec::with_capacity(SLOTS_PER_CHUNK));
        }
        let chunk_index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[chunk_index];
        chunk.push(Some(kept));
        Position(chunk_index * SLOTS_PER_CHUNK + chunk.len() - 1)
    }

    fn take(&mut self, position: Position) -> Option<Entry<V>> {
        let taken = self.slot_mut(position)?.take();
        if taken.is_some() {
            self.free.push(position);
        }
        taken.map(|kept| kept.entry)
    }

    fn entries(&self) -> impl Iterator<Item = &Entry<V>> {
        self.chunks
            .iter()
            .flatten()
            .flatten()
            .map(|kept| &kept.entry)
    }
}

impl<K: Ord, V, D> Default for Table<K, V, D> {
    fn default() -> Self {
        Self {
            positions: BTreeMap::new(),
            slots: Slots {
                chunks: Vec::new(),
                free: Vec::new(),
            },
        }
    }
}

/// Tables are equal when they hold the same entries under the same keys, wherever the slots
/// and whatever was derived from them.
impl<K: Ord + Clone, V: Clone + PartialEq, D: Default> PartialEq for Table<K, V, D> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<K: Ord + Clone, V: Clone + Eq, D: Default> Eq for Table<K, V, D> {}

impl<K: Ord + Clone, V: Clone + PartialEq, D: Default> Table<K, V, D> {
    pub fn get(&self, key: &K) -> Option<&Entry<V>> {
        self.positions
            .get(key)
            .map(|position| &self.slots.held(*position).entry)
    }

    /// The entry at `key`, where it is kept (to come back to it with [`Table::at_mut`]) and
    /// what was derived from it.
    pub(crate) fn find(&self, key: &K) -> Option<(Position, &Entry<V>, &D)> {
        let position = *self.positions.get(key)?;
        let kept = self.slots.held(position);
        Some((position, &kept.entry, &kept.derived))
    }

    /// The entry kept at `position` (from [`Table::find`]) and what was derived from it, to
    /// change in place. After its key was removed the position may hold another key's entry,
    /// or none: the caller checks it is the write it found.
    pub(crate) fn at_mut(&mut self, position: Position) -> Option<(&mut Entry<V>, &mut D)> {
        let kept = self.slots.get_mut(position)?;
        Some((&mut kept.entry, &mut kept.derived))
    }

    /// The live value at `key`, if it is not a tombstone.
    pub fn value(&self, key: &K) -> Option<&V> {
        self.get(key).and_then(|entry| entry.value.as_ref())
    }

    /// Keeps `entry` if it supersedes what is stored at `key`, with nothing derived from it.
    pub fn merge_entry(&mut self, key: K, entry: Entry<V>) -> MergeOutcome {
        self.merge_entry_deriving(key, entry, D::default())
    }

    /// Keeps `entry`, with `derived` from it, if it supersedes what is stored at `key`.
    pub(crate) fn merge_entry_deriving(
        &mut self,
        key: K,
        entry: Entry<V>,
        derived: D,
    ) -> MergeOutcome {
        // One search of the keys, whether the key is stored or new.
        match self.positions.entry(key) {
            Slot::Occupied(slot) => {
                let kept = self
                    .slots
                    .get_mut(*slot.get())
                    .expect("a key's position holds its entry");
                if !entry.supersedes(&kept.entry) {
                    debug_assert!(
                        kept.entry.dot != entry.dot || kept.entry == entry,
                        "one dot, two writes at {:?}",
                        entry.dot
                    );
                    return MergeOutcome::Ignored;
                }
                let replaced = std::mem::replace(&mut kept.entry, entry);
                kept.derived = derived;
                MergeOutcome::Stored {
                    replaced: Some(replaced.dot),
                }
            }
            Slot::Vacant(slot) => {
                slot.insert(self.slots.place(Kept { entry, derived }));
                MergeOutcome::Stored { replaced: None }
            }
        }
    }

    /// Removes a key outright (tombstone collection, snapshot replacement).
    pub fn remove(&mut self, key: &K) -> Option<Entry<V>> {
        let position = self.positions.remove(key)?;
        self.slots.take(position)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Entry<V>)> {
        self.positions
            .iter()
            .map(|(key, position)| (key, &self.slots.held(*position).entry))
    }

    /// Live entries only, in key order.
    pub fn live(&self) -> impl Iterator<Item = (&K, &Entry<V>, &V)> {
        self.iter()
            .filter_map(|(key, entry)| entry.value.as_ref().map(|value| (key, entry, value)))
    }

    pub fn range<R: std::ops::RangeBounds<K>>(
        &self,
        range: R,
    ) -> impl Iterator<Item = (&K, &Entry<V>)> {
        self.positions
            .range(range)
            .map(|(key, position)| (key, &self.slots.held(*position).entry))
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    pub fn tombstone_count(&self) -> usize {
        self.slots
            .entries()
            .filter(|entry| entry.is_tombstone())
            .count()
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq, D: Default> Merge for Table<K, V, D> {
    fn merge(&mut self, other: &Self) {
        for (key, entry) in other.iter() {
            self.merge_entry(key.clone(), entry.clone());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use uhlc::NTP64;

    pub fn node(index: u8) -> NodeId {
        format!("n{index}").parse().unwrap()
    }

    /// Writes as a real history would make them: each node's counter and HLC
    /// increase together, so one dot never names two different writes.
    fn history() -> impl Strategy<Value = Vec<(u8, u8, Option<u8>, u64)>> {
        prop::collection::vec((0u8..3, 0u8..4, prop::option::of(0u8..5), 0u64..4), 0..24)
    }

    fn replay(writes: &[(u8, u8, Option<u8>, u64)], keep: impl Fn(usize) -> bool) -> Table<u8, u8> {
        let mut counters = [0u64; 3];
        let mut times = [0u64; 3];
        let mut table = Table::default();
        for (index, (writer, key, value, time)) in writes.iter().enumerate() {
            let writer_index = usize::from(*writer);
            counters[writer_index] += 1;
            // Physical times collide across nodes on purpose: equal HLC times.
            times[writer_index] = (times[writer_index] + 1).max(*time);
            let entry = Entry {
                hlc: Timestamp::new(NTP64(times[writer_index]), node(*writer).hlc_id()),
                dot: Dot {
                    node: node(*writer),
                    counter: counters[writer_index],
                },
                value: *value,
            };
            if keep(index) {
                table.merge_entry(*key, entry);
            }
        }
        table
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn table_merge_is_a_join(writes in history(), split_a in any::<u32>(), split_b in any::<u32>()) {
            let a = replay(&writes, |i| split_a >> (i % 32) & 1 == 1);
            let b = replay(&writes, |i| split_b >> (i % 32) & 1 == 1);
            let c = replay(&writes, |i| (split_a ^ split_b) >> (i % 32) & 1 == 1);
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone();
            aa.merge(&a);
            prop_assert_eq!(&aa, &a);
            // Merging all parts equals having seen everything.
            let all = replay(&writes, |_| true);
            let mut parts = replay(&writes, |i| i % 2 == 0);
            parts.merge(&replay(&writes, |i| i % 2 == 1));
            prop_assert_eq!(parts, all);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a plain ordered map of the same entries: removals free slots that later
        /// keys reuse, across chunks, and nothing shows where an entry is kept.
        #[test]
        fn a_table_holds_what_an_ordered_map_holds(
            operations in prop::collection::vec((0u16..100, prop::option::of(0u8..4)), 0..1500),
        ) {
            let mut table = Table::default();
            let mut model: BTreeMap<u16, Entry<u8>> = BTreeMap::new();
            for (counter, (key, value)) in (1u64..).zip(&operations) {
                match value {
                    Some(value) => {
                        let entry = Entry {
                            hlc: Timestamp::new(NTP64(counter), node(0).hlc_id()),
                            dot: Dot { node: node(0), counter },
                            value: Some(*value),
                        };
                        table.merge_entry(*key, entry.clone());
                        model.insert(*key, entry);
                    }
                    None => prop_assert_eq!(table.remove(key), model.remove(key)),
                }
            }
            prop_assert_eq!(table.len(), model.len());
            prop_assert!(table.iter().eq(model.iter()));
            for (key, entry) in &model {
                let (position, found, ()) = table.find(key).expect("held");
                prop_assert_eq!(found, entry);
                prop_assert_eq!(table.at_mut(position).map(|(held, _)| &*held), Some(entry));
            }
            // The same entries written afresh, in another order: an equal table.
            let mut fresh = Table::default();
            for (key, entry) in model.iter().rev() {
                fresh.merge_entry(*key, entry.clone());
            }
            prop_assert_eq!(&fresh, &table);
            prop_assert!(table.slots.chunks.len() <= 100_usize.div_ceil(SLOTS_PER_CHUNK));
        }
    }

    #[test]
    fn derived_data_goes_with_its_entry() {
        let write = |counter: u64, value: u8| Entry {
            hlc: Timestamp::new(NTP64(counter), node(0).hlc_id()),
            dot: Dot {
                node: node(0),
                counter,
            },
            value: Some(value),
        };
        let mut table: Table<u8, u8, Option<usize>> = Table::default();
        table.merge_entry_deriving(1, write(1, 10), Some(100));
        assert_eq!(
            table.find(&1).map(|(_, _, derived)| *derived),
            Some(Some(100))
        );
        // An older write is ignored and leaves the derived data; a newer one replaces both.
        table.merge_entry_deriving(1, write(0, 9), Some(7));
        assert_eq!(
            table.find(&1).map(|(_, _, derived)| *derived),
            Some(Some(100))
        );
        table.merge_entry(1, write(2, 11));
        assert_eq!(table.find(&1).map(|(_, _, derived)| *derived), Some(None));
        // A removed key's slot goes to the next key with nothing derived.
        let (position, _, _) = table.find(&1).unwrap();
        *table.at_mut(position).unwrap().1 = Some(5);
        table.remove(&1);
        table.merge_entry(2, write(3, 12));
        let (reused, entry, derived) = table.find(&2).unwrap();
        assert_eq!((reused, entry.value, *derived), (position, Some(12), None));
        // Equality ignores what was derived.
        let mut other: Table<u8, u8, Option<usize>> = Table::default();
        other.merge_entry_deriving(2, write(3, 12), Some(1));
        assert_eq!(table, other);
    }

    #[test]
    fn equal_hlc_from_different_nodes_resolves_the_same_everywhere() {
        // crdts' LWWReg refuses equal markers with different values; here the dot breaks the tie.
        let hlc = Timestamp::new(NTP64(7), node(0).hlc_id());
        let first = Entry {
            hlc,
            dot: Dot {
                node: node(1),
                counter: 1,
            },
            value: Some("one"),
        };
        let second = Entry {
            hlc,
            dot: Dot {
                node: node(2),
                counter: 1,
            },
            value: Some("two"),
        };
        let mut left: Table<_, _> = Table::default();
        left.merge_entry("k", first.clone());
        left.merge_entry("k", second.clone());
        let mut right = Table::default();
        right.merge_entry("k", second);
        right.merge_entry("k", first);
        assert_eq!(left, right);
        assert_eq!(left.value(&"k"), Some(&"two"));
    }
}
