//! A node's drain: the node takes no new replicas, and its running ones are to move elsewhere
//! within a deadline. It lives in the node's own metadata (`NodeMeta::drain`), written only
//! by that node like the rest of its metadata, so the trust model is unchanged: an operator
//! on another node asks the owner to write it. The times are the owner's; this module only
//! holds and bounds them (it reads no clock).

use serde::{Deserialize, Serialize};

/// Shortest drain deadline: a second.
pub const DRAIN_DEADLINE_MS_MIN: u64 = 1_000;
/// Longest drain deadline: a day.
pub const DRAIN_DEADLINE_MS_MAX: u64 = 86_400_000;

/// A node is drained: since when (Unix ms by its own clock) and for how long its replicas may
/// keep running while they are replaced elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    pub since_unix_ms: u64,
    pub deadline_ms: u64,
}

/// A drain that no honest node writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error(
        "drain deadline of {deadline_ms} ms is outside {DRAIN_DEADLINE_MS_MIN}..={DRAIN_DEADLINE_MS_MAX} ms"
    )]
    Deadline { deadline_ms: u64 },
}

impl Drain {
    /// Checks the bounds; the error names the value.
    pub fn validate(&self) -> Result<(), DrainError> {
        if !(DRAIN_DEADLINE_MS_MIN..=DRAIN_DEADLINE_MS_MAX).contains(&self.deadline_ms) {
            return Err(DrainError::Deadline {
                deadline_ms: self.deadline_ms,
            });
        }
        Ok(())
    }

    /// When the deadline passes, Unix ms.
    pub fn deadline_unix_ms(&self) -> u64 {
        self.since_unix_ms.saturating_add(self.deadline_ms)
    }

    /// What is left of the deadline at `now_unix_ms` (0 once it passed).
    pub fn left_ms(&self, now_unix_ms: u64) -> u64 {
        self.deadline_unix_ms().saturating_sub(now_unix_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(deadline_ms: u64, valid: bool) {
        let drain = Drain {
            since_unix_ms: 1_000,
            deadline_ms,
        };
        assert_eq!(drain.validate().is_ok(), valid, "{deadline_ms}");
    }

    #[test]
    fn deadlines_are_bounded() {
        check(0, false);
        check(999, false);
        check(1_000, true);
        check(300_000, true);
        check(86_400_000, true);
        check(86_400_001, false);
        check(u64::MAX, false);
        let message = Drain {
            since_unix_ms: 0,
            deadline_ms: 5,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(
            message,
            "drain deadline of 5 ms is outside 1000..=86400000 ms"
        );
    }

    #[test]
    fn what_is_left_of_a_deadline_never_goes_below_zero() {
        let drain = Drain {
            since_unix_ms: 10_000,
            deadline_ms: 5_000,
        };
        assert_eq!(drain.deadline_unix_ms(), 15_000);
        assert_eq!(drain.left_ms(12_000), 3_000);
        assert_eq!(drain.left_ms(20_000), 0);
        let far = Drain {
            since_unix_ms: u64::MAX,
            deadline_ms: 1_000,
        };
        assert_eq!(far.deadline_unix_ms(), u64::MAX);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"since_unix_ms":1,"deadline_ms":1000,"extra":1}"#;
        assert!(serde_json::from_str::<Drain>(json).is_err());
        let json = r#"{"since_unix_ms":1,"deadline_ms":1000}"#;
        assert_eq!(
            serde_json::from_str::<Drain>(json).unwrap(),
            Drain {
                since_unix_ms: 1,
                deadline_ms: 1000
            }
        );
    }

    #[test]
    fn a_drain_travels_in_node_metadata_and_a_bad_one_is_refused_on_both_sides() {
        use crate::state::Change;
        use crate::test_support::{meta, ms, replica};
        use crate::{ApplyError, ReplicaError};
        let mut a = replica("a");
        let mut drained = meta("10.88.1.0/24");
        drained.drain = Some(Drain {
            since_unix_ms: 5,
            deadline_ms: 60_000,
        });
        let delta = a.put_node_meta(ms(1), drained.clone()).unwrap();
        // Through the wire encoding, as a peer receives it.
        let bytes = crate::codec::encode_delta(&delta);
        let received = crate::codec::decode_delta(&bytes, 1 << 20).unwrap();
        let mut b = replica("b");
        b.apply_delta(ms(2), a.node(), &received).unwrap();
        assert_eq!(b.state().node(a.node()).unwrap().drain, drained.drain);

        // The writer refuses to write a bad one.
        let mut bad = drained.clone();
        bad.drain = Some(Drain {
            since_unix_ms: 5,
            deadline_ms: 10,
        });
        assert!(matches!(
            a.put_node_meta(ms(3), bad.clone()),
            Err(ReplicaError::Drain(DrainError::Deadline {
                deadline_ms: 10
            }))
        ));
        // A peer that wrote one anyway (here: the honest delta, altered) is refused whole.
        let mut forged = delta.clone();
        for change in &mut forged.changes {
            if let Change::Node { entry, .. } = change
                && let Some(record) = &mut entry.value
            {
                record.meta.drain = bad.drain;
            }
        }
        let mut c = replica("c");
        let error = c.apply_delta(ms(2), a.node(), &forged).unwrap_err();
        assert!(matches!(error, ApplyError::Invalid(_)), "{error:?}");
        assert!(
            error.to_string().contains("drain deadline of 10 ms"),
            "{error}"
        );
        assert!(c.state().node(a.node()).is_none());
    }
}
