//! The node agent, `shoal daemon`: its config file (`config`), its life from startup to
//! shutdown (`run`), its background tasks (`tasks`), certificate reloads on SIGHUP and expiry
//! warnings (`reload`), its systemd notifications (`notify`) and what the metrics endpoint
//! samples from the node before a scrape (`sampling`). This room wires the others
//! together; nothing below it imports it, except the CLI, which reads the config file for
//! `--check-config`.

pub mod config;
pub mod notify;
pub mod reload;
pub mod run;
pub mod sampling;
pub mod tasks;

pub use run::{RunError, SHUTDOWN_GRACE_MS, run};
