//! The faults one seed injects, and when: containers that exit on their own, machines lost
//! (containers and namespaces gone, no heartbeat) that return with their disk or never,
//! daemons that crash (sometimes inside a pass, after its commit) and restart with a new
//! planner, container creates that fail, and partitions that form and heal (`network`).
//! The machine lost for good takes part in no other fault, so it stays lost.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use shoal_oci::ExitStatus;

use super::checks::Violation;
use super::node::Status;
use super::world::{Event, World, trace};

impl World {
    /// Schedules the first operator command and container exit (each schedules the next)
    /// and every fault the scenario drew.
    pub(crate) fn schedule_faults(&mut self) {
        let duration_ms = self.config.duration_ms;
        let command = self
            .rng
            .gen_range(1..=self.scenario.command_interval_ms_mean);
        self.schedule(command, Event::Command);
        let exit = self.rng.gen_range(1..=self.scenario.exit_interval_ms_mean);
        self.schedule(exit, Event::ContainerExit);
        if self.scenario.partitions {
            let at = self.rng.gen_range(0..duration_ms / 2);
            self.schedule(at, Event::Partition);
        }
        let mortal: Vec<usize> = (0..self.nodes.len())
            .filter(|node| !self.scenario.is_dead(*node))
            .collect();
        for _ in 0..self.scenario.machine_losses {
            let node = *mortal.choose(&mut self.rng).expect("at least three nodes");
            let at = self.rng.gen_range(duration_ms / 20..duration_ms * 3 / 4);
            self.schedule(at, Event::LoseMachine(node));
        }
        if let Some((node, at)) = self.scenario.dead {
            self.schedule(at, Event::LoseMachine(node));
        }
        for _ in 0..self.scenario.daemon_crashes {
            let node = *mortal.choose(&mut self.rng).expect("at least three nodes");
            let at = self.rng.gen_range(duration_ms / 20..duration_ms * 3 / 4);
            let mid_pass = self.rng.gen_bool(0.5);
            self.schedule(at, Event::CrashDaemon { node, mid_pass });
        }
        for _ in 0..self.scenario.create_failures {
            let node = *mortal.choose(&mut self.rng).expect("at least three nodes");
            let at = self.rng.gen_range(0..duration_ms);
            self.schedule(at, Event::FailNextCreate(node));
        }
    }

    pub(crate) fn container_exit(&mut self) -> Result<(), Violation> {
        let mut candidates = Vec::new();
        for (index, node) in self.nodes.iter().enumerate() {
            if node.status == Status::MachineGone {
                continue;
            }
            for id in node.runtime.running() {
                if self.ledger.may_exit(&id) {
                    candidates.push((index, id));
                }
            }
        }
        let Some((node, id)) = candidates.choose(&mut self.rng).cloned() else {
            return Ok(());
        };
        let exit = match self.rng.gen_range(0..20) {
            0..=6 => ExitStatus::Code(0),
            7..=14 => ExitStatus::Code(1),
            _ => ExitStatus::Signal(9),
        };
        self.nodes[node]
            .runtime
            .finish(&id, exit)
            .map_err(|error| format!("finishing {id}: {error}"))?;
        self.ledger.exited(node, &id, exit);
        self.stats.container_exits += 1;
        trace!(
            self,
            "{}: container {id} exits with {exit:?}", self.nodes[node].id
        );
        Ok(())
    }

    pub(crate) fn lose_machine(&mut self, node: usize) {
        if self.nodes[node].status == Status::MachineGone {
            return;
        }
        let lost = self.nodes[node].lose_machine(node);
        for id in &lost {
            self.ledger.ended(node, id, ExitStatus::Unknown);
        }
        let id = self.nodes[node].id.clone();
        if self.scenario.is_dead(node) {
            self.stats.machines_dead += 1;
            trace!(
                self,
                "{id}: machine lost for good with {} containers",
                lost.len()
            );
        } else {
            self.stats.machine_losses += 1;
            trace!(self, "{id}: machine lost with {} containers", lost.len());
            let back_at = self.now_ms + self.rng.gen_range(2_000..=12_000);
            self.schedule(back_at, Event::ReturnMachine(node));
        }
    }

    /// The machine is back with its disk (the replica and the runtime's ended
    /// containers); its daemon starts.
    pub(crate) fn return_machine(&mut self, node: usize) -> Result<(), Violation> {
        self.stats.machine_returns += 1;
        trace!(self, "{}: machine returns", self.nodes[node].id);
        self.start_daemon(node)
    }

    /// The daemon crashes now, or (`mid_pass`) inside its next pass that commits something,
    /// after the commit: the case "a record exists before its container starts" is for.
    pub(crate) fn crash_daemon(&mut self, node: usize, mid_pass: bool) {
        let id = self.nodes[node].id.clone();
        if mid_pass {
            let after = self.rng.gen_range(1..=3);
            self.nodes[node].crash_in_pass = Some(after);
            trace!(
                self,
                "{id}: daemon will crash inside its next pass that commits"
            );
        } else {
            trace!(self, "{id}: daemon crashes");
            self.daemon_died(node);
        }
    }

    /// The daemon is gone (its containers stay); it restarts a little later.
    pub(crate) fn daemon_died(&mut self, node: usize) {
        if self.nodes[node].crash_in_pass.take().is_some() {
            self.stats.daemon_crashes_mid_pass += 1;
            trace!(
                self,
                "{}: daemon crashed inside the pass", self.nodes[node].id
            );
        }
        self.stats.daemon_crashes += 1;
        self.nodes[node].status = Status::DaemonDown;
        let restart_at = self.now_ms + self.rng.gen_range(500..=6_000);
        self.schedule(restart_at, Event::RestartDaemon(node));
    }

    pub(crate) fn restart_daemon(&mut self, node: usize) -> Result<(), Violation> {
        trace!(self, "{}: daemon restarts", self.nodes[node].id);
        self.start_daemon(node)
    }

    /// A daemon starts: new planner, first heartbeat, first anti-entropy round (as
    /// `agent::run` does).
    fn start_daemon(&mut self, node: usize) -> Result<(), Violation> {
        let seed = self.rng.next_u64();
        let settings = self.settings;
        let now_ms = self.now_ms;
        self.nodes[node].start_daemon(settings, seed, now_ms);
        self.heartbeat(node)?;
        if !self.settling {
            self.gossip_round(node);
        }
        Ok(())
    }
}
