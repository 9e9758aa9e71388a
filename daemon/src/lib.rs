//! shoal's node daemon and operator CLI as a library; `main.rs` only parses and dispatches.
//!
//! The rooms, from the bottom up (each imports only rooms above it in this list):
//! - `metrics`: the Prometheus metric families, one handle made by the agent, and the
//!   optional HTTP endpoint; a leaf every room may record into;
//! - `schedule`: placement and the container planner, pure;
//! - `state`: the node's CRDT replica, made durable in redb, with time passed in;
//! - `api`: the local API's request and response types (a leaf), its server and client;
//! - `swim`: SWIM membership (foca), sans-IO: who is alive, suspected or down;
//! - `sync`: HTTP/3 sync between nodes with mutual TLS, certificates (`pki`, `tls`);
//! - `containers`: the executor and the reconcile loop that carry plans out;
//! - `sim` (feature `sim`): the cluster simulator, driving `containers` on fake nodes;
//! - `agent`: `shoal daemon`, wiring the rooms together;
//! - `cli`: the operator commands, talking to a daemon through the API client only.
//!
//! `daemon/tests/architecture.rs` checks these boundaries.

pub mod agent;
pub mod api;
pub mod cli;
pub mod containers;
pub mod metrics;
pub mod schedule;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod swim;
pub mod sync;
