//! What replicas send each other in the simulator: byte strings in the real wire
//! encoding, carried by a `link::Network` that delays, loses, duplicates and
//! partitions them (checked when sent and again when delivered).

/// The longest a late duplicate can trail its original.
pub(crate) const LATE_DUPLICATE_MS_MAX: u64 = 5_000;

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
