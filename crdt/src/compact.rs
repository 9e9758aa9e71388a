//! Summaries in a few bytes: what an anti-entropy exchange sends instead of the whole version
//! vector, so that an exchange between two members that hold nearly the same state costs the
//! same whatever the size of the fleet.
//!
//! A `Summary` carries one counter per member ever seen: about 10 bytes a member, 10 KB per
//! exchange in a fleet of 1,000, each way, every round, even when nothing changed. Yet two
//! members of an idle fleet differ only in the few writes still spreading (the fleet writes
//! about one metadata refresh a second, carried by anti-entropy). So:
//!
//! - Every replica remembers which origins its version vector moved for lately
//!   ([`RecentOrigins`]: per origin, when it last moved and the counter before the run of
//!   moves began; at most [`RECENT_ORIGINS_MAX`], pure, time passed in).
//! - A [`CompactSummary`] is the digest of the sender's version vector, the digest of its state
//!   (for the repair `delta_for` does), and the sender's counters for the origins that moved
//!   within [`RECENT_WINDOW_MS`] ([`Replica::compact_summary`]).
//! - The receiver rebuilds the sender's version vector from its own ([`Replica::expand_summary`]):
//!   its own counters, except the sender's for the origins the sender lists, and its own
//!   counter from before the run for the origins that moved here within
//!   [`RECENT_SUBSTITUTE_MS`] and the sender does not list (most likely a write the sender has
//!   not seen yet). The guess is accepted only when its digest is the sender's: then it *is*
//!   the sender's version vector, and everything downstream (the delta, the repair check, the
//!   summaries GC relies on) works on it exactly as on a full summary. When the digests
//!   differ (the two were further apart than the windows can tell), the caller falls back to
//!   sending the full summary: more bytes and one more round trip, never a wrong delta.
//! - The receiver answers with [`SummaryReply::Diff`]: its own counters wherever they differ
//!   from the rebuilt vector, with its digests. The caller, which kept the vector it
//!   summarised, applies the difference and checks the digest ([`expand_reply`]). A
//!   difference larger than [`REPLY_DIFF_ENTRIES_MAX`] is sent as the full summary instead.
//!
//! A lying peer gains nothing: a compact summary that rebuilds into some vector is worth
//! exactly a full summary carrying that vector, which it could have sent anyway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uhlc::NTP64;

use crate::delta::Summary;
use crate::replica::{DOT_COUNTER_MAX, Replica};
use crate::{NodeId, VersionVector};

/// A compact summary lists the origins whose counter moved within this window.
pub const RECENT_WINDOW_MS: u64 = 20_000;
/// The receiver of a compact summary takes its counter from before a run of moves, for an
/// origin the sender does not list, when the run moved within this window. Shorter than
/// [`RECENT_WINDOW_MS`], so that a move both saw (the sender a little earlier) is listed by
/// the sender rather than guessed as unseen here.
pub const RECENT_SUBSTITUTE_MS: u64 = 10_000;
/// Origins a replica remembers as recently moved, and a compact summary lists, at most. When
/// more moved within the window the replica sends full summaries until it is over.
pub const RECENT_ORIGINS_MAX: usize = 64;
/// A reply lists at most this many differing counters; more, and it is the full summary.
pub const REPLY_DIFF_ENTRIES_MAX: usize = 64;
/// Bytes of a version vector's digest (SHA-256, truncated).
pub const VV_DIGEST_BYTES: usize = 16;

/// A version vector's digest: SHA-256 of its non-zero counters in node order, truncated.
pub fn vv_digest(vv: &VersionVector) -> [u8; VV_DIGEST_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(b"shoal version vector 1");
    for (node, counter) in vv.dots.iter().filter(|(_, counter)| **counter > 0) {
        let name = node.as_str().as_bytes();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(counter.to_le_bytes());
    }
    let full: [u8; 32] = hasher.finalize().into();
    let mut digest = [0; VV_DIGEST_BYTES];
    digest.copy_from_slice(&full[..VV_DIGEST_BYTES]);
    digest
}

/// What `POST /v1/sync` may carry instead of a [`Summary`] (see the module comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactSummary {
    pub vv_digest: [u8; VV_DIGEST_BYTES],
    /// The state's digest, as in [`Summary::digest`].
    pub digest: [u8; 32],
    /// The sender's counters for the origins that moved lately, in node order.
    pub recent: Vec<(NodeId, u64)>,
}

/// The answer to a compact summary: how the receiver's version vector differs from the one
/// the summary stood for, or, when they differ much, the receiver's whole summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SummaryReply {
    Diff {
        vv_digest: [u8; VV_DIGEST_BYTES],
        digest: [u8; 32],
        /// The receiver's counter (0: none) wherever it differs, in node order.
        counters: Vec<(NodeId, u64)>,
    },
    Full(Summary),
}

/// Why a compact summary or a reply was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error("{count} counters listed, more than the limit of {max}")]
    TooMany { count: usize, max: usize },
    #[error("counters are not in strict node order at {node}")]
    Unordered { node: NodeId },
    #[error("counter {counter} of {node} is above the limit of {DOT_COUNTER_MAX}")]
    CounterTooLarge { node: NodeId, counter: u64 },
}

fn check_counters(counters: &[(NodeId, u64)], max: usize) -> Result<(), CompactError> {
    if counters.len() > max {
        return Err(CompactError::TooMany {
            count: counters.len(),
            max,
        });
    }
    if let Some(pair) = counters.windows(2).find(|pair| pair[0].0 >= pair[1].0) {
        return Err(CompactError::Unordered {
            node: pair[1].0.clone(),
        });
    }
    if let Some((node, counter)) = counters
        .iter()
        .find(|(_, counter)| *counter > DOT_COUNTER_MAX)
    {
        return Err(CompactError::CounterTooLarge {
            node: node.clone(),
            counter: *counter,
        });
    }
    Ok(())
}

impl CompactSummary {
    /// What decoding checks: bounded, in strict node order, counters within the limit.
    pub fn check(&self) -> Result<(), CompactError> {
        check_counters(&self.recent, RECENT_ORIGINS_MAX)
    }
}

impl SummaryReply {
    /// What decoding checks of a difference (a full summary is checked where it is used).
    pub fn check(&self) -> Result<(), CompactError> {
        match self {
            SummaryReply::Diff { counters, .. } => check_counters(counters, REPLY_DIFF_ENTRIES_MAX),
            SummaryReply::Full(_) => Ok(()),
        }
    }
}

/// The version vector `reply` describes, given the one the compact summary stood for
/// (`sent`); `None` when the difference does not lead to the digest it names (a lying or
/// buggy peer).
pub fn expand_reply(sent: &VersionVector, reply: SummaryReply) -> Option<Summary> {
    match reply {
        SummaryReply::Full(summary) => Some(summary),
        SummaryReply::Diff {
            vv_digest: expected,
            digest,
            counters,
        } => {
            let mut vv = sent.clone();
            for (node, counter) in counters {
                set(&mut vv, &node, counter);
            }
            (vv_digest(&vv) == expected).then_some(Summary {
                vv,
                digest: Some(digest),
            })
        }
    }
}

/// Sets `node`'s counter in `vv`; 0 removes it (a version vector holds no zero counters).
/// The name is copied only for a node `vv` did not list.
pub(crate) fn set(vv: &mut VersionVector, node: &NodeId, counter: u64) {
    if counter == 0 {
        vv.dots.remove(node);
    } else if let Some(held) = vv.dots.get_mut(node) {
        *held = counter;
    } else {
        vv.dots.insert(node.clone(), counter);
    }
}

fn ms(time: NTP64) -> u64 {
    u64::try_from(time.to_duration().as_millis()).unwrap_or(u64::MAX)
}

/// One origin's latest run of moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// The counter before the run began.
    before: u64,
    started_ms: u64,
    moved_ms: u64,
}

/// The origins a version vector moved for lately (see the module comment). Not persisted: a
/// replica restored from disk starts with none, and its first exchanges fall back to full
/// summaries.
#[derive(Debug, Clone, Default)]
pub(crate) struct RecentOrigins {
    runs: BTreeMap<NodeId, Run>,
    /// A run within the window was forgotten for room: compact summaries would miss it.
    saturated_until_ms: u64,
}

impl RecentOrigins {
    /// `origin`'s counter moved from `before` at `at`. A run lasts at most
    /// [`RECENT_WINDOW_MS`], so its `before` is never much older than the window.
    pub(crate) fn moved(&mut self, origin: &NodeId, before: u64, at: NTP64) {
        let at_ms = ms(at);
        let fresh = Run {
            before,
            started_ms: at_ms,
            moved_ms: at_ms,
        };
        match self.runs.get_mut(origin) {
            Some(run) if at_ms.saturating_sub(run.started_ms) <= RECENT_WINDOW_MS => {
                run.moved_ms = run.moved_ms.max(at_ms);
            }
            Some(run) => *run = fresh,
            None => {
                self.runs.insert(origin.clone(), fresh);
            }
        }
        if self.runs.len() > RECENT_ORIGINS_MAX {
            self.runs
                .retain(|_, run| run.moved_ms.saturating_add(RECENT_WINDOW_MS) >= at_ms);
        }
        while self.runs.len() > RECENT_ORIGINS_MAX {
            let oldest = self
                .runs
                .iter()
                .min_by_key(|(node, run)| (run.moved_ms, (*node).clone()))
                .map(|(node, _)| node.clone());
            let Some(oldest) = oldest else { break };
            self.runs.remove(&oldest);
            self.saturated_until_ms = at_ms.saturating_add(RECENT_WINDOW_MS);
        }
    }

    fn within(&self, now_ms: u64, window_ms: u64) -> impl Iterator<Item = (&NodeId, &Run)> {
        self.runs
            .iter()
            .filter(move |(_, run)| run.moved_ms.saturating_add(window_ms) >= now_ms)
    }

    fn saturated(&self, now_ms: u64) -> bool {
        now_ms < self.saturated_until_ms
    }
}

impl Replica {
    /// This replica's summary in a few bytes, with the version vector it stands for (the
    /// caller keeps it to read the reply, [`expand_reply`]). `None` when a full summary is
    /// the better choice: more origins moved lately than a compact summary lists, or the
    /// version vector is about as small.
    pub fn compact_summary(&self, now: NTP64) -> Option<(CompactSummary, VersionVector)> {
        let now_ms = ms(now);
        if self.recent_origins().saturated(now_ms) {
            return None;
        }
        let vv = self.version_vector();
        let recent: Vec<(NodeId, u64)> = self
            .recent_origins()
            .within(now_ms, RECENT_WINDOW_MS)
            .map(|(node, _)| (node.clone(), vv.get(node)))
            .collect();
        // Each listed counter costs about what a counter of the full vector does; the digests
        // cost about four.
        if recent.len() + 4 >= vv.dots.len() {
            return None;
        }
        let compact = CompactSummary {
            vv_digest: vv_digest(vv),
            digest: self.digest(),
            recent,
        };
        Some((compact, vv.clone()))
    }

    /// The version vector `theirs` stands for, rebuilt from this replica's (see the module
    /// comment), as the summary it abbreviates; `None` when the rebuilt vector's digest is not
    /// the sender's, and the sender must send its full summary.
    pub fn expand_summary(&self, now: NTP64, theirs: &CompactSummary) -> Option<Summary> {
        let now_ms = ms(now);
        let mut vv = self.version_vector().clone();
        let listed = |node: &NodeId| {
            theirs
                .recent
                .binary_search_by(|(listed, _)| listed.cmp(node))
                .is_ok()
        };
        for (node, run) in self
            .recent_origins()
            .within(now_ms, RECENT_SUBSTITUTE_MS)
            .filter(|(node, _)| !listed(node))
        {
            set(&mut vv, node, run.before);
        }
        for (node, counter) in &theirs.recent {
            set(&mut vv, node, *counter);
        }
        (vv_digest(&vv) == theirs.vv_digest).then_some(Summary {
            vv,
            digest: Some(theirs.digest),
        })
    }

    /// The answer to a compact summary that expanded to `theirs`: this replica's counters
    /// wherever they differ, or its full summary when they differ in many.
    pub fn summary_reply(&self, theirs: &VersionVector) -> SummaryReply {
        let ours = self.version_vector();
        let mut counters = Vec::new();
        for (node, counter) in &ours.dots {
            if theirs.get(node) != *counter {
                counters.push((node.clone(), *counter));
            }
        }
        for (node, counter) in &theirs.dots {
            if *counter > 0 && !ours.dots.contains_key(node) {
                counters.push((node.clone(), 0));
            }
        }
        if counters.len() > REPLY_DIFF_ENTRIES_MAX {
            return SummaryReply::Full(self.summary());
        }
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        SummaryReply::Diff {
            vv_digest: vv_digest(ours),
            digest: self.digest(),
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ServiceSpec;
    use crate::test_support::{ms, node, replica};

    /// `to` takes what it lacks from `from`, at `now_ms`.
    fn pull(to: &mut Replica, from: &Replica, now_ms: u64) {
        let delta = from.delta_for(&to.summary());
        to.apply_delta(ms(now_ms), from.node(), &delta).unwrap();
    }

    fn write(replica: &mut Replica, name: &str, now_ms: u64) {
        replica
            .put_service(ms(now_ms), name.parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
    }

    /// `members` replicas that each wrote once, long ago, and hold each other's writes.
    fn synced_fleet(members: usize) -> Vec<Replica> {
        let mut fleet: Vec<Replica> = (0..members).map(|i| replica(&format!("n{i}"))).collect();
        for (i, member) in fleet.iter_mut().enumerate() {
            write(member, &format!("s{i}"), 1_000);
        }
        let mut all = replica("all");
        for member in &fleet {
            pull(&mut all, member, 2_000);
        }
        for member in &mut fleet {
            pull(member, &all, 2_000);
        }
        fleet
    }

    /// What an exchange from `caller` to `receiver` at `now_ms` would settle on: the caller's
    /// summary as the receiver rebuilds it, and the receiver's as the caller reads the reply.
    fn exchange(
        caller: &Replica,
        receiver: &Replica,
        now_ms: u64,
    ) -> Option<(Summary, Option<Summary>)> {
        let (compact, sent) = caller.compact_summary(ms(now_ms))?;
        let bytes = crate::codec::encode_compact_summary(&compact);
        let compact = crate::codec::decode_compact_summary(&bytes, 1 << 20).unwrap();
        let rebuilt = receiver.expand_summary(ms(now_ms), &compact)?;
        let reply = receiver.summary_reply(&rebuilt.vv);
        let bytes = crate::codec::encode_summary_reply(&reply);
        let reply = crate::codec::decode_summary_reply(&bytes, 1 << 20).unwrap();
        Some((rebuilt, expand_reply(&sent, reply)))
    }

    #[test]
    fn writes_still_spreading_are_rebuilt_exactly_in_both_directions() {
        let mut fleet = synced_fleet(12);
        // n0 writes; n1 has it, n2 not yet. n3 writes twice; n2 has both, n1 neither.
        write(&mut fleet[0], "web", 30_000);
        write(&mut fleet[3], "db", 31_000);
        write(&mut fleet[3], "cache", 32_000);
        let (n0, n3) = (fleet[0].clone(), fleet[3].clone());
        pull(&mut fleet[1], &n0, 33_000);
        pull(&mut fleet[2], &n3, 34_000);
        let (one, two) = (&fleet[1], &fleet[2]);
        for (caller, receiver) in [(one, two), (two, one)] {
            let (rebuilt, reply) = exchange(caller, receiver, 35_000).unwrap();
            assert_eq!(rebuilt, caller.summary());
            assert_eq!(reply, Some(receiver.summary()));
            let compact = caller.compact_summary(ms(35_000)).unwrap().0;
            assert!(compact.recent.len() <= 3, "{compact:?}");
        }
        // Each side's delta from the rebuilt summary is what the full summary gives.
        let rebuilt = exchange(one, two, 35_000).unwrap().0;
        assert_eq!(two.delta_for(&rebuilt), two.delta_for(&one.summary()));
    }

    #[test]
    fn a_pair_further_apart_than_the_windows_tell_is_refused_not_guessed() {
        let mut fleet = synced_fleet(12);
        write(&mut fleet[0], "web", 30_000);
        let n0 = fleet[0].clone();
        pull(&mut fleet[1], &n0, 31_000);
        // n1 learned n0's write 40 s ago; n2 never did, and its own moves are long over.
        let (one, two) = (&fleet[1], &fleet[2]);
        assert!(
            two.expand_summary(ms(71_000), &one.compact_summary(ms(71_000)).unwrap().0)
                .is_none()
        );
        assert!(
            one.expand_summary(ms(71_000), &two.compact_summary(ms(71_000)).unwrap().0)
                .is_none()
        );
        // Once the two hold the same, the digests say so, and nothing is listed.
        let one = one.clone();
        pull(&mut fleet[2], &one, 72_000);
        let (rebuilt, reply) = exchange(&fleet[2], &one, 100_000).unwrap();
        assert_eq!(rebuilt, one.summary());
        assert_eq!(reply, Some(one.summary()));
        let compact = one.compact_summary(ms(100_000)).unwrap().0;
        assert!(compact.recent.is_empty());
    }

    #[test]
    fn a_small_vector_a_crowded_window_and_a_wide_difference_use_the_full_summary() {
        // Three members: the version vector is about as small as a compact summary.
        let fleet = synced_fleet(3);
        assert!(fleet[0].compact_summary(ms(100_000)).is_none());
        // More origins moved within the window than a compact summary lists.
        let fleet = synced_fleet(RECENT_ORIGINS_MAX + 10);
        let mut hub = replica("hub");
        for member in &fleet {
            pull(&mut hub, member, 2_000);
        }
        assert!(hub.compact_summary(ms(3_000)).is_none());
        assert!(
            hub.compact_summary(ms(2_000 + RECENT_WINDOW_MS + 1))
                .is_some()
        );
        // A reply to a member that lacks most of what the receiver holds is the full summary.
        let mut fresh = replica("fresh");
        write(&mut fresh, "own", 2_000);
        match hub.summary_reply(&fresh.version_vector().clone()) {
            SummaryReply::Full(summary) => assert_eq!(summary, hub.summary()),
            diff => panic!("expected the full summary, got {diff:?}"),
        }
    }

    #[test]
    fn decoding_refuses_unordered_too_many_and_too_large_counters() {
        let fleet = synced_fleet(12);
        let (mut compact, _) = fleet[0].compact_summary(ms(100_000)).unwrap();
        let check = |compact: &CompactSummary| {
            let bytes = crate::codec::encode_compact_summary(compact);
            crate::codec::decode_compact_summary(&bytes, 1 << 20)
        };
        compact.recent = vec![(node("b"), 1), (node("a"), 1)];
        assert!(
            matches!(check(&compact), Err(crate::codec::DecodeError::Malformed(m)) if m.contains("order"))
        );
        compact.recent = vec![(node("a"), 1), (node("a"), 2)];
        assert!(check(&compact).is_err());
        compact.recent = vec![(node("a"), DOT_COUNTER_MAX + 1)];
        assert!(check(&compact).is_err());
        compact.recent = (0..=RECENT_ORIGINS_MAX)
            .map(|i| (node(&format!("m{i:03}")), 1))
            .collect();
        assert!(
            matches!(check(&compact), Err(crate::codec::DecodeError::Malformed(m)) if m.contains("limit"))
        );
        compact.recent.pop();
        assert_eq!(check(&compact).unwrap(), compact);
        let reply = SummaryReply::Diff {
            vv_digest: [0; VV_DIGEST_BYTES],
            digest: [0; 32],
            counters: vec![(node("b"), 1), (node("a"), 1)],
        };
        let bytes = crate::codec::encode_summary_reply(&reply);
        assert!(crate::codec::decode_summary_reply(&bytes, 1 << 20).is_err());
        // A reply whose difference does not lead to its digest is not taken.
        let sent = fleet[0].version_vector().clone();
        let lie = SummaryReply::Diff {
            vv_digest: vv_digest(&sent),
            digest: [0; 32],
            counters: vec![(node("n1"), 7)],
        };
        assert_eq!(expand_reply(&sent, lie), None);
    }

    #[derive(Debug, Clone)]
    enum Step {
        Write(usize),
        Pull { to: usize, from: usize },
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..10usize).prop_map(Step::Write),
            (0..10usize, 0..10usize).prop_map(|(to, from)| Step::Pull { to, from }),
            (0..15_000u64).prop_map(Step::Wait),
        ]
    }

    proptest! {
        /// Whatever two replicas saw, a compact summary rebuilds into the sender's exact
        /// summary or into nothing, and the reply into the receiver's exact summary.
        #[test]
        fn a_compact_summary_rebuilds_exactly_or_not_at_all(steps in prop::collection::vec(step(), 1..80)) {
            let mut fleet = synced_fleet(10);
            let mut now_ms = 10_000;
            for (index, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Write(i) => write(&mut fleet[i], &format!("w{index}"), now_ms),
                    Step::Pull { to, from } if to != from => {
                        let from = fleet[from].clone();
                        pull(&mut fleet[to], &from, now_ms);
                    }
                    Step::Pull { .. } => {}
                    Step::Wait(wait_ms) => now_ms += wait_ms,
                }
            }
            for caller in &fleet {
                for receiver in &fleet {
                    if let Some((rebuilt, reply)) = exchange(caller, receiver, now_ms) {
                        prop_assert_eq!(rebuilt, caller.summary());
                        prop_assert_eq!(reply, Some(receiver.summary()));
                    }
                }
            }
        }
    }
}
