//! Kills every process in a container's cgroups and removes them, without libcontainer's
//! state: the cleanup after a create that did not finish, when that state may be missing or
//! say nothing of the processes already made (an init that never reported back).
//!
//! Works on cgroup v1 (one directory per hierarchy), v2 and hybrid mounts alike: every
//! directory named by the container's cgroup path under any hierarchy is swept. A frozen
//! cgroup is thawed, since a frozen v1 task cannot die.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long a sweep waits for the killed processes to go and the directories to empty.
pub const SWEEP_WAIT_MS: u64 = 5_000;
const SWEEP_POLL_MS: u64 = 5;
/// Nested cgroups deeper than this under a container's are not looked for.
const DEPTH_MAX: usize = 16;

/// Kills every process under `cgroup_path` (relative to each hierarchy's root) in every
/// hierarchy below `root`, reaps those that were this process's children, and removes the
/// directories. A path that exists nowhere is already swept.
pub fn sweep(root: &Path, cgroup_path: &str) -> io::Result<()> {
    let relative = Path::new(cgroup_path.trim_start_matches('/'));
    if relative.as_os_str().is_empty()
        || !relative
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a container cgroup path: {cgroup_path:?}"),
        ));
    }
    let mut tops = BTreeSet::new();
    for candidate in hierarchies(root)?.into_iter().map(|dir| dir.join(relative)) {
        if let Ok(canonical) = candidate.canonicalize() {
            tops.insert(canonical);
        }
    }
    let mut dirs = Vec::new();
    for top in &tops {
        collect_dirs(top, 0, &mut dirs);
    }
    let deadline = Instant::now() + Duration::from_millis(SWEEP_WAIT_MS);
    loop {
        let pids = pids_in(&dirs);
        if pids.is_empty() {
            break;
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for dir in &dirs {
            thaw(dir);
        }
        for &pid in &pids {
            // Only this process's children can be reaped; others are someone else's.
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "processes {pids:?} still in cgroup {cgroup_path} {SWEEP_WAIT_MS} ms after SIGKILL"
            )));
        }
        std::thread::sleep(Duration::from_millis(SWEEP_POLL_MS));
    }
    // Deepest first: a cgroup directory goes only once its children have.
    for dir in dirs.iter().rev() {
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(error) if error.kind() == io::ErrorKind::NotFound => break,
                // Busy for a moment after the last process died.
                Err(error)
                    if Instant::now() < deadline && error.raw_os_error() == Some(libc::EBUSY) =>
                {
                    std::thread::sleep(Duration::from_millis(SWEEP_POLL_MS));
                }
                Err(error) => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("remove {}: {error}", dir.display()),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `root` itself (cgroup v2) and each directory directly under it (v1 hierarchies and
/// hybrid's `unified`).
fn hierarchies(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut hierarchies = vec![root.to_owned()];
    match fs::read_dir(root) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    hierarchies.push(entry.path());
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    Ok(hierarchies)
}

/// `dir` and the cgroup directories below it, parents before children.
fn collect_dirs(dir: &Path, depth: usize, dirs: &mut Vec<PathBuf>) {
    dirs.push(dir.to_owned());
    if depth >= DEPTH_MAX {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                collect_dirs(&entry.path(), depth + 1, dirs);
            }
        }
    }
}

fn pids_in(dirs: &[PathBuf]) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for dir in dirs {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(
                procs
                    .lines()
                    .filter_map(|line| line.trim().parse::<i32>().ok()),
            );
        }
    }
    pids
}

/// Lets frozen tasks run (and so die of the SIGKILL they were sent).
fn thaw(dir: &Path) {
    let v1 = dir.join("freezer.state");
    if v1.exists() {
        let _ = fs::write(v1, "THAWED");
    }
    let v2 = dir.join("cgroup.freeze");
    if v2.exists() {
        let _ = fs::write(v2, "0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_hierarchy_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "/", "shoal/../..", "../shoal"] {
            assert_eq!(
                sweep(root.path(), bad).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn empty_directories_are_removed_deepest_first_in_every_hierarchy() {
        // A stand-in tree: plain directories behave like empty cgroups for rmdir.
        let root = tempfile::tempdir().unwrap();
        for hierarchy in ["memory", "pids", "unified"] {
            fs::create_dir_all(root.path().join(hierarchy).join("shoal/c1/nested")).unwrap();
        }
        fs::create_dir_all(root.path().join("pids/shoal/c2")).unwrap();
        sweep(root.path(), "/shoal/c1").unwrap();
        for hierarchy in ["memory", "pids", "unified"] {
            assert!(!root.path().join(hierarchy).join("shoal/c1").exists());
            assert!(root.path().join(hierarchy).join("shoal").exists());
        }
        assert!(
            root.path().join("pids/shoal/c2").exists(),
            "another container's cgroup stays"
        );
        // Nothing there at all is already swept.
        sweep(root.path(), "/shoal/c1").unwrap();
    }
}
