//! A network namespace owned by a guard: created on construction, deleted on drop.

use crate::command::{self, CommandError};

/// Every namespace the harness makes starts with this, followed by the pid of
/// the process that made it, so a later run can tell its own from leftovers.
pub const NAME_PREFIX: &str = "shoal-t";

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self, CommandError> {
        assert!(name.len() <= 64, "namespace name too long: {name}");
        command::run("ip", &["netns", "add", name])?;
        let netns = Netns {
            name: name.to_owned(),
        };
        command::run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(error) = command::run("ip", &["netns", "delete", &self.name]) {
            eprintln!("warning: {error}");
        }
    }
}

/// Deletes namespaces left behind by harness runs whose process is gone
/// (a run killed with SIGKILL cannot clean up after itself).
pub fn sweep_stale() {
    let Ok(output) = command::run("ip", &["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = command::run("ip", &["netns", "delete", name]);
        }
    }
}
