//! `SwimId`: a member as SWIM knows it. The node id (from the certificate) is the address
//! foca dedupes by; the start time and renewals order the identities of one node, so a
//! restarted daemon, or one that learns it was declared down, comes back as a newer identity
//! that wins over the old one at once.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shoal_crdt::NodeId;

/// One daemon's identity in SWIM.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SwimId {
    pub node: NodeId,
    /// Where its sync endpoint listens (the same address as in its metadata).
    pub address: SocketAddr,
    /// When this daemon started (ms since the Unix epoch, its own clock): a restart is newer.
    pub started_ms: u64,
    /// Times it renewed itself after learning it was declared down.
    pub renewals: u16,
}

impl SwimId {
    pub fn new(node: NodeId, address: SocketAddr, started_ms: u64) -> SwimId {
        SwimId {
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

    fn order(&self) -> (u64, u16) {
        (self.started_ms, self.renewals)
    }
}

impl foca::Identity for SwimId {
    type Addr = NodeId;

    fn renew(&self) -> Option<Self> {
        Some(SwimId {
            renewals: self.renewals.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeId {
        self.node.clone()
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
        assert!(!SwimId::placeholder(old.node.clone(), old.address).win_addr_conflict(&old));
        assert_eq!(old.addr(), restarted.addr());
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
