//! What an idle cluster costs each node, by fleet size (issue 14):
//! `cargo bench -p shoal-vm-tests --bench idle_cost`. Needs root.
//!
//! Real daemons in the lab's network namespaces with the daemon's default settings (SWIM
//! probes every 1000 ms, anti-entropy every 1000 ms, the metadata refresh every 30 s or a
//! second per member, whichever is longer), no
//! services. Once every node sees all the others live and a few rounds
//! have passed, each node is measured over a window: bytes its host sent (the
//! namespace's `eth0` counter: UDP payload, QUIC, IP and Ethernet headers), CPU time of
//! its daemon process (`/proc/<pid>/stat`, user + system) and its resident memory. The
//! table gives the mean per node and the ratio of each size to the smallest, the
//! baseline: a flat cost is a ratio near 1.
//!
//! A second table says where the bytes go: per node and second, what each node started in
//! the window (anti-entropy exchanges, eager pushes, SWIM packets, connections dialed, sync
//! body bytes, durable commits), read from the daemons' metrics (`[metrics]` on each node's
//! loopback, scraped before and after the window).
//!
//! `SHOAL_IDLE_NODES=3,12,24,48` (the default) picks the sizes; `SHOAL_IDLE_SECONDS`
//! the window (default 30: one metadata refresh per node falls in it),
//! `SHOAL_IDLE_SETTLE_SECONDS` the wait before it (default 60: every node has probed every
//! other once and made the connections it keeps).

use std::time::{Duration, Instant};

use shoal_vm_tests::bench::{
    REFRESH_MS, SYNC_INTERVAL_MS, exit_unless_root, sizes_from_env, start_default_fleet,
};
use shoal_vm_tests::cluster::{Cluster, metric_sum};

const DEFAULT_SIZES: &[usize] = &[3, 12, 24, 48];
const DEFAULT_WINDOW_SECONDS: u64 = 30;
/// Time after every node sees the others live before the window opens: long enough for
/// every node to have probed every other once (so the connections SWIM keeps are made)
/// at the largest default size. `SHOAL_IDLE_SETTLE_SECONDS` overrides it.
const SETTLE_SECONDS: u64 = 60;

/// One size's figures, means per node.
struct Cost {
    nodes: usize,
    bytes_per_second: f64,
    cpu_percent: f64,
    rss_mib: f64,
    /// [`ACTIVITY`]'s counters, per node per second, in its order.
    activity: Vec<f64>,
}

/// The counters of the breakdown: a column title and the series summed (every sample line
/// whose name and labels begin with it).
const ACTIVITY: &[(&str, &str)] = &[
    ("exchanges/s", "shoal_sync_exchanges_total{"),
    ("pushes/s", "shoal_eager_pushes_total{"),
    ("SWIM sent/s", "shoal_swim_packets_total{outcome=\"sent\"}"),
    (
        "SWIM failed/s",
        "shoal_swim_packets_total{outcome=\"failed\"}",
    ),
    ("dials/s", "shoal_sync_connections_total{how=\"dialed\"}"),
    ("body B sent/s", "shoal_sync_sent_bytes_total "),
    ("compact/s", "shoal_sync_summaries_total{form=\"compact\"}"),
    ("full/s", "shoal_sync_summaries_total{form=\"full\"}"),
    (
        "compact refused/s",
        "shoal_sync_summaries_total{form=\"compact_refused\"}",
    ),
    ("commits/s", "shoal_state_commits_total "),
];

/// The sum of the samples of `series` in the OpenMetrics `text`.
/// Every [`ACTIVITY`] counter, summed over the nodes of `cluster`.
fn activity(cluster: &Cluster) -> Vec<f64> {
    let texts: Vec<String> = (0..cluster.len())
        .map(|index| cluster.metrics(index).expect("metrics"))
        .collect();
    ACTIVITY
        .iter()
        .map(|(_, series)| texts.iter().map(|text| metric_sum(text, series)).sum())
        .collect()
}

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    // The command name is in parentheses and may hold spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn measure(nodes: usize, window: Duration) -> Cost {
    let cluster = start_default_fleet(nodes);
    let settle = std::env::var("SHOAL_IDLE_SETTLE_SECONDS")
        .ok()
        .map(|seconds| {
            seconds
                .parse()
                .expect("SHOAL_IDLE_SETTLE_SECONDS: a number")
        })
        .unwrap_or(SETTLE_SECONDS);
    std::thread::sleep(Duration::from_secs(settle));
    let pids: Vec<u32> = (0..nodes)
        .map(|index| cluster.node(index).pid().expect("a running daemon"))
        .collect();
    // Scraped first, so the scrapes' own work falls outside the window's CPU time.
    let activity_before = activity(&cluster);
    let sent = |index: usize| cluster.lab().sent_bytes(index).expect("tx counter");
    let bytes_before: Vec<u64> = (0..nodes).map(sent).collect();
    let ticks_before: Vec<u64> = pids.iter().map(|pid| cpu_ticks(*pid)).collect();
    let opened = Instant::now();
    std::thread::sleep(window);
    let elapsed = opened.elapsed().as_secs_f64();
    let bytes: u64 = (0..nodes)
        .map(|index| sent(index) - bytes_before[index])
        .sum();
    let ticks: u64 = pids
        .iter()
        .zip(&ticks_before)
        .map(|(pid, before)| cpu_ticks(*pid) - before)
        .sum();
    let rss: u64 = pids.iter().map(|pid| rss_kib(*pid)).sum();
    let activity_after = activity(&cluster);
    let per_node = nodes as f64;
    Cost {
        nodes,
        bytes_per_second: bytes as f64 / elapsed / per_node,
        cpu_percent: ticks as f64 / TICKS_PER_SECOND / elapsed / per_node * 100.0,
        rss_mib: rss as f64 / 1024.0 / per_node,
        activity: activity_after
            .iter()
            .zip(&activity_before)
            .map(|(after, before)| (after - before) / elapsed / per_node)
            .collect(),
    }
}

fn main() {
    exit_unless_root("idle_cost");
    let sizes = sizes_from_env("SHOAL_IDLE_NODES", DEFAULT_SIZES);
    let window = Duration::from_secs(
        std::env::var("SHOAL_IDLE_SECONDS")
            .ok()
            .map(|seconds| seconds.parse().expect("SHOAL_IDLE_SECONDS: a number"))
            .unwrap_or(DEFAULT_WINDOW_SECONDS),
    );
    let costs: Vec<Cost> = sizes.iter().map(|nodes| measure(*nodes, window)).collect();
    let base = &costs[0];
    println!(
        "idle cluster, default settings (SWIM and anti-entropy every {SYNC_INTERVAL_MS} ms, \
         metadata refresh every {REFRESH_MS} ms or 1 s per member), per node over {} s:\n",
        window.as_secs()
    );
    println!(
        "| nodes | bytes sent/s per node | x{} | CPU per node | x{} | RSS per node |",
        base.nodes, base.nodes
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for cost in &costs {
        println!(
            "| {} | {:.1} KB | {:.2} | {:.2} % | {:.2} | {:.1} MiB |",
            cost.nodes,
            cost.bytes_per_second / 1000.0,
            cost.bytes_per_second / base.bytes_per_second,
            cost.cpu_percent,
            cost.cpu_percent / base.cpu_percent,
            cost.rss_mib
        );
    }
    println!("\nwhat each node started, per second in the window (from its metrics):\n");
    let titles: Vec<&str> = ACTIVITY.iter().map(|(title, _)| *title).collect();
    println!("| nodes | {} |", titles.join(" | "));
    println!("|---:|{}", "---:|".repeat(titles.len()));
    for cost in &costs {
        let cells: Vec<String> = cost
            .activity
            .iter()
            .map(|value| format!("{value:.2}"))
            .collect();
        println!("| {} | {} |", cost.nodes, cells.join(" | "));
    }
}
