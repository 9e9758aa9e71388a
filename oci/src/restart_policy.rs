//! Restart policy as a pure state machine: given how a container ended and when, decide
//! whether and when to start it again. Time is passed in (milliseconds on the caller's
//! monotonic clock), so the daemon and the simulator drive it the same way.

/// When a service's containers are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RestartPolicy {
    Never,
    /// Restart after a non-zero exit (or a kill by signal), with exponential backoff, at most
    /// `restarts_max` times in a row.
    OnFailure {
        restarts_max: u32,
    },
    /// Restart after any exit, with the same backoff.
    Always,
}

/// What to do with a container that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Start it again at `at_ms` (not before).
    RestartAt { at_ms: u64 },
    /// Leave it stopped.
    GiveUp,
}

/// Backoff state of one container slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartTracker {
    policy: RestartPolicy,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    /// A run that lasted at least this long resets the backoff.
    stable_after_ms: u64,
    consecutive_restarts: u32,
    started_at_ms: Option<u64>,
}

impl RestartTracker {
    pub fn new(policy: RestartPolicy) -> Self {
        Self::with_backoff(policy, 100, 30_000, 10_000)
    }

    pub fn with_backoff(
        policy: RestartPolicy,
        backoff_initial_ms: u64,
        backoff_max_ms: u64,
        stable_after_ms: u64,
    ) -> Self {
        assert!(backoff_initial_ms > 0 && backoff_initial_ms <= backoff_max_ms);
        Self {
            policy,
            backoff_initial_ms,
            backoff_max_ms,
            stable_after_ms,
            consecutive_restarts: 0,
            started_at_ms: None,
        }
    }

    pub fn consecutive_restarts(&self) -> u32 {
        self.consecutive_restarts
    }

    /// Records that the container (re)started at `now_ms`.
    pub fn started(&mut self, now_ms: u64) {
        self.started_at_ms = Some(now_ms);
    }

    /// Decides what to do after the container ended at `now_ms`; `success` is exit code 0.
    pub fn exited(&mut self, now_ms: u64, success: bool) -> RestartDecision {
        if let Some(started_at_ms) = self.started_at_ms.take() {
            assert!(now_ms >= started_at_ms, "time went backwards");
            if now_ms - started_at_ms >= self.stable_after_ms {
                self.consecutive_restarts = 0;
            }
        }
        let restart = match self.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure { restarts_max } => {
                !success && self.consecutive_restarts < restarts_max
            }
            RestartPolicy::Always => true,
        };
        if !restart {
            return RestartDecision::GiveUp;
        }
        let shift = self.consecutive_restarts.min(32);
        let delay_ms = self
            .backoff_initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max_ms);
        self.consecutive_restarts += 1;
        RestartDecision::RestartAt {
            at_ms: now_ms + delay_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(policy: RestartPolicy) -> RestartTracker {
        RestartTracker::with_backoff(policy, 100, 1_000, 5_000)
    }

    /// Runs a sequence of (run length, success) and returns each decision.
    fn check(policy: RestartPolicy, runs: &[(u64, bool)], expected: &[RestartDecision]) {
        let mut tracker = tracker(policy);
        let mut now_ms = 0;
        let mut decisions = Vec::new();
        for &(run_ms, success) in runs {
            tracker.started(now_ms);
            now_ms += run_ms;
            let decision = tracker.exited(now_ms, success);
            if let RestartDecision::RestartAt { at_ms } = decision {
                now_ms = at_ms;
            }
            decisions.push(decision);
        }
        assert_eq!(decisions, expected);
    }

    use RestartDecision::{GiveUp, RestartAt};

    #[test]
    fn never_never_restarts() {
        check(RestartPolicy::Never, &[(10, false)], &[GiveUp]);
        check(RestartPolicy::Never, &[(10, true)], &[GiveUp]);
    }

    #[test]
    fn on_failure_backs_off_exponentially_and_gives_up() {
        check(
            RestartPolicy::OnFailure { restarts_max: 3 },
            &[(10, false), (10, false), (10, false), (10, false)],
            &[
                RestartAt { at_ms: 110 },
                RestartAt { at_ms: 120 + 200 },
                RestartAt { at_ms: 330 + 400 },
                GiveUp,
            ],
        );
    }

    #[test]
    fn on_failure_does_not_restart_success() {
        check(
            RestartPolicy::OnFailure { restarts_max: 3 },
            &[(10, true)],
            &[GiveUp],
        );
    }

    #[test]
    fn always_restarts_success_and_caps_the_delay() {
        let mut tracker = tracker(RestartPolicy::Always);
        let mut now_ms = 0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            tracker.started(now_ms);
            now_ms += 1;
            let RestartAt { at_ms } = tracker.exited(now_ms, true) else {
                panic!("always must restart");
            };
            delays.push(at_ms - now_ms);
            now_ms = at_ms;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000]);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        check(
            RestartPolicy::OnFailure { restarts_max: 2 },
            &[(10, false), (10, false), (5_000, false), (10, false)],
            &[
                RestartAt { at_ms: 110 },
                RestartAt { at_ms: 120 + 200 },
                RestartAt { at_ms: 5_320 + 100 },
                RestartAt { at_ms: 5_430 + 200 },
            ],
        );
    }
}
