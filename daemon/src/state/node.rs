//! The node: the sans-IO `shoal_crdt::Replica` driven with time from a `Clock`, made durable
//! by the redb `Store`, with a bounded broadcast of local changes (for eager push), a signal
//! for the reconcile loop when its inputs change, and the sync history of every peer. Shared
//! as `Arc<Node>` by the sync server, the gossip loop, the local API, the heartbeat and the
//! reconcile loop.
//!
//! Durability: a change is applied to the replica and written to redb while the replica's
//! mutex is held, and only then acknowledged or broadcast. Nobody can read the replica
//! between the two steps, so no reader ever sees a change that is not durable. If the write
//! fails, the replica is rebuilt from the database (so memory again equals disk) and the
//! caller gets `NodeError::Storage`. The mutex is never held across an `.await`.
//!
//! One commit is one log record and one eager push: `write_batch` runs several local
//! operations (the reconcile loop's records, addresses and counters of one pass) and
//! commits them as one delta. Peers' deltas that arrive together are committed as a group
//! (`group_commit`): each is validated and applied on its own, all or nothing, and those
//! accepted are written in one redb transaction (one fsync) before any is acknowledged. Every `compact_every_entries` appends the snapshot is
//! rewritten and the log cleared in one transaction (`store.rs`).
//!
//! A clock that ran ahead: the hybrid logical clock never goes back, so after the system clock
//! was once set ahead (and corrected) every write of this node carries a timestamp peers refuse
//! as too far in the future (`max_clock_drift`), until the system clock catches up. While the
//! HLC is further ahead of the system clock than that, `apply_services` and `remove_service`
//! refuse with `NodeError::ClockAhead` (naming the gap and when it closes) instead of
//! acknowledging a change that cannot spread; `Node::open` logs it loudly and `status` shows
//! it. The node's own bookkeeping (heartbeat, container records) goes on and spreads once the
//! clock is back within the limit. Refusals go the other way too: `record_refused_writes`
//! keeps, per peer, why the sync server last refused a push from it, for `shoal nodes`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shoal_crdt::{
    Applied, ApplyError, Capacity, ClusterState, CompactSummary, Delta, NTP64, NodeId, NodeMeta,
    Replica, ReplicaError, ServiceName, ServiceRecord, ServiceSpec, SpecError, Subnet, Summary,
    SummaryReply, Timestamp, VersionVector, codec,
};
use tokio::sync::{broadcast, watch};

use super::clock::{Clock, millis_between, ntp_to_ms};
use super::group_commit::{Abandoned, GroupCommit};
use super::load::{LogRecord, encode_timestamp, load_replica};
use super::members::{self, Liveness, Member, PeerStates, changes_plan_inputs};
use super::store::{Store, StoreError};
use crate::metrics::Metrics;

/// Default number of appends between two compactions of the log into the snapshot.
pub const COMPACT_EVERY_ENTRIES: u64 = 1000;
/// Local changes buffered for the eager push; a slow subscriber loses the oldest and relies
/// on anti-entropy.
pub const CHANGES_CAPACITY: usize = 1024;
/// Default silence after which a member is evicted (`sync.evict_after_ms`).
pub const EVICT_AFTER_MS: u64 = 86_400_000;
/// Default silence after which a member counts as down (`sync.down_after_ms`).
pub const DOWN_AFTER_MS: u64 = 5_000;
/// While SWIM runs, a metadata refresh (nothing but the heartbeat changes) waits at least
/// this many milliseconds per member of the cluster after our last metadata write: the fleet
/// writes about one refresh a second whatever its size, so what each node receives of them
/// stays flat.
pub const REFRESH_MS_PER_MEMBER: u64 = 1_000;
/// Default largest clock drift accepted from a peer (`sync.max_clock_drift_ms`).
pub const MAX_CLOCK_DRIFT_MS: u64 = 1_000;
/// Default quiet time after which a contested identity clears: nothing new seen of another
/// daemon with this node's name for this long (`NodeOptions::contest_quiet_ms`).
pub const CONTEST_QUIET_MS: u64 = 300_000;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node: NodeId,
    pub database: PathBuf,
    pub max_clock_drift: Duration,
    pub seeds: Vec<SocketAddr>,
    /// The address peers reach this node at, published in its metadata.
    pub address: SocketAddr,
    pub capacity: Capacity,
    pub down_after_ms: u64,
    /// Silence after which a member is evicted, so it stops blocking tombstone GC.
    pub evict_after_ms: u64,
    /// The container subnet this node claims in its metadata (`containers.subnet`).
    pub subnet: Option<Subnet>,
    /// Log entries after which the log is folded into a new snapshot.
    pub compact_every_entries: u64,
    /// This node's labels, published in its metadata (`labels` in the config).
    pub labels: BTreeMap<String, String>,
    /// This daemon's incarnation, published in its metadata: `agent::run` draws it from the
    /// OS RNG at every start; tests pick it. Two daemons with one name tell each other apart
    /// by it.
    pub incarnation: u64,
    /// Quiet time after which a contested identity clears (see `IdentityContest`).
    pub contest_quiet_ms: u64,
    /// Where commits and refused deltas are counted, and where the other rooms that hold
    /// this node record theirs (`Node::metrics`); `new` gives a private one.
    pub metrics: Arc<Metrics>,
}

impl NodeOptions {
    /// Options with the config file's defaults: no seeds, no subnet, a 1000 millicpu and
    /// 1 GiB capacity.
    pub fn new(node: NodeId, database: PathBuf, address: SocketAddr) -> NodeOptions {
        NodeOptions {
            node,
            database,
            max_clock_drift: Duration::from_millis(MAX_CLOCK_DRIFT_MS),
            seeds: Vec::new(),
            address,
            capacity: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            down_after_ms: DOWN_AFTER_MS,
            evict_after_ms: EVICT_AFTER_MS,
            subnet: None,
            compact_every_entries: COMPACT_EVERY_ENTRIES,
            labels: BTreeMap::new(),
            incarnation: 0,
            contest_quiet_ms: CONTEST_QUIET_MS,
            metrics: Arc::default(),
        }
    }
}

/// A peer as the gossip loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node: NodeId,
    pub address: SocketAddr,
    pub live: bool,
    pub last_sync_ms_ago: Option<u64>,
}

/// The result of one sync exchange with a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Ok {
        bytes_sent: u64,
        bytes_received: u64,
    },
    Failed(String),
}

/// A service as stored: its spec and the HLC of the write that won.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    pub name: ServiceName,
    pub spec: ServiceSpec,
    pub version: Timestamp,
}

/// A peer with its sync history, for `shoal status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub address: SocketAddr,
    pub live: bool,
    pub last_sync_ms_ago: Option<u64>,
    pub last_error: Option<String>,
    /// Whether the peer's last known summary equals ours.
    pub same_summary: bool,
    /// Why this node last refused the peer's writes, if it has since accepted none.
    pub writes_refused: Option<RefusedWrites>,
}

/// This node refused a peer's writes (a push answered 4xx other than 409), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedWrites {
    /// The address the refused push came from.
    pub address: SocketAddr,
    pub reason: String,
    pub ms_ago: u64,
}

/// This node's hybrid logical clock is further ahead of its system clock than peers accept
/// (`max_clock_drift`): every change it writes now would be refused by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockAhead {
    /// How far the clock's last timestamp is ahead of the system clock.
    pub ahead_ms: u64,
    /// The largest drift peers accept (`sync.max_clock_drift_ms`).
    pub max_drift_ms: u64,
    /// When changes are accepted again: the system time (Unix ms) at which the gap is back
    /// within the limit, if the system clock is right.
    pub until_unix_ms: u64,
}

impl ClockAhead {
    /// How long until changes are accepted again, if the system clock is right.
    pub fn wait_ms(&self) -> u64 {
        self.ahead_ms.saturating_sub(self.max_drift_ms)
    }
}

impl std::fmt::Display for ClockAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // To the second, rounded up: changes are not taken before the time shown.
        let until_seconds = self.until_unix_ms.div_ceil(1000);
        let until = NTP64::from(Duration::from_secs(until_seconds)).to_string_rfc3339_lossy();
        let until = match until.split_once('.') {
            Some((seconds, _)) => format!("{seconds}Z"),
            None => until,
        };
        write!(
            f,
            "this node's clock is {} ms ahead of its system clock, more than \
             sync.max_clock_drift_ms ({} ms), so peers refuse every change it writes (its hybrid \
             clock never goes back, and ran ahead while the system time was set ahead); changes \
             are refused until the system clock reaches {} (in {}); if the system clock is the one \
             that is wrong (behind), fix its time sync instead",
            self.ahead_ms,
            self.max_drift_ms,
            until,
            duration_text(self.wait_ms()),
        )
    }
}

/// Another daemon writes with this node's name (two daemons started with one name and
/// certificate): this node saw writes under its name that it did not make. While this holds,
/// the node writes nothing under its name (`NodeError::Contested` for changes, no heartbeats,
/// no reconcile passes), so the cluster no longer gets two sets of writes on one set of dots;
/// it still syncs, adopting what the other wrote, so it converges. It clears when nothing new
/// of the other daemon has been seen for `NodeOptions::contest_quiet_ms`, and at a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityContest {
    pub node: NodeId,
    /// This daemon's incarnation.
    pub incarnation: u64,
    /// What was seen last (`shoal_crdt::Evidence`, as text), and from which peer.
    pub evidence: String,
    pub from: NodeId,
    /// How long ago something new was last seen.
    pub ms_ago: u64,
    /// How long until it clears if nothing new is seen.
    pub clears_in_ms: u64,
}

impl std::fmt::Display for IdentityContest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another daemon runs as node {node} (seen {ago} ago from {from}: {evidence}); this \
             daemon (incarnation {incarnation:016x}) writes nothing as {node} (no changes, no \
             heartbeats, no container starts or stops; running containers are left alone) until \
             nothing new is seen of the other for {quiet} more: stop one of them, and give it its \
             own node name, certificate and an empty state_dir",
            node = self.node,
            ago = duration_text(self.ms_ago),
            from = self.from,
            evidence = self.evidence,
            incarnation = self.incarnation,
            quiet = duration_text(self.clears_in_ms),
        )
    }
}

/// Another node seen written by two daemons with its name, for `shoal nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicated {
    /// What was seen last (`shoal_crdt::Evidence`, as text), and from which peer.
    pub evidence: String,
    pub from: NodeId,
    pub ms_ago: u64,
}

/// A duration as hours, minutes and seconds (`1h 2m 3s`, `4m 0s`, `5s`).
fn duration_text(ms: u64) -> String {
    let seconds = ms.div_ceil(1000);
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m {seconds}s"),
        _ => format!("{hours}h {minutes}m {seconds}s"),
    }
}

/// What this node has seen and how fresh it is.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatus {
    pub node: NodeId,
    pub uptime_ms: u64,
    pub summary: Summary,
    pub digest: [u8; 32],
    pub services: usize,
    pub nodes: usize,
    pub tombstones: usize,
    pub hlc_last: Timestamp,
    pub peers: Vec<PeerStatus>,
    /// Peers whose heartbeat is recent.
    pub live_peers: usize,
    /// There is a live peer, and every live peer's last known summary equals ours. An
    /// isolated node (no live peer) cannot know, so it is not converged.
    pub converged: bool,
    /// A peer evicted this node after a long silence.
    pub evicted: bool,
    /// This node refuses local changes now because its clock is too far ahead.
    pub clock_ahead: Option<ClockAhead>,
    /// Another daemon writes with this node's name; this one writes nothing.
    pub contest: Option<IdentityContest>,
    /// This daemon's incarnation.
    pub incarnation: u64,
}

/// How many changes this node made durable and broadcast since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// redb transactions that made changes durable: one per local change, one per group of
    /// peers' deltas applied together.
    pub durable: u64,
    /// Local deltas handed to the eager push.
    pub broadcast: u64,
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{source}")]
    StaleBase { peer: NodeId, source: ApplyError },
    #[error("{source}")]
    ClockDrift { peer: NodeId, source: ApplyError },
    #[error("delta from {peer}: {source}")]
    Invalid { peer: NodeId, source: ApplyError },
    #[error(
        "{peer} is not a member (no node metadata here, or evicted): it may push only its own node metadata with its own writes, to join"
    )]
    NotMember { peer: NodeId },
    #[error(
        "a peer presents this node's own name {peer}: another daemon runs with this node's certificate"
    )]
    OwnName { peer: NodeId },
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error(
        "the in-memory state could not be restored after a storage failure; restart the daemon"
    )]
    Poisoned,
    #[error("{what}: {source}")]
    Operation {
        what: String,
        #[source]
        source: ReplicaError,
    },
    #[error("service {service}: {source}")]
    InvalidSpec {
        service: ServiceName,
        #[source]
        source: SpecError,
    },
    #[error("service {0} appears twice in one request")]
    DuplicateService(ServiceName),
    #[error("service {0} not found")]
    NotFound(ServiceName),
    #[error("service {0} has no earlier version that did not fail to roll back to")]
    NothingToRollBack(ServiceName),
    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },
    #[error("cannot load the state from {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{0}")]
    ClockAhead(ClockAhead),
    #[error("{0}")]
    Contested(IdentityContest),
    #[error("node {0} is not a member of this cluster (see `shoal nodes`)")]
    UnknownNode(NodeId),
    #[error("{0}")]
    Evict(#[from] EvictRefused),
    #[error("{0}; the delta was not applied")]
    Abandoned(#[from] Abandoned),
}

impl NodeError {
    /// A short fixed name of the error's kind, a metric label (`shoal_apply_errors_total`).
    pub fn kind(&self) -> &'static str {
        match self {
            NodeError::StaleBase { .. } => "stale_base",
            NodeError::ClockDrift { .. } => "clock_drift",
            NodeError::Invalid { .. } => "invalid",
            NodeError::NotMember { .. } => "not_member",
            NodeError::OwnName { .. } => "own_name",
            NodeError::Storage(_) => "storage",
            NodeError::Poisoned => "poisoned",
            NodeError::Operation { .. } => "operation",
            NodeError::InvalidSpec { .. } => "invalid_spec",
            NodeError::DuplicateService(_) => "duplicate_service",
            NodeError::NotFound(_) => "not_found",
            NodeError::NothingToRollBack(_) => "nothing_to_roll_back",
            NodeError::Encode { .. } => "encode",
            NodeError::Load { .. } => "load",
            NodeError::ClockAhead(_) => "clock_ahead",
            NodeError::Contested(_) => "contested",
            NodeError::UnknownNode(_) => "unknown_node",
            NodeError::Evict(_) => "evict_refused",
            NodeError::Abandoned(_) => "abandoned",
        }
    }
}

#[derive(Debug, Default, Clone)]
struct PeerRecord {
    last_ok_ms: Option<u64>,
    last_error: Option<String>,
    last_summary: Option<Summary>,
    bytes_sent: u64,
    bytes_received: u64,
    /// When (ms), from where and why this node last refused a push from the peer.
    refused: Option<(u64, SocketAddr, String)>,
}

struct Inner {
    replica: Replica,
    store: Store,
    peers: BTreeMap<NodeId, PeerRecord>,
    log_entries: u64,
    /// Physical time passed to the replica is never below this (see `Node::physical`).
    clock_floor: NTP64,
    poisoned: bool,
    /// The replica's contest sightings count and when (ms) it last grew.
    contest_seen: Option<(u64, u64)>,
    /// A contest began and this node has not announced it yet (`Replica::announce_contest`).
    announce_contest: bool,
    /// Per node seen written by two daemons: the sightings count and when (ms) it last grew.
    duplicates_seen: BTreeMap<NodeId, (u64, u64)>,
    /// SWIM's view of the other members, once a SWIM driver runs (`set_peer_states`).
    swim: Option<PeerStates>,
    /// Our own counter before the first write committed but not broadcast (a metadata
    /// refresh, see `heartbeat`): the next broadcast carries everything since, so that a peer
    /// taking the push holds its base.
    withheld_since: Option<u64>,
}

/// Whether a local commit is broadcast to the eager push at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broadcast {
    Now,
    /// Only a metadata refresh: anti-entropy carries it (no push to every member every
    /// refresh interval), or the next broadcast does.
    Withhold,
}

/// The node's state and everything that makes it durable and observable.
pub struct Node {
    options: NodeOptions,
    clock: Arc<dyn Clock>,
    /// A peer evicted this node (see `heartbeat`).
    evicted: AtomicBool,
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Delta>>,
    /// Bumped when something the reconcile loop plans from may have changed.
    plan_inputs: watch::Sender<u64>,
    started_ms: u64,
    durable_commits: AtomicU64,
    broadcasts: AtomicU64,
    /// Peers' deltas waiting to be applied and made durable together.
    remote: GroupCommit<Remote, Result<Applied, NodeError>>,
}

/// Why changes could not be made durable; every change of a group gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
enum PersistError {
    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

impl From<PersistError> for NodeError {
    fn from(error: PersistError) -> NodeError {
        match error {
            PersistError::Encode { what, message } => NodeError::Encode { what, message },
            PersistError::Store(error) => NodeError::Storage(error),
        }
    }
}

/// Peers' deltas applied and made durable together at most.
pub const GROUP_COMMIT_DELTAS_MAX: usize = 256;

/// A peer's delta for the group commit.
struct Remote {
    peer: NodeId,
    delta: Delta,
    members_only: bool,
    /// Runs once the delta is validated and applied with something new, before the batch
    /// is durable ([`Node::apply_push_then`]).
    on_new: Option<OnNew>,
}

/// What a push's receiver does as soon as the push proved new (the epidemic forward).
pub type OnNew = Box<dyn FnOnce() + Send>;

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.options.node)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Opens the database and loads the replica from it.
    pub fn open(options: NodeOptions, clock: Arc<dyn Clock>) -> Result<Node, NodeError> {
        assert!(
            options.evict_after_ms > 0,
            "evict_after_ms must be positive"
        );
        let store = Store::open(&options.database)?;
        let mut loaded = load_replica(&options, &store, clock.now())?;
        loaded
            .replica
            .set_incarnation(options.incarnation, incarnation_started(&*clock));
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        let (plan_inputs, _) = watch::channel(0);
        let started_ms = clock.now_ms();
        let node = Node {
            options,
            clock,
            evicted: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                replica: loaded.replica,
                store,
                peers: BTreeMap::new(),
                log_entries: loaded.log_entries,
                clock_floor: loaded.clock_floor,
                poisoned: false,
                contest_seen: None,
                announce_contest: false,
                duplicates_seen: BTreeMap::new(),
                swim: None,
                withheld_since: None,
            }),
            changes,
            plan_inputs,
            started_ms,
            durable_commits: AtomicU64::new(0),
            broadcasts: AtomicU64::new(0),
            remote: GroupCommit::new(GROUP_COMMIT_DELTAS_MAX),
        };
        if let Some(ahead) = node.clock_ahead() {
            tracing::error!(
                ahead_ms = ahead.ahead_ms,
                max_clock_drift_ms = ahead.max_drift_ms,
                wait_ms = ahead.wait_ms(),
                "{ahead}"
            );
        }
        Ok(node)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the replica possibly half-changed in
        // memory; the database is still the truth, so continue and let `poisoned` guard.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The physical time for the replica: the clock, but after the HLC timestamp stored at
    /// the last run, so the clock never goes backwards across restarts even when the wall
    /// clock did.
    fn physical(&self, inner: &Inner) -> NTP64 {
        let now = self.clock.now();
        if now > inner.clock_floor {
            now
        } else {
            NTP64(inner.clock_floor.0.saturating_add(1))
        }
    }

    /// Whether the hybrid clock is so far ahead of the system clock that a change written now
    /// would carry a timestamp peers refuse: its next timestamp (one tick after the last,
    /// floored at the stored one) is beyond the system time plus `max_clock_drift`, the test
    /// `shoal_crdt::Clock::check` makes on every peer.
    fn clock_ahead_of(&self, inner: &Inner) -> Option<ClockAhead> {
        let now = self.clock.now();
        let last = (*inner.replica.clock().last().get_time()).max(inner.clock_floor);
        let max_drift = NTP64::from(self.options.max_clock_drift);
        if last.0.saturating_add(1) <= now.0.saturating_add(max_drift.0) {
            return None;
        }
        let max_drift_ms =
            u64::try_from(self.options.max_clock_drift.as_millis()).unwrap_or(u64::MAX);
        Some(ClockAhead {
            ahead_ms: millis_between(last, now),
            max_drift_ms,
            until_unix_ms: ntp_to_ms(last).saturating_sub(max_drift_ms),
        })
    }

    /// `Some` while local changes are refused because this node's clock is too far ahead.
    pub fn clock_ahead(&self) -> Option<ClockAhead> {
        self.clock_ahead_of(&self.lock())
    }

    /// Refuses a local change that peers would refuse for its timestamp.
    fn check_clock_for_local_change(&self) -> Result<(), NodeError> {
        match self.clock_ahead() {
            Some(ahead) => Err(NodeError::ClockAhead(ahead)),
            None => Ok(()),
        }
    }

    /// Logs what the replica newly saw of writers with one name, and remembers when: a
    /// contest that begins is an error in the log (once, not at every sighting), and so is a
    /// node first seen written by two daemons.
    fn note_identity(&self, inner: &mut Inner) {
        let now_ms = self.clock.now_ms();
        match (inner.replica.contest(), inner.contest_seen) {
            (None, _) => inner.contest_seen = None,
            (Some(sighting), None) => {
                inner.contest_seen = Some((sighting.count, now_ms));
                inner.announce_contest = true;
                let contest = self.contest_of(inner).expect("contested");
                tracing::error!(
                    node = %self.options.node,
                    incarnation = format_args!("{:016x}", self.options.incarnation),
                    from = %sighting.from,
                    "{contest}"
                );
            }
            (Some(sighting), Some((count, _))) if sighting.count != count => {
                tracing::debug!(from = %sighting.from, evidence = %sighting.evidence, "another daemon with this node's name is still writing");
                inner.contest_seen = Some((sighting.count, now_ms));
            }
            (Some(_), Some(_)) => {}
        }
        let duplicates = inner.replica.duplicates();
        for (node, sighting) in duplicates {
            match inner.duplicates_seen.get(node) {
                Some((count, _)) if *count == sighting.count => {}
                seen => {
                    if seen.is_none() {
                        tracing::error!(
                            %node,
                            from = %sighting.from,
                            "two daemons write as node {node} ({}): one of them must stop, and get its \
                             own node name and certificate",
                            sighting.evidence
                        );
                    }
                    inner
                        .duplicates_seen
                        .insert(node.clone(), (sighting.count, now_ms));
                }
            }
        }
        inner
            .duplicates_seen
            .retain(|node, _| duplicates.contains_key(node));
    }

    /// Clears a contest, and forgets a duplicated node, once nothing new was seen for
    /// `contest_quiet_ms`.
    fn settle_identity(&self, inner: &mut Inner) {
        let now_ms = self.clock.now_ms();
        let quiet_ms = self.options.contest_quiet_ms;
        if let Some((_, at_ms)) = inner.contest_seen
            && now_ms.saturating_sub(at_ms) >= quiet_ms
        {
            inner.replica.clear_contest();
            inner.contest_seen = None;
            tracing::warn!(
                node = %self.options.node,
                quiet_ms,
                "nothing new seen of another daemon with this node's name for {}: writing again",
                duration_text(quiet_ms)
            );
        }
        let quiet: Vec<NodeId> = inner
            .duplicates_seen
            .iter()
            .filter(|(_, (_, at_ms))| now_ms.saturating_sub(*at_ms) >= quiet_ms)
            .map(|(node, _)| node.clone())
            .collect();
        for node in quiet {
            inner.replica.forget_duplicate(&node);
            inner.duplicates_seen.remove(&node);
        }
    }

    fn contest_of(&self, inner: &Inner) -> Option<IdentityContest> {
        let sighting = inner.replica.contest()?;
        let now_ms = self.clock.now_ms();
        let at_ms = inner.contest_seen.map_or(now_ms, |(_, at_ms)| at_ms);
        let ms_ago = now_ms.saturating_sub(at_ms);
        Some(IdentityContest {
            node: self.options.node.clone(),
            incarnation: self.options.incarnation,
            evidence: sighting.evidence.to_string(),
            from: sighting.from.clone(),
            ms_ago,
            clears_in_ms: self.options.contest_quiet_ms.saturating_sub(ms_ago),
        })
    }

    /// `Some` while another daemon writes with this node's name and this one writes nothing.
    pub fn identity_contest(&self) -> Option<IdentityContest> {
        let mut inner = self.lock();
        self.settle_identity(&mut inner);
        self.contest_of(&inner)
    }

    /// Other nodes seen written by two daemons with their name, recently (within
    /// `contest_quiet_ms`).
    pub fn duplicated_nodes(&self) -> BTreeMap<NodeId, Duplicated> {
        let now_ms = self.clock.now_ms();
        let mut inner = self.lock();
        self.settle_identity(&mut inner);
        inner
            .replica
            .duplicates()
            .iter()
            .map(|(node, sighting)| {
                let at_ms = inner
                    .duplicates_seen
                    .get(node)
                    .map_or(now_ms, |(_, at_ms)| *at_ms);
                (
                    node.clone(),
                    Duplicated {
                        evidence: sighting.evidence.to_string(),
                        from: sighting.from.clone(),
                        ms_ago: now_ms.saturating_sub(at_ms),
                    },
                )
            })
            .collect()
    }

    /// Refuses a local change while another daemon writes with this node's name.
    fn check_identity_for_local_change(&self) -> Result<(), NodeError> {
        match self.identity_contest() {
            Some(contest) => Err(NodeError::Contested(contest)),
            None => Ok(()),
        }
    }

    /// The clock this node reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The daemon's metrics, given in `NodeOptions::metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.options.metrics
    }

    /// Writes one accepted change; on failure restores memory from disk.
    fn persist(&self, inner: &mut Inner, origin: &NodeId, delta: &Delta) -> Result<(), NodeError> {
        self.persist_all(inner, &[(origin, delta)])
            .map_err(NodeError::from)
    }

    /// Writes accepted changes, in order, in one transaction; on failure restores memory
    /// from disk (none of them is then applied).
    fn persist_all(
        &self,
        inner: &mut Inner,
        changes: &[(&NodeId, &Delta)],
    ) -> Result<(), PersistError> {
        let timer = self.options.metrics.commit_started();
        let records: Result<Vec<Vec<u8>>, PersistError> = changes
            .iter()
            .map(|(origin, delta)| {
                postcard::to_allocvec(&LogRecord {
                    origin: (*origin).clone(),
                    delta: codec::encode_delta(delta),
                })
                .map_err(|error| PersistError::Encode {
                    what: "a log record",
                    message: error.to_string(),
                })
            })
            .collect();
        let result = records.and_then(|records| {
            let hlc_last =
                postcard::to_allocvec(&inner.replica.clock().last()).map_err(|error| {
                    PersistError::Encode {
                        what: "the clock's last timestamp",
                        message: error.to_string(),
                    }
                })?;
            let records: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            Ok(inner.store.append_all(&records, &hlc_last)?)
        });
        match result {
            Ok(length) => {
                self.options.metrics.commit_done(timer);
                self.durable_commits.fetch_add(1, Ordering::Relaxed);
                inner.log_entries = length;
                if length >= self.options.compact_every_entries.max(1) {
                    self.compact(inner);
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot persist a change; reloading the state from the database");
                let now = self.clock.now();
                match load_replica(&self.options, &inner.store, now) {
                    Ok(mut reloaded) => {
                        reloaded.replica.keep_identity_of(&inner.replica);
                        inner.replica = reloaded.replica;
                        inner.log_entries = reloaded.log_entries;
                        inner.clock_floor = inner.clock_floor.max(reloaded.clock_floor);
                    }
                    Err(reload) => {
                        tracing::error!(error = %reload, "cannot reload the state; refusing further changes");
                        inner.poisoned = true;
                    }
                }
                Err(error)
            }
        }
    }

    /// Folds the log into a new snapshot. A failure leaves the old snapshot and log, which
    /// still describe the same state, so it is only logged.
    fn compact(&self, inner: &mut Inner) {
        let snapshot = codec::encode_snapshot(&inner.replica.to_snapshot());
        let result = encode_timestamp(&inner.replica.clock().last())
            .and_then(|hlc_last| Ok(inner.store.compact(&snapshot, &hlc_last)?));
        match result {
            Ok(()) => {
                tracing::debug!(snapshot_bytes = snapshot.len(), "compacted the state log");
                inner.log_entries = 0;
            }
            Err(error) => tracing::warn!(%error, "cannot compact the state log"),
        }
    }

    /// Runs local operations and commits what they changed as one delta: applied in memory,
    /// persisted as one log record, then broadcast once. Each operation is all-or-nothing on
    /// its own; what the successful ones wrote is committed even when another failed. No
    /// change at all is no commit. Returns the operations' value.
    pub fn write_batch<T>(
        &self,
        operations: impl FnOnce(&mut Replica, NTP64) -> T,
    ) -> Result<T, NodeError> {
        self.commit(|replica, now| (operations(replica, now), Broadcast::Now))
    }

    /// [`Node::write_batch`] whose operations say whether to broadcast what they wrote. A
    /// withheld change is durable and reaches peers by anti-entropy, or with the next
    /// broadcast, whose delta starts where the withheld writes began.
    fn commit<T>(
        &self,
        operations: impl FnOnce(&mut Replica, NTP64) -> (T, Broadcast),
    ) -> Result<T, NodeError> {
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(NodeError::Poisoned);
        }
        self.settle_identity(&mut inner);
        let now = self.physical(&inner);
        let since = inner.replica.own_counter();
        let (value, broadcast) = operations(&mut inner.replica, now);
        let delta = inner.replica.own_delta_since(since);
        if delta.is_empty() {
            return Ok(value);
        }
        let origin = self.options.node.clone();
        self.persist(&mut inner, &origin, &delta)?;
        if broadcast == Broadcast::Withhold {
            inner.withheld_since.get_or_insert(since);
            return Ok(value);
        }
        let delta = match inner.withheld_since.take() {
            Some(withheld) => inner.replica.own_delta_since(withheld),
            None => delta,
        };
        drop(inner);
        self.broadcasts.fetch_add(1, Ordering::Relaxed);
        // No subscriber (eager push disabled, no peers yet) is fine.
        let _ = self.changes.send(Arc::new(delta));
        Ok(value)
    }

    /// One local operation as its own commit; its error names `what`.
    fn write_one<T>(
        &self,
        what: impl FnOnce() -> String,
        operation: impl FnOnce(&mut Replica, NTP64) -> Result<T, ReplicaError>,
    ) -> Result<T, NodeError> {
        self.write_batch(operation)?
            .map_err(|source| NodeError::Operation {
                what: what(),
                source,
            })
    }

    /// Tells the reconcile loop that its inputs may have changed.
    fn wake_planner(&self) {
        self.plan_inputs
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    // ---- the sync contract (used by sync/**) ----

    /// This node's id.
    /// The address peers reach this node at (published in its metadata).
    pub fn address(&self) -> SocketAddr {
        self.options.address
    }

    pub fn node_id(&self) -> &NodeId {
        &self.options.node
    }

    /// What this node has seen.
    pub fn summary(&self) -> Summary {
        self.lock().replica.summary()
    }

    /// What this node has seen in a few bytes, with the version vector it stands for
    /// (`Replica::compact_summary`); `None` when the full summary is the better choice.
    pub fn compact_summary(&self) -> Option<(CompactSummary, VersionVector)> {
        let now = self.clock.now();
        self.lock().replica.compact_summary(now)
    }

    /// A peer's compact summary rebuilt into its summary, or `None` when it does not rebuild
    /// here (`Replica::expand_summary`): the peer then sends the full one.
    pub fn expand_summary(&self, theirs: &CompactSummary) -> Option<Summary> {
        let now = self.clock.now();
        self.lock().replica.expand_summary(now, theirs)
    }

    /// The answer to a compact summary that rebuilt into `theirs` (`Replica::summary_reply`).
    pub fn summary_reply(&self, theirs: &VersionVector) -> SummaryReply {
        self.lock().replica.summary_reply(theirs)
    }

    /// What `peer` lacks given its summary; remembers the summary for GC and status. When
    /// the summary shows that this node covered more of the peer's writes than the peer
    /// made (a lie relayed by another), the coverage taken back is made durable at once.
    pub fn delta_for(&self, peer: &NodeId, theirs: &Summary) -> Delta {
        let mut inner = self.lock();
        if inner.replica.observe_summary(peer, theirs) {
            tracing::warn!(
                %peer,
                "this node covered writes of the peer that it never made; fetching its writes again"
            );
            self.compact(&mut inner);
        }
        self.note_identity(&mut inner);
        inner.peers.entry(peer.clone()).or_default().last_summary = Some(theirs.clone());
        inner.replica.delta_for(theirs)
    }

    /// Validates and applies a delta `peer` pushed (`POST /v1/push`), like `apply_remote`.
    /// A peer that is not a member (no node metadata here, or evicted) may only join: push
    /// its own node metadata, with nothing but its own writes (`Delta::is_join_of`), so a
    /// certificate of the cluster CA cannot relay, forge or advance another node's writes
    /// before it is a member.
    pub fn apply_push(&self, peer: &NodeId, delta: Delta) -> Result<Applied, NodeError> {
        self.apply_push_then(peer, delta, None)
    }

    /// [`Node::apply_push`], running `on_new` as soon as the delta is validated and applied
    /// in memory with something new, before it is durable here: the epidemic forward, which
    /// need not wait for this node's disk (the writer made the change durable before pushing
    /// it, and a receiver validates what it gets on its own). It runs under the node's lock:
    /// it must be quick and never block. Not run when the delta is refused or held nothing
    /// new; when making it durable then fails, the push is still refused.
    pub fn apply_push_then(
        &self,
        peer: &NodeId,
        delta: Delta,
        on_new: Option<OnNew>,
    ) -> Result<Applied, NodeError> {
        self.apply(peer, delta, true, on_new)
            .inspect_err(|error| self.options.metrics.apply_error(error.kind()))
    }

    /// [`Node::delta_for`] when its encoding fits in `encoded_bytes_max`, else `None`: the
    /// peer then fetches [`Node::snapshot_transfer_bytes`] in pieces. Remembers the summary
    /// like `delta_for`, and builds no more of a large delta than the budget to find out.
    pub fn delta_within(
        &self,
        peer: &NodeId,
        theirs: &Summary,
        encoded_bytes_max: usize,
    ) -> Option<Delta> {
        let mut inner = self.lock();
        inner.replica.observe_summary(peer, theirs);
        self.note_identity(&mut inner);
        inner.peers.entry(peer.clone()).or_default().last_summary = Some(theirs.clone());
        inner.replica.delta_for_within(theirs, encoded_bytes_max)
    }

    /// The whole state as one encoded `Full` delta, which any peer can apply whatever it
    /// holds: what a snapshot transfer carries. Copied under the lock, encoded after it.
    pub fn snapshot_transfer_bytes(&self) -> Vec<u8> {
        let delta = self.lock().replica.full_delta();
        codec::encode_delta(&delta)
    }

    /// Validates and applies a peer's delta, durably; all or nothing. A delta that changes
    /// what this node's reconcile loop plans from (a service, a member joining, leaving,
    /// coming back or changing its address, capacity or subnet) wakes the loop at once.
    pub fn apply_remote(&self, peer: &NodeId, delta: Delta) -> Result<Applied, NodeError> {
        self.apply(peer, delta, false, None)
            .inspect_err(|error| self.options.metrics.apply_error(error.kind()))
    }

    fn apply(
        &self,
        peer: &NodeId,
        delta: Delta,
        members_only: bool,
        on_new: Option<OnNew>,
    ) -> Result<Applied, NodeError> {
        if peer == &self.options.node {
            return Err(NodeError::OwnName { peer: peer.clone() });
        }
        let remote = Remote {
            peer: peer.clone(),
            delta,
            members_only,
            on_new,
        };
        self.remote
            .submit(remote, |group| self.apply_group(group))
            .unwrap_or_else(|abandoned| Err(abandoned.into()))
    }

    /// Validates and applies each delta of `group` on its own, all or nothing, then makes
    /// those accepted durable in one transaction. A failed write undoes them all (memory is
    /// reloaded from disk) and each of them gets the error.
    fn apply_group(&self, mut group: Vec<Remote>) -> Vec<Result<Applied, NodeError>> {
        let mut inner = self.lock();
        let mut results = Vec::with_capacity(group.len());
        let mut to_persist = Vec::new();
        let mut arrived: Vec<NTP64> = Vec::new();
        let mut wakes = false;
        for (index, remote) in group.iter_mut().enumerate() {
            let result = self.apply_one(&mut inner, remote);
            if let Ok((applied, ..)) = &result
                && applied.entries_applied > 0
                && let Some(on_new) = remote.on_new.take()
            {
                on_new();
            }
            results.push(result.map(|(applied, persist, wake, services)| {
                if persist {
                    to_persist.push(index);
                    arrived.extend(services);
                }
                wakes |= wake && applied.entries_applied > 0;
                applied
            }));
        }
        if !to_persist.is_empty() {
            let changes: Vec<(&NodeId, &Delta)> = to_persist
                .iter()
                .map(|index| (&group[*index].peer, &group[*index].delta))
                .collect();
            if let Err(error) = self.persist_all(&mut inner, &changes) {
                for index in &to_persist {
                    results[*index] = Err(error.clone().into());
                }
                wakes = false;
                arrived.clear();
            }
        }
        drop(inner);
        if !arrived.is_empty() {
            let now = self.clock.now().to_duration();
            for written in arrived {
                let lag = now.saturating_sub(written.to_duration());
                self.options
                    .metrics
                    .service_write_arrived(lag.as_secs_f64());
            }
        }
        if wakes {
            self.wake_planner();
        }
        results
    }

    /// Validates and applies one peer's delta in memory: what it applied, whether it must be
    /// made durable, whether it changes what the reconcile loop plans from, and when the
    /// service writes in it that were new here were made (for the lag metric).
    fn apply_one(
        &self,
        inner: &mut Inner,
        remote: &Remote,
    ) -> Result<(Applied, bool, bool, Vec<NTP64>), NodeError> {
        let Remote {
            peer,
            delta,
            members_only,
            ..
        } = remote;
        if inner.poisoned {
            return Err(NodeError::Poisoned);
        }
        if *members_only && inner.replica.state().node(peer).is_none() && !delta.is_join_of(peer) {
            return Err(NodeError::NotMember { peer: peer.clone() });
        }
        let before = inner.replica.version_vector().clone();
        let services: Vec<NTP64> = delta
            .changes()
            .iter()
            .filter(|change| matches!(change, shoal_crdt::state::Change::Service { .. }))
            .filter(|change| before.get(&change.dot().node) < change.dot().counter)
            .map(|change| *change.hlc().get_time())
            .collect();
        let now = self.physical(inner);
        let wakes = changes_plan_inputs(inner.replica.state(), delta, &self.liveness(inner, now));
        let result = inner.replica.apply_delta(now, peer, delta);
        // What the delta showed of writers with one name counts, refused or not.
        self.note_identity(inner);
        let applied = result.map_err(|error| map_apply_error(peer, error))?;
        // A full snapshot may also have dropped entries (removals its sender collected).
        let persist = applied.entries_applied > 0
            || delta.is_full()
            || inner.replica.version_vector() != &before;
        Ok((applied, persist, wakes, services))
    }

    /// Local changes, for the eager push.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Delta>> {
        self.changes.subscribe()
    }

    /// Changes of what the reconcile loop plans from: services, members, local applies.
    pub fn subscribe_plan_inputs(&self) -> watch::Receiver<u64> {
        self.plan_inputs.subscribe()
    }

    /// Every other member known from node metadata.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let inner = self.lock();
        let now = self.clock.now();
        let now_ms = self.clock.now_ms();
        let liveness = self.liveness(&inner, now);
        inner
            .replica
            .state()
            .nodes()
            .filter(|(id, _)| *id != &self.options.node)
            .map(|(id, meta)| PeerInfo {
                node: id.clone(),
                address: meta.address,
                live: liveness.is_live(id, meta),
                last_sync_ms_ago: inner
                    .peers
                    .get(id)
                    .and_then(|p| p.last_ok_ms)
                    .map(|at| now_ms.saturating_sub(at)),
            })
            .collect()
    }

    /// Records the outcome of a sync with `peer`.
    pub fn record_sync(&self, peer: &NodeId, result: SyncOutcome) {
        let now_ms = self.clock.now_ms();
        let mut inner = self.lock();
        let record = inner.peers.entry(peer.clone()).or_default();
        match result {
            SyncOutcome::Ok {
                bytes_sent,
                bytes_received,
            } => {
                record.last_ok_ms = Some(now_ms);
                record.last_error = None;
                record.bytes_sent = record.bytes_sent.saturating_add(bytes_sent);
                record.bytes_received = record.bytes_received.saturating_add(bytes_received);
            }
            SyncOutcome::Failed(message) => record.last_error = Some(message),
        }
    }

    /// Records that this node refused a push from `peer` (connected from `address`), and why;
    /// `shoal nodes` and `shoal status` show it until a push from that peer is accepted.
    pub fn record_refused_writes(&self, peer: &NodeId, address: SocketAddr, reason: String) {
        let now_ms = self.clock.now_ms();
        let mut inner = self.lock();
        inner.peers.entry(peer.clone()).or_default().refused = Some((now_ms, address, reason));
    }

    /// Records that a push from `peer` was accepted: its writes are no longer refused.
    pub fn record_accepted_writes(&self, peer: &NodeId) {
        let mut inner = self.lock();
        if let Some(record) = inner.peers.get_mut(peer) {
            record.refused = None;
        }
    }

    /// Every node whose last push this node refused (members or not), and why.
    pub fn refused_writes(&self) -> BTreeMap<NodeId, RefusedWrites> {
        let now_ms = self.clock.now_ms();
        let inner = self.lock();
        inner
            .peers
            .iter()
            .filter_map(|(id, record)| {
                let (at_ms, address, reason) = record.refused.as_ref()?;
                Some((
                    id.clone(),
                    RefusedWrites {
                        address: *address,
                        reason: reason.clone(),
                        ms_ago: now_ms.saturating_sub(*at_ms),
                    },
                ))
            })
            .collect()
    }

    /// The configured seed peers.
    pub fn seed_peers(&self) -> Vec<SocketAddr> {
        self.options.seeds.clone()
    }

    // ---- host side ----

    /// Writes our node metadata (address, capacity, subnet, heartbeat), evicts members
    /// silent longer than `evict_after_ms` and collects garbage.
    pub fn heartbeat(&self) -> Result<(), NodeError> {
        if self.identity_contest().is_some() {
            // Another daemon writes as this node: nothing is written under its name (the
            // contest was logged when it began) but one announcement, numbered beyond every
            // write of the other daemon, so that it learns of the contest too. Tombstones are
            // still collected.
            let announce = std::mem::take(&mut self.lock().announce_contest);
            if announce {
                self.write_one(
                    || "contest announcement".to_string(),
                    |replica, now| {
                        let meta = self.own_meta(replica.state().node(&self.options.node));
                        replica.announce_contest(now, meta)
                    },
                )?;
            }
            self.lock().replica.collect_garbage();
            return Ok(());
        }
        let node = self.options.node.clone();
        let refresh_every_ms = self.refresh_every_ms();
        let first = self
            .commit(|replica, now| {
                let own = replica.state().node(&node).cloned();
                // Our first write ever is a heartbeat, so a state with writes of ours but
                // without our metadata means a peer evicted us (silent longer than
                // evict_after_ms).
                if own.is_none()
                    && replica.own_counter() > 0
                    && !self.evicted.swap(true, Ordering::Relaxed)
                {
                    tracing::error!(
                        "this node was evicted by a peer; writes of ours concurrent with removals \
                     the cluster already collected may diverge: stop the daemon, empty its \
                     state_dir and start it again to rejoin with a clean state"
                    );
                }
                let meta = self.own_meta(own.as_ref());
                // Nothing but the heartbeat changes: a refresh, left to anti-entropy. Liveness
                // is SWIM's; the refresh only keeps eviction and the heartbeat rule informed.
                let refresh = own.as_ref().is_some_and(|stored| {
                    NodeMeta {
                        heartbeat: stored.heartbeat,
                        ..meta.clone()
                    } == *stored
                });
                if let Some(stored) = own.as_ref().filter(|_| refresh)
                    && millis_between(now, *stored.heartbeat.get_time()) < refresh_every_ms
                {
                    // Not due yet: the cluster is large (`refresh_every_ms`).
                    return (Ok(false), Broadcast::Withhold);
                }
                let broadcast = if refresh {
                    Broadcast::Withhold
                } else {
                    Broadcast::Now
                };
                (
                    replica.put_node_meta(now, meta).map(|_| own.is_none()),
                    broadcast,
                )
            })?
            .map_err(|source| NodeError::Operation {
                what: "heartbeat".to_string(),
                source,
            })?;
        if first {
            // Our metadata (and subnet) is new: the planner can place on us now.
            self.wake_planner();
        }
        self.evict_silent_members()?;
        let collected = self.lock().replica.collect_garbage();
        if collected > 0 {
            tracing::debug!(collected, "collected tombstones");
        }
        Ok(())
    }

    /// This node's metadata as its options say (the replica sets the heartbeat), keeping of
    /// `stored` (its metadata in the state) the subnet when the options name none, and the
    /// drain: a drain is set and cleared only by `set_drain`, and the state it is kept in is
    /// what the node reloads, so it survives a restart.
    fn own_meta(&self, stored: Option<&NodeMeta>) -> NodeMeta {
        NodeMeta {
            address: self.options.address,
            capacity: self.options.capacity,
            subnet: self
                .options
                .subnet
                .or(stored.and_then(|stored| stored.subnet)),
            heartbeat: Timestamp::new(NTP64(0), self.options.node.hlc_id()),
            labels: self.options.labels.clone(),
            incarnation: Some(self.options.incarnation),
            drain: stored.and_then(|stored| stored.drain),
        }
    }

    /// Evicts every member whose heartbeat is older than `evict_after_ms`. An evicted node
    /// that comes back re-adds itself with its next heartbeat.
    fn evict_silent_members(&self) -> Result<(), NodeError> {
        let now = self.clock.now();
        let silent: Vec<NodeId> = self.read_state(|state| {
            state
                .nodes()
                .filter(|(id, meta)| {
                    *id != &self.options.node
                        && millis_between(now, *meta.heartbeat.get_time())
                            > self.options.evict_after_ms
                })
                .map(|(id, _)| id.clone())
                .collect()
        });
        for node in silent {
            tracing::info!(%node, evict_after_ms = self.options.evict_after_ms, "evicting a silent member");
            self.write_one(
                || format!("evict {node}"),
                |replica, now| replica.evict_node(now, &node),
            )?;
            self.wake_planner();
        }
        Ok(())
    }

    /// Applies services in order, each its own durable change. Every spec is validated
    /// before the first is written, so bad input changes nothing; nothing is written either
    /// while this node's clock is too far ahead for peers to take its changes.
    pub fn apply_services(
        &self,
        services: Vec<(ServiceName, ServiceSpec)>,
    ) -> Result<Vec<ServiceEntry>, NodeError> {
        for (index, (name, spec)) in services.iter().enumerate() {
            spec.validate().map_err(|source| NodeError::InvalidSpec {
                service: name.clone(),
                source,
            })?;
            if services[..index].iter().any(|(earlier, _)| earlier == name) {
                return Err(NodeError::DuplicateService(name.clone()));
            }
        }
        self.check_clock_for_local_change()?;
        self.check_identity_for_local_change()?;
        let mut entries = Vec::with_capacity(services.len());
        for (name, spec) in services {
            let entry = self.write_one(
                || format!("service {name}"),
                |replica, now| {
                    replica.put_service(now, name.clone(), spec.clone())?;
                    let version = replica
                        .state()
                        .service(&name)
                        .map(|(_, version)| version)
                        .expect("a service just written is stored");
                    Ok(ServiceEntry {
                        name: name.clone(),
                        spec: spec.clone(),
                        version,
                    })
                },
            )?;
            entries.push(entry);
        }
        self.wake_planner();
        Ok(entries)
    }

    /// Removes a service; returns what was removed. Refused, changing nothing, while this
    /// node's clock is too far ahead for peers to take its changes.
    pub fn remove_service(&self, name: &ServiceName) -> Result<ServiceEntry, NodeError> {
        self.check_clock_for_local_change()?;
        self.check_identity_for_local_change()?;
        let removed = self.write_batch(|replica, now| {
            let (spec, version) = match replica.state().service(name) {
                Some((spec, version)) => (spec.clone(), version),
                None => return Ok(None),
            };
            replica.remove_service(now, name)?;
            Ok(Some(ServiceEntry {
                name: name.clone(),
                spec,
                version,
            }))
        })?;
        let removed = removed
            .map_err(|source| NodeError::Operation {
                what: format!("service {name}"),
                source,
            })?
            .ok_or_else(|| NodeError::NotFound(name.clone()))?;
        self.wake_planner();
        Ok(removed)
    }

    /// A service's record (its spec, earlier versions and rollout marks) and its version.
    pub fn service_record(
        &self,
        name: &ServiceName,
    ) -> Result<(ServiceRecord, Timestamp), NodeError> {
        self.read_state(|state| {
            state
                .service_record(name)
                .map(|(record, version)| (record.clone(), version))
        })
        .ok_or_else(|| NodeError::NotFound(name.clone()))
    }

    /// Writes a service's last good earlier version back (`shoal service rollback`); the
    /// rollout to it paces itself like any update.
    pub fn rollback_service(&self, name: &ServiceName) -> Result<ServiceEntry, NodeError> {
        self.check_clock_for_local_change()?;
        self.check_identity_for_local_change()?;
        let written = self.write_batch(|replica, now| {
            let Some((record, version)) = replica.state().service_record(name) else {
                return Ok::<_, ReplicaError>(Err(NodeError::NotFound(name.clone())));
            };
            let Some(back) = record.rolled_back(version) else {
                return Ok(Err(NodeError::NothingToRollBack(name.clone())));
            };
            let spec = back.spec.clone();
            replica.put_service_record(now, name.clone(), back)?;
            let version = replica
                .state()
                .service(name)
                .map(|(_, version)| version)
                .expect("a service just written is stored");
            Ok(Ok(ServiceEntry {
                name: name.clone(),
                spec,
                version,
            }))
        })?;
        let entry = written.map_err(|source| NodeError::Operation {
            what: format!("service {name}"),
            source,
        })??;
        self.wake_planner();
        Ok(entry)
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<ServiceEntry> {
        self.read_state(|state| {
            state
                .services()
                .map(|(name, spec, version)| ServiceEntry {
                    name: name.clone(),
                    spec: spec.clone(),
                    version,
                })
                .collect()
        })
    }

    /// Every member, with liveness from its heartbeat.
    pub fn members(&self) -> Vec<Member> {
        let now = self.clock.now();
        let inner = self.lock();
        members::members(
            inner.replica.state(),
            &self.options.node,
            &self.liveness(&inner, now),
        )
    }

    /// How liveness is judged at `now`: by SWIM's view once a driver runs, else heartbeats.
    fn liveness<'a>(&self, inner: &'a Inner, now: NTP64) -> Liveness<'a> {
        // With SWIM, refreshes come further apart in a large cluster (`refresh_every_ms`):
        // a member SWIM does not know stays live for twice that stretch beyond down_after_ms.
        let down_after_ms = match &inner.swim {
            Some(_) => self
                .options
                .down_after_ms
                .saturating_add(2 * self.refresh_stretch_ms(inner.replica.state().nodes().count())),
            None => self.options.down_after_ms,
        };
        Liveness {
            now,
            down_after_ms,
            swim: inner.swim.as_ref(),
        }
    }

    /// How long after our last metadata write a mere refresh is due: `REFRESH_MS_PER_MEMBER`
    /// per member while SWIM runs (at most a quarter of `evict_after_ms`), so the heartbeat
    /// interval decides below 30 members; every heartbeat without SWIM (its rule needs them).
    fn refresh_every_ms(&self) -> u64 {
        let inner = self.lock();
        match &inner.swim {
            Some(_) => self.refresh_stretch_ms(inner.replica.state().nodes().count()),
            None => 0,
        }
    }

    fn refresh_stretch_ms(&self, members: usize) -> u64 {
        (members as u64)
            .saturating_mul(REFRESH_MS_PER_MEMBER)
            .min(self.options.evict_after_ms / 4)
    }

    /// SWIM's view of the other members, once a SWIM driver runs.
    pub fn peer_states(&self) -> Option<PeerStates> {
        self.lock().swim.clone()
    }

    /// Replaces SWIM's view of the other members (`sync::swim` calls it after every change).
    /// Wakes the reconcile loop when the set of live members changed.
    pub fn set_peer_states(&self, peers: PeerStates) {
        let now = self.clock.now();
        let changed = {
            let mut inner = self.lock();
            let me = &self.options.node;
            let before = members::live_set(inner.replica.state(), me, &self.liveness(&inner, now));
            inner.swim = Some(peers);
            let after = members::live_set(inner.replica.state(), me, &self.liveness(&inner, now));
            before != after
        };
        if changed {
            self.wake_planner();
        }
    }

    /// This node's view of the cluster and how fresh it is.
    pub fn status(&self) -> NodeStatus {
        let peers_info = self.peers();
        let refused = self.refused_writes();
        let mut inner = self.lock();
        self.settle_identity(&mut inner);
        let contest = self.contest_of(&inner);
        let inner = inner;
        let summary = inner.replica.summary();
        let state = inner.replica.state();
        let peers: Vec<PeerStatus> = peers_info
            .into_iter()
            .map(|peer| {
                let record = inner.peers.get(&peer.node);
                PeerStatus {
                    address: peer.address,
                    live: peer.live,
                    last_sync_ms_ago: peer.last_sync_ms_ago,
                    last_error: record.and_then(|r| r.last_error.clone()),
                    same_summary: record
                        .and_then(|r| r.last_summary.as_ref())
                        .is_some_and(|s| s == &summary),
                    writes_refused: refused.get(&peer.node).cloned(),
                    id: peer.node,
                }
            })
            .collect();
        let live_peers = peers.iter().filter(|p| p.live).count();
        let converged = live_peers > 0 && peers.iter().filter(|p| p.live).all(|p| p.same_summary);
        NodeStatus {
            node: self.options.node.clone(),
            uptime_ms: self.clock.now_ms().saturating_sub(self.started_ms),
            digest: inner.replica.digest(),
            services: state.services().count(),
            nodes: state.nodes().count(),
            tombstones: state.tombstone_count(),
            hlc_last: inner.replica.clock().last(),
            summary,
            peers,
            live_peers,
            converged,
            evicted: self.evicted.load(Ordering::Relaxed),
            clock_ahead: self.clock_ahead_of(&inner),
            contest,
            incarnation: self.options.incarnation,
        }
    }

    /// A one-line status for systemd.
    pub fn status_line(&self) -> String {
        let peers = self.peers();
        let live = peers.iter().filter(|p| p.live).count();
        let last_sync = peers.iter().filter_map(|p| p.last_sync_ms_ago).min();
        match last_sync {
            Some(ms) => format!("peers {live}/{} live, last sync {ms} ms ago", peers.len()),
            None => format!("peers {live}/{} live, no sync yet", peers.len()),
        }
    }

    /// Reads the replicated state under the lock; `read` must be quick.
    pub fn read_state<T>(&self, read: impl FnOnce(&ClusterState) -> T) -> T {
        read(self.lock().replica.state())
    }

    /// Reads the replicated state with the set of live members at this instant.
    pub fn read_with_live<T>(&self, read: impl FnOnce(&ClusterState, &BTreeSet<NodeId>) -> T) -> T {
        let now = self.clock.now();
        let inner = self.lock();
        let state = inner.replica.state();
        let live = members::live_set(state, &self.options.node, &self.liveness(&inner, now));
        read(state, &live)
    }

    /// The capacity this node advertises.
    pub fn capacity(&self) -> Capacity {
        self.options.capacity
    }

    /// Digest of the replicated state.
    pub fn digest(&self) -> [u8; 32] {
        self.lock().replica.digest()
    }

    /// Log entries written since the last compaction.
    pub fn log_entries(&self) -> u64 {
        self.lock().log_entries
    }

    /// Durable commits and broadcasts since this node was opened.
    pub fn commit_counts(&self) -> CommitCounts {
        CommitCounts {
            durable: self.durable_commits.load(Ordering::Relaxed),
            broadcast: self.broadcasts.load(Ordering::Relaxed),
        }
    }
}

/// When this incarnation started, as the replica needs it: a write of this node's name
/// stamped later is this daemon's or another live daemon's, one stamped earlier a previous
/// incarnation's (or a duplicate's that stopped), which is adopted. (A previous incarnation
/// whose clock ran ahead and that stopped less than that far before this start looks like a
/// duplicate until `contest_quiet_ms` has passed.)
fn incarnation_started(clock: &dyn Clock) -> NTP64 {
    clock.now()
}

fn map_apply_error(peer: &NodeId, source: ApplyError) -> NodeError {
    let peer = peer.clone();
    match source {
        ApplyError::StaleBase { .. } => NodeError::StaleBase { peer, source },
        ApplyError::ClockDrift { .. } => NodeError::ClockDrift { peer, source },
        _ => NodeError::Invalid { peer, source },
    }
}

#[path = "node_drain.rs"]
mod drain;
pub use drain::EvictRefused;

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "node_clock_tests.rs"]
mod clock_tests;

#[cfg(test)]
#[path = "node_trust_tests.rs"]
mod trust_tests;
