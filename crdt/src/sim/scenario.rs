//! What one seed decides before the first event: cluster size, clock skews,
//! fault rates, and which node (if any) has a clock beyond the drift limit or
//! dies for good.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Replicas per run: enough for partitions with more than one node on a side.
pub const REPLICAS_MIN: usize = 3;
pub const REPLICAS_MAX: usize = 7;

/// A rogue node's clock runs this far ahead: longer than any run, so its
/// writes stay beyond the drift limit for the whole run.
pub const ROGUE_SKEW_MS: i64 = 3_600_000;

/// The parameters of one run, all drawn from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub replicas: usize,
    /// Per node: physical clock offset from simulated time.
    pub skews_ms: Vec<i64>,
    /// A node whose clock is beyond the drift limit: every delta carrying its
    /// writes must be refused with `ClockDrift` and change nothing.
    pub rogue: Option<usize>,
    /// A node that crashes at this time and never comes back; it is evicted.
    pub dead: Option<(usize, u64)>,
    pub latency_ms_max: u64,
    pub loss_percent: u32,
    pub duplicate_percent: u32,
    /// Whether partitions form (and heal) during the run.
    pub partitions: bool,
    /// Chance per anti-entropy tick that a node crashes (and restarts later).
    pub crash_per_mille: u32,
    /// Mean time between two local operations of one node.
    pub op_interval_ms_mean: u64,
}

impl Scenario {
    pub(crate) fn generate(rng: &mut ChaCha8Rng, duration_ms: u64, max_drift_ms: u64) -> Self {
        let replicas = rng.gen_range(REPLICAS_MIN..=REPLICAS_MAX);
        // Healthy skews stay within a quarter of the limit, so two healthy
        // nodes are never more than half the limit apart.
        let healthy_skew_ms = i64::try_from(max_drift_ms / 4).unwrap_or(i64::MAX);
        let skews_ms: Vec<i64> = (0..replicas)
            .map(|_| rng.gen_range(-healthy_skew_ms..=healthy_skew_ms))
            .collect();
        let rogue = rng.gen_bool(0.2).then(|| rng.gen_range(0..replicas));
        let dead = rng
            .gen_bool(0.15)
            .then(|| rng.gen_range(0..replicas))
            .filter(|node| Some(*node) != rogue)
            .map(|node| (node, rng.gen_range(duration_ms / 10..duration_ms / 2)));
        let mut skews_ms = skews_ms;
        if let Some(node) = rogue {
            skews_ms[node] = ROGUE_SKEW_MS;
        }
        Self {
            replicas,
            skews_ms,
            rogue,
            dead,
            latency_ms_max: rng.gen_range(2..=120),
            loss_percent: rng.gen_range(0..=30),
            duplicate_percent: rng.gen_range(0..=15),
            partitions: rng.gen_bool(0.6),
            crash_per_mille: if rng.gen_bool(0.5) {
                rng.gen_range(1..=30)
            } else {
                0
            },
            op_interval_ms_mean: rng.gen_range(60..=300),
        }
    }

    /// Nodes expected to converge: neither rogue nor dead.
    pub fn is_healthy(&self, node: usize) -> bool {
        Some(node) != self.rogue && self.dead.map(|(dead, _)| dead) != Some(node)
    }
}
