//! Benchmark: create + start + wait + delete of `/bin/true` on one bundle, through
//! libcontainer in-process versus the `runc` and `crun` binaries, medians over N runs
//! (`SHOAL_BENCH_RUNS`, default 30), reported as ratios against runc measured in the same run.
//! Also times the whole `LibcontainerRuntime` path (overlay rootfs, FIFO logs, watcher), and
//! its create+start alone (until `start` returns), the runtime's part of apply-to-running.
//! Needs root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::waitpid;

use shoal_oci::bundle::{BundleOptions, Limits, runtime_spec};
use shoal_oci::rootfs::{RootfsMode, build_rootfs};
use shoal_oci::{
    ContainerConfig, ImageStore, LibcontainerRuntime, Runtime, RuntimeSettings, ZygoteCommand,
};

/// A one-layer busybox OCI layout whose default command is `/bin/true`.
fn busybox_layout(dir: &Path) -> PathBuf {
    shoal_oci::image_layout::busybox_image(dir, &["/bin/true"])
        .expect("busybox-static is installed")
        .path
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time_runs(runs: usize, mut once: impl FnMut(usize)) -> Duration {
    once(usize::MAX); // warm-up
    let samples = (0..runs)
        .map(|run| {
            let started = Instant::now();
            once(run);
            started.elapsed()
        })
        .collect();
    median(samples)
}

fn libcontainer_once(bundle: &Path, state: &Path, id: &str) {
    let mut container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state)
        .unwrap()
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .unwrap();
    container.start().unwrap();
    let pid = container.pid().unwrap();
    waitpid(pid, None).unwrap();
    let mut container = Container::load(state.join(id)).unwrap();
    container.delete(true).unwrap();
}

fn binary_once(binary: &str, bundle: &Path, state: &Path, id: &str) -> bool {
    Command::new(binary)
        .arg("--root")
        .arg(state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the lifecycle benchmark needs root");
        std::process::exit(1);
    }
    let runs: usize = std::env::var("SHOAL_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_layout(&dir.path().join("image"));
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout, None)
        .unwrap();
    let bundle = dir.path().join("bundle");
    fs::create_dir(&bundle).unwrap();
    build_rootfs(&image.layer_dirs, &bundle, RootfsMode::Copy).unwrap();
    let options = BundleOptions {
        id: "bench".to_owned(),
        command: None,
        env: Vec::new(),
        limits: Limits::default(),
        cgroup_parent: "shoal-bench".to_owned(),
        netns_path: None,
        seccomp: true,
        mounts: Vec::new(),
    };
    // The cgroup path is left out of the shared bundle: each runtime picks its own per id.
    let mut spec = runtime_spec(&image, &options).unwrap();
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(None);
    }
    spec.save(bundle.join("config.json")).unwrap();

    let mut rows: Vec<(String, Duration)> = Vec::new();
    let state = dir.path().join("state-libcontainer");
    fs::create_dir(&state).unwrap();
    let pid = std::process::id();
    rows.push((
        "libcontainer (in-process)".to_owned(),
        time_runs(runs, |run| {
            libcontainer_once(&bundle, &state, &format!("lc-{pid}-{run}"))
        }),
    ));
    for binary in ["runc", "crun"] {
        let state = dir.path().join(format!("state-{binary}"));
        if !binary_once(binary, &bundle, &state, &format!("{binary}-probe-{pid}")) {
            println!("{binary}: does not run here, skipped");
            continue;
        }
        rows.push((
            binary.to_owned(),
            time_runs(runs, |run| {
                assert!(binary_once(
                    binary,
                    &bundle,
                    &state,
                    &format!("{binary}-{pid}-{run}")
                ));
            }),
        ));
    }
    let mut settings = RuntimeSettings::new(&dir.path().join("runtime"));
    settings.zygote = ZygoteCommand::new(env!("CARGO_BIN_EXE_shoal-oci-zygote"), [""; 0]);
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    let config = |id: &str| ContainerConfig {
        id: id.to_owned(),
        image: image.clone(),
        command: None,
        env: Vec::new(),
        limits: Limits::default(),
        netns_path: None,
        rootfs_mode: RootfsMode::Auto,
        mounts: Vec::new(),
        annotations: Default::default(),
    };
    rows.push((
        "shoal LibcontainerRuntime (overlay rootfs, logs)".to_owned(),
        time_runs(runs, |run| {
            let id = format!("rt-{pid}-{run}");
            runtime.create(&config(&id)).unwrap();
            runtime.start(&id).unwrap();
            runtime.wait(&id, 10_000).unwrap().unwrap();
            runtime.delete(&id).unwrap();
        }),
    ));
    // The part of apply-to-running the runtime owns: until `start` returns.
    let mut create_start = Vec::with_capacity(runs);
    for run in 0..=runs {
        let id = format!("cs-{pid}-{run}");
        let started = Instant::now();
        runtime.create(&config(&id)).unwrap();
        runtime.start(&id).unwrap();
        if run > 0 {
            create_start.push(started.elapsed());
        }
        runtime.wait(&id, 10_000).unwrap().unwrap();
        runtime.delete(&id).unwrap();
    }
    rows.push((
        "shoal LibcontainerRuntime create+start only".to_owned(),
        median(create_start),
    ));

    let baseline = rows
        .iter()
        .find(|(name, _)| name == "runc")
        .map(|(_, median)| *median);
    println!("create+start+wait+delete of /bin/true, median of {runs} runs");
    println!("{:<50} {:>10} {:>12}", "runtime", "median ms", "vs runc");
    for (name, median) in &rows {
        let ratio = baseline
            .map(|baseline| format!("{:.2}x", median.as_secs_f64() / baseline.as_secs_f64()));
        println!(
            "{:<50} {:>10.2} {:>12}",
            name,
            median.as_secs_f64() * 1000.0,
            ratio.unwrap_or_else(|| "n/a".to_owned())
        );
    }
}
