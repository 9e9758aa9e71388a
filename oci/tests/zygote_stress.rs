//! Stress, as root: create/start/wait/delete cycles while other threads of this process
//! allocate, log through a tracing subscriber and spawn processes flat out.
//!
//! When libcontainer cloned a container's init from a thread of this process, a lock that
//! another thread held at that instant (the allocator's, the log writer's, Rust's
//! environment lock during `Command::spawn`) stayed locked in the init, and the cycle hung
//! forever (at the first cycle, in the run recorded when the zygote came in). With the
//! clones in the single-threaded zygote, every cycle must finish, each within
//! `CYCLE_TIMEOUT_MS`. `SHOAL_ZYGOTE_STRESS_CYCLES` sets the number of cycles:
//! `CYCLES_DEFAULT` keeps `cargo test` short; the 1,000 take two to four minutes
//! in a debug build on two busy cores.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shoal_oci::{
    ContainerConfig, ExitStatus, ImageStore, LibcontainerRuntime, Limits, RootfsMode, Runtime,
    RuntimeSettings,
};

const CYCLES_DEFAULT: usize = 250;
/// A cycle normally takes tens of milliseconds; one that takes this long has hung.
const CYCLE_TIMEOUT_MS: u64 = 60_000;
/// Threads per kind of load (allocating, logging, spawning).
const LOAD_THREADS: usize = 2;
/// The in-memory log is emptied when it reaches this size.
const LOG_BYTES_MAX: usize = 1 << 20;

/// A log writer behind one lock, taken on every line: the lock a clone must not inherit.
#[derive(Clone)]
struct SharedLog(Arc<Mutex<Vec<u8>>>);

impl Write for SharedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut log = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if log.len() + bytes.len() > LOG_BYTES_MAX {
            log.clear();
        }
        log.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    allocations: AtomicU64,
    log_lines: AtomicU64,
    spawns: AtomicU64,
}

fn allocate(load: &Load) {
    let mut round = 0usize;
    while !load.stop.load(Ordering::Relaxed) {
        // Small and large blocks, so both the arenas and mmap are busy.
        let blocks: Vec<Vec<u8>> = (0..64)
            .map(|index| vec![index as u8; 1 + (round * 7919 + index * 977) % (256 * 1024)])
            .collect();
        std::hint::black_box(&blocks);
        drop(blocks);
        round += 1;
        load.allocations.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_logs(load: &Load) {
    let mut line = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        tracing::info!(line, thread = ?std::thread::current().id(), "stress log line");
        line += 1;
        load.log_lines.fetch_add(1, Ordering::Relaxed);
    }
}

fn spawn_processes(load: &Load) {
    while !load.stop.load(Ordering::Relaxed) {
        // `Command::spawn` holds the environment lock while it forks; `env::var` takes it.
        let status = std::process::Command::new("/bin/true").status();
        assert!(status.is_ok_and(|status| status.success()));
        std::hint::black_box(std::env::var("PATH").ok());
        load.spawns.fetch_add(1, Ordering::Relaxed);
    }
}

fn cycles() -> usize {
    std::env::var("SHOAL_ZYGOTE_STRESS_CYCLES")
        .ok()
        .and_then(|cycles| cycles.parse().ok())
        .unwrap_or(CYCLES_DEFAULT)
}

fn threads_of(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn create_start_delete_cycles_never_hang_while_threads_allocate_log_and_spawn() {
    if !require_root() {
        return;
    }
    let log = SharedLog(Arc::new(Mutex::new(Vec::new())));
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || log.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_image(&dir.path().join("image"), &["/bin/true"]);
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout.path, None)
        .unwrap();
    let mut settings = RuntimeSettings::new(&dir.path().join("runtime"));
    settings.cgroup_parent = "shoal-test".to_owned();
    settings.zygote = zygote_command();
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    let runtime = Arc::new(runtime);
    let zygote = runtime.zygote_pid().unwrap();

    let load = Arc::new(Load::default());
    let mut workers = Vec::new();
    for _ in 0..LOAD_THREADS {
        for work in [allocate, write_logs, spawn_processes] {
            let load = load.clone();
            workers.push(std::thread::spawn(move || work(&load)));
        }
    }

    // The cycles run on their own thread, so a hung one is seen here instead of hanging
    // the test.
    let cycles = cycles();
    let (progress, progress_seen) = mpsc::channel::<Result<Duration, String>>();
    let cycling = runtime.clone();
    std::thread::spawn(move || {
        for cycle in 0..cycles {
            let id = format!("stress-{}-{cycle}", std::process::id());
            let config = ContainerConfig {
                id: id.clone(),
                image: image.clone(),
                command: None,
                env: Vec::new(),
                limits: Limits::default(),
                netns_path: None,
                rootfs_mode: RootfsMode::Auto,
                mounts: Vec::new(),
                annotations: Default::default(),
            };
            let started = Instant::now();
            let result = cycling
                .create(&config)
                .and_then(|()| cycling.start(&id))
                .and_then(|()| cycling.wait(&id, CYCLE_TIMEOUT_MS))
                .map_err(|error| error.to_string())
                .and_then(|exit| match exit {
                    Some(ExitStatus::Code(0)) => Ok(()),
                    other => Err(format!("ended {other:?}")),
                })
                .and_then(|()| cycling.delete(&id).map_err(|error| error.to_string()));
            let failed = result.is_err();
            if progress.send(result.map(|()| started.elapsed())).is_err() || failed {
                return;
            }
        }
    });

    let started = Instant::now();
    let mut durations = Vec::with_capacity(cycles);
    for cycle in 0..cycles {
        match progress_seen.recv_timeout(Duration::from_millis(CYCLE_TIMEOUT_MS)) {
            Ok(Ok(duration)) => durations.push(duration),
            Ok(Err(error)) => panic!("cycle {cycle} failed: {error}"),
            Err(RecvTimeoutError::Timeout) => {
                panic!("cycle {cycle} hung: no end after {CYCLE_TIMEOUT_MS} ms")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("cycle {cycle}: the cycling thread died"),
        }
        if cycle % 100 == 0 {
            assert_eq!(threads_of(zygote), 1, "the zygote has one thread");
        }
    }
    let total = started.elapsed();
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(runtime.zygote_pid(), Some(zygote), "no zygote was replaced");
    assert!(runtime.list().is_empty());

    let (allocations, log_lines, spawns) = (
        load.allocations.load(Ordering::Relaxed),
        load.log_lines.load(Ordering::Relaxed),
        load.spawns.load(Ordering::Relaxed),
    );
    // The load ran alongside the whole time, or the test proves nothing.
    assert!(
        allocations > cycles as u64 && log_lines > cycles as u64 && spawns > cycles as u64,
        "allocations {allocations}, log lines {log_lines}, spawns {spawns}"
    );
    durations.sort();
    let at = |fraction: f64| durations[((durations.len() - 1) as f64 * fraction) as usize];
    eprintln!(
        "{cycles} cycles in {total:.1?}: median {:.1?}, p99 {:.1?}, max {:.1?}; \
         alongside {allocations} allocation rounds, {log_lines} log lines, {spawns} spawns",
        at(0.5),
        at(0.99),
        at(1.0),
    );
}
