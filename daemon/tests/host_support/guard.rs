//! A cluster of daemons that run real containers, cleaned up when a test ends, passed or
//! not.

use std::path::Path;

use std::process::Command;

use shoal::api::{PsView, Request, ServiceView};

use super::{BINARY, Cluster, Daemon};

/// A cluster whose containers are removed when the test ends, passed or not: services are
/// removed through the API while the daemons run, and whatever is left is killed through
/// its cgroups and unmounted.
pub struct Guarded(pub Cluster);

impl Guarded {
    pub fn new(count: usize, extra_config: &str) -> Guarded {
        Guarded(Cluster::new(count, extra_config))
    }
}

impl std::ops::Deref for Guarded {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        for daemon in self.0.nodes.iter().filter(|d| d.child.is_some()) {
            let Ok(mut client) =
                shoal::api::Client::connect(&daemon.socket, std::time::Duration::from_secs(5))
            else {
                continue;
            };
            let services: Vec<ServiceView> = client.call(Request::ServiceList).unwrap_or_default();
            for service in services {
                let _ = client.call::<ServiceView>(Request::ServiceRemove { name: service.name });
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline
            && self
                .0
                .nodes
                .iter()
                .any(|d| d.child.is_some() && !runtime_containers(d).is_empty())
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for daemon in &mut self.0.nodes {
            daemon.kill9();
            for id in runtime_containers(daemon) {
                reap(&daemon.name, &id, &daemon.dir);
            }
        }
    }
}

/// Kills every process of a leftover container and unmounts its rootfs.
pub fn reap(node: &str, id: &str, dir: &Path) {
    for procs in [
        format!("/sys/fs/cgroup/pids/shoal/{node}/{id}/cgroup.procs"),
        format!("/sys/fs/cgroup/shoal/{node}/{id}/cgroup.procs"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&procs) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
    let rootfs = dir
        .join("state/containers/containers")
        .join(id)
        .join("rootfs");
    let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
}

/// The containers libcontainer holds state of for `daemon`.
pub fn runtime_containers(daemon: &Daemon) -> Vec<String> {
    let dir = daemon.dir.join("state/containers/containers");
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `shoal ps --json` through the real CLI.
pub fn ps(daemon: &Daemon) -> PsView {
    let output = Command::new(BINARY)
        .args(["ps", "--json", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shoal ps failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
