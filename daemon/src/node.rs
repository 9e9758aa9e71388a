//! The node: the sans-IO `shoal_crdt::Replica` driven with the wall clock, made durable by
//! the redb `Store`, with a bounded broadcast of local changes (for eager push) and the
//! sync history of every peer. Shared as `Arc<Node>` by the sync server, the gossip loop,
//! the local API and the heartbeat.
//!
//! Durability: a change is applied to the replica and written to redb while the replica's
//! mutex is held, and only then acknowledged or broadcast. Nobody can read the replica
//! between the two steps, so no reader ever sees a change that is not durable. If the write
//! fails, the replica is rebuilt from the database (so memory again equals disk) and the
//! caller gets `NodeError::Storage`. The mutex is never held across an `.await`.
//!
//! The log holds one `LogRecord` per accepted change: the node it came from and the delta
//! encoded by `shoal_crdt::codec`. Startup decodes the snapshot and replays the log in
//! order; every `compact_every_entries` appends (default `COMPACT_EVERY_ENTRIES`), the snapshot is rewritten and the log
//! cleared in one transaction.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_crdt::{
    Applied, Capacity, ClusterState, Delta, NTP64, NodeId, NodeMeta, Replica, ReplicaError,
    ServiceName, Subnet, Summary, Timestamp, codec,
};
use tokio::sync::broadcast;

use crate::api::{NodeView, PeerView, ServiceView, StatusView};
use crate::spec_file::NamedSpec;
use crate::store::{Store, StoreError};

/// Default number of appends between two compactions of the log into the snapshot.
pub const COMPACT_EVERY_ENTRIES: u64 = 1000;
/// Local changes buffered for the eager push; a slow subscriber loses the oldest and relies
/// on anti-entropy.
pub const CHANGES_CAPACITY: usize = 1024;
/// Default silence after which a member is evicted (`sync.evict_after_ms`).
pub const EVICT_AFTER_MS: u64 = 86_400_000;
/// Largest snapshot or log record decoded at startup.
pub const STORED_BYTES_MAX: usize = 1 << 30;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node: NodeId,
    pub database: PathBuf,
    pub max_clock_drift: Duration,
    pub seeds: Vec<SocketAddr>,
    pub address: SocketAddr,
    pub capacity: Capacity,
    pub down_after_ms: u64,
    /// Log entries after which the log is folded into a new snapshot.
    pub compact_every_entries: u64,
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

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("delta from {peer} is based on a state we do not have yet: {message}")]
    StaleBase { peer: NodeId, message: String },
    #[error("delta from {peer} refused: {message}")]
    ClockDrift { peer: NodeId, message: String },
    #[error("delta from {peer} is invalid: {message}")]
    Invalid { peer: NodeId, message: String },
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error(
        "the in-memory state could not be restored after a storage failure; restart the daemon"
    )]
    Poisoned,
    #[error("{0}")]
    Refused(String),
    #[error("service {0} not found")]
    NotFound(ServiceName),
    #[error("cannot load the state from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// One log entry: the node a delta came from (ourselves for local changes) and its bytes.
#[derive(Debug, Serialize, Deserialize)]
struct LogRecord {
    origin: NodeId,
    delta: Vec<u8>,
}

#[derive(Debug, Default, Clone)]
struct PeerRecord {
    last_ok: Option<Instant>,
    last_error: Option<String>,
    last_summary: Option<Summary>,
    bytes_sent: u64,
    bytes_received: u64,
}

struct Inner {
    replica: Replica,
    store: Store,
    peers: BTreeMap<NodeId, PeerRecord>,
    log_entries: u64,
    /// Physical time passed to the replica is never below this (see `Inner::now`).
    clock_floor: NTP64,
    poisoned: bool,
}

impl Inner {
    /// The physical time for the replica: the wall clock, but after the HLC timestamp stored
    /// at the last run, so the clock never goes backwards across restarts even when the
    /// wall clock did.
    fn now(&self) -> NTP64 {
        let physical = physical_now();
        if physical > self.clock_floor {
            physical
        } else {
            NTP64(self.clock_floor.0.saturating_add(1))
        }
    }
}

/// The node's state and everything that makes it durable and observable.
pub struct Node {
    options: NodeOptions,
    /// Silence after which a member is evicted, so it stops blocking tombstone GC.
    evict_after_ms: u64,
    /// The container subnet this node claims in its metadata (`containers.subnet`).
    subnet: Option<Subnet>,
    /// A peer evicted this node (see `heartbeat`).
    evicted: std::sync::atomic::AtomicBool,
    inner: Mutex<Inner>,
    changes: broadcast::Sender<Arc<Delta>>,
    started: Instant,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.options.node)
            .finish_non_exhaustive()
    }
}

/// The wall clock as the replica's physical time.
pub fn physical_now() -> NTP64 {
    NTP64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

fn millis_between(later: NTP64, earlier: NTP64) -> u64 {
    if later <= earlier {
        return 0;
    }
    let difference = later - earlier;
    u64::try_from(difference.to_duration().as_millis()).unwrap_or(u64::MAX)
}

fn encode_timestamp(timestamp: &Timestamp) -> Vec<u8> {
    postcard::to_allocvec(timestamp).unwrap_or_default()
}

/// What `load_replica` rebuilt.
struct LoadedReplica {
    replica: Replica,
    log_entries: u64,
    /// The stored HLC last timestamp when it is ahead of what the replay restored, else 0.
    clock_floor: NTP64,
}

/// Rebuilds the replica from the database: snapshot, then every logged delta in order.
fn load_replica(options: &NodeOptions, store: &Store) -> Result<LoadedReplica, NodeError> {
    let load_error = |message: String| NodeError::Load {
        path: options.database.clone(),
        message,
    };
    let loaded = store.load()?;
    let mut replica = match &loaded.snapshot {
        Some(bytes) => {
            let snapshot = codec::decode_snapshot(bytes, STORED_BYTES_MAX)
                .map_err(|e| load_error(format!("snapshot: {e}")))?;
            Replica::from_snapshot(options.node.clone(), options.max_clock_drift, snapshot)
                .map_err(|e| load_error(format!("snapshot: {e}")))?
        }
        None => Replica::new(options.node.clone(), options.max_clock_drift),
    };
    if replica.node() != &options.node {
        return Err(load_error(format!(
            "the database belongs to node {}, not {}",
            replica.node(),
            options.node
        )));
    }
    for (index, bytes) in loaded.log.iter().enumerate() {
        let record: LogRecord = postcard::from_bytes(bytes)
            .map_err(|e| load_error(format!("log entry {index}: {e}")))?;
        let delta = codec::decode_delta(&record.delta, STORED_BYTES_MAX)
            .map_err(|e| load_error(format!("log entry {index}: {e}")))?;
        // Replay must not be refused for drift: these changes were accepted before, and the
        // physical clock may have stepped back since. The latest stored timestamp is the
        // floor of "now" during replay.
        let now = physical_now().max(
            delta
                .max_timestamp()
                .map(|t| *t.get_time())
                .unwrap_or_default(),
        );
        replica
            .apply_delta(now, &record.origin, &delta)
            .map_err(|e| load_error(format!("log entry {index} from {}: {e}", record.origin)))?;
    }
    let mut clock_floor = NTP64(0);
    if let Some(bytes) = &loaded.hlc_last {
        let stored: Timestamp =
            postcard::from_bytes(bytes).map_err(|e| load_error(format!("stored clock: {e}")))?;
        let loaded_last = replica.clock().last();
        if stored > loaded_last {
            // The clock observed a timestamp no replayed write carries (e.g. from a delta
            // whose entries were all superseded). The replica cannot be told directly, so
            // the physical time we pass in is floored at it: see `Node::now`.
            tracing::info!(%stored, %loaded_last, "stored clock is ahead of the replayed state");
            clock_floor = *stored.get_time();
        }
    }
    Ok(LoadedReplica {
        replica,
        log_entries: loaded.log.len() as u64,
        clock_floor,
    })
}

impl Node {
    /// Opens the database and loads the replica from it.
    pub fn open(options: NodeOptions) -> Result<Node, NodeError> {
        let store = Store::open(&options.database)?;
        let LoadedReplica {
            replica,
            log_entries,
            clock_floor,
        } = load_replica(&options, &store)?;
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Ok(Node {
            options,
            evict_after_ms: EVICT_AFTER_MS,
            subnet: None,
            evicted: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(Inner {
                replica,
                store,
                peers: BTreeMap::new(),
                log_entries,
                clock_floor,
                poisoned: false,
            }),
            changes,
            started: Instant::now(),
        })
    }

    /// Sets the silence after which members are evicted (default `EVICT_AFTER_MS`).
    /// Claims `subnet` for this node's containers with the next heartbeat.
    pub fn with_subnet(mut self, subnet: Option<Subnet>) -> Node {
        self.subnet = subnet;
        self
    }

    pub fn with_evict_after_ms(mut self, evict_after_ms: u64) -> Node {
        assert!(evict_after_ms > 0, "evict_after_ms must be positive");
        self.evict_after_ms = evict_after_ms;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the replica possibly half-changed in
        // memory; the database is still the truth, so continue and let `poisoned` guard.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Writes one accepted change; on failure restores memory from disk.
    fn persist(&self, inner: &mut Inner, origin: &NodeId, delta: &Delta) -> Result<(), NodeError> {
        let record = LogRecord {
            origin: origin.clone(),
            delta: codec::encode_delta(delta),
        };
        let result = postcard::to_allocvec(&record)
            .map_err(|e| NodeError::Refused(format!("cannot encode a log record: {e}")))
            .and_then(|bytes| {
                let hlc_last = encode_timestamp(&inner.replica.clock().last());
                Ok(inner.store.append(&bytes, &hlc_last)?)
            });
        match result {
            Ok(length) => {
                inner.log_entries = length;
                if length >= self.options.compact_every_entries.max(1) {
                    self.compact(inner);
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot persist a change; reloading the state from the database");
                match load_replica(&self.options, &inner.store) {
                    Ok(reloaded) => {
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
        let hlc_last = encode_timestamp(&inner.replica.clock().last());
        match inner.store.compact(&snapshot, &hlc_last) {
            Ok(()) => {
                tracing::debug!(snapshot_bytes = snapshot.len(), "compacted the state log");
                inner.log_entries = 0;
            }
            Err(error) => tracing::warn!(%error, "cannot compact the state log"),
        }
    }

    /// Runs a local operation: change in memory, persist, then broadcast.
    fn commit_local<T>(
        &self,
        operation: impl FnOnce(&mut Replica, NTP64) -> Result<(T, Delta), NodeError>,
    ) -> Result<T, NodeError> {
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(NodeError::Poisoned);
        }
        let now = inner.now();
        let (value, delta) = operation(&mut inner.replica, now)?;
        let origin = self.options.node.clone();
        self.persist(&mut inner, &origin, &delta)?;
        drop(inner);
        // No subscriber (eager push disabled, no peers yet) is fine.
        let _ = self.changes.send(Arc::new(delta));
        Ok(value)
    }

    // ---- the sync contract (used by sync/**) ----

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.options.node
    }

    /// What this node has seen.
    pub fn summary(&self) -> Summary {
        self.lock().replica.summary()
    }

    /// What `peer` lacks given its summary; remembers the summary for GC and status.
    pub fn delta_for(&self, peer: &NodeId, theirs: &Summary) -> Delta {
        let mut inner = self.lock();
        inner.replica.observe_summary(peer, theirs);
        inner.peers.entry(peer.clone()).or_default().last_summary = Some(theirs.clone());
        inner.replica.delta_for(theirs)
    }

    /// Validates and applies a peer's delta, durably; all or nothing.
    pub fn apply_remote(&self, peer: &NodeId, delta: Delta) -> Result<Applied, NodeError> {
        let mut inner = self.lock();
        if inner.poisoned {
            return Err(NodeError::Poisoned);
        }
        let before = inner.replica.summary();
        let now = inner.now();
        let applied = inner
            .replica
            .apply_delta(now, peer, &delta)
            .map_err(|error| map_apply_error(peer, error))?;
        if applied.entries_applied > 0 || inner.replica.summary() != before {
            self.persist(&mut inner, peer, &delta)?;
        }
        Ok(applied)
    }

    /// Local changes, for the eager push.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Arc<Delta>> {
        self.changes.subscribe()
    }

    /// Every other member known from node metadata.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let inner = self.lock();
        let now = physical_now();
        inner
            .replica
            .state()
            .nodes()
            .filter(|(id, _)| *id != &self.options.node)
            .map(|(id, meta)| PeerInfo {
                node: id.clone(),
                address: meta.address,
                live: millis_between(now, *meta.heartbeat.get_time()) < self.options.down_after_ms,
                last_sync_ms_ago: inner
                    .peers
                    .get(id)
                    .and_then(|p| p.last_ok)
                    .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            })
            .collect()
    }

    /// Records the outcome of a sync with `peer`.
    pub fn record_sync(&self, peer: &NodeId, result: SyncOutcome) {
        let mut inner = self.lock();
        let record = inner.peers.entry(peer.clone()).or_default();
        match result {
            SyncOutcome::Ok {
                bytes_sent,
                bytes_received,
            } => {
                record.last_ok = Some(Instant::now());
                record.last_error = None;
                record.bytes_sent = record.bytes_sent.saturating_add(bytes_sent);
                record.bytes_received = record.bytes_received.saturating_add(bytes_received);
            }
            Failed(message) => record.last_error = Some(message),
        }
    }

    /// The configured seed peers.
    pub fn seed_peers(&self) -> Vec<SocketAddr> {
        self.options.seeds.clone()
    }

    // ---- host side ----

    /// Writes our node metadata (address, capacity, heartbeat) and collects garbage.
    pub fn heartbeat(&self) -> Result<(), NodeError> {
        let address = self.options.address;
        let capacity = self.options.capacity;
        let node = self.options.node.clone();
        self.commit_local(|replica, now| {
            let own = replica.state().nodes().find(|(id, _)| *id == &node);
            // Our first write ever is a heartbeat, so a state with writes of ours but without
            // our metadata means a peer evicted us (silent longer than evict_after_ms).
            if own.is_none()
                && replica.version_vector().get(&node) > 0
                && !self
                    .evicted
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::error!(
                    "this node was evicted by a peer; writes of ours concurrent with removals \
                     the cluster already collected may diverge: stop the daemon, empty its \
                     state_dir and start it again to rejoin with a clean state"
                );
            }
            let subnet = self.subnet.or(own.and_then(|(_, m)| m.subnet));
            let meta = NodeMeta {
                address,
                capacity,
                subnet,
                heartbeat: Timestamp::new(now, node.hlc_id()),
            };
            let delta = replica
                .put_node_meta(now, meta)
                .map_err(|e| NodeError::Refused(e.to_string()))?;
            Ok(((), delta))
        })?;
        self.evict_silent_members()?;
        let collected = self.lock().replica.collect_garbage();
        if collected > 0 {
            tracing::debug!(collected, "collected tombstones");
        }
        Ok(())
    }

    /// Evicts every member whose heartbeat is older than `evict_after_ms`. An evicted node
    /// that comes back re-adds itself with its next heartbeat.
    fn evict_silent_members(&self) -> Result<(), NodeError> {
        let now = physical_now();
        let silent: Vec<NodeId> = {
            let inner = self.lock();
            inner
                .replica
                .state()
                .nodes()
                .filter(|(id, meta)| {
                    *id != &self.options.node
                        && millis_between(now, *meta.heartbeat.get_time()) > self.evict_after_ms
                })
                .map(|(id, _)| id.clone())
                .collect()
        };
        for node in silent {
            tracing::info!(%node, evict_after_ms = self.evict_after_ms, "evicting a silent member");
            self.commit_local(|replica, now| {
                let delta = replica
                    .evict_node(now, &node)
                    .map_err(|e| NodeError::Refused(format!("evict {node}: {e}")))?;
                Ok(((), delta))
            })?;
        }
        Ok(())
    }

    /// Applies services in order; each is its own durable change. Every spec is validated
    /// before the first is written, so bad input changes nothing.
    pub fn apply_services(&self, services: Vec<NamedSpec>) -> Result<Vec<ServiceView>, NodeError> {
        for (index, NamedSpec { name, spec }) in services.iter().enumerate() {
            spec.validate()
                .map_err(|e| NodeError::Refused(format!("service {name}: {e}")))?;
            if services[..index]
                .iter()
                .any(|earlier| &earlier.name == name)
            {
                return Err(NodeError::Refused(format!(
                    "service {name} appears twice in one request"
                )));
            }
        }
        let mut views = Vec::with_capacity(services.len());
        for NamedSpec { name, spec } in services {
            let view = self.commit_local(|replica, now| {
                let delta = replica
                    .put_service(now, name.clone(), spec.clone())
                    .map_err(|e| NodeError::Refused(format!("service {name}: {e}")))?;
                let version = replica
                    .state()
                    .service(&name)
                    .map(|(_, version)| version.to_string())
                    .unwrap_or_default();
                Ok((
                    ServiceView {
                        name: name.clone(),
                        version,
                        spec: spec.clone(),
                    },
                    delta,
                ))
            })?;
            views.push(view);
        }
        Ok(views)
    }

    /// Removes a service.
    pub fn remove_service(&self, name: &ServiceName) -> Result<ServiceView, NodeError> {
        self.commit_local(|replica, now| {
            let (spec, version) = match replica.state().service(name) {
                Some((spec, version)) => (spec.clone(), version.to_string()),
                None => return Err(NodeError::NotFound(name.clone())),
            };
            let delta = replica
                .remove_service(now, name)
                .map_err(|e| NodeError::Refused(format!("service {name}: {e}")))?;
            Ok((
                ServiceView {
                    name: name.clone(),
                    version,
                    spec,
                },
                delta,
            ))
        })
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<ServiceView> {
        let inner = self.lock();
        inner
            .replica
            .state()
            .services()
            .map(|(name, spec, version)| ServiceView {
                name: name.clone(),
                version: version.to_string(),
                spec: spec.clone(),
            })
            .collect()
    }

    /// Every member, with liveness from its heartbeat.
    pub fn nodes(&self) -> Vec<NodeView> {
        let inner = self.lock();
        let now = physical_now();
        inner
            .replica
            .state()
            .nodes()
            .map(|(id, meta)| {
                let age = millis_between(now, *meta.heartbeat.get_time());
                let is_self = id == &self.options.node;
                NodeView {
                    id: id.clone(),
                    address: meta.address.to_string(),
                    live: is_self || age < self.options.down_after_ms,
                    is_self,
                    heartbeat_age_ms: Some(age),
                    subnet: meta.subnet.map(|s| s.to_string()),
                    cpu_millis: u64::from(meta.capacity.cpu_millis),
                    memory_bytes: meta.capacity.memory_bytes,
                }
            })
            .collect()
    }

    /// This node's view of the cluster and how fresh it is.
    pub fn status(&self) -> StatusView {
        let peers_info = self.peers();
        let inner = self.lock();
        let summary = inner.replica.summary();
        let state = inner.replica.state();
        let peers: Vec<PeerView> = peers_info
            .into_iter()
            .map(|peer| {
                let record = inner.peers.get(&peer.node);
                PeerView {
                    address: peer.address.to_string(),
                    live: peer.live,
                    last_sync_ms_ago: peer.last_sync_ms_ago,
                    last_error: record.and_then(|r| r.last_error.clone()),
                    same_summary: record
                        .and_then(|r| r.last_summary.as_ref())
                        .is_some_and(|s| s == &summary),
                    id: peer.node,
                }
            })
            .collect();
        let converged = peers.iter().filter(|p| p.live).all(|p| p.same_summary);
        StatusView {
            node: self.options.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            version_vector: summary
                .vv
                .dots
                .iter()
                .map(|(node, counter)| (node.to_string(), *counter))
                .collect(),
            digest: hex::encode(inner.replica.digest()),
            services: state.services().count(),
            nodes: state.nodes().count(),
            tombstones: state.tombstone_count(),
            hlc_last: inner.replica.clock().last().to_string(),
            peers,
            converged,
            evicted: self.evicted.load(std::sync::atomic::Ordering::Relaxed),
            service_errors: BTreeMap::new(),
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

    /// Runs one local operation of the reconcile loop (containers, counters, IPs) durably:
    /// applied, written to redb, then broadcast. `what` names it in the error.
    pub fn write_local<T>(
        &self,
        what: &str,
        operation: impl FnOnce(&mut Replica, NTP64) -> Result<(T, Delta), ReplicaError>,
    ) -> Result<T, NodeError> {
        self.commit_local(|replica, now| {
            operation(replica, now).map_err(|error| NodeError::Refused(format!("{what}: {error}")))
        })
    }

    /// Members whose heartbeat is recent (and this node), with their capacity.
    pub fn live_nodes(&self) -> Vec<(NodeId, Capacity)> {
        let inner = self.lock();
        let now = physical_now();
        inner
            .replica
            .state()
            .nodes()
            .filter(|(id, meta)| {
                *id == &self.options.node
                    || millis_between(now, *meta.heartbeat.get_time()) < self.options.down_after_ms
            })
            .map(|(id, meta)| (id.clone(), meta.capacity))
            .collect()
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
}

use SyncOutcome::Failed;

fn map_apply_error(peer: &NodeId, error: shoal_crdt::ApplyError) -> NodeError {
    let message = error.to_string();
    match error {
        shoal_crdt::ApplyError::StaleBase { .. } => NodeError::StaleBase {
            peer: peer.clone(),
            message,
        },
        shoal_crdt::ApplyError::ClockDrift { .. } => NodeError::ClockDrift {
            peer: peer.clone(),
            message,
        },
        _ => NodeError::Invalid {
            peer: peer.clone(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec_file::NamedSpec;
    use shoal_crdt::ServiceSpec;

    fn options(dir: &std::path::Path, name: &str, compact_every_entries: u64) -> NodeOptions {
        NodeOptions {
            node: name.parse().unwrap(),
            database: dir.join(format!("{name}.redb")),
            max_clock_drift: Duration::from_secs(1),
            seeds: Vec::new(),
            address: "127.0.0.1:7443".parse().unwrap(),
            capacity: Capacity {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            down_after_ms: 5000,
            compact_every_entries,
        }
    }

    fn spec(name: &str, image: &str) -> NamedSpec {
        NamedSpec {
            name: name.parse().unwrap(),
            spec: ServiceSpec::new(image),
        }
    }

    #[test]
    fn local_changes_survive_reopen_across_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path(), "node-a", 4);
        let node = Node::open(options.clone()).unwrap();
        node.heartbeat().unwrap();
        for index in 0..10 {
            node.apply_services(vec![spec(&format!("svc-{index}"), "/i.tar")])
                .unwrap();
        }
        node.remove_service(&"svc-3".parse().unwrap()).unwrap();
        let services = node.services();
        let digest = node.digest();
        let clock = node.lock().replica.clock().last();
        assert!(node.log_entries() < 4, "the log was compacted");
        drop(node);
        let reopened = Node::open(options).unwrap();
        assert_eq!(reopened.services(), services);
        assert_eq!(reopened.services().len(), 9);
        assert_eq!(reopened.digest(), digest);
        assert!(reopened.lock().replica.clock().last() >= clock);
        // The next local write is stamped after everything written before the restart.
        let after = reopened
            .apply_services(vec![spec("after", "/i.tar")])
            .unwrap();
        let after: Timestamp = after[0].version.parse().unwrap();
        assert!(after > clock);
    }

    #[test]
    fn remote_deltas_are_durable_and_refused_ones_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let a = Node::open(options(dir.path(), "node-a", 1000)).unwrap();
        let b_options = options(dir.path(), "node-b", 1000);
        let b = Node::open(b_options.clone()).unwrap();
        let mut a_changes = a.subscribe_changes();
        a.apply_services(vec![spec("web", "/web.tar")]).unwrap();
        let first = a_changes.try_recv().expect("local change broadcast");
        let applied = b.apply_remote(a.node_id(), (*first).clone()).unwrap();
        assert_eq!(applied.entries_applied, 1);

        // Two more changes on a; b receives only the last one: its base is missing.
        a.apply_services(vec![spec("db", "/db.tar")]).unwrap();
        a.apply_services(vec![spec("cache", "/cache.tar")]).unwrap();
        let _skipped = a_changes.try_recv().unwrap();
        let last = a_changes.try_recv().unwrap();
        let before = b.digest();
        let error = b.apply_remote(a.node_id(), (*last).clone()).unwrap_err();
        assert!(matches!(error, NodeError::StaleBase { .. }), "{error}");
        assert_eq!(b.digest(), before);
        let stored_entries = b.log_entries();
        drop(b);

        let b = Node::open(b_options).unwrap();
        assert_eq!(
            b.digest(),
            before,
            "the refused delta did not reach the disk"
        );
        assert_eq!(b.log_entries(), stored_entries);
        let names: Vec<String> = b.services().iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["web"]);

        // Anti-entropy then brings b up to date.
        let delta = a.delta_for(b.node_id(), &b.summary());
        b.apply_remote(a.node_id(), delta).unwrap();
        assert_eq!(b.services(), a.services());
    }

    #[test]
    fn a_database_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a_options = options(dir.path(), "node-a", 1);
        let a = Node::open(a_options.clone()).unwrap();
        a.apply_services(vec![spec("web", "/web.tar")]).unwrap();
        drop(a);
        let mut wrong = options(dir.path(), "node-b", 1);
        wrong.database = a_options.database.clone();
        let error = Node::open(wrong).unwrap_err();
        assert!(error.to_string().contains("node-a.redb"), "{error}");
    }

    #[test]
    fn status_reports_self_and_convergence_as_far_as_known() {
        let dir = tempfile::tempdir().unwrap();
        let a = Node::open(options(dir.path(), "node-a", 1000)).unwrap();
        let b = Node::open(options(dir.path(), "node-b", 1000)).unwrap();
        a.heartbeat().unwrap();
        b.heartbeat().unwrap();
        b.apply_remote(a.node_id(), a.delta_for(b.node_id(), &b.summary()))
            .unwrap();
        a.apply_remote(b.node_id(), b.delta_for(a.node_id(), &a.summary()))
            .unwrap();
        // a has not yet heard b's summary since b applied a's changes.
        let status = a.status();
        assert_eq!(status.nodes, 2);
        assert_eq!(status.peers.len(), 1);
        assert!(!status.converged);
        let _ = b.delta_for(a.node_id(), &a.summary());
        let _ = a.delta_for(b.node_id(), &b.summary());
        let status = a.status();
        assert!(status.converged, "{status:?}");
        assert_eq!(status.digest, hex::encode(b.digest()));
    }

    #[test]
    fn silent_members_are_evicted_after_evict_after_ms() {
        let dir = tempfile::tempdir().unwrap();
        let a = Node::open(options(dir.path(), "node-a", 1000))
            .unwrap()
            .with_evict_after_ms(300);
        let b = Node::open(options(dir.path(), "node-b", 1000)).unwrap();
        b.heartbeat().unwrap();
        a.apply_remote(b.node_id(), b.delta_for(a.node_id(), &a.summary()))
            .unwrap();
        a.heartbeat().unwrap();
        assert_eq!(a.nodes().len(), 2, "b is still a member");
        std::thread::sleep(Duration::from_millis(400));
        a.heartbeat().unwrap();
        let members: Vec<String> = a.nodes().iter().map(|n| n.id.to_string()).collect();
        assert_eq!(members, ["node-a"]);
    }

    #[test]
    fn the_clock_never_goes_back_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path(), "node-a", 1000);
        let node = Node::open(options.clone()).unwrap();
        node.apply_services(vec![spec("web", "/web.tar")]).unwrap();
        let snapshot = codec::encode_snapshot(&node.lock().replica.to_snapshot());
        drop(node);
        // As if the clock had observed a timestamp an hour ahead of this host's wall clock
        // that no stored write carries.
        let ahead = Timestamp::new(
            physical_now() + NTP64::from(Duration::from_secs(3600)),
            options.node.hlc_id(),
        );
        let store = Store::open(&options.database).unwrap();
        store
            .compact(&snapshot, &postcard::to_allocvec(&ahead).unwrap())
            .unwrap();
        drop(store);
        let node = Node::open(options).unwrap();
        let written = node.apply_services(vec![spec("db", "/db.tar")]).unwrap();
        let version: Timestamp = written[0].version.parse().unwrap();
        assert!(version > ahead, "{version} is not after the stored {ahead}");
    }

    #[test]
    fn a_node_learns_that_it_was_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let a = Node::open(options(dir.path(), "node-a", 1000))
            .unwrap()
            .with_evict_after_ms(200);
        let b = Node::open(options(dir.path(), "node-b", 1000)).unwrap();
        b.heartbeat().unwrap();
        a.apply_remote(b.node_id(), b.delta_for(a.node_id(), &a.summary()))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        a.heartbeat().unwrap();
        assert!(!b.status().evicted);
        b.apply_remote(a.node_id(), a.delta_for(b.node_id(), &b.summary()))
            .unwrap();
        b.heartbeat().unwrap();
        assert!(b.status().evicted);
        assert!(!a.status().evicted);
    }

    #[test]
    fn a_request_with_one_bad_spec_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path(), "node-a", 1000)).unwrap();
        node.heartbeat().unwrap();
        let before = node.digest();
        let mut bad = spec("db", "/db.tar");
        bad.spec.image_digest = Some("md5:nope".to_string());
        let error = node
            .apply_services(vec![spec("web", "/web.tar"), bad])
            .unwrap_err();
        assert!(error.to_string().contains("db"), "{error}");
        let twice = node
            .apply_services(vec![spec("web", "/a.tar"), spec("web", "/b.tar")])
            .unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        assert_eq!(node.digest(), before);
        assert!(node.services().is_empty());
    }
}
