//! Which published ports this node forwards where, decided from the converged view and
//! what its runtime holds: the input of the node's firewall (the executor hands it to
//! `shoal_oci`'s nftables table). Pure.
//!
//! - host mode: each of this node's containers of the service gets its ports forwarded
//!   from the node (placement keeps one container per node per host port);
//! - mesh mode: every node forwards the service's ports to every container of it that
//!   runs: its own (as its runtime says) and other live nodes' (as their status reports
//!   say), balanced, masqueraded so replies come back through this node. A node that
//!   knows no running replica forwards nothing (the port refuses). When the service has a
//!   health check, only replicas whose status says healthy count (`serves_mesh`).
//!
//! During a partition each side forwards to the replicas it sees live: replicas on the far
//! side drop out once their node is considered down, and the replacements placement starts
//! on this side are added as they report running.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_crdt::{
    ContainerStatus, Health, NodeStatus, PortMapping, RunState, ServiceName, ServiceSpec, Subnet,
};

use super::plan::{Observed, ObservedState};
use super::view::ClusterView;

/// One published port and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub service: ServiceName,
    pub mapping: PortMapping,
    /// Container addresses, sorted, never empty.
    pub backends: Vec<Ipv4Addr>,
    /// Mesh mode: backends may be on other nodes.
    pub mesh: bool,
}

/// Everything this node's firewall should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    /// This node's container subnet: the source of its containers' egress.
    pub own_subnet: Subnet,
    /// Every live node's container subnet, this node's included: traffic to these keeps
    /// its source address.
    pub cluster_subnets: Vec<Subnet>,
    pub forwards: Vec<Forward>,
}

/// Whether a mesh-mode replica of `spec` with `status` gets traffic: it runs, is not
/// retiring (about to be stopped by a rollout) and, when the service has a health check,
/// its check says healthy.
pub fn serves_mesh(spec: &ServiceSpec, status: Option<&ContainerStatus>) -> bool {
    status.is_some_and(|status| {
        status.state == RunState::Running
            && !status.retiring
            && (spec.health.is_none() || status.health == Health::Healthy)
    })
}

/// The port plan of `view`'s node, or `None` when it has no container subnet. `own_status`
/// is this node's status report from the same view and observation (its health verdicts).
pub fn port_plan(
    view: &ClusterView,
    observed: &Observed,
    own_status: &NodeStatus,
) -> Option<PortPlan> {
    let own_subnet = view.subnet?;
    let mut cluster_subnets: Vec<Subnet> = std::iter::once(own_subnet)
        .chain(view.peer_subnets.iter().map(|(subnet, _)| *subnet))
        .collect();
    cluster_subnets.sort();
    cluster_subnets.dedup();

    let mut forwards = Vec::new();
    let mut mesh_own: BTreeMap<&ServiceName, Vec<Ipv4Addr>> = BTreeMap::new();
    for record in &view.own_records {
        let (Some(service), Some(ip)) = (view.services.get(&record.service), record.ip) else {
            continue;
        };
        if service.spec.ports.is_empty() {
            continue;
        }
        if service.spec.publish.mode.is_host() {
            for mapping in service.spec.port_mappings().unwrap_or_default() {
                forwards.push(Forward {
                    service: record.service.clone(),
                    mapping,
                    backends: vec![ip],
                    mesh: false,
                });
            }
        } else if matches!(
            observed.containers.get(record.id.as_str()),
            Some(ObservedState::Running)
        ) && serves_mesh(&service.spec, own_status.containers.get(&record.id))
        {
            mesh_own.entry(&record.service).or_default().push(ip);
        }
    }
    for (name, service) in &view.services {
        if service.spec.publish.mode.is_host() || service.spec.ports.is_empty() {
            continue;
        }
        let mut backends: Vec<Ipv4Addr> = mesh_own.get(name).cloned().unwrap_or_default();
        backends.extend(view.mesh_backends.get(name).into_iter().flatten());
        backends.sort();
        backends.dedup();
        if backends.is_empty() {
            continue;
        }
        for mapping in service.spec.port_mappings().unwrap_or_default() {
            forwards.push(Forward {
                service: name.clone(),
                mapping,
                backends: backends.clone(),
                mesh: true,
            });
        }
    }
    forwards.sort();
    Some(PortPlan {
        own_subnet,
        cluster_subnets,
        forwards,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use shoal_crdt::{ContainerRecord, ServiceSpec, Timestamp};

    use super::*;
    use crate::schedule::view::ServiceVersion;

    fn record(id: &str, service: &str, ip: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.parse().unwrap(),
            service: service.parse().unwrap(),
            node: "a".parse().unwrap(),
            spec_version: Timestamp::new(Default::default(), uhlc::ID::rand()),
            ip: Some(ip.parse().unwrap()),
        }
    }

    fn view(services: Vec<(&str, ServiceSpec)>, records: Vec<ContainerRecord>) -> ClusterView {
        ClusterView {
            me: "a".parse().unwrap(),
            services: services
                .into_iter()
                .map(|(name, spec)| {
                    let version = Timestamp::new(Default::default(), uhlc::ID::rand());
                    (name.parse().unwrap(), ServiceVersion::new(spec, version))
                })
                .collect(),
            live_nodes: Vec::new(),
            own_records: records,
            own_written: BTreeMap::new(),
            fleet: Default::default(),
            subnet: Some("10.88.1.0/24".parse().unwrap()),
            peer_subnets: vec![(
                "10.88.2.0/24".parse().unwrap(),
                "192.0.2.2".parse().unwrap(),
            )],
            mesh_backends: BTreeMap::new(),
            drained: BTreeMap::new(),
        }
    }

    fn spec(ports: &[&str], mesh: bool) -> ServiceSpec {
        let mut spec = ServiceSpec::new("/img");
        spec.ports = ports.iter().map(|p| p.to_string()).collect();
        if mesh {
            spec.publish.mode = shoal_crdt::PublishMode::Mesh;
        }
        spec
    }

    fn observed(running: &[&str]) -> Observed {
        Observed {
            containers: running
                .iter()
                .map(|id| (id.to_string(), ObservedState::Running))
                .collect(),
            spec_digests: BTreeMap::new(),
            attachments: Some(BTreeSet::new()),
        }
    }

    #[test]
    fn host_mode_forwards_own_containers_only() {
        let view = view(
            vec![
                ("web", spec(&["8080:80", "5353:53/udp"], false)),
                ("db", spec(&[], false)),
            ],
            vec![
                record("web-1", "web", "10.88.1.2"),
                record("db-1", "db", "10.88.1.3"),
            ],
        );
        let plan = port_plan(&view, &observed(&[]), &NodeStatus::default()).unwrap();
        assert_eq!(plan.forwards.len(), 2);
        assert!(
            plan.forwards
                .iter()
                .all(|f| !f.mesh && f.backends == ["10.88.1.2".parse::<Ipv4Addr>().unwrap()])
        );
        assert_eq!(plan.cluster_subnets.len(), 2);
    }

    #[test]
    fn mesh_mode_forwards_to_every_running_replica() {
        let mut view = view(
            vec![("edge", spec(&["80:80"], true))],
            vec![
                record("edge-1", "edge", "10.88.1.2"),
                record("edge-2", "edge", "10.88.1.3"),
            ],
        );
        view.mesh_backends
            .insert("edge".parse().unwrap(), vec!["10.88.2.9".parse().unwrap()]);
        let plan = port_plan(
            &view,
            &observed(&["edge-2"]),
            &status(&[("edge-2", Health::None)]),
        )
        .unwrap();
        assert_eq!(plan.forwards.len(), 1);
        let forward = &plan.forwards[0];
        assert!(forward.mesh);
        let want: Vec<Ipv4Addr> = vec!["10.88.1.3".parse().unwrap(), "10.88.2.9".parse().unwrap()];
        assert_eq!(forward.backends, want, "edge-1 is not running");
        view.mesh_backends.clear();
        let plan = port_plan(&view, &observed(&[]), &NodeStatus::default()).unwrap();
        assert!(
            plan.forwards.is_empty(),
            "no running replica: nothing forwarded"
        );
    }

    #[test]
    fn no_subnet_no_firewall() {
        let mut view = view(Vec::new(), Vec::new());
        view.subnet = None;
        assert_eq!(
            port_plan(&view, &observed(&[]), &NodeStatus::default()),
            None
        );
    }

    /// This node's report: the containers running, with their health.
    fn status(containers: &[(&str, Health)]) -> NodeStatus {
        NodeStatus {
            containers: containers
                .iter()
                .map(|(id, health)| {
                    let status = ContainerStatus {
                        state: RunState::Running,
                        started_unix_ms: None,
                        restarts: 0,
                        health: health.clone(),
                        spec: None,
                        ready: false,
                        retiring: false,
                    };
                    (id.parse().unwrap(), status)
                })
                .collect(),
            errors: BTreeMap::new(),
        }
    }

    #[test]
    fn mesh_mode_with_a_health_check_forwards_to_healthy_replicas_only() {
        let mut web = spec(&["80:80"], true);
        web.health = Some(Box::new(shoal_crdt::HealthCheck::tcp(80)));
        let view = view(
            vec![("web", web.clone())],
            vec![
                record("web-1", "web", "10.88.1.2"),
                record("web-2", "web", "10.88.1.3"),
                record("web-3", "web", "10.88.1.4"),
            ],
        );
        let own = status(&[
            ("web-1", Health::Healthy),
            ("web-2", Health::Starting),
            (
                "web-3",
                Health::Unhealthy {
                    reason: "refused".into(),
                },
            ),
        ]);
        let plan = port_plan(&view, &observed(&["web-1", "web-2", "web-3"]), &own).unwrap();
        assert_eq!(plan.forwards.len(), 1);
        assert_eq!(
            plan.forwards[0].backends,
            vec!["10.88.1.2".parse::<Ipv4Addr>().unwrap()]
        );
        let starting_only = status(&[("web-2", Health::Starting)]);
        let plan = port_plan(&view, &observed(&["web-2"]), &starting_only).unwrap();
        assert!(
            plan.forwards.is_empty(),
            "no healthy replica: nothing forwarded"
        );

        // Peers' replicas: the same rule on their reports.
        let running = |health: Health| ContainerStatus {
            state: RunState::Running,
            started_unix_ms: None,
            restarts: 0,
            health,
            spec: None,
            ready: false,
            retiring: false,
        };
        assert!(serves_mesh(&web, Some(&running(Health::Healthy))));
        assert!(!serves_mesh(&web, Some(&running(Health::Starting))));
        assert!(!serves_mesh(&web, Some(&running(Health::None))));
        assert!(!serves_mesh(&web, None));
        let unchecked = spec(&["80:80"], true);
        assert!(serves_mesh(&unchecked, Some(&running(Health::None))));
        let exited = ContainerStatus {
            state: RunState::Exited {
                code: Some(0),
                signal: None,
            },
            ..running(Health::None)
        };
        assert!(!serves_mesh(&unchecked, Some(&exited)));
        let retiring = ContainerStatus {
            retiring: true,
            ..running(Health::Healthy)
        };
        assert!(
            !serves_mesh(&web, Some(&retiring)),
            "a retiring replica gets no traffic"
        );
    }
}
