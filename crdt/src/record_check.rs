//! Checking a service record from a peer beside the record this replica holds under the
//! same name.
//!
//! A record carries its spec and up to five earlier versions, so the next write of a service
//! carries the previous write's versions again. A version equal to one stored here passed
//! this same check when it was stored (every stored record did: from a peer, from the
//! snapshot, or written here), so only the versions that are new here are checked field by
//! field. The record's encoded size is bounded the same way: when its earlier versions line
//! up with the held record's (one write on top of it, or the same history), those versions'
//! encodings are parts of the held record's, so the new record encodes to at most the held
//! record's bound, plus its own spec (bounded from its strings' lengths without encoding it:
//! `json_bound`), plus what is new around them (stamps, marks and JSON punctuation), which is
//! counted exactly and is small. The whole record is encoded and counted, as a snapshot's
//! records are, only when that bound is over `SERVICE_RECORD_BYTES_MAX` or when nothing lines
//! up. The bound a stored record gets is kept with its write's index entry
//! (`ClusterState::record_bound`) for the next write of its service; it grows by each
//! write's new spec, and a count resets it. When none is kept for the held record (after a
//! restart, for a record written here, or one stored without history), the held record is
//! bounded as the new spec is.

use std::sync::OnceLock;

use serde::Serialize;
use uhlc::{ID, NTP64, Timestamp};

use crate::entry::Entry;
use crate::json_bound::json_bytes_max;
use crate::records::json_bytes;
use crate::rollout::{PastVersion, RecordError, SERVICE_RECORD_BYTES_MAX, ServiceRecord};
use crate::{ServiceSpec, SpecError};

/// A record this replica stores, with an upper bound of its encoding's length when one is
/// kept (none after a restart, or for a record written here: the held record is then
/// bounded from its strings' lengths).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Held<'a> {
    pub record: &'a ServiceRecord,
    pub bytes_max: Option<usize>,
}

/// Why a record is refused: its current spec, or the rest of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RecordFault {
    Spec(SpecError),
    Record(RecordError),
}

/// What checking a record with history found: an upper bound of its encoded length, and how
/// its earlier versions line up with the held record's, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    pub bytes_max: usize,
    pub lineup: Option<Lineup>,
}

/// Checks `record` as `ServiceSpec::validate_fields` and `ServiceRecord::validate_history`
/// do, trusting the versions it shares with `held`. Returns what it found for a record with
/// history (a record without is not bounded here: its spec alone travels as it always did).
pub(crate) fn check(
    record: &ServiceRecord,
    held: Option<Held<'_>>,
) -> Result<Option<Checked>, RecordFault> {
    let stored =
        |spec: &ServiceSpec| held.is_some_and(|held| versions(held.record).any(|v| v == spec));
    // A new spec is the usual case, and the held one (a version marked failed) the next:
    // the spec is compared with that one only (a rollback's is checked again).
    if held.is_none_or(|held| held.record.spec != record.spec) {
        record.spec.validate_fields().map_err(RecordFault::Spec)?;
    }
    record.validate_marks().map_err(RecordFault::Record)?;
    if record.history.is_empty() {
        return Ok(None);
    }
    let lined_up = held.and_then(|held| Some((held, line_up(record, held.record)?)));
    if lined_up.is_none() {
        for (index, past) in record.history.iter().enumerate() {
            if !stored(&past.spec) {
                past.spec.validate_fields().map_err(|source| {
                    RecordFault::Record(RecordError::PastSpec { index, source })
                })?;
            }
        }
    }
    let bound = lined_up.map_or(usize::MAX, |(held, lineup)| {
        // Without a kept bound, the held record's own is found as the new spec's is.
        let held_bytes = held
            .bytes_max
            .unwrap_or_else(|| json_bytes_max(held.record));
        let new_frame = match lineup {
            // The first earlier version's spec is the held spec, its stamp and marks are new.
            Lineup::OnTop => record.history.first().map_or(0, past_frame_bytes_max),
            Lineup::Rewrite => 0,
        };
        outer_frame_bytes(record)
            .saturating_add(new_frame)
            .saturating_add(json_bytes_max(&record.spec))
            .saturating_add(held_bytes)
    });
    let lineup = lined_up.map(|(_, lineup)| lineup);
    if bound <= SERVICE_RECORD_BYTES_MAX {
        return Ok(Some(Checked {
            bytes_max: bound,
            lineup,
        }));
    }
    let bytes = record.encoded_bytes();
    if bytes > SERVICE_RECORD_BYTES_MAX {
        return Err(RecordFault::Record(RecordError::TooLarge { bytes }));
    }
    Ok(Some(Checked {
        bytes_max: bytes,
        lineup,
    }))
}

/// Turns `held` into the record `incoming` whose versions line up with it as `lineup` says
/// (checked by `check`): `incoming`'s new parts are copied, `held`'s versions stay where they
/// are (shifted by one for a write on top of it). After it, `held` equals `incoming`.
pub(crate) fn rebuild(incoming: &ServiceRecord, held: &mut ServiceRecord, lineup: Lineup) {
    let count = incoming.history.len();
    let spec = std::mem::replace(&mut held.spec, incoming.spec.clone());
    match (lineup, incoming.history.first()) {
        (Lineup::OnTop, Some(first)) => {
            held.history.truncate(count - 1);
            held.history.insert(
                0,
                PastVersion {
                    spec,
                    version: first.version,
                    failed: first.failed.clone(),
                    rollback_of: first.rollback_of,
                },
            );
        }
        (Lineup::Rewrite, _) | (Lineup::OnTop, None) => held.history.truncate(count),
    }
    held.failed.clone_from(&incoming.failed);
    held.rollback_of = incoming.rollback_of;
    debug_assert_eq!(held, incoming, "a lined-up record rebuilds as it came");
}

/// The held record's specs, newest first: its current spec, then its history's.
fn versions(record: &ServiceRecord) -> impl Iterator<Item = &ServiceSpec> {
    std::iter::once(&record.spec).chain(record.history.iter().map(|past| &past.spec))
}

/// How a record's earlier versions are the held record's, position for position (distinct
/// positions, so their encodings are distinct parts of the held record's encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lineup {
    /// One write on top of the held record: the first earlier version has the held spec
    /// (with the held write's stamp and marks), the others are the held history's.
    OnTop,
    /// The held history again (a version marked failed, or written again).
    Rewrite,
}

fn line_up(record: &ServiceRecord, held: &ServiceRecord) -> Option<Lineup> {
    let on_top = record.history.split_first().is_some_and(|(first, rest)| {
        first.spec == held.spec
            && rest.iter().zip(&held.history).all(|(a, b)| a == b)
            && rest.len() <= held.history.len()
    });
    if on_top {
        return Some(Lineup::OnTop);
    }
    let rewrite = record.history.len() <= held.history.len()
        && record
            .history
            .iter()
            .zip(&held.history)
            .all(|(a, b)| a == b);
    rewrite.then_some(Lineup::Rewrite)
}

/// The stamps and marks of a version or a record, with the field names and omissions their
/// encodings use (`PastVersion`, and the record's `FullRef`).
#[derive(Serialize)]
struct Marks<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollback_of: Option<Timestamp>,
}

const SPEC_FIELD: &str = r#"{"spec":"#;

/// An upper bound of the length of an earlier version's encoding without its spec's
/// (`{"spec":` S `,"version":` stamp [`,"failed":` reason] [`,"rollback_of":` stamp] `}`):
/// only the failure reason, if any, is encoded; the stamps are taken at their widest.
fn past_frame_bytes_max(past: &PastVersion) -> usize {
    let stamp = stamp_bytes_max();
    let failed = past.failed.as_ref().map_or(0, |reason| {
        r#","failed":"#.len().saturating_add(json_bytes(reason))
    });
    let rollback_of = past
        .rollback_of
        .map_or(0, |_| r#","rollback_of":"#.len().saturating_add(stamp));
    (SPEC_FIELD.len() + r#"{"version":"#.len() + "}".len())
        .saturating_add(stamp)
        .saturating_add(failed)
        .saturating_add(rollback_of)
}

/// The longest encoding of an HLC stamp: its time and every byte of its id at their widest.
fn stamp_bytes_max() -> usize {
    static BYTES: OnceLock<usize> = OnceLock::new();
    *BYTES.get_or_init(|| {
        ID::try_from([u8::MAX; ID::MAX_SIZE]).map_or(usize::MAX, |id| {
            json_bytes(&Timestamp::new(NTP64(u64::MAX), id))
        })
    })
}

/// The length of a record's encoding (one with history) without its earlier versions' and
/// its spec's: `{"spec":` S `,"history":[` P `,` P ... `]` + (`,` + its marks' object without
/// the `{`, or only `}`).
fn outer_frame_bytes(record: &ServiceRecord) -> usize {
    const OPEN: usize = SPEC_FIELD.len() + r#","history":["#.len() + "]".len();
    let commas = record.history.len().saturating_sub(1);
    let close = if record.failed.is_some() || record.rollback_of.is_some() {
        json_bytes(&Marks {
            version: None,
            failed: record.failed.as_deref(),
            rollback_of: record.rollback_of,
        })
    } else {
        "}".len()
    };
    OPEN + commas + close
}

/// What names a write here: its dot's counter and its HLC.
pub(crate) type WriteKey = (u64, Timestamp);

pub(crate) fn write_key(entry: &Entry<ServiceRecord>) -> WriteKey {
    (entry.dot.counter, entry.hlc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length of an earlier version's encoding without its spec's:
    /// `{"spec":` S `,` + its marks' object without the `{`.
    fn past_frame_bytes(past: &PastVersion) -> usize {
        SPEC_FIELD.len()
            + json_bytes(&Marks {
                version: Some(past.version),
                failed: past.failed.as_deref(),
                rollback_of: past.rollback_of,
            })
    }

    fn at(seconds: u64) -> Timestamp {
        Timestamp::new(NTP64(seconds << 32), ID::try_from([7u8; 16]).expect("id"))
    }

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec::new(image)
    }

    fn past(image: &str, seconds: u64) -> PastVersion {
        PastVersion {
            spec: spec(image),
            version: at(seconds),
            failed: None,
            rollback_of: None,
        }
    }

    fn record(image: &str, history: Vec<PastVersion>) -> ServiceRecord {
        ServiceRecord {
            history,
            ..ServiceRecord::from(spec(image))
        }
    }

    #[test]
    fn the_frame_and_the_specs_make_up_the_whole_encoding() {
        let mut marked = past("/img/\"quoted\"\n", 3);
        marked.failed = Some("not healthy in time: \"probe\" \u{1}".to_owned());
        marked.rollback_of = Some(at(9));
        let shapes = [
            record("/img/a", vec![past("/img/b", 1)]),
            record(
                "/img/a",
                vec![past("/img/b", 1), marked.clone(), past("/img/c", 0)],
            ),
            ServiceRecord {
                failed: Some("deadline".to_owned()),
                ..record("/img/a", vec![marked.clone()])
            },
            ServiceRecord {
                rollback_of: Some(at(4)),
                ..record("/img/a", vec![past("/img/b", 1)])
            },
            ServiceRecord {
                failed: Some("\\".to_owned()),
                rollback_of: Some(at(u64::from(u32::MAX))),
                ..record("/img/é", vec![marked; 5])
            },
        ];
        for shape in shapes {
            let specs: usize = versions(&shape).map(json_bytes).sum();
            let frames: usize = shape.history.iter().map(past_frame_bytes).sum();
            for past in &shape.history {
                assert!(
                    past_frame_bytes_max(past) >= past_frame_bytes(past),
                    "{past:?}"
                );
            }
            assert_eq!(
                outer_frame_bytes(&shape) + frames + specs,
                shape.encoded_bytes(),
                "{shape:?}"
            );
        }
    }

    #[test]
    fn no_stamp_encodes_longer_than_the_widest() {
        let widest = stamp_bytes_max();
        for (time, id) in [
            (0, [1u8; 16]),
            (u64::MAX, [u8::MAX; 16]),
            (u64::MAX / 3, [100; 16]),
            (1 << 40, [7; 16]),
        ] {
            let stamp = Timestamp::new(NTP64(time), ID::try_from(id).expect("id"));
            assert!(json_bytes(&stamp) <= widest);
        }
        assert_eq!(
            widest,
            json_bytes(&Timestamp::new(
                NTP64(u64::MAX),
                ID::try_from([u8::MAX; 16]).expect("id")
            ))
        );
    }

    /// `check` of `next`, one write on top of `held` (with the bound kept for it, if any):
    /// lined up, and bounded at least at its length.
    fn checked_on_top(held: &ServiceRecord, next: &ServiceRecord, kept: Option<usize>) -> usize {
        let checked = check(
            next,
            Some(Held {
                record: held,
                bytes_max: kept,
            }),
        )
        .expect("valid")
        .expect("a record with history is bounded");
        assert_eq!(checked.lineup, Some(Lineup::OnTop));
        assert!(checked.bytes_max >= next.encoded_bytes());
        checked.bytes_max
    }

    #[test]
    fn a_write_on_top_of_the_held_record_is_bounded_without_counting_it() {
        let held = record("/img/b", vec![past("/img/c", 1)]);
        let held_bytes = held.encoded_bytes();
        let next = record("/img/a", vec![past("/img/b", 2), past("/img/c", 1)]);
        assert_eq!(
            checked_on_top(&held, &next, Some(held_bytes)),
            outer_frame_bytes(&next)
                + past_frame_bytes_max(&next.history[0])
                + json_bytes_max(&next.spec)
                + held_bytes
        );
        let mut rebuilt = held;
        rebuild(&next, &mut rebuilt, Lineup::OnTop);
        assert_eq!(rebuilt, next);
    }

    #[test]
    fn a_held_record_without_a_kept_bound_is_bounded_from_its_strings() {
        let held = record("/img/b", vec![past("/img/c", 1)]);
        let next = record("/img/a", vec![past("/img/b", 2), past("/img/c", 1)]);
        assert_eq!(
            checked_on_top(&held, &next, None),
            outer_frame_bytes(&next)
                + past_frame_bytes_max(&next.history[0])
                + json_bytes_max(&next.spec)
                + json_bytes_max(&held)
        );

        // A held record whose strings' bound is over the limit: the new record is counted.
        let mut large = spec("/img/large");
        for index in 0..40 {
            large.env.insert(format!("VAR_{index}"), "x".repeat(4096));
        }
        let held = ServiceRecord::from(large.clone());
        assert!(json_bytes_max(&held) > SERVICE_RECORD_BYTES_MAX);
        let next = ServiceRecord {
            history: vec![PastVersion {
                spec: large.clone(),
                ..past("", 1)
            }],
            ..ServiceRecord::from(spec("/img/small"))
        };
        assert_eq!(
            check(
                &next,
                Some(Held {
                    record: &held,
                    bytes_max: None,
                }),
            ),
            Ok(Some(Checked {
                bytes_max: next.encoded_bytes(),
                lineup: Some(Lineup::OnTop),
            }))
        );
    }

    #[test]
    fn a_rewrite_of_the_held_history_lines_up_and_rebuilds() {
        let held = record("/img/a", vec![past("/img/b", 2), past("/img/c", 1)]);
        let marked = ServiceRecord {
            failed: Some("not healthy in time".to_owned()),
            ..held.clone()
        };
        let checked = check(
            &marked,
            Some(Held {
                record: &held,
                bytes_max: Some(held.encoded_bytes()),
            }),
        )
        .expect("valid")
        .expect("bounded");
        assert_eq!(checked.lineup, Some(Lineup::Rewrite));
        assert!(checked.bytes_max >= marked.encoded_bytes());
        let mut rebuilt = held;
        rebuild(&marked, &mut rebuilt, Lineup::Rewrite);
        assert_eq!(rebuilt, marked);
    }

    #[test]
    fn versions_that_do_not_line_up_are_counted_exactly() {
        let held = record("/img/b", vec![]);
        // Its history skips the held spec: another write came between.
        let next = record("/img/a", vec![past("/img/x", 2), past("/img/b", 1)]);
        let bound = check(
            &next,
            Some(Held {
                record: &held,
                bytes_max: Some(held.encoded_bytes()),
            }),
        )
        .expect("valid");
        assert_eq!(
            bound,
            Some(Checked {
                bytes_max: next.encoded_bytes(),
                lineup: None
            })
        );
    }

    #[test]
    fn a_bound_over_the_limit_is_counted_and_a_record_over_it_refused() {
        let held = record("/img/b", vec![]);
        let next = record("/img/a", vec![past("/img/b", 1)]);
        let bound = check(
            &next,
            Some(Held {
                record: &held,
                bytes_max: Some(SERVICE_RECORD_BYTES_MAX),
            }),
        )
        .expect("the count is under the limit");
        assert_eq!(
            bound,
            Some(Checked {
                bytes_max: next.encoded_bytes(),
                lineup: Some(Lineup::OnTop)
            })
        );

        // 100 variables of 4 KiB each: every field in bounds, 400 KiB per spec.
        let mut huge = spec("/img/huge");
        for index in 0..100 {
            huge.env.insert(format!("VAR_{index}"), "x".repeat(4096));
        }
        let held = ServiceRecord::from(huge.clone());
        let next = ServiceRecord {
            history: vec![PastVersion {
                spec: huge.clone(),
                ..past("", 1)
            }],
            ..ServiceRecord::from(ServiceSpec {
                image: "/img/huger".to_owned(),
                ..huge
            })
        };
        assert!(matches!(
            check(
                &next,
                Some(Held {
                    record: &held,
                    bytes_max: Some(held.encoded_bytes()),
                }),
            ),
            Err(RecordFault::Record(RecordError::TooLarge { .. }))
        ));
    }

    #[test]
    fn new_versions_are_checked_and_stored_ones_trusted() {
        let mut invalid = spec("/img/b");
        invalid.image.clear();
        let held = ServiceRecord::from(invalid.clone());
        let held = Held {
            record: &held,
            bytes_max: Some(held.encoded_bytes()),
        };
        // Stored as it is (a record stored here passed the check; this one is made up to
        // show which versions are looked at).
        let on_top = ServiceRecord {
            history: vec![PastVersion {
                spec: invalid.clone(),
                ..past("", 1)
            }],
            ..ServiceRecord::from(spec("/img/a"))
        };
        assert!(check(&on_top, Some(held)).is_ok());
        assert!(matches!(
            check(&on_top, None),
            Err(RecordFault::Record(RecordError::PastSpec { index: 0, .. }))
        ));
        let new_invalid = ServiceRecord::from(invalid);
        assert_eq!(check(&new_invalid, Some(held)), Ok(None));
        assert!(matches!(
            check(&new_invalid, None),
            Err(RecordFault::Spec(_))
        ));
    }
}
