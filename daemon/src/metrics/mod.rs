//! The daemon's Prometheus metrics: one [`Metrics`] handle holding every metric family and
//! the registry they are encoded from (OpenMetrics text, `prometheus-client`), and `serve`,
//! the optional HTTP endpoint (`[metrics] listen`) that scrapes it.
//!
//! There is no global registry: `agent::run` makes one `Metrics` at startup and gives it to
//! the `Node` (`NodeOptions::metrics`); the rooms that record (sync's gossip, the node's
//! commits and applies, the reconcile loop) reach it through the `Node` they already hold.
//! A `Node` opened without one (tests, benches) gets `Metrics::default()`, a private
//! registry nobody scrapes. Counters are recorded where things happen; gauges that describe
//! the state (members, this node's containers) are set from it just before each scrape.
//!
//! Recording never fails and never blocks on I/O, and no decision reads a metric back.
//! Commit latency is timed with the monotonic clock here, for the histogram only; it is not
//! the `Clock` the node's decisions use.
//!
//! *Invariant:* this room is a leaf: it imports none of the daemon's other rooms, so the
//! pure and durable rooms may use it without depending on the transport or the agent.

pub mod serve;

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The prefix of every metric name.
pub const PREFIX: &str = "shoal";

/// Member states, as `shoal_members{state}` reports them.
/// `suspect`: SWIM suspects it; still counted live (placement keeps its replicas) until it
/// is declared down or refutes.
pub const MEMBER_STATES: [&str; 3] = ["live", "suspect", "down"];

/// Outcomes of a SWIM packet send, the `outcome` label of `shoal_swim_packets_total`.
pub const SWIM_OUTCOMES: [&str; 3] = ["sent", "failed", "dropped"];

/// Outcomes of forwarding a push, the `outcome` label of `shoal_push_forwards_total`.
pub const FORWARD_OUTCOMES: [&str; 3] = ["ok", "failed", "dropped"];

/// Forms of the summary an exchange sends, the `form` label of `shoal_sync_summaries_total`.
pub const SUMMARY_FORMS: [&str; 3] = ["compact", "full", "compact_refused"];

/// Container states, as `shoal_containers{state}` reports them (`crdt::RunState`'s kinds).
pub const CONTAINER_STATES: [&str; 5] = ["starting", "running", "exited", "restarting", "failed"];

/// Upper bounds (seconds) of the commit latency buckets: 0.5 ms doubling to about 4 s, the
/// span between an fsync on a fast disk and one on a struggling one.
fn commit_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_5, 2.0, 14)
}

/// Upper bounds (seconds) of the service write lag buckets: 1 ms doubling to about 16 s,
/// from one push hop on a quiet network to several anti-entropy rounds.
fn lag_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormLabels {
    form: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HowLabels {
    how: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Every metric of one daemon and the registry that encodes them. Cheap to record into from
/// any thread; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    members: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    sync_exchanges: Family<OutcomeLabels, Counter>,
    sync_summaries: Family<FormLabels, Counter>,
    sync_sent_bytes: Counter,
    sync_received_bytes: Counter,
    eager_pushes: Family<OutcomeLabels, Counter>,
    eager_pushes_dropped: Counter,
    sync_connections: Family<HowLabels, Counter>,
    swim_packets: Family<OutcomeLabels, Counter>,
    push_forwards: Family<OutcomeLabels, Counter>,
    state_commits: Counter,
    state_commit_duration: Histogram,
    service_write_lag: Histogram,
    apply_errors: Family<KindLabels, Counter>,
    reconcile_passes: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// When a commit began, for its latency.
#[derive(Debug, Clone, Copy)]
pub struct CommitTimer(Instant);

impl Metrics {
    /// Every family registered, labelled families with each label value at zero, so a scrape
    /// shows every series from the start.
    pub fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::with_prefix(PREFIX),
            members: Family::default(),
            containers: Family::default(),
            sync_exchanges: Family::default(),
            sync_summaries: Family::default(),
            sync_sent_bytes: Counter::default(),
            sync_received_bytes: Counter::default(),
            eager_pushes: Family::default(),
            eager_pushes_dropped: Counter::default(),
            sync_connections: Family::default(),
            swim_packets: Family::default(),
            push_forwards: Family::default(),
            state_commits: Counter::default(),
            state_commit_duration: Histogram::new(commit_buckets()),
            service_write_lag: Histogram::new(lag_buckets()),
            apply_errors: Family::default(),
            reconcile_passes: Counter::default(),
        };
        for state in MEMBER_STATES {
            metrics.members.get_or_create(&StateLabels { state }).set(0);
        }
        for state in CONTAINER_STATES {
            metrics
                .containers
                .get_or_create(&StateLabels { state })
                .set(0);
        }
        for outcome in ["ok", "failed"] {
            metrics
                .sync_exchanges
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
            metrics
                .eager_pushes
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for form in SUMMARY_FORMS {
            metrics
                .sync_summaries
                .get_or_create(&FormLabels { form })
                .inc_by(0);
        }
        for outcome in SWIM_OUTCOMES {
            metrics
                .swim_packets
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for outcome in FORWARD_OUTCOMES {
            metrics
                .push_forwards
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for how in ["dialed", "reused"] {
            metrics
                .sync_connections
                .get_or_create(&HowLabels { how })
                .inc_by(0);
        }
        metrics.registered()
    }

    fn registered(mut self) -> Metrics {
        let registry = &mut self.registry;
        registry.register(
            "members",
            "Members of the cluster as this node sees them, by state (live or down)",
            self.members.clone(),
        );
        registry.register(
            "containers",
            "This node's containers by state, as its last status report says",
            self.containers.clone(),
        );
        registry.register(
            "sync_exchanges",
            "Anti-entropy exchanges this node started, by outcome",
            self.sync_exchanges.clone(),
        );
        registry.register(
            "sync_summaries",
            "Summaries the anti-entropy exchanges this node started sent, by form: compact (the version vector's digest and the counters that moved lately), full, compact_refused (the peer could not rebuild it, or does not know the form; a full one follows)",
            self.sync_summaries.clone(),
        );
        registry.register_with_unit(
            "sync_sent",
            "Body bytes this node sent in exchanges and pushes it started",
            Unit::Bytes,
            self.sync_sent_bytes.clone(),
        );
        registry.register_with_unit(
            "sync_received",
            "Body bytes this node received in exchanges and pushes it started",
            Unit::Bytes,
            self.sync_received_bytes.clone(),
        );
        registry.register(
            "eager_pushes",
            "Eager pushes of local changes to one peer, by outcome",
            self.eager_pushes.clone(),
        );
        registry.register(
            "eager_pushes_dropped",
            "Local changes not pushed eagerly (queue full, lagged, or over body_bytes_max); anti-entropy delivers them",
            self.eager_pushes_dropped.clone(),
        );
        registry.register(
            "sync_connections",
            "Connections the successful exchanges, pushes and SWIM packets this node started ran on, by whether they were dialed for it or kept from an earlier one",
            self.sync_connections.clone(),
        );
        registry.register(
            "push_forwards",
            "Eager pushes of other members' changes this node forwarded to one peer (epidemic push), by outcome: ok, failed, dropped (the forward queue was full)",
            self.push_forwards.clone(),
        );
        registry.register(
            "swim_packets",
            "SWIM packets this node sent, by outcome: sent (the peer took it), failed (no answer, or refused), dropped (too many sends in flight)",
            self.swim_packets.clone(),
        );
        registry.register(
            "state_commits",
            "Changes (local or from peers) made durable, one redb transaction each",
            self.state_commits.clone(),
        );
        registry.register_with_unit(
            "state_commit_duration",
            "Time to make one change durable",
            Unit::Seconds,
            self.state_commit_duration.clone(),
        );
        registry.register_with_unit(
            "service_write_lag",
            "From a service write on the node that made it (its HLC time) to this node \
             holding it durably, for writes received from peers; includes the clock offset \
             between the two nodes",
            Unit::Seconds,
            self.service_write_lag.clone(),
        );
        registry.register(
            "apply_errors",
            "Deltas from peers this node refused, by kind",
            self.apply_errors.clone(),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes run on this node",
            self.reconcile_passes.clone(),
        );
        self
    }

    /// The registry, in OpenMetrics text (ending with `# EOF`).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String");
        text
    }

    /// The value of the sample `series` (name and labels, as encoded) in this registry
    /// now; `None` when no sample line is named so.
    pub fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.encode(), series)
    }

    // ---- recording: one call at each site ----

    /// An exchange or eager push (`pushed`) this node started succeeded, with the body bytes
    /// it sent and received.
    pub fn exchange_done(&self, pushed: bool, sent_bytes: u64, received_bytes: u64) {
        self.exchange_outcome(pushed, "ok");
        self.sync_sent_bytes.inc_by(sent_bytes);
        self.sync_received_bytes.inc_by(received_bytes);
    }

    /// An exchange or eager push (`pushed`) this node started failed.
    pub fn exchange_failed(&self, pushed: bool) {
        self.exchange_outcome(pushed, "failed");
    }

    fn exchange_outcome(&self, pushed: bool, outcome: &'static str) {
        let family = if pushed {
            &self.eager_pushes
        } else {
            &self.sync_exchanges
        };
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A successful exchange or push ran on a connection dialed for it (`dialed`) or kept.
    pub fn connection_used(&self, dialed: bool) {
        let how = if dialed { "dialed" } else { "reused" };
        self.sync_connections
            .get_or_create(&HowLabels { how })
            .inc();
    }

    /// A SWIM packet this node sent ended with `outcome`, one of [`SWIM_OUTCOMES`].
    pub fn swim_packet(&self, outcome: &'static str) {
        self.swim_packets
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// An exchange this node started sent a summary of `form`, one of [`SUMMARY_FORMS`].
    pub fn summary_sent(&self, form: &'static str) {
        self.sync_summaries
            .get_or_create(&FormLabels { form })
            .inc();
    }

    /// A forward of another member's push to one peer ended with `outcome`, one of
    /// [`FORWARD_OUTCOMES`].
    pub fn forward_done(&self, outcome: &'static str) {
        self.push_forwards
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// `count` local changes were not pushed eagerly.
    pub fn pushes_dropped(&self, count: u64) {
        self.eager_pushes_dropped.inc_by(count);
    }

    /// A commit begins; pass the timer to [`Metrics::commit_done`] when it is durable.
    pub fn commit_started(&self) -> CommitTimer {
        CommitTimer(Instant::now())
    }

    /// A commit begun at `timer` is durable.
    pub fn commit_done(&self, timer: CommitTimer) {
        self.state_commits.inc();
        self.state_commit_duration
            .observe(timer.0.elapsed().as_secs_f64());
    }

    /// A service write received from a peer is durable here, `lag_seconds` after its writer
    /// stamped it.
    pub fn service_write_arrived(&self, lag_seconds: f64) {
        self.service_write_lag.observe(lag_seconds.max(0.0));
    }

    /// A delta from a peer was refused; `kind` is a short fixed name (`NodeError::kind`).
    pub fn apply_error(&self, kind: &'static str) {
        self.apply_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// A reconcile pass ran.
    pub fn reconcile_pass(&self) {
        self.reconcile_passes.inc();
    }

    // ---- sampling: set from the state before a scrape ----

    /// Sets the members gauge: `counts` gives each state in [`MEMBER_STATES`] its count.
    pub fn set_members(&self, counts: [(&'static str, i64); 3]) {
        for (state, count) in counts {
            self.members
                .get_or_create(&StateLabels { state })
                .set(count);
        }
    }

    /// Sets this node's containers gauge: each state of [`CONTAINER_STATES`] to its count in
    /// `states` (states not named there, or not known, count nothing).
    pub fn set_containers<'a>(&self, states: impl IntoIterator<Item = &'a str>) {
        let mut counts = [0i64; CONTAINER_STATES.len()];
        for state in states {
            if let Some(index) = CONTAINER_STATES.iter().position(|known| *known == state) {
                counts[index] += 1;
            }
        }
        for (state, count) in CONTAINER_STATES.into_iter().zip(counts) {
            self.containers
                .get_or_create(&StateLabels { state })
                .set(count);
        }
    }
}

/// The value of the sample `series` (name and labels, as exposed) in OpenMetrics `text`
/// (`Metrics::encode`, or a scrape of the endpoint); `None` when no sample line is named so.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(record: impl FnOnce(&Metrics), series: &str, expected: f64) {
        let metrics = Metrics::new();
        assert_eq!(sample(&metrics.encode(), series).unwrap_or(-1.0), 0.0);
        record(&metrics);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, series),
            Some(expected),
            "{series} in:\n{text}"
        );
    }

    #[test]
    fn every_series_is_there_from_the_start_and_the_text_ends_with_eof() {
        let text = Metrics::new().encode();
        for series in [
            "shoal_members{state=\"live\"}",
            "shoal_members{state=\"suspect\"}",
            "shoal_members{state=\"down\"}",
            "shoal_containers{state=\"running\"}",
            "shoal_sync_exchanges_total{outcome=\"ok\"}",
            "shoal_sync_exchanges_total{outcome=\"failed\"}",
            "shoal_sync_sent_bytes_total",
            "shoal_sync_received_bytes_total",
            "shoal_eager_pushes_total{outcome=\"ok\"}",
            "shoal_eager_pushes_dropped_total",
            "shoal_swim_packets_total{outcome=\"sent\"}",
            "shoal_swim_packets_total{outcome=\"dropped\"}",
            "shoal_push_forwards_total{outcome=\"ok\"}",
            "shoal_state_commits_total",
            "shoal_state_commit_duration_seconds_count",
            "shoal_service_write_lag_seconds_count",
            "shoal_reconcile_passes_total",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in:\n{text}");
        }
        assert!(text.contains("# TYPE shoal_state_commit_duration_seconds histogram"));
        assert!(text.contains("# TYPE shoal_members gauge"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn recordings_appear_in_the_text() {
        check(
            |m| m.exchange_done(false, 10, 20),
            "shoal_sync_exchanges_total{outcome=\"ok\"}",
            1.0,
        );
        check(
            |m| m.exchange_done(true, 10, 20),
            "shoal_sync_received_bytes_total",
            20.0,
        );
        check(
            |m| m.exchange_failed(true),
            "shoal_eager_pushes_total{outcome=\"failed\"}",
            1.0,
        );
        check(
            |m| m.pushes_dropped(3),
            "shoal_eager_pushes_dropped_total",
            3.0,
        );
        check(
            |m| {
                m.commit_done(m.commit_started());
                m.commit_done(m.commit_started());
            },
            "shoal_state_commits_total",
            2.0,
        );
        check(
            |m| m.commit_done(m.commit_started()),
            "shoal_state_commit_duration_seconds_count",
            1.0,
        );
        check(|m| m.reconcile_pass(), "shoal_reconcile_passes_total", 1.0);
        check(
            |m| m.service_write_arrived(0.003),
            "shoal_service_write_lag_seconds_bucket{le=\"0.004\"}",
            1.0,
        );
        check(
            |m| m.service_write_arrived(-0.5),
            "shoal_service_write_lag_seconds_bucket{le=\"0.001\"}",
            1.0,
        );
        check(
            |m| m.summary_sent("compact_refused"),
            "shoal_sync_summaries_total{form=\"compact_refused\"}",
            1.0,
        );
        check(
            |m| m.forward_done("dropped"),
            "shoal_push_forwards_total{outcome=\"dropped\"}",
            1.0,
        );
        check(
            |m| m.swim_packet("failed"),
            "shoal_swim_packets_total{outcome=\"failed\"}",
            1.0,
        );
        check(
            |m| m.set_members([("live", 2), ("suspect", 0), ("down", 1)]),
            "shoal_members{state=\"live\"}",
            2.0,
        );
        check(
            |m| m.set_containers(["running", "running", "exited", "unknown"]),
            "shoal_containers{state=\"running\"}",
            2.0,
        );
    }

    #[test]
    fn apply_errors_are_counted_by_kind() {
        let metrics = Metrics::new();
        metrics.apply_error("clock_drift");
        metrics.apply_error("clock_drift");
        metrics.apply_error("not_member");
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "shoal_apply_errors_total{kind=\"clock_drift\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "shoal_apply_errors_total{kind=\"not_member\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn containers_are_set_not_added() {
        let metrics = Metrics::new();
        metrics.set_containers(["running", "running"]);
        metrics.set_containers(["running"]);
        let text = metrics.encode();
        assert_eq!(
            sample(&text, "shoal_containers{state=\"running\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "shoal_containers{state=\"exited\"}"),
            Some(0.0)
        );
    }
}
