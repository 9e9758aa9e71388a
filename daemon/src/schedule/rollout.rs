//! Rolling updates without a leader: how far one node may go in replacing its outdated
//! replicas of a service, decided from the converged view alone, the same on every node.
//!
//! Per service, a replica on a live node is *current* (it runs the current spec, the
//! replica count aside), *ready* (current, and its node reports it has run, healthy if
//! checked, for `update.min_healthy_ms`), or *outdated*. Placement gives each live node its
//! count `on(n)`. While any outdated replica is left, the update paces itself:
//!
//! - *in transition* are the current replicas not yet ready, plus the holes: places a node
//!   should fill where it runs neither a current nor an outdated replica;
//! - the *replacement slots* are, node by node in node-id order, the outdated replicas that
//!   still wait for a current one in their place (`min(outdated(n), on(n) - current(n))`);
//! - with `start-first`, the first `max_parallel - in transition` slots start their new
//!   replica now; an outdated replica stops once there are more ready replicas plus outdated
//!   ones than placement wants (surplus), first the outdated replicas beyond their node's
//!   count (so no node's place is left empty while another holds one too many);
//! - with `stop-first`, the first `max_parallel - in transition` slots stop their outdated
//!   replica now; the hole that leaves is filled at once (holes are always filled).
//!
//! Every node computes the same list from the same view and acts only on its own entries, so
//! at most `max_parallel` replicas of a service are in transition in any one view: a node that
//! has not yet seen a replacement start sees the same slot still first in the list and waits.
//! During a partition each side paces itself on its own view; after the heal the normal rules
//! converge on the current version with placement's count.
//!
//! Without outdated replicas nothing is paced: a new service, a scale-up or a lost node's
//! replicas start at once.

use std::collections::{BTreeMap, BTreeSet};

use shoal_crdt::{ContainerId, NodeId, UpdateOrder, UpdatePolicy};

/// One replica of a service on a live node, as the view and this node's runtime show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub node: NodeId,
    pub id: ContainerId,
    /// It runs the current spec (the replica count aside).
    pub current: bool,
    /// Current and counted: run (and healthy) for `min_healthy_ms`.
    pub ready: bool,
}

/// How far this node goes this pass with one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Whether an update is in progress (an outdated replica is left on a live node).
    pub updating: bool,
    /// Current replicas this node may start now, holes included.
    pub starts: u32,
    /// This node's outdated replicas to stop now.
    pub stops: BTreeSet<ContainerId>,
    /// Replicas in transition in this view.
    pub in_transition: u32,
}

/// Counts of one node's replicas of a service.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    wanted: u32,
    current: u32,
    ready: u32,
    outdated: u32,
}

impl Counts {
    fn holes(&self) -> u32 {
        self.wanted
            .saturating_sub(self.current.saturating_add(self.outdated))
    }

    /// Outdated replicas that wait for a current one in their place.
    fn slots(&self) -> u32 {
        self.outdated.min(self.wanted.saturating_sub(self.current))
    }

    /// Outdated replicas beyond the node's count.
    fn beyond(&self) -> u32 {
        self.outdated.min(
            self.current
                .saturating_add(self.outdated)
                .saturating_sub(self.wanted),
        )
    }
}

/// The pacing of `me` for one service: `wanted` is placement's count per live node,
/// `replicas` every replica of the service on a live node. `paused` (the current version's
/// update failed and was not rolled back) starts no replacement and stops nothing outdated.
pub fn pace(
    me: &NodeId,
    policy: &UpdatePolicy,
    order: UpdateOrder,
    wanted: &BTreeMap<NodeId, u32>,
    replicas: &[Replica],
    paused: bool,
) -> Pacing {
    let mut nodes: BTreeMap<&NodeId, Counts> = wanted
        .iter()
        .map(|(node, count)| {
            (
                node,
                Counts {
                    wanted: *count,
                    ..Counts::default()
                },
            )
        })
        .collect();
    for replica in replicas {
        let counts = nodes.entry(&replica.node).or_default();
        if replica.current {
            counts.current += 1;
            counts.ready += u32::from(replica.ready);
        } else {
            counts.outdated += 1;
        }
    }
    let mine = nodes.get(me).copied().unwrap_or_default();
    let outdated: u32 = nodes.values().map(|counts| counts.outdated).sum();
    if outdated == 0 {
        return Pacing {
            updating: false,
            starts: mine.wanted.saturating_sub(mine.current),
            stops: BTreeSet::new(),
            in_transition: 0,
        };
    }
    let pending: u32 = nodes
        .values()
        .map(|counts| counts.current - counts.ready)
        .sum();
    let holes: u32 = nodes.values().map(Counts::holes).sum();
    let in_transition = pending.saturating_add(holes);
    let budget = if paused {
        0
    } else {
        policy.max_parallel.saturating_sub(in_transition)
    };
    // My replacement slots within the first `budget` of the list.
    let mut before_me = 0u32;
    for (node, counts) in &nodes {
        if *node == me {
            break;
        }
        before_me = before_me.saturating_add(counts.slots());
    }
    let my_slots = budget.saturating_sub(before_me).min(mine.slots());

    let mut pacing = Pacing {
        updating: true,
        starts: mine.holes(),
        stops: BTreeSet::new(),
        in_transition,
    };
    // Outdated replicas in stopping order: those beyond their node's count first (a node
    // over its count by k has k of them; stopping more of its replicas would leave its
    // place empty while another node still holds one too many).
    let mut old: Vec<(&NodeId, &ContainerId)> = replicas
        .iter()
        .filter(|replica| !replica.current)
        .map(|replica| (&replica.node, &replica.id))
        .collect();
    old.sort();
    let mut beyond: BTreeMap<&NodeId, u32> = nodes
        .iter()
        .map(|(node, counts)| (*node, counts.beyond()))
        .collect();
    let mut old: Vec<(bool, &NodeId, &ContainerId)> = old
        .into_iter()
        .map(|(node, id)| {
            let left = beyond.entry(node).or_default();
            let over = *left > 0;
            *left = left.saturating_sub(1);
            (!over, node, id)
        })
        .collect();
    old.sort();
    match order {
        UpdateOrder::StartFirst => {
            pacing.starts = pacing.starts.saturating_add(my_slots);
            let ready: u32 = nodes.values().map(|counts| counts.ready).sum();
            let total_wanted: u32 = nodes.values().map(|counts| counts.wanted).sum();
            let surplus = ready.saturating_add(outdated).saturating_sub(total_wanted);
            if !paused {
                pacing.stops = old
                    .iter()
                    .take(surplus as usize)
                    .filter(|(_, node, _)| *node == me)
                    .map(|(_, _, id)| (*id).clone())
                    .collect();
            }
        }
        UpdateOrder::StopFirst => {
            // Outdated replicas beyond a node's count stop first, unpaced only when the
            // ready replicas already cover placement's count.
            let mine_old = old.iter().filter(|(_, node, _)| *node == me);
            let over_mine = mine
                .current
                .saturating_add(mine.outdated)
                .saturating_sub(mine.wanted);
            let mut stops: BTreeSet<ContainerId> = mine_old
                .clone()
                .take(over_mine.min(budget) as usize)
                .map(|(_, _, id)| (*id).clone())
                .collect();
            let slot_stops = my_slots.saturating_sub(stops.len() as u32);
            stops.extend(
                mine_old
                    .filter(|(_, _, id)| !stops.contains(*id))
                    .take(slot_stops as usize)
                    .map(|(_, _, id)| (*id).clone())
                    .collect::<Vec<_>>(),
            );
            pacing.stops = stops;
        }
    }
    pacing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        name.parse().expect("node id")
    }

    fn replica(on: &str, id: &str, current: bool, ready: bool) -> Replica {
        Replica {
            node: node(on),
            id: id.parse().expect("container id"),
            current,
            ready,
        }
    }

    fn wanted(counts: &[(&str, u32)]) -> BTreeMap<NodeId, u32> {
        counts.iter().map(|(name, n)| (node(name), *n)).collect()
    }

    fn policy(max_parallel: u32) -> UpdatePolicy {
        UpdatePolicy {
            max_parallel,
            ..UpdatePolicy::default()
        }
    }

    /// `pace` of an update that is not paused.
    fn paced(
        me: &str,
        max_parallel: u32,
        order: UpdateOrder,
        want: &BTreeMap<NodeId, u32>,
        replicas: &[Replica],
    ) -> Pacing {
        pace(
            &node(me),
            &policy(max_parallel),
            order,
            want,
            replicas,
            false,
        )
    }

    fn ids(pacing: &Pacing) -> Vec<&str> {
        pacing.stops.iter().map(ContainerId::as_str).collect()
    }

    /// Three nodes, one outdated replica each.
    fn three_old() -> Vec<Replica> {
        vec![
            replica("a", "web-a0", false, false),
            replica("b", "web-b0", false, false),
            replica("c", "web-c0", false, false),
        ]
    }

    #[test]
    fn without_outdated_replicas_nothing_is_paced() {
        let want = wanted(&[("a", 3)]);
        let pacing = pace(
            &node("a"),
            &policy(1),
            UpdateOrder::StartFirst,
            &want,
            &[],
            false,
        );
        assert_eq!(pacing.starts, 3);
        assert!(!pacing.updating);
    }

    #[test]
    fn start_first_replaces_one_node_at_a_time_in_node_order() {
        let want = wanted(&[("a", 1), ("b", 1), ("c", 1)]);
        let old = three_old();
        let start = |me| paced(me, 1, UpdateOrder::StartFirst, &want, &old);
        assert_eq!(start("a").starts, 1, "a's slot is first");
        assert_eq!(start("b").starts, 0);
        assert_eq!(start("c").starts, 0);
        assert!(
            start("a").stops.is_empty(),
            "nothing stops before a new replica is ready"
        );

        // a's new replica started but is not ready: it is in transition, nobody starts.
        let mut now = old.clone();
        now.push(replica("a", "web-a1", true, false));
        for me in ["a", "b", "c"] {
            let pacing = paced(me, 1, UpdateOrder::StartFirst, &want, &now);
            assert_eq!(pacing.starts, 0, "{me}");
            assert!(pacing.stops.is_empty(), "{me}");
            assert_eq!(pacing.in_transition, 1);
        }

        // Ready: a stops its outdated one, b's slot is next.
        now.pop();
        now.push(replica("a", "web-a1", true, true));
        let a = paced("a", 1, UpdateOrder::StartFirst, &want, &now);
        assert_eq!(ids(&a), ["web-a0"]);
        let b = paced("b", 1, UpdateOrder::StartFirst, &want, &now);
        assert_eq!(b.starts, 1);
        assert!(b.stops.is_empty());
    }

    #[test]
    fn max_parallel_lets_that_many_start_together() {
        let want = wanted(&[("a", 1), ("b", 1), ("c", 1)]);
        let old = three_old();
        let starts: Vec<u32> = ["a", "b", "c"]
            .iter()
            .map(|me| paced(me, 2, UpdateOrder::StartFirst, &want, &old).starts)
            .collect();
        assert_eq!(starts, [1, 1, 0]);
    }

    #[test]
    fn stop_first_stops_then_fills_the_hole() {
        let want = wanted(&[("a", 1), ("b", 1)]);
        let old = vec![
            replica("a", "web-a0", false, false),
            replica("b", "web-b0", false, false),
        ];
        let a = paced("a", 1, UpdateOrder::StopFirst, &want, &old);
        assert_eq!(ids(&a), ["web-a0"]);
        assert_eq!(a.starts, 0);
        let b = paced("b", 1, UpdateOrder::StopFirst, &want, &old);
        assert!(b.stops.is_empty());

        // a's old one is gone: a hole, filled at once; b waits.
        let now = vec![replica("b", "web-b0", false, false)];
        let a = paced("a", 1, UpdateOrder::StopFirst, &want, &now);
        assert_eq!(a.starts, 1);
        let b = paced("b", 1, UpdateOrder::StopFirst, &want, &now);
        assert!(b.stops.is_empty());
        assert_eq!(b.in_transition, 1);
    }

    #[test]
    fn a_replica_moving_to_another_node_stops_only_once_enough_are_ready() {
        // Placement moved the replica from a to c.
        let want = wanted(&[("b", 1), ("c", 1)]);
        let old = vec![
            replica("a", "web-a0", false, false),
            replica("b", "web-b0", false, false),
        ];
        let a = paced("a", 1, UpdateOrder::StartFirst, &want, &old);
        assert!(a.stops.is_empty(), "no ready replica yet");
        let c = paced("c", 1, UpdateOrder::StartFirst, &want, &old);
        assert_eq!(c.starts, 1, "c's place is a hole");

        let mut now = old.clone();
        now.push(replica("c", "web-c1", true, true));
        let a = paced("a", 1, UpdateOrder::StartFirst, &want, &now);
        assert_eq!(
            ids(&a),
            ["web-a0"],
            "a is over its count: its replica goes first"
        );
        let b = paced("b", 1, UpdateOrder::StartFirst, &want, &now);
        assert!(b.stops.is_empty());
    }

    #[test]
    fn surplus_stops_leave_no_place_empty() {
        // a and b each hold one outdated replica beyond their count; c and d are done. A
        // surplus of two stops one on a and one on b, not both of a's.
        let want = wanted(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let now = vec![
            replica("a", "web-a0", false, false),
            replica("a", "web-a1", false, false),
            replica("b", "web-b0", false, false),
            replica("b", "web-b1", false, false),
            replica("c", "web-c2", true, true),
            replica("d", "web-d2", true, true),
        ];
        let a = paced("a", 1, UpdateOrder::StartFirst, &want, &now);
        assert_eq!(ids(&a), ["web-a0"]);
        let b = paced("b", 1, UpdateOrder::StartFirst, &want, &now);
        assert_eq!(ids(&b), ["web-b0"]);
    }

    #[test]
    fn a_paused_update_starts_no_replacement_and_stops_nothing() {
        let want = wanted(&[("a", 1), ("b", 1)]);
        let now = vec![
            replica("a", "web-a0", false, false),
            replica("a", "web-a1", true, true),
            replica("b", "web-b0", false, false),
        ];
        for me in ["a", "b"] {
            let pacing = pace(
                &node(me),
                &policy(1),
                UpdateOrder::StartFirst,
                &want,
                &now,
                true,
            );
            assert_eq!(pacing.starts, 0);
            assert!(pacing.stops.is_empty());
        }
    }

    #[test]
    fn at_most_max_parallel_in_transition_in_any_one_view() {
        // Every node acts on the same view; the starts and stops they make together never
        // put more than max_parallel in transition.
        for max_parallel in 1..=4u32 {
            for order in [UpdateOrder::StartFirst, UpdateOrder::StopFirst] {
                let want = wanted(&[("a", 2), ("b", 2), ("c", 1), ("d", 1)]);
                let mut replicas = vec![
                    replica("a", "web-a0", false, false),
                    replica("a", "web-a1", false, false),
                    replica("b", "web-b0", false, false),
                    replica("b", "web-b1", false, false),
                    replica("c", "web-c0", false, false),
                    replica("d", "web-d0", false, false),
                ];
                let mut fresh = 0;
                for _round in 0..40 {
                    let mut next = replicas.clone();
                    for me in ["a", "b", "c", "d"] {
                        let pacing = paced(me, max_parallel, order, &want, &replicas);
                        next.retain(|replica| !pacing.stops.contains(&replica.id));
                        for _ in 0..pacing.starts {
                            fresh += 1;
                            next.push(replica(me, &format!("web-n{fresh}"), true, false));
                        }
                    }
                    let view = paced("a", max_parallel, order, &want, &next);
                    assert!(
                        view.in_transition <= max_parallel,
                        "{order:?} max_parallel {max_parallel}: {} in transition",
                        view.in_transition
                    );
                    // New replicas become ready one round later.
                    for replica in &mut next {
                        replica.ready |= replica.current;
                    }
                    replicas = next;
                }
                assert!(
                    replicas
                        .iter()
                        .all(|replica| replica.current && replica.ready)
                );
                assert_eq!(replicas.len(), 6, "{order:?} {max_parallel}");
            }
        }
    }
}
