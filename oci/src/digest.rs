//! sha256 content digests (`sha256:<64 hex>`) and a reader that hashes what passes through it.

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A sha256 digest. Other algorithms are refused when parsing, so every digest we hold can
/// be verified.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} does not use the sha256 algorithm")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} is not 64 lowercase hex characters")]
    Malformed(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    /// Parses 64 lowercase hex characters without the algorithm prefix.
    pub fn from_hex(hex_text: &str) -> Result<Self, DigestError> {
        let valid = hex_text.len() == 64
            && hex_text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(DigestError::Malformed(hex_text.to_owned()));
        }
        Ok(Self {
            hex: hex_text.to_owned(),
        })
    }

    /// The 64 hex characters, used as a file name in the cache.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, DigestError> {
        match text.split_once(':') {
            Some(("sha256", hex_text)) => Self::from_hex(hex_text),
            Some(_) => Err(DigestError::UnsupportedAlgorithm(text.to_owned())),
            None => Err(DigestError::Malformed(text.to_owned())),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

/// Hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes_read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes_read: 0,
        }
    }

    /// Reads the rest of the stream so the digest covers all of it, then returns the
    /// digest, the byte count and the inner reader.
    pub fn finish(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            Digest::from_hasher(self.hasher),
            self.bytes_read,
            self.inner,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..count]);
        self.bytes_read += count as u64;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let digest: Digest = text.parse().unwrap();
        assert_eq!(digest.to_string(), text);
        assert_eq!(digest.hex(), "ab".repeat(32));
    }

    #[test]
    fn refuses_other_algorithms_and_bad_hex() {
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(
            sha512.parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(sha512.clone()))
        );
        assert!("sha256:abc".parse::<Digest>().is_err());
        assert!(
            format!("sha256:{}", "AB".repeat(32))
                .parse::<Digest>()
                .is_err()
        );
        assert!(
            format!("sha256:{}/..", "ab".repeat(31))
                .parse::<Digest>()
                .is_err()
        );
        assert!("ab".parse::<Digest>().is_err());
    }

    #[test]
    fn hashing_reader_matches_direct_hash_and_counts() {
        let data = b"hello world".repeat(1000);
        let mut reader = HashingReader::new(&data[..]);
        let mut first = [0u8; 10];
        reader.read_exact(&mut first).unwrap();
        let (digest, bytes_read, _) = reader.finish().unwrap();
        assert_eq!(digest, Digest::of_bytes(&data));
        assert_eq!(bytes_read, data.len() as u64);
    }
}
