//! `SwimId`: a member as SWIM knows it. The node id (from the certificate) is the address
//! foca dedupes by; the start time and renewals order the identities of one node, so a
//! restarted daemon, or one that learns it was declared down, comes back as a newer identity
//! that wins over the old one at once.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_crdt::{NODE_ID_BYTES_MAX, NodeId};

/// One daemon's identity in SWIM.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SwimIdWire", into = "SwimIdWire")]
pub struct SwimId {
    /// Never changed once made: `key` is made from it.
    node: NodeId,
    /// Where its sync endpoint listens (the same address as in its metadata).
    pub address: SocketAddr,
    /// When this daemon started (ms since the Unix epoch, its own clock): a restart is newer.
    pub started_ms: u64,
    /// Times it renewed itself after learning it was declared down.
    pub renewals: u16,
    /// `node`'s bytes, what foca dedupes by (not on the wire).
    key: NodeKey,
}

/// `SwimId` on the wire: its fields but the key, in order (as the derived encoding was
/// before the key).
#[derive(Serialize, Deserialize)]
struct SwimIdWire {
    node: NodeId,
    address: SocketAddr,
    started_ms: u64,
    renewals: u16,
}

impl From<SwimIdWire> for SwimId {
    fn from(wire: SwimIdWire) -> SwimId {
        SwimId {
            renewals: wire.renewals,
            ..SwimId::new(wire.node, wire.address, wire.started_ms)
        }
    }
}

impl From<SwimId> for SwimIdWire {
    fn from(id: SwimId) -> SwimIdWire {
        SwimIdWire {
            node: id.node,
            address: id.address,
            started_ms: id.started_ms,
            renewals: id.renewals,
        }
    }
}

impl fmt::Debug for SwimId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwimId")
            .field("node", &self.node)
            .field("address", &self.address)
            .field("started_ms", &self.started_ms)
            .field("renewals", &self.renewals)
            .finish()
    }
}

impl SwimId {
    pub fn new(node: NodeId, address: SocketAddr, started_ms: u64) -> SwimId {
        SwimId {
            key: NodeKey::of(&node),
            node,
            address,
            started_ms,
            renewals: 0,
        }
    }

    /// An identity to announce to when only the node and its address are known (from its
    /// metadata): older than any real one, so the member's own reply replaces it.
    pub fn placeholder(node: NodeId, address: SocketAddr) -> SwimId {
        SwimId::new(node, address, 0)
    }

    /// The node (from its certificate).
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    fn order(&self) -> (u64, u16) {
        (self.started_ms, self.renewals)
    }
}

/// What foca tells members apart by: the node id's bytes, held inline in the identity and
/// zero-padded (a node id holds no zero byte, so equal keys are equal ids). foca compares it
/// with every member's for each update it applies (a linear scan over its members): inline,
/// that scan reads one array, where the shared `NodeId` would be a pointer to follow and a
/// reference count to raise and drop for each member. In words, so that two keys are told
/// apart at their first word (node ids rarely share eight leading bytes).
#[derive(Clone, Copy, Eq)]
pub struct NodeKey([u64; NODE_KEY_WORDS]);

const NODE_KEY_WORDS: usize = (NODE_ID_BYTES_MAX + 1).div_ceil(8);

impl NodeKey {
    fn of(node: &NodeId) -> NodeKey {
        let name = node.as_str().as_bytes();
        // All of it: a node id is at most NODE_ID_BYTES_MAX bytes.
        let len = name.len().min(NODE_ID_BYTES_MAX);
        let mut bytes = [0; NODE_KEY_WORDS * 8];
        bytes[..len].copy_from_slice(&name[..len]);
        let mut words = [0; NODE_KEY_WORDS];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut eight = [0; 8];
            eight.copy_from_slice(chunk);
            *word = u64::from_le_bytes(eight);
        }
        NodeKey(words)
    }
}

impl PartialEq for NodeKey {
    /// Word by word, stopping at the first that differs (what derive would do with a call to
    /// `memcmp` of the whole array, and this is foca's hottest comparison).
    fn eq(&self, other: &NodeKey) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a == b)
    }
}

impl Hash for NodeKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: Vec<u8> = self
            .0
            .iter()
            .flat_map(|word| word.to_le_bytes())
            .take_while(|byte| *byte != 0)
            .collect();
        write!(f, "NodeKey({:?})", String::from_utf8_lossy(&bytes))
    }
}

impl foca::Identity for SwimId {
    type Addr = NodeKey;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            renewals: self.renewals.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeKey {
        self.key
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.order() > adversary.order()
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(started_ms: u64) -> SwimId {
        SwimId::new(
            "a".parse().unwrap(),
            "127.0.0.1:7946".parse().unwrap(),
            started_ms,
        )
    }

    #[test]
    fn a_restart_or_a_renewal_wins_over_the_older_identity() {
        let old = id(1_000);
        let restarted = id(2_000);
        assert!(restarted.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&restarted));
        let renewed = old.renew().unwrap();
        assert_eq!(renewed.renewals, 1);
        assert!(renewed.win_addr_conflict(&old));
        assert!(!SwimId::placeholder(old.node().clone(), old.address).win_addr_conflict(&old));
        assert_eq!(old.addr(), restarted.addr());
    }

    #[test]
    fn the_address_foca_dedupes_by_is_the_node_id() {
        let key = |name: &str| SwimId::placeholder(name.parse().unwrap(), id(1).address).addr();
        assert_eq!(key("a"), key("a"));
        assert_ne!(key("a"), key("b"));
        assert_ne!(key("a"), key("a0"));
        let longest = "a".repeat(NODE_ID_BYTES_MAX);
        let almost = "a".repeat(NODE_ID_BYTES_MAX - 1);
        assert_eq!(key(&longest), key(&longest));
        assert_ne!(key(&longest), key(&almost));
        assert_ne!(key(&longest), key(&format!("{almost}b")));
    }

    #[test]
    fn the_wire_carries_the_fields_but_the_key_in_order() {
        let renewed = id(1_000).renew().unwrap();
        let bytes = postcard::to_stdvec(&renewed).unwrap();
        let fields = (
            renewed.node().clone(),
            renewed.address,
            renewed.started_ms,
            renewed.renewals,
        );
        assert_eq!(bytes, postcard::to_stdvec(&fields).unwrap());
        let back: SwimId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, renewed);
        assert_eq!(back.addr(), renewed.addr());
    }

    #[test]
    fn renewals_end_rather_than_wrap() {
        let last = SwimId {
            renewals: u16::MAX,
            ..id(1)
        };
        assert_eq!(last.renew(), None);
    }
}
