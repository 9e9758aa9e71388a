//! The simulated links between nodes, whatever they carry: a message is delayed by a random
//! latency (so messages reorder), lost or duplicated at the scenario's rates, and dropped
//! across a partition. Every choice comes from the caller's seeded RNG. Shared by this
//! crate's replica simulator and the daemon's cluster simulator.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// What happened to a message handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Partitioned,
    Lost,
    /// Delivered at these times (two when duplicated).
    Deliver {
        first_ms: u64,
        duplicate_ms: Option<u64>,
    },
}

#[derive(Debug, Clone)]
pub struct Network {
    /// Per node, the side of the current partition it is on.
    sides: Vec<u8>,
    latency_ms_max: u64,
    loss_percent: u32,
    duplicate_percent: u32,
    /// The longest a late duplicate can trail its original.
    late_duplicate_ms_max: u64,
}

impl Network {
    pub fn new(
        nodes: usize,
        latency_ms_max: u64,
        loss_percent: u32,
        duplicate_percent: u32,
        late_duplicate_ms_max: u64,
    ) -> Self {
        assert!(latency_ms_max >= 1, "latency must be at least 1 ms");
        assert!(
            loss_percent <= 100 && duplicate_percent <= 100,
            "rates are percentages"
        );
        Self {
            sides: vec![0; nodes],
            latency_ms_max,
            loss_percent,
            duplicate_percent,
            late_duplicate_ms_max: late_duplicate_ms_max.max(1),
        }
    }

    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.sides[a] == self.sides[b]
    }

    /// Splits the nodes into two or three non-empty sides; returns the sides.
    pub fn partition(&mut self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let nodes = self.sides.len();
        let side_count = if nodes >= 5 && rng.gen_bool(0.3) {
            3
        } else {
            2
        };
        loop {
            for side in &mut self.sides {
                *side = rng.gen_range(0..side_count);
            }
            if (0..side_count).all(|wanted| self.sides.contains(&wanted)) {
                return self.sides.clone();
            }
        }
    }

    pub fn heal(&mut self) {
        self.sides.fill(0);
    }

    /// Final phase: no more loss or duplication, so sync rounds terminate.
    pub fn make_reliable(&mut self) {
        self.loss_percent = 0;
        self.duplicate_percent = 0;
    }

    pub fn send(&self, rng: &mut ChaCha8Rng, now_ms: u64, from: usize, to: usize) -> Fate {
        if !self.connected(from, to) {
            return Fate::Partitioned;
        }
        if rng.gen_ratio(self.loss_percent, 100) {
            return Fate::Lost;
        }
        let first_ms = now_ms + rng.gen_range(1..=self.latency_ms_max);
        // A third of the duplicates are very late (a re-push after a
        // reconnect, a stuck retransmission): they arrive after the change was
        // overwritten or removed, and its tombstone possibly collected.
        let duplicate_ms = rng.gen_ratio(self.duplicate_percent, 100).then(|| {
            if rng.gen_ratio(1, 3) {
                now_ms + rng.gen_range(1..=self.late_duplicate_ms_max)
            } else {
                now_ms + rng.gen_range(1..=self.latency_ms_max)
            }
        });
        Fate::Deliver {
            first_ms,
            duplicate_ms,
        }
    }
}
