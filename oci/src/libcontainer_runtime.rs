//! The real `Runtime`: containers run in-process through youki's libcontainer.
//!
//! Layout under the runtime's root directory:
//! - `state/<id>/`: libcontainer's own state (what `Container::load` reads);
//! - `containers/<id>/`: the bundle (`config.json`, `rootfs/`, overlay `upper/` and `work/`),
//!   `shoal.json` (how the rootfs was built), the output FIFOs, the logs and `exit.json`.
//!
//! Each container's cgroup is `/<cgroup_parent>/<id>`. A watcher thread per container waits
//! for its main process through a pidfd (so waits run in parallel and also work for adopted
//! containers that are not our children) and records the exit status.
//!
//! This process never clones: libcontainer's `build()` and `start()` run in the zygote
//! (`zygote`, `zygote_client`), a helper with one thread, so no lock another of our threads
//! holds can be copied into a container's init. Loading state, `kill` and `delete` neither
//! clone nor change the working directory, and run here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::bundle::{self, BundleOptions};
use crate::cgroup_sweep;
use crate::container_log;
use crate::layer_unpack::remove_any;
use crate::rootfs::{self, Rootfs, RootfsKind};
use crate::runtime::{
    AdoptionReport, ContainerConfig, ContainerState, ContainerStatus, ExecOutcome, ExitStatus,
    Runtime, RuntimeError,
};
use crate::zygote_client::{Zygote, ZygoteCommand, ZygoteError};
use crate::zygote_protocol::{Request, Response};

/// How long a watcher sleeps between checks of its stop flag.
const WATCH_POLL_MS: u16 = 100;
/// How long `stop` waits for the processes to go after SIGKILL.
const KILL_WAIT_MS: u64 = 10_000;
/// How long the zygote gets for one libcontainer create or start before the container is
/// reported as failed and removed, and the zygote killed and restarted.
pub const CREATE_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub root_dir: PathBuf,
    /// cgroup directory (relative to each hierarchy's root) that holds this node's containers.
    pub cgroup_parent: String,
    /// Each of stdout and stderr keeps at most twice this (current file plus one rotation).
    pub log_bytes_max: u64,
    pub seccomp: bool,
    /// How to start the zygote that makes libcontainer's clones; by default this binary
    /// run as `<binary> zygote` (see `ZygoteCommand::this_executable`).
    pub zygote: ZygoteCommand,
    /// Deadline for one create or start in the zygote (`CREATE_TIMEOUT_MS` by default).
    pub create_timeout_ms: u64,
}

impl RuntimeSettings {
    pub fn new(root_dir: &Path) -> Self {
        Self {
            root_dir: root_dir.to_owned(),
            cgroup_parent: "shoal".to_owned(),
            log_bytes_max: 8 * 1024 * 1024,
            seccomp: true,
            zygote: ZygoteCommand::this_executable(),
            create_timeout_ms: CREATE_TIMEOUT_MS,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContainerRecord {
    rootfs: Rootfs,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

struct Tracked {
    rootfs: Rootfs,
    annotations: BTreeMap<String, String>,
    pid: Option<i32>,
    started: AtomicBool,
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Tracked {
    fn exit(&self) -> Option<ExitStatus> {
        *self
            .exit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_exit(&self, status: ExitStatus, exit_path: &Path) {
        let mut exit = self
            .exit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if exit.is_none() {
            *exit = Some(status);
            if let Ok(json) = serde_json::to_vec(&status) {
                let _ = fs::write(exit_path, json);
            }
        }
        self.exited.notify_all();
    }

    fn wait(&self, timeout_ms: u64) -> Option<ExitStatus> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut exit = self
            .exit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while exit.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            exit = self
                .exited
                .wait_timeout(exit, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        *exit
    }

    fn status(&self) -> ContainerStatus {
        match self.exit() {
            Some(exit) => ContainerStatus::Stopped(exit),
            None if self.started.load(Ordering::SeqCst) => ContainerStatus::Running,
            None => ContainerStatus::Created,
        }
    }

    fn stop_threads(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let threads = std::mem::take(
            &mut *self
                .threads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for thread in threads {
            let _ = thread.join();
        }
    }
}

pub struct LibcontainerRuntime {
    settings: RuntimeSettings,
    containers: Mutex<HashMap<String, Arc<Tracked>>>,
    zygote: Zygote,
    /// A second zygote for `exec` (health check commands), started at the first one, so a
    /// slow check never holds a container's create or start back.
    exec_zygote: Mutex<Option<Arc<Zygote>>>,
}

/// What the exec zygote gets beyond a command's own timeout: the tenant's setup and the
/// kill at the timeout.
const EXEC_MARGIN_MS: u64 = 5_000;

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Collects the status of `pid` once it has ended: exact if it is our child, else unknown.
fn collect_status(pid: i32) -> ExitStatus {
    match waitpid(Pid::from_raw(pid), None) {
        Ok(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signal(signal as i32),
        _ => ExitStatus::Unknown,
    }
}

fn spawn_watcher(
    pid: i32,
    tracked: Arc<Tracked>,
    exit_path: PathBuf,
) -> io::Result<JoinHandle<()>> {
    let pidfd = match pidfd_open(pid) {
        Ok(pidfd) => Some(pidfd),
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => None,
        Err(error) => return Err(error),
    };
    std::thread::Builder::new()
        .name("shoal-watch".to_owned())
        .spawn(move || {
            if let Some(pidfd) = pidfd {
                loop {
                    if tracked.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut poll_fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut poll_fds, PollTimeout::from(WATCH_POLL_MS)) {
                        Ok(0) | Err(nix::Error::EINTR) => continue,
                        Ok(_) => break,
                        Err(error) => {
                            tracing::warn!(%error, pid, "pidfd poll failed");
                            return;
                        }
                    }
                }
            }
            tracked.record_exit(collect_status(pid), &exit_path);
        })
}

impl LibcontainerRuntime {
    /// Opens the runtime at `settings.root_dir` and adopts what a previous instance left:
    /// running containers are tracked again (not restarted), dead ones are reported for
    /// `delete`. Starts the zygote, and makes this process a child subreaper so that the
    /// containers it creates are this process's children.
    pub fn open(settings: RuntimeSettings) -> Result<(Self, AdoptionReport), RuntimeError> {
        for dir in [
            settings.root_dir.join("state"),
            settings.root_dir.join("containers"),
        ] {
            fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
                id: String::new(),
                what: "create",
                path: dir.clone(),
                source,
            })?;
        }
        let zygote = Zygote::start(settings.zygote.clone())
            .map_err(|error| Self::zygote_error("", "start the zygote", error))?;
        let runtime = Self {
            settings,
            containers: Mutex::new(HashMap::new()),
            zygote,
            exec_zygote: Mutex::new(None),
        };
        let report = runtime.adopt()?;
        Ok((runtime, report))
    }

    fn state_dir(&self) -> PathBuf {
        self.settings.root_dir.join("state")
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.settings.root_dir.join("containers").join(id)
    }

    /// Paths of the current stdout and stderr log files (older output is in `<path>.1`).
    pub fn log_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let dir = self.container_dir(id);
        (dir.join("stdout.log"), dir.join("stderr.log"))
    }

    /// The container's cgroup path under each hierarchy's root.
    pub fn cgroup_path(&self, id: &str) -> String {
        format!("{}/{}", self.settings.cgroup_parent, id)
    }

    /// The zygote's pid while one runs (for tests and diagnostics).
    pub fn zygote_pid(&self) -> Option<i32> {
        self.zygote.pid()
    }

    /// Sends `request` to the zygote within the create deadline.
    fn ask_zygote(
        &self,
        id: &str,
        action: &'static str,
        request: &Request,
    ) -> Result<Response, RuntimeError> {
        self.zygote
            .request(request, self.settings.create_timeout_ms)
            .map_err(|error| Self::zygote_error(id, action, error))
    }

    /// The exec zygote, started if it is not running yet.
    fn exec_zygote(&self, id: &str) -> Result<Arc<Zygote>, RuntimeError> {
        let mut slot = self
            .exec_zygote
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(zygote) = slot.as_ref() {
            return Ok(Arc::clone(zygote));
        }
        let zygote = Arc::new(
            Zygote::start(self.settings.zygote.clone())
                .map_err(|error| Self::zygote_error(id, "start the exec zygote", error))?,
        );
        *slot = Some(Arc::clone(&zygote));
        Ok(zygote)
    }

    fn zygote_error(id: &str, action: &'static str, error: ZygoteError) -> RuntimeError {
        RuntimeError::Libcontainer {
            id: id.to_owned(),
            action,
            message: format!("zygote: {error}"),
        }
    }

    fn tracked(&self, id: &str) -> Result<Arc<Tracked>, RuntimeError> {
        self.lock_containers()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })
    }

    fn lock_containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Tracked>>> {
        self.containers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn io_error(
        id: &str,
        what: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> RuntimeError {
        let id = id.to_owned();
        let path = path.to_owned();
        move |source| RuntimeError::Io {
            id,
            what,
            path,
            source,
        }
    }

    fn libcontainer_error(
        id: &str,
        action: &'static str,
    ) -> impl FnOnce(libcontainer::error::LibcontainerError) -> RuntimeError {
        let id = id.to_owned();
        move |error| RuntimeError::Libcontainer {
            id,
            action,
            message: error.to_string(),
        }
    }

    fn load(&self, id: &str) -> Result<Container, RuntimeError> {
        Container::load(self.state_dir().join(id)).map_err(Self::libcontainer_error(id, "load"))
    }

    /// Starts the log readers and the exit watcher for a container whose process exists.
    fn track(
        &self,
        id: &str,
        rootfs: Rootfs,
        annotations: BTreeMap<String, String>,
        pid: Option<i32>,
        started: bool,
        exit: Option<ExitStatus>,
    ) -> Result<(), RuntimeError> {
        let dir = self.container_dir(id);
        let tracked = Arc::new(Tracked {
            rootfs,
            annotations,
            pid,
            started: AtomicBool::new(started),
            exit: Mutex::new(exit),
            exited: Condvar::new(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Vec::new()),
        });
        if let (Some(pid), None) = (pid, exit) {
            let mut threads = Vec::new();
            for stream in ["stdout", "stderr"] {
                let fifo = dir.join(format!("{stream}.fifo"));
                let reader = container_log::open_reader_end(&fifo)
                    .map_err(Self::io_error(id, "open", &fifo))?;
                let log_path = dir.join(format!("{stream}.log"));
                threads.push(
                    container_log::spawn_reader(
                        reader,
                        log_path.clone(),
                        self.settings.log_bytes_max,
                        tracked.stop.clone(),
                    )
                    .map_err(Self::io_error(id, "log to", &log_path))?,
                );
            }
            threads.push(
                spawn_watcher(pid, tracked.clone(), dir.join("exit.json")).map_err(
                    Self::io_error(id, "watch", Path::new(&format!("/proc/{pid}"))),
                )?,
            );
            *tracked
                .threads
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = threads;
        }
        self.lock_containers().insert(id.to_owned(), tracked);
        Ok(())
    }

    fn adopt(&self) -> Result<AdoptionReport, RuntimeError> {
        let mut ids = BTreeSet::new();
        for dir in [self.state_dir(), self.settings.root_dir.join("containers")] {
            for entry in fs::read_dir(&dir).map_err(Self::io_error("", "read", &dir))? {
                let entry = entry.map_err(Self::io_error("", "read", &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if bundle::validate_id(&name).is_ok() {
                    ids.insert(name);
                }
            }
        }
        let mut report = AdoptionReport::default();
        for id in ids {
            let dir = self.container_dir(&id);
            let record = fs::read(dir.join("shoal.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ContainerRecord>(&bytes).ok())
                // Unknown: treat as an overlay, whose teardown also copes with a plain dir.
                .unwrap_or_else(|| ContainerRecord {
                    rootfs: Rootfs {
                        path: dir.join("rootfs"),
                        kind: RootfsKind::Overlay,
                    },
                    annotations: BTreeMap::new(),
                });
            let (rootfs, annotations) = (record.rootfs, record.annotations);
            let running_pid = self.load(&id).ok().and_then(|mut container| {
                container.refresh_status().ok()?;
                let running = matches!(
                    container.status(),
                    libcontainer::container::ContainerStatus::Running
                        | libcontainer::container::ContainerStatus::Paused
                );
                if running {
                    container.pid().map(Pid::as_raw)
                } else {
                    None
                }
            });
            match running_pid {
                Some(pid) => {
                    self.track(&id, rootfs, annotations, Some(pid), true, None)?;
                    report.running.push(id);
                }
                None => {
                    let exit = fs::read(dir.join("exit.json"))
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                        .unwrap_or(ExitStatus::Unknown);
                    self.track(&id, rootfs, annotations, None, true, Some(exit))?;
                    report.dead.push(id);
                }
            }
        }
        Ok(report)
    }

    fn create_inner(
        &self,
        config: &ContainerConfig,
        dir: &Path,
    ) -> Result<(Rootfs, i32), (Option<Rootfs>, RuntimeError)> {
        let id = config.id.as_str();
        let options = BundleOptions {
            id: id.to_owned(),
            command: config.command.clone(),
            env: config.env.clone(),
            limits: config.limits.clone(),
            cgroup_parent: self.settings.cgroup_parent.clone(),
            netns_path: config.netns_path.clone(),
            seccomp: self.settings.seccomp,
            mounts: config.mounts.clone(),
        };
        let spec = bundle::runtime_spec(&config.image, &options).map_err(|source| {
            (
                None,
                RuntimeError::Bundle {
                    id: id.to_owned(),
                    source,
                },
            )
        })?;
        let rootfs = rootfs::build_rootfs(&config.image.layer_dirs, dir, config.rootfs_mode)
            .map_err(|source| {
                (
                    None,
                    RuntimeError::Rootfs {
                        id: id.to_owned(),
                        source,
                    },
                )
            })?;
        let with_rootfs = |error| (Some(rootfs.clone()), error);
        let record = serde_json::to_vec(&ContainerRecord {
            rootfs: rootfs.clone(),
            annotations: config.annotations.clone(),
        })
        .expect("record serialises");
        let record_path = dir.join("shoal.json");
        fs::write(&record_path, record)
            .map_err(|source| with_rootfs(Self::io_error(id, "write", &record_path)(source)))?;
        let config_path = dir.join("config.json");
        spec.save(&config_path).map_err(|error| {
            with_rootfs(RuntimeError::Io {
                id: id.to_owned(),
                what: "write",
                path: config_path.clone(),
                source: io::Error::other(error.to_string()),
            })
        })?;
        // The zygote's worker opens the container's ends; this process the reader ends.
        let (stdout_fifo, stderr_fifo) = (dir.join("stdout.fifo"), dir.join("stderr.fifo"));
        for fifo in [&stdout_fifo, &stderr_fifo] {
            container_log::make_fifo(fifo)
                .map_err(|source| with_rootfs(Self::io_error(id, "make fifo", fifo)(source)))?;
        }
        let request = Request::Create {
            id: id.to_owned(),
            state_dir: self.state_dir(),
            bundle_dir: dir.to_owned(),
            stdout_fifo,
            stderr_fifo,
        };
        match self
            .ask_zygote(id, "create", &request)
            .map_err(with_rootfs)?
        {
            Response::Created { pid } => Ok((rootfs, pid)),
            other => Err(with_rootfs(Self::unexpected(id, "create", other))),
        }
    }

    /// The error for a zygote answer that is not the success `action` expects.
    fn unexpected(id: &str, action: &'static str, response: Response) -> RuntimeError {
        match response {
            Response::Failed { step, message } => RuntimeError::Libcontainer {
                id: id.to_owned(),
                action: step.as_str(),
                message,
            },
            other => RuntimeError::Libcontainer {
                id: id.to_owned(),
                action,
                message: format!("the zygote answered {other:?}"),
            },
        }
    }

    /// Removes the libcontainer state (and cgroup), the rootfs and the container directory.
    fn remove_all(&self, id: &str, rootfs: Option<&Rootfs>) -> Result<(), RuntimeError> {
        if let Ok(mut container) = self.load(id) {
            container
                .delete(true)
                .map_err(Self::libcontainer_error(id, "delete"))?;
        }
        let state = self.state_dir().join(id);
        remove_any(&state).map_err(Self::io_error(id, "remove", &state))?;
        if let Some(rootfs) = rootfs {
            rootfs::remove_rootfs(rootfs).map_err(|source| RuntimeError::Rootfs {
                id: id.to_owned(),
                source,
            })?;
        }
        let dir = self.container_dir(id);
        remove_any(&dir).map_err(Self::io_error(id, "remove", &dir))
    }

    fn signal(&self, id: &str, signal: Signal, all: bool) -> Result<(), RuntimeError> {
        let mut container = self.load(id)?;
        container
            .kill(signal, all)
            .map_err(Self::libcontainer_error(id, "kill"))
    }
}

impl Runtime for LibcontainerRuntime {
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        let id = config.id.as_str();
        bundle::validate_id(id).map_err(|source| RuntimeError::Bundle {
            id: id.to_owned(),
            source,
        })?;
        let dir = self.container_dir(id);
        // Creating the directory is the atomic claim on the id.
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
            }
            Err(error) => return Err(Self::io_error(id, "create", &dir)(error)),
        }
        match self.create_inner(config, &dir) {
            Ok((rootfs, pid)) => self.track(
                id,
                rootfs,
                config.annotations.clone(),
                Some(pid),
                false,
                None,
            ),
            Err((rootfs, error)) => {
                // A create that failed half-way (or never answered) may have left processes
                // that libcontainer's state does not name: kill whatever is in the cgroup.
                let cgroup = self.cgroup_path(id);
                if let Err(cleanup) =
                    cgroup_sweep::sweep(Path::new(cgroup_sweep::CGROUP_ROOT), &cgroup)
                {
                    tracing::warn!(container = %id, %cleanup, "cgroup sweep after failed create");
                }
                if let Err(cleanup) = self.remove_all(id, rootfs.as_ref()) {
                    tracing::warn!(container = %id, %cleanup, "cleanup after failed create");
                }
                Err(error)
            }
        }
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let tracked = self.tracked(id)?;
        let status = tracked.status();
        if status != ContainerStatus::Created {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "start",
                status,
            });
        }
        let request = Request::Start {
            id: id.to_owned(),
            state_dir: self.state_dir(),
        };
        match self.ask_zygote(id, "start", &request)? {
            Response::Started => {
                tracked.started.store(true, Ordering::SeqCst);
                Ok(())
            }
            other => Err(Self::unexpected(id, "start", other)),
        }
    }

    fn stop(&self, id: &str, grace_ms: u64) -> Result<ExitStatus, RuntimeError> {
        let tracked = self.tracked(id)?;
        if let Some(exit) = tracked.exit() {
            return Ok(exit);
        }
        if tracked.status() == ContainerStatus::Running
            && let Err(error) = self.signal(id, Signal::SIGTERM, false)
            && tracked.wait(0).is_none()
        {
            return Err(error);
        }
        if let Some(exit) = tracked.wait(grace_ms) {
            return Ok(exit);
        }
        if let Err(error) = self.signal(id, Signal::SIGKILL, true)
            && tracked.wait(0).is_none()
        {
            return Err(error);
        }
        tracked
            .wait(KILL_WAIT_MS)
            .ok_or_else(|| RuntimeError::Libcontainer {
                id: id.to_owned(),
                action: "kill",
                message: format!("still running {KILL_WAIT_MS} ms after SIGKILL"),
            })
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let tracked = self.tracked(id)?;
        if tracked.exit().is_none() && tracked.pid.is_some() {
            self.stop(id, 0)?;
        }
        tracked.stop_threads();
        self.remove_all(id, Some(&tracked.rootfs))?;
        self.lock_containers().remove(id);
        Ok(())
    }

    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let tracked = self.tracked(id)?;
        let status = tracked.status();
        Ok(ContainerState {
            id: id.to_owned(),
            status,
            pid: if matches!(status, ContainerStatus::Stopped(_)) {
                None
            } else {
                tracked.pid
            },
            annotations: tracked.annotations.clone(),
        })
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout_ms: u64,
    ) -> Result<ExecOutcome, RuntimeError> {
        let status = self.tracked(id)?.status();
        if status != ContainerStatus::Running {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "exec in",
                status,
            });
        }
        let request = Request::Exec {
            id: id.to_owned(),
            state_dir: self.state_dir(),
            args: args.to_vec(),
            timeout_ms,
        };
        let answer = self
            .exec_zygote(id)?
            .request(&request, timeout_ms.saturating_add(EXEC_MARGIN_MS))
            .map_err(|error| Self::zygote_error(id, "exec in", error))?;
        match answer {
            Response::Ran { exit } => Ok(ExecOutcome::Exited(exit)),
            Response::TimedOut => Ok(ExecOutcome::TimedOut),
            other => Err(Self::unexpected(id, "exec in", other)),
        }
    }

    fn wait(&self, id: &str, timeout_ms: u64) -> Result<Option<ExitStatus>, RuntimeError> {
        Ok(self.tracked(id)?.wait(timeout_ms))
    }

    fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock_containers().keys().cloned().collect();
        ids.sort();
        ids
    }
}

impl Drop for LibcontainerRuntime {
    /// Stops this instance's threads; the containers keep running, to be adopted by the
    /// next instance.
    fn drop(&mut self) {
        let containers: Vec<Arc<Tracked>> = self.lock_containers().values().cloned().collect();
        for tracked in containers {
            tracked.stop_threads();
        }
    }
}
