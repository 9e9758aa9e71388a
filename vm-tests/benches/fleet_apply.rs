//! How fast a change reaches a fleet, by size (issue 14):
//! `cargo build --release -p shoal && SHOAL_BIN=$PWD/target/release/shoal cargo bench -p
//! shoal-vm-tests --bench fleet_apply`. Needs root.
//!
//! Real daemons in the lab's network namespaces, the daemon's default settings (epidemic
//! push to ln N + 3 members, anti-entropy every 1 s, SWIM probes every 1 s). For N = 3, 12,
//! 24 and 48 (`SHOAL_FLEET_NODES`): `service apply` on one node (a different one each round)
//! until every node holds the service durably, p50 and p99 over `SHOAL_FLEET_ROUNDS` rounds
//! (default 20).
//!
//! Each node measures it itself: `shoal_service_write_lag_seconds` observes, for every
//! service write from a peer, the time from the writer's HLC stamp to the write being
//! durable here (one clock on the lab's one machine, so no offset). A round's figure is the
//! last node's lag (the growth of its sum, the one write of the round). Baseline in the same
//! run: the first node's (one push hop). For comparison, the round is also timed from
//! outside: sweeps of every node's API socket with the daemon's own client (`service
//! history`, a small reply) until all list the service; under the burst of a change those
//! requests wait for the daemons' CPU too, so that figure is later (and the last column, one
//! sweep of a quiet cluster, is its resolution).

use std::time::{Duration, Instant};

use shoal::api::{Client, NamedSpec, Request};
use shoal_vm_tests::bench::{
    env_or, exit_unless_root, percentile, sizes_from_env, start_default_fleet,
};
use shoal_vm_tests::cluster::Cluster;

const DEFAULT_SIZES: &[usize] = &[3, 12, 24, 48];
const DEFAULT_ROUNDS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(30);
const SETTLE_SECONDS: u64 = 10;

/// Whether the node holds service `name`: its history answers (one small reply; an unknown
/// service is an error reply), cheaper to poll than the whole listing.
fn lists(client: &mut Client, name: &str) -> bool {
    let request = Request::ServiceHistory {
        name: name.parse().expect("service name"),
    };
    client.call::<serde_json::Value>(request).is_ok()
}

/// A node's `shoal_service_write_lag_seconds` so far: (count, sum in seconds).
fn lag_so_far(cluster: &Cluster, index: usize) -> (u64, f64) {
    let text = cluster.metrics(index).expect("metrics");
    let value = |series: &str| -> f64 {
        shoal::metrics::sample(&text, series)
            .unwrap_or_else(|| panic!("{series} missing in the metrics of node {index}"))
    };
    (
        value("shoal_service_write_lag_seconds_count") as u64,
        value("shoal_service_write_lag_seconds_sum"),
    )
}

/// One round's figures.
struct Round {
    /// From the write to the last node holding it durably, by the nodes' own lag metric.
    last: Duration,
    /// The first node holding it (one push hop): the baseline.
    first: Duration,
    /// Until a sweep of the API sockets found it everywhere.
    polled: Duration,
}

/// Rounds of one cluster size, and the median sweep.
fn measure(nodes: usize, rounds: usize) -> (Vec<Round>, Duration) {
    let cluster = start_default_fleet(nodes);
    std::thread::sleep(Duration::from_secs(SETTLE_SECONDS));
    let connect = |index: usize| {
        Client::connect(&cluster.node(index).socket, Duration::from_secs(5)).expect("api socket")
    };
    let mut lags: Vec<(u64, f64)> = (0..nodes)
        .map(|index| lag_so_far(&cluster, index))
        .collect();
    let mut figures = Vec::new();
    let mut sweeps = Vec::new();
    for round in 0..rounds {
        // The API closes idle connections after 10 s: a fresh set each round.
        let mut clients: Vec<Client> = (0..nodes).map(connect).collect();
        let writer = round % nodes;
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
        while !waiting.is_empty() {
            assert!(
                started.elapsed() < DEADLINE,
                "{name} not everywhere in {DEADLINE:?}"
            );
            waiting.retain(|index| !lists(&mut clients[*index], &name));
        }
        let polled = started.elapsed();
        sweeps.push(sweep_time(&mut clients, &name));
        // Each other node recorded one service write arriving (this one): its lag is the
        // growth of the metric's sum. It is recorded just after the write is durable, so
        // a node the sweep found may not have recorded it yet: ask again until it has.
        let mut round_lags = Vec::new();
        for index in (0..nodes).filter(|index| *index != writer) {
            let (count, sum) = loop {
                let now = lag_so_far(&cluster, index);
                if now.0 > lags[index].0 {
                    break now;
                }
                assert!(
                    started.elapsed() < DEADLINE,
                    "node {index} never counted {name} arriving"
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            assert_eq!(
                count,
                lags[index].0 + 1,
                "node {index}: one service write arrived per round"
            );
            round_lags.push(Duration::from_secs_f64((sum - lags[index].1).max(0.0)));
            lags[index] = (count, sum);
        }
        figures.push(Round {
            last: *round_lags.iter().max().expect("other nodes"),
            first: *round_lags.iter().min().expect("other nodes"),
            polled,
        });
    }
    sweeps.sort();
    (figures, percentile(&sweeps, 0.5))
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
    exit_unless_root("fleet_apply");
    let sizes = sizes_from_env("SHOAL_FLEET_NODES", DEFAULT_SIZES);
    let rounds = env_or("SHOAL_FLEET_ROUNDS", DEFAULT_ROUNDS);
    println!(
        "service apply until every node lists it, {rounds} rounds per size, default settings:\n"
    );
    println!(
        "| nodes | every node p50 | p99 | first node p50 (baseline) | p50 / baseline | polled p50 | one poll of all |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for nodes in sizes {
        let (rounds, sweep) = measure(nodes, rounds);
        let sorted = |pick: fn(&Round) -> Duration| {
            let mut times: Vec<Duration> = rounds.iter().map(pick).collect();
            times.sort();
            times
        };
        let last = sorted(|round| round.last);
        let first = sorted(|round| round.first);
        let polled = sorted(|round| round.polled);
        let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
        println!(
            "| {nodes} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2} | {:.1} ms | {:.1} ms |",
            ms(percentile(&last, 0.5)),
            ms(percentile(&last, 0.99)),
            ms(percentile(&first, 0.5)),
            percentile(&last, 0.5).as_secs_f64() / percentile(&first, 0.5).as_secs_f64(),
            ms(percentile(&polled, 0.5)),
            ms(sweep)
        );
    }
}
