//! What the cluster benches (`vm-tests/benches/`) share: their settings from the
//! environment, the root check, and percentiles of measured times.

use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterOptions};

/// The daemon's defaults (`sync.*` in its config), which the fleet benches measure.
pub const SYNC_INTERVAL_MS: u64 = 1_000;
pub const REFRESH_MS: u64 = 30_000;
pub const DOWN_AFTER_MS: u64 = 90_000;

/// A fleet of `nodes` daemons with the default settings (SWIM membership) and metrics
/// served, once every node sees every member; says how long that took.
pub fn start_default_fleet(nodes: usize) -> Cluster {
    let started = Instant::now();
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        sync_interval_ms: SYNC_INTERVAL_MS,
        heartbeat_interval_ms: REFRESH_MS,
        down_after_ms: DOWN_AFTER_MS,
        membership: None,
        metrics: true,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    eprintln!(
        "{nodes} nodes up and members in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    cluster
}

/// Exits with a message unless this process is root: a bench needs network namespaces.
pub fn exit_unless_root(bench: &str) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("{bench} needs root (network namespaces)");
        std::process::exit(1);
    }
}

/// The value of the environment variable `name`, or `default` when it is not set; a value
/// that does not parse stops the bench with the variable's name.
pub fn env_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{name}: not a valid value"))
        })
        .unwrap_or(default)
}

/// The cluster sizes in the environment variable `name` (numbers, comma-separated), or
/// `default` when it is not set.
pub fn sizes_from_env(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(list) => list
            .split(',')
            .map(|size| {
                size.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: numbers, comma-separated"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// The `fraction` percentile of `sorted` (nearest rank).
pub fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    assert!(!sorted.is_empty(), "a percentile of no samples");
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=11).map(Duration::from_millis).collect();
        assert_eq!(percentile(&samples, 0.5), Duration::from_millis(6));
        assert_eq!(percentile(&samples, 0.99), Duration::from_millis(11));
        assert_eq!(percentile(&samples, 0.0), Duration::from_millis(1));
    }
}
