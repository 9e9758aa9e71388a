//! Restart bookkeeping of this node's containers, pure and with time passed in: per
//! container, its `RestartTracker` (policy and backoff), whether its current exit was already
//! counted, and when it may start again. The planner reads and updates it; the executor's
//! outcomes update it. What a container was started from is not kept here but on the
//! container itself (`spec_digest`, as a runtime annotation), so it survives a daemon
//! restart.

use std::collections::BTreeMap;

use shoal_crdt::ServiceSpec;
use shoal_oci::{ExitStatus, RestartDecision, RestartPolicy, RestartTracker};

/// Consecutive restarts of an `on-failure` container before it is left stopped.
pub const ON_FAILURE_RESTARTS_MAX: u32 = 10;

/// The restart policy of a service spec as the tracker takes it.
pub fn restart_policy(policy: shoal_crdt::RestartPolicy) -> RestartPolicy {
    match policy {
        shoal_crdt::RestartPolicy::Never => RestartPolicy::Never,
        shoal_crdt::RestartPolicy::OnFailure => RestartPolicy::OnFailure {
            restarts_max: ON_FAILURE_RESTARTS_MAX,
        },
        shoal_crdt::RestartPolicy::Always => RestartPolicy::Always,
    }
}

/// The short form of `spec_digest` a container status carries (16 hex digits).
pub fn short_digest(digest: &str) -> String {
    digest.chars().take(16).collect()
}

/// A fingerprint of what a container runs: the sha256 of its spec's workload
/// (`ServiceSpec::workload`: no replica count, no update policy, so a change of only those
/// replaces nothing), which the executor writes on the container (`SPEC_ANNOTATION`) and
/// the planner compares with the current spec.
pub fn spec_digest(spec: &ServiceSpec) -> String {
    use sha2::Digest as _;
    let bytes = serde_json::to_vec(&spec.workload()).expect("a spec serialises");
    hex::encode(sha2::Sha256::digest(&bytes))
}

/// The runtime annotation holding `spec_digest` of what a container was created from.
pub const SPEC_ANNOTATION: &str = "shoal.spec-digest";

/// The bookkeeping of one container.
#[derive(Debug, Clone)]
struct Tracked {
    tracker: RestartTracker,
    /// When it may be started again, once the policy decided.
    restart_at_ms: Option<u64>,
    gave_up: bool,
    /// The exit already handed to the tracker (so one exit is counted once).
    exit_seen: bool,
    /// Unix milliseconds of its latest start (or of its adoption).
    since_ms: u64,
}

impl Tracked {
    fn new(spec: &ServiceSpec, now_ms: u64) -> Tracked {
        Tracked {
            tracker: RestartTracker::new(restart_policy(spec.restart)),
            restart_at_ms: None,
            gave_up: false,
            exit_seen: false,
            since_ms: now_ms,
        }
    }
}

/// What the policy says about an ended container now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExit {
    /// Start it again now.
    Due,
    /// Start it again at this time.
    Waiting { at_ms: u64 },
    /// Leave it stopped (policy `never`, or `on-failure` after too many tries).
    GaveUp,
}

/// Restart bookkeeping of every container this node runs, by container id.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    by_id: BTreeMap<String, Tracked>,
}

impl Restarts {
    /// A container was started from `spec` at `now_ms` (a new one, or a restart).
    pub fn started(&mut self, id: &str, spec: &ServiceSpec, now_ms: u64) {
        let tracked = self
            .by_id
            .entry(id.to_string())
            .or_insert_with(|| Tracked::new(spec, now_ms));
        tracked.tracker.started(now_ms);
        tracked.restart_at_ms = None;
        tracked.exit_seen = false;
        tracked.since_ms = now_ms;
    }

    /// A running container this node knows nothing of (adopted after a daemon restart) is
    /// tracked from now on, as started from `spec`.
    pub fn adopt(&mut self, id: &str, spec: &ServiceSpec, now_ms: u64) {
        self.by_id.entry(id.to_string()).or_insert_with(|| {
            let mut tracked = Tracked::new(spec, now_ms);
            tracked.tracker.started(now_ms);
            tracked
        });
    }

    /// The container ended with `exit` (or vanished: `ExitStatus::Unknown`). The first time
    /// an exit is seen it is counted by the policy; then the answer is whether to start it
    /// again now.
    pub fn after_exit(
        &mut self,
        id: &str,
        spec: &ServiceSpec,
        exit: ExitStatus,
        now_ms: u64,
    ) -> AfterExit {
        let tracked = self
            .by_id
            .entry(id.to_string())
            .or_insert_with(|| Tracked::new(spec, now_ms));
        if !tracked.exit_seen {
            tracked.exit_seen = true;
            match tracked.tracker.exited(now_ms, exit.success()) {
                RestartDecision::RestartAt { at_ms } => tracked.restart_at_ms = Some(at_ms),
                RestartDecision::GiveUp => tracked.gave_up = true,
            }
        }
        if tracked.gave_up {
            return AfterExit::GaveUp;
        }
        match tracked.restart_at_ms {
            Some(at_ms) if now_ms >= at_ms => AfterExit::Due,
            Some(at_ms) => AfterExit::Waiting { at_ms },
            None => AfterExit::Due,
        }
    }

    /// A restart failed: it counts as another failed run, so the tracker backs off further.
    pub fn restart_failed(&mut self, id: &str, now_ms: u64) {
        if let Some(tracked) = self.by_id.get_mut(id) {
            tracked.tracker.started(now_ms);
            tracked.exit_seen = false;
            tracked.restart_at_ms = None;
        }
    }

    /// The container is gone for good.
    pub fn forget(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    /// A running container counted as ended (unhealthy) is fine again before its restart
    /// was due: the pending restart is dropped, and its next end is counted anew.
    pub fn running_again(&mut self, id: &str) {
        if let Some(tracked) = self.by_id.get_mut(id)
            && tracked.exit_seen
            && !tracked.gave_up
        {
            tracked.exit_seen = false;
            tracked.restart_at_ms = None;
        }
    }

    /// Unix milliseconds of its latest start, if tracked.
    pub fn since_ms(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).map(|tracked| tracked.since_ms)
    }

    /// Whether its policy gave up on it (it stays ended).
    pub fn gave_up(&self, id: &str) -> bool {
        self.by_id.get(id).is_some_and(|tracked| tracked.gave_up)
    }

    /// Restarts since its last stable run.
    pub fn consecutive_restarts(&self, id: &str) -> u32 {
        self.by_id
            .get(id)
            .map_or(0, |tracked| tracked.tracker.consecutive_restarts())
    }

    /// Forgets every container not in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.by_id.retain(|id, _| keep(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(restart: shoal_crdt::RestartPolicy) -> ServiceSpec {
        let mut spec = ServiceSpec::new("/i");
        spec.restart = restart;
        spec.replicas = 3;
        spec
    }

    #[test]
    fn one_exit_is_counted_once_and_waits_for_its_backoff() {
        let spec = spec(shoal_crdt::RestartPolicy::Always);
        let mut restarts = Restarts::default();
        restarts.started("a", &spec, 1_000);
        let first = restarts.after_exit("a", &spec, ExitStatus::Code(1), 1_100);
        let AfterExit::Waiting { at_ms } = first else {
            panic!("a quick failure backs off: {first:?}");
        };
        assert!(at_ms > 1_100);
        // Asked again before the time: still waiting, not counted twice.
        assert_eq!(
            restarts.after_exit("a", &spec, ExitStatus::Code(1), 1_101),
            AfterExit::Waiting { at_ms }
        );
        assert_eq!(
            restarts.after_exit("a", &spec, ExitStatus::Code(1), at_ms),
            AfterExit::Due
        );
        restarts.started("a", &spec, at_ms);
        assert_eq!(restarts.consecutive_restarts("a"), 1);
        assert_eq!(restarts.since_ms("a"), Some(at_ms));
    }

    #[test]
    fn never_gives_up_at_once_and_success_is_not_a_failure() {
        let never = spec(shoal_crdt::RestartPolicy::Never);
        let mut restarts = Restarts::default();
        restarts.started("a", &never, 0);
        assert_eq!(
            restarts.after_exit("a", &never, ExitStatus::Code(0), 10),
            AfterExit::GaveUp
        );
        let on_failure = spec(shoal_crdt::RestartPolicy::OnFailure);
        restarts.started("b", &on_failure, 0);
        assert_eq!(
            restarts.after_exit("b", &on_failure, ExitStatus::Code(0), 10),
            AfterExit::GaveUp
        );
    }

    #[test]
    fn the_spec_digest_ignores_the_replica_count_only() {
        let spec = spec(shoal_crdt::RestartPolicy::Always);
        let mut scaled = spec.clone();
        scaled.replicas = 7;
        assert_eq!(spec_digest(&spec), spec_digest(&scaled));
        let mut changed = spec.clone();
        changed.command = vec!["/bin/other".into()];
        assert_ne!(spec_digest(&spec), spec_digest(&changed));
        assert_eq!(spec_digest(&spec).len(), 64);
    }

    #[test]
    fn adoption_keeps_what_is_known_and_forget_drops_it() {
        let spec = spec(shoal_crdt::RestartPolicy::Always);
        let mut restarts = Restarts::default();
        restarts.started("a", &spec, 5);
        restarts.adopt("a", &spec, 99);
        assert_eq!(restarts.since_ms("a"), Some(5));
        restarts.adopt("b", &spec, 99);
        assert_eq!(restarts.since_ms("b"), Some(99));
        restarts.retain(|id| id == "b");
        assert_eq!(restarts.since_ms("a"), None);
        restarts.forget("b");
        assert_eq!(restarts.since_ms("b"), None);
    }
}
