//! The node's durable state: the CRDT replica driven with time from a `Clock` (`clock`),
//! made durable in redb (`store`, `load`), with liveness as pure functions of the state
//! (`members`). `node::Node` is what every other room talks to.
//!
//! *Invariant:* this room imports nothing of the daemon's other rooms but the `metrics`
//! leaf (where the node counts its commits): not the API's views, not the scheduler, not
//! the sync transport. They import it.

pub mod clock;
pub mod group_commit;
mod load;
pub mod members;
pub mod node;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use load::STORED_BYTES_MAX;
pub use members::Member;
pub use node::{
    CONTEST_QUIET_MS, ClockAhead, CommitCounts, Duplicated, EvictRefused, IdentityContest, Node,
    NodeError, NodeOptions, NodeStatus, OnNew, PeerInfo, PeerStatus, RefusedWrites, ServiceEntry,
    SyncOutcome,
};
