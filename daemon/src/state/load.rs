//! How the replica is rebuilt from redb at startup (and after a failed write): the stored
//! snapshot, then every logged delta in order, then the clock floor. A log record is the
//! node a delta came from (ourselves for local changes) and the delta's codec bytes.

use serde::{Deserialize, Serialize};
use shoal_crdt::{NTP64, NodeId, Replica, Timestamp, codec};

use super::node::{NodeError, NodeOptions};
use super::store::Store;

/// Largest snapshot or log record decoded at startup.
pub const STORED_BYTES_MAX: usize = 1 << 30;

/// One log entry: the node a delta came from (ourselves for local changes) and its bytes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LogRecord {
    pub origin: NodeId,
    pub delta: Vec<u8>,
}

/// What `load_replica` rebuilt.
pub(super) struct LoadedReplica {
    pub replica: Replica,
    pub log_entries: u64,
    /// The stored HLC last timestamp when it is ahead of what the replay restored, else 0.
    pub clock_floor: NTP64,
}

pub(super) fn encode_timestamp(timestamp: &Timestamp) -> Result<Vec<u8>, NodeError> {
    postcard::to_allocvec(timestamp).map_err(|error| NodeError::Encode {
        what: "the clock's last timestamp",
        message: error.to_string(),
    })
}

/// Rebuilds the replica from the database: snapshot, then every logged delta in order.
/// `now` is the physical time; replay never refuses a stored delta for clock drift.
pub(super) fn load_replica(
    options: &NodeOptions,
    store: &Store,
    now: NTP64,
) -> Result<LoadedReplica, NodeError> {
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
    // What was accepted is taken again, also what a contested identity adopted, and what it
    // shows of writers sharing a name is not evidence now (it was seen when it came).
    replica.set_replaying(true);
    for (index, bytes) in loaded.log.iter().enumerate() {
        let record: LogRecord = postcard::from_bytes(bytes)
            .map_err(|e| load_error(format!("log entry {index}: {e}")))?;
        let delta = codec::decode_delta(&record.delta, STORED_BYTES_MAX)
            .map_err(|e| load_error(format!("log entry {index}: {e}")))?;
        // Replay must not be refused for drift: these changes were accepted before, and the
        // physical clock may have stepped back since. The latest stored timestamp is the
        // floor of "now" during replay.
        let now = now.max(
            delta
                .max_timestamp()
                .map(|t| *t.get_time())
                .unwrap_or_default(),
        );
        replica
            .apply_delta(now, &record.origin, &delta)
            .map_err(|e| load_error(format!("log entry {index} from {}: {e}", record.origin)))?;
    }
    replica.set_replaying(false);
    let mut clock_floor = NTP64(0);
    if let Some(bytes) = &loaded.hlc_last {
        let stored: Timestamp =
            postcard::from_bytes(bytes).map_err(|e| load_error(format!("stored clock: {e}")))?;
        let loaded_last = replica.clock().last();
        if stored > loaded_last {
            // The clock observed a timestamp no replayed write carries (e.g. from a delta
            // whose entries were all superseded). The replica cannot be told directly, so
            // the physical time the node passes in is floored at it.
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
