//! One reconcile pass: observe, plan, commit, act. The same function runs in the daemon
//! (against the `Node`, the libcontainer runtime and the real network) and in the cluster
//! simulator (against a bare replica, `FakeRuntime` and `FakeNetwork`); the `StatePort`
//! trait is the difference.
//!
//! The order and why:
//! 1. read the converged view and observe the runtime, then let the planner decide;
//! 2. prepare the images and workloads (env files, secrets, volumes) of everything the plan
//!    (re)starts, so a bad image or a missing secret is an error on its service before
//!    anything is written;
//! 3. commit the plan's record changes as one batch — new records with their addresses,
//!    removed records forgotten, counters following records: one durable commit, one push.
//!    A record exists before its container starts, so a daemon that dies in between finds
//!    the record and starts it; a container whose record is gone is an orphan and removed;
//! 4. stop and delete what is removed, restart what is due, create and start what is new;
//! 5. a start that failed is undone by a second commit (only then is there a second);
//! 6. the outcomes go back to the planner; then, from a fresh view and observation: routes,
//!    leftover namespaces and the firewall (published ports, egress), and this node's
//!    container status report, written to the state only when it changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shoal_crdt::{ContainerRecord, NodeStatus, ServiceName};
use shoal_oci::PreparedImage;

use super::executor::{ExecError, Executor};
use super::health::{HealthTarget, health_targets};
use crate::schedule::plan::UpdateFailure;
use crate::schedule::ports::port_plan;
use crate::schedule::records::{self, BatchResult, NewRecord, RecordBatch};
use crate::schedule::{ClusterView, Outcome, Plan, Planner};
use crate::state::{Clock, Node, NodeError};

/// What a pass reads and writes of the replicated state.
pub trait StatePort {
    /// The converged view at this instant.
    fn view(&self) -> ClusterView;
    /// Applies a record batch as one durable change (nothing when it changes nothing).
    fn commit(&self, batch: &RecordBatch) -> Result<BatchResult, NodeError>;
    /// Writes this node's container status report if it changed (one durable change).
    fn report_status(&self, status: &NodeStatus) -> Result<(), NodeError>;
    /// Writes what a failed update leaves: a rollback or a pause (one durable change).
    fn fail_update(&self, failure: &UpdateFailure) -> Result<bool, NodeError>;
}

impl StatePort for Node {
    fn view(&self) -> ClusterView {
        self.read_with_live(|state, live| ClusterView::read(state, self.node_id(), live))
    }

    fn commit(&self, batch: &RecordBatch) -> Result<BatchResult, NodeError> {
        self.write_batch(|replica, now| records::apply_batch(replica, now, batch))
    }

    fn report_status(&self, status: &NodeStatus) -> Result<(), NodeError> {
        self.write_batch(|replica, now| records::report_status(replica, now, status))?
            .map(|_| ())
            .map_err(|source| NodeError::Operation {
                what: "container status report".to_owned(),
                source,
            })
    }

    fn fail_update(&self, failure: &UpdateFailure) -> Result<bool, NodeError> {
        self.write_batch(|replica, now| records::fail_update(replica, now, failure))?
            .map_err(|source| NodeError::Operation {
                what: format!("the failed update of {}", failure.service),
                source,
            })
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub plan: Plan,
    pub outcomes: Vec<Outcome>,
    /// The pass stopped early (shutdown, or the commit failed).
    pub cut_short: bool,
    /// Running containers with a health check, as the pass saw them at its end (empty when
    /// it was cut short).
    pub health_targets: Vec<HealthTarget>,
}

/// Runs one pass. `stopping` is asked between steps; when it says yes the pass returns
/// early and leaves running containers alone.
pub fn run_pass(
    state: &dyn StatePort,
    planner: &Mutex<Planner>,
    executor: &Executor,
    clock: &dyn Clock,
    stopping: &dyn Fn() -> bool,
) -> PassReport {
    let lock = || planner.lock().unwrap_or_else(|poison| poison.into_inner());
    let view = state.view();
    let observed = executor.observe();
    let plan = lock().plan(&view, &observed, clock.now_ms());
    let mut report = PassReport {
        plan: plan.clone(),
        ..PassReport::default()
    };
    for failure in &plan.update_failures {
        match state.fail_update(failure) {
            Ok(true) => tracing::warn!(
                service = %failure.service,
                reason = %failure.reason,
                rollback = view
                    .services
                    .get(&failure.service)
                    .is_some_and(|service| service.spec.update.auto_rollback),
                "update failed"
            ),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "cannot record a failed update"),
        }
    }

    // Images and workloads first: a bad image or a missing secret is an error on its
    // service, and nothing is recorded.
    type Prepared = Result<PreparedImage, Arc<ExecError>>;
    let mut images: BTreeMap<(String, Option<String>), Prepared> = BTreeMap::new();
    let mut image_of = |spec: &shoal_crdt::ServiceSpec| {
        let image = images
            .entry((spec.image.clone(), spec.image_digest.clone()))
            .or_insert_with(|| executor.prepare_image(spec).map_err(Arc::new))
            .clone()
            .map_err(|error| error.to_string())?;
        let workload = executor
            .prepare_workload(spec)
            .map_err(|error| error.to_string())?;
        Ok((image, workload))
    };
    let mut starts = Vec::new();
    for start in &plan.starts {
        match image_of(&start.spec) {
            Ok(image) => starts.push((start, image)),
            Err(message) => report.outcomes.push(Outcome::StartFailed {
                service: start.service.clone(),
                message,
            }),
        }
    }
    let mut restarts = Vec::new();
    for restart in &plan.restarts {
        match image_of(&restart.spec) {
            Ok(image) => restarts.push((restart, image)),
            Err(message) => report.outcomes.push(Outcome::RestartFailed {
                id: restart.record.id.as_str().to_string(),
                service: restart.record.service.clone(),
                message,
            }),
        }
    }
    // One failed image fails every start of its service this pass.
    let failed: Vec<ServiceName> = report
        .outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::StartFailed { service, .. } => Some(service.clone()),
            _ => None,
        })
        .collect();
    starts.retain(|(start, _)| !failed.contains(&start.service));

    let batch = RecordBatch {
        add: starts
            .iter()
            .map(|(start, _)| NewRecord {
                id: start.id.clone(),
                service: start.service.clone(),
                spec_version: start.version,
                with_ip: plan.with_ip,
            })
            .collect(),
        forget: plan
            .removals
            .iter()
            .filter_map(|removal| removal.record.clone())
            .collect(),
    };
    let committed = match state.commit(&batch) {
        Ok(committed) => committed,
        Err(error) => {
            tracing::warn!(%error, "cannot commit the pass's container records; trying again next pass");
            report.cut_short = true;
            return finish(report, planner, clock);
        }
    };
    for error in &committed.errors {
        tracing::warn!(%error, "a container record change was refused");
    }
    if stopping() {
        report.cut_short = true;
        return finish(report, planner, clock);
    }

    report.outcomes.extend(executor.remove(&plan.removals));
    for (restart, (image, workload)) in restarts {
        if stopping() {
            report.cut_short = true;
            return finish(report, planner, clock);
        }
        let id = restart.record.id.as_str().to_string();
        let service = restart.record.service.clone();
        report.outcomes.push(
            match executor.restart(&restart.record, &restart.spec, image, workload) {
                Ok(()) => Outcome::Restarted {
                    id,
                    service,
                    spec: restart.spec.clone(),
                },
                Err(error) => {
                    tracing::warn!(container = %id, %error, "restart failed");
                    Outcome::RestartFailed {
                        id,
                        service,
                        message: error.to_string(),
                    }
                }
            },
        );
    }

    let mut undo: Vec<ContainerRecord> = Vec::new();
    for ((start, (image, workload)), added) in starts.into_iter().zip(committed.added) {
        if stopping() {
            report.cut_short = true;
            break;
        }
        let result = added.map_err(|error| error.to_string()).and_then(|record| {
            executor
                .start(&record, &start.spec, image, workload)
                .map_err(|error: ExecError| {
                    undo.push(record);
                    error.to_string()
                })
        });
        report.outcomes.push(match result {
            Ok(()) => Outcome::Started {
                id: start.id.as_str().to_string(),
                service: start.service.clone(),
                spec: start.spec.clone(),
            },
            Err(message) => {
                tracing::warn!(service = %start.service, error = %message, "cannot start a container");
                Outcome::StartFailed {
                    service: start.service.clone(),
                    message,
                }
            }
        });
    }
    if !undo.is_empty() {
        match state.commit(&RecordBatch {
            add: Vec::new(),
            forget: undo,
        }) {
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot undo the records of failed starts"),
        }
    }
    let mut report = finish(report, planner, clock);
    if !report.cut_short {
        let view = state.view();
        let observed = executor.observe();
        let guard = lock();
        let status = guard.status(&view, &observed);
        let mut targets = health_targets(&view, &observed, guard.restarts());
        drop(guard);
        for target in targets.iter_mut().filter(|target| target.ip.is_none()) {
            target.pid = executor
                .runtime()
                .state(&target.id)
                .ok()
                .and_then(|state| state.pid);
        }
        report.health_targets = targets;
        let ports = port_plan(&view, &observed, &status);
        executor.sync_network(
            plan.routes.as_deref(),
            &plan.leftover_attachments,
            ports.as_ref(),
        );
        if let Err(error) = state.report_status(&status) {
            tracing::warn!(%error, "cannot write this node's container status");
        }
    }
    report
}

fn finish(report: PassReport, planner: &Mutex<Planner>, clock: &dyn Clock) -> PassReport {
    planner
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .handle_outcomes(report.outcomes.clone(), clock.now_ms());
    report
}

#[cfg(test)]
#[path = "pass_tests.rs"]
mod tests;
