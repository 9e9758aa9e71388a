//! What this node reports about its own containers (`shoal_crdt::NodeStatus`), read from
//! its records, what the runtime holds and the planner's restart bookkeeping. Pure: the
//! pass writes the result to the replicated state when it differs from the last report,
//! so every node's `shoal ps` shows the real state of every container.

use std::collections::BTreeMap;

use shoal_crdt::status::bounded_reason;
use shoal_crdt::{ContainerRecord, ContainerStatus, Health, NodeStatus, RunState, ServiceName};
use shoal_oci::ExitStatus;

use super::plan::{Observed, ObservedState};
use super::restarts::Restarts;

/// The status of every container in `own_records`, and this node's service errors.
/// `health` gives a container's health (`Health::None` for one without a check).
pub fn node_status(
    own_records: &[ContainerRecord],
    observed: &Observed,
    restarts: &Restarts,
    errors: &BTreeMap<ServiceName, String>,
    health: impl Fn(&ContainerRecord) -> Health,
) -> NodeStatus {
    let containers = own_records
        .iter()
        .map(|record| {
            let id = record.id.as_str();
            let state = match observed.containers.get(id) {
                None | Some(ObservedState::Created) => RunState::Starting,
                Some(ObservedState::Running) => RunState::Running,
                Some(ObservedState::Exited(exit)) => {
                    let (code, signal) = match exit {
                        ExitStatus::Code(code) => (Some(*code), None),
                        ExitStatus::Signal(signal) => (None, Some(*signal)),
                        ExitStatus::Unknown => (None, None),
                    };
                    if restarts.gave_up(id) {
                        RunState::Exited { code, signal }
                    } else {
                        RunState::Restarting { code, signal }
                    }
                }
                Some(ObservedState::Unreadable(reason)) => RunState::Failed {
                    reason: bounded_reason(reason),
                },
            };
            let status = ContainerStatus {
                state,
                started_unix_ms: restarts.since_ms(id),
                restarts: restarts.consecutive_restarts(id),
                health: match health(record) {
                    Health::Unhealthy { reason } => Health::Unhealthy {
                        reason: bounded_reason(&reason),
                    },
                    health => health,
                },
                spec: None,
                ready: false,
                retiring: false,
            };
            (record.id.clone(), status)
        })
        .collect();
    NodeStatus {
        containers,
        errors: errors
            .iter()
            .map(|(service, message)| (service.clone(), bounded_reason(message)))
            .collect(),
    }
}
