//! The reconcile loop: runs passes (`pass::run_pass`) on a blocking thread every
//! `interval_ms`, at once when the node says its plan inputs changed (a service applied
//! here or received from a peer, a member joining, leaving or coming back), and again at
//! once when a pass left starts for the next one. It also answers `shoal ps` and
//! `shoal logs` for this node's containers (for the API and for other nodes).
//!
//! After startup it places nothing until a first sync with a peer succeeded (or
//! `startup_grace_ms` passed): the stored view says every peer is silent, and placing on
//! it would start replicas only to stop them again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use shoal_crdt::{ContainerRecord, NodeId, NodeStatus, Resource, ServiceName, ServiceSpec};
use shoal_oci::{ContainerStatus, ExitStatus, RuntimeError};

use super::executor::Executor;
use super::health::{HEALTH_PROBES_IN_FLIGHT_MAX, HealthTarget, HealthTrackers};
use super::logs::{self, LogError, LogPaths, LogRead};
use super::pass::{PassReport, run_pass};
use super::probe;
use super::volumes::{self, Volume, VolumeError};
use crate::api::{ContainerView, PsView, Usage, VolumeView};
use crate::schedule::{Planner, PlannerSettings};
use crate::state::Node;

/// What the loop needs besides the node and the executor.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub interval_ms: u64,
    /// After startup, placement waits for a first successful sync with a peer, or this long
    /// (`sync.down_after_ms`).
    pub startup_grace_ms: u64,
    pub planner: PlannerSettings,
    /// Seeds the planner's container ids.
    pub rng_seed: u64,
}

/// The reconcile loop's state; shared with the API for `ps` and `logs`.
pub struct Reconciler {
    node: Arc<Node>,
    executor: Executor,
    planner: Mutex<Planner>,
    log_paths: LogPaths,
    settings: ReconcileSettings,
    stopping: AtomicBool,
    started_ms: u64,
    /// Running containers with a health check, from the last pass that ran to its end;
    /// taken by the health loop.
    health_targets: Mutex<Option<Vec<HealthTarget>>>,
    /// A health verdict changed: run a pass (status report, unhealthy restarts).
    health_changed: Notify,
}

/// How often the health loop looks for due probes.
pub const HEALTH_TICK_MS: u64 = 100;
/// While a rolling update is in progress, passes run at least this often: a replica
/// becomes ready (`update.min_healthy_ms`) by time passing, and the next replacement
/// waits for that.
const ROLLING_PASS_INTERVAL: Duration = Duration::from_millis(250);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a container's runtime state reads in `shoal ps`.
fn describe(status: ContainerStatus) -> String {
    match status {
        ContainerStatus::Created => "created".to_string(),
        ContainerStatus::Running => "running".to_string(),
        ContainerStatus::Stopped(ExitStatus::Code(code)) => format!("exited({code})"),
        ContainerStatus::Stopped(ExitStatus::Signal(signal)) => format!("killed({signal})"),
        ContainerStatus::Stopped(ExitStatus::Unknown) => "exited(unknown)".to_string(),
    }
}

fn volume_view(volume: Volume) -> VolumeView {
    VolumeView {
        name: volume.name,
        path: volume.path.display().to_string(),
        used_by: volume.used_by,
    }
}

/// A service's published ports as `shoal ps` lists them.
fn published_ports(spec: &ServiceSpec) -> Vec<String> {
    let mesh = !spec.publish.mode.is_host();
    spec.port_mappings()
        .unwrap_or_default()
        .iter()
        .map(|mapping| {
            if mesh {
                format!("{mapping} (mesh)")
            } else {
                mapping.to_string()
            }
        })
        .collect()
}

impl Reconciler {
    pub fn new(
        node: Arc<Node>,
        executor: Executor,
        log_paths: LogPaths,
        settings: ReconcileSettings,
    ) -> Reconciler {
        let planner = Planner::new(node.node_id().clone(), settings.planner, settings.rng_seed);
        let started_ms = node.clock().now_ms();
        Reconciler {
            node,
            executor,
            planner: Mutex::new(planner),
            log_paths,
            settings,
            stopping: AtomicBool::new(false),
            started_ms,
            health_targets: Mutex::new(None),
            health_changed: Notify::new(),
        }
    }

    fn planner(&self) -> MutexGuard<'_, Planner> {
        self.planner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The executor (for cleanup at startup).
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Makes the current pass return early (shutdown); running containers keep running.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// One pass, on the calling thread.
    pub fn reconcile_once(&self) -> PassReport {
        let stopping = || self.stopping.load(Ordering::SeqCst);
        self.node.metrics().reconcile_pass();
        let mut report = run_pass(
            self.node.as_ref(),
            &self.planner,
            &self.executor,
            self.node.clock().as_ref(),
            &stopping,
        );
        if !report.cut_short {
            *self
                .health_targets
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some(std::mem::take(&mut report.health_targets));
        }
        report
    }

    /// Probes this node's running containers with a health check when they are due (at
    /// most `HEALTH_PROBES_IN_FLIGHT_MAX` at once, each within its `timeout_ms`), apart
    /// from the passes: a slow pass delays no probe and a slow probe no pass. A changed
    /// verdict goes to the planner and wakes a pass, which writes the status report and
    /// restarts an unhealthy container per its policy.
    async fn run_health(self: Arc<Self>) {
        let mut trackers = HealthTrackers::default();
        let mut probes: JoinSet<(HealthTarget, Result<(), probe::ProbeFailure>)> = JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_millis(HEALTH_TICK_MS));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut changed = false;
            tokio::select! {
                _ = ticker.tick() => {
                    let targets = self
                        .health_targets
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .take();
                    if let Some(targets) = targets {
                        changed |= trackers.follow(targets);
                    }
                    let free = HEALTH_PROBES_IN_FLIGHT_MAX.saturating_sub(probes.len());
                    let now_ms = self.node.clock().now_ms();
                    for target in trackers.begin_due(now_ms, free) {
                        let runtime = Arc::clone(self.executor.runtime());
                        probes.spawn(async move {
                            let outcome = probe::probe(&target, &runtime).await;
                            (target, outcome)
                        });
                    }
                }
                Some(joined) = probes.join_next(), if !probes.is_empty() => {
                    let Ok((target, outcome)) = joined else { continue };
                    if let Some(health) =
                        trackers.handle_outcome(&target.id, target.since_ms, outcome)
                    {
                        match &health {
                            shoal_crdt::Health::Unhealthy { reason } => tracing::warn!(
                                container = %target.id,
                                %reason,
                                "container unhealthy; it is restarted per its restart policy"
                            ),
                            health => tracing::info!(
                                container = %target.id,
                                health = health.label(),
                                "container health changed"
                            ),
                        }
                        changed = true;
                    }
                }
            }
            if changed {
                self.planner().set_health(trackers.verdicts());
                self.health_changed.notify_one();
            }
        }
    }

    /// Whether this node's view of the cluster is fresh enough to place on: it knows no
    /// other member, has synced with one since startup, or waited out the grace period.
    fn view_is_fresh(&self) -> bool {
        let peers = self.node.peers();
        peers.is_empty()
            || peers.iter().any(|peer| peer.last_sync_ms_ago.is_some())
            || self.node.clock().now_ms().saturating_sub(self.started_ms)
                >= self.settings.startup_grace_ms
    }

    /// Runs passes until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut inputs = self.node.subscribe_plan_inputs();
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.settings.interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut again = false;
        let mut soon = false;
        // Aborted (with its probes) when this loop ends.
        let health = AbortOnDrop(tokio::spawn(self.clone().run_health()));
        loop {
            if !again {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = ticker.tick() => {}
                    changed = inputs.changed() => if changed.is_err() { break },
                    _ = self.health_changed.notified() => {}
                    _ = tokio::time::sleep(ROLLING_PASS_INTERVAL), if soon => {}
                }
            }
            // Changes that arrived until now are covered by this pass.
            inputs.mark_unchanged();
            again = false;
            if !self.view_is_fresh() {
                continue;
            }
            // Another daemon writes as this node: no pass, so no record is written and no
            // container is started or stopped; running ones are left alone (the contest is
            // in the log and in `shoal status`). Passes resume when it clears.
            if self.node.identity_contest().is_some() {
                continue;
            }
            let reconciler = self.clone();
            let pass = tokio::task::spawn_blocking(move || reconciler.reconcile_once());
            tokio::select! {
                _ = &mut shutdown => {
                    self.stop();
                    break;
                }
                result = pass => match result {
                    Ok(report) => {
                        again = report.plan.more_to_start && !report.cut_short;
                        soon = report.plan.rolling;
                    }
                    Err(error) => tracing::error!(%error, "reconcile pass panicked"),
                }
            }
        }
        drop(health);
        self.stop();
    }

    /// Errors by service, for `shoal status` and `shoal ps`.
    pub fn errors(&self) -> BTreeMap<String, String> {
        self.planner()
            .errors()
            .into_iter()
            .map(|(service, message)| (service.to_string(), message))
            .collect()
    }

    /// Every container in the cluster state: this node's from its runtime, the others'
    /// as their nodes reported them in the replicated state.
    pub fn ps(&self) -> PsView {
        let me = self.node.node_id().clone();
        let (records, live, usage, reports, ports) = self.node.read_with_live(|state, live| {
            let records: Vec<ContainerRecord> = state.containers().cloned().collect();
            let reports: BTreeMap<NodeId, NodeStatus> = state
                .nodes()
                .filter_map(|(id, _)| Some((id.clone(), state.node_status(id)?.clone())))
                .collect();
            let ports: BTreeMap<ServiceName, (Vec<String>, bool)> = state
                .services()
                .map(|(name, spec, _)| {
                    (name.clone(), (published_ports(spec), spec.health.is_some()))
                })
                .collect();
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
            (records, live.clone(), usage, reports, ports)
        });
        let runtime = self.executor.runtime();
        let planner = self.planner();
        let restarts = planner.restarts();
        let containers = records
            .into_iter()
            .map(|record| {
                let id = record.id.as_str().to_string();
                let (service_ports, has_check) =
                    ports.get(&record.service).cloned().unwrap_or_default();
                let (state, pid, since_unix_ms, restarts, health) = if record.node == me {
                    let (state, pid, running) = match runtime.state(&id) {
                        Ok(state) => (
                            describe(state.status),
                            state.pid,
                            state.status == ContainerStatus::Running,
                        ),
                        Err(RuntimeError::NotFound { .. }) => ("starting".to_string(), None, false),
                        Err(error) => (format!("error: {error}"), None, false),
                    };
                    let health = if running {
                        planner.health_of(&id, has_check)
                    } else {
                        shoal_crdt::Health::None
                    };
                    (
                        state,
                        pid,
                        restarts.since_ms(&id),
                        restarts.consecutive_restarts(&id),
                        health,
                    )
                } else {
                    let report = reports
                        .get(&record.node)
                        .and_then(|report| report.containers.get(&record.id));
                    let state = match (live.contains(&record.node), report) {
                        (true, Some(status)) => status.state.label(),
                        (true, None) => "reported-later".to_string(),
                        (false, Some(status)) => format!("node-down ({})", status.state.label()),
                        (false, None) => "node-down".to_string(),
                    };
                    (
                        state,
                        None,
                        report.and_then(|status| status.started_unix_ms),
                        report.map_or(0, |status| status.restarts),
                        report
                            .map(|status| status.health.clone())
                            .unwrap_or_default(),
                    )
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
                    ports: service_ports,
                    health: health.label().to_owned(),
                    health_reason: match health {
                        shoal_crdt::Health::Unhealthy { reason } => Some(reason),
                        _ => None,
                    },
                }
            })
            .collect();
        PsView {
            node: me.to_string(),
            containers,
            errors: planner
                .errors()
                .into_iter()
                .map(|(service, message)| (service.to_string(), message))
                .collect(),
            unplaced: planner
                .unplaced()
                .iter()
                .map(|(service, count)| (service.to_string(), *count))
                .collect(),
            unplaced_reasons: planner
                .unplaced_reasons()
                .iter()
                .map(|(service, reason)| (service.to_string(), reason.clone()))
                .collect(),
            node_errors: reports
                .iter()
                .filter(|(_, report)| !report.errors.is_empty())
                .map(|(node, report)| {
                    let errors = report
                        .errors
                        .iter()
                        .map(|(service, message)| (service.to_string(), message.clone()))
                        .collect();
                    (node.to_string(), errors)
                })
                .collect(),
            usage,
        }
    }

    /// This node's records and the current specs (for volume users).
    fn own_records_and_specs(&self) -> (Vec<ContainerRecord>, BTreeMap<ServiceName, ServiceSpec>) {
        let me = self.node.node_id().clone();
        self.node.read_state(|state| {
            let records = state
                .containers()
                .filter(|record| record.node == me)
                .cloned()
                .collect();
            let specs = state
                .services()
                .map(|(name, spec, _)| (name.clone(), spec.clone()))
                .collect();
            (records, specs)
        })
    }

    /// `shoal volume ls`.
    pub fn volumes(&self) -> Result<Vec<VolumeView>, VolumeError> {
        let dir = self
            .executor
            .volumes_dir()
            .ok_or(VolumeError::NoVolumeDir)?;
        let (records, specs) = self.own_records_and_specs();
        Ok(volumes::list(dir, &records, &specs)?
            .into_iter()
            .map(volume_view)
            .collect())
    }

    /// `shoal volume rm`.
    pub fn remove_volume(&self, name: &str) -> Result<VolumeView, VolumeError> {
        let dir = self
            .executor
            .volumes_dir()
            .ok_or(VolumeError::NoVolumeDir)?;
        let (records, specs) = self.own_records_and_specs();
        let removed = volumes::remove(dir, name, &records, &specs)?;
        tracing::info!(volume = %removed.name, "named volume removed");
        Ok(volume_view(removed))
    }

    /// The ids of the containers this node's runtime holds.
    pub fn runtime_ids(&self) -> Vec<String> {
        self.executor.runtime().list()
    }

    /// New output of this node's container `id` from `from` (stdout, stderr offsets), at most
    /// `stream_bytes_max` bytes of each stream (see `logs::read`). A container neither
    /// recorded on this node nor held by its runtime is `NotOnThisNode`: this answers the API
    /// and other nodes' `GET /v1/logs` alike.
    pub fn read_log(
        &self,
        id: &str,
        from: (u64, u64),
        stream_bytes_max: u64,
    ) -> Result<LogRead, LogError> {
        let me = self.node.node_id();
        let recorded_here = self.node.read_state(|state| {
            state
                .containers()
                .any(|record| record.id.as_str() == id && &record.node == me)
        });
        let runtime = self.executor.runtime();
        if !recorded_here && !runtime.list().iter().any(|held| held == id) {
            return Err(LogError::NotOnThisNode {
                container: id.to_string(),
                node: me.clone(),
            });
        }
        let running = matches!(
            runtime.state(id).map(|s| s.status),
            Ok(ContainerStatus::Running)
        );
        logs::read(id, &self.log_paths, from, stream_bytes_max, running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
