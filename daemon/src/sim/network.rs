//! The simulated network between the nodes' sync endpoints: every message is bytes in the
//! real encoding (`shoal_crdt::codec`), delayed by a random latency (so messages reorder),
//! lost or duplicated at the scenario's rates, and dropped across a partition (checked when
//! sent and again when delivered, as a cut connection would).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The longest a late duplicate can trail its original (a retransmission after a reconnect).
const LATE_DUPLICATE_MS_MAX: u64 = 3_000;

/// What the daemons' sync endpoints say to each other (`sync/client.rs`, `sync/server.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Anti-entropy (`sync_once`): "here is my summary, send me what I lack".
    SyncRequest { summary: Vec<u8> },
    /// The answer, with the responder's summary so the asker pushes back what it lacks.
    SyncResponse { delta: Vec<u8>, summary: Vec<u8> },
    /// An eager push of a local change, or the push half of an exchange.
    Push { delta: Vec<u8> },
    /// The receiver lacks the push's base (HTTP 409): the sender runs a full exchange.
    PushConflict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) payload: Payload,
}

/// What happened to a message handed to the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Partitioned,
    Lost,
    /// Delivered at these times (two when duplicated).
    Deliver {
        first_ms: u64,
        duplicate_ms: Option<u64>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Network {
    /// Per node, the side of the current partition it is on.
    sides: Vec<u8>,
    latency_ms_max: u64,
    loss_percent: u32,
    duplicate_percent: u32,
}

impl Network {
    pub(crate) fn new(
        nodes: usize,
        latency_ms_max: u64,
        loss_percent: u32,
        duplicate_percent: u32,
    ) -> Self {
        assert!(latency_ms_max >= 1, "latency is at least 1 ms");
        assert!(
            loss_percent <= 100 && duplicate_percent <= 100,
            "rates are percentages"
        );
        Self {
            sides: vec![0; nodes],
            latency_ms_max,
            loss_percent,
            duplicate_percent,
        }
    }

    pub(crate) fn connected(&self, a: usize, b: usize) -> bool {
        self.sides[a] == self.sides[b]
    }

    /// Splits the nodes into two or three non-empty sides; returns the sides.
    pub(crate) fn partition(&mut self, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let nodes = self.sides.len();
        let side_count = if nodes >= 5 && rng.gen_ratio(1, 3) {
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

    pub(crate) fn heal(&mut self) {
        self.sides.fill(0);
    }

    /// After the faults: nothing is lost or duplicated any more.
    pub(crate) fn make_reliable(&mut self) {
        self.loss_percent = 0;
        self.duplicate_percent = 0;
    }

    pub(crate) fn send(&self, rng: &mut ChaCha8Rng, now_ms: u64, from: usize, to: usize) -> Fate {
        if !self.connected(from, to) {
            return Fate::Partitioned;
        }
        if rng.gen_ratio(self.loss_percent, 100) {
            return Fate::Lost;
        }
        let first_ms = now_ms + rng.gen_range(1..=self.latency_ms_max);
        // A third of the duplicates are late: they arrive after what they carry was
        // overwritten or removed, which is what must not bring it back.
        let duplicate_ms = rng.gen_ratio(self.duplicate_percent, 100).then(|| {
            let trail_ms_max = if rng.gen_ratio(1, 3) {
                LATE_DUPLICATE_MS_MAX
            } else {
                self.latency_ms_max
            };
            now_ms + rng.gen_range(1..=trail_ms_max)
        });
        Fate::Deliver {
            first_ms,
            duplicate_ms,
        }
    }
}
