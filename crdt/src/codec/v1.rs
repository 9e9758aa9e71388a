//! Format version 1, kept to read what older daemons wrote and sent: the same layout as
//! today except that service specs and node metadata were encoded in place (postcard) with
//! the fields they had then, there was no status table, and summaries (in versions 1 and 2)
//! had no digest. Decoded into today's types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uhlc::NTP64;

use crate::delta::{Delta, DeltaBase, Summary};
use crate::entry::{Dot, Entry};
use crate::replica::{PeerView, Snapshot};
use crate::state::{Change, Counts, IpClaim, NodeRecord};
use crate::{
    Capacity, ContainerId, ContainerRecord, NodeId, NodeMeta, Resource, Resources, RestartPolicy,
    ServiceName, ServiceRecord, ServiceSpec, Subnet, VersionVector,
};

/// A service spec as version 1 laid it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpecV1 {
    pub image: String,
    pub image_digest: Option<String>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub replicas: u32,
    pub resources: Resources,
    pub restart: RestartPolicy,
}

impl From<SpecV1> for ServiceSpec {
    fn from(old: SpecV1) -> Self {
        ServiceSpec {
            image_digest: old.image_digest,
            command: old.command,
            env: old.env,
            replicas: old.replicas,
            resources: old.resources,
            restart: old.restart,
            ..ServiceSpec::new(old.image)
        }
    }
}

/// Node metadata as version 1 laid it out (no labels).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeMetaV1 {
    pub address: std::net::SocketAddr,
    pub capacity: Capacity,
    pub subnet: Option<Subnet>,
    pub heartbeat: uhlc::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecordV1 {
    pub meta: NodeMetaV1,
    pub subnet_claimed: Option<uhlc::Timestamp>,
}

impl From<NodeRecordV1> for NodeRecord {
    fn from(old: NodeRecordV1) -> Self {
        NodeRecord {
            meta: NodeMeta {
                address: old.meta.address,
                capacity: old.meta.capacity,
                subnet: old.meta.subnet,
                heartbeat: old.meta.heartbeat,
                labels: BTreeMap::new(),
                incarnation: None,
                drain: None,
            },
            subnet_claimed: old.subnet_claimed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ChangeV1 {
    Service {
        name: ServiceName,
        entry: Entry<SpecV1>,
    },
    Node {
        node: NodeId,
        entry: Entry<NodeRecordV1>,
    },
    Container {
        id: ContainerId,
        add: Dot,
        entry: Entry<ContainerRecord>,
    },
    Counter {
        node: NodeId,
        resource: Resource,
        entry: Entry<Counts>,
    },
    Ip {
        ip: std::net::Ipv4Addr,
        add: Dot,
        entry: Entry<IpClaim>,
    },
}

impl From<ChangeV1> for Change {
    fn from(old: ChangeV1) -> Self {
        match old {
            ChangeV1::Service { name, entry } => Change::Service {
                name,
                entry: Entry {
                    hlc: entry.hlc,
                    dot: entry.dot,
                    value: entry.value.map(ServiceSpec::from).map(ServiceRecord::from),
                },
            },
            ChangeV1::Node { node, entry } => Change::Node {
                node,
                entry: Entry {
                    hlc: entry.hlc,
                    dot: entry.dot,
                    value: entry.value.map(NodeRecord::from),
                },
            },
            ChangeV1::Container { id, add, entry } => Change::Container { id, add, entry },
            ChangeV1::Counter {
                node,
                resource,
                entry,
            } => Change::Counter {
                node,
                resource,
                entry,
            },
            ChangeV1::Ip { ip, add, entry } => Change::Ip { ip, add, entry },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeltaV1 {
    pub base: DeltaBase,
    pub changes: Vec<ChangeV1>,
}

impl From<DeltaV1> for Delta {
    fn from(old: DeltaV1) -> Self {
        Delta {
            base: old.base,
            changes: old.changes.into_iter().map(Change::from).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotV1 {
    pub node: NodeId,
    pub changes: Vec<ChangeV1>,
    pub vv: VersionVector,
    pub gc_floor: VersionVector,
    pub clock_last: NTP64,
    pub peers: BTreeMap<NodeId, PeerView>,
}

impl From<SnapshotV1> for Snapshot {
    fn from(old: SnapshotV1) -> Self {
        Snapshot {
            node: old.node,
            changes: old.changes.into_iter().map(Change::from).collect(),
            vv: old.vv,
            gc_floor: old.gc_floor,
            clock_last: old.clock_last,
            peers: old.peers,
        }
    }
}

/// A summary as versions 1 and 2 laid it out: the version vector alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SummaryV1 {
    pub vv: VersionVector,
}

impl From<SummaryV1> for Summary {
    fn from(old: SummaryV1) -> Self {
        Summary {
            vv: old.vv,
            digest: None,
        }
    }
}
