//! Real containers through libcontainer, as root: exit codes, logs, cgroup limits, stop with
//! a grace period, seccomp, adoption after the runtime is dropped, complete deletion, and
//! commands run inside a running container (`exec`, for health checks).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use shoal_oci::{
    ContainerConfig, ContainerStatus, ExecOutcome, ExitStatus, ImageStore, LibcontainerRuntime,
    Limits, PreparedImage, RootfsMode, Runtime, RuntimeError, RuntimeSettings,
};

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    image: PreparedImage,
    /// `None` only while a test swaps in a fresh runtime.
    runtime: Option<LibcontainerRuntime>,
}

impl Fixture {
    fn runtime(&self) -> &LibcontainerRuntime {
        self.runtime.as_ref().expect("runtime present")
    }
}

/// A failing test still removes its containers, cgroups and mounts.
impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(runtime) = &self.runtime {
            for id in runtime.list() {
                let _ = runtime.delete(&id);
            }
        }
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_image(
        &dir.path().join("image"),
        &["/bin/sh", "-c", "echo default"],
    );
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout.path, None)
        .unwrap();
    let root = dir.path().join("runtime");
    let (runtime, report) = LibcontainerRuntime::open(settings(&root)).unwrap();
    assert_eq!(report, Default::default());
    Fixture {
        _dir: dir,
        root,
        image,
        runtime: Some(runtime),
    }
}

fn settings(root: &Path) -> RuntimeSettings {
    let mut settings = RuntimeSettings::new(root);
    settings.cgroup_parent = "shoal-test".to_owned();
    settings.zygote = zygote_command();
    settings
}

/// Container ids are unique per test run so parallel tests never share a cgroup.
fn unique_id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn config(fixture: &Fixture, id: &str, script: &str) -> ContainerConfig {
    ContainerConfig {
        id: id.to_owned(),
        image: fixture.image.clone(),
        command: Some(vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            script.to_owned(),
        ]),
        env: vec!["GREETING=hello from shoal".to_owned()],
        limits: Limits::default(),
        netns_path: None,
        rootfs_mode: RootfsMode::Auto,
        mounts: Vec::new(),
        annotations: Default::default(),
    }
}

fn run(fixture: &Fixture, config: &ContainerConfig, timeout_ms: u64) -> ExitStatus {
    fixture.runtime().create(config).unwrap();
    fixture.runtime().start(&config.id).unwrap();
    fixture
        .runtime()
        .wait(&config.id, timeout_ms)
        .unwrap()
        .expect("container ends in time")
}

fn stdout_of(fixture: &Fixture, id: &str) -> String {
    let (stdout, _) = fixture.runtime().log_paths(id);
    // The reader thread may still be draining the FIFO right after the exit, in more than
    // one write: the text counts once it is non-empty and has not changed for a while.
    const QUIET_MS: u64 = 300;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    let mut unchanged_since = Instant::now();
    loop {
        let text = fs::read_to_string(&stdout).unwrap_or_default();
        if text != last {
            last = text;
            unchanged_since = Instant::now();
        } else if !last.is_empty() && unchanged_since.elapsed() >= Duration::from_millis(QUIET_MS) {
            return last;
        }
        if Instant::now() > deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn memory_cgroup(id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory/shoal-test").join(id)
}

#[test]
fn exit_code_is_recorded_and_output_reaches_the_log() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let id = unique_id("exit");
    let mut config = config(&fixture, &id, "echo \"$GREETING\"; echo oops >&2; exit 7");
    config.limits.cpu_millis = Some(250);
    assert_eq!(run(&fixture, &config, 10_000), ExitStatus::Code(7));
    assert_eq!(
        fixture.runtime().state(&id).unwrap().status,
        ContainerStatus::Stopped(ExitStatus::Code(7))
    );
    assert_eq!(stdout_of(&fixture, &id), "hello from shoal\n");
    let (_, stderr) = fixture.runtime().log_paths(&id);
    assert_eq!(fs::read_to_string(stderr).unwrap(), "oops\n");
    assert!(memory_cgroup(&id).exists());
    let cpu_cgroup = Path::new("/sys/fs/cgroup/cpu/shoal-test").join(&id);
    assert_eq!(
        fs::read_to_string(cpu_cgroup.join("cpu.cfs_quota_us"))
            .unwrap()
            .trim(),
        "25000"
    );

    fixture.runtime().delete(&id).unwrap();
    assert!(!memory_cgroup(&id).exists(), "cgroup removed");
    assert!(
        !fixture.runtime().container_dir(&id).exists(),
        "bundle, rootfs and logs removed"
    );
    assert!(
        !fixture.root.join("state").join(&id).exists(),
        "libcontainer state removed"
    );
    assert!(matches!(
        fixture.runtime().state(&id),
        Err(RuntimeError::NotFound { .. })
    ));
}

#[test]
fn image_command_runs_by_default_and_copy_rootfs_works() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let id = unique_id("default");
    let mut config = config(&fixture, &id, "");
    config.command = None;
    config.rootfs_mode = RootfsMode::Copy;
    assert_eq!(run(&fixture, &config, 10_000), ExitStatus::Code(0));
    assert_eq!(stdout_of(&fixture, &id), "default\n");
    fixture.runtime().delete(&id).unwrap();
}

#[test]
fn duplicate_and_invalid_ids_are_refused_without_side_effects() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let id = unique_id("dup");
    let config = config(&fixture, &id, "sleep 30");
    fixture.runtime().create(&config).unwrap();
    assert!(matches!(
        fixture.runtime().create(&config),
        Err(RuntimeError::AlreadyExists { .. })
    ));
    let mut bad = config.clone();
    bad.id = "../escape".to_owned();
    assert!(matches!(
        fixture.runtime().create(&bad),
        Err(RuntimeError::Bundle { .. })
    ));
    assert!(!fixture.root.join("escape").exists());
    // Deleting a created, never started container kills its waiting process.
    fixture.runtime().delete(&id).unwrap();
    assert!(!memory_cgroup(&id).exists());
}

const ALLOCATE_64_MIB: &str = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo allocated ${#x}";

#[test]
fn memory_limit_kills_an_over_allocating_process() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    // The same allocation succeeds without a limit, so the limit is what stops it below.
    let free_id = unique_id("mem-free");
    assert_eq!(
        run(
            &fixture,
            &config(&fixture, &free_id, ALLOCATE_64_MIB),
            60_000
        ),
        ExitStatus::Code(0)
    );
    assert_eq!(stdout_of(&fixture, &free_id), "allocated 67108864\n");
    fixture.runtime().delete(&free_id).unwrap();

    let id = unique_id("mem-limited");
    let mut limited = config(&fixture, &id, ALLOCATE_64_MIB);
    limited.limits.memory_bytes = Some(16 << 20);
    let exit = run(&fixture, &limited, 60_000);
    assert_eq!(
        exit,
        ExitStatus::Signal(libc::SIGKILL),
        "killed by the OOM killer"
    );
    let oom_control = fs::read_to_string(memory_cgroup(&id).join("memory.oom_control")).unwrap();
    let oom_kills: u64 = oom_control
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .map(|count| count.trim().parse().unwrap())
        .expect("memory.oom_control has an oom_kill counter");
    assert!(oom_kills >= 1, "{oom_control}");
    fixture.runtime().delete(&id).unwrap();
}

#[test]
fn pids_limit_bounds_a_fork_bomb() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let id = unique_id("pids");
    // The inner shell forks sleepers until fork fails ("can't fork" ends that shell); the
    // outer one then reports and execs, which needs no new pid.
    let script = "sh -c 'while true; do sleep 30 & done'; echo started; exec sleep 30";
    let mut config = config(&fixture, &id, script);
    config.limits.pids_max = Some(8);
    fixture.runtime().create(&config).unwrap();
    fixture.runtime().start(&id).unwrap();
    let pids_dir = Path::new("/sys/fs/cgroup/pids/shoal-test").join(&id);
    assert_eq!(
        fs::read_to_string(pids_dir.join("pids.max"))
            .unwrap()
            .trim(),
        "8"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stdout_of(&fixture, &id).contains("started") {
        assert!(Instant::now() < deadline, "fork loop did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let current: u64 = fs::read_to_string(pids_dir.join("pids.current"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 8, "pids.current {current} over the limit");
    assert!(current >= 7, "the loop filled the limit: {current}");
    let (_, stderr) = fixture.runtime().log_paths(&id);
    assert!(fs::read_to_string(stderr).unwrap().contains("can't fork"));
    assert_eq!(
        fixture.runtime().stop(&id, 100).unwrap(),
        ExitStatus::Signal(libc::SIGKILL)
    );
    fixture.runtime().delete(&id).unwrap();
}

#[test]
fn stop_sends_sigterm_then_sigkill_after_the_grace_period() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    // A process that handles SIGTERM exits with its own code inside the grace period.
    let polite = unique_id("stop-polite");
    let config_polite = config(
        &fixture,
        &polite,
        "trap 'echo bye; exit 3' TERM; while true; do sleep 0.05; done",
    );
    fixture.runtime().create(&config_polite).unwrap();
    fixture.runtime().start(&polite).unwrap();
    assert_eq!(
        fixture.runtime().state(&polite).unwrap().status,
        ContainerStatus::Running
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        fixture.runtime().stop(&polite, 5_000).unwrap(),
        ExitStatus::Code(3)
    );
    assert_eq!(stdout_of(&fixture, &polite), "bye\n");

    // PID 1 without a handler ignores SIGTERM, so only the SIGKILL after the grace ends it.
    let stubborn = unique_id("stop-stubborn");
    let mut config_stubborn = config(&fixture, &stubborn, "");
    config_stubborn.command = Some(vec!["/bin/sleep".to_owned(), "300".to_owned()]);
    fixture.runtime().create(&config_stubborn).unwrap();
    fixture.runtime().start(&stubborn).unwrap();
    let grace_ms = 700;
    let started = Instant::now();
    assert_eq!(
        fixture.runtime().stop(&stubborn, grace_ms).unwrap(),
        ExitStatus::Signal(libc::SIGKILL)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(grace_ms),
        "SIGKILL came before the grace period ended"
    );
    // Stopping again returns the recorded status.
    assert_eq!(
        fixture.runtime().stop(&stubborn, 0).unwrap(),
        ExitStatus::Signal(libc::SIGKILL)
    );
    fixture.runtime().delete(&polite).unwrap();
    fixture.runtime().delete(&stubborn).unwrap();
}

#[test]
fn exec_runs_a_command_inside_the_container_and_reports_how_it_ended() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let id = unique_id("exec");
    // The container's own file, made after start: only its root has it.
    let config = config(
        &fixture,
        &id,
        "echo inside > /tmp/marker; while true; do sleep 0.05; done",
    );
    fixture.runtime().create(&config).unwrap();
    fixture.runtime().start(&id).unwrap();
    let runtime = fixture.runtime();
    let sh = |script: &str| vec!["/bin/sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let marker = sh("test \"$(cat /tmp/marker)\" = inside");
    // The marker appears a moment after start.
    let deadline = Instant::now() + Duration::from_secs(5);
    while runtime.exec(&id, &marker, 2_000).unwrap() != ExecOutcome::Exited(ExitStatus::Code(0)) {
        assert!(
            Instant::now() < deadline,
            "the container's file never showed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its environment, its pid namespace (the container's init is pid 1 there), its code.
    assert_eq!(
        runtime
            .exec(&id, &sh("test \"$GREETING\" = 'hello from shoal'"), 2_000)
            .unwrap(),
        ExecOutcome::Exited(ExitStatus::Code(0))
    );
    assert_eq!(
        runtime
            .exec(&id, &sh("grep -q 'while true' /proc/1/cmdline"), 2_000)
            .unwrap(),
        ExecOutcome::Exited(ExitStatus::Code(0))
    );
    assert_eq!(
        runtime.exec(&id, &sh("exit 3"), 2_000).unwrap(),
        ExecOutcome::Exited(ExitStatus::Code(3))
    );
    // A command still running at its timeout is killed, within a bounded time.
    let started = Instant::now();
    assert_eq!(
        runtime
            .exec(&id, &["/bin/sleep".to_owned(), "30".to_owned()], 300)
            .unwrap(),
        ExecOutcome::TimedOut
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A program the container does not have is an error, not a hang.
    let missing = runtime.exec(&id, &["/no/such/check".to_owned()], 2_000);
    assert!(
        !matches!(missing, Ok(ExecOutcome::Exited(ExitStatus::Code(0)))),
        "{missing:?}"
    );
    // The container itself is untouched, and libcontainer's per-call sockets are gone.
    assert_eq!(runtime.state(&id).unwrap().status, ContainerStatus::Running);
    let leftovers: Vec<String> = fs::read_dir(fixture.root.join("state").join(&id))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tenant-"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
    runtime.stop(&id, 0).unwrap();
    // A stopped container runs nothing.
    assert!(matches!(
        runtime.exec(&id, &sh("true"), 1_000),
        Err(RuntimeError::WrongState { .. })
    ));
    runtime.delete(&id).unwrap();
}

#[test]
fn seccomp_profile_is_applied() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let id = unique_id("seccomp");
    // unshare(CLONE_NEWUSER) needs no capability, so only the seccomp filter can refuse it.
    let config = config(
        &fixture,
        &id,
        "grep Seccomp: /proc/self/status; unshare -U true && echo unshare-allowed || echo unshare-denied",
    );
    assert_eq!(run(&fixture, &config, 10_000), ExitStatus::Code(0));
    let output = stdout_of(&fixture, &id);
    assert!(output.contains("Seccomp:\t2"), "{output}");
    assert!(output.contains("unshare-denied"), "{output}");
    fixture.runtime().delete(&id).unwrap();
}

#[test]
fn a_new_runtime_adopts_running_containers_and_reports_dead_ones() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let running = unique_id("adopt-running");
    let dead = unique_id("adopt-dead");
    let mut config_running = config(
        &fixture,
        &running,
        "echo before; sleep 1; echo after; sleep 300",
    );
    config_running
        .annotations
        .insert("shoal.spec".to_owned(), "abc123".to_owned());
    fixture.runtime().create(&config_running).unwrap();
    fixture.runtime().start(&running).unwrap();
    assert_eq!(
        run(&fixture, &config(&fixture, &dead, "exit 4"), 10_000),
        ExitStatus::Code(4)
    );
    let pid_before = fixture.runtime().state(&running).unwrap().pid.unwrap();

    let mut fixture = fixture;
    drop(fixture.runtime.take());
    std::thread::sleep(Duration::from_millis(100));
    let (runtime, report) = LibcontainerRuntime::open(settings(&fixture.root)).unwrap();
    fixture.runtime = Some(runtime);
    assert_eq!(report.running, std::slice::from_ref(&running));
    assert_eq!(report.dead, std::slice::from_ref(&dead));

    let state = fixture.runtime().state(&running).unwrap();
    assert_eq!(state.status, ContainerStatus::Running);
    assert_eq!(state.pid, Some(pid_before), "adopted, not restarted");
    assert_eq!(
        state.annotations, config_running.annotations,
        "annotations survive the adoption"
    );
    assert_eq!(
        fixture.runtime().state(&dead).unwrap().status,
        ContainerStatus::Stopped(ExitStatus::Code(4))
    );
    // Output written after the restart still reaches the log through the reopened FIFO.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stdout_of(&fixture, &running).contains("after") {
        assert!(Instant::now() < deadline, "no output after adoption");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stdout_of(&fixture, &running), "before\nafter\n");
    assert!(matches!(
        fixture.runtime().stop(&running, 200).unwrap(),
        ExitStatus::Signal(_)
    ));
    fixture.runtime().delete(&running).unwrap();
    fixture.runtime().delete(&dead).unwrap();
    assert!(!memory_cgroup(&running).exists());
    assert!(!memory_cgroup(&dead).exists());
}

#[test]
fn logs_are_capped_by_rotation() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let root = fixture.root.join("small-logs");
    let mut small = settings(&root);
    small.log_bytes_max = 4096;
    let (runtime, _) = LibcontainerRuntime::open(small).unwrap();
    let id = unique_id("rotate");
    // 100 KiB of output, 25 times the cap.
    let config = config(
        &fixture,
        &id,
        "head -c 102400 /dev/zero | tr '\\0' x; echo; echo last",
    );
    runtime.create(&config).unwrap();
    runtime.start(&id).unwrap();
    assert_eq!(
        runtime.wait(&id, 10_000).unwrap(),
        Some(ExitStatus::Code(0))
    );
    let (stdout, _) = runtime.log_paths(&id);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&stdout)
        .unwrap_or_default()
        .ends_with("last\n")
    {
        assert!(Instant::now() < deadline, "log never got the last line");
        std::thread::sleep(Duration::from_millis(20));
    }
    let current = fs::metadata(&stdout).unwrap().len();
    let mut rotated_name = stdout.clone().into_os_string();
    rotated_name.push(".1");
    let rotated = fs::metadata(PathBuf::from(rotated_name)).unwrap().len();
    assert!(
        current <= 4096 && rotated == 4096,
        "current {current}, rotated {rotated}"
    );
    runtime.delete(&id).unwrap();
}

#[test]
fn a_container_joins_the_given_network_namespace() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let namespace = format!("shoal-oci-test-{}", std::process::id());
    // Other tests in this binary create containers meanwhile; the clones happen in the
    // zygote, so spawning here needs no care.
    let ip = |args: &[&str]| {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &namespace]);
    struct DeleteOnDrop(String);
    impl Drop for DeleteOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _namespace_guard = DeleteOnDrop(namespace.clone());
    ip(&[
        "-n",
        &namespace,
        "link",
        "add",
        "shoaltest0",
        "type",
        "veth",
        "peer",
        "name",
        "shoaltest1",
    ]);
    let id = unique_id("netns");
    let mut config = config(&fixture, &id, "ip link");
    config.netns_path = Some(PathBuf::from("/run/netns").join(&namespace));
    let exit = run(&fixture, &config, 10_000);
    let output = stdout_of(&fixture, &id);
    fixture.runtime().delete(&id).unwrap();
    assert_eq!(exit, ExitStatus::Code(0));
    assert!(output.contains("shoaltest0"), "{output}");

    // Without a path the container gets a fresh namespace with only loopback.
    let fresh = unique_id("netns-fresh");
    assert_eq!(
        run(&fixture, &config_without_netns(&fixture, &fresh), 10_000),
        ExitStatus::Code(0)
    );
    let output = stdout_of(&fixture, &fresh);
    assert!(
        output.contains("lo:") && !output.contains("shoaltest0"),
        "{output}"
    );
    fixture.runtime().delete(&fresh).unwrap();
}

fn config_without_netns(fixture: &Fixture, id: &str) -> ContainerConfig {
    config(fixture, id, "ip link")
}
