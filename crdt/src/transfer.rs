//! How a state larger than one sync body reaches a peer: deltas measured before they are
//! built, and the whole-state delta a snapshot transfer carries.
//!
//! A sync body is bounded (the daemon's `body_bytes_max`); a state is not. So:
//! - [`Replica::delta_for_within`] is [`Replica::delta_for`] when its encoding fits a byte
//!   budget, and `None` when it does not. It adds up the encoded size entry by entry and stops
//!   at the budget, so learning that a delta is too large costs at most the budget, never a
//!   copy of a large state.
//! - [`Replica::full_delta`] is the whole state as a `Full` delta. The daemon encodes it once,
//!   keeps the bytes in a bounded cache and serves them in pieces of at most one body; the
//!   receiver reassembles them, checks their digest, decodes the whole and applies it as one
//!   delta, all-or-nothing, like any other body (`shoal::sync::transfer`).
//! - [`encoded_delta_bytes`] is the length `codec::encode_delta` gives, without encoding.
//!
//! # Why one snapshot applied whole, and not pieces applied one by one
//!
//! Every merge relies on the invariant in `lib.rs`: a replica's version vector covers a dot
//! only if the replica holds that write or one that superseded it (possibly a tombstone since
//! collected). Three ways to move a large state were weighed against it.
//!
//! 1. *Cut a `Ranges` delta*: answer a prefix of the ranges, one origin's `(since, until]` cut
//!    to `(since, mid]` at an entry boundary, and let the receiver ask again from its new
//!    summary. `apply_delta` accepts such a piece, but the piece breaks the invariant until
//!    the rest arrives. A delta carries only the current entry of each key, so a dot in
//!    `(since, mid]` whose write was superseded by a later one (`n:5` overwritten by `n:10`,
//!    or by another origin's write in a later range; every heartbeat supersedes the one before)
//!    is covered after the piece while the receiver holds neither it nor its superseder. The
//!    sender cannot pick a cut that avoids this: it does not know at which key a superseded dot
//!    was. Meanwhile the receiver may still hold an older value of that key. Say its summary
//!    covers a removal `y:7` of that value, which the sender's later write `y:9` superseded.
//!    Then other members, which hold `y:7` as a tombstone, collect it (the receiver's summary
//!    covers it too). After that the receiver offers the old value as new to a member that
//!    lacks the value's own dot, and that member stores it: a removed value is back until
//!    `y:9` arrives. Rare, but it is what the invariant exists to exclude, and the GC proof in
//!    `replica` relies on the invariant.
//! 2. *Pieces by key range against one fixed snapshot version vector*: each piece merges the
//!    sender's entries in its key range and drops the receiver's entries there that the vector
//!    covers and the sender no longer holds; the vector and GC floor are applied with the last
//!    piece. This can be made sound, but it is a new kind of delta with its own validation, a
//!    new log record that replay must understand, and a last step that must reconcile the fixed
//!    vector with a GC floor that moved while the pieces were fetched (the sender may collect
//!    tombstones newer than the vector in the meantime). Much more code, for bounded memory on
//!    the receiver.
//! 3. *One snapshot, fetched in pieces, applied whole* (chosen). The pieces are bytes of one
//!    encoded `Full` delta. Nothing is applied until all of them are there, their digest
//!    matches and the whole decodes; then the `Full` path `apply_delta` already has applies
//!    it, all-or-nothing, and the invariant holds by the argument that already covers a `Full`:
//!    the snapshot is the sender's consistent state at one instant, and applying it drops
//!    exactly the receiver's entries the sender had seen and no longer held. An aborted
//!    transfer applied nothing, so it leaves the receiver as valid as before.
//!
//! A `Full` applies to any receiver, not only to one below the GC floor, and at any later time:
//! an entry the receiver got after the snapshot carries a dot the snapshot's vector does not
//! cover, so it is kept, and merging keeps the greater write per key. A receiver entry that
//! the vector covers but the snapshot lacks was superseded at the sender, by a write the
//! snapshot carries or by a collected tombstone its vector covers. So any delta too large for a
//! body is replaced by the sender's current snapshot, and one mechanism serves a new node below
//! the GC floor and a node that fell far behind alike. The cost: the receiver holds the
//! encoded snapshot while the pieces arrive and the sender keeps it cached while they are
//! fetched, the same order of memory a one-body transfer of that state needs (the join bench,
//! `daemon/benches/join.rs`, measures it).

use crate::codec::HEADER_BYTES;
use crate::delta::{Delta, DeltaBase, OriginRange, Summary};
use crate::replica::{Replica, covers};
use crate::state::{Change, Key};

/// The postcard size of an in-memory value. Every in-memory value serializes (the codec's
/// encoder relies on the same).
fn postcard_bytes<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    postcard::experimental::serialized_size(value).expect("in-memory values serialize")
}

/// The length of `codec::encode_delta(delta)`, computed without encoding.
pub fn encoded_delta_bytes(delta: &Delta) -> usize {
    HEADER_BYTES + postcard_bytes(delta)
}

impl Replica {
    /// [`Replica::delta_for`] when its encoding (`codec::encode_delta`) is at most
    /// `encoded_bytes_max` bytes, else `None`: the caller then sends [`Replica::full_delta`]
    /// in pieces. Builds no more than the budget to find out.
    pub fn delta_for_within(&self, theirs: &Summary, encoded_bytes_max: usize) -> Option<Delta> {
        let state = self.state();
        let vv = self.version_vector();
        let below_floor = self
            .gc_floor()
            .dots
            .iter()
            .any(|(node, counter)| theirs.vv.get(node) < *counter);
        if below_floor {
            let base = DeltaBase::Full {
                vv: vv.clone(),
                gc_floor: self.gc_floor().clone(),
            };
            return collect_within(
                base,
                state.entry_count(),
                state.keys(),
                |key| state.change_at(key),
                encoded_bytes_max,
            );
        }
        // As `delta_for`: a peer that covers exactly the writes this replica covers but holds
        // other entries (a lying peer, or two daemons with one name) gets every entry, as a
        // repair.
        if covers(vv, &theirs.vv)
            && covers(&theirs.vv, vv)
            && theirs.digest.is_some_and(|digest| digest != state.digest())
        {
            return collect_within(
                DeltaBase::Repair { vv: vv.clone() },
                state.entry_count(),
                state.keys(),
                |key| state.change_at(key),
                encoded_bytes_max,
            );
        }
        let mut ranges = Vec::new();
        let mut count = 0;
        for (node, until) in &vv.dots {
            let since = theirs.vv.get(node);
            if since >= *until {
                continue;
            }
            count += state.keys_in_range(node, since, *until).count();
            ranges.push(OriginRange {
                node: node.clone(),
                since,
                until: *until,
            });
        }
        let keys = ranges
            .iter()
            .flat_map(|range| state.keys_in_range(&range.node, range.since, range.until));
        collect_within(
            DeltaBase::Ranges(ranges.clone()),
            count,
            keys,
            |key| state.change_at(key),
            encoded_bytes_max,
        )
    }

    /// The whole state as a `Full` delta: every entry, the version vector and the GC floor.
    /// Any replica can apply it at any time (see the module comment).
    pub fn full_delta(&self) -> Delta {
        Delta {
            base: DeltaBase::Full {
                vv: self.version_vector().clone(),
                gc_floor: self.gc_floor().clone(),
            },
            changes: self.state().all_changes(),
        }
    }
}

/// The delta of `base` and the changes at `keys` (`count` of them), if its encoding fits in
/// `encoded_bytes_max`; stops at the first change that does not fit.
fn collect_within<'a>(
    base: DeltaBase,
    count: usize,
    keys: impl Iterator<Item = &'a Key>,
    change_at: impl Fn(&Key) -> Option<Change>,
    encoded_bytes_max: usize,
) -> Option<Delta> {
    // The encoding is the header, the base, the change count (a varint) and the changes.
    let mut bytes = HEADER_BYTES + postcard_bytes(&base) + postcard_bytes(&count);
    if bytes > encoded_bytes_max {
        return None;
    }
    let mut changes = Vec::with_capacity(count.min(encoded_bytes_max / 16));
    for key in keys {
        let change = change_at(key).expect("indexed key is stored");
        bytes = bytes.saturating_add(postcard_bytes(&change));
        if bytes > encoded_bytes_max {
            return None;
        }
        changes.push(change);
    }
    debug_assert_eq!(changes.len(), count, "keys and count disagree");
    Some(Delta { base, changes })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_support::{meta, ms, node, replica};
    use crate::{ServiceSpec, codec};

    fn put(replica: &mut Replica, at: u64, name: &str, image: &str) {
        replica
            .put_service(ms(at), name.parse().unwrap(), ServiceSpec::new(image))
            .unwrap();
    }

    fn pull(from: &Replica, to: &mut Replica, at: u64) {
        let delta = from.delta_for(&to.summary());
        to.apply_delta(ms(at), from.node(), &delta).unwrap();
    }

    /// Two members that wrote, removed and collected: a fresh replica is below their floor.
    fn collected_pair() -> (Replica, Replica) {
        let (mut a, mut b) = (replica("a"), replica("b"));
        a.put_node_meta(ms(1), meta("10.88.1.0/24")).unwrap();
        b.put_node_meta(ms(1), meta("10.88.2.0/24")).unwrap();
        for index in 0..5 {
            put(&mut a, 2, &format!("web-{index}"), "/img/web");
        }
        a.remove_service(ms(3), &"web-0".parse().unwrap()).unwrap();
        pull(&a, &mut b, 4);
        pull(&b, &mut a, 4);
        a.observe_summary(b.node(), &b.summary());
        b.observe_summary(a.node(), &a.summary());
        assert_eq!(a.collect_garbage(), 1);
        (a, b)
    }

    /// `delta_for_within` is `delta_for` exactly when its encoding fits, up to the byte.
    fn check_bounded(sender: &Replica, theirs: &Summary) {
        let delta = sender.delta_for(theirs);
        let length = codec::encode_delta(&delta).len();
        assert_eq!(encoded_delta_bytes(&delta), length);
        assert_eq!(
            sender.delta_for_within(theirs, usize::MAX),
            Some(delta.clone())
        );
        assert_eq!(sender.delta_for_within(theirs, length), Some(delta));
        assert_eq!(sender.delta_for_within(theirs, length - 1), None);
        assert_eq!(sender.delta_for_within(theirs, 0), None);
    }

    #[test]
    fn a_peer_covering_the_same_writes_with_other_entries_gets_a_bounded_repair() {
        let (mut a, b) = collected_pair();
        // a holds a write b never got, covered by b through a lie: same vector, other digest.
        let mut liar_view = b.summary();
        put(&mut a, 5, "api", "/img/api");
        liar_view.vv = a.version_vector().clone();
        let delta = a.delta_for(&liar_view);
        assert!(matches!(delta.base, DeltaBase::Repair { .. }), "{delta:?}");
        check_bounded(&a, &liar_view);
    }

    #[test]
    fn bounded_deltas_are_the_delta_when_it_fits_and_none_otherwise() {
        let (a, b) = collected_pair();
        let fresh = replica("fresh");
        assert!(
            a.delta_for(&fresh.summary()).is_full(),
            "fresh is below the floor"
        );
        check_bounded(&a, &fresh.summary());
        // Ranges: b lacks a's latest writes.
        let mut a = a;
        put(&mut a, 5, "api", "/img/api");
        put(&mut a, 5, "db", "/img/db");
        assert!(!a.delta_for(&b.summary()).is_full());
        check_bounded(&a, &b.summary());
        // Nothing to send is an empty delta, which fits any budget but the header's.
        let empty = a.delta_for(&a.summary());
        assert!(empty.is_empty());
        check_bounded(&a, &a.summary());
    }

    #[test]
    fn a_spec_over_the_size_bound_is_not_written_but_one_written_before_still_travels() {
        let mut big = ServiceSpec::new("/img/big");
        for index in 0..200 {
            big.env.insert(format!("VAR_{index}"), "x".repeat(2048));
        }
        let mut a = replica("a");
        let error = a
            .put_service(ms(1), "big".parse().unwrap(), big.clone())
            .unwrap_err();
        assert!(
            matches!(
                error,
                crate::ReplicaError::Spec(crate::SpecError::TooLarge { .. })
            ),
            "{error}"
        );
        assert_eq!(a.own_counter(), 0, "nothing written");
        // A peer of an older version wrote it: it applies, and the state holding it loads.
        let mut delta = a
            .put_service(
                ms(2),
                "big".parse().unwrap(),
                ServiceSpec::new("/img/small"),
            )
            .unwrap();
        if let Some(Change::Service { entry, .. }) = delta.changes.first_mut() {
            entry.value = Some(big.into());
        }
        let mut b = replica("b");
        b.apply_delta(ms(3), a.node(), &delta).unwrap();
        let bytes = codec::encode_snapshot(&b.to_snapshot());
        let snapshot = codec::decode_snapshot(&bytes, 1 << 30).unwrap();
        let restored = Replica::from_snapshot(node("b"), Duration::from_secs(1), snapshot).unwrap();
        assert_eq!(restored.digest(), b.digest());
    }

    #[test]
    fn a_full_delta_encodes_like_a_snapshot_would_and_converges_any_receiver() {
        let (a, mut b) = collected_pair();
        let full = a.full_delta();
        assert!(full.is_full());
        assert_eq!(full, a.delta_for(&replica("fresh").summary()));
        // A fresh receiver.
        let mut fresh = replica("fresh");
        fresh.apply_delta(ms(5), a.node(), &full).unwrap();
        assert_eq!(fresh.digest(), a.digest());
        assert_eq!(fresh.summary(), a.summary());
        // A receiver that moved on after the snapshot was taken keeps its newer writes, and
        // drops what the sender had superseded.
        put(&mut b, 6, "web-1", "/img/web-v2");
        b.remove_service(ms(6), &"web-2".parse().unwrap()).unwrap();
        put(&mut b, 6, "late", "/img/late");
        let before = b.digest();
        b.apply_delta(ms(7), a.node(), &full).unwrap();
        assert_eq!(
            b.digest(),
            before,
            "an older snapshot changes nothing newer"
        );
        let mut a = a;
        pull(&b, &mut a, 8);
        assert_eq!(a.digest(), b.digest());
        // A receiver behind the sender but not below its floor gets the same state from a full
        // delta as from the ranges delta.
        let (mut sender, _) = collected_pair();
        let mut behind = replica("behind");
        behind
            .apply_delta(ms(9), sender.node(), &sender.full_delta())
            .unwrap();
        put(&mut sender, 9, "new-1", "/img/new");
        sender
            .remove_service(ms(9), &"web-3".parse().unwrap())
            .unwrap();
        let mut by_ranges = behind.clone();
        let ranges = sender.delta_for(&behind.summary());
        assert!(!ranges.is_full());
        by_ranges
            .apply_delta(ms(10), sender.node(), &ranges)
            .unwrap();
        behind
            .apply_delta(ms(10), sender.node(), &sender.full_delta())
            .unwrap();
        assert_eq!(behind.digest(), by_ranges.digest());
        assert_eq!(behind.summary(), by_ranges.summary());
        assert_eq!(
            behind.state().tombstone_count(),
            by_ranges.state().tombstone_count()
        );
    }
}
