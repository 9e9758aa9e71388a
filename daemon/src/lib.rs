//! shoal's node daemon and operator CLI as a library; `main.rs` only parses and dispatches.

pub mod api;
pub mod cli;
pub mod config;
pub mod demo;
pub mod node;
pub mod notify;
pub mod output;
pub mod reconcile;
pub mod run;
pub mod scheduler;
pub mod spec_file;
pub mod store;

// daemon-net's modules.
pub mod pki;
pub mod sync;
pub mod tls;
