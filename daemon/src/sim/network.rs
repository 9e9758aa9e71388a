//! What the nodes' sync endpoints send each other in the simulator: bytes in the real
//! encoding (`shoal_crdt::codec`), carried by crdt's simulated links
//! (`shoal_crdt::sim::link::Network`: latency, loss, duplication, partitions; checked when
//! sent and again when delivered, as a cut connection would).

pub(crate) use shoal_crdt::sim::link::{Fate, Network};

/// The longest a late duplicate can trail its original (a retransmission after a reconnect).
pub(crate) const LATE_DUPLICATE_MS_MAX: u64 = 3_000;

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
