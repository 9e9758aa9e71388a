//! Cluster figures on real daemons in network namespaces:
//! `cargo bench -p shoal-vm-tests --bench convergence`. Needs root.
//!
//! - Convergence after a heal, for 3 and 5 nodes: isolate the last node, write
//!   on both sides, heal, and time until every node lists the same services.
//! - Apply on node 0 to a container running on node 2 (one replica per node).
//!
//! Reported as p50/p99 over repeated runs and as a ratio to the configured
//! sync interval, the baseline a leaderless anti-entropy design is bounded by.

use std::time::{Duration, Instant};

#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use shoal_vm_tests::checker::spec_with_marker;
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};

const ROUNDS: usize = 15;
const SYNC_INTERVAL_MS: u64 = 300;
/// A service that stops on SIGTERM (a plain `sleep` as PID 1 ignores it and
/// would wait out the stop grace period).
const SERVICE_COMMAND: &str =
    r#"["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]"#;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    assert!(!sorted.is_empty());
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank]
}

/// Per heal: time to converge and bytes every host sent meanwhile.
struct Heal {
    time: Duration,
    bytes: u64,
}

fn sent_by_all(cluster: &Cluster) -> u64 {
    (0..cluster.len())
        .map(|i| cluster.lab().sent_bytes(i).expect("tx counter"))
        .sum()
}

/// Bytes all hosts send per second when nothing changes (heartbeats and
/// anti-entropy rounds): the baseline for the bytes of a heal.
fn idle_bytes_per_second(cluster: &Cluster) -> f64 {
    let window = Duration::from_secs(3);
    let before = sent_by_all(cluster);
    std::thread::sleep(window);
    (sent_by_all(cluster) - before) as f64 / window.as_secs_f64()
}

fn measure(nodes: usize) -> (Vec<Heal>, f64) {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        sync_interval_ms: SYNC_INTERVAL_MS,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let all: Vec<usize> = (0..nodes).collect();
    let cut = nodes - 1;
    let idle = idle_bytes_per_second(&cluster);
    let mut heals = Vec::with_capacity(ROUNDS);
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
        let sent_before = sent_by_all(&cluster);
        let healed = Instant::now();
        cluster.lab().heal().expect("heal");
        cluster
            .wait_converged(&all, Duration::from_secs(60))
            .expect("convergence");
        heals.push(Heal {
            time: healed.elapsed(),
            bytes: sent_by_all(&cluster) - sent_before,
        });
    }
    heals.sort_by_key(|heal| heal.time);
    (heals, idle)
}

/// Times `service apply` on node 0 until node 2 reports its replica running.
fn measure_apply_to_running() -> Vec<Duration> {
    let cluster = Cluster::start(ClusterOptions {
        container_subnets: true,
        sync_interval_ms: SYNC_INTERVAL_MS,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sleep", "3600"]);
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let name = format!("probe{round}");
        let spec = format!(
            "name = \"{name}\"\nimage = \"{}\"\ncommand = {SERVICE_COMMAND}\nreplicas = 3\n",
            image.path.display()
        );
        let applied = Instant::now();
        cluster.apply(0, &spec).expect("apply");
        loop {
            let ps = cluster.cli_json(2, &["ps"]).expect("ps");
            let running = ps["containers"].as_array().is_some_and(|list| {
                list.iter().any(|c| {
                    c["service"] == name.as_str() && c["node"] == "n2" && c["state"] == "running"
                })
            });
            if running {
                break;
            }
            assert!(
                applied.elapsed() < Duration::from_secs(60),
                "{name} never ran on n2"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(applied.elapsed());
        cluster.cli_json(0, &["service", "rm", &name]).expect("rm");
        // Measure each apply on a cluster with nothing else to do.
        let removed = Instant::now();
        while (0..cluster.len()).any(|i| {
            cluster.cli_json(i, &["ps"]).is_ok_and(|ps| {
                ps["containers"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|c| c["service"] == name.as_str()))
            })
        }) {
            assert!(
                removed.elapsed() < Duration::from_secs(60),
                "{name} never went away"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    times.sort();
    times
}

fn main() {
    // `cargo bench` passes --bench; this binary has no filters of its own.
    println!(
        "convergence after heal, sync interval {SYNC_INTERVAL_MS} ms, {ROUNDS} heals per size\n"
    );
    println!(
        "| nodes | p50 ms | p99 ms | p50 / interval | p99 / interval | bytes per heal (median) | idle bytes in as long |"
    );
    println!("|------:|-------:|-------:|------:|------:|------:|------:|");
    for nodes in [3, 5] {
        let (heals, idle) = measure(nodes);
        let times: Vec<Duration> = heals.iter().map(|heal| heal.time).collect();
        let p50 = percentile(&times, 0.50);
        let p99 = percentile(&times, 0.99);
        let mut bytes: Vec<u64> = heals.iter().map(|heal| heal.bytes).collect();
        bytes.sort();
        let interval = SYNC_INTERVAL_MS as f64;
        println!(
            "| {nodes} | {} | {} | {:.2} | {:.2} | {} | {:.0} |",
            p50.as_millis(),
            p99.as_millis(),
            p50.as_millis() as f64 / interval,
            p99.as_millis() as f64 / interval,
            bytes[bytes.len() / 2],
            idle * p50.as_secs_f64(),
        );
    }
    let times = measure_apply_to_running();
    println!("\napply on n0 to container running on n2 (3 nodes, {ROUNDS} services)\n");
    println!("| p50 ms | p99 ms | p50 / interval |");
    println!("|-------:|-------:|---------------:|");
    let p50 = percentile(&times, 0.50);
    println!(
        "| {} | {} | {:.2} |",
        p50.as_millis(),
        percentile(&times, 0.99).as_millis(),
        p50.as_millis() as f64 / SYNC_INTERVAL_MS as f64
    );
}
