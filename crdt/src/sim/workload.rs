//! Random local operations of every kind, as a node's agent and its operator
//! would issue them. Each returns the delta to push and the history record;
//! a refused operation (not found, not owner, no subnet, ...) is legal here and
//! simply changes nothing.

use std::net::{Ipv4Addr, SocketAddr};

use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::oracle::{Op, Write};
use crate::{
    Capacity, ContainerId, ContainerRecord, Delta, NTP64, NodeMeta, Replica, ReplicaError,
    Resource, ServiceName, ServiceSpec, Subnet, Timestamp,
};

/// Service names are drawn from a small pool so writes collide.
const SERVICE_POOL: usize = 6;
/// Container ids per node, reused so ids get removed and re-added.
const CONTAINER_POOL: usize = 5;

pub(crate) fn service_name(index: usize) -> ServiceName {
    format!("svc-{index}").parse().expect("valid service name")
}

pub(crate) fn subnet_of(node_index: usize) -> Subnet {
    let third = u8::try_from(node_index + 1).expect("at most 7 nodes");
    Subnet::new(Ipv4Addr::new(10, 88, third, 0), 24).expect("valid subnet")
}

fn container_id(node: &str, index: usize) -> ContainerId {
    format!("c-{node}-{index}")
        .parse()
        .expect("valid container id")
}

fn random_spec(rng: &mut ChaCha8Rng) -> ServiceSpec {
    let mut spec = ServiceSpec::new(format!("/var/lib/shoal/images/app-{}", rng.gen_range(0..4)));
    spec.replicas = rng.gen_range(1..=3);
    spec.command = vec![
        "/bin/app".to_owned(),
        format!("--port={}", rng.gen_range(8000..8010)),
    ];
    if rng.gen_bool(0.5) {
        spec.env.insert(
            "MODE".to_owned(),
            ["a", "b", "c"]
                .choose(rng)
                .copied()
                .unwrap_or("a")
                .to_owned(),
        );
    }
    spec
}

/// The node metadata a node writes: its own subnet, or (rarely) a neighbour's,
/// which makes a subnet conflict the state must resolve the same everywhere.
pub(crate) fn node_meta(
    rng: &mut ChaCha8Rng,
    node_index: usize,
    replicas: usize,
    heartbeat: Timestamp,
) -> NodeMeta {
    let subnet_index = if rng.gen_ratio(1, 25) {
        (node_index + 1) % replicas
    } else {
        node_index
    };
    NodeMeta {
        address: SocketAddr::from((
            [127, 0, 0, 1],
            7000 + u16::try_from(node_index).expect("small index"),
        )),
        capacity: Capacity {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
        },
        subnet: Some(subnet_of(subnet_index)),
        heartbeat,
        labels: Default::default(),
        incarnation: None,
        drain: None,
    }
}

/// A short description for the trace and the operation's outcome.
pub(crate) struct Performed {
    pub(crate) label: String,
    pub(crate) result: Result<Option<(Write, Delta)>, ReplicaError>,
}

/// Picks one operation for `replica` and performs it at physical time `now`.
pub(crate) fn perform(
    rng: &mut ChaCha8Rng,
    replica: &mut Replica,
    now: NTP64,
    node_index: usize,
    replicas: usize,
) -> Performed {
    let me = replica.node().clone();
    let observed = replica.version_vector().clone();
    let before = observed.get(&me);
    let roll = rng.gen_range(0..100);
    let (label, result): (String, Result<(Option<Delta>, Op), ReplicaError>) = match roll {
        0..=19 => {
            let name = service_name(rng.gen_range(0..SERVICE_POOL));
            let spec = random_spec(rng);
            let result = replica.put_service(now, name.clone(), spec.clone());
            (
                format!("put_service {name}"),
                result.map(|delta| {
                    let spec = Box::new(spec);
                    (Some(delta), Op::PutService { name, spec })
                }),
            )
        }
        20..=27 => {
            let name = service_name(rng.gen_range(0..SERVICE_POOL));
            let result = replica.remove_service(now, &name);
            (
                format!("remove_service {name}"),
                result.map(|delta| (Some(delta), Op::RemoveService { name })),
            )
        }
        28..=35 => {
            let meta = node_meta(rng, node_index, replicas, replica.clock().last());
            let subnet = meta.subnet;
            let result = replica.put_node_meta(now, meta.clone());
            (
                format!(
                    "put_node_meta subnet {}",
                    subnet.map(|s| s.to_string()).unwrap_or_default()
                ),
                result.map(|delta| (Some(delta), Op::PutNodeMeta { meta })),
            )
        }
        36..=51 => {
            let id = container_id(me.as_str(), rng.gen_range(0..CONTAINER_POOL));
            let service = service_name(rng.gen_range(0..SERVICE_POOL));
            let spec_version = replica
                .state()
                .service(&service)
                .map(|(_, version)| version)
                .unwrap_or(replica.clock().last());
            let record = ContainerRecord {
                id: id.clone(),
                service,
                node: me.clone(),
                spec_version,
                ip: None,
            };
            let result = replica.add_container(now, record.clone());
            (
                format!("add_container {id}"),
                result.map(|delta| (Some(delta), Op::AddContainer { record })),
            )
        }
        52..=63 => {
            // Mostly a container this replica sees (any node's), sometimes a guess.
            let seen: Vec<ContainerId> = replica
                .state()
                .containers()
                .map(|record| record.id.clone())
                .collect();
            let id = match seen.choose(rng) {
                Some(id) if rng.gen_bool(0.9) => id.clone(),
                _ => container_id(me.as_str(), rng.gen_range(0..CONTAINER_POOL)),
            };
            let result = replica.remove_container(now, &id);
            (
                format!("remove_container {id}"),
                result.map(|delta| (Some(delta), Op::RemoveContainer { id })),
            )
        }
        64..=77 => {
            let resource = *[
                Resource::CpuMillis,
                Resource::MemoryBytes,
                Resource::Containers,
            ]
            .choose(rng)
            .expect("non-empty");
            let amount = rng.gen_range(-500..=1000_i64);
            let result = replica.adjust_resource(now, resource, amount);
            (
                format!("adjust_resource {resource:?} {amount:+}"),
                result.map(|delta| (Some(delta), Op::Adjust { resource, amount })),
            )
        }
        78..=89 => {
            let mine: Vec<ContainerId> = replica
                .state()
                .containers()
                .filter(|record| record.node == me)
                .map(|record| record.id.clone())
                .collect();
            let container = match mine.choose(rng) {
                Some(id) => id.clone(),
                None => container_id(me.as_str(), rng.gen_range(0..CONTAINER_POOL)),
            };
            match replica.allocate_ip(now, &container) {
                Ok((ip, delta)) => (
                    format!("allocate_ip {container} -> {ip}"),
                    Ok((Some(delta), Op::AllocateIp { ip, container })),
                ),
                Err(error) => (format!("allocate_ip {container}"), Err(error)),
            }
        }
        _ => {
            let mine: Vec<Ipv4Addr> = replica
                .state()
                .ip_allocations()
                .into_iter()
                .filter(|allocation| allocation.node == me)
                .map(|allocation| allocation.ip)
                .collect();
            let ip = match mine.choose(rng) {
                Some(ip) if rng.gen_bool(0.9) => *ip,
                _ => subnet_of(rng.gen_range(0..replicas))
                    .container_addresses()
                    .nth(rng.gen_range(0..3))
                    .expect("/24 has addresses"),
            };
            let result = replica.release_ip(now, ip);
            (
                format!("release_ip {ip}"),
                result.map(|delta| (Some(delta), Op::ReleaseIp { ip })),
            )
        }
    };
    let result = result.map(|(delta, op)| {
        let delta = delta?;
        let after = replica.version_vector().get(&me);
        if delta.is_empty() {
            // Nothing written (an address the container already had, a zero adjustment).
            assert_eq!(before, after, "an empty delta must not use a dot");
            return None;
        }
        let hlc = delta
            .max_timestamp()
            .expect("a non-empty delta has a timestamp");
        Some((
            Write {
                node: me.clone(),
                first_counter: before + 1,
                last_counter: after,
                hlc,
                observed,
                op,
            },
            delta,
        ))
    });
    Performed { label, result }
}
