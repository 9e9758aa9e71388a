//! shoal's replicated cluster state. Pure data and logic: no I/O, no clock reads, no threads.
//!
//! Bottom up: validated names (`ids`), the hybrid logical clock (`clock`), the
//! records (`records`), the entry table every CRDT is made of (`entry`), the
//! document (`state`), what replicas exchange (`delta`), a node's replica with
//! local operations, sync and GC (`replica`), and the wire/disk encoding (`codec`).

mod clock;
pub mod codec;
mod delta;
pub mod entry;
mod ids;
mod records;
mod replica;
/// The deterministic simulator of replicas (feature `sim`; its tests turn it on).
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;

pub use clock::{Clock, ClockError};
pub use delta::{Delta, DeltaBase, OriginRange, Summary};
pub use entry::{Dot, Merge};
pub use ids::{ContainerId, NameError, NodeId, NodeIdError, ServiceName};
pub use records::{
    Capacity, ContainerRecord, IpAllocation, IpConflict, NodeMeta, Resource, Resources,
    RestartPolicy, ServiceSpec, SpecError, Subnet, SubnetConflict, SubnetError,
};
pub use replica::{Applied, ApplyError, PeerView, Replica, ReplicaError, Snapshot};
pub use state::ClusterState;
pub use uhlc::{ID, NTP64, Timestamp};

/// What a replica has seen: per node, the highest contiguous write counter.
pub type VersionVector = crdts::VClock<NodeId>;
