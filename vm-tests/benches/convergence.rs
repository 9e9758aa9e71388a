//! Cluster figures on real daemons in network namespaces:
//! `cargo bench -p shoal-vm-tests --bench convergence`. Needs root.
//!
//! - Convergence after a heal, for 3 and 5 nodes: isolate the last node, write
//!   on both sides, heal, and time until every node lists the same services.
//! - Apply on node 0 to a container running on node 2 (one replica per node),
//!   at two reconcile intervals: until node 2 lists the service (the eager
//!   push) and until its replica runs, against the runtime's own create+start
//!   of the same image measured in the same run.
//!
//! Heals are reported as p50/p99 over repeated runs and as a ratio to the
//! configured sync interval, the baseline a leaderless anti-entropy design is
//! bounded by. Polling goes through the CLI, one process per poll.

use std::time::{Duration, Instant};

#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use shoal_vm_tests::bench::percentile;
use shoal_vm_tests::checker::spec_with_marker;
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};

const ROUNDS: usize = 15;
const SYNC_INTERVAL_MS: u64 = 300;
/// A service that stops at once on SIGTERM: a plain `sleep` as PID 1 ignores
/// it, and a shell runs its trap only after the foreground `sleep` ends, so the
/// shell waits on a background sleep, which a signal interrupts. A pass that
/// stops a container finishes the stop before it starts others, so a slow stop
/// of the previous round would delay the next apply's start.
const SERVICE_COMMAND: &str =
    r#"["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done"]"#;

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

/// Per apply: until node 2 lists the service (the eager push) and until node 2
/// reports its replica running.
struct ApplyTimes {
    listed: Vec<Duration>,
    running: Vec<Duration>,
}

fn lists_service(cluster: &Cluster, index: usize, name: &str) -> bool {
    cluster
        .cli_json(index, &["service", "ls"])
        .is_ok_and(|list| {
            list.as_array()
                .is_some_and(|list| list.iter().any(|s| s["name"] == name))
        })
}

fn runs_on(cluster: &Cluster, index: usize, name: &str, node: &str) -> bool {
    cluster.cli_json(index, &["ps"]).is_ok_and(|ps| {
        ps["containers"].as_array().is_some_and(|list| {
            list.iter()
                .any(|c| c["service"] == name && c["node"] == node && c["state"] == "running")
        })
    })
}

/// Times `service apply` on node 0 until node 2 lists it and until node 2 reports its
/// replica running, with the daemons' reconcile loop ticking every
/// `reconcile_interval_ms` (a pass also runs as soon as a change arrives).
fn measure_apply_to_running(reconcile_interval_ms: u64) -> ApplyTimes {
    let cluster = Cluster::start(ClusterOptions {
        container_subnets: true,
        sync_interval_ms: SYNC_INTERVAL_MS,
        reconcile_interval_ms: Some(reconcile_interval_ms),
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sleep", "3600"]);
    let mut times = ApplyTimes {
        listed: Vec::with_capacity(ROUNDS),
        running: Vec::with_capacity(ROUNDS),
    };
    for round in 0..ROUNDS {
        let name = format!("probe{round}");
        let spec = format!(
            "name = \"{name}\"\nimage = \"{}\"\ncommand = {SERVICE_COMMAND}\nreplicas = 3\n",
            image.path.display()
        );
        let applied = Instant::now();
        cluster.apply(0, &spec).expect("apply");
        while !lists_service(&cluster, 2, &name) {
            assert!(
                applied.elapsed() < Duration::from_secs(60),
                "{name} never reached n2"
            );
        }
        times.listed.push(applied.elapsed());
        while !runs_on(&cluster, 2, &name, "n2") {
            assert!(
                applied.elapsed() < Duration::from_secs(60),
                "{name} never ran on n2"
            );
        }
        times.running.push(applied.elapsed());
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
        // The records go before the stops finish; let the stops end.
        std::thread::sleep(Duration::from_millis(300));
    }
    times.listed.sort();
    times.running.sort();
    times
}

/// Create+start of the same image straight through the runtime, the baseline.
fn direct_create_start() -> Vec<Duration> {
    let scratch = tempfile::tempdir().expect("temp dir");
    let image = scratch.path().join("image");
    image_support::busybox_image(&image, &["/bin/sleep", "3600"]);
    let mut times = image_support::time_direct_create_start(
        &image,
        scratch.path(),
        ROUNDS,
        &["/bin/sleep", "3600"],
    );
    times.sort();
    times
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
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
    let direct = direct_create_start();
    let direct_p50 = percentile(&direct, 0.50);
    println!(
        "\napply on n0 to container running on n2 (3 nodes, one replica each, {ROUNDS} services); \
         baseline: the runtime's create+start of the same image, {:.1} ms p50\n",
        ms(direct_p50)
    );
    println!(
        "| reconcile interval | n2 lists it p50 | running on n2 p50 | p99 | vs baseline | target: push + create/start + 50 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for reconcile_interval_ms in [300, 5_000] {
        let times = measure_apply_to_running(reconcile_interval_ms);
        let listed = percentile(&times.listed, 0.50);
        let running = percentile(&times.running, 0.50);
        let target = listed + direct_p50 + Duration::from_millis(50);
        println!(
            "| {reconcile_interval_ms} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}x | {:.1} ms ({}) |",
            ms(listed),
            ms(running),
            ms(percentile(&times.running, 0.99)),
            ms(running) / ms(direct_p50),
            ms(target),
            if running <= target { "met" } else { "missed" },
        );
    }
}
