//! The container planner, sans-IO: from the converged view (`ClusterView`), what this node's
//! runtime holds (`Observed`) and the time, it decides what one reconcile pass does on this
//! node and returns it as a `Plan`; it never touches a runtime, a network or the state. The
//! executor carries the plan out and reports `Outcome`s back, which update the planner's
//! bookkeeping (restart trackers, failures). Container ids come from a seeded RNG, so one
//! seed gives one sequence of plans (the cluster simulator relies on it).
//!
//! The decision, per pass:
//! - placement (`placement::place`) says how many replicas of each service this node runs;
//! - every runtime container without a record is an orphan: removed;
//! - per service, this node's records are ranked current-spec first, running before not,
//!   then oldest record first (then by id); the first `wanted` that run the current spec are
//!   kept, the rest (surplus after a partition healed or a member came back, replicas
//!   reduced, spec replaced, service removed) removed. Oldest first: a replica started here
//!   to stand in for a member that was down goes when the member returns, and the one that
//!   served all along stays.
//!   A container runs the current spec when its record has the current version, or when
//!   the spec digest written on it at create equals the current spec's (a change of the
//!   replica count alone replaces nothing, also across daemon restarts);
//! - a kept container that ended is restarted when its policy says so (`Restarts`), and so
//!   is a running one its health check found unhealthy (counted as a failed exit, so the
//!   policy's backoff applies; `never` leaves it running); a
//!   record whose container the runtime does not have was never started here (the daemon
//!   died between recording and starting it) and is started, whatever the policy;
//! - missing replicas are started, at most `starts_per_pass_max` per pass, each only if it
//!   fits this node's capacity next to the kept ones (`room::Reserved`, the check placement
//!   makes), and a service whose start failed waits `retry_after_failure_ms`;
//! - routes to the other live members' subnets, and namespaces left without a container.
//!
//! *Invariant:* a plan only names this node's containers and records: removals are of own
//! records or orphans, starts are new records of this node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shoal_crdt::{
    ContainerId, ContainerRecord, Health, NodeId, ServiceName, ServiceSpec, Subnet, Timestamp,
};
use shoal_oci::{ContainerStatus, ExitStatus};

use super::restarts::{AfterExit, Restarts, short_digest};
use super::rollout::{self, Pacing, Replica};
use super::room::Reserved;
use super::view::{ClusterView, ServiceVersion};

/// Default for `PlannerSettings::starts_per_pass_max`.
pub const STARTS_PER_PASS_MAX: usize = 8;
/// A rollout stops an outdated replica of a service with published ports this long after
/// it reported it retiring: time for every node to stop forwarding new connections to it.
pub const RETIRE_GRACE_MS: u64 = 1_500;
/// Longest service-name prefix of a container id (ids are at most 64 bytes).
const ID_SERVICE_BYTES_MAX: usize = 48;

/// How the planner paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerSettings {
    /// New containers started in one pass; the rest wait for the next pass.
    pub starts_per_pass_max: usize,
    /// After a service's start failed, its next try waits this long.
    pub retry_after_failure_ms: u64,
}

/// A runtime container as the executor observed it before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservedState {
    Created,
    Running,
    Exited(ExitStatus),
    /// The runtime could not say; the planner leaves the container alone this pass.
    Unreadable(String),
}

impl From<ContainerStatus> for ObservedState {
    fn from(status: ContainerStatus) -> Self {
        match status {
            ContainerStatus::Created => ObservedState::Created,
            ContainerStatus::Running => ObservedState::Running,
            ContainerStatus::Stopped(exit) => ObservedState::Exited(exit),
        }
    }
}

/// What this node's runtime and network hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every container the runtime knows, by id.
    pub containers: BTreeMap<String, ObservedState>,
    /// The spec digest written on each container at create (`restarts::SPEC_ANNOTATION`),
    /// by id, for those that carry one.
    pub spec_digests: BTreeMap<String, String>,
    /// Container ids with a network namespace; `None` when the node has no container network.
    pub attachments: Option<BTreeSet<String>>,
}

/// A container to stop, delete and detach; its record (if it has one) is forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub id: String,
    /// `None` for an orphan: a runtime container without a record.
    pub record: Option<ContainerRecord>,
}

/// A kept container that ended and is due to start again from `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub record: ContainerRecord,
    pub spec: ServiceSpec,
}

/// A new container: recorded first, then created and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub id: ContainerId,
    pub service: ServiceName,
    pub spec: ServiceSpec,
    pub version: Timestamp,
}

/// What one pass does on this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub removals: Vec<Removal>,
    pub restarts: Vec<Restart>,
    pub starts: Vec<Start>,
    /// New containers get an address from this node's subnet.
    pub with_ip: bool,
    /// Routes to the other live members' container subnets (only with a container network).
    pub routes: Option<Vec<(Subnet, IpAddr)>>,
    /// Namespaces left by containers that have neither a record nor a runtime container.
    pub leftover_attachments: Vec<String>,
    /// The placement says more starts than this pass makes: plan again soon.
    pub more_to_start: bool,
    /// Updates that failed on this node: a new replica not ready by its deadline.
    pub update_failures: Vec<UpdateFailure>,
    /// An update is in progress (this node waits for a replica here or elsewhere to
    /// become ready): plan again soon.
    pub rolling: bool,
}

/// The update to `version` of `service` failed on this node; the pass writes the
/// record's `after_failure` (a rollback, or a pause) unless the service changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateFailure {
    pub service: ServiceName,
    pub version: Timestamp,
    pub reason: String,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_idle(&self) -> bool {
        self.removals.is_empty()
            && self.restarts.is_empty()
            && self.starts.is_empty()
            && self.leftover_attachments.is_empty()
    }
}

/// What the executor reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Started {
        id: String,
        service: ServiceName,
        spec: ServiceSpec,
    },
    /// A start failed before or after its record was written (the executor undoes it).
    StartFailed {
        service: ServiceName,
        message: String,
    },
    Restarted {
        id: String,
        service: ServiceName,
        spec: ServiceSpec,
    },
    RestartFailed {
        id: String,
        service: ServiceName,
        message: String,
    },
    Removed {
        id: String,
    },
}

/// Why a service's replicas on this node do not run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    at_ms: u64,
    message: String,
}

/// The planner of one node: its restart bookkeeping, its recent failures and its RNG.
#[derive(Debug)]
pub struct Planner {
    me: NodeId,
    settings: PlannerSettings,
    rng: ChaCha8Rng,
    restarts: Restarts,
    failures: BTreeMap<ServiceName, Failure>,
    unplaced: BTreeMap<ServiceName, u32>,
    unplaced_reasons: BTreeMap<ServiceName, String>,
    /// Health of running containers with a check, by id, with the start (`since_ms`) it
    /// is about: a state about an earlier run of the container is stale.
    health: BTreeMap<String, (u64, Health)>,
    /// Since when each current, running container has been running (and healthy, if
    /// checked) without a break.
    healthy_since: BTreeMap<String, u64>,
    /// Containers that count for their service's rollout (`update.min_healthy_ms`).
    ready: BTreeSet<String>,
    /// When this planner first saw each current container: its rollout deadline counts
    /// from here.
    first_seen: BTreeMap<String, u64>,
    /// The spec digest of each service this node saw fully rolled out (every placed
    /// replica ready, none outdated): a replica of it that fails later (a lost node's
    /// replacement, a scale-up) is no failed update.
    settled: BTreeMap<ServiceName, String>,
    /// Failed updates already reported, so each is written once.
    reported_failures: BTreeSet<(ServiceName, Timestamp)>,
    /// Outdated replicas a rollout stops once `RETIRE_GRACE_MS` passed, with since when.
    retiring: BTreeMap<String, u64>,
    /// Each service's current version and when this planner first saw it: a rollout
    /// deadline counts from the later of this and the replica's first sighting.
    version_seen: BTreeMap<ServiceName, (Timestamp, u64)>,
}

impl Planner {
    /// A planner for node `me`; `rng_seed` seeds container ids.
    pub fn new(me: NodeId, settings: PlannerSettings, rng_seed: u64) -> Planner {
        Planner {
            me,
            settings,
            rng: ChaCha8Rng::seed_from_u64(rng_seed),
            restarts: Restarts::default(),
            failures: BTreeMap::new(),
            unplaced: BTreeMap::new(),
            unplaced_reasons: BTreeMap::new(),
            health: BTreeMap::new(),
            healthy_since: BTreeMap::new(),
            ready: BTreeSet::new(),
            first_seen: BTreeMap::new(),
            settled: BTreeMap::new(),
            reported_failures: BTreeSet::new(),
            retiring: BTreeMap::new(),
            version_seen: BTreeMap::new(),
        }
    }

    /// The health checks' verdicts (`containers::health`): container id -> the start
    /// (`Restarts::since_ms`) the verdict is about, and the verdict. Replaces the last.
    pub fn set_health(&mut self, health: BTreeMap<String, (u64, Health)>) {
        self.health = health;
    }

    /// The health of container `id` in its current run (`Starting` before any verdict);
    /// `None` when its service has no check.
    pub fn health_of(&self, id: &str, has_check: bool) -> Health {
        if !has_check {
            return Health::None;
        }
        match (self.health.get(id), self.restarts.since_ms(id)) {
            (Some((since_ms, health)), Some(current)) if *since_ms == current => health.clone(),
            _ => Health::Starting,
        }
    }

    /// Decides one pass. Time never goes backwards between calls (a smaller `now_ms` is
    /// treated as no time passing).
    pub fn plan(&mut self, view: &ClusterView, observed: &Observed, now_ms: u64) -> Plan {
        assert_eq!(view.me, self.me, "a planner plans for its own node");
        let placement = view.placement();
        self.unplaced = placement.unplaced.clone();
        self.unplaced_reasons = placement.reasons.clone();
        let desired = placement.for_node(&self.me);
        let mut plan = Plan {
            with_ip: view.subnet.is_some(),
            ..Plan::default()
        };

        let recorded: BTreeSet<&str> = view.own_records.iter().map(|r| r.id.as_str()).collect();
        for id in observed.containers.keys() {
            if !recorded.contains(id.as_str()) {
                plan.removals.push(Removal {
                    id: id.clone(),
                    record: None,
                });
            }
        }

        self.track_readiness(view, observed, now_ms);
        let pacing = self.pace(view, observed, &placement, now_ms, &mut plan);
        let (kept, outdated) =
            self.keep_or_remove(view, observed, &desired, &pacing, now_ms, &mut plan);
        for (service, records) in &kept {
            let Some(current) = view.services.get(service) else {
                continue;
            };
            for record in records {
                self.restart_if_due(record, &current.spec, observed, now_ms, &mut plan);
            }
        }
        self.plan_starts(view, &desired, &kept, &outdated, &pacing, now_ms, &mut plan);

        if let Some(attachments) = &observed.attachments {
            plan.routes = Some(view.peer_subnets.clone());
            plan.leftover_attachments = attachments
                .iter()
                .filter(|id| {
                    !recorded.contains(id.as_str()) && !observed.containers.contains_key(*id)
                })
                .cloned()
                .collect();
        }
        // Failures of services that are no longer ours to run are stale.
        self.failures
            .retain(|service, _| desired.contains_key(service));
        let live: BTreeSet<&str> = recorded
            .iter()
            .copied()
            .chain(observed.containers.keys().map(String::as_str))
            .collect();
        self.restarts.retain(|id| live.contains(id));
        self.health.retain(|id, _| live.contains(id.as_str()));
        self.first_seen.retain(|id, _| live.contains(id.as_str()));
        self.retiring.retain(|id, _| live.contains(id.as_str()));
        self.settled
            .retain(|service, _| view.services.contains_key(service));
        self.reported_failures
            .retain(|(service, _)| view.services.contains_key(service));
        plan
    }

    /// Whether this node is drained and its replicas still wait for their replacements
    /// (the drain's deadline has not passed).
    fn leaving(&self, view: &ClusterView, now_ms: u64) -> bool {
        view.drained.contains_key(&self.me) && !self.drain_deadline_passed(view, now_ms)
    }

    /// Whether this node is drained and the drain's deadline passed: it stops every
    /// replica, replaced or not.
    fn drain_deadline_passed(&self, view: &ClusterView, now_ms: u64) -> bool {
        view.drained
            .get(&self.me)
            .is_some_and(|drain| now_ms >= drain.since_unix_ms.saturating_add(drain.deadline_ms))
    }

    /// Whether outdated `record`, which its rollout stops, must first stay retiring (its
    /// service publishes ports and `RETIRE_GRACE_MS` has not passed since it was first
    /// asked to stop); marks it retiring on the first ask.
    fn still_retiring(
        &mut self,
        record: &ContainerRecord,
        spec: &ServiceSpec,
        now_ms: u64,
    ) -> bool {
        if spec.ports.is_empty() {
            return false;
        }
        let since = *self
            .retiring
            .entry(record.id.as_str().to_owned())
            .or_insert(now_ms);
        now_ms < since.saturating_add(RETIRE_GRACE_MS)
    }

    /// Which of this node's current, running containers count for their rollout now.
    fn track_readiness(&mut self, view: &ClusterView, observed: &Observed, now_ms: u64) {
        let mut ready = BTreeSet::new();
        let mut healthy_since = BTreeMap::new();
        for record in &view.own_records {
            let Some(current) = view.services.get(&record.service) else {
                continue;
            };
            // Health is the container's, whatever the version: a replica of an earlier
            // version that a rollback makes current again counts at once.
            let id = record.id.as_str();
            let running = matches!(observed.containers.get(id), Some(ObservedState::Running));
            let healthy = match self.health_of(id, current.spec.health.is_some()) {
                Health::None | Health::Healthy => running,
                Health::Starting | Health::Unhealthy { .. } => false,
            };
            let outdated = is_outdated(record, Some(current), observed);
            if !outdated {
                self.first_seen.entry(id.to_owned()).or_insert(now_ms);
                // Ended for good (its policy will not restart it): done, so it holds up no
                // rollout (a batch job's replica).
                if matches!(observed.containers.get(id), Some(ObservedState::Exited(_)))
                    && self.restarts.gave_up(id)
                {
                    ready.insert(id.to_owned());
                    continue;
                }
            }
            if !healthy {
                continue;
            }
            let since = self.healthy_since.get(id).copied().unwrap_or(now_ms);
            healthy_since.insert(id.to_owned(), since);
            if !outdated && now_ms.saturating_sub(since) >= current.spec.update.min_healthy_ms {
                ready.insert(id.to_owned());
            }
        }
        self.healthy_since = healthy_since;
        self.ready = ready;
    }

    /// The rollout pacing of every service this node runs or should run, and the updates
    /// that failed here.
    fn pace(
        &mut self,
        view: &ClusterView,
        observed: &Observed,
        placement: &super::placement::Placement,
        now_ms: u64,
        plan: &mut Plan,
    ) -> BTreeMap<ServiceName, Pacing> {
        let mut paced = BTreeMap::new();
        self.version_seen
            .retain(|service, _| view.services.contains_key(service));
        for (service, current) in &view.services {
            let seen = self
                .version_seen
                .entry(service.clone())
                .or_insert((current.version, now_ms));
            if seen.0 != current.version {
                *seen = (current.version, now_ms);
            }
            // Replicas on a drained node are replaced like outdated ones: started elsewhere
            // first, stopped once those count.
            let mut replicas: Vec<Replica> = view
                .fleet
                .get(service)
                .into_iter()
                .flatten()
                .map(|replica| {
                    let drained = view.drained.contains_key(&replica.node);
                    Replica {
                        current: replica.current && !drained,
                        ready: replica.ready && !drained,
                        ..replica.clone()
                    }
                })
                .collect();
            let leaving = self.leaving(view, now_ms);
            let mine: Vec<&ContainerRecord> = view
                .own_records
                .iter()
                .filter(|record| &record.service == service)
                .collect();
            // Without an earlier version in the record (the service was removed and
            // written anew) outdated replicas are not paced: they go at once.
            if !current.has_earlier {
                replicas
                    .retain(|replica| replica.current || view.drained.contains_key(&replica.node));
            }
            for record in &mine {
                let outdated = is_outdated(record, Some(current), observed);
                let running = matches!(
                    observed.containers.get(record.id.as_str()),
                    Some(ObservedState::Running)
                );
                if outdated && (!running || !current.has_earlier) {
                    continue;
                }
                replicas.push(Replica {
                    node: self.me.clone(),
                    id: record.id.clone(),
                    current: !outdated && !leaving,
                    ready: !outdated && !leaving && self.ready.contains(record.id.as_str()),
                });
            }
            let wanted = placement.replicas.get(service).cloned().unwrap_or_default();
            let pacing = rollout::pace(
                &self.me,
                &current.spec.update,
                current.spec.update.order,
                &wanted,
                &replicas,
                current.failed.is_some(),
            );
            let all_wanted: u32 = wanted.values().sum();
            let all_ready = replicas.iter().filter(|replica| replica.ready).count();
            if !pacing.updating && all_wanted > 0 && all_ready >= all_wanted as usize {
                self.settled.insert(service.clone(), current.digest.clone());
            }
            if pacing.updating && current.failed.is_none() {
                plan.rolling = true;
            }
            self.check_deadline(service, current, &mine, observed, now_ms, plan);
            paced.insert(service.clone(), pacing);
        }
        paced
    }

    /// Reports the update of `current` failed when one of this node's new replicas is not
    /// ready by `update.healthy_deadline_ms` after this node first saw it, while the
    /// version has an earlier one and was never seen fully rolled out here.
    fn check_deadline(
        &mut self,
        service: &ServiceName,
        current: &ServiceVersion,
        mine: &[&ContainerRecord],
        observed: &Observed,
        now_ms: u64,
        plan: &mut Plan,
    ) {
        let key = (service.clone(), current.version);
        if !current.has_earlier
            || current.failed.is_some()
            || self.settled.get(service) == Some(&current.digest)
            || self.reported_failures.contains(&key)
        {
            return;
        }
        let deadline_ms = current.spec.update.healthy_deadline_ms;
        let version_seen_ms = self
            .version_seen
            .get(service)
            .map_or(now_ms, |(_, at_ms)| *at_ms);
        // A replica of the new version this node could not even start (a refused image, a
        // missing secret) fails the update the same way, once the version is as old as
        // the deadline.
        if let Some(failure) = self.failures.get(service)
            && failure.at_ms >= version_seen_ms
            && now_ms.saturating_sub(version_seen_ms) >= deadline_ms
        {
            plan.update_failures.push(UpdateFailure {
                service: service.clone(),
                version: current.version,
                reason: format!(
                    "a replica on {} did not start within {deadline_ms} ms: {}",
                    self.me, failure.message
                ),
            });
            self.reported_failures.insert(key);
            return;
        }
        for record in mine {
            let id = record.id.as_str();
            if is_outdated(record, Some(current), observed) || self.ready.contains(id) {
                continue;
            }
            let Some(first_seen) = self.first_seen.get(id) else {
                continue;
            };
            if now_ms.saturating_sub((*first_seen).max(version_seen_ms)) < deadline_ms {
                continue;
            }
            let why = match observed.containers.get(id) {
                Some(ObservedState::Running) => {
                    match self.health_of(id, current.spec.health.is_some()) {
                        Health::Unhealthy { reason } => format!("unhealthy: {reason}"),
                        Health::Starting => "its health check has not passed".to_owned(),
                        _ => "it has not run long enough without a break".to_owned(),
                    }
                }
                Some(ObservedState::Exited(exit)) => format!("it exited ({exit:?})"),
                Some(ObservedState::Created) => "it was created but never started".to_owned(),
                Some(ObservedState::Unreadable(reason)) => reason.clone(),
                None => self
                    .failures
                    .get(service)
                    .map_or("it never started".to_owned(), |failure| {
                        failure.message.clone()
                    }),
            };
            plan.update_failures.push(UpdateFailure {
                service: service.clone(),
                version: current.version,
                reason: format!(
                    "replica {id} on {} not ready within {deadline_ms} ms: {why}",
                    self.me
                ),
            });
            self.reported_failures.insert(key);
            return;
        }
    }

    /// Splits this node's records into kept current ones (by service), outdated ones kept
    /// running until their rollout replaces them (by service), and removals.
    #[allow(clippy::type_complexity)]
    fn keep_or_remove(
        &mut self,
        view: &ClusterView,
        observed: &Observed,
        desired: &BTreeMap<ServiceName, u32>,
        pacing: &BTreeMap<ServiceName, Pacing>,
        now_ms: u64,
        plan: &mut Plan,
    ) -> (
        BTreeMap<ServiceName, Vec<ContainerRecord>>,
        BTreeMap<ServiceName, Vec<ContainerRecord>>,
    ) {
        let mut by_service: BTreeMap<&ServiceName, Vec<&ContainerRecord>> = BTreeMap::new();
        for record in &view.own_records {
            by_service.entry(&record.service).or_default().push(record);
        }
        let mut kept: BTreeMap<ServiceName, Vec<ContainerRecord>> = BTreeMap::new();
        let mut outdated: BTreeMap<ServiceName, Vec<ContainerRecord>> = BTreeMap::new();
        for (service, mut records) in by_service {
            let current = view.services.get(service);
            let wanted = desired.get(service).copied().unwrap_or(0) as usize;
            // Current-spec containers first, running before the rest, then the oldest.
            records.sort_by_key(|record| {
                let running = matches!(
                    observed.containers.get(record.id.as_str()),
                    Some(ObservedState::Running)
                );
                (
                    is_outdated(record, current, observed),
                    !running,
                    view.own_written.get(&record.id).copied(),
                    record.id.clone(),
                )
            });
            let paced = pacing.get(service);
            let leaving = self.leaving(view, now_ms);
            let past_drain_deadline = self.drain_deadline_passed(view, now_ms);
            for (index, record) in records.into_iter().enumerate() {
                // On a drained node every replica is on its way out, until the deadline.
                let is_old = is_outdated(record, current, observed) || leaving;
                let running = matches!(
                    observed.containers.get(record.id.as_str()),
                    Some(ObservedState::Running)
                );
                if index < wanted && !is_old {
                    kept.entry(service.clone())
                        .or_default()
                        .push(record.clone());
                } else if is_old
                    && running
                    && !past_drain_deadline
                    && (leaving || current.is_some_and(|current| current.has_earlier))
                    && paced.is_some_and(|paced| paced.updating)
                    && current.is_some_and(|current| {
                        !paced.is_some_and(|paced| paced.stops.contains(&record.id))
                            || self.still_retiring(record, &current.spec, now_ms)
                    })
                {
                    // Still serving until the rollout replaces it.
                    outdated
                        .entry(service.clone())
                        .or_default()
                        .push(record.clone());
                } else {
                    plan.removals.push(Removal {
                        id: record.id.as_str().to_string(),
                        record: Some(record.clone()),
                    });
                }
            }
        }
        (kept, outdated)
    }

    fn restart_if_due(
        &mut self,
        record: &ContainerRecord,
        spec: &ServiceSpec,
        observed: &Observed,
        now_ms: u64,
        plan: &mut Plan,
    ) {
        let id = record.id.as_str();
        let exit = match observed.containers.get(id) {
            Some(ObservedState::Running) => {
                self.restarts.adopt(id, spec, now_ms);
                // Unhealthy counts as a failed exit; the executor stops it before the
                // restart.
                if !matches!(
                    self.health_of(id, spec.health.is_some()),
                    Health::Unhealthy { .. }
                ) {
                    self.restarts.running_again(id);
                    return;
                }
                ExitStatus::Unknown
            }
            Some(ObservedState::Created) => {
                self.restarts.adopt(id, spec, now_ms);
                return;
            }
            Some(ObservedState::Unreadable(_)) => return,
            Some(ObservedState::Exited(exit)) => *exit,
            // Recorded but unknown to the runtime (which keeps ended containers, also
            // across daemon restarts and reboots): the daemon died between recording and
            // starting it. It never ran, so it starts whatever its policy, unless starting
            // it failed a moment ago.
            None => {
                if !self.failed_recently(&record.service, now_ms) {
                    plan.restarts.push(Restart {
                        record: record.clone(),
                        spec: spec.clone(),
                    });
                }
                return;
            }
        };
        if self.restarts.after_exit(id, spec, exit, now_ms) == AfterExit::Due {
            plan.restarts.push(Restart {
                record: record.clone(),
                spec: spec.clone(),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_starts(
        &mut self,
        view: &ClusterView,
        desired: &BTreeMap<ServiceName, u32>,
        kept: &BTreeMap<ServiceName, Vec<ContainerRecord>>,
        outdated: &BTreeMap<ServiceName, Vec<ContainerRecord>>,
        pacing: &BTreeMap<ServiceName, Pacing>,
        now_ms: u64,
        plan: &mut Plan,
    ) {
        let Some(capacity) = view.my_capacity() else {
            return;
        };
        let sync_port = view
            .live_nodes
            .iter()
            .find(|node| node.id == self.me)
            .and_then(|node| node.sync_port);
        let mut reserved = Reserved::with_sync_port(sync_port);
        for record in kept.values().flatten().chain(outdated.values().flatten()) {
            match view.services.get(&record.service) {
                Some(service) => {
                    reserved.add(&service.spec.resources);
                    if service.spec.publish.mode.is_host() {
                        reserved.take_ports(&service.spec.host_ports(), &record.service);
                    }
                }
                None => reserved.add_unknown(),
            }
        }
        for (service, wanted) in desired {
            let Some(current) = view.services.get(service) else {
                continue;
            };
            let have = kept.get(service).map_or(0, Vec::len);
            if self.failed_recently(service, now_ms) {
                continue;
            }
            let allowed = pacing.get(service).map_or(0, |paced| paced.starts as usize);
            let mut in_place = outdated.get(service).cloned().unwrap_or_default();
            for _ in have..(*wanted as usize).min(have + allowed) {
                if plan.starts.len() >= self.settings.starts_per_pass_max {
                    plan.more_to_start = true;
                    return;
                }
                // Placement already dealt these replicas within the same room; this guards
                // that invariant rather than expecting to refuse anything.
                let ports = if current.spec.publish.mode.is_host() {
                    current.spec.host_ports()
                } else {
                    Vec::new()
                };
                let refusal = if !reserved.fits(&capacity, &current.spec.resources) {
                    Some(format!(
                        "node {} has no room: {} cpu_millis and {} memory_bytes reserved of {} and {}",
                        self.me,
                        reserved.cpu_millis,
                        reserved.memory_bytes,
                        capacity.cpu_millis,
                        capacity.memory_bytes
                    ))
                } else {
                    reserved.port_taken(&ports).map(|(port, holder)| {
                        format!(
                            "node {} already publishes host port {port} for {holder}",
                            self.me
                        )
                    })
                };
                if let Some(message) = refusal {
                    // No room beside an outdated replica (its resources or host ports):
                    // replace that one stop-first instead; its place is filled next pass.
                    if let Some(old) = in_place.pop() {
                        if !self.still_retiring(&old, &current.spec, now_ms) {
                            plan.removals.push(Removal {
                                id: old.id.as_str().to_string(),
                                record: Some(old),
                            });
                        }
                        plan.rolling = true;
                        break;
                    }
                    self.failures.insert(
                        service.clone(),
                        Failure {
                            at_ms: now_ms,
                            message,
                        },
                    );
                    break;
                }
                reserved.add(&current.spec.resources);
                reserved.take_ports(&ports, service);
                plan.starts.push(Start {
                    id: self.new_container_id(service),
                    service: service.clone(),
                    spec: current.spec.clone(),
                    version: current.version,
                });
            }
        }
    }

    /// Whether a start of `service` failed less than `retry_after_failure_ms` ago.
    fn failed_recently(&self, service: &ServiceName, now_ms: u64) -> bool {
        self.failures.get(service).is_some_and(|failure| {
            now_ms
                < failure
                    .at_ms
                    .saturating_add(self.settings.retry_after_failure_ms)
        })
    }

    /// A fresh container id: the service name (shortened) and 8 hex digits from the RNG.
    fn new_container_id(&mut self, service: &ServiceName) -> ContainerId {
        let name = service.as_str();
        let mut cut = name.len().min(ID_SERVICE_BYTES_MAX);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let prefix = name[..cut].trim_end_matches('-');
        let suffix = self.rng.next_u32();
        format!("{prefix}-{suffix:08x}")
            .parse()
            .expect("service names are valid container id prefixes")
    }

    /// Takes what the executor did into the bookkeeping.
    pub fn handle_outcomes(&mut self, outcomes: impl IntoIterator<Item = Outcome>, now_ms: u64) {
        for outcome in outcomes {
            match outcome {
                Outcome::Started { id, service, spec }
                | Outcome::Restarted { id, service, spec } => {
                    self.restarts.started(&id, &spec, now_ms);
                    self.failures.remove(&service);
                }
                Outcome::StartFailed { service, message } => {
                    self.failures.insert(
                        service,
                        Failure {
                            at_ms: now_ms,
                            message,
                        },
                    );
                }
                Outcome::RestartFailed {
                    id,
                    service,
                    message,
                } => {
                    self.restarts.restart_failed(&id, now_ms);
                    self.failures.insert(
                        service,
                        Failure {
                            at_ms: now_ms,
                            message,
                        },
                    );
                }
                Outcome::Removed { id } => self.restarts.forget(&id),
            }
        }
    }

    /// Why this node does not run its share of a service, by service.
    pub fn errors(&self) -> BTreeMap<ServiceName, String> {
        self.failures
            .iter()
            .map(|(service, failure)| (service.clone(), failure.message.clone()))
            .collect()
    }

    /// Replicas no live node has room for, by service, as of the last plan.
    pub fn unplaced(&self) -> &BTreeMap<ServiceName, u32> {
        &self.unplaced
    }

    /// Why the unplaced replicas of each service found no node.
    pub fn unplaced_reasons(&self) -> &BTreeMap<ServiceName, String> {
        &self.unplaced_reasons
    }

    /// What this node reports about its own containers, after the outcomes of a pass.
    pub fn status(&self, view: &ClusterView, observed: &Observed) -> shoal_crdt::NodeStatus {
        let mut status = self.health_status(view, observed);
        for (id, container) in &mut status.containers {
            container.spec = observed
                .spec_digests
                .get(id.as_str())
                .map(|digest| short_digest(digest));
            container.ready = self.ready.contains(id.as_str());
            container.retiring = self.retiring.contains_key(id.as_str());
        }
        status
    }

    fn health_status(&self, view: &ClusterView, observed: &Observed) -> shoal_crdt::NodeStatus {
        super::status::node_status(
            &view.own_records,
            observed,
            &self.restarts,
            &self.errors(),
            |record| {
                let running = matches!(
                    observed.containers.get(record.id.as_str()),
                    Some(ObservedState::Running)
                );
                let has_check = view
                    .services
                    .get(&record.service)
                    .is_some_and(|service| service.spec.health.is_some());
                if running {
                    self.health_of(record.id.as_str(), has_check)
                } else {
                    Health::None
                }
            },
        )
    }

    /// The restart bookkeeping (start times and restart counts for `shoal ps`).
    pub fn restarts(&self) -> &Restarts {
        &self.restarts
    }
}

/// Whether `record` runs something other than its service's current spec: an older
/// version, unless the container was created from a spec equal to the current one but for
/// the replica count (its spec digest says so).
fn is_outdated(
    record: &ContainerRecord,
    current: Option<&ServiceVersion>,
    observed: &Observed,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    if record.spec_version == current.version {
        return false;
    }
    // The view computed the current spec's (short) digest once; a pass asks this of every
    // record several times.
    observed
        .spec_digests
        .get(record.id.as_str())
        .is_none_or(|digest| !digest.starts_with(current.digest.as_str()))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
