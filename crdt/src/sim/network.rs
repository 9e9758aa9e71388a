//! The simulated network: every message is a byte string in the real wire
//! encoding, delayed by a random latency (so messages reorder), lost or
//! duplicated at the scenario's rates, and dropped across a partition (checked
//! when sent and again when delivered).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The longest a late duplicate can trail its original.
const LATE_DUPLICATE_MS_MAX: u64 = 5_000;

/// What replicas say to each other; every field is `codec`-encoded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Payload {
    /// Anti-entropy: "here is what I have, send me what I lack".
    SyncRequest { summary: Vec<u8> },
    /// The answer, with the responder's summary so the asker can push back.
    SyncResponse { delta: Vec<u8>, summary: Vec<u8> },
    /// An eager push of a local change, or the push half of a push-pull.
    Push { delta: Vec<u8> },
}

impl Payload {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Payload::SyncRequest { .. } => "sync-request",
            Payload::SyncResponse { .. } => "sync-response",
            Payload::Push { .. } => "push",
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        match self {
            Payload::SyncRequest { summary } => summary.len(),
            Payload::SyncResponse { delta, summary } => delta.len() + summary.len(),
            Payload::Push { delta } => delta.len(),
        }
    }
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
        replicas: usize,
        latency_ms_max: u64,
        loss_percent: u32,
        duplicate_percent: u32,
    ) -> Self {
        assert!(latency_ms_max >= 1, "latency must be at least 1 ms");
        assert!(
            loss_percent <= 100 && duplicate_percent <= 100,
            "rates are percentages"
        );
        Self {
            sides: vec![0; replicas],
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
        let replicas = self.sides.len();
        let side_count = if replicas >= 5 && rng.gen_bool(0.3) {
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

    /// Final phase: no more loss or duplication, so sync rounds terminate.
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
        // A third of the duplicates are very late (a re-push after a
        // reconnect, a stuck retransmission): they arrive after the change was
        // overwritten or removed, and its tombstone possibly collected.
        let duplicate_ms = rng.gen_ratio(self.duplicate_percent, 100).then(|| {
            if rng.gen_ratio(1, 3) {
                now_ms + rng.gen_range(1..=LATE_DUPLICATE_MS_MAX)
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
