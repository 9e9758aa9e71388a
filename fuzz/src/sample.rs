//! A small honest cluster to fuzz against: three replicas that wrote every kind of entry
//! (node metadata with subnets, services with every workload field, a removed service's
//! tombstone, containers, IPs, counters, a status report) and synced with each other. The
//! codec target applies its deltas to a copy of node `n3`'s replica, and the seed writer
//! encodes real deltas, summaries and snapshots from these replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_crdt::{
    Capacity, ContainerId, ContainerRecord, ContainerStatus, NTP64, NodeId, NodeMeta, NodeStatus,
    Replica, Resource, RunState, ServiceName, ServiceSpec, Subnet, Summary, Timestamp,
};

/// The daemon's default `sync.max_clock_drift_ms`.
pub const MAX_DRIFT: Duration = Duration::from_millis(1000);
/// The physical time the sample's writes start at (unix seconds, 2023-11-14).
const START_UNIX_S: u64 = 1_700_000_000;
/// The node fuzzed deltas are applied to, and the peer they come from.
pub const RECEIVER: &str = "n3";
pub const SENDER: &str = "n1";

pub fn node(name: &str) -> NodeId {
    name.parse().expect("sample node names are valid")
}

/// Physical time `offset_ms` after the sample's start.
pub fn at(offset_ms: u64) -> NTP64 {
    NTP64::from(Duration::from_secs(START_UNIX_S) + Duration::from_millis(offset_ms))
}

/// The time fuzzed deltas are applied at: after every sample write, within the drift.
pub fn now() -> NTP64 {
    at(60_000)
}

pub fn meta(index: u8) -> NodeMeta {
    let name = format!("n{index}");
    NodeMeta {
        address: format!("127.0.0.{index}:7443")
            .parse()
            .expect("sample address"),
        capacity: Capacity {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
        },
        subnet: Some(
            Subnet::new(format!("10.42.{index}.0").parse().expect("sample ip"), 24)
                .expect("sample subnet"),
        ),
        heartbeat: Timestamp::new(NTP64(0), node(&name).hlc_id()),
        labels: [("zone".to_owned(), format!("z{index}"))].into(),
        incarnation: Some(0x5eed_0000 + u64::from(index)),
        drain: None,
    }
}

/// A spec that uses every field.
pub fn web_spec() -> ServiceSpec {
    let mut spec = ServiceSpec::new("/var/lib/shoal/images/web.tar");
    spec.image_digest = Some(format!("sha256:{}", "ab".repeat(32)));
    spec.command = vec!["/bin/httpd".into(), "-f".into(), "-p".into(), "80".into()];
    spec.env = BTreeMap::from([("GREETING".into(), "hello".into())]);
    spec.replicas = 3;
    spec.resources.cpu_millis = 250;
    spec.resources.memory_bytes = 64 << 20;
    spec.ports = vec!["8080:80".into(), "127.0.0.1:5353:53/udp".into()];
    spec.volumes = vec!["cache:/var/cache:ro".into(), "/srv/www:/www".into()];
    spec.tmpfs = vec!["/tmp:size=64m".into()];
    spec.env_files = vec!["/etc/shoal/web.env".into()];
    spec.secrets = BTreeMap::from([("token".into(), "/etc/shoal/token".into())]);
    spec
}

/// The three sample replicas, synced with each other.
pub fn cluster() -> [Replica; 3] {
    let mut replicas = [1u8, 2, 3].map(|index| Replica::new(node(&format!("n{index}")), MAX_DRIFT));
    let mut time_ms = 0;
    let mut tick = || {
        time_ms += 10;
        at(time_ms)
    };
    for (index, replica) in (1u8..).zip(replicas.iter_mut()) {
        replica
            .put_node_meta(tick(), meta(index))
            .expect("sample meta");
    }
    sync_all(&mut replicas);
    let web: ServiceName = "web".parse().expect("sample name");
    let db: ServiceName = "db".parse().expect("sample name");
    let n1 = &mut replicas[0];
    n1.put_service(tick(), web.clone(), web_spec())
        .expect("sample service");
    n1.put_service(tick(), db.clone(), ServiceSpec::new("/img/db.tar"))
        .expect("sample service");
    n1.remove_service(tick(), &db).expect("sample remove");
    sync_all(&mut replicas);
    let [n1, n2, n3] = &mut replicas;
    let spec_version = n1
        .state()
        .service(&web)
        .map(|(_, version)| version)
        .expect("web was put");
    for (replica, id) in [(&mut *n2, "web-0a1b"), (&mut *n3, "web-2c3d")] {
        let id: ContainerId = id.parse().expect("sample container id");
        let record = ContainerRecord {
            id: id.clone(),
            service: web.clone(),
            node: replica.node().clone(),
            spec_version,
            ip: None,
        };
        replica
            .add_container(tick(), record)
            .expect("sample container");
        replica.allocate_ip(tick(), &id).expect("sample ip");
        replica
            .adjust_resource(tick(), Resource::CpuMillis, 250)
            .expect("sample counter");
        replica
            .adjust_resource(tick(), Resource::Containers, 1)
            .expect("sample counter");
    }
    let gone: ContainerId = "web-9f9f".parse().expect("sample container id");
    let record = ContainerRecord {
        id: gone.clone(),
        service: web.clone(),
        node: n2.node().clone(),
        spec_version,
        ip: None,
    };
    n2.add_container(tick(), record).expect("sample container");
    n2.remove_container(tick(), &gone).expect("sample remove");
    let mut status = NodeStatus::default();
    status.containers.insert(
        "web-2c3d".parse().expect("sample container id"),
        ContainerStatus {
            state: RunState::Running,
            started_unix_ms: Some(START_UNIX_S * 1000),
            restarts: 1,
            health: Default::default(),
            spec: Some("0123456789abcdef".to_owned()),
            ready: true,
            retiring: false,
        },
    );
    status
        .errors
        .insert(db.clone(), "image /img/db.tar: not found".into());
    n3.put_node_status(tick(), status).expect("sample status");
    sync_all(&mut replicas);
    // Every member has seen every write: the tombstones are collected, so each replica
    // has a GC floor, and a peer below it gets a full snapshot.
    for replica in &mut replicas {
        replica.collect_garbage();
    }
    // And one tombstone not yet collected.
    let cache: ServiceName = "cache".parse().expect("sample name");
    let n1 = &mut replicas[0];
    n1.put_service(
        at(50_000),
        cache.clone(),
        ServiceSpec::new("/img/cache.tar"),
    )
    .expect("sample service");
    n1.remove_service(at(50_010), &cache)
        .expect("sample remove");
    sync_all(&mut replicas);
    replicas
}

/// Every replica pulls from every other and learns its summary.
pub fn sync_all(replicas: &mut [Replica]) {
    for to in 0..replicas.len() {
        for from in 0..replicas.len() {
            if to == from {
                continue;
            }
            let delta = replicas[from].delta_for(&replicas[to].summary());
            let sender = replicas[from].node().clone();
            replicas[to]
                .apply_delta(now(), &sender, &delta)
                .expect("sample sync");
        }
    }
    for to in 0..replicas.len() {
        for from in 0..replicas.len() {
            let summary: Summary = replicas[from].summary();
            let sender = replicas[from].node().clone();
            replicas[to].observe_summary(&sender, &summary);
        }
    }
}

/// The replica fuzzed deltas are applied to: `n3` after the sample history.
pub fn receiver() -> Replica {
    let [_, _, n3] = cluster();
    n3
}
