//! Sync benchmark (`cargo bench -p shoal --bench sync`, harness = false). Prints one table.
//!
//! 1. Latency from a service apply on node A until it is visible on node C, three in-process
//!    nodes (real redb, real certificates, HTTP/3 on loopback): with eager push, and with
//!    anti-entropy only at two sync intervals. Figures: median and p90, and the median as a
//!    ratio of the sync interval (the baseline an anti-entropy-only design waits for).
//!    Polling resolution is 1 ms.
//! 2. Bytes on the wire for one change against state size (10, 1k, 10k services): the
//!    push-pull response body, the UDP bytes of that whole exchange (handshake included), and
//!    the eager-push body, each as a ratio of the full-state transfer (the baseline: a delta
//!    against an empty summary).
//! 3. Idle RSS and CPU of one real `shoal daemon` process (of three on loopback) over 10 s.

#[path = "../tests/net_support/mod.rs"]
mod net_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use net_support::{GossipCluster, Pki, node_id, open_node};
use shoal::api::NamedSpec;
use shoal::state::{Clock, Node, SystemClock};
use shoal::sync::{self, GossipConfig, SyncLimits};
use shoal_crdt::{Replica, codec};
use tokio::sync::watch;

const LATENCY_SAMPLES: usize = 20;
const IDLE_SECONDS: u64 = 10;

fn spec(name: &str) -> NamedSpec {
    shoal::cli::spec_file::parse(&format!(
        "name = \"{name}\"\nimage = \"/images/{name}.tar\"\n"
    ))
    .expect("valid spec")
    .remove(0)
}

fn limits() -> SyncLimits {
    SyncLimits {
        body_bytes_max: 64 * 1024 * 1024,
        request_timeout_ms: 10_000,
        connections_max: 64,
    }
}

/// Three in-process nodes (the test kit's gossip cluster) and their directory.
struct Cluster {
    inner: GossipCluster,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(pki: &Pki, gossip: GossipConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let names = ["node-a", "node-b", "node-c"];
        let seeds = vec![vec![1, 2], vec![0, 2], vec![0, 1]];
        let inner =
            GossipCluster::start_with(pki, dir.path(), &names, &seeds, gossip, limits(), 500).await;
        inner
            .wait_until("the cluster to form", Duration::from_secs(20), |nodes| {
                nodes
                    .iter()
                    .all(|node| node.peers().iter().filter(|peer| peer.live).count() == 2)
            })
            .await;
        Self { inner, _dir: dir }
    }

    fn nodes(&self) -> &[Arc<Node>] {
        &self.inner.nodes
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

/// Median and p90 latency in ms from an apply on A until C lists the service.
async fn measure_latency(cluster: &Cluster, label: &str) -> (f64, f64) {
    let (a, c) = (&cluster.nodes()[0], &cluster.nodes()[2]);
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for index in 0..LATENCY_SAMPLES {
        let name = format!("{label}-{index}");
        let started = Instant::now();
        let node = a.clone();
        let change = spec(&name);
        tokio::task::spawn_blocking(move || node.apply_services(vec![(change.name, change.spec)]))
            .await
            .expect("apply task")
            .expect("apply");
        let deadline = started + Duration::from_secs(30);
        while !c
            .services()
            .iter()
            .any(|service| service.name.as_ref() == name.as_str())
        {
            assert!(
                Instant::now() < deadline,
                "{name} not visible on C within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        // Decorrelate the next change from the gossip phase.
        tokio::time::sleep(Duration::from_millis(37 + (index as u64 * 53) % 300)).await;
    }
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.9))
}

struct BytesRow {
    services: usize,
    full_state_bytes: usize,
    pull_body_bytes: u64,
    exchange_udp_bytes: u64,
    push_body_bytes: usize,
}

async fn measure_bytes(pki: &Pki, services: usize) -> BytesRow {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_endpoint = sync::bind_endpoint(
        "127.0.0.1:0".parse().expect("address"),
        &pki.material("server"),
    )
    .expect("endpoint");
    let client_endpoint = sync::bind_endpoint(
        "127.0.0.1:0".parse().expect("address"),
        &pki.material("client"),
    )
    .expect("endpoint");
    let server = open_node(
        dir.path(),
        "server",
        server_endpoint.local_addr().expect("address"),
    );
    let client = open_node(
        dir.path(),
        "client",
        client_endpoint.local_addr().expect("address"),
    );

    // The same state of `services` services on both, written by a third replica in one delta.
    let writer = node_id("writer");
    let mut replica = Replica::new(writer.clone(), Duration::from_secs(1));
    for index in 0..services {
        let named = spec(&format!("svc-{index}"));
        replica
            .put_service(SystemClock.now(), named.name, named.spec)
            .expect("put");
    }
    let everything =
        replica.delta_for(&Replica::new(node_id("empty"), Duration::from_secs(1)).summary());
    let full_state_bytes = codec::encode_delta(&everything).len();
    server
        .apply_remote(&writer, everything.clone())
        .expect("seed server");
    client
        .apply_remote(&writer, everything)
        .expect("seed client");

    let (stop, stopped) = watch::channel(false);
    let serving = tokio::spawn(sync::serve(
        server_endpoint.clone(),
        server.clone(),
        limits(),
        sync::Handlers::default(),
        shoal::agent::tasks::stopped(stopped),
    ));
    // Bring the client fully up to date (including the server's own summary knowledge).
    sync::sync_once(
        &client_endpoint,
        &client,
        server_endpoint.local_addr().expect("address"),
        None,
        &limits(),
    )
    .await
    .expect("warm-up sync");

    let mut changes = server.subscribe_changes();
    server
        .apply_services(vec![(spec("changed").name, spec("changed").spec)])
        .expect("change");
    let change = changes.recv().await.expect("change delta");
    let push_body_bytes = codec::encode_delta(&change).len();
    let stats = sync::sync_once(
        &client_endpoint,
        &client,
        server_endpoint.local_addr().expect("address"),
        None,
        &limits(),
    )
    .await
    .expect("sync");
    assert_eq!(
        stats.entries_received,
        change.entry_count(),
        "one change, one delta"
    );
    assert_eq!(client.digest(), server.digest());
    let _ = stop.send(true);
    serving.await.expect("serve task").expect("serve");
    server_endpoint.close(0u32.into(), b"");
    client_endpoint.close(0u32.into(), b"");
    BytesRow {
        services,
        full_state_bytes,
        pull_body_bytes: stats.bytes_received + stats.bytes_sent,
        exchange_udp_bytes: stats.udp_bytes_sent + stats.udp_bytes_received,
        push_body_bytes,
    }
}

/// RSS in KiB and CPU ticks (user + system) of a process, from /proc.
fn process_usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    let ticks =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    (rss_kib, ticks)
}

struct Idle {
    rss_mib: f64,
    cpu_percent: f64,
}

fn measure_idle(pki: &Pki) -> Option<Idle> {
    let binary = env!("CARGO_BIN_EXE_shoal");
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|socket| socket.local_addr())
                .map(|address| address.port())
                .expect("free port")
        })
        .collect();
    let mut children = Vec::new();
    for (index, port) in ports.iter().enumerate() {
        let name = format!("node-{}", ["a", "b", "c"][index]);
        let paths = pki.issue(&name);
        let state = dir.path().join(&name);
        std::fs::create_dir_all(&state).expect("state dir");
        let peers: Vec<String> = ports
            .iter()
            .filter(|other| *other != port)
            .map(|other| format!("\"127.0.0.1:{other}\""))
            .collect();
        let config = format!(
            "node_name = \"{name}\"\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:{port}\"\npeers = [{}]\n\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            state.display(),
            peers.join(", "),
            paths.ca_cert.display(),
            paths.cert.display(),
            paths.key.display()
        );
        let config_path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("config");
        let child = std::process::Command::new(binary)
            .args(["daemon", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => children.push(child),
            Err(error) => {
                eprintln!("idle measurement skipped: cannot start {binary}: {error}");
                return None;
            }
        }
    }
    // Let the three find each other and settle.
    std::thread::sleep(Duration::from_secs(3));
    let pid = children[0].id();
    let alive = children
        .iter_mut()
        .all(|child| matches!(child.try_wait(), Ok(None)));
    let result = if alive {
        let ticks_per_second = 100.0; // USER_HZ on Linux
        let (_, ticks_before) = process_usage(pid);
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
        let (rss_kib, ticks_after) = process_usage(pid);
        let elapsed = started.elapsed().as_secs_f64();
        Some(Idle {
            rss_mib: rss_kib as f64 / 1024.0,
            cpu_percent: (ticks_after - ticks_before) as f64 / ticks_per_second / elapsed * 100.0,
        })
    } else {
        eprintln!("idle measurement skipped: a daemon exited early");
        None
    };
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = Pki::new();
    let (latencies, bytes) = runtime.block_on(async {
        let mut latencies = Vec::new();
        for (label, eager_push, interval_ms) in [
            ("eager push, interval 1000 ms", true, 1000u64),
            ("anti-entropy only, interval 200 ms", false, 200),
            ("anti-entropy only, interval 1000 ms", false, 1000),
        ] {
            let cluster = Cluster::start(
                &pki,
                GossipConfig {
                    interval_ms,
                    jitter_ms: interval_ms / 5,
                    fanout: 3,
                    down_after_ms: 5_000,
                    rng_seed: 0,
                    eager_push,
                    push_queue_max: 256,
                    push_fanout: None,
                },
            )
            .await;
            let tag = if eager_push { "eager" } else { "ae" };
            let (median, p90) = measure_latency(&cluster, &format!("{tag}-{interval_ms}")).await;
            cluster.stop().await;
            latencies.push((label, interval_ms, median, p90));
        }
        let mut bytes = Vec::new();
        for services in [10, 1_000, 10_000] {
            bytes.push(measure_bytes(&pki, services).await);
        }
        (latencies, bytes)
    });
    let idle = measure_idle(&pki);

    println!(
        "\nshoal sync benchmark (in-process nodes, loopback HTTP/3, real redb and certificates)\n"
    );
    println!(
        "latency: service apply on A -> visible on C ({LATENCY_SAMPLES} samples, 1 ms polling)"
    );
    println!(
        "{:<38} {:>10} {:>10} {:>18}",
        "mode", "median ms", "p90 ms", "median / interval"
    );
    for (label, interval_ms, median, p90) in &latencies {
        println!(
            "{label:<38} {median:>10.1} {p90:>10.1} {:>18.3}",
            median / *interval_ms as f64
        );
    }
    println!("\nbytes for one change vs state size (baseline: full-state transfer)");
    println!(
        "{:>9} {:>12} {:>14} {:>8} {:>14} {:>8} {:>12} {:>8}",
        "services",
        "full bytes",
        "push-pull body",
        "ratio",
        "exchange UDP",
        "ratio",
        "push body",
        "ratio"
    );
    for row in &bytes {
        let full = row.full_state_bytes as f64;
        println!(
            "{:>9} {:>12} {:>14} {:>8.4} {:>14} {:>8.4} {:>12} {:>8.4}",
            row.services,
            row.full_state_bytes,
            row.pull_body_bytes,
            row.pull_body_bytes as f64 / full,
            row.exchange_udp_bytes,
            row.exchange_udp_bytes as f64 / full,
            row.push_body_bytes,
            row.push_body_bytes as f64 / full,
        );
    }
    match idle {
        Some(idle) => println!(
            "\nidle `shoal daemon` (one of three on loopback, interval 1000 ms, heartbeat 1000 ms) over {IDLE_SECONDS} s: RSS {:.1} MiB, CPU {:.2} % of one core",
            idle.rss_mib, idle.cpu_percent
        ),
        None => println!("\nidle daemon measurement: not available (see stderr)"),
    }
}
