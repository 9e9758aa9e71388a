//! The zygote that makes libcontainer's clones, as root: it has one thread, it is replaced
//! when it dies, a create that hangs in it is reported as an error on that container and
//! leaves nothing behind, and the exit status of a container it created still reaches us.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use shoal_oci::{
    ContainerConfig, ExitStatus, ImageStore, LibcontainerRuntime, Limits, PreparedImage,
    RootfsMode, Runtime, RuntimeError, RuntimeSettings, ZygoteCommand,
};

const CGROUP_PARENT: &str = "shoal-test";

struct Fixture {
    dir: tempfile::TempDir,
    image: PreparedImage,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_image(&dir.path().join("image"), &["/bin/true"]);
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout.path, None)
        .unwrap();
    Fixture { dir, image }
}

impl Fixture {
    fn settings(&self) -> RuntimeSettings {
        let mut settings = RuntimeSettings::new(&self.dir.path().join("runtime"));
        settings.cgroup_parent = CGROUP_PARENT.to_owned();
        settings.zygote = zygote_command();
        settings
    }

    fn config(&self, id: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.to_owned(),
            image: self.image.clone(),
            command: Some(vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                script.to_owned(),
            ]),
            env: Vec::new(),
            limits: Limits::default(),
            netns_path: None,
            rootfs_mode: RootfsMode::Auto,
            mounts: Vec::new(),
            annotations: Default::default(),
        }
    }
}

/// Deletes what a failing test left.
struct Cleanup<'a>(&'a LibcontainerRuntime);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for id in self.0.list() {
            let _ = self.0.delete(&id);
        }
    }
}

fn unique_id(name: &str) -> String {
    format!("zygote-{name}-{}", std::process::id())
}

fn run(runtime: &LibcontainerRuntime, config: &ContainerConfig) -> ExitStatus {
    runtime.create(config).unwrap();
    runtime.start(&config.id).unwrap();
    runtime
        .wait(&config.id, 20_000)
        .unwrap()
        .expect("the container ends in time")
}

fn threads_of(pid: i32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Every directory that holds the container's cgroup, in any hierarchy.
fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let relative = Path::new(CGROUP_PARENT).join(id);
    let root = Path::new("/sys/fs/cgroup");
    let mut found: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|entry| entry.path().join(&relative))
        .chain([root.join(&relative)])
        .filter(|dir| dir.exists())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Pids of the processes that some hierarchy places in the container's cgroup.
fn processes_in_cgroup(id: &str) -> Vec<String> {
    let needle = format!("/{CGROUP_PARENT}/{id}");
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cgroups) = fs::read_to_string(entry.path().join("cgroup"))
            && cgroups.lines().any(|line| line.ends_with(&needle))
        {
            pids.push(name);
        }
    }
    pids
}

#[test]
fn the_zygote_has_one_thread_and_exit_codes_still_reach_the_runtime() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let (runtime, _) = LibcontainerRuntime::open(fixture.settings()).unwrap();
    let _cleanup = Cleanup(&runtime);
    let zygote = runtime.zygote_pid().expect("a zygote runs");
    assert_ne!(zygote, std::process::id() as i32);
    let id = unique_id("exit");
    assert_eq!(
        run(&runtime, &fixture.config(&id, "exit 5")),
        ExitStatus::Code(5)
    );
    // The worker that cloned the init has gone; the init was handed to us, so its exact
    // status was collected (not `Unknown`, which is what a non-child gives).
    assert_eq!(
        runtime.zygote_pid(),
        Some(zygote),
        "the same zygote serves on"
    );
    assert_eq!(threads_of(zygote), 1);
    // The zygote is the daemon's child, in a process group of its own.
    let stat = fs::read_to_string(format!("/proc/{zygote}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[1], std::process::id().to_string(), "parent");
    assert_eq!(fields[2], zygote.to_string(), "process group");
    runtime.delete(&id).unwrap();
}

#[test]
fn a_dead_zygote_is_replaced_and_its_containers_keep_running() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let (runtime, _) = LibcontainerRuntime::open(fixture.settings()).unwrap();
    let _cleanup = Cleanup(&runtime);
    let running = unique_id("survivor");
    runtime
        .create(&fixture.config(&running, "sleep 300"))
        .unwrap();
    runtime.start(&running).unwrap();
    let first = runtime.zygote_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let id = unique_id("after-kill");
    assert_eq!(
        run(&runtime, &fixture.config(&id, "exit 0")),
        ExitStatus::Code(0)
    );
    let second = runtime.zygote_pid().unwrap();
    assert_ne!(second, first, "a new zygote");
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "the dead zygote was reaped"
    );
    assert_eq!(runtime.wait(&running, 0).unwrap(), None, "still running");
    assert_eq!(
        runtime.stop(&running, 0).unwrap(),
        ExitStatus::Signal(libc::SIGKILL)
    );
    runtime.delete(&running).unwrap();
    runtime.delete(&id).unwrap();
}

#[test]
fn a_create_that_hangs_is_an_error_and_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let mut settings = fixture.settings();
    settings.create_timeout_ms = 3_000;
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    let _cleanup = Cleanup(&runtime);
    let first = runtime.zygote_pid().unwrap();
    // The container's cgroup exists already, frozen: libcontainer's intermediate process
    // joins it and stops, so the create waits forever, with processes made and the state
    // half written, as a create blocked on an inherited lock did.
    let id = unique_id("hang");
    let frozen = freeze_cgroup(&id);
    let started = Instant::now();
    let error = runtime
        .create(&fixture.config(&id, "echo never"))
        .unwrap_err();
    let elapsed = started.elapsed();
    match &error {
        RuntimeError::Libcontainer {
            id: failed,
            action,
            message,
        } => {
            assert_eq!(failed, &id);
            assert_eq!(*action, "create");
            assert!(message.contains("within 3000 ms"), "{message}");
        }
        other => panic!("not a timeout: {other}"),
    }
    assert!(
        elapsed >= Duration::from_millis(3_000) && elapsed < Duration::from_secs(30),
        "{elapsed:?}"
    );
    assert!(!runtime.list().contains(&id));
    assert!(!runtime.container_dir(&id).exists(), "bundle removed");
    assert!(
        !fixture.dir.path().join("runtime/state").join(&id).exists(),
        "libcontainer state removed"
    );
    assert!(!frozen.exists(), "frozen cgroup removed");
    assert_eq!(cgroup_dirs(&id), Vec::<PathBuf>::new(), "cgroups removed");
    assert_eq!(
        processes_in_cgroup(&id),
        Vec::<String>::new(),
        "processes killed"
    );
    let second = runtime.zygote_pid().expect("a new zygote");
    assert_ne!(second, first);
    assert!(
        !Path::new(&format!("/proc/{first}")).exists(),
        "the old zygote reaped"
    );

    // The next create goes through the new zygote.
    let next = unique_id("after-hang");
    assert_eq!(
        run(&runtime, &fixture.config(&next, "exit 0")),
        ExitStatus::Code(0)
    );
    runtime.delete(&next).unwrap();
}

/// Makes the container's cgroup ahead of libcontainer and freezes it (v1 freezer or v2).
fn freeze_cgroup(id: &str) -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/freezer");
    if v1.is_dir() {
        let dir = v1.join(CGROUP_PARENT).join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("freezer.state"), "FROZEN").unwrap();
        dir
    } else {
        let dir = Path::new("/sys/fs/cgroup").join(CGROUP_PARENT).join(id);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.freeze"), "1").unwrap();
        dir
    }
}

#[test]
fn a_dropped_runtime_takes_its_zygote_with_it() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let (runtime, _) = LibcontainerRuntime::open(fixture.settings()).unwrap();
    let zygote = runtime.zygote_pid().unwrap();
    assert!(Path::new(&format!("/proc/{zygote}")).exists());
    drop(runtime);
    assert!(
        !Path::new(&format!("/proc/{zygote}")).exists(),
        "killed and reaped"
    );
}

/// Needs no root: nothing is created.
#[test]
fn a_program_that_is_not_a_zygote_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = RuntimeSettings::new(dir.path());
    settings.zygote = ZygoteCommand::new("/bin/true", [""; 0]);
    let error = LibcontainerRuntime::open(settings).err().expect("refused");
    assert!(
        error.to_string().contains("did not start as a zygote"),
        "{error}"
    );
    let mut settings = RuntimeSettings::new(dir.path());
    settings.zygote = ZygoteCommand::new("/nonexistent/shoal", [""; 0]);
    let error = LibcontainerRuntime::open(settings).err().expect("refused");
    assert!(
        error.to_string().contains("cannot start the zygote"),
        "{error}"
    );
}
