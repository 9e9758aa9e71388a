//! Benchmark: create + start + wait + delete of `/bin/true` on one bundle, through
//! libcontainer in-process versus the `runc` and `crun` binaries, medians over N runs
//! (`SHOAL_BENCH_RUNS`, default 30), reported as ratios against runc measured in the same run.
//! Also times the whole `LibcontainerRuntime` path (overlay rootfs, FIFO logs, watcher).
//! Needs root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::waitpid;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use shoal_oci::bundle::{BundleOptions, Limits, runtime_spec};
use shoal_oci::rootfs::{RootfsMode, build_rootfs};
use shoal_oci::{ContainerConfig, ImageStore, LibcontainerRuntime, Runtime, RuntimeSettings};

fn tar_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A one-layer busybox OCI layout, built here from /bin/busybox.
fn busybox_layout(dir: &Path) -> PathBuf {
    let mut builder = tar::Builder::new(Vec::new());
    let busybox = fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut header = tar_header(tar::EntryType::Regular, busybox.len() as u64, 0o755);
    builder
        .append_data(&mut header, "bin/busybox", &busybox[..])
        .unwrap();
    for applet in ["true", "sh"] {
        let mut header = tar_header(tar::EntryType::Symlink, 0, 0o777);
        builder
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    for directory in ["proc/", "dev/", "sys/", "tmp/"] {
        let mut header = tar_header(tar::EntryType::Directory, 0, 0o755);
        builder
            .append_data(&mut header, directory, &[][..])
            .unwrap();
    }
    let layer = builder.into_inner().unwrap();
    let layer_hex = sha256(&layer);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    fs::write(blobs.join(&layer_hex), &layer).unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
    }))
    .unwrap();
    let config_hex = sha256(&config);
    fs::write(blobs.join(&config_hex), &config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_hex}"), "size": layer.len() }],
    }))
    .unwrap();
    let manifest_hex = sha256(&manifest);
    fs::write(blobs.join(&manifest_hex), &manifest).unwrap();
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({ "schemaVersion": 2, "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_hex}"), "size": manifest.len() }] })).unwrap(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    dir.to_owned()
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
    let (runtime, _) =
        LibcontainerRuntime::open(RuntimeSettings::new(&dir.path().join("runtime"))).unwrap();
    rows.push((
        "shoal LibcontainerRuntime (overlay rootfs, logs)".to_owned(),
        time_runs(runs, |run| {
            let id = format!("rt-{pid}-{run}");
            let config = ContainerConfig {
                id: id.clone(),
                image: image.clone(),
                command: None,
                env: Vec::new(),
                limits: Limits::default(),
                netns_path: None,
                rootfs_mode: RootfsMode::Auto,
            };
            runtime.create(&config).unwrap();
            runtime.start(&id).unwrap();
            runtime.wait(&id, 10_000).unwrap().unwrap();
            runtime.delete(&id).unwrap();
        }),
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
