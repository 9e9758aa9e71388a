//! Leaderless placement, sans-IO and deterministic: every node computes, from the same
//! converged view (services with replicas and resources, live nodes with capacity), the same
//! number of replicas of each service per node. No clock, no I/O, no hash map iteration, no
//! process-seeded hashing: the same input in any order gives the same placement everywhere.
//!
//! The rule (rendezvous hashing with capacity):
//! - services are placed in name order; for a service, live nodes are ranked by
//!   `sha256(service, node)` (highest first, node id breaks ties), so each service has its own
//!   stable preference list;
//! - replicas are dealt round by round over that ranking: each round gives one replica to
//!   every node, in rank order, that still has room for one more (cpu, memory and
//!   `CONTAINERS_PER_NODE_MAX`), until the replica count is met or a round places nothing;
//! - room is the node's advertised capacity minus what earlier placements of this same
//!   computation reserved on it (`room::Reserved`, the same check the planner makes). The
//!   PN-counter usage is not subtracted: it records the containers this placement itself
//!   describes, so subtracting it would count them twice and make placements flap. The
//!   planner instead checks this node's kept records before it starts anything, so a
//!   node's own reservations never exceed its capacity.
//!
//! - eligible nodes: the live nodes that are not drained and whose labels satisfy all of the
//!   service's constraints; none eligible leaves the service unplaced with the reason (which
//!   names drained nodes when they are why). A `global` service wants one
//!   replica on each eligible node (dealt in one round, so never two on one node);
//! - with `spread = LABEL`, the ranking is regrouped so that every value's best node comes
//!   before any value's second: one round visits every value before it visits one twice;
//! - published ports: a host-mode service's replica needs its host ports free on the node
//!   (so at most one replica per node, and never two services on one port of a node); a
//!   mesh-mode service takes its ports on every node at once, so it is placed only when no
//!   service earlier in name order holds one of them anywhere, and then it blocks them
//!   everywhere for the services after it. What cannot be placed carries a reason.
//!
//! Consequences (property-tested below): replicas spread over distinct nodes first; with
//! room to spare, removing a node only moves the replicas that were on it (a surviving node
//! never loses a replica), because the other nodes keep their relative rank.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use shoal_crdt::{Capacity, Constraint, HostPort, NodeId, Resources, ServiceName};

use super::room::{PortHolder, Reserved};

/// A live node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInput {
    pub id: NodeId,
    pub capacity: Capacity,
    /// The UDP port of its sync endpoint, which no service may publish there.
    pub sync_port: Option<u16>,
    /// Its labels, for constraints and spread.
    pub labels: BTreeMap<String, String>,
    /// Drained (`shoal node drain`): it gets no replica of any service.
    pub drained: bool,
}

/// A service to place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInput {
    pub name: ServiceName,
    pub replicas: u32,
    pub resources: Resources,
    /// The ports it publishes.
    pub ports: Vec<HostPort>,
    /// Mesh mode: its ports are taken on every node, its replicas need no port each.
    pub mesh: bool,
    /// One replica on every eligible node instead of `replicas`.
    pub global: bool,
    /// All must hold on a node for it to be eligible.
    pub constraints: Vec<Constraint>,
    /// Spread replicas evenly over this label's values.
    pub spread: Option<String>,
}

/// The desired replica count of every service on every node, and what could not be placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// service -> node -> replicas; nodes with zero replicas are absent.
    pub replicas: BTreeMap<ServiceName, BTreeMap<NodeId, u32>>,
    /// service -> replicas that found no node with room.
    pub unplaced: BTreeMap<ServiceName, u32>,
    /// service -> why those replicas were not placed.
    pub reasons: BTreeMap<ServiceName, String>,
}

impl Placement {
    /// Replicas of `service` placed on `node`.
    pub fn on(&self, service: &ServiceName, node: &NodeId) -> u32 {
        self.replicas
            .get(service)
            .and_then(|nodes| nodes.get(node))
            .copied()
            .unwrap_or(0)
    }

    /// Every service with at least one replica on `node`, with its count.
    pub fn for_node(&self, node: &NodeId) -> BTreeMap<ServiceName, u32> {
        self.replicas
            .iter()
            .filter_map(|(service, nodes)| nodes.get(node).map(|count| (service.clone(), *count)))
            .collect()
    }
}

/// The rendezvous score of `node` for `service`: the first 8 bytes of
/// `sha256(service || 0x00 || node)`, stable across builds and machines.
pub fn score(service: &ServiceName, node: &NodeId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(service.as_str().as_bytes());
    hasher.update([0u8]);
    hasher.update(node.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Computes the placement. Input order does not matter; duplicate names keep the first.
pub fn place(services: &[ServiceInput], nodes: &[NodeInput]) -> Placement {
    let mut reserved: BTreeMap<&NodeId, Reserved> = nodes
        .iter()
        .rev()
        .map(|node| (&node.id, Reserved::with_sync_port(node.sync_port)))
        .collect();
    let nodes: BTreeMap<&NodeId, &NodeInput> =
        nodes.iter().rev().map(|node| (&node.id, node)).collect();
    let services: BTreeMap<&ServiceName, &ServiceInput> = services
        .iter()
        .rev()
        .map(|service| (&service.name, service))
        .collect();
    let mut placement = Placement::default();
    for (name, service) in services {
        if service.replicas == 0 && !service.global {
            continue;
        }
        let matching = nodes.values().copied().filter(|node| {
            service
                .constraints
                .iter()
                .all(|constraint| constraint.matches(&node.labels))
        });
        let (drained, eligible): (Vec<&NodeInput>, Vec<&NodeInput>) =
            matching.partition(|node| node.drained);
        let eligible: BTreeMap<&NodeId, &NodeInput> =
            eligible.into_iter().map(|node| (&node.id, node)).collect();
        let wanted = if service.global {
            u32::try_from(eligible.len()).unwrap_or(u32::MAX)
        } else {
            service.replicas
        };
        if eligible.is_empty() {
            let reason = if nodes.is_empty() {
                "no live node".to_owned()
            } else if !drained.is_empty() {
                "every live node that matches the constraints is drained".to_owned()
            } else {
                format!(
                    "no live node matches the constraints ({})",
                    service
                        .constraints
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            placement.unplaced.insert(name.clone(), wanted.max(1));
            placement.reasons.insert(name.clone(), reason);
            continue;
        }
        if service.mesh {
            let taken = reserved
                .values()
                .find_map(|room| room.port_taken(&service.ports));
            if let Some((port, holder)) = taken {
                let reason = format!("port {port} is published by {holder}");
                placement.unplaced.insert(name.clone(), wanted);
                placement.reasons.insert(name.clone(), reason);
                continue;
            }
            for room in reserved.values_mut() {
                room.take_ports(&service.ports, name);
            }
        }
        let node_ports: &[HostPort] = if service.mesh { &[] } else { &service.ports };
        let ranking = ranking(name, &eligible, service.spread.as_deref());
        let mut counts: BTreeMap<NodeId, u32> = BTreeMap::new();
        let mut placed = 0u32;
        while placed < wanted {
            let placed_before = placed;
            for id in &ranking {
                if placed == wanted {
                    break;
                }
                if service.global && counts.contains_key(*id) {
                    continue;
                }
                let capacity = &eligible[id].capacity;
                let room = reserved.get_mut(id).expect("every node has a reservation");
                if room.fits(capacity, &service.resources) && room.port_taken(node_ports).is_none()
                {
                    room.add(&service.resources);
                    room.take_ports(node_ports, name);
                    *counts.entry((*id).clone()).or_default() += 1;
                    placed += 1;
                }
            }
            if placed == placed_before {
                break;
            }
        }
        if placed < wanted {
            let missing = wanted - placed;
            placement.unplaced.insert(name.clone(), missing);
            let mut reason = unplaced_reason(service, node_ports, &eligible, &reserved);
            if !drained.is_empty() {
                reason.push_str(&format!(
                    "; {} drained node(s) take no new replicas",
                    drained.len()
                ));
            }
            placement.reasons.insert(name.clone(), reason);
        }
        if !counts.is_empty() {
            placement.replicas.insert(name.clone(), counts);
        }
    }
    placement
}

/// The order replicas of `service` are dealt over `nodes`: by rendezvous score, highest
/// first. With `spread`, nodes are grouped by that label's value (a node without it is in
/// the group of the empty value) and each group's best node comes before any group's
/// second, so one round of dealing visits every group before it visits one twice.
fn ranking<'a>(
    service: &ServiceName,
    nodes: &BTreeMap<&'a NodeId, &NodeInput>,
    spread: Option<&str>,
) -> Vec<&'a NodeId> {
    let mut scored: Vec<(u64, &'a NodeId)> =
        nodes.keys().map(|id| (score(service, id), *id)).collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let Some(label) = spread else {
        return scored.into_iter().map(|(_, id)| id).collect();
    };
    let mut seen_in_group: BTreeMap<&str, usize> = BTreeMap::new();
    let mut keyed: Vec<(usize, usize, &'a NodeId)> = scored
        .into_iter()
        .enumerate()
        .map(|(position, (_, id))| {
            let group = nodes[id].labels.get(label).map_or("", String::as_str);
            let counter = seen_in_group.entry(group).or_default();
            let index = *counter;
            *counter += 1;
            (index, position, id)
        })
        .collect();
    keyed.sort();
    keyed.into_iter().map(|(_, _, id)| id).collect()
}

/// Why the rest of `service` found no node, after dealing.
fn unplaced_reason(
    service: &ServiceInput,
    node_ports: &[HostPort],
    nodes: &BTreeMap<&NodeId, &NodeInput>,
    reserved: &BTreeMap<&NodeId, Reserved>,
) -> String {
    let port_blocked = nodes.iter().find_map(|(id, node)| {
        let room = &reserved[id];
        room.fits(&node.capacity, &service.resources)
            .then(|| room.port_taken(node_ports))
            .flatten()
    });
    match port_blocked {
        Some((port, PortHolder::Service(holder))) if holder == &service.name => format!(
            "host port {port} allows one replica per node, and every node with room runs one"
        ),
        Some((port, holder)) => {
            format!("host port {port} is taken by {holder} on every node with room")
        }
        None => "no live node has room (cpu_millis, memory_bytes or container count)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::room::CONTAINERS_PER_NODE_MAX;
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, cpu_millis: u32, memory_mib: u64) -> NodeInput {
        NodeInput {
            id: name.parse().unwrap(),
            sync_port: None,
            labels: Default::default(),
            drained: false,
            capacity: Capacity {
                cpu_millis,
                memory_bytes: memory_mib << 20,
            },
        }
    }

    fn service(name: &str, replicas: u32, cpu_millis: u32, memory_mib: u64) -> ServiceInput {
        ServiceInput {
            name: name.parse().unwrap(),
            replicas,
            resources: Resources {
                cpu_millis,
                memory_bytes: memory_mib << 20,
                pids_max: 64,
            },
            ports: Vec::new(),
            mesh: false,
            global: false,
            constraints: Vec::new(),
            spread: None,
        }
    }

    fn publishing(mut input: ServiceInput, ports: &[&str], mesh: bool) -> ServiceInput {
        input.ports = ports
            .iter()
            .map(|text| {
                text.parse::<shoal_crdt::PortMapping>()
                    .unwrap()
                    .host_port_key()
            })
            .collect();
        input.mesh = mesh;
        input
    }

    #[test]
    fn a_host_port_allows_one_replica_per_node_and_says_why() {
        let nodes = [node("a", 4000, 4096), node("b", 4000, 4096)];
        let web = publishing(service("web", 3, 100, 64), &["8080:80"], false);
        let placement = place(&[web], &nodes);
        assert_eq!(total(&placement, "web"), 2);
        let name: ServiceName = "web".parse().unwrap();
        assert_eq!(placement.unplaced[&name], 1);
        assert!(
            placement.reasons[&name].contains("8080/tcp"),
            "{placement:?}"
        );
        assert!(placement.reasons[&name].contains("one replica per node"));
    }

    #[test]
    fn two_services_on_one_host_port_of_one_node_place_the_first_by_name() {
        let nodes = [node("a", 4000, 4096)];
        let api = publishing(service("api", 1, 100, 64), &["8080:80"], false);
        let web = publishing(service("web", 1, 100, 64), &["127.0.0.1:8080:81"], false);
        let udp = publishing(service("dns", 1, 100, 64), &["8080:53/udp"], false);
        let placement = place(&[web, api, udp], &nodes);
        assert_eq!(total(&placement, "api"), 1);
        assert_eq!(total(&placement, "dns"), 1, "udp is another port");
        assert_eq!(total(&placement, "web"), 0);
        let reason = &placement.reasons[&"web".parse::<ServiceName>().unwrap()];
        assert!(reason.contains("taken by service api"), "{reason}");
    }

    fn labelled(mut input: NodeInput, pairs: &[(&str, &str)]) -> NodeInput {
        input.labels = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        input
    }

    fn constrained(mut input: ServiceInput, constraints: &[&str]) -> ServiceInput {
        input.constraints = constraints.iter().map(|c| c.parse().unwrap()).collect();
        input
    }

    #[test]
    fn constraints_pick_the_nodes_and_a_match_of_none_says_why() {
        let nodes = [
            labelled(node("a", 4000, 4096), &[("zone", "eu-1"), ("role", "edge")]),
            labelled(node("b", 4000, 4096), &[("zone", "eu-2"), ("role", "core")]),
            labelled(node("c", 4000, 4096), &[("zone", "eu-1")]),
        ];
        let web = constrained(service("web", 4, 100, 64), &["zone == eu-1"]);
        let placement = place(&[web], &nodes);
        let name: ServiceName = "web".parse().unwrap();
        assert_eq!(placement.on(&name, &"b".parse().unwrap()), 0);
        assert_eq!(total(&placement, "web"), 4);
        let edge = constrained(
            service("edge", 1, 100, 64),
            &["role in (edge, core)", "disk != hdd"],
        );
        let placement = place(&[edge], &nodes);
        assert_eq!(
            placement.on(&"edge".parse().unwrap(), &"c".parse().unwrap()),
            0
        );
        let none = constrained(service("gpu", 2, 100, 64), &["gpu == yes"]);
        let placement = place(&[none], &nodes);
        let gpu: ServiceName = "gpu".parse().unwrap();
        assert_eq!(placement.unplaced[&gpu], 2);
        assert!(placement.reasons[&gpu].contains("constraints"));
    }

    #[test]
    fn a_global_service_runs_once_on_every_eligible_node() {
        let nodes = [
            labelled(node("a", 4000, 4096), &[("role", "edge")]),
            labelled(node("b", 4000, 4096), &[("role", "edge")]),
            labelled(node("c", 4000, 4096), &[("role", "core")]),
            labelled(node("d", 100, 4096), &[("role", "edge")]),
        ];
        let mut agent = constrained(service("agent", 1, 200, 64), &["role == edge"]);
        agent.global = true;
        let placement = place(&[agent], &nodes);
        let name: ServiceName = "agent".parse().unwrap();
        let on = |n: &str| placement.on(&name, &n.parse().unwrap());
        assert_eq!((on("a"), on("b"), on("c"), on("d")), (1, 1, 0, 0));
        assert_eq!(placement.unplaced[&name], 1, "d has no room");
        assert!(placement.reasons[&name].contains("room"));
    }

    fn drained(mut input: NodeInput) -> NodeInput {
        input.drained = true;
        input
    }

    #[test]
    fn a_drained_node_gets_no_replica_and_gets_them_back_when_undrained() {
        let nodes = [
            node("a", 4000, 4096),
            drained(node("b", 4000, 4096)),
            node("c", 4000, 4096),
        ];
        let web = service("web", 6, 100, 64);
        let mut agent = service("agent", 1, 100, 64);
        agent.global = true;
        let placement = place(&[web.clone(), agent.clone()], &nodes);
        let b: NodeId = "b".parse().unwrap();
        assert!(placement.for_node(&b).is_empty(), "{placement:?}");
        assert_eq!(total(&placement, "web"), 6, "the others take b's share");
        assert_eq!(total(&placement, "agent"), 2, "a global service skips b");
        assert!(placement.unplaced.is_empty(), "{placement:?}");

        let undrained = [
            node("a", 4000, 4096),
            node("b", 4000, 4096),
            node("c", 4000, 4096),
        ];
        let placement = place(&[web, agent], &undrained);
        assert_eq!(placement.on(&"web".parse().unwrap(), &b), 2);
        assert_eq!(placement.on(&"agent".parse().unwrap(), &b), 1);
    }

    #[test]
    fn what_only_drained_nodes_could_take_is_unplaced_and_says_so() {
        let nodes = [
            drained(node("a", 4000, 4096)),
            drained(node("b", 4000, 4096)),
        ];
        let placement = place(&[service("web", 2, 100, 64)], &nodes);
        let web: ServiceName = "web".parse().unwrap();
        assert_eq!(placement.unplaced[&web], 2);
        assert!(placement.reasons[&web].contains("drained"), "{placement:?}");

        // One node left with room for one replica: the rest is unplaced, drain named.
        let nodes = [node("a", 100, 4096), drained(node("b", 4000, 4096))];
        let placement = place(&[service("web", 2, 100, 64)], &nodes);
        assert_eq!(placement.unplaced[&web], 1);
        let reason = &placement.reasons[&web];
        assert!(
            reason.contains("room") && reason.contains("1 drained node(s)"),
            "{reason}"
        );
    }

    #[test]
    fn spread_deals_over_the_label_values_first() {
        let nodes: Vec<NodeInput> = (0..6)
            .map(|i| {
                let zone = if i < 4 { "eu-1" } else { "eu-2" };
                labelled(node(&format!("n{i}"), 4000, 4096), &[("zone", zone)])
            })
            .collect();
        let mut web = service("web", 2, 100, 64);
        web.spread = Some("zone".into());
        let placement = place(&[web.clone()], &nodes);
        let name: ServiceName = "web".parse().unwrap();
        let zones: BTreeMap<&str, u32> = nodes.iter().fold(BTreeMap::new(), |mut zones, n| {
            *zones.entry(n.labels["zone"].as_str()).or_default() += placement.on(&name, &n.id);
            zones
        });
        assert_eq!(zones["eu-1"], 1);
        assert_eq!(zones["eu-2"], 1);
        web.replicas = 6;
        let placement = place(&[web], &nodes);
        assert!(nodes.iter().all(|n| placement.on(&name, &n.id) == 1));
    }

    #[test]
    fn no_service_publishes_a_nodes_sync_port() {
        let mut nodes = vec![node("a", 4000, 4096), node("b", 4000, 4096)];
        nodes[0].sync_port = Some(7443);
        let dns = publishing(service("dns", 2, 100, 64), &["7443:53/udp"], false);
        let tcp = publishing(service("web", 2, 100, 64), &["7443:80"], false);
        let placement = place(&[dns, tcp], &nodes);
        let name: ServiceName = "dns".parse().unwrap();
        assert_eq!(placement.on(&name, &"a".parse().unwrap()), 0);
        assert_eq!(placement.on(&name, &"b".parse().unwrap()), 1);
        assert!(placement.reasons[&name].contains("shoal's sync endpoint"));
        assert_eq!(total(&placement, "web"), 2, "tcp is another port");
        let mesh = publishing(service("edge", 1, 100, 64), &["7443:53/udp"], true);
        let placement = place(&[mesh], &nodes);
        assert_eq!(total(&placement, "edge"), 0);
    }

    #[test]
    fn a_mesh_port_is_taken_everywhere() {
        let nodes = [node("a", 4000, 4096), node("b", 4000, 4096)];
        let mesh = publishing(service("edge", 3, 100, 64), &["80:80"], true);
        let host = publishing(service("web", 1, 100, 64), &["80:8080"], false);
        let later_mesh = publishing(service("zoo", 1, 100, 64), &["80:80"], true);
        let placement = place(&[mesh, host, later_mesh], &nodes);
        assert_eq!(
            total(&placement, "edge"),
            3,
            "mesh replicas need no port each"
        );
        assert_eq!(total(&placement, "web"), 0);
        assert_eq!(total(&placement, "zoo"), 0);
        let reason = &placement.reasons[&"zoo".parse::<ServiceName>().unwrap()];
        assert!(reason.contains("published by service edge"), "{reason}");
    }

    fn total(placement: &Placement, service: &str) -> u32 {
        placement
            .replicas
            .get(&service.parse::<ServiceName>().unwrap())
            .map_or(0, |nodes| nodes.values().sum())
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned: a change here would move every replica of every cluster on upgrade.
        let service: ServiceName = "web".parse().unwrap();
        let node: NodeId = "node-a".parse().unwrap();
        let mut hasher = Sha256::new();
        hasher.update(b"web\0node-a");
        let digest = hasher.finalize();
        assert_eq!(
            score(&service, &node),
            u64::from_be_bytes(digest[..8].try_into().unwrap())
        );
        assert_ne!(score(&service, &node), score(&"db".parse().unwrap(), &node));
    }

    #[test]
    fn replicas_spread_over_distinct_nodes_first() {
        let nodes = [
            node("a", 4000, 4096),
            node("b", 4000, 4096),
            node("c", 4000, 4096),
        ];
        let placement = place(&[service("web", 3, 100, 64)], &nodes);
        let web = &placement.replicas[&"web".parse::<ServiceName>().unwrap()];
        assert_eq!(web.len(), 3);
        assert!(web.values().all(|count| *count == 1));
        let placement = place(&[service("web", 7, 100, 64)], &nodes);
        let web = &placement.replicas[&"web".parse::<ServiceName>().unwrap()];
        let mut counts: Vec<u32> = web.values().copied().collect();
        counts.sort();
        assert_eq!(counts, [2, 2, 3]);
    }

    #[test]
    fn what_does_not_fit_is_reported_unplaced() {
        let nodes = [node("a", 1000, 1024), node("b", 500, 1024)];
        let placement = place(&[service("big", 4, 400, 64)], &nodes);
        assert_eq!(total(&placement, "big"), 3);
        assert_eq!(
            placement.unplaced[&"big".parse::<ServiceName>().unwrap()],
            1
        );
        let placement = place(&[service("huge", 1, 100, 2048)], &nodes);
        assert!(placement.replicas.is_empty());
        assert_eq!(
            placement.unplaced[&"huge".parse::<ServiceName>().unwrap()],
            1
        );
        assert_eq!(place(&[service("none", 2, 100, 64)], &[]).unplaced.len(), 1);
    }

    #[test]
    fn zero_replicas_place_nothing() {
        let placement = place(&[service("web", 0, 100, 64)], &[node("a", 1000, 1024)]);
        assert_eq!(placement, Placement::default());
    }

    fn arbitrary_nodes() -> impl Strategy<Value = Vec<NodeInput>> {
        proptest::collection::btree_map("[a-z][a-z0-9]{0,6}", (100u32..8000, 64u64..8192), 0..8)
            .prop_map(|nodes| {
                nodes
                    .into_iter()
                    .map(|(name, (cpu, mib))| node(&name, cpu, mib))
                    .collect()
            })
    }

    fn arbitrary_services() -> impl Strategy<Value = Vec<ServiceInput>> {
        proptest::collection::btree_map(
            "[a-z][a-z0-9]{0,6}",
            (0u32..12, 1u32..2000, 1u64..1024),
            0..8,
        )
        .prop_map(|services| {
            services
                .into_iter()
                .map(|(name, (replicas, cpu, mib))| service(&name, replicas, cpu, mib))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn the_same_input_in_any_order_gives_the_same_placement(
            nodes in arbitrary_nodes(),
            services in arbitrary_services(),
            seed in any::<u64>(),
        ) {
            let expected = place(&services, &nodes);
            let mut nodes = nodes;
            let mut services = services;
            // A deterministic shuffle from the seed: rotate and reverse.
            if !nodes.is_empty() {
                let by = (seed as usize) % nodes.len();
                nodes.rotate_left(by);
            }
            if seed & 1 == 1 {
                services.reverse();
            }
            if !services.is_empty() {
                let by = (seed as usize >> 8) % services.len();
                services.rotate_left(by);
            }
            prop_assert_eq!(place(&services, &nodes), expected);
        }

        #[test]
        fn no_node_is_given_more_than_its_capacity(
            nodes in arbitrary_nodes(),
            services in arbitrary_services(),
        ) {
            let placement = place(&services, &nodes);
            for node in &nodes {
                let (mut cpu, mut memory, mut containers) = (0u64, 0u64, 0u32);
                for service in &services {
                    let count = placement.on(&service.name, &node.id);
                    cpu += u64::from(count) * u64::from(service.resources.cpu_millis);
                    memory += u64::from(count) * service.resources.memory_bytes;
                    containers += count;
                }
                prop_assert!(cpu <= u64::from(node.capacity.cpu_millis));
                prop_assert!(memory <= node.capacity.memory_bytes);
                prop_assert!(containers <= CONTAINERS_PER_NODE_MAX);
            }
            for service in &services {
                let placed = placement
                    .replicas
                    .get(&service.name)
                    .map_or(0, |nodes| nodes.values().sum::<u32>());
                let unplaced = placement.unplaced.get(&service.name).copied().unwrap_or(0);
                prop_assert_eq!(placed + unplaced, service.replicas);
            }
        }

        #[test]
        fn replica_counts_are_met_when_capacity_allows(
            nodes in arbitrary_nodes(),
            services in arbitrary_services(),
        ) {
            // Each node can hold every replica of every service at once.
            let cpu: u32 = services.iter().map(|s| s.replicas * s.resources.cpu_millis).sum();
            let memory: u64 = services
                .iter()
                .map(|s| u64::from(s.replicas) * s.resources.memory_bytes)
                .sum();
            let roomy: Vec<NodeInput> = nodes
                .iter()
                .map(|n| NodeInput {
                    id: n.id.clone(),
                    sync_port: None,
                    labels: Default::default(),
                    drained: false,
                    capacity: Capacity { cpu_millis: cpu.max(1), memory_bytes: memory.max(1) },
                })
                .collect();
            let placement = place(&services, &roomy);
            if roomy.is_empty() {
                prop_assert!(placement.replicas.is_empty());
            } else {
                prop_assert!(placement.unplaced.is_empty(), "{:?}", placement.unplaced);
                for service in &services {
                    let counts = placement.replicas.get(&service.name);
                    let placed: u32 = counts.map_or(0, |nodes| nodes.values().sum());
                    prop_assert_eq!(placed, service.replicas);
                    // Spread: no two nodes differ by more than one replica.
                    if let Some(counts) = counts {
                        let most = counts.values().max().copied().unwrap_or(0);
                        let least = if counts.len() < roomy.len() {
                            0
                        } else {
                            counts.values().min().copied().unwrap_or(0)
                        };
                        prop_assert!(most - least <= 1, "{:?}", counts);
                    }
                }
            }
        }

        #[test]
        fn removing_a_node_only_moves_its_replicas(
            nodes in arbitrary_nodes(),
            services in arbitrary_services(),
            victim in any::<prop::sample::Index>(),
        ) {
            prop_assume!(!nodes.is_empty());
            let roomy: Vec<NodeInput> = nodes
                .iter()
                .map(|n| NodeInput {
                    id: n.id.clone(),
                    sync_port: None,
                    labels: Default::default(),
                    drained: false,
                    capacity: Capacity { cpu_millis: u32::MAX, memory_bytes: u64::MAX },
                })
                .collect();
            let before = place(&services, &roomy);
            let victim = victim.index(roomy.len());
            let mut survivors = roomy.clone();
            let gone = survivors.remove(victim);
            let after = place(&services, &survivors);
            for service in &services {
                for node in &survivors {
                    // A surviving node never loses a replica: only the victim's move.
                    prop_assert!(
                        after.on(&service.name, &node.id) >= before.on(&service.name, &node.id),
                        "{} lost a replica of {} when {} left", node.id, service.name, gone.id
                    );
                }
                let moved: u32 = survivors
                    .iter()
                    .map(|n| after.on(&service.name, &n.id) - before.on(&service.name, &n.id))
                    .sum();
                if !survivors.is_empty() {
                    prop_assert_eq!(moved, before.on(&service.name, &gone.id));
                }
            }
        }
    }
}
