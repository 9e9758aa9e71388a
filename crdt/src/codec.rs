//! The versioned binary encoding of deltas, summaries and snapshots:
//! magic `SHOL`, a kind byte, a little-endian u16 format version, then a
//! postcard body. Decoding checks the size limit before anything else and
//! refuses unknown versions, wrong kinds and trailing bytes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Delta, Snapshot, Summary};

/// Bump on an incompatible change, and keep a decode path from the previous one.
pub const FORMAT_VERSION: u16 = 1;
const MAGIC: &[u8; 4] = b"SHOL";
const HEADER_BYTES: usize = 7;

/// What a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Delta = 1,
    Summary = 2,
    Snapshot = 3,
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

fn decode<T: DeserializeOwned>(
    kind: Kind,
    bytes: &[u8],
    max_bytes: usize,
) -> Result<T, DecodeError> {
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
    let version = u16::from_le_bytes([bytes[5], bytes[6]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
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
    decode(Kind::Delta, bytes, max_bytes)
}

pub fn encode_summary(summary: &Summary) -> Vec<u8> {
    encode(Kind::Summary, summary)
}

pub fn decode_summary(bytes: &[u8], max_bytes: usize) -> Result<Summary, DecodeError> {
    decode(Kind::Summary, bytes, max_bytes)
}

pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    encode(Kind::Snapshot, snapshot)
}

pub fn decode_snapshot(bytes: &[u8], max_bytes: usize) -> Result<Snapshot, DecodeError> {
    decode(Kind::Snapshot, bytes, max_bytes)
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
                supported: 1
            })
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            decode_delta(&trailing, 1 << 20),
            Err(DecodeError::TrailingBytes)
        );
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
