//! How a service changes version: the spec's `[update]` policy (how many replicas may be in
//! transition at once, start-first or stop-first, how long a new replica must stay healthy
//! to count, by when it must, and whether a failed update rolls back), and the service
//! register's value, `ServiceRecord`: the current spec with the last few versions it
//! replaced (`shoal service history`), so a failed update can write the last good spec back
//! on any node without asking anyone.
//!
//! A record without history or marks travels and is stored as the bare spec, exactly as
//! before records existed; a bare spec reads as a record without history.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uhlc::Timestamp;

use crate::ServiceSpec;

/// Defaults of `[update]`.
pub const UPDATE_MAX_PARALLEL_DEFAULT: u32 = 1;
pub const UPDATE_MIN_HEALTHY_MS_DEFAULT: u64 = 3_000;
pub const UPDATE_HEALTHY_DEADLINE_MS_DEFAULT: u64 = 60_000;
/// Bounds of the `[update]` timing fields, in milliseconds.
pub const UPDATE_MIN_HEALTHY_MS_MAX: u64 = 3_600_000;
pub const UPDATE_HEALTHY_DEADLINE_MS_MAX: u64 = 24 * 3_600_000;
/// Earlier versions a service record keeps.
pub const HISTORY_VERSIONS_MAX: usize = 5;
/// Largest encoding of a whole record (the spec and its history); older versions are
/// dropped until it fits. A spec alone is bounded by `SPEC_ENCODED_BYTES_MAX`.
pub const SERVICE_RECORD_BYTES_MAX: usize = 768 * 1024;
/// Longest failure reason kept in a record.
pub const ROLLOUT_REASON_BYTES_MAX: usize = 512;

fn default_max_parallel() -> u32 {
    UPDATE_MAX_PARALLEL_DEFAULT
}
fn default_min_healthy_ms() -> u64 {
    UPDATE_MIN_HEALTHY_MS_DEFAULT
}
fn default_healthy_deadline_ms() -> u64 {
    UPDATE_HEALTHY_DEADLINE_MS_DEFAULT
}
fn default_true() -> bool {
    true
}

/// Whether a replica's replacement starts before it stops (no gap, briefly one more) or
/// after (no extra room or host port needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StartFirst,
    StopFirst,
}

/// The `[update]` table of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// Replicas of the service in transition at once (started and not yet counted, or
    /// stopped and not yet replaced).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// Default `start-first`; a service that publishes host ports is replaced
    /// `stop-first` on a node where the new replica cannot start beside the old one.
    #[serde(default)]
    pub order: UpdateOrder,
    /// A new replica counts once it has run (and passed its health check, if the service
    /// has one) this long without a break.
    #[serde(default = "default_min_healthy_ms")]
    pub min_healthy_ms: u64,
    /// A new replica that does not count by this long after its start fails the update.
    #[serde(default = "default_healthy_deadline_ms")]
    pub healthy_deadline_ms: u64,
    /// A failed update writes the last good spec back; otherwise the update pauses.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy {
            max_parallel: UPDATE_MAX_PARALLEL_DEFAULT,
            order: UpdateOrder::default(),
            min_healthy_ms: UPDATE_MIN_HEALTHY_MS_DEFAULT,
            healthy_deadline_ms: UPDATE_HEALTHY_DEADLINE_MS_DEFAULT,
            auto_rollback: true,
        }
    }
}

/// A field of `[update]` that failed validation: its name within the table and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct UpdatePolicyError {
    pub field: &'static str,
    pub reason: String,
}

impl UpdatePolicy {
    pub fn is_default(&self) -> bool {
        *self == UpdatePolicy::default()
    }

    /// Checks the bounds; `health_interval_ms` is the service's check interval, if it has
    /// one: a deadline must leave room for at least one probe after the healthy time.
    pub fn validate(&self, health_interval_ms: Option<u64>) -> Result<(), UpdatePolicyError> {
        let error = |field, reason: String| Err(UpdatePolicyError { field, reason });
        if self.max_parallel == 0 {
            return error("max_parallel", "must be at least 1".to_owned());
        }
        if self.max_parallel > crate::records::SPEC_REPLICAS_MAX {
            return error(
                "max_parallel",
                format!("must be at most {}", crate::records::SPEC_REPLICAS_MAX),
            );
        }
        if self.min_healthy_ms > UPDATE_MIN_HEALTHY_MS_MAX {
            return error(
                "min_healthy_ms",
                format!("must be at most {UPDATE_MIN_HEALTHY_MS_MAX}"),
            );
        }
        if self.healthy_deadline_ms > UPDATE_HEALTHY_DEADLINE_MS_MAX {
            return error(
                "healthy_deadline_ms",
                format!("must be at most {UPDATE_HEALTHY_DEADLINE_MS_MAX}"),
            );
        }
        if self.healthy_deadline_ms <= self.min_healthy_ms {
            return error(
                "healthy_deadline_ms",
                format!(
                    "{} is not longer than min_healthy_ms ({}): no new replica could ever count",
                    self.healthy_deadline_ms, self.min_healthy_ms
                ),
            );
        }
        if let Some(interval_ms) = health_interval_ms {
            let needed = self.min_healthy_ms.saturating_add(interval_ms);
            if self.healthy_deadline_ms < needed {
                return error(
                    "healthy_deadline_ms",
                    format!(
                        "{} is shorter than min_healthy_ms plus health.interval_ms ({needed}): \
                         a new replica would fail before its check could pass",
                        self.healthy_deadline_ms
                    ),
                );
            }
        }
        Ok(())
    }
}

/// An earlier version of a service, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PastVersion {
    pub spec: ServiceSpec,
    /// The HLC of the write that made it current.
    pub version: Timestamp,
    /// Its update failed: why (a new replica not healthy in time, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// It was written back because this version's update failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<Timestamp>,
}

/// The value of the service register: the current spec, what it replaced, and how the
/// current version's update went.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceRecord {
    pub spec: ServiceSpec,
    /// Earlier versions, newest first, at most `HISTORY_VERSIONS_MAX`.
    pub history: Vec<PastVersion>,
    /// The current version's update failed and it was not rolled back: why. Its rollout
    /// pauses until the next write of the service.
    pub failed: Option<String>,
    /// This version is the last good one written back because that version failed.
    pub rollback_of: Option<Timestamp>,
}

/// The record's encoding when it carries more than the spec.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Full {
    spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<PastVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rollback_of: Option<Timestamp>,
}

/// `Full`, borrowed: what a record serializes through, so encoding it (or counting its
/// encoding's bytes) copies nothing. Same fields, same attributes, same output.
#[derive(Serialize)]
struct FullRef<'a> {
    spec: &'a ServiceSpec,
    #[serde(skip_serializing_if = "<[PastVersion]>::is_empty")]
    history: &'a [PastVersion],
    #[serde(skip_serializing_if = "Option::is_none")]
    failed: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollback_of: Option<Timestamp>,
}

impl Serialize for ServiceRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.history.is_empty() && self.failed.is_none() && self.rollback_of.is_none() {
            return self.spec.serialize(serializer);
        }
        FullRef {
            spec: &self.spec,
            history: &self.history,
            failed: self.failed.as_deref(),
            rollback_of: self.rollback_of,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ServiceRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Full(Box<Full>),
            Bare(Box<ServiceSpec>),
        }
        match Either::deserialize(deserializer)? {
            Either::Full(full) => Ok(ServiceRecord {
                spec: full.spec,
                history: full.history,
                failed: full.failed,
                rollback_of: full.rollback_of,
            }),
            Either::Bare(spec) => Ok(ServiceRecord::from(*spec)),
        }
    }
}

impl From<ServiceSpec> for ServiceRecord {
    fn from(spec: ServiceSpec) -> Self {
        ServiceRecord {
            spec,
            history: Vec::new(),
            failed: None,
            rollback_of: None,
        }
    }
}

/// Why a record is one no honest node writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("keeps {count} earlier versions, more than {HISTORY_VERSIONS_MAX}")]
    HistoryTooLong { count: usize },
    #[error("encodes to {bytes} bytes, more than {SERVICE_RECORD_BYTES_MAX}")]
    TooLarge { bytes: usize },
    #[error("a failure reason is longer than {ROLLOUT_REASON_BYTES_MAX} bytes")]
    ReasonTooLong,
    #[error("earlier version {index}: {source}")]
    PastSpec {
        index: usize,
        source: crate::SpecError,
    },
}

/// Whether two specs run the same thing (`ServiceSpec::workload`).
pub fn same_workload(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.workload() == b.workload()
}

impl ServiceRecord {
    /// The record a write of `spec` at `version` leaves when `previous` (written at
    /// `previous_version`) was current: the previous version goes on top of the history
    /// unless the new spec equals it.
    pub fn succeeding(
        previous: Option<(&ServiceRecord, Timestamp)>,
        spec: ServiceSpec,
    ) -> ServiceRecord {
        let mut record = ServiceRecord::from(spec);
        if let Some((previous, previous_version)) = previous {
            record.history = previous.history.clone();
            if previous.spec != record.spec {
                record.history.insert(
                    0,
                    PastVersion {
                        spec: previous.spec.clone(),
                        version: previous_version,
                        failed: previous.failed.clone(),
                        rollback_of: previous.rollback_of,
                    },
                );
            }
            record.bound();
        }
        record
    }

    /// The record after the update of the current version (written at `version`) failed
    /// for `reason`: with `spec.update.auto_rollback` and a good earlier version, that
    /// version's spec with the failed one on top of the history; otherwise the same spec
    /// marked failed, which pauses its rollout.
    pub fn after_failure(&self, version: Timestamp, reason: &str) -> ServiceRecord {
        let reason = bounded(reason);
        match self.last_good() {
            Some(good) if self.spec.update.auto_rollback => {
                let mut history = self.history.clone();
                history.insert(
                    0,
                    PastVersion {
                        spec: self.spec.clone(),
                        version,
                        failed: Some(reason),
                        rollback_of: self.rollback_of,
                    },
                );
                let mut record = ServiceRecord {
                    spec: good.spec.clone(),
                    history,
                    failed: None,
                    rollback_of: Some(version),
                };
                record.bound();
                record
            }
            _ => ServiceRecord {
                failed: Some(reason),
                ..self.clone()
            },
        }
    }

    /// The record `shoal service rollback` writes while the current version was written at
    /// `version`: the last good spec, with the current one on top of the history (not
    /// marked failed: an operator chose to go back). `None` without a good earlier version.
    pub fn rolled_back(&self, version: Timestamp) -> Option<ServiceRecord> {
        let good = self.last_good()?;
        let mut history = self.history.clone();
        history.insert(
            0,
            PastVersion {
                spec: self.spec.clone(),
                version,
                failed: self.failed.clone(),
                rollback_of: self.rollback_of,
            },
        );
        let mut record = ServiceRecord {
            spec: good.spec.clone(),
            history,
            failed: None,
            rollback_of: Some(version),
        };
        record.bound();
        Some(record)
    }

    /// The newest earlier version that runs something else than the current spec (not
    /// only another replica count) and did not fail: what a rollback writes back.
    pub fn last_good(&self) -> Option<&PastVersion> {
        self.history
            .iter()
            .find(|past| past.failed.is_none() && !same_workload(&past.spec, &self.spec))
    }

    /// Whether the record keeps an earlier version that runs something else.
    pub fn has_earlier_workload(&self) -> bool {
        self.history
            .iter()
            .any(|past| !same_workload(&past.spec, &self.spec))
    }

    /// Drops the oldest versions until the history and the encoding fit their bounds.
    fn bound(&mut self) {
        self.history.truncate(HISTORY_VERSIONS_MAX);
        while !self.history.is_empty() && self.encoded_bytes() > SERVICE_RECORD_BYTES_MAX {
            self.history.pop();
        }
    }

    /// The length of the record's JSON encoding, counted without building it.
    pub fn encoded_bytes(&self) -> usize {
        crate::records::json_bytes(self)
    }

    /// Checks what the spec's own validation does not: the history's length and specs,
    /// the reasons' lengths and the whole encoding's size.
    pub fn validate_history(&self) -> Result<(), RecordError> {
        self.validate_marks()?;
        for (index, past) in self.history.iter().enumerate() {
            past.spec
                .validate_fields()
                .map_err(|source| RecordError::PastSpec { index, source })?;
        }
        if !self.history.is_empty() {
            let bytes = self.encoded_bytes();
            if bytes > SERVICE_RECORD_BYTES_MAX {
                return Err(RecordError::TooLarge { bytes });
            }
        }
        Ok(())
    }

    /// The history's length and the failure reasons' lengths.
    pub(crate) fn validate_marks(&self) -> Result<(), RecordError> {
        if self.history.len() > HISTORY_VERSIONS_MAX {
            return Err(RecordError::HistoryTooLong {
                count: self.history.len(),
            });
        }
        let reasons = self
            .history
            .iter()
            .filter_map(|past| past.failed.as_ref())
            .chain(self.failed.as_ref());
        for reason in reasons {
            if reason.len() > ROLLOUT_REASON_BYTES_MAX {
                return Err(RecordError::ReasonTooLong);
            }
        }
        Ok(())
    }
}

fn bounded(reason: &str) -> String {
    if reason.len() <= ROLLOUT_REASON_BYTES_MAX {
        return reason.to_owned();
    }
    let mut cut = ROLLOUT_REASON_BYTES_MAX - 3;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &reason[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;
    use uhlc::{ID, NTP64};

    fn at(seconds: u64) -> Timestamp {
        Timestamp::new(NTP64(seconds << 32), ID::try_from([1u8]).expect("id"))
    }

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec::new(image)
    }

    #[test]
    fn a_record_without_history_encodes_as_the_bare_spec_and_reads_back() {
        let record = ServiceRecord::from(spec("/img/a"));
        let text = serde_json::to_string(&record).expect("encodes");
        assert_eq!(
            text,
            serde_json::to_string(&spec("/img/a")).expect("encodes")
        );
        let back: ServiceRecord = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, record);
    }

    #[test]
    fn history_round_trips_and_keeps_the_newest_first() {
        let first = ServiceRecord::from(spec("/img/a"));
        let second = ServiceRecord::succeeding(Some((&first, at(1))), spec("/img/b"));
        let third = ServiceRecord::succeeding(Some((&second, at(2))), spec("/img/c"));
        assert_eq!(third.history.len(), 2);
        assert_eq!(third.history[0].spec.image, "/img/b");
        assert_eq!(third.history[0].version, at(2));
        assert_eq!(third.history[1].spec.image, "/img/a");
        let text = serde_json::to_string(&third).expect("encodes");
        let back: ServiceRecord = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, third);
    }

    #[test]
    fn the_borrowed_encoding_is_the_owned_one() {
        let first = ServiceRecord::from(spec("/img/a"));
        let second = ServiceRecord::succeeding(Some((&first, at(1))), spec("/img/b"));
        let mut marked = second.after_failure(at(2), "not healthy \"in\" time");
        marked.rollback_of = Some(at(3));
        for record in [second, marked] {
            let owned = Full {
                spec: record.spec.clone(),
                history: record.history.clone(),
                failed: record.failed.clone(),
                rollback_of: record.rollback_of,
            };
            let text = serde_json::to_string(&record).expect("encodes");
            assert_eq!(text, serde_json::to_string(&owned).expect("encodes"));
            assert_eq!(record.encoded_bytes(), text.len());
        }
    }

    #[test]
    fn rewriting_the_same_spec_adds_no_version_and_history_is_bounded() {
        let mut record = ServiceRecord::from(spec("/img/0"));
        for n in 1..20u64 {
            record = ServiceRecord::succeeding(Some((&record, at(n))), spec(&format!("/img/{n}")));
        }
        assert_eq!(record.history.len(), HISTORY_VERSIONS_MAX);
        assert_eq!(record.history[0].spec.image, "/img/18");
        let same = ServiceRecord::succeeding(Some((&record, at(30))), spec("/img/19"));
        assert_eq!(same.history, record.history);
    }

    #[test]
    fn a_failure_rolls_back_to_the_last_good_version_or_pauses() {
        let good = ServiceRecord::from(spec("/img/good"));
        let bad = ServiceRecord::succeeding(Some((&good, at(1))), spec("/img/bad"));
        let rolled = bad.after_failure(at(2), "replica web-1 not healthy in 60000 ms");
        assert_eq!(rolled.spec.image, "/img/good");
        assert_eq!(rolled.rollback_of, Some(at(2)));
        assert_eq!(rolled.history[0].spec.image, "/img/bad");
        assert!(rolled.history[0].failed.is_some());
        // The failed version is never the last good one.
        assert_eq!(
            rolled.last_good().map(|past| past.spec.image.as_str()),
            None,
            "the only other version failed"
        );

        let mut manual = spec("/img/bad");
        manual.update.auto_rollback = false;
        let paused = ServiceRecord::succeeding(Some((&good, at(1))), manual);
        let after = paused.after_failure(at(2), "not healthy");
        assert_eq!(after.spec.image, "/img/bad");
        assert_eq!(after.failed.as_deref(), Some("not healthy"));

        let first = ServiceRecord::from(spec("/img/only"));
        assert_eq!(first.after_failure(at(1), "x").failed.as_deref(), Some("x"));
    }

    #[test]
    fn a_manual_rollback_goes_to_the_newest_good_version() {
        let first = ServiceRecord::from(spec("/img/a"));
        let second = ServiceRecord::succeeding(Some((&first, at(1))), spec("/img/b"));
        let third = ServiceRecord::succeeding(Some((&second, at(2))), spec("/img/c"));
        let back = third.rolled_back(at(3)).expect("b is good");
        assert_eq!(back.spec.image, "/img/b");
        assert_eq!(back.rollback_of, Some(at(3)));
        assert_eq!(back.history[0].spec.image, "/img/c");
        assert!(back.history[0].failed.is_none());
        assert!(first.rolled_back(at(1)).is_none(), "nothing to go back to");

        // Another replica count of the same workload is no version to go back to.
        let mut scaled = spec("/img/c");
        scaled.replicas = 7;
        let fourth = ServiceRecord::succeeding(Some((&third, at(3))), scaled);
        assert_eq!(
            fourth.last_good().map(|past| past.spec.image.as_str()),
            Some("/img/b")
        );
    }

    #[test]
    fn update_policy_bounds_name_the_field() {
        let zero = UpdatePolicy {
            max_parallel: 0,
            ..UpdatePolicy::default()
        };
        assert_eq!(
            zero.validate(None).map_err(|error| error.field),
            Err("max_parallel")
        );
        let short = UpdatePolicy {
            healthy_deadline_ms: 4_000,
            ..UpdatePolicy::default()
        };
        assert_eq!(
            short.validate(Some(2_000)).map_err(|error| error.field),
            Err("healthy_deadline_ms")
        );
        assert!(short.validate(None).is_ok());
        assert!(UpdatePolicy::default().validate(Some(30_000)).is_ok());
    }

    #[test]
    fn a_record_with_an_oversized_reason_or_history_is_refused() {
        let good = ServiceRecord::from(spec("/img/good"));
        let mut record = ServiceRecord::succeeding(Some((&good, at(1))), spec("/img/b"));
        assert!(record.validate_history().is_ok());
        record.failed = Some("x".repeat(ROLLOUT_REASON_BYTES_MAX + 1));
        assert_eq!(record.validate_history(), Err(RecordError::ReasonTooLong));
        record.failed = None;
        record.history = vec![record.history[0].clone(); HISTORY_VERSIONS_MAX + 1];
        assert!(matches!(
            record.validate_history(),
            Err(RecordError::HistoryTooLong { .. })
        ));
    }
}
