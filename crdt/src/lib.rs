//! shoal's replicated cluster state. Pure data and logic: no I/O, no clock reads, no threads.
//!
//! Bottom up: validated names (`ids`), the hybrid logical clock (`clock`), the
//! records (`records`), the entry table every CRDT is made of (`entry`), the
//! document (`state`), what replicas exchange (`delta`), a node's replica with
//! local operations, sync and GC (`replica`), summaries in a few bytes (`compact`), deltas bounded in size and the whole-state
//! delta a large transfer carries (`transfer`), and the wire/disk encoding (`codec`).
//! `sim` (feature `sim`) is the deterministic simulator of replicas.
//!
//! # The model
//!
//! - **Node ids** (`NodeId`): a DNS-label-like name, the same string as in the node's
//!   certificate. Its HLC id (`uhlc::ID`) is the first 16 bytes of its SHA-256.
//! - **Hybrid logical clock** (`Clock`): uhlc's types with the update rule driven by the
//!   physical time the caller passes in (uhlc's own `HLC` reads a global clock, which a
//!   simulator of many skewed nodes cannot drive). A remote timestamp further ahead of our
//!   physical time than the drift limit is `ApplyError::ClockDrift`, and nothing changes.
//! - **Dots and one version vector**: every write gets the next dot `(node, counter)` from
//!   one per-node counter for the whole document (one dot per entry written), so one
//!   contiguous version vector summarises everything a replica has seen.
//! - **Entries** (`entry`): every CRDT is a table of `key -> (value or tombstone, hlc,
//!   dot)`; merge keeps the greater `(hlc, dot)`, a total order. The LWW register (services)
//!   and LWW map (node metadata) are keyed by name, the OR-Sets (containers, IPs) by
//!   `(element, add-dot)` with removes tombstoning exactly the observed add-dots
//!   (add-wins), the PN-counters by `(node, resource)`, written only by their node.
//! - **Reservations**: a node adds only its own containers, adjusts only its own counters
//!   and allocates IPs only from its own subnet (checked on apply). Of overlapping live
//!   subnet claims the earliest `(claim HLC, node)` wins (`ClusterState::subnet_owner`);
//!   of two live allocations of one IP the earliest `(HLC, node, container)` wins
//!   (`ip_conflicts` lists the losers, who release).
//! - **Delta sync**: a `Summary` is the version vector; `Replica::delta_for` answers with,
//!   per origin the summary is behind on, the range `(since, until]` and every current
//!   entry whose dot is in it, found through the by-dot index (no scan). Applying needs
//!   `since <= own` per origin (else `StaleBase`: pull first) and is all-or-nothing:
//!   ranges, dots, owners, specs and clock drift are validated before anything changes.
//!   A local operation returns the delta of exactly its writes; `own_delta_since` joins
//!   the writes of several operations into one. Between members that hold nearly the same
//!   state a `CompactSummary` stands for the version vector: its digest and the counters
//!   that moved lately, from which the receiver rebuilds it exactly or asks for the whole
//!   (`compact`).
//!   *Invariant:* for every dot a replica's version vector covers, the replica holds that
//!   write or one that supersedes it; an incoming entry whose dot is covered is ignored,
//!   which is what keeps collected removals from coming back. Against a lying or buggy
//!   peer (trust model in ARCHITECTURE.md): counters are checked and bounded by
//!   `DOT_COUNTER_MAX`; coverage of the receiver's own writes beyond its counter is refused;
//!   coverage of a member's writes relayed by another peer is taken only as far as the
//!   replica holds one of them; a node's own summary takes back coverage of its writes
//!   that it did not make; and summaries carry a digest, so two replicas that cover the
//!   same writes but hold different entries repair each other (`DeltaBase::Repair`).
//!   Two daemons with one name are seen (`identity`): a replica that sees writes of its name
//!   it did not make writes nothing while its identity is contested.
//! - **Tombstone GC by causal stability** (`Replica::collect_garbage`, rule and proof in
//!   `replica`): a tombstone is dropped once every live member's latest summary that this
//!   replica has caught up with covers its dot. A peer below the GC floor gets a full
//!   snapshot, and so does a peer whose delta is too large for one sync body (fetched in
//!   pieces, applied whole; design in `transfer`). *Limit:* a write by a node that is not a member, concurrent with an already
//!   collected removal, can make replicas diverge on that key; so a node publishes its
//!   metadata and syncs before it writes anything else, and an evicted node rejoins empty.
//! - **Persistence image** (`Replica::to_snapshot`/`from_snapshot`): every entry, the
//!   version vector, the GC floor, the clock's last time and the peers' summaries,
//!   validated on load.
//! - **Encoding** (`codec`): magic `SHOL`, a kind byte, a little-endian u16 format version,
//!   a postcard body; decode checks the size limit first and refuses unknown versions,
//!   wrong kinds, malformed bodies and trailing bytes.
//! - **Simulator** (`sim`): one ChaCha seed drives 3 to 7 replicas with skewed clocks,
//!   every operation kind, eager pushes and anti-entropy as real codec bytes over a lossy,
//!   duplicating, reordering, partitioned network, and crashes restoring from the last
//!   persisted snapshot; it checks convergence, every acknowledged write against a history
//!   oracle, zero tombstones after GC and refusals that change nothing.
//!   *Invariant:* it reads no clock and iterates no hash map: one seed, one trace.

mod clock;
pub mod codec;
pub mod compact;
pub mod constraints;
mod delta;
pub mod drain;
pub mod entry;
pub mod health;
pub mod identity;
mod ids;
mod json_bound;
mod record_check;
mod records;
mod replica;
pub mod rollout;
/// The deterministic simulator of replicas (feature `sim`; its tests turn it on).
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod status;
#[cfg(test)]
mod test_support;
mod transfer;
pub mod workload;

pub use clock::{Clock, ClockError};
pub use compact::{CompactSummary, SummaryReply};
pub use constraints::{Constraint, Mode};
pub use delta::{Delta, DeltaBase, OriginRange, Summary};
pub use drain::{DRAIN_DEADLINE_MS_MAX, DRAIN_DEADLINE_MS_MIN, Drain, DrainError};
pub use entry::{Dot, Merge};
pub use health::{HealthCheck, HealthProbe};
pub use identity::{Evidence, Sighting};
pub use ids::{ContainerId, NODE_ID_BYTES_MAX, NameError, NodeId, NodeIdError, ServiceName};
pub use records::{
    Capacity, ContainerRecord, IpAllocation, IpConflict, NodeMeta, Resource, Resources,
    RestartPolicy, SPEC_ENCODED_BYTES_MAX, ServiceSpec, SpecError, Subnet, SubnetConflict,
    SubnetError,
};
pub use replica::{
    ADOPTED_COUNTER_MAX, Applied, ApplyError, CONTEST_ANNOUNCE_JUMP, DOT_COUNTER_MAX, PeerView,
    Replica, ReplicaError, Snapshot,
};
pub use rollout::{PastVersion, ServiceRecord, UpdateOrder, UpdatePolicy};
pub use state::ClusterState;
pub use status::{ContainerStatus, Health, NodeStatus, RunState};
pub use transfer::encoded_delta_bytes;
pub use uhlc::{ID, NTP64, Timestamp};
pub use workload::{HostPort, PortMapping, Protocol, Publish, PublishMode};

/// What a replica has seen: per node, the highest contiguous write counter.
pub type VersionVector = crdts::VClock<NodeId>;
