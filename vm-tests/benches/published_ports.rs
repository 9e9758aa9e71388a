//! Published ports against a direct connection, on real daemons in network
//! namespaces: `cargo bench -p shoal-vm-tests --bench published_ports`. Needs root.
//!
//! Three nodes run two one-replica busybox httpd services, one published in
//! host mode (8080:80), one in mesh mode (8081:80). The client is the lab's
//! outside host. For this bench only it gets a route to every node's container
//! subnet through that node, so the baseline — the container's own address,
//! port 80 — crosses the same bridge and the same node as the published path;
//! what differs is shoal's port handling (and, for mesh, the hop from a node
//! that does not run the replica to the one that does).
//!
//! - Latency: connect, `GET /` (6 bytes), read to the close; p50 and p99 over
//!   `LATENCY_ROUNDS` rounds, the four paths interleaved in a rotating order.
//! - Throughput: `GET /big` (64 MiB) through one connection, the median of
//!   `TRANSFER_ROUNDS` per path.
//!
//! Targets: latency p50 at most 1.1x direct, throughput at least 0.9x direct.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use shoal_vm_tests::bench::percentile;
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};
use shoal_vm_tests::probe;

const LATENCY_ROUNDS: usize = 300;
const WARMUP_ROUNDS: usize = 20;
const TRANSFER_ROUNDS: usize = 9;
const BIG_BYTES: u64 = 64 * 1024 * 1024;
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);
const LATENCY_RATIO_MAX: f64 = 1.1;
const THROUGHPUT_RATIO_MIN: f64 = 0.9;

/// Writes the 64 MiB file first, so `/` answering means `/big` is complete.
const SERVER_SCRIPT: &str = "dd if=/dev/zero of=/tmp/big bs=1048576 count=64 2>/dev/null; \
     echo hello > /tmp/index.html; exec httpd -f -p 80 -h /tmp";

fn service(name: &str, image: &str, port: u16, mode: &str) -> String {
    let quoted = |text: &str| serde_json::to_string(text).expect("a string serializes");
    format!(
        "name = {}\nimage = {}\ncommand = [\"/bin/sh\", \"-c\", {}]\n\
         ports = [\"{port}:80\"]\n\
         [resources]\ncpu_millis = 1000\nmemory_bytes = 268435456\n\
         [publish]\nmode = \"{mode}\"\n",
        quoted(name),
        quoted(image),
        quoted(SERVER_SCRIPT),
    )
}

/// The node index and address of the one running container of `service`.
fn replica(cluster: &Cluster, service: &str) -> (usize, Ipv4Addr) {
    let started = Instant::now();
    loop {
        let found: Vec<(usize, Ipv4Addr)> = cluster
            .running()
            .into_iter()
            .flat_map(|index| {
                let ps = cluster.cli_json(index, &["ps"]).unwrap_or_default();
                let me = cluster.node(index).name.clone();
                ps["containers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(move |c| {
                        c["service"] == service
                            && c["node"] == me.as_str()
                            && c["state"] == "running"
                    })
                    .filter_map(move |c| Some((index, c["ip"].as_str()?.parse().ok()?)))
            })
            .collect();
        if let [one] = found.as_slice() {
            return *one;
        }
        if started.elapsed() > SETUP_TIMEOUT {
            panic!(
                "no single running replica of {service}: {found:?}\n{}",
                cluster.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One way to reach a service from the outside host.
struct Path {
    label: String,
    addr: SocketAddrV4,
    latencies: Vec<Duration>,
    throughputs: Vec<f64>,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if !shoal_vm_tests::require_root() {
        return;
    }
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        container_subnets: true,
        outside_host: true,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    for index in 0..cluster.len() {
        let subnet = format!("10.88.{}.0/24", index + 1);
        cluster
            .lab()
            .route_outside(&subnet, cluster.lab().host(index).address)
            .expect("route to a container subnet");
    }
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sh"]);
    let image = image.path.display().to_string();
    cluster
        .apply(0, &service("hostweb", &image, 8080, "host"))
        .expect("apply hostweb");
    cluster
        .apply(0, &service("meshweb", &image, 8081, "mesh"))
        .expect("apply meshweb");
    let (host_node, host_ip) = replica(&cluster, "hostweb");
    let (mesh_node, mesh_ip) = replica(&cluster, "meshweb");
    let via = (0..cluster.len())
        .find(|&index| index != mesh_node)
        .expect("three nodes");
    let node_addr = |index: usize| cluster.lab().host(index).address;
    let mut paths: Vec<Path> = [
        (
            format!("direct to hostweb {host_ip}:80"),
            SocketAddrV4::new(host_ip, 80),
        ),
        (
            format!("host mode n{host_node}:8080"),
            SocketAddrV4::new(node_addr(host_node), 8080),
        ),
        (
            format!("direct to meshweb {mesh_ip}:80"),
            SocketAddrV4::new(mesh_ip, 80),
        ),
        (
            format!("mesh mode n{via}:8081 (replica on n{mesh_node})"),
            SocketAddrV4::new(node_addr(via), 8081),
        ),
    ]
    .into_iter()
    .map(|(label, addr)| Path {
        label,
        addr,
        latencies: Vec::with_capacity(LATENCY_ROUNDS),
        throughputs: Vec::with_capacity(TRANSFER_ROUNDS),
    })
    .collect();

    let outside = cluster.outside_netns().to_owned();
    // Every path answers before anything is measured.
    for path in &paths {
        let started = Instant::now();
        loop {
            let answer = probe::get_in(&outside, path.addr, "/", PROBE_TIMEOUT);
            if matches!(&answer, Ok(a) if a.body.trim() == "hello") {
                break;
            }
            if started.elapsed() > SETUP_TIMEOUT {
                panic!(
                    "{} does not answer: {answer:?}\n{}",
                    path.label,
                    cluster.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    probe::in_netns(&outside, || {
        for round in 0..WARMUP_ROUNDS + LATENCY_ROUNDS {
            for offset in 0..paths.len() {
                let count = paths.len();
                let path = &mut paths[(round + offset) % count];
                let started = Instant::now();
                let answer = probe::get(path.addr, "/", PROBE_TIMEOUT);
                let elapsed = started.elapsed();
                match answer {
                    Ok(a) if a.body.trim() == "hello" => {}
                    other => panic!("{}: {other:?}", path.label),
                }
                if round >= WARMUP_ROUNDS {
                    path.latencies.push(elapsed);
                }
            }
        }
        for round in 0..TRANSFER_ROUNDS {
            for offset in 0..paths.len() {
                let count = paths.len();
                let path = &mut paths[(round + offset) % count];
                let (bytes, elapsed) = probe::download(path.addr, "/big", PROBE_TIMEOUT)
                    .unwrap_or_else(|error| panic!("{}: {error}", path.label));
                assert!(bytes >= BIG_BYTES, "{}: only {bytes} bytes", path.label);
                path.throughputs
                    .push(bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64());
            }
        }
    })
    .expect("enter the outside host");

    let summaries: Vec<(Duration, Duration, f64)> = paths
        .iter_mut()
        .map(|path| {
            path.latencies.sort();
            (
                percentile(&path.latencies, 0.5),
                percentile(&path.latencies, 0.99),
                median(&mut path.throughputs),
            )
        })
        .collect();

    println!(
        "published ports, {LATENCY_ROUNDS} connect+GET rounds and {TRANSFER_ROUNDS} x 64 MiB per path, client on the outside host\n"
    );
    println!(
        "| path | latency p50 | p99 | p50 / direct (target <= {LATENCY_RATIO_MAX}x) | throughput (median) | / direct (target >= {THROUGHPUT_RATIO_MIN}x) |"
    );
    println!("|---|---|---|---|---|---|");
    for (index, path) in paths.iter().enumerate() {
        let (p50, p99, throughput) = summaries[index];
        // Paths come in pairs: direct, then published.
        let (ratios, marks) = if index % 2 == 1 {
            let (direct_p50, _, direct_throughput) = summaries[index - 1];
            let latency = p50.as_secs_f64() / direct_p50.as_secs_f64();
            let rate = throughput / direct_throughput;
            (
                (format!("{latency:.2}x"), format!("{rate:.2}x")),
                (
                    if latency <= LATENCY_RATIO_MAX {
                        " met"
                    } else {
                        " missed"
                    },
                    if rate >= THROUGHPUT_RATIO_MIN {
                        " met"
                    } else {
                        " missed"
                    },
                ),
            )
        } else {
            (("baseline".into(), "baseline".into()), ("", ""))
        };
        println!(
            "| {} | {:.0} µs | {:.0} µs | {}{} | {:.0} MiB/s | {}{} |",
            path.label,
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            ratios.0,
            marks.0,
            throughput,
            ratios.1,
            marks.1,
        );
    }
}
