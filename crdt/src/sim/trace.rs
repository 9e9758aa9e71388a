//! The simulator's event log: recorded only when asked for (replays and the
//! determinism test), and bounded so a run cannot grow it without limit.

use std::fmt;

/// Lines beyond this are counted but not kept.
const TRACE_LINES_MAX: usize = 1_000_000;

#[derive(Debug, Default)]
pub(crate) struct Trace {
    lines: Option<Vec<String>>,
    dropped: usize,
}

impl Trace {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            lines: enabled.then(Vec::new),
            dropped: 0,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lines.is_some()
    }

    /// Records one event at simulated time `at_ms`; formats nothing when disabled.
    pub(crate) fn record(&mut self, at_ms: u64, event: fmt::Arguments<'_>) {
        if let Some(lines) = &mut self.lines {
            if lines.len() < TRACE_LINES_MAX {
                lines.push(format!("{at_ms:>8}ms {event}"));
            } else {
                self.dropped += 1;
            }
        }
    }

    pub(crate) fn into_lines(self) -> Vec<String> {
        let mut lines = self.lines.unwrap_or_default();
        if self.dropped > 0 {
            lines.push(format!("... {} more events not kept", self.dropped));
        }
        lines
    }
}
