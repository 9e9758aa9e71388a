//! Time, passed in. The node, the reconcile loop and the planner never read the wall clock
//! themselves: they ask the `Clock` they were given. The daemon gives them `SystemClock`;
//! tests and simulators give them a `ManualClock` and move it forward instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_crdt::NTP64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, as the replica's physical time (NTP64 since the Unix epoch).
    fn now(&self) -> NTP64;

    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64 {
        ntp_to_ms(self.now())
    }
}

/// Milliseconds since the Unix epoch of an NTP64 time.
pub fn ntp_to_ms(time: NTP64) -> u64 {
    u64::try_from(time.to_duration().as_millis()).unwrap_or(u64::MAX)
}

/// The NTP64 time of a number of milliseconds since the Unix epoch.
pub fn ms_to_ntp(ms: u64) -> NTP64 {
    NTP64::from(Duration::from_millis(ms))
}

/// Milliseconds from `earlier` to `later`; 0 when `later` is not after it.
pub fn millis_between(later: NTP64, earlier: NTP64) -> u64 {
    if later <= earlier {
        return 0;
    }
    ntp_to_ms(later - earlier)
}

/// The host's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> NTP64 {
        NTP64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock standing at `start_ms` milliseconds since the Unix epoch.
    pub fn at_ms(start_ms: u64) -> ManualClock {
        ManualClock {
            now: AtomicU64::new(ms_to_ntp(start_ms).0),
        }
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        let step = ms_to_ntp(ms).0;
        self.now.fetch_add(step, Ordering::SeqCst);
    }

    /// Sets the clock, forwards or backwards (a stepped wall clock).
    pub fn set_ms(&self, ms: u64) {
        self.now.store(ms_to_ntp(ms).0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> NTP64 {
        NTP64(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = ManualClock::at_ms(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance_ms(250);
        assert_eq!(clock.now_ms(), 1_250);
        clock.set_ms(900);
        assert_eq!(clock.now_ms(), 900);
        assert_eq!(millis_between(ms_to_ntp(1_250), ms_to_ntp(900)), 350);
        assert_eq!(millis_between(ms_to_ntp(900), ms_to_ntp(1_250)), 0);
    }

    #[test]
    fn the_system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
