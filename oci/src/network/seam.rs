//! The container-network seam: what the daemon's reconcile loop needs from a
//! node's network, implemented by `NodeNetwork` (real namespaces, veths, routes)
//! and by `FakeNetwork` (in memory, for scheduler tests and the simulator).

use std::net::{IpAddr, Ipv4Addr};

use shoal_crdt::Subnet;

use super::{Attachment, NetworkError, NodeNetwork, RouteReport, routes};

/// A node's container network. Same rules for every implementation: attach is
/// idempotent for the same address and refuses another; detach is idempotent;
/// route sync refuses overlapping peers before changing anything.
pub trait ContainerNetwork: Send + Sync {
    /// See `NodeNetwork::attach`.
    fn attach(&self, container_id: &str, address: Ipv4Addr) -> Result<Attachment, NetworkError>;
    /// See `NodeNetwork::detach`.
    fn detach(&self, container_id: &str) -> Result<(), NetworkError>;
    /// See `NodeNetwork::attached`.
    fn attached(&self) -> Result<Vec<String>, NetworkError>;
    /// See `routes::sync`.
    fn sync_routes(&self, peers: &[(Subnet, IpAddr)]) -> Result<RouteReport, NetworkError>;
}

impl ContainerNetwork for NodeNetwork {
    fn attach(&self, container_id: &str, address: Ipv4Addr) -> Result<Attachment, NetworkError> {
        NodeNetwork::attach(self, container_id, address)
    }

    fn detach(&self, container_id: &str) -> Result<(), NetworkError> {
        NodeNetwork::detach(self, container_id)
    }

    fn attached(&self) -> Result<Vec<String>, NetworkError> {
        NodeNetwork::attached(self)
    }

    fn sync_routes(&self, peers: &[(Subnet, IpAddr)]) -> Result<RouteReport, NetworkError> {
        routes::sync(peers)
    }
}
