//! A rolling update of 3 replicas over 3 nodes, on real daemons in network namespaces:
//! `cargo bench -p shoal-vm-tests --bench rolling_update`. Needs root.
//!
//! The service is the update scenarios' httpd (`tests/workload_support`): a mesh-mode port,
//! an HTTP health check every 500 ms, `[update]` one at a time, start-first,
//! `min_healthy_ms = 1000`. The lab's outside host polls port 8080 of every node in turn
//! during each update.
//!
//! - Baseline, measured in the same run: one new single-replica service from `service
//!   apply` until `shoal ps` reports its container healthy (create + start + first healthy
//!   check), times 3 (the "replicas x (create+start + first healthy check)"); the
//!   median of `ROUNDS`.
//! - Update: from `service apply` of a new version until every node answers it from three
//!   running replicas; the median of `ROUNDS` updates, with the failed requests of all.
//!
//! The update also waits `min_healthy_ms` per replica and the retiring grace (1.5 s) per
//! outdated replica, which the baseline does not: those are the cost of never dropping a
//! request. Both services stop on SIGTERM: the executor stops a container within the pass,
//! so one that ignores SIGTERM holds its node's pass for the stop grace (10 s).

#[path = "../tests/workload_support/mod.rs"]
mod workload_support;

use std::time::{Duration, Instant};

use workload_support::*;

const ROUNDS: usize = 3;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// From apply until the one container of `name` is healthy.
fn create_start_healthy(
    cluster: &shoal_vm_tests::cluster::Cluster,
    image: &str,
    name: &str,
) -> Duration {
    let script = format!(
        "echo ok > /tmp/healthz; echo {name} > /tmp/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /tmp & wait $!"
    );
    let toml = spec(
        name,
        image,
        &script,
        "[health]\nhttp = \"http://127.0.0.1:80/healthz\"\ninterval_ms = 500\ntimeout_ms = 400\nretries = 2",
    );
    let started = Instant::now();
    cluster.apply(0, &toml).expect("apply");
    wait_for(cluster, &format!("{name} healthy"), || {
        let ps = cluster.cli_json(0, &["ps"]).ok()?;
        ps["containers"]
            .as_array()?
            .iter()
            .any(|c| c["service"] == name && c["health"] == "healthy")
            .then_some(())
    });
    let took = started.elapsed();
    cluster.cli_json(0, &["service", "rm", name]).expect("rm");
    took
}

fn main() {
    if !image_support::require_root() {
        eprintln!("rolling_update needs root");
        return;
    }
    let (cluster, image) = start(3, true);
    let baseline: Vec<Duration> = (0..ROUNDS)
        .map(|round| create_start_healthy(&cluster, &image, &format!("base-{round}")) * 3)
        .collect();

    cluster
        .apply(0, &web(&image, "v0", true))
        .expect("apply v0");
    wait_serving(&cluster, "v0");
    let mut updates = Vec::new();
    let (mut requests, mut failed) = (0usize, Vec::new());
    for round in 1..=ROUNDS {
        let body = format!("v{round}");
        let client = Client::start(&cluster);
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        cluster
            .apply(round % 3, &web(&image, &body, true))
            .expect("apply");
        let deadline = started + ROLLOUT_TIMEOUT;
        loop {
            if three_serve(&cluster, &body) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "update {round} did not finish\n{}",
                cluster.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        updates.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        let seen = client.finish();
        requests += seen.answers.len() + seen.failures.len();
        failed.extend(seen.failures);
    }
    let (base, update) = (median(baseline.clone()), median(updates.clone()));
    println!("rolling update of 3 replicas over 3 nodes ({ROUNDS} rounds each, medians):");
    println!(
        "  baseline 3 x (create+start+first healthy check): {:>7.0} ms   (rounds: {:?})",
        base.as_secs_f64() * 1e3,
        baseline.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    println!(
        "  rolling update, start-first, one at a time:       {:>7.0} ms   (rounds: {:?})",
        update.as_secs_f64() * 1e3,
        updates.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    println!(
        "  ratio {:.2}x; failed client requests: {} of {requests}",
        update.as_secs_f64() / base.as_secs_f64(),
        failed.len()
    );
    for failure in failed.iter().take(5) {
        println!("  failed: {failure}");
    }
}
