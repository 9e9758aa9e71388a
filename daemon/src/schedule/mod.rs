//! Scheduling, decided apart from doing: every function here is pure (no I/O, no clock, no
//! global randomness), so the same inputs give the same answers on every node and in the
//! cluster simulator.
//!
//! - `placement`: how many replicas of each service each live node runs (rendezvous hashing
//!   with capacity), the same on every node that has the same converged view;
//! - `room`: the one notion of "one more container fits" that placement and the planner share;
//! - `view`: the converged view one pass plans from, read from a `ClusterState`;
//! - `plan`: the planner, which turns the view, the observed runtime and the time into a
//!   `Plan` for this node, and takes the executor's outcomes back;
//! - `rollout`: how far this node goes in replacing outdated replicas of a changed service
//!   (leaderless rolling updates, paced by `[update]`);
//! - `restarts`: the planner's per-container restart bookkeeping;
//! - `ports`: which published ports this node forwards where (its firewall's input);
//! - `status`: what this node reports about its own containers;
//! - `records`: the replicated side of a plan (records, addresses, counters) applied to a
//!   replica as one batch.
//!
//! *Invariant:* nothing in this room reads a clock, spawns, touches a file or a runtime, or
//! imports another room of the daemon.

pub mod placement;
pub mod plan;
pub mod ports;
pub mod records;
pub mod restarts;
pub mod rollout;
pub mod room;
pub mod status;
pub mod view;

pub use placement::{NodeInput, Placement, ServiceInput, place};
pub use plan::{
    Observed, ObservedState, Outcome, Plan, Planner, PlannerSettings, Removal, Restart, Start,
};
pub use records::{BatchResult, NewRecord, RecordBatch, RecordError};
pub use room::{CONTAINERS_PER_NODE_MAX, Reserved};
pub use view::{ClusterView, ServiceVersion};
