//! A sans-IO hybrid logical clock on uhlc's types.
//!
//! uhlc's own `HLC` reads physical time through a global function, which a
//! simulator of many skewed nodes on one thread cannot drive. The update rule
//! here is the usual HLC one, with the physical time passed in by the caller.

use std::time::Duration;

use uhlc::{ID, NTP64, Timestamp};

use crate::NodeId;

/// A remote timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error(
        "timestamp {remote} is {ahead_ms} ms ahead of local time {local}, more than the allowed drift of {max_drift_ms} ms"
    )]
    Drift {
        remote: Timestamp,
        local: NTP64,
        ahead_ms: u64,
        max_drift_ms: u64,
    },
}

/// A node's hybrid logical clock. Timestamps it issues are strictly increasing
/// and greater than every remote timestamp it has observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    id: ID,
    max_drift: NTP64,
    max_drift_ms: u64,
    last: Timestamp,
}

impl Clock {
    /// A clock for `node` that refuses remote timestamps more than `max_drift`
    /// ahead of the physical time given to `observe`.
    pub fn new(node: &NodeId, max_drift: Duration) -> Self {
        let id = node.hlc_id();
        Self {
            id,
            max_drift: NTP64::from(max_drift),
            max_drift_ms: u64::try_from(max_drift.as_millis()).unwrap_or(u64::MAX),
            last: Timestamp::new(NTP64(0), id),
        }
    }

    /// A clock that resumes after `last` (restored from persistence).
    pub(crate) fn resume(node: &NodeId, max_drift: Duration, last: NTP64) -> Self {
        let mut clock = Self::new(node, max_drift);
        clock.last = Timestamp::new(last, clock.id);
        clock
    }

    /// The next timestamp: the physical time if it is ahead of everything seen,
    /// else one tick after the last timestamp. Strictly increasing.
    pub fn now(&mut self, physical: NTP64) -> Timestamp {
        let last = self.last.get_time().as_u64();
        let next = physical.as_u64().max(last.saturating_add(1));
        assert!(next > last, "hybrid logical clock overflowed at {last}");
        self.last = Timestamp::new(NTP64(next), self.id);
        self.last
    }

    /// Checks a remote timestamp against `physical + max_drift`; if it is within,
    /// the next local timestamp will be greater than it. On error nothing changes.
    pub fn observe(&mut self, physical: NTP64, remote: &Timestamp) -> Result<(), ClockError> {
        self.check(physical, remote)?;
        if remote.get_time() > self.last.get_time() {
            self.last = Timestamp::new(*remote.get_time(), self.id);
        }
        Ok(())
    }

    /// The drift check alone, without changing the clock.
    pub fn check(&self, physical: NTP64, remote: &Timestamp) -> Result<(), ClockError> {
        let limit = physical.as_u64().saturating_add(self.max_drift.as_u64());
        let remote_time = remote.get_time().as_u64();
        if remote_time > limit {
            let ahead = NTP64(remote_time - physical.as_u64().min(remote_time));
            return Err(ClockError::Drift {
                remote: *remote,
                local: physical,
                ahead_ms: u64::try_from(ahead.to_duration().as_millis()).unwrap_or(u64::MAX),
                max_drift_ms: self.max_drift_ms,
            });
        }
        Ok(())
    }

    /// The last timestamp issued or observed (carrying this node's id).
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// This clock's HLC id.
    pub fn id(&self) -> ID {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    #[test]
    fn now_is_strictly_increasing_even_when_physical_goes_back() {
        let mut clock = Clock::new(&node("a"), Duration::from_secs(1));
        let t1 = clock.now(NTP64(1000));
        let t2 = clock.now(NTP64(1000));
        let t3 = clock.now(NTP64(10));
        assert!(t1 < t2 && t2 < t3);
        assert_eq!(t1.get_id(), &node("a").hlc_id());
    }

    #[test]
    fn observe_moves_past_remote() {
        let mut a = Clock::new(&node("a"), Duration::from_secs(1));
        let mut b = Clock::new(&node("b"), Duration::from_secs(1));
        let remote = b.now(NTP64::from(Duration::from_millis(500)));
        a.observe(NTP64(0), &remote).unwrap();
        assert!(a.now(NTP64(0)).get_time() > remote.get_time());
    }

    #[test]
    fn drift_beyond_limit_is_refused_and_changes_nothing() {
        let mut a = Clock::new(&node("a"), Duration::from_secs(1));
        let mut b = Clock::new(&node("b"), Duration::from_secs(1));
        let remote = b.now(NTP64::from(Duration::from_secs(5)));
        let before = a.clone();
        let error = a
            .observe(NTP64::from(Duration::from_secs(3)), &remote)
            .unwrap_err();
        assert!(
            matches!(error, ClockError::Drift { ahead_ms: 2000, .. }),
            "{error}"
        );
        assert_eq!(a, before);
    }
}
