//! Join benchmark (`cargo bench -p shoal --bench join`, harness = false). Prints one table.
//!
//! A seed node holds a large state (50 MB by default; `SHOAL_JOIN_BENCH_MB` changes it) of
//! services with 4 KiB of environment each, and serves sync on three endpoints that differ
//! only in `body_bytes_max`. A new node joins it in a child process of this binary (real
//! redb, real certificates, HTTP/3 on loopback): one `sync_once`, timed until its digest
//! equals the seed's, and the child's peak RSS (`VmHWM`) is read from /proc at the end.
//! - body 1 MiB and 8 MiB (the default): the delta does not fit, so the joiner fetches the
//!   seed's snapshot in pieces and applies it whole;
//! - body 128 MiB: the whole state fits in one `/v1/sync` response (how a state had to travel
//!   before snapshot transfers: with a raised limit);
//! - baseline, in memory: the seed's encoding of the snapshot, plus a child that decodes the
//!   same bytes and applies them to a fresh node in one piece (durably, as a join does), with
//!   no network.

#[path = "../tests/net_support/mod.rs"]
mod net_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_support::{Pki, node_id, open_node};
use shoal::state::{Node, NodeOptions, STORED_BYTES_MAX, SystemClock};
use shoal::sync::{self, SyncLimits, TlsMaterial, wire};
use shoal_crdt::{ServiceSpec, codec};
use tokio::sync::watch;

const SERVICE_ENV_BYTES: usize = 4096;
const MIB: usize = 1024 * 1024;

fn limits(body_bytes_max: usize) -> SyncLimits {
    SyncLimits {
        body_bytes_max,
        request_timeout_ms: 120_000,
        connections_max: 16,
    }
}

/// Peak resident set of this process in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|arg| arg == "--child") {
        Some(at) => child(&args[at + 1..]),
        None => parent(),
    }
}

// ---- the joining side, in a child process ----

fn child(args: &[String]) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (elapsed, snapshot_bytes) = match args[0].as_str() {
        "join" => runtime.block_on(join(&args[1..])),
        "baseline" => baseline(&args[1..]),
        other => panic!("unknown child role {other}"),
    };
    println!(
        "RESULT {} {} {}",
        elapsed.as_micros(),
        peak_rss_kib(),
        snapshot_bytes
    );
}

/// `join <seed address> <body_bytes_max> <ca> <cert> <key> <dir> <seed digest>`.
async fn join(args: &[String]) -> (Duration, u64) {
    let seed: std::net::SocketAddr = args[0].parse().expect("seed address");
    let body_bytes_max: usize = args[1].parse().expect("body_bytes_max");
    let tls = TlsMaterial::load(
        Path::new(&args[2]),
        Path::new(&args[3]),
        Path::new(&args[4]),
    )
    .expect("tls");
    let dir = PathBuf::from(&args[5]);
    let expected = &args[6];
    let endpoint =
        sync::bind_endpoint("127.0.0.1:0".parse().expect("address"), &tls).expect("endpoint");
    let options = NodeOptions::new(
        node_id("joiner"),
        dir.join("joiner.redb"),
        endpoint.local_addr().expect("address"),
    );
    let node = Arc::new(Node::open(options, Arc::new(SystemClock)).expect("node"));
    let started = Instant::now();
    let stats = sync::sync_once(
        &endpoint,
        &node,
        seed,
        Some(&node_id("seed")),
        &limits(body_bytes_max),
    )
    .await
    .expect("join sync");
    let elapsed = started.elapsed();
    assert_eq!(
        &hex::encode(node.digest()),
        expected,
        "joined the seed's state"
    );
    endpoint.close(0u32.into(), b"done");
    (elapsed, stats.snapshot_bytes_received)
}

/// `baseline <snapshot file> <dir>`: decode and apply the bytes in one piece.
fn baseline(args: &[String]) -> (Duration, u64) {
    let bytes = std::fs::read(&args[0]).expect("snapshot file");
    let dir = PathBuf::from(&args[1]);
    let options = NodeOptions::new(
        node_id("joiner"),
        dir.join("baseline.redb"),
        "127.0.0.1:9".parse().expect("address"),
    );
    let node = Node::open(options, Arc::new(SystemClock)).expect("node");
    let started = Instant::now();
    let delta = codec::decode_delta(&bytes, STORED_BYTES_MAX).expect("decode");
    drop(bytes);
    node.apply_remote(&node_id("seed"), delta).expect("apply");
    (started.elapsed(), 0)
}

// ---- the seed and the table, in the parent ----

struct Row {
    case: String,
    pieces: String,
    time_ms: f64,
    peak_rss_mib: f64,
}

fn run_child(args: &[String]) -> (f64, f64, u64) {
    let output = Command::new(std::env::current_exe().expect("this binary"))
        .arg("--child")
        .args(args)
        .output()
        .expect("child");
    assert!(
        output.status.success(),
        "child {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .expect("a RESULT line");
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().expect("number"))
        .collect();
    (
        fields[0] as f64 / 1000.0,
        fields[1] as f64 / 1024.0,
        fields[2],
    )
}

fn parent() {
    let state_mb: usize = std::env::var("SHOAL_JOIN_BENCH_MB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let bodies = [MIB, 8 * MIB, 128 * MIB];
    let endpoints: Vec<quinn::Endpoint> = runtime.block_on(async {
        bodies
            .iter()
            .map(|_| {
                sync::bind_endpoint(
                    "127.0.0.1:0".parse().expect("address"),
                    &pki.material("seed"),
                )
                .expect("endpoint")
            })
            .collect()
    });
    let seed = open_node(
        dir.path(),
        "seed",
        endpoints[0].local_addr().expect("address"),
    );

    // The state: services of 4 KiB of environment each, written in commits of 1,000.
    let services = state_mb * 1_000_000 / (SERVICE_ENV_BYTES + 150);
    let filled = Instant::now();
    for first in (0..services).step_by(1_000) {
        seed.write_batch(|replica, now| {
            for index in first..(first + 1_000).min(services) {
                let name = format!("service-{index:06}");
                let mut spec = ServiceSpec::new(format!("/images/{name}.tar"));
                spec.env
                    .insert("PADDING".to_owned(), "p".repeat(SERVICE_ENV_BYTES));
                replica
                    .put_service(now, name.parse().expect("name"), spec)
                    .expect("put");
            }
        })
        .expect("fill");
    }
    let encode_started = Instant::now();
    let snapshot = seed.snapshot_transfer_bytes();
    let encode_ms = encode_started.elapsed().as_secs_f64() * 1000.0;
    let snapshot_bytes = snapshot.len();
    let snapshot_file = dir.path().join("snapshot.bin");
    std::fs::write(&snapshot_file, &snapshot).expect("snapshot file");
    drop(snapshot);
    let digest = hex::encode(seed.digest());
    eprintln!(
        "seed: {services} services, snapshot {:.1} MB, filled in {:.1} s",
        snapshot_bytes as f64 / 1e6,
        filled.elapsed().as_secs_f64()
    );

    let (stop, stopped) = watch::channel(false);
    let serving: Vec<_> = endpoints
        .iter()
        .zip(bodies)
        .map(|(endpoint, body)| {
            runtime.spawn(sync::serve(
                endpoint.clone(),
                seed.clone(),
                limits(body),
                sync::Handlers::default(),
                shoal::agent::tasks::stopped(stopped.clone()),
            ))
        })
        .collect();

    let mut rows = Vec::new();
    let (time_ms, peak_rss_mib, _) = run_child(&[
        "baseline".to_owned(),
        snapshot_file.display().to_string(),
        dir.path().display().to_string(),
    ]);
    rows.push(Row {
        case: "baseline: encode + decode + apply in memory, one piece".to_owned(),
        pieces: "1".to_owned(),
        time_ms: encode_ms + time_ms,
        peak_rss_mib,
    });
    for (index, (endpoint, body)) in endpoints.iter().zip(bodies).enumerate() {
        let name = format!("joiner-{index}");
        let paths = pki.issue("joiner");
        let join_dir = dir.path().join(&name);
        std::fs::create_dir_all(&join_dir).expect("joiner dir");
        let (time_ms, peak_rss_mib, fetched) = run_child(&[
            "join".to_owned(),
            endpoint.local_addr().expect("address").to_string(),
            body.to_string(),
            paths.ca_cert.display().to_string(),
            paths.cert.display().to_string(),
            paths.key.display().to_string(),
            join_dir.display().to_string(),
            digest.clone(),
        ]);
        let (case, pieces) = if fetched > 0 {
            let piece = wire::snapshot_piece_bytes_max(body);
            (
                format!(
                    "join over HTTP/3, snapshot in pieces, body {} MiB",
                    body / MIB
                ),
                fetched.div_ceil(piece).to_string(),
            )
        } else {
            (
                format!(
                    "join over HTTP/3, one /v1/sync body, body {} MiB",
                    body / MIB
                ),
                "1".to_owned(),
            )
        };
        rows.push(Row {
            case,
            pieces,
            time_ms,
            peak_rss_mib,
        });
    }
    let _ = stop.send(true);
    runtime.block_on(async {
        for task in serving {
            task.await.expect("serve task").expect("serve");
        }
    });
    for endpoint in endpoints {
        endpoint.close(0u32.into(), b"");
    }

    println!();
    println!(
        "A new node joining a {:.1} MB state ({services} services); the joining side's time and peak RSS",
        snapshot_bytes as f64 / 1e6
    );
    println!(
        "{:<58} {:>7} {:>10} {:>14} {:>9}",
        "case", "pieces", "time ms", "peak RSS MiB", "vs base"
    );
    let base = rows[0].time_ms;
    for row in &rows {
        println!(
            "{:<58} {:>7} {:>10.0} {:>14.1} {:>8.2}x",
            row.case,
            row.pieces,
            row.time_ms,
            row.peak_rss_mib,
            row.time_ms / base
        );
    }
    println!(
        "(baseline time = the seed's snapshot encoding, {encode_ms:.0} ms, plus the child's decode and durable apply)"
    );
}
