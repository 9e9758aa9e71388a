//! The reconcile loop: makes this node's containers match the placement. Every
//! `containers.reconcile_interval_ms` and after every local change it computes the placement
//! (`scheduler::place`) from the replicated state and then, for this node only:
//! - removes its containers that are no longer placed here (service removed, replicas
//!   reduced, spec replaced, surplus after a partition healed): stop with the grace period,
//!   delete, `remove_container`, `release_ip`;
//! - restarts exited containers per the service's restart policy (`RestartTracker`);
//! - starts what is missing: image prepared (verified) first, then the container recorded
//!   (`allocate_ip` when the node has a subnet, `add_container`), then created and started
//!   through the `Runtime`; a failure undoes the record. A bad image is an error on that
//!   service (in `shoal ps` and `shoal status`), never a crash;
//! - sets its own resource PN-counters to what its recorded containers reserve under the
//!   current specs ("counters follow records"), so a crash between two writes is repaired by
//!   the next pass.
//!
//! The record is written before the container starts: a daemon that dies in between finds
//! the record without a container and starts it; a container without a record (an orphan) is
//! stopped and deleted.
//!
//! All runtime calls run on the blocking thread of one pass; stops of one pass run in
//! parallel (each waits up to the grace period). Starts per pass are bounded
//! (`STARTS_PER_PASS_MAX`) and so is the number of containers per node
//! (`scheduler::CONTAINERS_PER_NODE_MAX`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_crdt::{
    ContainerId, ContainerRecord, NodeId, Resource, Resources, ServiceName, ServiceSpec, Timestamp,
};
use shoal_oci::network::ContainerNetwork;
use shoal_oci::{
    ContainerConfig, ContainerStatus, Digest, ExitStatus, ImageStore, Limits, PreparedImage,
    RestartDecision, RestartPolicy, RestartTracker, RootfsMode, Runtime, RuntimeError,
};

use crate::node::{Node, NodeError};
use crate::scheduler::{self, CONTAINERS_PER_NODE_MAX, NodeInput, Placement, ServiceInput};

/// New containers started in one pass; the rest wait for the next pass.
pub const STARTS_PER_PASS_MAX: usize = 8;
/// Consecutive restarts of an `on-failure` container before it is left stopped.
pub const ON_FAILURE_RESTARTS_MAX: u32 = 10;
/// Largest piece of one log file returned by one `logs` call.
pub const LOG_CHUNK_BYTES_MAX: u64 = 256 * 1024;
/// Longest service-name prefix of a container id (ids are at most 64 bytes).
const ID_SERVICE_BYTES_MAX: usize = 48;

/// Why the reconciler could not start or a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("image cache {path}: {message}")]
    ImageCache { path: PathBuf, message: String },
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("container {target}: not found on this node or in the cluster state")]
    UnknownTarget { target: String },
    #[error("container {container} runs on node {node}; run `shoal logs` on that node")]
    OnOtherNode { container: String, node: NodeId },
    #[error("service {service} has no container on this node; its containers run on {nodes}")]
    ServiceElsewhere { service: String, nodes: String },
    #[error("log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where log files are, for `logs` (the runtime's layout).
pub type LogPaths = Arc<dyn Fn(&str) -> (PathBuf, PathBuf) + Send + Sync>;

/// What the loop needs besides the node and the runtime.
#[derive(Clone)]
pub struct ReconcileSettings {
    pub image_cache_dir: PathBuf,
    pub interval_ms: u64,
    pub stop_grace_ms: u64,
    /// After startup, placement waits for a first successful sync with a peer, or this long
    /// (`sync.down_after_ms`): a restarted node's stored view says every peer is silent, and
    /// placing on it would start replicas only to stop them again.
    pub startup_grace_ms: u64,
}

/// A container as `shoal ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub service: String,
    pub node: String,
    /// `running`, `created`, `exited(<code>)`, `killed(<signal>)`, `exited(unknown)`,
    /// `starting` (recorded, not yet started) on this node; `recorded` for other live nodes
    /// (this node knows only the OR-Set); `node-down` when that node's heartbeat is silent.
    pub state: String,
    pub ip: Option<String>,
    /// Unix milliseconds when this node last started it (this node's containers only).
    pub since_unix_ms: Option<u64>,
    pub pid: Option<i32>,
    pub restarts: u32,
}

/// `shoal ps`: every container in the cluster state plus this node's problems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsView {
    pub node: String,
    pub containers: Vec<ContainerView>,
    /// service -> why this node could not run it (bad image, no capacity, ...).
    pub errors: BTreeMap<String, String>,
    /// service -> replicas no live node has room for (the placement as this node sees it).
    pub unplaced: BTreeMap<String, u32>,
    /// node -> what its PN-counters say it reserves.
    pub usage: BTreeMap<String, Usage>,
}

/// One node's resource PN-counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub containers: i64,
}

/// One container's new log output since the offsets the caller gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub container: String,
    pub stdout: String,
    pub stderr: String,
    /// Offsets to pass next time (for `logs -f`).
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub running: bool,
}

/// Restart bookkeeping of one of this node's containers.
struct Local {
    tracker: RestartTracker,
    /// When it may be started again, once the policy decided.
    restart_at_ms: Option<u64>,
    gave_up: bool,
    /// The exit already handed to the tracker (so one exit is counted once).
    exit_seen: bool,
    since_unix_ms: u64,
    /// The spec it was started from, replicas left out: a new spec version that only
    /// changes the replica count does not replace it.
    started_spec: Option<ServiceSpec>,
}

fn without_replicas(spec: &ServiceSpec) -> ServiceSpec {
    ServiceSpec {
        replicas: 0,
        ..spec.clone()
    }
}

#[derive(Default)]
struct Shared {
    locals: BTreeMap<String, Local>,
    errors: BTreeMap<ServiceName, String>,
    /// When a start of the service last failed: the next try waits `interval_ms`, so a
    /// failure (whose undo is a write, which triggers a pass) cannot spin.
    failed_at_ms: BTreeMap<ServiceName, u64>,
    unplaced: BTreeMap<ServiceName, u32>,
}

/// The reconcile loop's state; shared with the API for `ps` and `logs`.
pub struct Reconciler {
    node: Arc<Node>,
    runtime: Arc<dyn Runtime>,
    /// The node's bridge and container namespaces, when it has a subnet.
    network: Option<Arc<dyn ContainerNetwork>>,
    log_paths: LogPaths,
    images: ImageStore,
    settings: ReconcileSettings,
    shared: Mutex<Shared>,
    stopping: AtomicBool,
    epoch: Instant,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn restart_policy(policy: shoal_crdt::RestartPolicy) -> RestartPolicy {
    match policy {
        shoal_crdt::RestartPolicy::Never => RestartPolicy::Never,
        shoal_crdt::RestartPolicy::OnFailure => RestartPolicy::OnFailure {
            restarts_max: ON_FAILURE_RESTARTS_MAX,
        },
        shoal_crdt::RestartPolicy::Always => RestartPolicy::Always,
    }
}

fn describe(status: ContainerStatus) -> String {
    match status {
        ContainerStatus::Created => "created".to_string(),
        ContainerStatus::Running => "running".to_string(),
        ContainerStatus::Stopped(ExitStatus::Code(code)) => format!("exited({code})"),
        ContainerStatus::Stopped(ExitStatus::Signal(signal)) => format!("killed({signal})"),
        ContainerStatus::Stopped(ExitStatus::Unknown) => "exited(unknown)".to_string(),
    }
}

/// A fresh container id: the service name (shortened) and 8 random hex digits.
fn new_container_id(service: &ServiceName) -> ContainerId {
    let name = service.as_str();
    let mut cut = name.len().min(ID_SERVICE_BYTES_MAX);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = name[..cut].trim_end_matches('-');
    let suffix: u32 = rand::random();
    format!("{prefix}-{suffix:08x}")
        .parse()
        .expect("service names are valid container id prefixes")
}

/// What one pass saw of this node's share.
struct Snapshot {
    me: NodeId,
    services: BTreeMap<ServiceName, (ServiceSpec, Timestamp)>,
    placement: Placement,
    own: Vec<ContainerRecord>,
}

impl Reconciler {
    pub fn new(
        node: Arc<Node>,
        runtime: Arc<dyn Runtime>,
        log_paths: LogPaths,
        network: Option<Arc<dyn ContainerNetwork>>,
        settings: ReconcileSettings,
    ) -> Result<Reconciler, ReconcileError> {
        let images = ImageStore::open(&settings.image_cache_dir).map_err(|error| {
            ReconcileError::ImageCache {
                path: settings.image_cache_dir.clone(),
                message: error.to_string(),
            }
        })?;
        Ok(Reconciler {
            node,
            runtime,
            network,
            log_paths,
            images,
            settings,
            shared: Mutex::new(Shared::default()),
            stopping: AtomicBool::new(false),
            epoch: Instant::now(),
        })
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Deletes containers the runtime found dead at startup; their records stay, so the next
    /// pass restarts them per policy (or removes them if no longer placed here).
    pub fn clean_dead(&self, dead: &[String]) {
        for id in dead {
            match self.runtime.delete(id) {
                Ok(()) => {
                    tracing::info!(container = %id, "removed a container that died while the daemon was down")
                }
                Err(error) => {
                    tracing::warn!(container = %id, %error, "cannot remove a dead container")
                }
            }
        }
    }

    /// Makes the next pass return early (shutdown); running containers are left running.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> Snapshot {
        let me = self.node.node_id().clone();
        let nodes: Vec<NodeInput> = self
            .node
            .live_nodes()
            .into_iter()
            .map(|(id, capacity)| NodeInput { id, capacity })
            .collect();
        let (services, own) = self.node.read_state(|state| {
            let services: BTreeMap<ServiceName, (ServiceSpec, Timestamp)> = state
                .services()
                .map(|(name, spec, version)| (name.clone(), (spec.clone(), version)))
                .collect();
            let own: Vec<ContainerRecord> = state
                .containers()
                .filter(|record| record.node == me)
                .cloned()
                .collect();
            (services, own)
        });
        let inputs: Vec<ServiceInput> = services
            .iter()
            .map(|(name, (spec, _))| ServiceInput {
                name: name.clone(),
                replicas: spec.replicas,
                resources: spec.resources,
            })
            .collect();
        let placement = scheduler::place(&inputs, &nodes);
        Snapshot {
            me,
            services,
            placement,
            own,
        }
    }

    /// One pass: compare the placement with what runs here and fix the difference.
    pub fn reconcile_once(&self) {
        let snapshot = self.snapshot();
        self.shared().unplaced = snapshot.placement.unplaced.clone();
        let desired = snapshot.placement.for_node(&snapshot.me);

        let recorded: BTreeSet<String> = snapshot
            .own
            .iter()
            .map(|r| r.id.as_str().to_string())
            .collect();
        let orphans: Vec<String> = self
            .runtime
            .list()
            .into_iter()
            .filter(|id| !recorded.contains(id))
            .collect();
        let mut by_service: BTreeMap<ServiceName, Vec<ContainerRecord>> = BTreeMap::new();
        for record in snapshot.own {
            by_service
                .entry(record.service.clone())
                .or_default()
                .push(record);
        }

        // Decide what to keep and what to remove.
        let mut surplus: Vec<ContainerRecord> = Vec::new();
        let mut kept: BTreeMap<ServiceName, Vec<ContainerRecord>> = BTreeMap::new();
        for (service, mut records) in by_service {
            let current = snapshot.services.get(&service);
            let want = desired.get(&service).copied().unwrap_or(0) as usize;
            let outdated = |record: &ContainerRecord| -> bool {
                let Some((spec, version)) = current else {
                    return true;
                };
                if record.spec_version == *version {
                    return false;
                }
                let shared = self.shared();
                let started = shared
                    .locals
                    .get(record.id.as_str())
                    .and_then(|local| local.started_spec.as_ref());
                started.is_none_or(|started| *started != without_replicas(spec))
            };
            // Current-spec containers first, running before stopped, then by id.
            records.sort_by_key(|record| {
                let outdated = outdated(record);
                let running = matches!(
                    self.runtime.state(record.id.as_str()).map(|s| s.status),
                    Ok(ContainerStatus::Running)
                );
                (outdated, !running, record.id.clone())
            });
            for (index, record) in records.into_iter().enumerate() {
                if index < want && !outdated(&record) {
                    kept.entry(service.clone()).or_default().push(record);
                } else {
                    surplus.push(record);
                }
            }
        }

        self.remove_all(&surplus, &orphans);
        if self.stopping() {
            return;
        }
        self.sync_network(&recorded);
        for (service, records) in &kept {
            let Some((spec, _)) = snapshot.services.get(service) else {
                continue;
            };
            for record in records {
                if self.stopping() {
                    return;
                }
                self.restart_if_due(record, spec);
            }
        }
        let mut starts = 0usize;
        for (service, want) in &desired {
            let Some((spec, version)) = snapshot.services.get(service) else {
                continue;
            };
            let have = kept.get(service).map_or(0, Vec::len);
            let recently_failed = self
                .shared()
                .failed_at_ms
                .get(service)
                .is_some_and(|at| self.now_ms() < at.saturating_add(self.settings.interval_ms));
            if recently_failed {
                continue;
            }
            for _ in have..(*want as usize) {
                if starts >= STARTS_PER_PASS_MAX || self.stopping() {
                    break;
                }
                starts += 1;
                if let Err(message) = self.start_new(service, spec, *version) {
                    tracing::warn!(%service, error = %message, "cannot start a container");
                    let now_ms = self.now_ms();
                    let mut shared = self.shared();
                    shared.errors.insert(service.clone(), message);
                    shared.failed_at_ms.insert(service.clone(), now_ms);
                    break;
                }
                let mut shared = self.shared();
                shared.errors.remove(service);
                shared.failed_at_ms.remove(service);
            }
        }
        // Errors of services that are no longer ours to run are stale.
        {
            let mut shared = self.shared();
            shared
                .errors
                .retain(|service, _| desired.contains_key(service));
            shared
                .failed_at_ms
                .retain(|service, _| desired.contains_key(service));
        }
        if let Err(error) = self.sync_counters() {
            tracing::warn!(%error, "cannot update the resource counters");
        }
    }

    /// Stops and deletes surplus containers (in parallel) and forgets their records.
    fn remove_all(&self, surplus: &[ContainerRecord], orphans: &[String]) {
        let grace_ms = self.settings.stop_grace_ms;
        std::thread::scope(|scope| {
            for record in surplus {
                scope.spawn(move || {
                    tracing::info!(container = %record.id, service = %record.service, "stopping a container no longer placed here");
                    self.remove_runtime_container(record.id.as_str(), grace_ms);
                    if let Err(error) = self.forget(record) {
                        tracing::warn!(container = %record.id, %error, "cannot remove the container record");
                    }
                });
            }
            for id in orphans {
                scope.spawn(move || {
                    tracing::info!(container = %id, "removing a container without a record");
                    self.remove_runtime_container(id, grace_ms);
                });
            }
        });
    }

    fn remove_runtime_container(&self, id: &str, grace_ms: u64) {
        match self.runtime.stop(id, grace_ms) {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => tracing::warn!(container = %id, %error, "cannot stop a container"),
        }
        match self.runtime.delete(id) {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => tracing::warn!(container = %id, %error, "cannot delete a container"),
        }
        if let Some(network) = &self.network
            && let Err(error) = network.detach(id)
        {
            tracing::warn!(container = %id, %error, "cannot detach a container's network");
        }
        self.shared().locals.remove(id);
    }

    /// Removes the container's record and releases its address.
    fn forget(&self, record: &ContainerRecord) -> Result<(), NodeError> {
        let id = record.id.clone();
        self.node
            .write_local(&format!("remove container {id}"), |replica, now| {
                let delta = replica.remove_container(now, &id)?;
                Ok(((), delta))
            })?;
        if let Some(ip) = record.ip {
            self.node
                .write_local(&format!("release ip {ip}"), |replica, now| {
                    let delta = replica.release_ip(now, ip)?;
                    Ok(((), delta))
                })?;
        }
        Ok(())
    }

    /// A kept container that ended (or vanished) is started again once its policy says so.
    fn restart_if_due(&self, record: &ContainerRecord, spec: &ServiceSpec) {
        let id = record.id.as_str();
        let status = match self.runtime.state(id) {
            Ok(state) => state.status,
            // Recorded but not in the runtime: died while the daemon was down, or the daemon
            // died between recording and starting it.
            Err(RuntimeError::NotFound { .. }) => ContainerStatus::Stopped(ExitStatus::Unknown),
            Err(error) => {
                tracing::warn!(container = %id, %error, "cannot read a container's state");
                return;
            }
        };
        let now_ms = self.now_ms();
        let exit = match status {
            ContainerStatus::Running | ContainerStatus::Created => {
                self.shared()
                    .locals
                    .entry(id.to_string())
                    .or_insert_with(|| {
                        // Adopted after a daemon restart: tracked from now on.
                        let mut tracker = RestartTracker::new(restart_policy(spec.restart));
                        tracker.started(now_ms);
                        Local {
                            tracker,
                            restart_at_ms: None,
                            gave_up: false,
                            exit_seen: false,
                            since_unix_ms: unix_ms(),
                            started_spec: Some(without_replicas(spec)),
                        }
                    });
                return;
            }
            ContainerStatus::Stopped(exit) => exit,
        };
        let due = {
            let mut shared = self.shared();
            let local = shared
                .locals
                .entry(id.to_string())
                .or_insert_with(|| Local {
                    tracker: RestartTracker::new(restart_policy(spec.restart)),
                    restart_at_ms: None,
                    gave_up: false,
                    exit_seen: false,
                    since_unix_ms: unix_ms(),
                    started_spec: Some(without_replicas(spec)),
                });
            if !local.exit_seen {
                local.exit_seen = true;
                match local.tracker.exited(now_ms, exit.success()) {
                    RestartDecision::RestartAt { at_ms } => local.restart_at_ms = Some(at_ms),
                    RestartDecision::GiveUp => {
                        local.gave_up = true;
                        tracing::info!(container = %id, ?exit, "container ended; not restarting it (restart policy)");
                    }
                }
            }
            !local.gave_up && local.restart_at_ms.is_some_and(|at| now_ms >= at)
        };
        if !due {
            return;
        }
        tracing::info!(container = %id, ?exit, "restarting a container (restart policy)");
        match self.runtime.delete(id) {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => {
                tracing::warn!(container = %id, %error, "cannot delete an ended container");
                return;
            }
        }
        let result = self
            .prepare_image(spec)
            .and_then(|image| self.create_and_start(record, spec, image));
        let mut shared = self.shared();
        match result {
            Ok(()) => {
                if let Some(local) = shared.locals.get_mut(id) {
                    local.tracker.started(self.now_ms());
                    local.restart_at_ms = None;
                    local.exit_seen = false;
                    local.since_unix_ms = unix_ms();
                    local.started_spec = Some(without_replicas(spec));
                }
                shared.errors.remove(&record.service);
            }
            Err(message) => {
                tracing::warn!(container = %id, error = %message, "restart failed");
                // Counts as another failed run: the tracker backs off further.
                if let Some(local) = shared.locals.get_mut(id) {
                    local.tracker.started(now_ms);
                    local.exit_seen = false;
                    local.restart_at_ms = None;
                }
                shared.errors.insert(record.service.clone(), message);
            }
        }
    }

    fn prepare_image(&self, spec: &ServiceSpec) -> Result<PreparedImage, String> {
        let expected: Option<Digest> = match &spec.image_digest {
            Some(text) => Some(
                text.parse()
                    .map_err(|error| format!("image_digest {text}: {error}"))?,
            ),
            None => None,
        };
        self.images
            .prepare(Path::new(&spec.image), expected.as_ref())
            .map_err(|error| format!("image {}: {error}", spec.image))
    }

    /// The network seam: gives the container its network namespace with a veth into the
    /// node bridge holding `ip`, and returns its path. Without a node subnet (no network or
    /// no address) the runtime gives the container a fresh, empty namespace.
    fn prepare_network(
        &self,
        id: &ContainerId,
        ip: Option<std::net::Ipv4Addr>,
    ) -> Result<Option<PathBuf>, String> {
        match (&self.network, ip) {
            (Some(network), Some(ip)) => network
                .attach(id.as_str(), ip)
                .map(|attachment| Some(attachment.netns_path))
                .map_err(|error| format!("network of container {id}: {error}")),
            _ => Ok(None),
        }
    }

    /// Routes to the other live nodes' container subnets (those that won their claims), and
    /// removal of namespaces left by containers this node no longer records.
    fn sync_network(&self, recorded: &BTreeSet<String>) {
        let Some(network) = &self.network else {
            return;
        };
        let me = self.node.node_id().clone();
        let live: BTreeSet<NodeId> = self
            .node
            .live_nodes()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let peers: Vec<(shoal_crdt::Subnet, std::net::IpAddr)> = self.node.read_state(|state| {
            state
                .nodes()
                .filter(|(id, _)| **id != me && live.contains(*id))
                .filter_map(|(id, meta)| {
                    let subnet = meta.subnet?;
                    (state.subnet_owner(&subnet).as_ref() == Some(id))
                        .then_some((subnet, meta.address.ip()))
                })
                .collect()
        });
        if let Err(error) = network.sync_routes(&peers) {
            tracing::warn!(%error, "cannot update the routes to other nodes' containers");
        }
        match network.attached() {
            Ok(attached) => {
                for id in attached.iter().filter(|id| !recorded.contains(*id)) {
                    if self.runtime.state(id).is_ok() {
                        continue;
                    }
                    if let Err(error) = network.detach(id) {
                        tracing::warn!(container = %id, %error, "cannot detach a leftover namespace");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list container namespaces"),
        }
    }

    fn create_and_start(
        &self,
        record: &ContainerRecord,
        spec: &ServiceSpec,
        image: PreparedImage,
    ) -> Result<(), String> {
        let netns_path = self.prepare_network(&record.id, record.ip)?;
        let config = ContainerConfig {
            id: record.id.as_str().to_string(),
            image,
            command: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            limits: Limits {
                cpu_millis: Some(u64::from(spec.resources.cpu_millis)),
                memory_bytes: Some(spec.resources.memory_bytes),
                pids_max: Some(i64::from(spec.resources.pids_max)),
            },
            netns_path,
            rootfs_mode: RootfsMode::Auto,
        };
        let id = config.id.clone();
        self.runtime.create(&config).map_err(|e| e.to_string())?;
        if let Err(error) = self.runtime.start(&id) {
            let _ = self.runtime.delete(&id);
            return Err(error.to_string());
        }
        Ok(())
    }

    /// Checks room, prepares the image, records the container, then creates and starts it.
    fn start_new(
        &self,
        service: &ServiceName,
        spec: &ServiceSpec,
        version: Timestamp,
    ) -> Result<(), String> {
        let me = self.node.node_id().clone();
        let (used, containers) = self.reserved_by_records();
        let capacity = self.node.capacity();
        if containers >= u64::from(CONTAINERS_PER_NODE_MAX)
            || used.cpu_millis + u64::from(spec.resources.cpu_millis)
                > u64::from(capacity.cpu_millis)
            || used
                .memory_bytes
                .saturating_add(spec.resources.memory_bytes)
                > capacity.memory_bytes
        {
            return Err(format!(
                "node {me} has no room: {} cpu_millis and {} memory_bytes reserved of {} and {}",
                used.cpu_millis, used.memory_bytes, capacity.cpu_millis, capacity.memory_bytes
            ));
        }
        let image = self.prepare_image(spec)?;
        let id = new_container_id(service);
        let has_subnet = self
            .node
            .read_state(|state| state.node(&me).and_then(|meta| meta.subnet).is_some());
        let ip = if has_subnet {
            let ip = self
                .node
                .write_local(&format!("allocate ip for {id}"), |replica, now| {
                    replica.allocate_ip(now, &id)
                })
                .map_err(|e| e.to_string())?;
            Some(ip)
        } else {
            None
        };
        let record = ContainerRecord {
            id: id.clone(),
            service: service.clone(),
            node: me,
            spec_version: version,
            ip,
        };
        {
            let record = record.clone();
            self.node
                .write_local(&format!("add container {id}"), |replica, now| {
                    let delta = replica.add_container(now, record)?;
                    Ok(((), delta))
                })
                .map_err(|e| e.to_string())?;
        }
        let now_ms = self.now_ms();
        if let Err(message) = self.create_and_start(&record, spec, image) {
            if let Err(error) = self.forget(&record) {
                tracing::warn!(container = %id, %error, "cannot undo the container record");
            }
            return Err(message);
        }
        let mut tracker = RestartTracker::new(restart_policy(spec.restart));
        tracker.started(now_ms);
        self.shared().locals.insert(
            id.as_str().to_string(),
            Local {
                tracker,
                restart_at_ms: None,
                gave_up: false,
                exit_seen: false,
                since_unix_ms: unix_ms(),
                started_spec: Some(without_replicas(spec)),
            },
        );
        tracing::info!(container = %id, %service, "container started");
        Ok(())
    }

    /// What this node's recorded containers reserve under the current specs.
    fn reserved_by_records(&self) -> (Reserved, u64) {
        let me = self.node.node_id().clone();
        self.node.read_state(|state| {
            let mut reserved = Reserved::default();
            let mut containers = 0u64;
            for record in state.containers().filter(|r| r.node == me) {
                containers += 1;
                if let Some((spec, _)) = state.service(&record.service) {
                    reserved.add(&spec.resources);
                }
            }
            (reserved, containers)
        })
    }

    /// Sets this node's PN-counters to what its records reserve.
    fn sync_counters(&self) -> Result<(), NodeError> {
        let me = self.node.node_id().clone();
        let (reserved, containers) = self.reserved_by_records();
        for (resource, target) in [
            (Resource::CpuMillis, reserved.cpu_millis),
            (Resource::MemoryBytes, reserved.memory_bytes),
            (Resource::Containers, containers),
        ] {
            let target = i64::try_from(target).unwrap_or(i64::MAX);
            let current = self
                .node
                .read_state(|state| state.resource_used(&me, resource));
            let difference = target.saturating_sub(current);
            if difference != 0 {
                self.node
                    .write_local(&format!("adjust {resource:?}"), |replica, now| {
                        let delta = replica.adjust_resource(now, resource, difference)?;
                        Ok(((), delta))
                    })?;
            }
        }
        Ok(())
    }

    /// Errors by service, for `shoal status`.
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.shared()
            .errors
            .iter()
            .map(|(service, message)| (service.to_string(), message.clone()))
            .collect()
    }

    /// Every container in the cluster state, with this node's runtime states.
    pub fn ps(&self) -> PsView {
        let me = self.node.node_id().clone();
        let live: BTreeSet<NodeId> = self
            .node
            .live_nodes()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let (records, usage) = self.node.read_state(|state| {
            let records: Vec<ContainerRecord> = state.containers().cloned().collect();
            let usage: BTreeMap<String, Usage> = state
                .nodes()
                .map(|(id, _)| {
                    let usage = Usage {
                        cpu_millis: state.resource_used(id, Resource::CpuMillis),
                        memory_bytes: state.resource_used(id, Resource::MemoryBytes),
                        containers: state.resource_used(id, Resource::Containers),
                    };
                    (id.to_string(), usage)
                })
                .collect();
            (records, usage)
        });
        let shared = self.shared();
        let containers = records
            .into_iter()
            .map(|record| {
                let id = record.id.as_str().to_string();
                let (state, pid, since_unix_ms, restarts) = if record.node == me {
                    let local = shared.locals.get(&id);
                    let (state, pid) = match self.runtime.state(&id) {
                        Ok(state) => (describe(state.status), state.pid),
                        Err(RuntimeError::NotFound { .. }) => ("starting".to_string(), None),
                        Err(error) => (format!("error: {error}"), None),
                    };
                    (
                        state,
                        pid,
                        local.map(|l| l.since_unix_ms),
                        local.map_or(0, |l| l.tracker.consecutive_restarts()),
                    )
                } else if live.contains(&record.node) {
                    ("recorded".to_string(), None, None, 0)
                } else {
                    ("node-down".to_string(), None, None, 0)
                };
                ContainerView {
                    id,
                    service: record.service.to_string(),
                    node: record.node.to_string(),
                    state,
                    ip: record.ip.map(|ip| ip.to_string()),
                    since_unix_ms,
                    pid,
                    restarts,
                }
            })
            .collect();
        PsView {
            node: me.to_string(),
            containers,
            errors: shared
                .errors
                .iter()
                .map(|(s, m)| (s.to_string(), m.clone()))
                .collect(),
            unplaced: shared
                .unplaced
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            usage,
        }
    }

    /// New output of the containers `target` names (a container id or a service) on this
    /// node, from the given offsets (container -> (stdout, stderr)).
    pub fn logs(
        &self,
        target: &str,
        offsets: &BTreeMap<String, (u64, u64)>,
    ) -> Result<Vec<LogChunk>, ReconcileError> {
        let me = self.node.node_id().clone();
        let records: Vec<ContainerRecord> = self
            .node
            .read_state(|state| state.containers().cloned().collect());
        let mut ids: Vec<String> = Vec::new();
        if let Some(record) = records.iter().find(|r| r.id.as_str() == target) {
            if record.node != me {
                return Err(ReconcileError::OnOtherNode {
                    container: target.to_string(),
                    node: record.node.clone(),
                });
            }
            ids.push(target.to_string());
        } else {
            let of_service: Vec<&ContainerRecord> = records
                .iter()
                .filter(|r| r.service.as_str() == target)
                .collect();
            if of_service.is_empty() {
                // Also a container the runtime still has (e.g. being removed).
                if self.runtime.list().iter().any(|id| id == target) {
                    ids.push(target.to_string());
                } else {
                    return Err(ReconcileError::UnknownTarget {
                        target: target.to_string(),
                    });
                }
            }
            let here: Vec<String> = of_service
                .iter()
                .filter(|r| r.node == me)
                .map(|r| r.id.as_str().to_string())
                .collect();
            if here.is_empty() && !of_service.is_empty() {
                let nodes: BTreeSet<String> =
                    of_service.iter().map(|r| r.node.to_string()).collect();
                return Err(ReconcileError::ServiceElsewhere {
                    service: target.to_string(),
                    nodes: nodes.into_iter().collect::<Vec<_>>().join(", "),
                });
            }
            ids.extend(here);
        }
        ids.into_iter()
            .map(|id| {
                let (stdout_path, stderr_path) = (self.log_paths)(&id);
                let (stdout_from, stderr_from) = offsets.get(&id).copied().unwrap_or((0, 0));
                let (stdout, stdout_offset) = read_log(&stdout_path, stdout_from)?;
                let (stderr, stderr_offset) = read_log(&stderr_path, stderr_from)?;
                let running = matches!(
                    self.runtime.state(&id).map(|s| s.status),
                    Ok(ContainerStatus::Running)
                );
                Ok(LogChunk {
                    container: id,
                    stdout,
                    stderr,
                    stdout_offset,
                    stderr_offset,
                    running,
                })
            })
            .collect()
    }

    /// Whether this node's view of the cluster is fresh enough to place on: it knows no
    /// other member, has synced with one since startup, or waited out the grace period.
    fn view_is_fresh(&self) -> bool {
        let peers = self.node.peers();
        peers.is_empty()
            || peers.iter().any(|peer| peer.last_sync_ms_ago.is_some())
            || self.now_ms() >= self.settings.startup_grace_ms
    }

    /// Runs passes until `shutdown`: every `interval_ms` and after every local change.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut changes = self.node.subscribe_changes();
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.settings.interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {}
                _ = changes.recv() => {}
            }
            // Changes that arrived meanwhile are covered by this pass.
            while changes.try_recv().is_ok() {}
            if !self.view_is_fresh() {
                continue;
            }
            let reconciler = self.clone();
            let pass = tokio::task::spawn_blocking(move || reconciler.reconcile_once());
            tokio::select! {
                _ = &mut shutdown => {
                    self.stop();
                    break;
                }
                result = pass => if let Err(error) = result {
                    tracing::error!(%error, "reconcile pass panicked");
                }
            }
            // Changes made during the pass (an apply, or the pass's own writes) are not
            // drained here: they trigger one more pass, which settles when nothing changes.
        }
        self.stop();
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Reserved {
    cpu_millis: u64,
    memory_bytes: u64,
}

impl Reserved {
    fn add(&mut self, resources: &Resources) {
        self.cpu_millis += u64::from(resources.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(resources.memory_bytes);
    }
}

/// Reads up to `LOG_CHUNK_BYTES_MAX` of `path` from `offset`; a file shorter than the offset
/// was rotated, so it is read from the start. A missing file is empty.
fn read_log(path: &Path, offset: u64) -> Result<(String, u64), ReconcileError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| ReconcileError::Log {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((String::new(), 0));
        }
        Err(error) => return Err(io(error)),
    };
    let length = file.metadata().map_err(io)?.len();
    let start = if offset > length { 0 } else { offset };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(LOG_CHUNK_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let next = start + bytes.len() as u64;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_valid_and_bounded() {
        let long: ServiceName = "a".repeat(63).parse().unwrap();
        for service in [long, "web".parse().unwrap(), "x-y".parse().unwrap()] {
            let id = new_container_id(&service);
            shoal_oci::bundle::validate_id(id.as_str()).unwrap();
            assert!(id.as_str().len() <= shoal_oci::bundle::CONTAINER_ID_BYTES_MAX);
            assert!(id.as_str().starts_with(&service.as_str()[..3]));
        }
    }

    #[test]
    fn logs_are_read_from_offsets_and_restart_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        assert_eq!(read_log(&path, 0).unwrap(), (String::new(), 0));
        std::fs::write(&path, "hello\nworld\n").unwrap();
        assert_eq!(read_log(&path, 0).unwrap(), ("hello\nworld\n".into(), 12));
        assert_eq!(read_log(&path, 6).unwrap(), ("world\n".into(), 12));
        assert_eq!(read_log(&path, 12).unwrap(), (String::new(), 12));
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(read_log(&path, 12).unwrap(), ("new\n".into(), 4));
    }

    #[test]
    fn states_read_like_docker() {
        assert_eq!(describe(ContainerStatus::Running), "running");
        assert_eq!(
            describe(ContainerStatus::Stopped(ExitStatus::Code(3))),
            "exited(3)"
        );
        assert_eq!(
            describe(ContainerStatus::Stopped(ExitStatus::Signal(9))),
            "killed(9)"
        );
    }
}
