//! The versioned binary encoding of deltas, summaries and snapshots:
//! magic `SHOL`, a kind byte, a little-endian u16 format version, then a
//! postcard body. Decoding checks the size limit before anything else and
//! refuses unknown versions, wrong kinds and trailing bytes.
//!
//! Compact summaries and the replies to them (`compact`) are kinds 4 and 5, version 3 only.
//!
//! Version 3 (written now) adds the digest to summaries and the repair delta. Version 2
//! carries service specs and container statuses as JSON text inside the postcard body, so
//! spec fields added later with defaults need no new version; its deltas and snapshots are
//! laid out as version 3's (a version 2 delta is never a repair), its summaries have no
//! digest. Version 1 (`v1`, specs in place, no statuses) is still read. A daemon that
//! upgrades keeps its state and accepts bodies from peers not yet upgraded; those peers
//! refuse version 3 until they upgrade too. Node metadata, JSON inside like specs, gained
//! `incarnation` without a new version: daemons built before it refuse metadata that carries
//! one (`NodeMeta` denies unknown fields), so a cluster upgrades every node.

mod v1;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CompactSummary, Delta, Snapshot, Summary, SummaryReply};

/// Bump on an incompatible change, and keep a decode path from the previous one.
pub const FORMAT_VERSION: u16 = 3;
/// The previous version, still decoded.
pub const FORMAT_VERSION_PREVIOUS: u16 = 2;
/// The oldest version still decoded.
pub const FORMAT_VERSION_OLDEST: u16 = 1;
const MAGIC: &[u8; 4] = b"SHOL";
/// Magic, kind and version before every body.
pub(crate) const HEADER_BYTES: usize = 7;

/// What a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Delta = 1,
    Summary = 2,
    Snapshot = 3,
    CompactSummary = 4,
    SummaryReply = 5,
}

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("encoded {size} bytes, more than the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("bad magic: not a shoal encoding")]
    BadMagic,
    #[error("format version {found} is not supported (this build reads {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("wrong kind: expected {expected:?}, found byte {found}")]
    WrongKind { expected: Kind, found: u8 },
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("trailing bytes after the body")]
    TrailingBytes,
}

fn encode<T: Serialize>(kind: Kind, value: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(MAGIC);
    bytes.push(kind as u8);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    postcard::to_extend(value, bytes).expect("in-memory values serialize")
}

/// Checks the size limit, magic and kind; returns the format version.
fn header(kind: Kind, bytes: &[u8], max_bytes: usize) -> Result<u16, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    if bytes.len() < HEADER_BYTES || &bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if bytes[4] != kind as u8 {
        return Err(DecodeError::WrongKind {
            expected: kind,
            found: bytes[4],
        });
    }
    Ok(u16::from_le_bytes([bytes[5], bytes[6]]))
}

/// Decodes the current version (or the previous one, laid out the same), or the oldest
/// one as `Oldest` converted to `T`.
fn decode<T: DeserializeOwned, Oldest: DeserializeOwned + Into<T>>(
    kind: Kind,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, DecodeError> {
    match header(kind, bytes, max_bytes)? {
        FORMAT_VERSION | FORMAT_VERSION_PREVIOUS => body::<T>(bytes),
        FORMAT_VERSION_OLDEST => body::<Oldest>(bytes).map(Into::into),
        found => Err(unsupported(found)),
    }
}

fn unsupported(found: u16) -> DecodeError {
    DecodeError::UnsupportedVersion {
        found,
        supported: FORMAT_VERSION,
    }
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(&bytes[HEADER_BYTES..])
        .map_err(|error| DecodeError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(value)
}

pub fn encode_delta(delta: &Delta) -> Vec<u8> {
    encode(Kind::Delta, delta)
}

pub fn decode_delta(bytes: &[u8], max_bytes: usize) -> Result<Delta, DecodeError> {
    decode::<Delta, v1::DeltaV1>(Kind::Delta, bytes, max_bytes)
}

pub fn encode_summary(summary: &Summary) -> Vec<u8> {
    encode(Kind::Summary, summary)
}

pub fn decode_summary(bytes: &[u8], max_bytes: usize) -> Result<Summary, DecodeError> {
    match header(Kind::Summary, bytes, max_bytes)? {
        FORMAT_VERSION => body::<Summary>(bytes),
        FORMAT_VERSION_PREVIOUS | FORMAT_VERSION_OLDEST => {
            body::<v1::SummaryV1>(bytes).map(Into::into)
        }
        found => Err(unsupported(found)),
    }
}

pub fn encode_compact_summary(summary: &CompactSummary) -> Vec<u8> {
    encode(Kind::CompactSummary, summary)
}

/// A compact summary, checked (`CompactSummary::check`). Only the current version has them.
pub fn decode_compact_summary(
    bytes: &[u8],
    max_bytes: usize,
) -> Result<CompactSummary, DecodeError> {
    decode_current(
        Kind::CompactSummary,
        bytes,
        max_bytes,
        CompactSummary::check,
    )
}

pub fn encode_summary_reply(reply: &SummaryReply) -> Vec<u8> {
    encode(Kind::SummaryReply, reply)
}

/// A reply to a compact summary, checked (`SummaryReply::check`).
pub fn decode_summary_reply(bytes: &[u8], max_bytes: usize) -> Result<SummaryReply, DecodeError> {
    decode_current(Kind::SummaryReply, bytes, max_bytes, SummaryReply::check)
}

/// Decodes a kind only the current version has, then runs its `check`.
fn decode_current<T: DeserializeOwned, E: std::fmt::Display>(
    kind: Kind,
    bytes: &[u8],
    max_bytes: usize,
    check: impl FnOnce(&T) -> Result<(), E>,
) -> Result<T, DecodeError> {
    let value: T = match header(kind, bytes, max_bytes)? {
        FORMAT_VERSION => body(bytes)?,
        found => return Err(unsupported(found)),
    };
    check(&value).map_err(|error| DecodeError::Malformed(error.to_string()))?;
    Ok(value)
}

/// The kind byte of an encoding (after its magic), when it has one: what a `/v1/sync` body
/// is, a summary or a compact summary.
pub fn kind_of(bytes: &[u8]) -> Option<u8> {
    (bytes.len() >= HEADER_BYTES && &bytes[..4] == MAGIC).then(|| bytes[4])
}

pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    encode(Kind::Snapshot, snapshot)
}

pub fn decode_snapshot(bytes: &[u8], max_bytes: usize) -> Result<Snapshot, DecodeError> {
    decode::<Snapshot, v1::SnapshotV1>(Kind::Snapshot, bytes, max_bytes)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::{NTP64, Replica, Resource, ServiceSpec};

    fn sample_delta() -> Delta {
        let mut replica = Replica::new("a".parse().unwrap(), Duration::from_secs(1));
        let now = NTP64::from(Duration::from_millis(5));
        replica
            .put_service(now, "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        replica
            .adjust_resource(now, Resource::CpuMillis, -3)
            .unwrap();
        replica.delta_for(&Summary::default())
    }

    #[test]
    fn round_trips() {
        let delta = sample_delta();
        assert_eq!(decode_delta(&encode_delta(&delta), 1 << 20).unwrap(), delta);
        let summary = Summary::default();
        assert_eq!(
            decode_summary(&encode_summary(&summary), 1 << 20).unwrap(),
            summary
        );
    }

    #[test]
    fn header_errors() {
        let bytes = encode_delta(&sample_delta());
        assert_eq!(
            decode_delta(&bytes, 10),
            Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: 10
            })
        );
        assert_eq!(
            decode_delta(b"NOPE\x01\x01\x00", 100),
            Err(DecodeError::BadMagic)
        );
        assert_eq!(decode_delta(b"SHO", 100), Err(DecodeError::BadMagic));
        assert!(matches!(
            decode_summary(&bytes, 1 << 20),
            Err(DecodeError::WrongKind {
                expected: Kind::Summary,
                found: 1
            })
        ));
        let mut future = bytes.clone();
        future[5] = 9;
        assert_eq!(
            decode_delta(&future, 1 << 20),
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: FORMAT_VERSION
            })
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode_delta(&trailing, 1 << 20),
            Err(DecodeError::TrailingBytes)
        );
    }

    fn v1_bytes<T: Serialize>(kind: Kind, value: &T) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.push(kind as u8);
        bytes.extend_from_slice(&FORMAT_VERSION_OLDEST.to_le_bytes());
        postcard::to_extend(value, bytes).unwrap()
    }

    #[test]
    fn version_1_is_still_read() {
        use crate::entry::Entry;
        use crate::state::Change;
        let delta = sample_delta();
        let old_changes: Vec<v1::ChangeV1> = delta
            .changes
            .iter()
            .map(|change| match change {
                Change::Service { name, entry } => {
                    let spec = entry.value.clone().unwrap().spec;
                    v1::ChangeV1::Service {
                        name: name.clone(),
                        entry: Entry {
                            hlc: entry.hlc,
                            dot: entry.dot.clone(),
                            value: Some(v1::SpecV1 {
                                image: spec.image,
                                image_digest: spec.image_digest,
                                command: spec.command,
                                env: spec.env,
                                replicas: spec.replicas,
                                resources: spec.resources,
                                restart: spec.restart,
                            }),
                        },
                    }
                }
                Change::Counter {
                    node,
                    resource,
                    entry,
                } => v1::ChangeV1::Counter {
                    node: node.clone(),
                    resource: *resource,
                    entry: entry.clone(),
                },
                other => panic!("sample has no {other:?}"),
            })
            .collect();
        let old = v1::DeltaV1 {
            base: delta.base.clone(),
            changes: old_changes,
        };
        assert_eq!(
            decode_delta(&v1_bytes(Kind::Delta, &old), 1 << 20).unwrap(),
            delta
        );
        let mut replica = Replica::new("a".parse().unwrap(), Duration::from_secs(1));
        replica
            .put_service(
                NTP64::from(Duration::from_millis(5)),
                "web".parse().unwrap(),
                ServiceSpec::new("/img"),
            )
            .unwrap();
        let snapshot = replica.to_snapshot();
        let old = v1::SnapshotV1 {
            node: snapshot.node.clone(),
            changes: old.changes[..1].to_vec(),
            vv: snapshot.vv.clone(),
            gc_floor: snapshot.gc_floor.clone(),
            clock_last: snapshot.clock_last,
            peers: snapshot.peers.clone(),
        };
        assert_eq!(
            decode_snapshot(&v1_bytes(Kind::Snapshot, &old), 1 << 20).unwrap(),
            snapshot
        );
    }

    #[test]
    fn version_1_node_metadata_is_still_read() {
        use crate::entry::Entry;
        use crate::state::Change;
        use crate::{Capacity, NodeMeta};
        let mut replica = Replica::new("a".parse().unwrap(), Duration::from_secs(1));
        let now = NTP64::from(Duration::from_millis(5));
        let meta = NodeMeta {
            address: "127.0.0.1:7443".parse().unwrap(),
            capacity: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            subnet: Some("10.88.1.0/24".parse().unwrap()),
            heartbeat: uhlc::Timestamp::new(now, replica.node().hlc_id()),
            labels: Default::default(),
            incarnation: None,
            drain: None,
        };
        replica.put_node_meta(now, meta).unwrap();
        let snapshot = replica.to_snapshot();
        let changes = snapshot
            .changes
            .iter()
            .map(|change| match change {
                Change::Node { node, entry } => {
                    let record = entry.value.clone().unwrap();
                    v1::ChangeV1::Node {
                        node: node.clone(),
                        entry: Entry {
                            hlc: entry.hlc,
                            dot: entry.dot.clone(),
                            value: Some(v1::NodeRecordV1 {
                                meta: v1::NodeMetaV1 {
                                    address: record.meta.address,
                                    capacity: record.meta.capacity,
                                    subnet: record.meta.subnet,
                                    heartbeat: record.meta.heartbeat,
                                },
                                subnet_claimed: record.subnet_claimed,
                            }),
                        },
                    }
                }
                other => panic!("only node metadata was written, not {other:?}"),
            })
            .collect();
        let old = v1::SnapshotV1 {
            node: snapshot.node.clone(),
            changes,
            vv: snapshot.vv.clone(),
            gc_floor: snapshot.gc_floor.clone(),
            clock_last: snapshot.clock_last,
            peers: snapshot.peers.clone(),
        };
        assert_eq!(
            decode_snapshot(&v1_bytes(Kind::Snapshot, &old), 1 << 20).unwrap(),
            snapshot
        );
    }

    #[test]
    fn version_2_is_still_read() {
        let mut replica = Replica::new("a".parse().unwrap(), Duration::from_secs(1));
        let now = NTP64::from(Duration::from_millis(5));
        replica
            .put_service(now, "web".parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
        replica.observe_summary(&"b".parse().unwrap(), &Summary::default());
        let with_version = |kind: Kind, body: Vec<u8>| {
            let mut bytes = MAGIC.to_vec();
            bytes.push(kind as u8);
            bytes.extend_from_slice(&FORMAT_VERSION_PREVIOUS.to_le_bytes());
            bytes.extend_from_slice(&body);
            bytes
        };
        // Deltas and snapshots: version 2 is laid out as version 3.
        let delta = replica.delta_for(&Summary::default());
        let body = encode_delta(&delta)[HEADER_BYTES..].to_vec();
        assert_eq!(
            decode_delta(&with_version(Kind::Delta, body), 1 << 20).unwrap(),
            delta
        );
        let snapshot = replica.to_snapshot();
        let body = encode_snapshot(&snapshot)[HEADER_BYTES..].to_vec();
        assert_eq!(
            decode_snapshot(&with_version(Kind::Snapshot, body), 1 << 20).unwrap(),
            snapshot
        );
        // A version 2 summary is the version vector alone: no digest.
        let summary = replica.summary();
        let old = v1::SummaryV1 {
            vv: summary.vv.clone(),
        };
        let body = postcard::to_allocvec(&old).unwrap();
        let decoded = decode_summary(&with_version(Kind::Summary, body), 1 << 20).unwrap();
        assert_eq!(decoded.vv, summary.vv);
        assert_eq!(decoded.digest, None);
        assert!(summary.digest.is_some());
        assert_eq!(
            decode_summary(&encode_summary(&summary), 1 << 20).unwrap(),
            summary
        );
    }

    #[test]
    fn specs_with_new_fields_and_statuses_round_trip() {
        use crate::status::{ContainerStatus, NodeStatus, RunState};
        let mut replica = Replica::new("a".parse().unwrap(), Duration::from_secs(1));
        let now = NTP64::from(Duration::from_millis(5));
        let mut spec = ServiceSpec::new("/img");
        spec.ports = vec!["8080:80".into()];
        spec.secrets.insert("k".into(), "/run/k".into());
        replica
            .put_service(now, "web".parse().unwrap(), spec)
            .unwrap();
        let mut status = NodeStatus::default();
        status.containers.insert(
            "c1".parse().unwrap(),
            ContainerStatus {
                state: RunState::Exited {
                    code: Some(1),
                    signal: None,
                },
                started_unix_ms: Some(7),
                restarts: 2,
                health: Default::default(),
                spec: Some("0123456789abcdef".to_owned()),
                ready: true,
                retiring: true,
            },
        );
        replica.put_node_status(now, status).unwrap();
        let delta = replica.delta_for(&Summary::default());
        assert_eq!(decode_delta(&encode_delta(&delta), 1 << 20).unwrap(), delta);
        let snapshot = replica.to_snapshot();
        assert_eq!(
            decode_snapshot(&encode_snapshot(&snapshot), 1 << 20).unwrap(),
            snapshot
        );
        // A spec whose JSON does not parse is refused as malformed, not misread.
        let mut bytes = encode_delta(&delta);
        let at = bytes.windows(4).position(|w| w == b"8080").unwrap();
        bytes[at] = b'"';
        assert!(matches!(
            decode_delta(&bytes, 1 << 20),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode_delta(&sample_delta());
        for length in 0..bytes.len() {
            assert!(
                decode_delta(&bytes[..length], 1 << 20).is_err(),
                "length {length}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), kind in 1u8..4) {
            let mut bytes = b"SHOL".to_vec();
            bytes.push(kind);
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&body);
            let _ = decode_delta(&bytes, 1 << 20);
            let _ = decode_summary(&bytes, 1 << 20);
            let _ = decode_snapshot(&bytes, 1 << 20);
            let _ = decode_delta(&body, 1 << 20);
        }

        #[test]
        fn flipped_bytes_never_panic(index in any::<usize>(), value in any::<u8>()) {
            let mut bytes = encode_delta(&sample_delta());
            let position = index % bytes.len();
            bytes[position] = value;
            let _ = decode_delta(&bytes, 1 << 20);
        }
    }
}
