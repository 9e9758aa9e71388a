//! `service apply` to container running (`cargo bench -p shoal --bench apply_to_running`,
//! harness = false, needs root). Prints one table.
//!
//! Measured: from the API call that applies a 1-replica busybox service to a real
//! `shoal daemon` until `ps` (polled every 2 ms through the API) reports its container
//! running; the service is removed and gone before the next sample. Baseline in the same
//! run, same image: `LibcontainerRuntime` create+start of that image called directly (no
//! daemon, no CRDT write, no reconcile pass), until its state is running. The ratio is the
//! orchestration overhead on top of the runtime.

#[path = "../tests/host_support/mod.rs"]
mod host_support;
#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use std::time::{Duration, Instant};

use host_support::{Cluster, wait_for};
use shoal::api::{NamedSpec, PsView, Request, ServiceView};
use shoal_crdt::ServiceSpec;

const SAMPLES: usize = 15;

fn median_and_p90(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let p90 = samples[(samples.len() * 9 / 10).min(samples.len() - 1)];
    (samples[samples.len() / 2], p90)
}

fn command() -> Vec<String> {
    vec!["/bin/busybox".into(), "sleep".into(), "3600".into()]
}

fn through_the_daemon(cluster: &Cluster, image: &str) -> Vec<Duration> {
    let daemon = &cluster.nodes[0];
    let mut client = daemon.client();
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let mut spec = ServiceSpec::new(image);
        spec.command = command();
        let started = Instant::now();
        let _: Vec<ServiceView> = client
            .call(Request::ServiceApply {
                services: vec![NamedSpec {
                    name: "bench".parse().unwrap(),
                    spec,
                }],
            })
            .unwrap();
        loop {
            let view: PsView = client.call(Request::Ps).unwrap();
            if view.containers.iter().any(|c| c.state == "running") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never ran");
            std::thread::sleep(Duration::from_millis(2));
        }
        samples.push(started.elapsed());
        let _: ServiceView = client
            .call(Request::ServiceRemove {
                name: "bench".parse().unwrap(),
            })
            .unwrap();
        wait_for("removal", 30_000, || {
            let view: PsView = client.call(Request::Ps).unwrap();
            view.containers.is_empty().then_some(())
        });
    }
    samples
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("apply_to_running needs root (real containers)");
        std::process::exit(1);
    }
    let scratch = tempfile::tempdir().unwrap();
    let image_dir = scratch.path().join("image");
    image_support::busybox_image(&image_dir, &["/bin/busybox", "sleep", "3600"]);
    let direct = image_support::time_direct_create_start(
        &image_dir,
        scratch.path(),
        SAMPLES,
        &["/bin/busybox", "sleep", "3600"],
    );

    let mut cluster = Cluster::new(
        1,
        "\n[containers]\nreconcile_interval_ms = 1000\nstop_grace_ms = 0\n",
    );
    cluster.start_all();
    let daemon = through_the_daemon(&cluster, &image_dir.display().to_string());
    cluster.nodes[0].stop();

    let (direct_median, direct_p90) = median_and_p90(direct);
    let (daemon_median, daemon_p90) = median_and_p90(daemon);
    println!("service apply to container running, {SAMPLES} samples each, busybox sleep");
    println!("| path | median | p90 | median ratio |");
    println!("|---|---|---|---|");
    println!(
        "| LibcontainerRuntime create+start (baseline) | {:.1} ms | {:.1} ms | 1.00 |",
        direct_median.as_secs_f64() * 1e3,
        direct_p90.as_secs_f64() * 1e3
    );
    println!(
        "| shoal service apply -> ps running | {:.1} ms | {:.1} ms | {:.2} |",
        daemon_median.as_secs_f64() * 1e3,
        daemon_p90.as_secs_f64() * 1e3,
        daemon_median.as_secs_f64() / direct_median.as_secs_f64()
    );
}
