//! What the metrics endpoint reads from the node just before a scrape: members by liveness
//! (SWIM's suspicion apart)
//! and this node's containers by state, as gauges. Read from the replicated state, so a
//! scrape never touches the container runtime; this node's containers are the ones its
//! last status report names, which it rewrites whenever its runtime changes.

use shoal_crdt::RunState;

use crate::metrics::Metrics;
use crate::state::Node;
use crate::state::members::PeerState;

/// Sets the sampled gauges of `metrics` from `node`.
pub fn sample(node: &Node, metrics: &Metrics) {
    let members = node.members();
    let suspect = members
        .iter()
        .filter(|member| {
            member.live
                && member
                    .swim
                    .as_ref()
                    .is_some_and(|swim| swim.state == PeerState::Suspect)
        })
        .count();
    let live = members.iter().filter(|member| member.live).count() - suspect;
    let down = members.len() - live - suspect;
    metrics.set_members([
        ("live", count(live)),
        ("suspect", count(suspect)),
        ("down", count(down)),
    ]);
    let states: Vec<&'static str> = node.read_state(|state| {
        state
            .node_status(node.node_id())
            .map(|status| {
                status
                    .containers
                    .values()
                    .map(|container| state_name(&container.state))
                    .collect()
            })
            .unwrap_or_default()
    });
    metrics.set_containers(states);
}

fn count(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The `state` label of a container's run state (`metrics::CONTAINER_STATES`).
fn state_name(state: &RunState) -> &'static str {
    match state {
        RunState::Starting => "starting",
        RunState::Running => "running",
        RunState::Exited { .. } => "exited",
        RunState::Restarting { .. } => "restarting",
        RunState::Failed { .. } => "failed",
    }
}
