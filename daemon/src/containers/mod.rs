//! This node's containers: carrying out the planner's decisions and answering for them.
//!
//! - `pass`: one reconcile pass (observe, plan, commit once, act), the same in the daemon
//!   and in the cluster simulator, with the replicated state behind the `StatePort` seam;
//! - `executor`: the doing half, through `shoal_oci::Runtime`, `ContainerNetwork` and
//!   `images::Images`;
//! - `reconciler`: the async loop that runs passes and health probes, and answers `shoal ps`;
//! - `health`: per container, when a health probe is due and what the outcomes make of it
//!   (sans-IO); `probe`: the HTTP and TCP probes;
//! - `workload`: a start's environment and mounts (env files, volumes, tmpfs, secrets),
//!   read on this node;
//! - `volumes`: this node's named volumes (`shoal volume ls|rm`);
//! - `logs`: `shoal logs`: where the containers a target names run, and bounded reads of
//!   this node's runtime log files (other nodes' are read there, over sync).
//!
//! *Invariant:* a node writes only its own container records, counters and addresses, and a
//! record exists before its container starts (a record the runtime never held is started,
//! an ended container restarted per its policy, a container without a record removed).

pub mod executor;
pub mod health;
pub mod images;
pub mod logs;
pub mod pass;
pub mod probe;
pub mod reconciler;
pub mod volumes;
pub mod workload;

pub use executor::{ExecError, Executor};
pub use images::{FakeImages, ImageProblem, Images};
pub use logs::{LOG_CHUNK_BYTES_MAX, Located, LogError, LogPaths, LogRead};
pub use pass::{PassReport, StatePort, run_pass};
pub use reconciler::{ReconcileSettings, Reconciler};
