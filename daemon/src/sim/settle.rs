//! After the faults: the network heals and stops losing or duplicating, every machine but a
//! dead one returns, every crashed daemon restarts, and what is still in flight is
//! delivered. Then the cluster runs in rounds until it comes to rest, at most
//! `Config::settle_rounds_max` of them. One round:
//! 1. time moves `SETTLE_STEP_MS` forward: past any restart backoff (30 s at most) and past
//!    `down_after_ms`, so a dead machine is down for everyone and a restart that was
//!    waiting is due;
//! 2. every node heartbeats, so every up node is live for everyone;
//! 3. every node exchanges with one hub and the hub with every node: all replicas equal;
//! 4. every node runs its pass, again while it has starts left over (as `Reconciler::run`).
//!
//! A round changed something when a pass committed a delta or started, restarted or removed
//! a container, or failed to restart one (its next try waits for a backoff); a start refused
//! for a bad image changes nothing: it is retried forever.
//! Two quiet rounds in a row are rest: the first could be quiet only because a restart was
//! waiting for its backoff, which the second is past.
//!
//! The bound: placement depends only on the specs, the live members and their capacities,
//! all final after round 1. Round 1 starts and removes what placement says and sees what
//! ended; round 2 restarts what was waiting; a restart that fails there (a create failure
//! armed during the faults, at most one per node) is waited out in round 3 and done in
//! round 4; two quiet rounds confirm. That was six at most before rolling updates.
//!
//! Rolling updates add rounds: a paced replacement starts in one round and counts in the
//! next (`min_healthy_ms` is shorter than a round), where its outdated replica stops and the
//! next slot starts, so a service rolls about one round per `max_parallel` replicas (at most
//! `REPLICAS_MAX` 8); a failed update waits its deadline (60 s: two rounds) and its rollback
//! rolls again. Services roll side by side. The most 1,000 seeds took is 19;
//! `Config::settle_rounds_max` (30) leaves room without hiding a rollout that never ends.

use super::checks::Violation;
use super::node::Status;
use super::world::{Event, World, trace};

/// Simulated time between two settle rounds: longer than the longest restart backoff
/// (`RestartTracker::new`: 30 s) and than `down_after_ms`.
const SETTLE_STEP_MS: u64 = 31_000;
/// Passes of one node in one round at most (each starts up to `STARTS_PER_PASS_MAX`).
const PASSES_PER_ROUND_MAX: usize = 64;

impl World {
    /// Brings the cluster to rest; returns how many rounds it took.
    pub(crate) fn settle(&mut self) -> Result<usize, Violation> {
        assert!(
            SETTLE_STEP_MS > self.config.down_after_ms,
            "a settle round outlasts down_after_ms"
        );
        self.settling = true;
        for node in &mut self.nodes {
            node.crash_in_pass = None;
        }
        self.network.heal();
        self.network.make_reliable();
        trace!(self, "faults over: network healed and reliable");
        for node in 0..self.nodes.len() {
            match self.nodes[node].status {
                Status::MachineGone if !self.scenario.is_dead(node) => self.return_machine(node)?,
                Status::DaemonDown => self.restart_daemon(node)?,
                _ => {}
            }
        }
        self.drain()?;
        let mut quiet = 0;
        for round in 1..=self.config.settle_rounds_max {
            let changes = self.settle_round()?;
            trace!(self, "settle round {round}: {changes:?}");
            if changes.is_empty() {
                quiet += 1;
                if quiet == 2 {
                    return Ok(round);
                }
            } else {
                quiet = 0;
            }
        }
        Err(Violation(format!(
            "the cluster did not come to rest in {} settle rounds",
            self.config.settle_rounds_max
        )))
    }

    /// Delivers every message still in flight (and the answers they cause); drops timers.
    fn drain(&mut self) -> Result<(), Violation> {
        while let Some(((at_ms, _), event)) = self.queue.pop_first() {
            if let Event::Deliver(envelope) = event {
                self.advance_to(at_ms.max(self.now_ms));
                self.count_event()?;
                self.deliver(envelope)?;
            }
        }
        Ok(())
    }

    /// One round; returns what changed, by node (empty when quiet).
    fn settle_round(&mut self) -> Result<Vec<String>, Violation> {
        self.advance_to(self.now_ms + SETTLE_STEP_MS);
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|node| self.nodes[*node].is_running())
            .collect();
        let Some((&hub, others)) = up.split_first() else {
            return Err(Violation("no node is up after the faults".to_string()));
        };
        for &node in &up {
            self.heartbeat(node)?;
        }
        for &node in others {
            self.exchange(hub, node)?;
        }
        for &node in others {
            self.exchange(node, hub)?;
        }
        // Every node holds one state now: the passes of the last round are judged here.
        self.transitions.views_moved();
        self.check_transitions()?;
        let mut changes = Vec::new();
        for &node in &up {
            for pass in 1.. {
                if pass > PASSES_PER_ROUND_MAX {
                    return Err(Violation(format!(
                        "{} still had starts left after {PASSES_PER_ROUND_MAX} passes",
                        self.nodes[node].id
                    )));
                }
                let result = self.pass(node)?;
                if result.changed {
                    changes.push(self.nodes[node].id.to_string());
                }
                if !result.more_to_start {
                    break;
                }
            }
        }
        changes.dedup();
        Ok(changes)
    }
}
