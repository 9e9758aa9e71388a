//! Workloads shared by the criterion benches and the README table: the same
//! remote operations prepared for shoal's `Replica`, for raw `crdts` types and
//! for `automerge`, so each implementation applies the same logical changes.

#![allow(dead_code)] // each bench binary uses a subset

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::transaction::Transactable;
use crdts::{CmRDT, CvRDT, LWWReg, Orswot};
use shoal_crdt::{
    ContainerId, ContainerRecord, Delta, NTP64, NodeId, Replica, ServiceName, ServiceRecord,
    ServiceSpec, Timestamp,
};

/// Distinct keys the map-set workload writes (each is written many times).
pub const MAP_KEYS: usize = 1_000;

pub fn node(name: &str) -> NodeId {
    name.parse().expect("valid node id")
}

pub fn max_drift() -> Duration {
    Duration::from_millis(500)
}

/// Physical time for op `index`: one microsecond apart, in 2024.
pub fn physical(index: usize) -> NTP64 {
    NTP64::from(Duration::from_secs(1_704_067_200) + Duration::from_micros(index as u64))
}

pub fn service_name(key: usize) -> ServiceName {
    format!("svc-{key}").parse().expect("valid service name")
}

pub fn image(op: usize) -> String {
    format!("/var/lib/shoal/images/app-{op}")
}

/// The map-set workload as shoal deltas, one per remote op, in send order.
pub struct ShoalMapSet {
    pub source: NodeId,
    pub deltas: Vec<Delta>,
}

pub fn shoal_map_set(ops: usize) -> ShoalMapSet {
    shoal_map_set_of(ops, minimal_spec)
}

/// The map-set workload with `spec(op)` as op `op`'s spec.
pub fn shoal_map_set_of(ops: usize, spec: fn(usize) -> ServiceSpec) -> ShoalMapSet {
    let source = node("source");
    let mut replica = Replica::new(source.clone(), max_drift());
    let deltas = (0..ops)
        .map(|op| {
            replica
                .put_service(physical(op), service_name(op % MAP_KEYS), spec(op))
                .expect("valid spec")
        })
        .collect();
    ShoalMapSet { source, deltas }
}

/// A spec with only its image set (every other field at its default).
pub fn minimal_spec(op: usize) -> ServiceSpec {
    ServiceSpec::new(image(op))
}

/// A spec as a fleet's service has one: a command, a dozen variables, published ports,
/// volumes, a secret, constraints, a health check and an update policy.
pub fn service_like_spec(op: usize) -> ServiceSpec {
    let env: serde_json::Map<String, serde_json::Value> = (0..12)
        .map(|index| {
            (
                format!("APP_SETTING_{index}"),
                format!("value-{index}-of-release-{op}").into(),
            )
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "image": image(op),
        "command": ["/bin/app", "--listen", "0.0.0.0:8080", "--config", "/etc/app/app.toml"],
        "env": env,
        "replicas": 3,
        "resources": {"cpu_millis": 500, "memory_bytes": 268435456u64, "pids_max": 256},
        "ports": ["80:8080", "127.0.0.1:9100:9100"],
        "volumes": ["/srv/app:/data:ro", "cache:/var/cache/app"],
        "tmpfs": ["/tmp:size=64m"],
        "env_files": ["/run/keys/app.env"],
        "secrets": {"tls_key": "/run/keys/app-key"},
        "constraints": ["zone != lab"],
        "spread": "zone",
        "health": {"http": "http://127.0.0.1:8080/healthz", "interval_ms": 2000, "timeout_ms": 1000},
        "update": {"max_parallel": 1, "order": "start-first"}
    }))
    .expect("a valid spec")
}

/// Applies every delta to a fresh replica; returns it so the work is kept.
pub fn shoal_apply(workload: &ShoalMapSet, at: NTP64) -> Replica {
    shoal_apply_copies(workload, at, 1)
}

/// `shoal_apply` with every delta delivered `copies` times in a row, as the fleet's push
/// delivers a write from several members.
pub fn shoal_apply_copies(workload: &ShoalMapSet, at: NTP64, copies: usize) -> Replica {
    let mut target = Replica::new(node("target"), max_drift());
    for delta in &workload.deltas {
        for _ in 0..copies {
            target
                .apply_delta(at, &workload.source, delta)
                .expect("in-order deltas apply");
        }
    }
    target
}

/// The fair raw-`crdts` equivalent of shoal's LWW map: one `LWWReg` per key
/// in a `BTreeMap`, the op being the writer's register, stamped with the same
/// HLC type shoal uses.
pub type CrdtsMap = BTreeMap<ServiceName, LWWReg<ServiceRecord, Timestamp>>;

/// The map-set workload as `crdts` registers holding the very values shoal's deltas carry:
/// a service's register holds its record, the spec with its earlier versions, so both
/// sides merge values of the same size.
pub fn crdts_map_set(ops: usize) -> Vec<(ServiceName, LWWReg<ServiceRecord, Timestamp>)> {
    crdts_map_set_of(ops, minimal_spec)
}

/// `crdts_map_set` with `spec(op)` as op `op`'s spec.
pub fn crdts_map_set_of(
    ops: usize,
    spec: fn(usize) -> ServiceSpec,
) -> Vec<(ServiceName, LWWReg<ServiceRecord, Timestamp>)> {
    let mut replica = Replica::new(node("source"), max_drift());
    (0..ops)
        .map(|op| {
            let name = service_name(op % MAP_KEYS);
            replica
                .put_service(physical(op), name.clone(), spec(op))
                .expect("valid spec");
            let (record, marker) = replica.state().service_record(&name).expect("just written");
            (
                name,
                LWWReg {
                    val: record.clone(),
                    marker,
                },
            )
        })
        .collect()
}

pub fn crdts_apply(ops: &[(ServiceName, LWWReg<ServiceRecord, Timestamp>)]) -> CrdtsMap {
    crdts_apply_copies(ops, 1)
}

/// `crdts_apply` with every register merged `copies` times in a row.
pub fn crdts_apply_copies(
    ops: &[(ServiceName, LWWReg<ServiceRecord, Timestamp>)],
    copies: usize,
) -> CrdtsMap {
    let mut target = CrdtsMap::new();
    for (key, register) in ops {
        for _ in 0..copies {
            match target.get_mut(key) {
                Some(current) => current.merge(register.clone()),
                None => {
                    target.insert(key.clone(), register.clone());
                }
            }
        }
    }
    target
}

/// The map-set workload in automerge: one change per put on the root map.
pub fn automerge_map_set(ops: usize) -> Vec<automerge::Change> {
    let mut document = automerge::AutoCommit::new();
    (0..ops)
        .map(|op| {
            document
                .put(automerge::ROOT, format!("svc-{}", op % MAP_KEYS), image(op))
                .expect("put on root");
            document.commit();
            document
                .get_last_local_change()
                .expect("a change was just committed")
        })
        .collect()
}

pub fn automerge_apply(changes: &[automerge::Change]) -> automerge::Automerge {
    let mut target = automerge::Automerge::new();
    for change in changes {
        target
            .apply_changes([change.clone()])
            .expect("changes apply in order");
    }
    target
}

/// All changes in one `apply_changes` call: automerge's favourable case
/// (what its sync protocol does after a partition), shown for fairness.
pub fn automerge_apply_batch(changes: &[automerge::Change]) -> automerge::Automerge {
    let mut target = automerge::Automerge::new();
    target
        .apply_changes(changes.to_vec())
        .expect("changes apply");
    target
}

/// OR-Set workload: add containers, and remove every third one just added.
fn container_record(source: &NodeId, index: usize) -> ContainerRecord {
    ContainerRecord {
        id: format!("c-{index}")
            .parse::<ContainerId>()
            .expect("valid container id"),
        service: service_name(index % 16),
        node: source.clone(),
        spec_version: Timestamp::new(physical(0), source.hlc_id()),
        ip: None,
    }
}

pub fn shoal_or_set(ops: usize) -> ShoalMapSet {
    let source = node("source");
    let mut replica = Replica::new(source.clone(), max_drift());
    let mut deltas = Vec::with_capacity(ops);
    let mut added = 0;
    for op in 0..ops {
        let delta = if op % 3 == 2 {
            let id = container_record(&source, added - 1).id;
            replica
                .remove_container(physical(op), &id)
                .expect("just added")
        } else {
            added += 1;
            replica
                .add_container(physical(op), container_record(&source, added - 1))
                .expect("own container")
        };
        deltas.push(delta);
    }
    ShoalMapSet { source, deltas }
}

pub type CrdtsSet = Orswot<ContainerRecord, u64>;

pub fn crdts_or_set(ops: usize) -> Vec<crdts::orswot::Op<ContainerRecord, u64>> {
    let source = node("source");
    let mut replica = CrdtsSet::new();
    let mut list = Vec::with_capacity(ops);
    let mut added = 0;
    for op in 0..ops {
        let operation = if op % 3 == 2 {
            let record = container_record(&source, added - 1);
            let context = replica.contains(&record).derive_rm_ctx();
            replica.rm(record, context)
        } else {
            added += 1;
            let context = replica.read_ctx().derive_add_ctx(1);
            replica.add(container_record(&source, added - 1), context)
        };
        replica.apply(operation.clone());
        list.push(operation);
    }
    list
}

pub fn crdts_or_set_apply(ops: &[crdts::orswot::Op<ContainerRecord, u64>]) -> CrdtsSet {
    let mut target = CrdtsSet::new();
    for operation in ops {
        target.apply(operation.clone());
    }
    target
}
