//! Convergence time after a heal, measured on real daemons in network
//! namespaces: `cargo bench -p shoal-vm-tests --bench convergence`.
//!
//! For 3 and 5 nodes: isolate the last node, write on both sides, heal, and
//! time until every node lists the same services. Reported as p50/p99 over
//! repeated runs and as a ratio to the configured sync interval, the baseline
//! a leaderless anti-entropy design is bounded by. Needs root.

use std::time::{Duration, Instant};

use shoal_vm_tests::checker::spec_with_marker;
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};

const ROUNDS: usize = 15;
const SYNC_INTERVAL_MS: u64 = 300;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank]
}

fn measure(nodes: usize) -> Vec<Duration> {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        sync_interval_ms: SYNC_INTERVAL_MS,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let all: Vec<usize> = (0..nodes).collect();
    let cut = nodes - 1;
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        cluster.lab().isolate(cut).expect("isolate");
        cluster
            .apply(0, &spec_with_marker("web", &format!("a{round}"), 1))
            .expect("apply on the connected side");
        cluster
            .apply(cut, &spec_with_marker("web", &format!("b{round}"), 1))
            .expect("apply on the isolated node");
        cluster
            .apply(cut, &spec_with_marker(&format!("s{round}"), "b", 1))
            .expect("apply on the isolated node");
        let healed = Instant::now();
        cluster.lab().heal().expect("heal");
        cluster
            .wait_converged(&all, Duration::from_secs(60))
            .expect("convergence");
        times.push(healed.elapsed());
    }
    times.sort();
    times
}

fn main() {
    // `cargo bench` passes --bench; this binary has no filters of its own.
    println!(
        "convergence after heal, sync interval {SYNC_INTERVAL_MS} ms, {ROUNDS} heals per size\n"
    );
    println!("| nodes | p50 ms | p99 ms | p50 / interval | p99 / interval |");
    println!("|------:|-------:|-------:|---------------:|---------------:|");
    for nodes in [3, 5] {
        let times = measure(nodes);
        let p50 = percentile(&times, 0.50);
        let p99 = percentile(&times, 0.99);
        let interval = SYNC_INTERVAL_MS as f64;
        println!(
            "| {nodes} | {} | {} | {:.2} | {:.2} |",
            p50.as_millis(),
            p99.as_millis(),
            p50.as_millis() as f64 / interval,
            p99.as_millis() as f64 / interval
        );
    }
}
