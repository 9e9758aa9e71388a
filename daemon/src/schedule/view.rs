//! What the planner reads of the replicated state: the converged view as one plain value,
//! built by a pure function from a `ClusterState` and the set of live members. The daemon
//! builds it under the node's lock; the cluster simulator from its replicas.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use shoal_crdt::{
    Capacity, ClusterState, ContainerId, ContainerRecord, Drain, NodeId, ServiceName, ServiceSpec,
    Subnet, Timestamp,
};

use super::placement::{self, NodeInput, Placement, ServiceInput};
use super::restarts::{short_digest, spec_digest};
use super::rollout::Replica;

/// A service's current spec and the HLC of the write that won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceVersion {
    pub spec: ServiceSpec,
    pub version: Timestamp,
    /// `restarts::short_digest` of the spec: what a container status says it runs.
    pub digest: String,
    /// The record keeps an earlier version to roll back to.
    pub has_earlier: bool,
    /// The current version's update failed and was not rolled back: its rollout pauses.
    pub failed: Option<String>,
}

impl ServiceVersion {
    /// A version without history or failure (a first write).
    pub fn new(spec: ServiceSpec, version: Timestamp) -> ServiceVersion {
        ServiceVersion {
            digest: short_digest(&spec_digest(&spec)),
            spec,
            version,
            has_earlier: false,
            failed: None,
        }
    }
}

/// The converged view one pass plans from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub me: NodeId,
    pub services: BTreeMap<ServiceName, ServiceVersion>,
    /// Live members with their advertised capacity, this node included once its metadata
    /// is in the state.
    pub live_nodes: Vec<NodeInput>,
    /// This node's container records.
    pub own_records: Vec<ContainerRecord>,
    /// When each of `own_records` was written (the HLC of its add): of a surplus, the
    /// planner keeps the replicas placed first. A record missing here counts as oldest.
    pub own_written: BTreeMap<ContainerId, Timestamp>,
    /// The subnet this node claims, if any: new containers get an address from it.
    pub subnet: Option<Subnet>,
    /// The other live members' container subnets (those that won their claims), with the
    /// address to route them through.
    pub peer_subnets: Vec<(Subnet, IpAddr)>,
    /// Mesh-mode services: the addresses of their containers that other live nodes report
    /// running, and healthy when the service has a health check (`ports::serves_mesh`;
    /// this node's own come from its runtime).
    pub mesh_backends: BTreeMap<ServiceName, Vec<Ipv4Addr>>,
    /// Every service's replicas on the other live nodes, as their statuses report them
    /// (the rollout's input; this node's own come from its runtime).
    pub fleet: BTreeMap<ServiceName, Vec<Replica>>,
    /// Live members that are drained (this node included): placement gives them nothing.
    pub drained: BTreeMap<NodeId, Drain>,
}

impl ClusterView {
    /// Reads the view of node `me` from `state`, given which members are live.
    pub fn read(state: &ClusterState, me: &NodeId, live: &BTreeSet<NodeId>) -> ClusterView {
        let services: BTreeMap<ServiceName, ServiceVersion> = state
            .services()
            .filter_map(|(name, _, _)| {
                let (record, version) = state.service_record(name)?;
                let service = ServiceVersion {
                    spec: record.spec.clone(),
                    version,
                    digest: short_digest(&spec_digest(&record.spec)),
                    has_earlier: record.has_earlier_workload(),
                    failed: record.failed.clone(),
                };
                Some((name.clone(), service))
            })
            .collect();
        let live_nodes = state
            .nodes()
            .filter(|(id, _)| live.contains(*id))
            .map(|(id, meta)| NodeInput {
                id: id.clone(),
                capacity: meta.capacity,
                sync_port: Some(meta.address.port()),
                labels: meta.labels.clone(),
                drained: meta.drain.is_some(),
            })
            .collect();
        let drained = state
            .nodes()
            .filter(|(id, _)| live.contains(*id))
            .filter_map(|(id, meta)| Some((id.clone(), meta.drain?)))
            .collect();
        let (own_written, own_records) = state
            .containers_written()
            .filter(|(_, record)| &record.node == me)
            .map(|(written, record)| ((record.id.clone(), written), record.clone()))
            .unzip();
        let peer_subnets = state
            .nodes()
            .filter(|(id, _)| *id != me && live.contains(*id))
            .filter_map(|(id, meta)| {
                let subnet = meta.subnet?;
                (state.subnet_owner(&subnet).as_ref() == Some(id))
                    .then_some((subnet, meta.address.ip()))
            })
            .collect();
        let mut mesh_backends: BTreeMap<ServiceName, Vec<Ipv4Addr>> = BTreeMap::new();
        for record in state.containers() {
            let mesh = state
                .service(&record.service)
                .is_some_and(|(spec, _)| !spec.publish.mode.is_host() && !spec.ports.is_empty());
            if !mesh || &record.node == me || !live.contains(&record.node) {
                continue;
            }
            let Some((spec, _)) = state.service(&record.service) else {
                continue;
            };
            let serves = super::ports::serves_mesh(
                spec,
                state
                    .node_status(&record.node)
                    .and_then(|status| status.containers.get(&record.id)),
            );
            if let (true, Some(ip)) = (serves, record.ip) {
                mesh_backends
                    .entry(record.service.clone())
                    .or_default()
                    .push(ip);
            }
        }
        let mut fleet: BTreeMap<ServiceName, Vec<Replica>> = BTreeMap::new();
        for record in state.containers() {
            if &record.node == me || !live.contains(&record.node) {
                continue;
            }
            let Some(service) = services.get(&record.service) else {
                continue;
            };
            let status = state
                .node_status(&record.node)
                .and_then(|status| status.containers.get(&record.id));
            let current = match status.and_then(|status| status.spec.as_ref()) {
                Some(digest) => *digest == service.digest,
                None => record.spec_version == service.version,
            };
            fleet
                .entry(record.service.clone())
                .or_default()
                .push(Replica {
                    node: record.node.clone(),
                    id: record.id.clone(),
                    current,
                    ready: current && status.is_some_and(|status| status.ready),
                });
        }
        ClusterView {
            me: me.clone(),
            services,
            fleet,
            live_nodes,
            own_records,
            own_written,
            subnet: state.node(me).and_then(|meta| meta.subnet),
            peer_subnets,
            mesh_backends,
            drained,
        }
    }

    /// This node's advertised capacity, once its metadata is in the state.
    pub fn my_capacity(&self) -> Option<Capacity> {
        self.live_nodes
            .iter()
            .find(|node| node.id == self.me)
            .map(|node| node.capacity)
    }

    /// The placement this view gives: replicas of every service on every live node.
    pub fn placement(&self) -> Placement {
        let services: Vec<ServiceInput> = self
            .services
            .iter()
            .map(|(name, service)| ServiceInput {
                name: name.clone(),
                replicas: service.spec.replicas,
                resources: service.spec.resources,
                ports: service.spec.host_ports(),
                mesh: !service.spec.publish.mode.is_host(),
                global: !service.spec.mode.is_replicated(),
                constraints: service.spec.placement_constraints().unwrap_or_default(),
                spread: service.spec.spread.clone(),
            })
            .collect();
        placement::place(&services, &self.live_nodes)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shoal_crdt::{NTP64, NodeMeta, Replica};

    use super::*;

    #[test]
    fn drained_live_members_come_from_their_own_metadata() {
        let now = NTP64::from(Duration::from_millis(5));
        // The state as an observer holds it, with each node's metadata written by that node.
        let mut state = Replica::new("observer".parse().unwrap(), Duration::from_secs(1));
        let mut drained_b = None;
        for (name, drain) in [("a", None), ("b", Some(60_000)), ("c", Some(1_000))] {
            let mut replica = Replica::new(name.parse().unwrap(), Duration::from_secs(1));
            let meta = NodeMeta {
                address: "127.0.0.1:7443".parse().unwrap(),
                capacity: Capacity {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                },
                subnet: None,
                heartbeat: Timestamp::new(now, replica.node().hlc_id()),
                labels: Default::default(),
                incarnation: None,
                drain: drain.map(|deadline_ms| Drain {
                    since_unix_ms: 1,
                    deadline_ms,
                }),
            };
            if name == "b" {
                drained_b = meta.drain;
            }
            let delta = replica.put_node_meta(now, meta).unwrap();
            state.apply_delta(now, replica.node(), &delta).unwrap();
        }
        // c is drained but down: it is in neither list.
        let live: BTreeSet<NodeId> = ["a", "b"].iter().map(|n| n.parse().unwrap()).collect();
        let view = ClusterView::read(state.state(), &"a".parse().unwrap(), &live);
        let b: NodeId = "b".parse().unwrap();
        assert_eq!(view.drained.keys().collect::<Vec<_>>(), [&b]);
        assert_eq!(view.drained.get(&b).copied(), drained_b);
        let flags: Vec<(String, bool)> = view
            .live_nodes
            .iter()
            .map(|node| (node.id.to_string(), node.drained))
            .collect();
        assert_eq!(flags, [("a".to_string(), false), ("b".to_string(), true)]);
    }

    #[test]
    fn own_records_come_with_when_they_were_written() {
        let a: NodeId = "a".parse().unwrap();
        let mut mine = Replica::new(a.clone(), Duration::from_secs(1));
        let mut theirs = Replica::new("b".parse().unwrap(), Duration::from_secs(1));
        let at = |ms| NTP64::from(Duration::from_millis(ms));
        let record = |id: &str, node: &NodeId| ContainerRecord {
            id: id.parse().unwrap(),
            service: "web".parse().unwrap(),
            node: node.clone(),
            spec_version: Timestamp::new(at(1), node.hlc_id()),
            ip: None,
        };
        // The older record has the larger id: the stamps, not the ids, say which is first.
        mine.add_container(at(100), record("web-ffffffff", &a))
            .unwrap();
        mine.add_container(at(900), record("web-00000001", &a))
            .unwrap();
        let b = theirs.node().clone();
        let delta = theirs
            .add_container(at(50), record("web-0000000b", &b))
            .unwrap();
        mine.apply_delta(at(900), &b, &delta).unwrap();

        let view = ClusterView::read(mine.state(), &a, &[a.clone()].into());
        let written: Vec<(String, NTP64)> = view
            .own_written
            .iter()
            .map(|(id, stamp)| (id.to_string(), *stamp.get_time()))
            .collect();
        assert_eq!(
            written,
            [
                ("web-00000001".to_string(), at(900)),
                ("web-ffffffff".to_string(), at(100)),
            ]
        );
        assert_eq!(view.own_records.len(), 2, "b's record is not ours");
    }
}
