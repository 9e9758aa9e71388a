//! A node's reconcile loop: one pass of the daemon's own `containers::run_pass` over the
//! simulated node, as `Reconciler::run` makes one (on its interval, when woken, and again at
//! once while starts are left over), and what the simulator does with it: the commits are
//! checked, written down and pushed, and the node is checked after the pass.

use std::cell::Cell;

use shoal_crdt::Delta;
use shoal_crdt::state::Change;

use super::checks;
use super::checks::Violation;
use super::node::Writer;
use super::world::{PassResult, World, trace};
use crate::containers::run_pass;
use crate::schedule::Outcome;

impl World {
    /// One reconcile pass on `node`, as `Reconciler::run` makes one. When a crash inside a
    /// pass is armed (`SimNode::crash_in_pass`) and this pass commits something, the daemon
    /// dies in it: `stopping` says yes on the armed call, so the records are committed and
    /// nothing after is carried out, and no push leaves.
    pub(crate) fn pass(&mut self, node: usize) -> Result<PassResult, Violation> {
        let startup_grace_ms = self.config.down_after_ms;
        if !self.nodes[node].view_is_fresh(self.now_ms, startup_grace_ms) {
            self.stats.passes_waiting_for_sync += 1;
            return Ok(PassResult::default());
        }
        let crash_in_pass = self.nodes[node].crash_in_pass;
        let before = self.nodes[node].runtime.specs();
        let calls = Cell::new(0u32);
        let report = {
            let sim = &self.nodes[node];
            let stopping = || {
                calls.set(calls.get() + 1);
                crash_in_pass.is_some_and(|after| calls.get() >= after && sim.has_committed())
            };
            run_pass(
                &sim.state,
                &sim.planner,
                &sim.executor,
                sim.clock.as_ref(),
                &stopping,
            )
        };
        let crashed = crash_in_pass.is_some() && report.cut_short;
        self.stats.passes += 1;
        let mut changed = false;
        for outcome in &report.outcomes {
            match outcome {
                Outcome::Started { .. } => self.stats.containers_started += 1,
                Outcome::Restarted { .. } => self.stats.containers_restarted += 1,
                Outcome::Removed { .. } => self.stats.containers_removed += 1,
                Outcome::StartFailed { .. } | Outcome::RestartFailed { .. } => {
                    self.stats.starts_failed += 1
                }
            }
            // A start refused (a bad image) is retried forever and changes nothing; a failed
            // restart is counted as a run of its container, whose next exit is then waited
            // out, so the node is not at rest.
            changed |= !matches!(outcome, Outcome::StartFailed { .. });
        }
        let committed = self.nodes[node].take_committed();
        if !report.plan.is_idle() || !report.outcomes.is_empty() || report.cut_short {
            let id = self.nodes[node].id.clone();
            trace!(
                self,
                "{id}: pass{}: {}{}",
                if report.cut_short { " (cut short)" } else { "" },
                describe_outcomes(&report.outcomes),
                describe_records(&committed)
            );
        }
        changed |= !committed.is_empty();
        self.note_transitions(node, &report.plan, &committed, &before);
        if crashed {
            let started: Vec<&str> = report
                .outcomes
                .iter()
                .filter_map(|outcome| match outcome {
                    Outcome::Started { id, .. } => Some(id.as_str()),
                    _ => None,
                })
                .collect();
            for id in recorded(&committed) {
                if !started.contains(&id) {
                    self.ledger.never_started(node, id, self.now_ms);
                }
            }
        }
        for delta in committed {
            self.local_change(node, Writer::Pass, &delta, !crashed)?;
        }
        if crashed {
            self.daemon_died(node);
        } else if !report.cut_short {
            checks::after_pass(&self.nodes[node], &self.ledger)?;
        }
        let more_to_start = report.plan.more_to_start && !report.cut_short;
        if more_to_start {
            self.wake(node);
        }
        Ok(PassResult {
            changed,
            more_to_start,
        })
    }
}

/// The container ids the commits recorded (`true`) or forgot (`false`).
fn record_changes(committed: &[Delta]) -> impl Iterator<Item = (&str, bool)> {
    committed
        .iter()
        .flat_map(Delta::changes)
        .filter_map(|change| match change {
            Change::Container { id, entry, .. } => Some((id.as_str(), entry.value.is_some())),
            _ => None,
        })
}

/// The container ids the commits recorded.
fn recorded(committed: &[Delta]) -> Vec<&str> {
    record_changes(committed)
        .filter(|(_, added)| *added)
        .map(|(id, _)| id)
        .collect()
}

/// The records the pass's commits added and removed, for the trace.
fn describe_records(committed: &[Delta]) -> String {
    let (added, removed): (Vec<_>, Vec<_>) =
        record_changes(committed).partition(|(_, added)| *added);
    let added: Vec<&str> = added.into_iter().map(|(id, _)| id).collect();
    let removed: Vec<&str> = removed.into_iter().map(|(id, _)| id).collect();
    let mut described = String::new();
    if !added.is_empty() {
        described.push_str(&format!("; recorded {}", added.join(" ")));
    }
    if !removed.is_empty() {
        described.push_str(&format!("; forgot {}", removed.join(" ")));
    }
    described
}

fn describe_outcomes(outcomes: &[Outcome]) -> String {
    let described: Vec<String> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Outcome::Started { id, .. } => format!("started {id}"),
            Outcome::Restarted { id, .. } => format!("restarted {id}"),
            Outcome::Removed { id } => format!("removed {id}"),
            Outcome::StartFailed { service, message } => {
                format!("start of {service} failed ({message})")
            }
            Outcome::RestartFailed { id, message, .. } => {
                format!("restart of {id} failed ({message})")
            }
        })
        .collect();
    if described.is_empty() {
        "nothing to do".to_string()
    } else {
        described.join(", ")
    }
}
