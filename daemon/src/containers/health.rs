//! Health checks of this node's running containers, sans-IO: per container, a
//! `HealthTracker` says when a probe is due and turns probe outcomes into a `Health`, with
//! time passed in (`now_ms`, the node clock's Unix milliseconds). The reconcile loop
//! (`reconciler`) runs the probes (`probe`) and hands the verdicts to the planner, which
//! writes them in the status report and restarts unhealthy containers per their policy.
//!
//! Docker's semantics: the first probe is `interval_ms` after the start, then one every
//! `interval_ms` (never two at once); a failure of a probe that began within
//! `start_period_ms` of the start does not count; `retries` consecutive failures make the
//! container unhealthy; one success makes it healthy (also during the start period).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use shoal_crdt::{Health, HealthCheck, HealthProbe};

use crate::schedule::restarts::Restarts;
use crate::schedule::{ClusterView, Observed, ObservedState};

/// Probes running at once on one node.
pub const HEALTH_PROBES_IN_FLIGHT_MAX: usize = 32;

/// A running container with a health check, as the last pass saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTarget {
    pub id: String,
    /// Unix milliseconds of the start this run began with (`Restarts::since_ms`).
    pub since_ms: u64,
    pub check: HealthCheck,
    pub probe: HealthProbe,
    /// Its address on the node bridge, if it has one.
    pub ip: Option<Ipv4Addr>,
    /// Its init's process id, for a container without an address: the probe enters its
    /// network namespace.
    pub pid: Option<i32>,
}

/// This node's running containers whose service has a (valid) health check (`pid` is
/// left for the caller, which asks the runtime).
pub fn health_targets(
    view: &ClusterView,
    observed: &Observed,
    restarts: &Restarts,
) -> Vec<HealthTarget> {
    view.own_records
        .iter()
        .filter_map(|record| {
            let id = record.id.as_str();
            if observed.containers.get(id) != Some(&ObservedState::Running) {
                return None;
            }
            let check = view
                .services
                .get(&record.service)?
                .spec
                .health
                .as_deref()?
                .clone();
            let probe = check.probe().ok()?;
            Some(HealthTarget {
                id: id.to_owned(),
                since_ms: restarts.since_ms(id)?,
                check,
                probe,
                ip: record.ip,
                pid: None,
            })
        })
        .collect()
}

/// One container's health check state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthTracker {
    check: HealthCheck,
    since_ms: u64,
    next_probe_at_ms: u64,
    /// When the probe in flight began.
    probing_since_ms: Option<u64>,
    failures: u32,
    health: Health,
}

impl HealthTracker {
    /// A container started at `since_ms`: starting, first probe an interval later.
    pub fn new(check: HealthCheck, since_ms: u64) -> HealthTracker {
        HealthTracker {
            next_probe_at_ms: since_ms.saturating_add(check.interval_ms),
            check,
            since_ms,
            probing_since_ms: None,
            failures: 0,
            health: Health::Starting,
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether a probe should begin now. A probe whose outcome never came (twice its
    /// timeout) no longer holds the next one back.
    pub fn is_due(&self, now_ms: u64) -> bool {
        let stuck = self.probing_since_ms.is_some_and(|began| {
            now_ms >= began.saturating_add(self.check.timeout_ms.saturating_mul(2))
        });
        now_ms >= self.next_probe_at_ms && (self.probing_since_ms.is_none() || stuck)
    }

    /// A probe began at `now_ms`.
    pub fn probe_began(&mut self, now_ms: u64) {
        self.probing_since_ms = Some(now_ms);
        self.next_probe_at_ms = now_ms.saturating_add(self.check.interval_ms);
    }

    /// The outcome of the probe in flight (`Err` with why it failed, which becomes the
    /// unhealthy reason); whether the health changed.
    pub fn handle_outcome<E: std::fmt::Display>(&mut self, outcome: Result<(), E>) -> bool {
        let Some(began_ms) = self.probing_since_ms.take() else {
            return false;
        };
        let before = self.health.clone();
        match outcome {
            Ok(()) => {
                self.failures = 0;
                self.health = Health::Healthy;
            }
            Err(reason) => {
                let in_start_period =
                    began_ms < self.since_ms.saturating_add(self.check.start_period_ms);
                if !in_start_period {
                    self.failures = self.failures.saturating_add(1);
                    if self.failures >= self.check.retries {
                        self.health = Health::Unhealthy {
                            reason: reason.to_string(),
                        };
                    }
                }
            }
        }
        self.health != before
    }
}

/// The trackers of every running container with a check on this node.
#[derive(Debug, Default)]
pub struct HealthTrackers {
    by_id: BTreeMap<String, (HealthTarget, HealthTracker)>,
}

impl HealthTrackers {
    /// Follows the last pass's targets: a new container, or a new run (restart) or check
    /// of one, starts over; a container no longer running is dropped. Whether any verdict
    /// was dropped or reset.
    pub fn follow(&mut self, targets: Vec<HealthTarget>) -> bool {
        let before = self.verdicts();
        let mut next = BTreeMap::new();
        for target in targets {
            let kept = self
                .by_id
                .remove(&target.id)
                .filter(|(old, _)| old.since_ms == target.since_ms && old.check == target.check);
            // A kept run keeps its tracker and takes the new route (address, process).
            let tracker = match kept {
                Some((_, tracker)) => tracker,
                None => HealthTracker::new(target.check.clone(), target.since_ms),
            };
            next.insert(target.id.clone(), (target, tracker));
        }
        self.by_id = next;
        self.verdicts() != before
    }

    /// The probes to begin now, at most `limit`; each is marked as begun.
    pub fn begin_due(&mut self, now_ms: u64, limit: usize) -> Vec<HealthTarget> {
        let mut due = Vec::new();
        for (target, tracker) in self.by_id.values_mut() {
            if due.len() >= limit {
                break;
            }
            if tracker.is_due(now_ms) {
                tracker.probe_began(now_ms);
                due.push(target.clone());
            }
        }
        due
    }

    /// The outcome of a probe of `id`'s run that began at `since_ms`; the new health when
    /// it changed. An outcome about an earlier run is ignored.
    pub fn handle_outcome<E: std::fmt::Display>(
        &mut self,
        id: &str,
        since_ms: u64,
        outcome: Result<(), E>,
    ) -> Option<Health> {
        let (target, tracker) = self.by_id.get_mut(id)?;
        if target.since_ms != since_ms {
            return None;
        }
        tracker
            .handle_outcome(outcome)
            .then(|| tracker.health().clone())
    }

    /// Every container's health, with the run it is about (what `Planner::set_health`
    /// takes).
    pub fn verdicts(&self) -> BTreeMap<String, (u64, Health)> {
        self.by_id
            .iter()
            .map(|(id, (target, tracker))| {
                (id.clone(), (target.since_ms, tracker.health().clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(interval_ms: u64, retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            interval_ms,
            timeout_ms: 100.min(interval_ms),
            retries,
            start_period_ms,
            ..HealthCheck::tcp(80)
        }
    }

    fn unhealthy(reason: &str) -> Health {
        Health::Unhealthy {
            reason: reason.to_owned(),
        }
    }

    /// Runs probes at the times the tracker asks for until `until_ms`, each with the
    /// outcome `outcome(now_ms)`; returns (probe time, health after it).
    fn drive(
        tracker: &mut HealthTracker,
        until_ms: u64,
        outcome: impl Fn(u64) -> Result<(), &'static str>,
    ) -> Vec<(u64, Health)> {
        let mut seen = Vec::new();
        for now_ms in 0..=until_ms {
            if tracker.is_due(now_ms) {
                tracker.probe_began(now_ms);
                tracker.handle_outcome(outcome(now_ms));
                seen.push((now_ms, tracker.health().clone()));
            }
        }
        seen
    }

    #[test]
    fn retries_consecutive_failures_make_it_unhealthy_and_one_success_healthy() {
        let mut tracker = HealthTracker::new(check(1000, 3, 0), 0);
        assert_eq!(tracker.health(), &Health::Starting);
        let seen = drive(&mut tracker, 6000, |now_ms| {
            if now_ms <= 3000 || now_ms == 6000 {
                Err("refused")
            } else {
                Ok(())
            }
        });
        assert_eq!(
            seen,
            vec![
                (1000, Health::Starting),
                (2000, Health::Starting),
                (3000, unhealthy("refused")),
                (4000, Health::Healthy),
                (5000, Health::Healthy),
                // One failure after a success is not yet unhealthy.
                (6000, Health::Healthy),
            ]
        );
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_but_a_success_does() {
        let mut tracker = HealthTracker::new(check(1000, 2, 2500), 0);
        let seen = drive(&mut tracker, 4000, |_| Err("timeout"));
        assert_eq!(
            seen,
            vec![
                (1000, Health::Starting),
                (2000, Health::Starting),
                (3000, Health::Starting),
                (4000, unhealthy("timeout")),
            ]
        );
        let mut tracker = HealthTracker::new(check(1000, 2, 10_000), 0);
        let seen = drive(&mut tracker, 2000, |now_ms| {
            if now_ms == 2000 { Ok(()) } else { Err("x") }
        });
        assert_eq!(seen.last(), Some(&(2000, Health::Healthy)));
    }

    #[test]
    fn one_probe_at_a_time_unless_its_outcome_is_lost() {
        let mut tracker = HealthTracker::new(
            HealthCheck {
                timeout_ms: 1000,
                ..check(1000, 1, 0)
            },
            0,
        );
        assert!(!tracker.is_due(999));
        assert!(tracker.is_due(1000));
        tracker.probe_began(1000);
        // The next interval has passed, but the probe is still in flight.
        assert!(!tracker.is_due(2000));
        // Twice the timeout after it began, a lost probe no longer holds the next back.
        assert!(tracker.is_due(3000));
        assert!(tracker.handle_outcome(Ok::<(), String>(())));
        assert_eq!(tracker.health(), &Health::Healthy);
        // An outcome without a probe in flight changes nothing.
        assert!(!tracker.handle_outcome(Err("late")));
        assert_eq!(tracker.health(), &Health::Healthy);
    }

    fn target(id: &str, since_ms: u64) -> HealthTarget {
        HealthTarget {
            id: id.to_owned(),
            since_ms,
            check: check(1000, 1, 0),
            probe: HealthProbe::Tcp { port: 80 },
            ip: None,
            pid: None,
        }
    }

    #[test]
    fn trackers_follow_runs_and_ignore_stale_outcomes() {
        let mut trackers = HealthTrackers::default();
        assert!(trackers.follow(vec![target("a", 0), target("b", 0)]));
        assert_eq!(trackers.begin_due(999, 8), vec![]);
        assert_eq!(trackers.begin_due(1000, 1), vec![target("a", 0)]);
        assert_eq!(trackers.begin_due(1000, 8), vec![target("b", 0)]);
        assert_eq!(
            trackers.handle_outcome("a", 0, Err("refused")),
            Some(unhealthy("refused"))
        );
        assert_eq!(
            trackers.handle_outcome("b", 0, Ok::<(), String>(())),
            Some(Health::Healthy)
        );
        // a restarted at 5000: it starts over, and the old run's outcome is ignored.
        assert!(trackers.follow(vec![target("a", 5000), target("b", 0)]));
        assert_eq!(trackers.handle_outcome("a", 0, Ok::<(), String>(())), None);
        assert_eq!(
            trackers.verdicts(),
            BTreeMap::from([
                ("a".to_owned(), (5000, Health::Starting)),
                ("b".to_owned(), (0, Health::Healthy)),
            ])
        );
        assert!(!trackers.follow(vec![target("a", 5000), target("b", 0)]));
        assert!(trackers.follow(vec![]));
        assert!(trackers.verdicts().is_empty());
    }
}
