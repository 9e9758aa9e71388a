//! How fast a change reaches a fleet, by size (issue 14):
//! `cargo build --release -p shoal && SHOAL_BIN=$PWD/target/release/shoal cargo bench -p
//! shoal-vm-tests --bench fleet_apply`. Needs root.
//!
//! Real daemons in the lab's network namespaces, the daemon's default settings (epidemic
//! push to ln N + 3 members, anti-entropy every 1 s, SWIM probes every 1 s). For N = 3, 12,
//! 24 and 48 (`SHOAL_FLEET_NODES`): `service apply` on one node (a different one each round)
//! until every node holds the service, polled through each node's API socket with the
//! daemon's own client (`service history`, a small reply; a sweep of 48 sockets takes
//! milliseconds, printed as the resolution), p50 and p99 over
//! `SHOAL_FLEET_ROUNDS` rounds (default 20). Baseline in the same run: the same wait for
//! one node only, the writer's nearest peer in the list (one push hop).

use std::time::{Duration, Instant};

use shoal::api::{Client, NamedSpec, Request};
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};

const DEFAULT_SIZES: &[usize] = &[3, 12, 24, 48];
const DEFAULT_ROUNDS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(30);
const SETTLE_SECONDS: u64 = 10;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a valid value"))
        })
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank]
}

/// Whether the node holds service `name`: its history answers (one small reply; an unknown
/// service is an error reply), cheaper to poll than the whole listing.
fn lists(client: &mut Client, name: &str) -> bool {
    let request = Request::ServiceHistory {
        name: name.parse().expect("service name"),
    };
    client.call::<serde_json::Value>(request).is_ok()
}

/// Sorted times per round for every node and for one peer, and the median sweep.
fn measure(nodes: usize, rounds: usize) -> (Vec<Duration>, Vec<Duration>, Duration) {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        sync_interval_ms: 1_000,
        heartbeat_interval_ms: 30_000,
        down_after_ms: 90_000,
        membership: None,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    std::thread::sleep(Duration::from_secs(SETTLE_SECONDS));
    let connect = |index: usize| {
        Client::connect(&cluster.node(index).socket, Duration::from_secs(5)).expect("api socket")
    };
    let mut everyone = Vec::new();
    let mut one = Vec::new();
    let mut sweeps = Vec::new();
    for round in 0..rounds {
        // The API closes idle connections after 10 s: a fresh set each round.
        let mut clients: Vec<Client> = (0..nodes).map(connect).collect();
        let writer = round % nodes;
        let peer = (writer + 1) % nodes;
        let name = format!("svc-{round}");
        let spec = shoal_crdt::ServiceSpec::new("/images/none");
        let request = Request::ServiceApply {
            services: vec![NamedSpec {
                name: name.parse().expect("service name"),
                spec,
            }],
        };
        let started = Instant::now();
        let _: serde_json::Value = clients[writer].call(request).expect("service apply");
        let mut waiting: Vec<usize> = (0..nodes).filter(|index| *index != writer).collect();
        let mut peer_done = None;
        while !waiting.is_empty() {
            assert!(
                started.elapsed() < DEADLINE,
                "{name} not everywhere in {DEADLINE:?}"
            );
            waiting.retain(|index| !lists(&mut clients[*index], &name));
            if peer_done.is_none() && !waiting.contains(&peer) {
                peer_done = Some(started.elapsed());
            }
        }
        everyone.push(started.elapsed());
        sweeps.push(sweep_time(&mut clients, &name));
        one.push(peer_done.unwrap_or_else(|| started.elapsed()));
    }
    everyone.sort();
    one.sort();
    sweeps.sort();
    (everyone, one, percentile(&sweeps, 0.5))
}

/// How long one poll of every node takes: the resolution of the figures.
fn sweep_time(clients: &mut [Client], name: &str) -> Duration {
    let started = Instant::now();
    for client in clients.iter_mut() {
        lists(client, name);
    }
    started.elapsed()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("fleet_apply needs root (network namespaces)");
        std::process::exit(1);
    }
    let sizes: Vec<usize> = match std::env::var("SHOAL_FLEET_NODES") {
        Ok(list) => list
            .split(',')
            .map(|size| size.trim().parse().expect("SHOAL_FLEET_NODES: numbers"))
            .collect(),
        Err(_) => DEFAULT_SIZES.to_vec(),
    };
    let rounds = env_or("SHOAL_FLEET_ROUNDS", DEFAULT_ROUNDS);
    println!(
        "service apply until every node lists it, {rounds} rounds per size, default settings:\n"
    );
    println!(
        "| nodes | every node p50 | p99 | one peer p50 (baseline) | p99 | p50 / baseline | one poll of all |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for nodes in sizes {
        let (everyone, one, sweep) = measure(nodes, rounds);
        let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
        println!(
            "| {nodes} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} | {:.1} ms |",
            ms(percentile(&everyone, 0.5)),
            ms(percentile(&everyone, 0.99)),
            ms(percentile(&one, 0.5)),
            ms(percentile(&one, 0.99)),
            percentile(&everyone, 0.5).as_secs_f64() / percentile(&one, 0.5).as_secs_f64(),
            ms(sweep)
        );
    }
}
