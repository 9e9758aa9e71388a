//! What one seed decides before the first event: how many nodes, their clock skews,
//! capacities, subnets and addresses, the network's fault rates, and how many faults of
//! each kind the run injects.

use std::net::{Ipv4Addr, SocketAddr};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use shoal_crdt::{Capacity, Subnet};

/// Nodes per run, as issue 10 asks. Most seeds draw a small cluster; one in
/// `LARGE_ONE_IN` draws up to `NODES_MAX`. A run's cost grows with the fourth power of its
/// size (every node pushes every heartbeat to every other, and applying a delta checks the
/// summaries of every member), so a 50-node seed costs as much as several hundred small
/// ones: this share keeps a thousand seeds quick and still runs a few dozen large clusters.
pub const NODES_MIN: usize = 3;
pub const NODES_SMALL_MAX: usize = 7;
pub const NODES_MAX: usize = 50;
pub const LARGE_ONE_IN: u32 = 20;

/// One simulated machine, as the seed made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Physical clock offset from simulated time.
    pub skew_ms: i64,
    pub capacity: Capacity,
    /// `10.<index + 1>.0.0/24`: distinct for every node, so addresses never collide across
    /// nodes and the checks can say which node allocated one.
    pub subnet: Subnet,
    /// Where peers reach it; also the gateway of the routes to its subnet.
    pub address: SocketAddr,
    /// `zone` a, b or c by index, `role` edge on even indexes and core on odd ones.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The parameters of one run, all drawn from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub machines: Vec<Machine>,
    pub latency_ms_max: u64,
    pub loss_percent: u32,
    pub duplicate_percent: u32,
    /// Whether partitions form (and heal) during the run.
    pub partitions: bool,
    /// Machines lost (runtime gone, no heartbeat) that come back later.
    pub machine_losses: u32,
    /// A machine lost for good, and when: it never returns, so its replicas move.
    pub dead: Option<(usize, u64)>,
    /// Daemon crashes (containers keep running, a new planner starts).
    pub daemon_crashes: u32,
    /// Mean time between two operator commands (apply, scale, remove) anywhere.
    pub command_interval_ms_mean: u64,
    /// Mean time between two containers ending on their own anywhere.
    pub exit_interval_ms_mean: u64,
    /// Per mille of service writes whose image is refused.
    pub bad_image_per_mille: u32,
    /// Container creates made to fail (runtime errors), one at a time.
    pub create_failures: u32,
}

impl Scenario {
    pub(crate) fn generate(rng: &mut ChaCha8Rng, duration_ms: u64, max_drift_ms: u64) -> Self {
        let nodes = if !rng.gen_ratio(1, LARGE_ONE_IN) {
            rng.gen_range(NODES_MIN..=NODES_SMALL_MAX)
        } else {
            rng.gen_range(NODES_SMALL_MAX + 1..=NODES_MAX)
        };
        // Within a quarter of the drift limit, so two clocks (and the HLCs that follow the
        // fastest of them) are never more than half the limit apart: no healthy node's
        // delta is ever refused for drift, and the checks may treat one as a failure.
        let skew_max_ms = i64::try_from(max_drift_ms / 4).unwrap_or(i64::MAX);
        let machines = (0..nodes)
            .map(|index| {
                let third = u8::try_from(index + 1).expect("at most 50 nodes");
                Machine {
                    skew_ms: rng.gen_range(-skew_max_ms..=skew_max_ms),
                    capacity: Capacity {
                        cpu_millis: [1000, 2000, 4000][rng.gen_range(0..3)],
                        memory_bytes: [1u64 << 30, 2 << 30, 4 << 30][rng.gen_range(0..3)],
                    },
                    subnet: Subnet::new(Ipv4Addr::new(10, third, 0, 0), 24).expect("valid subnet"),
                    address: SocketAddr::from(([172, 16, 0, third], 7000)),
                    labels: [
                        ("zone".to_owned(), ["a", "b", "c"][index % 3].to_owned()),
                        (
                            "role".to_owned(),
                            if index % 2 == 0 { "edge" } else { "core" }.to_owned(),
                        ),
                    ]
                    .into(),
                }
            })
            .collect();
        let dead = (nodes >= 4 && rng.gen_ratio(1, 8)).then(|| {
            (
                rng.gen_range(0..nodes),
                rng.gen_range(duration_ms / 10..duration_ms * 3 / 4),
            )
        });
        Self {
            machines,
            latency_ms_max: rng.gen_range(1..=100),
            loss_percent: rng.gen_range(0..=20),
            duplicate_percent: rng.gen_range(0..=10),
            partitions: rng.gen_bool(0.6),
            machine_losses: rng.gen_range(0..=2),
            dead,
            daemon_crashes: rng.gen_range(0..=3),
            command_interval_ms_mean: rng.gen_range(500..=3_000),
            exit_interval_ms_mean: rng.gen_range(300..=3_000),
            bad_image_per_mille: [0, 100, 250][rng.gen_range(0..3)],
            create_failures: rng.gen_range(0..=2),
        }
    }

    pub fn nodes(&self) -> usize {
        self.machines.len()
    }

    /// Whether `node` is the machine lost for good.
    pub fn is_dead(&self, node: usize) -> bool {
        self.dead.is_some_and(|(dead, _)| dead == node)
    }
}
