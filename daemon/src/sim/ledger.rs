//! What the simulator writes down along a run for the checks: every container id a node
//! recorded and every one it removed (ids are never reused, and a removed one never comes
//! back), every service removal with its HLC, and how each container last ended without its
//! node deciding it (an exit on its own, lost with its machine, or never started because its
//! daemon died right after recording it), which says whether its restart policy may leave
//! it stopped.

use super::checks::Violation;
use std::collections::{BTreeMap, BTreeSet};

use shoal_crdt::state::Change;
use shoal_crdt::{ContainerId, Delta, NodeId, RestartPolicy, ServiceName, Timestamp};
use shoal_oci::ExitStatus;

/// Exits the simulator causes per container at most: well under the `on-failure` limit
/// (`restarts::ON_FAILURE_RESTARTS_MAX`), so a container that should be restarted is.
pub(crate) const EXITS_PER_CONTAINER_MAX: u32 = 3;

/// One removal: its writer, the dot counter and HLC of the write, and when it was made. A
/// removal counts once the converged state holds its write: a node lost for good may take
/// a removal nobody received with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removal {
    pub(crate) by: NodeId,
    pub(crate) counter: u64,
    pub(crate) hlc: Timestamp,
    pub(crate) at_ms: u64,
}

/// How a container last ended without its node deciding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// It exited on its own, or its machine lost power while it ran (`ExitStatus::Unknown`,
    /// as the runtime reports it after the reboot).
    Exit(ExitStatus),
    /// A pass recorded it and its daemon died before starting it, at this simulated time.
    NeverStarted { at_ms: u64 },
}

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Container ids ever recorded, with the node that recorded them.
    recorded: BTreeMap<ContainerId, NodeId>,
    /// Container ids whose record was removed, and by which write.
    removed: BTreeMap<ContainerId, Removal>,
    /// Service removals, by which write.
    service_removals: Vec<(ServiceName, Removal)>,
    /// Per (node index, container id): how it last ended on its own.
    ended: BTreeMap<(usize, String), End>,
    /// Exits the simulator caused, per container id.
    exits: BTreeMap<String, u32>,
}

impl Ledger {
    /// Takes the record changes of a pass's delta by `writer`; a recorded id that was used
    /// before is a failure.
    pub(crate) fn pass_delta(
        &mut self,
        writer: &NodeId,
        delta: &Delta,
        now_ms: u64,
    ) -> Result<(), Violation> {
        let mut added = BTreeSet::new();
        for change in delta.changes() {
            if let Change::Container { id, entry, .. } = change
                && entry.value.is_some()
            {
                if let Some(removal) = self.removed.get(id) {
                    return Err(Violation(format!(
                        "{writer} recorded container {id} again, which {} removed at {} ms",
                        removal.by, removal.at_ms
                    )));
                }
                if let Some(first) = self.recorded.get(id) {
                    return Err(Violation(format!(
                        "{writer} recorded container {id}, an id {first} recorded before"
                    )));
                }
                added.insert(id.clone());
                self.recorded.insert(id.clone(), writer.clone());
            }
        }
        for change in delta.changes() {
            if let Change::Container { id, entry, .. } = change
                && entry.value.is_none()
                && !added.contains(id)
            {
                self.removed.entry(id.clone()).or_insert_with(|| Removal {
                    by: writer.clone(),
                    counter: entry.dot.counter,
                    hlc: entry.hlc,
                    at_ms: now_ms,
                });
            }
        }
        Ok(())
    }

    /// Takes the service removals of an operator's delta by `writer`.
    pub(crate) fn operator_delta(&mut self, writer: &NodeId, delta: &Delta, now_ms: u64) {
        for change in delta.changes() {
            if let Change::Service { name, entry } = change
                && entry.value.is_none()
            {
                let removal = Removal {
                    by: writer.clone(),
                    counter: entry.dot.counter,
                    hlc: entry.hlc,
                    at_ms: now_ms,
                };
                self.service_removals.push((name.clone(), removal));
            }
        }
    }

    pub(crate) fn service_removals(&self) -> &[(ServiceName, Removal)] {
        &self.service_removals
    }

    pub(crate) fn removed(&self) -> &BTreeMap<ContainerId, Removal> {
        &self.removed
    }

    pub(crate) fn was_removed(&self, id: &str) -> Option<&Removal> {
        let id: ContainerId = id.parse().ok()?;
        self.removed.get(&id)
    }

    /// A container of node `node` ended without its node deciding it.
    pub(crate) fn ended(&mut self, node: usize, id: &str, exit: ExitStatus) {
        self.ended.insert((node, id.to_string()), End::Exit(exit));
    }

    /// A pass of node `node` recorded a container and its daemon died before starting it.
    pub(crate) fn never_started(&mut self, node: usize, id: &str, at_ms: u64) {
        self.ended
            .insert((node, id.to_string()), End::NeverStarted { at_ms });
    }

    /// A container exit the simulator causes; false when that container had its share.
    pub(crate) fn may_exit(&self, id: &str) -> bool {
        self.exits.get(id).copied().unwrap_or(0) < EXITS_PER_CONTAINER_MAX
    }

    pub(crate) fn exited(&mut self, node: usize, id: &str, exit: ExitStatus) {
        *self.exits.entry(id.to_string()).or_default() += 1;
        self.ended(node, id, exit);
    }

    /// Whether a container of node `node` may be left stopped under `policy`: only when its
    /// last end is one the policy does not restart. A container that never ended must run.
    pub(crate) fn may_stay_stopped(
        &self,
        node: usize,
        id: &str,
        policy: RestartPolicy,
    ) -> Result<(), Violation> {
        let exit = match self.ended.get(&(node, id.to_string())) {
            None => return Err(Violation("it never ended on its own".to_string())),
            Some(End::NeverStarted { at_ms }) => {
                return Err(Violation(format!(
                    "it never ran: its pass recorded it at {at_ms} ms, the daemon died before \
                     starting it, and no daemon started it since"
                )));
            }
            Some(End::Exit(exit)) => exit,
        };
        match policy {
            RestartPolicy::Never => Ok(()),
            RestartPolicy::OnFailure if exit.success() => Ok(()),
            RestartPolicy::OnFailure | RestartPolicy::Always => Err(Violation(format!(
                "it last ended with {exit:?}, which {policy:?} restarts"
            ))),
        }
    }
}
