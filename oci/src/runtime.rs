//! The container runtime seam: the `Runtime` trait the daemon drives, with the types it
//! speaks. `LibcontainerRuntime` is the real one; the daemon's simulator supplies a fake.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::bundle::{Limits, Mount};
use crate::image::PreparedImage;
use crate::rootfs::RootfsMode;

/// How a container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    /// The process ended while this daemon was not its parent (an adopted container), so
    /// its status could not be collected.
    Unknown,
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

/// How a command run inside a container (`Runtime::exec`) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(ExitStatus),
    /// Still running at its timeout: killed.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, its process waiting for `start`.
    Created,
    Running,
    Stopped(ExitStatus),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// The main process as seen from the host, while it exists.
    pub pid: Option<i32>,
    /// What the caller wrote on the container at create (`ContainerConfig::annotations`),
    /// kept across daemon restarts.
    pub annotations: BTreeMap<String, String>,
}

/// Everything needed to create one container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    pub id: String,
    pub image: PreparedImage,
    /// Replaces the image's entrypoint and cmd when given.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE`, overriding the image's variables.
    pub env: Vec<String>,
    pub limits: Limits,
    /// Join this network namespace (made by the daemon, with its veth) instead of a new one.
    pub netns_path: Option<PathBuf>,
    pub rootfs_mode: RootfsMode,
    /// Bind mounts and tmpfs mounts, made in order on top of the root filesystem.
    pub mounts: Vec<Mount>,
    /// Notes the caller keeps on the container (as OCI annotations are), returned by
    /// `Runtime::state` for as long as the container exists, also after an adoption.
    pub annotations: BTreeMap<String, String>,
}

/// What was found in the state directory when a runtime was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdoptionReport {
    /// Still running: now tracked again, not restarted.
    pub running: Vec<String>,
    /// Gone (or never started): to be cleaned up with `delete`, then restarted per policy.
    pub dead: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("container {id}: already exists")]
    AlreadyExists { id: String },
    #[error("container {id}: not found")]
    NotFound { id: String },
    #[error("container {id}: cannot {action} while {status:?}")]
    WrongState {
        id: String,
        action: &'static str,
        status: ContainerStatus,
    },
    #[error("container {id}: {source}")]
    Bundle {
        id: String,
        #[source]
        source: crate::bundle::BundleError,
    },
    #[error("container {id}: {source}")]
    Rootfs {
        id: String,
        #[source]
        source: crate::rootfs::RootfsError,
    },
    #[error("container {id}: libcontainer {action}: {message}")]
    Libcontainer {
        id: String,
        action: &'static str,
        message: String,
    },
    #[error("container {id}: {what} {path}: {source}")]
    Io {
        id: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A container runtime. Every call names the container by its id.
pub trait Runtime: Send + Sync {
    /// Builds the rootfs and bundle and creates the container; its process waits for `start`.
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError>;
    fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Sends SIGTERM, waits up to `grace_ms`, then SIGKILLs every process of the container.
    /// Returns how it ended; stopping a stopped container returns its recorded status.
    fn stop(&self, id: &str, grace_ms: u64) -> Result<ExitStatus, RuntimeError>;
    /// Removes the container: processes, cgroup, rootfs mount, bundle and logs.
    fn delete(&self, id: &str) -> Result<(), RuntimeError>;
    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError>;
    /// Runs `args` inside the running container (its namespaces, root, cgroup, user and
    /// environment) with no input and its output discarded; kills it `timeout_ms` after the
    /// call began. For health checks: calls may run one at a time.
    fn exec(&self, id: &str, args: &[String], timeout_ms: u64)
    -> Result<ExecOutcome, RuntimeError>;
    /// Waits up to `timeout_ms` for the container to end; `None` if it is still running.
    fn wait(&self, id: &str, timeout_ms: u64) -> Result<Option<ExitStatus>, RuntimeError>;
    /// The ids of all containers this runtime knows.
    fn list(&self) -> Vec<String>;
}
