//! The history of acknowledged writes and the checker that compares a
//! converged replica against it, type by type:
//! - services (LWW-Register per name) and node metadata (LWW-Map): the write
//!   with the highest HLC decides, a put shows its value, a remove or an
//!   eviction shows nothing;
//! - containers and IP allocations (OR-Sets): an add is present unless a
//!   later remove observed it (its dot was covered by the remover's version
//!   vector); re-adding a container id replaces the earlier add;
//! - resource counters (PN-Counter): the sum of every adjustment.
//!
//! Only writes whose dots the converged version vector covers are expected: a
//! node that died or whose clock is beyond the drift limit may have acknowledged
//! writes nobody else ever received. The world checks separately that every
//! write of a healthy node is covered.

use super::harness::Violation;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::{
    ContainerId, ContainerRecord, NodeId, NodeMeta, Replica, Resource, ServiceName, ServiceSpec,
    Timestamp, VersionVector,
};

/// One acknowledged local operation that wrote something.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) node: NodeId,
    /// Dots `(first..=last)` of this write's entries (one per entry).
    pub(crate) first_counter: u64,
    pub(crate) last_counter: u64,
    pub(crate) hlc: Timestamp,
    /// The writer's version vector just before the write: what it observed.
    pub(crate) observed: VersionVector,
    pub(crate) op: Op,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    PutService {
        name: ServiceName,
        spec: Box<ServiceSpec>,
    },
    RemoveService {
        name: ServiceName,
    },
    PutNodeMeta {
        meta: NodeMeta,
    },
    Evict {
        node: NodeId,
    },
    AddContainer {
        record: ContainerRecord,
    },
    RemoveContainer {
        id: ContainerId,
    },
    Adjust {
        resource: Resource,
        amount: i64,
    },
    AllocateIp {
        ip: Ipv4Addr,
        container: ContainerId,
    },
    ReleaseIp {
        ip: Ipv4Addr,
    },
}

impl Write {
    fn covered_by(&self, vv: &VersionVector) -> bool {
        vv.get(&self.node) >= self.last_counter
    }

    /// Whether this write (an add) was observed by `later` (a remove or re-add).
    fn observed_by(&self, later: &Write) -> bool {
        later.observed.get(&self.node) >= self.last_counter
    }
}

#[derive(Debug, Default)]
pub(crate) struct History {
    writes: Vec<Write>,
}

impl History {
    pub(crate) fn record(&mut self, write: Write) {
        assert!(
            write.first_counter >= 1 && write.first_counter <= write.last_counter,
            "bad dot range {write:?}"
        );
        self.writes.push(write);
    }

    pub(crate) fn len(&self) -> usize {
        self.writes.len()
    }

    /// The highest counter each node acknowledged.
    pub(crate) fn last_counters(&self) -> BTreeMap<NodeId, u64> {
        let mut last = BTreeMap::new();
        for write in &self.writes {
            let slot = last.entry(write.node.clone()).or_insert(0);
            *slot = write.last_counter.max(*slot);
        }
        last
    }

    /// Compares `replica` (converged) with what the covered writes imply.
    pub(crate) fn check(&self, replica: &Replica, nodes: &[NodeId]) -> Result<(), Violation> {
        let vv = replica.version_vector();
        let covered: Vec<&Write> = self
            .writes
            .iter()
            .filter(|write| write.covered_by(vv))
            .collect();
        let state = replica.state();
        let who = replica.node();

        // Services: highest HLC decides.
        let mut services: BTreeMap<&ServiceName, &Write> = BTreeMap::new();
        for write in &covered {
            if let Op::PutService { name, .. } | Op::RemoveService { name } = &write.op {
                let slot = services.entry(name).or_insert(write);
                if write.hlc > slot.hlc {
                    *slot = write;
                }
            }
        }
        let mut expected_live = 0;
        for (name, write) in &services {
            let actual = state.service(name);
            match &write.op {
                Op::PutService { spec, .. } => {
                    expected_live += 1;
                    if actual != Some((&**spec, write.hlc)) {
                        return Err(Violation(format!(
                            "{who}: service {name} should be the put at {} by {}, found {actual:?}",
                            write.hlc, write.node
                        )));
                    }
                }
                _ => {
                    if actual.is_some() {
                        return Err(Violation(format!(
                            "{who}: service {name} was removed at {} by {} but is present: {actual:?}",
                            write.hlc, write.node
                        )));
                    }
                }
            }
        }
        let live = state.services().count();
        if live != expected_live {
            return Err(Violation(format!(
                "{who}: {live} live services, expected {expected_live}"
            )));
        }

        // Node metadata: highest HLC decides; an eviction hides the node.
        let mut metas: BTreeMap<&NodeId, &Write> = BTreeMap::new();
        for write in &covered {
            let node = match &write.op {
                Op::PutNodeMeta { .. } => &write.node,
                Op::Evict { node } => node,
                _ => continue,
            };
            let slot = metas.entry(node).or_insert(write);
            if write.hlc > slot.hlc {
                *slot = write;
            }
        }
        for node in nodes {
            let actual = state.node(node);
            match metas.get(node).map(|write| (&write.op, write.hlc)) {
                Some((Op::PutNodeMeta { meta }, hlc)) => {
                    let mut expected = meta.clone();
                    expected.heartbeat = hlc;
                    if actual != Some(&expected) {
                        return Err(Violation(format!(
                            "{who}: node {node} meta should be the put at {hlc}, found {actual:?}"
                        )));
                    }
                }
                Some((_, hlc)) => {
                    // Evicted: gone (its tombstone may have been collected since).
                    if actual.is_some() {
                        return Err(Violation(format!(
                            "{who}: node {node} was evicted at {hlc} but shows {actual:?}"
                        )));
                    }
                }
                None => {
                    if actual.is_some() {
                        return Err(Violation(format!(
                            "{who}: node {node} never wrote covered metadata but shows {actual:?}"
                        )));
                    }
                }
            }
        }

        // Containers: live adds = covered adds no covered later write observed.
        let mut adds: BTreeMap<&ContainerId, Vec<&Write>> = BTreeMap::new();
        let mut killers: BTreeMap<&ContainerId, Vec<&Write>> = BTreeMap::new();
        for write in &covered {
            match &write.op {
                Op::AddContainer { record } => {
                    adds.entry(&record.id).or_default().push(write);
                    killers.entry(&record.id).or_default().push(write);
                }
                Op::RemoveContainer { id } => killers.entry(id).or_default().push(write),
                _ => {}
            }
        }
        let mut expected_containers: BTreeMap<&ContainerId, &ContainerRecord> = BTreeMap::new();
        for (id, list) in &adds {
            let kills = killers.get(id).map(Vec::as_slice).unwrap_or_default();
            let live = list
                .iter()
                .filter(|add| !kills.iter().any(|kill| add.observed_by(kill)));
            if let Some(winner) = live.max_by_key(|add| add.hlc) {
                let Op::AddContainer { record } = &winner.op else {
                    unreachable!("filtered above")
                };
                expected_containers.insert(id, record);
            }
        }
        let actual_containers: BTreeMap<&ContainerId, &ContainerRecord> = state
            .containers()
            .map(|record| (&record.id, record))
            .collect();
        if actual_containers != expected_containers {
            return Err(Violation(format!(
                "{who}: containers differ from the history\n  expected {expected_containers:?}\n  found    {actual_containers:?}"
            )));
        }

        // Counters: the sum of covered adjustments.
        let mut sums: BTreeMap<(&NodeId, Resource), i64> = BTreeMap::new();
        for write in &covered {
            if let Op::Adjust { resource, amount } = &write.op {
                *sums.entry((&write.node, *resource)).or_default() += amount;
            }
        }
        for node in nodes {
            for resource in [
                Resource::CpuMillis,
                Resource::MemoryBytes,
                Resource::Containers,
            ] {
                let expected = sums.get(&(node, resource)).copied().unwrap_or(0);
                let actual = state.resource_used(node, resource);
                if actual != expected {
                    return Err(Violation(format!(
                        "{who}: counter {node}/{resource:?} is {actual}, expected {expected}"
                    )));
                }
            }
        }

        // IP allocations: live = covered allocations not released (after) by their node.
        let mut live_ips: BTreeMap<Ipv4Addr, Vec<(Timestamp, &NodeId, &ContainerId)>> =
            BTreeMap::new();
        for write in &covered {
            let Op::AllocateIp { ip, container } = &write.op else {
                continue;
            };
            let released = covered.iter().any(|later| {
                matches!(&later.op, Op::ReleaseIp { ip: released } if released == ip)
                    && later.node == write.node
                    && write.observed_by(later)
            });
            if !released {
                live_ips
                    .entry(*ip)
                    .or_default()
                    .push((write.hlc, &write.node, container));
            }
        }
        let mut expected_winners = Vec::new();
        let mut expected_conflicts = 0;
        for (ip, list) in &mut live_ips {
            list.sort();
            expected_conflicts += usize::from(list.len() > 1);
            let (hlc, node, container) = list[0];
            expected_winners.push((*ip, container.clone(), node.clone(), hlc));
        }
        let actual_winners: Vec<_> = state
            .ip_allocations()
            .into_iter()
            .map(|allocation| {
                (
                    allocation.ip,
                    allocation.container,
                    allocation.node,
                    allocation.allocated,
                )
            })
            .collect();
        if actual_winners != expected_winners {
            return Err(Violation(format!(
                "{who}: ip allocations differ from the history\n  expected {expected_winners:?}\n  found    {actual_winners:?}"
            )));
        }
        let conflicts = state.ip_conflicts().len();
        if conflicts != expected_conflicts {
            return Err(Violation(format!(
                "{who}: {conflicts} ip conflicts, expected {expected_conflicts}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn node(name: &str) -> NodeId {
        name.parse().expect("valid node id")
    }

    /// The checker must fail when a replica lacks an acknowledged write, or
    /// shows a value the history says was overwritten.
    #[test]
    fn checker_catches_a_lost_or_stale_write() {
        let a = node("a");
        let mut writer = Replica::new(a.clone(), Duration::from_millis(500));
        let name: ServiceName = "web".parse().expect("valid name");
        let mut history = History::default();
        let mut stale = None;
        for (second, image) in [(1, "/images/one"), (2, "/images/two")] {
            let observed = writer.version_vector().clone();
            let before = observed.get(&a);
            let spec = ServiceSpec::new(image);
            let now = crate::NTP64::from(Duration::from_secs(1_700_000_000 + second));
            let delta = writer
                .put_service(now, name.clone(), spec.clone())
                .expect("valid spec");
            history.record(Write {
                node: a.clone(),
                first_counter: before + 1,
                last_counter: writer.version_vector().get(&a),
                hlc: delta.max_timestamp().expect("one entry"),
                observed,
                op: Op::PutService {
                    name: name.clone(),
                    spec: Box::new(spec),
                },
            });
            if second == 1 {
                stale = Some(writer.clone());
            }
        }
        assert_eq!(history.check(&writer, std::slice::from_ref(&a)), Ok(()));
        // A replica that only has the first write: the second is not covered,
        // so the checker expects exactly the first and is satisfied...
        let stale = stale.expect("kept");
        assert_eq!(history.check(&stale, std::slice::from_ref(&a)), Ok(()));
        // ...but a replica claiming to cover both while showing the first fails.
        let mut forged = stale.clone();
        let delta = writer.delta_for(&forged.summary());
        let mut stripped = writer.clone();
        stripped
            .remove_service(
                crate::NTP64::from(Duration::from_secs(1_700_000_010)),
                &name,
            )
            .expect("present");
        forged
            .apply_delta(
                crate::NTP64::from(Duration::from_secs(1_700_000_010)),
                &a,
                &delta,
            )
            .expect("applies");
        assert_eq!(history.check(&forged, std::slice::from_ref(&a)), Ok(()));
        let error = history
            .check(&stripped, &[a])
            .expect_err("the service was removed without a recorded remove");
        assert!(error.0.contains("web"), "{error}");
    }
}
