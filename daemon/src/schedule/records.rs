//! The replicated side of a plan, applied to a replica in one go: new container records
//! (with an address from this node's subnet), records of removed containers (and their
//! addresses) forgotten, and this node's resource counters set to what its records reserve
//! under the current specs ("counters follow records", so a crash between two writes is
//! repaired by the next pass). Pure: the daemon runs it inside one `Node::write_batch`, so
//! a pass is one durable commit and one eager push; the simulator runs it on its replicas.
//!
//! Order inside a batch: new records first, then forgotten ones, so an address released by
//! this batch is never handed to a container of the same batch while the old one may still
//! hold it on the bridge.

use std::net::Ipv4Addr;

use shoal_crdt::{
    ClusterState, ContainerId, ContainerRecord, NTP64, NodeId, Replica, ReplicaError, Resource,
    ServiceName, Timestamp,
};

use super::room::Reserved;

/// Writes this node's container status report when it differs from the one in the state
/// (a report is written only on change). Returns whether it wrote.
pub fn report_status(
    replica: &mut Replica,
    now: NTP64,
    status: &shoal_crdt::NodeStatus,
) -> Result<bool, ReplicaError> {
    let me = replica.node().clone();
    if replica.state().node_status(&me) == Some(status) {
        return Ok(false);
    }
    replica.put_node_status(now, status.clone())?;
    Ok(true)
}

/// Writes what a failed update leaves (`ServiceRecord::after_failure`: the last good spec
/// back, or the failed one paused), unless the service changed or went since the failure was
/// seen. Returns whether it wrote.
pub fn fail_update(
    replica: &mut Replica,
    now: NTP64,
    failure: &super::plan::UpdateFailure,
) -> Result<bool, ReplicaError> {
    let Some((record, version)) = replica.state().service_record(&failure.service) else {
        return Ok(false);
    };
    if version != failure.version || record.failed.is_some() {
        return Ok(false);
    }
    let after = record.after_failure(version, &failure.reason);
    replica.put_service_record(now, failure.service.clone(), after)?;
    Ok(true)
}

/// A container record to write before the container is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub id: ContainerId,
    pub service: ServiceName,
    pub spec_version: Timestamp,
    /// Give it an address from this node's subnet.
    pub with_ip: bool,
}

/// The record changes of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordBatch {
    pub add: Vec<NewRecord>,
    pub forget: Vec<ContainerRecord>,
}

/// A record change of a batch that was refused; the rest of the batch still applies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("address for container {id}: {source}")]
    Address {
        id: ContainerId,
        #[source]
        source: ReplicaError,
    },
    #[error("record of container {id}: {source}")]
    Record {
        id: ContainerId,
        #[source]
        source: ReplicaError,
    },
    #[error("address {ip}: {source}")]
    Release {
        ip: Ipv4Addr,
        #[source]
        source: ReplicaError,
    },
    #[error("counter {resource:?}: {source}")]
    Counter {
        resource: Resource,
        #[source]
        source: ReplicaError,
    },
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// The records written, in the order of `RecordBatch::add`, with their addresses.
    pub added: Vec<Result<ContainerRecord, RecordError>>,
    /// Refused removals and counter updates.
    pub errors: Vec<RecordError>,
}

/// What `me`'s records reserve under the current specs; a record whose service is gone
/// still counts as a container.
pub fn reserved_by_records(state: &ClusterState, me: &NodeId) -> Reserved {
    let mut reserved = Reserved::default();
    for record in state.containers().filter(|record| &record.node == me) {
        match state.service(&record.service) {
            Some((spec, _)) => reserved.add(&spec.resources),
            None => reserved.add_unknown(),
        }
    }
    reserved
}

/// Applies `batch` to `replica` (whose node is this node) at physical time `now`.
pub fn apply_batch(replica: &mut Replica, now: NTP64, batch: &RecordBatch) -> BatchResult {
    let me = replica.node().clone();
    let mut result = BatchResult::default();
    for new in &batch.add {
        result.added.push(add_record(replica, now, &me, new));
    }
    for record in &batch.forget {
        if let Err(source) = replica.remove_container(now, &record.id) {
            result.errors.push(RecordError::Record {
                id: record.id.clone(),
                source,
            });
        }
        if let Some(ip) = record.ip
            && let Err(source) = replica.release_ip(now, ip)
        {
            result.errors.push(RecordError::Release { ip, source });
        }
    }
    result.errors.extend(counters_follow_records(replica, now));
    result
}

fn add_record(
    replica: &mut Replica,
    now: NTP64,
    me: &NodeId,
    new: &NewRecord,
) -> Result<ContainerRecord, RecordError> {
    let ip = if new.with_ip {
        let (ip, _) = replica
            .allocate_ip(now, &new.id)
            .map_err(|source| RecordError::Address {
                id: new.id.clone(),
                source,
            })?;
        Some(ip)
    } else {
        None
    };
    let record = ContainerRecord {
        id: new.id.clone(),
        service: new.service.clone(),
        node: me.clone(),
        spec_version: new.spec_version,
        ip,
    };
    match replica.add_container(now, record.clone()) {
        Ok(_) => Ok(record),
        Err(source) => {
            if let Some(ip) = ip {
                // Do not leave an address allocated to a container without a record.
                let _ = replica.release_ip(now, ip);
            }
            Err(RecordError::Record {
                id: new.id.clone(),
                source,
            })
        }
    }
}

/// Sets this node's PN-counters to what its records reserve; returns refused updates.
pub fn counters_follow_records(replica: &mut Replica, now: NTP64) -> Vec<RecordError> {
    let me = replica.node().clone();
    let reserved = reserved_by_records(replica.state(), &me);
    let mut errors = Vec::new();
    for (resource, target) in [
        (Resource::CpuMillis, reserved.cpu_millis),
        (Resource::MemoryBytes, reserved.memory_bytes),
        (Resource::Containers, u64::from(reserved.containers)),
    ] {
        let target = i64::try_from(target).unwrap_or(i64::MAX);
        let current = replica.state().resource_used(&me, resource);
        let difference = target.saturating_sub(current);
        if difference != 0
            && let Err(source) = replica.adjust_resource(now, resource, difference)
        {
            errors.push(RecordError::Counter { resource, source });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crdt::{Capacity, NodeMeta, ServiceSpec};
    use std::time::Duration;

    fn ms(value: u64) -> NTP64 {
        NTP64::from(Duration::from_millis(value))
    }

    fn replica_with_subnet(name: &str, subnet: &str) -> Replica {
        let node: NodeId = name.parse().unwrap();
        let mut replica = Replica::new(node.clone(), Duration::from_secs(1));
        replica
            .put_node_meta(
                ms(1),
                NodeMeta {
                    address: "127.0.0.1:7000".parse().unwrap(),
                    capacity: Capacity {
                        cpu_millis: 1000,
                        memory_bytes: 1 << 30,
                    },
                    subnet: Some(subnet.parse().unwrap()),
                    heartbeat: Timestamp::new(ms(1), node.hlc_id()),
                    labels: Default::default(),
                    incarnation: None,
                    drain: None,
                },
            )
            .unwrap();
        replica
    }

    fn new_record(id: &str, version: Timestamp) -> NewRecord {
        NewRecord {
            id: id.parse().unwrap(),
            service: "web".parse().unwrap(),
            spec_version: version,
            with_ip: true,
        }
    }

    #[test]
    fn a_batch_adds_forgets_and_sets_counters_in_one_delta() {
        let mut replica = replica_with_subnet("node-a", "10.70.1.0/24");
        let mut spec = ServiceSpec::new("/i");
        spec.resources.cpu_millis = 100;
        spec.resources.memory_bytes = 1 << 20;
        replica
            .put_service(ms(2), "web".parse().unwrap(), spec)
            .unwrap();
        let version = replica.state().service(&"web".parse().unwrap()).unwrap().1;
        let since = replica.own_counter();
        let first = apply_batch(
            &mut replica,
            ms(3),
            &RecordBatch {
                add: vec![new_record("web-1", version), new_record("web-2", version)],
                forget: vec![],
            },
        );
        assert!(first.errors.is_empty(), "{:?}", first.errors);
        let records: Vec<ContainerRecord> = first.added.into_iter().map(Result::unwrap).collect();
        assert_ne!(records[0].ip, records[1].ip);
        let me: NodeId = "node-a".parse().unwrap();
        let state = replica.state();
        assert_eq!(state.resource_used(&me, Resource::Containers), 2);
        assert_eq!(state.resource_used(&me, Resource::CpuMillis), 200);
        assert_eq!(state.resource_used(&me, Resource::MemoryBytes), 2 << 20);
        assert_eq!(replica.own_delta_since(since).origin_ranges().len(), 1);

        // Forget web-1 and add web-3 in one batch: web-3 does not get web-1's address.
        let second = apply_batch(
            &mut replica,
            ms(4),
            &RecordBatch {
                add: vec![new_record("web-3", version)],
                forget: vec![records[0].clone()],
            },
        );
        assert!(second.errors.is_empty(), "{:?}", second.errors);
        let third = second.added[0].clone().unwrap();
        assert_ne!(third.ip, records[0].ip);
        let state = replica.state();
        assert_eq!(state.resource_used(&me, Resource::Containers), 2);
        assert_eq!(state.ip_allocations().len(), 2);
        assert_eq!(reserved_by_records(state, &me).cpu_millis, 200);
    }

    #[test]
    fn refused_changes_are_reported_and_the_rest_applies() {
        let mut replica = replica_with_subnet("node-a", "10.70.2.0/30");
        let version = Timestamp::new(ms(2), "node-a".parse::<NodeId>().unwrap().hlc_id());
        // A /30 has one container address (the gateway takes the other).
        let result = apply_batch(
            &mut replica,
            ms(3),
            &RecordBatch {
                add: vec![new_record("web-1", version), new_record("web-2", version)],
                forget: vec![ContainerRecord {
                    id: "gone-1".parse().unwrap(),
                    service: "web".parse().unwrap(),
                    node: "node-a".parse().unwrap(),
                    spec_version: version,
                    ip: None,
                }],
            },
        );
        assert!(result.added[0].is_ok());
        assert!(
            matches!(result.added[1], Err(RecordError::Address { .. })),
            "{:?}",
            result.added[1]
        );
        assert!(
            matches!(result.errors[..], [RecordError::Record { .. }]),
            "{:?}",
            result.errors
        );
        let me: NodeId = "node-a".parse().unwrap();
        assert_eq!(replica.state().resource_used(&me, Resource::Containers), 1);
    }
}
