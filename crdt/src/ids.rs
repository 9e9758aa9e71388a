//! Validated names: node ids, service names and container ids.
//!
//! Every name that crosses the network is checked when it is parsed or
//! deserialized, so the rest of the crate can assume it is well formed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {name:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        name: String,
        max: usize,
    },
    #[error("{kind} {name:?} contains {found:?}; allowed: {allowed}")]
    BadCharacter {
        kind: &'static str,
        name: String,
        found: char,
        allowed: &'static str,
    },
    #[error("{kind} {name:?} starts or ends with '-'")]
    EdgeHyphen { kind: &'static str, name: String },
}

/// The error of `NodeId` parsing (the same checks as every DNS-label-like name).
pub type NodeIdError = NameError;

const LABEL_ALLOWED: &str = "a-z, 0-9 and '-'";
const LABEL_MAX: usize = 63;

/// The longest node id in bytes (a node id is ASCII, checked when parsed or deserialized).
pub const NODE_ID_BYTES_MAX: usize = LABEL_MAX;

fn check_label(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > LABEL_MAX {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            max: LABEL_MAX,
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
            found,
            allowed: LABEL_ALLOWED,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

const CONTAINER_ALLOWED: &str = "a-z, A-Z, 0-9, '-', '_' and '.'";
const CONTAINER_MAX: usize = 128;

fn check_container(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > CONTAINER_MAX {
        return Err(NameError::TooLong {
            kind,
            name: name.to_owned(),
            max: CONTAINER_MAX,
        });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::BadCharacter {
            kind,
            name: name.to_owned(),
            found,
            allowed: CONTAINER_ALLOWED,
        });
    }
    if name.starts_with(['-', '.']) {
        return Err(NameError::EdgeHyphen {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        // Shared, because names are cloned into every dot, key and index entry.
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                $check($kind, &value)?;
                Ok(Self(Arc::from(value)))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                Self::try_from(value.to_owned())
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::try_from(value.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

validated_name!(
    /// A node's name: 1..=63 characters of `[a-z0-9-]`, no leading or trailing '-'.
    /// It is the same string as in the node's certificate.
    NodeId, "node id", check_label
);

validated_name!(
    /// A service's name, validated like a `NodeId`.
    ServiceName, "service name", check_label
);

validated_name!(
    /// A container's id: 1..=128 characters of `[A-Za-z0-9_.-]`, not starting with '-' or '.'.
    ContainerId, "container id", check_container
);

impl NodeId {
    /// The id this node stamps into its HLC timestamps: the first 16 bytes of
    /// SHA-256 of the name. Deterministic, so every replica derives the same id
    /// for the same node without coordination. Never zero (uhlc forbids it).
    pub fn hlc_id(&self) -> uhlc::ID {
        let hash = Sha256::digest(self.0.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&hash[..16]);
        let value = u128::from_le_bytes(bytes);
        // A zero hash prefix has probability 2^-128; map it to 1 so the id stays valid.
        let value = std::num::NonZeroU128::new(value).unwrap_or(std::num::NonZeroU128::MIN);
        uhlc::ID::from(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_node(input: &str, ok: bool) {
        assert_eq!(input.parse::<NodeId>().is_ok(), ok, "{input:?}");
    }

    #[test]
    fn node_id_validation() {
        check_node("node-1", true);
        check_node("a", true);
        check_node(&"a".repeat(63), true);
        check_node(&"a".repeat(64), false);
        check_node("", false);
        check_node("-a", false);
        check_node("a-", false);
        check_node("Node", false);
        check_node("a_b", false);
        check_node("a.b", false);
    }

    #[test]
    fn serde_validates() {
        let bad = postcard::to_allocvec(&"BAD".to_owned()).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bad).is_err());
        let ok = postcard::to_allocvec(&"ok".to_owned()).unwrap();
        assert_eq!(postcard::from_bytes::<NodeId>(&ok).unwrap().as_str(), "ok");
    }

    #[test]
    fn hlc_id_is_deterministic_and_distinct() {
        let a: NodeId = "a".parse().unwrap();
        let b: NodeId = "b".parse().unwrap();
        assert_eq!(a.hlc_id(), a.clone().hlc_id());
        assert_ne!(a.hlc_id(), b.hlc_id());
    }

    #[test]
    fn container_id_validation() {
        assert!("web-1.n1_x".parse::<ContainerId>().is_ok());
        assert!("".parse::<ContainerId>().is_err());
        assert!(".x".parse::<ContainerId>().is_err());
        assert!("a/b".parse::<ContainerId>().is_err());
    }
}
