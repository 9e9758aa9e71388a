//! The simulator's event log and its digest. Lines are formatted only when a trace was asked
//! for (a replay, the determinism test); the digest of every line is always kept, so two
//! runs of one seed can be compared without holding their logs.

use std::fmt;

use sha2::{Digest, Sha256};

/// Lines beyond this are digested and counted but not kept.
const TRACE_LINES_MAX: usize = 2_000_000;

#[derive(Debug)]
pub(crate) struct Trace {
    lines: Option<Vec<String>>,
    dropped: usize,
    digest: Sha256,
}

impl Trace {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            lines: enabled.then(Vec::new),
            dropped: 0,
            digest: Sha256::new(),
        }
    }

    /// Records one event at simulated time `at_ms`.
    pub(crate) fn record(&mut self, at_ms: u64, event: fmt::Arguments<'_>) {
        let line = format!("{at_ms:>9}ms {event}");
        self.digest.update(line.as_bytes());
        self.digest.update(b"\n");
        if let Some(lines) = &mut self.lines {
            if lines.len() < TRACE_LINES_MAX {
                lines.push(line);
            } else {
                self.dropped += 1;
            }
        }
    }

    /// The digest of every line so far, and the kept lines.
    pub(crate) fn finish(self) -> ([u8; 32], Vec<String>) {
        let mut lines = self.lines.unwrap_or_default();
        if self.dropped > 0 {
            lines.push(format!("... {} more events not kept", self.dropped));
        }
        (self.digest.finalize().into(), lines)
    }
}
