//! `shoal logs` on the daemon's side of the API. The target is located over the replicated
//! state (container records, on every node); this node's containers are read through the
//! reconciler, every other node's from that node: `GET /v1/logs` over the node's sync endpoint
//! (mutual TLS with this node's certificate, the endpoint gossip dials with), the peer's
//! certificate required to name the node the record names. The nodes are asked at once, each
//! within `REMOTE_LOG_TIMEOUT_MS`; a node whose heartbeat is silent is not dialled. What cannot
//! be read comes back as a `LogChunk` with an `error` naming the node and its address, so a
//! service's other containers still show and the CLI exits with an error.
//!
//! Follow (`shoal logs -f`): the CLI calls again with the offsets of the previous reply every
//! `FOLLOW_INTERVAL_MS` (at once when a reply says `more`), and each call asks each node once,
//! from those offsets. Following a remote container is therefore polling it over sync at the
//! CLI's interval, and it stops when the CLI stops or disconnects: nothing runs in the daemon
//! between calls. Each call dials its own connection (one handshake per node per call), which
//! keeps no session state to go stale when a peer restarts.
//!
//! Bounds: one reply carries at most `LOG_REPLY_BYTES_MAX` of output, split evenly over its
//! containers' streams (at most `LOG_CHUNK_BYTES_MAX` each); a remote piece is also capped to
//! fit the sync `body_bytes_max`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_crdt::{ContainerId, ContainerRecord, NodeId};

use super::{CONTAINERS_DISABLED, PeerAccess, to_value};
use crate::api::{LOG_REPLY_BYTES_MAX, LogChunk, REMOTE_LOG_TIMEOUT_MS, Reply};
use crate::containers::logs::locate;
use crate::containers::{LOG_CHUNK_BYTES_MAX, Located, LogError, LogRead, Reconciler};
use crate::state::Node;
use crate::sync::wire::{self, LogQuery};
use crate::sync::{self, SyncError};

type Offsets = BTreeMap<String, (u64, u64)>;

/// Another node's share of one `logs` call.
struct Remote {
    node: NodeId,
    /// Its sync address from its node metadata, if the state still has it.
    address: Option<SocketAddr>,
    live: bool,
    containers: Vec<String>,
}

/// This node's chunks, the other nodes to ask, and the per-stream cap of this call.
struct Plan {
    chunks: Vec<LogChunk>,
    remotes: Vec<Remote>,
    stream_bytes_max: u64,
}

/// Answers `Request::Logs`.
pub(super) async fn answer(
    node: Arc<Node>,
    containers: Option<Arc<Reconciler>>,
    peers: Option<PeerAccess>,
    target: String,
    offsets: Offsets,
) -> Reply {
    let plan = {
        let offsets = offsets.clone();
        // Reads the state's mutex and this node's log files: off the async workers.
        tokio::task::spawn_blocking(move || plan(&node, containers.as_deref(), &target, &offsets))
            .await
    };
    let plan = match plan {
        Ok(Ok(plan)) => plan,
        Ok(Err(error)) => return Reply::Error(error.to_string()),
        Err(error) => return Reply::Error(format!("logs failed: {error}")),
    };
    let mut chunks = plan.chunks;
    let fetches = plan
        .remotes
        .into_iter()
        .map(|remote| fetch_remote(peers.as_ref(), remote, &offsets, plan.stream_bytes_max));
    for fetched in futures::future::join_all(fetches).await {
        chunks.extend(fetched);
    }
    chunks.sort_by(|a, b| (&a.node, &a.container).cmp(&(&b.node, &b.container)));
    to_value(&chunks)
}

/// Most bytes of each stream of each of `containers` one reply may carry.
fn stream_bytes_max(containers: usize) -> u64 {
    let streams = u64::try_from(containers.max(1))
        .unwrap_or(u64::MAX)
        .saturating_mul(2);
    (LOG_REPLY_BYTES_MAX / streams).clamp(1, LOG_CHUNK_BYTES_MAX)
}

fn plan(
    node: &Node,
    containers: Option<&Reconciler>,
    target: &str,
    offsets: &Offsets,
) -> Result<Plan, LogError> {
    let me = node.node_id().clone();
    let (records, addresses, live) = node.read_with_live(|state, live| {
        let records: Vec<ContainerRecord> = state.containers().cloned().collect();
        let addresses: BTreeMap<NodeId, SocketAddr> = state
            .nodes()
            .map(|(id, meta)| (id.clone(), meta.address))
            .collect();
        (records, addresses, live.clone())
    });
    let runtime_ids = containers.map(Reconciler::runtime_ids).unwrap_or_default();
    let located = locate(target, &me, &records, &runtime_ids)?;
    let stream_bytes_max = stream_bytes_max(located.len());
    let mut chunks = Vec::new();
    let mut elsewhere: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    for Located {
        node: at,
        container,
    } in located
    {
        if at != me {
            elsewhere.entry(at).or_default().push(container);
            continue;
        }
        let from = from(offsets, &container);
        let read = match containers {
            None => Err(CONTAINERS_DISABLED.to_string()),
            Some(reconciler) => reconciler
                .read_log(&container, from, stream_bytes_max)
                .map_err(|error| error.to_string()),
        };
        chunks.push(match read {
            Ok(read) => chunk_view(container, &me, read),
            Err(message) => error_chunk(container, &me, from, message),
        });
    }
    let remotes = elsewhere
        .into_iter()
        .map(|(node, containers)| Remote {
            address: addresses.get(&node).copied(),
            live: live.contains(&node),
            node,
            containers,
        })
        .collect();
    Ok(Plan {
        chunks,
        remotes,
        stream_bytes_max,
    })
}

fn from(offsets: &Offsets, container: &str) -> (u64, u64) {
    offsets.get(container).copied().unwrap_or((0, 0))
}

fn chunk_view(container: String, node: &NodeId, read: LogRead) -> LogChunk {
    LogChunk {
        container,
        node: node.to_string(),
        stdout: String::from_utf8_lossy(&read.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&read.stderr).into_owned(),
        stdout_offset: read.stdout_offset,
        stderr_offset: read.stderr_offset,
        running: read.running,
        more: read.more,
        error: None,
    }
}

/// A container that could not be read: no output, the caller's offsets unchanged.
fn error_chunk(container: String, node: &NodeId, from: (u64, u64), message: String) -> LogChunk {
    LogChunk {
        container,
        node: node.to_string(),
        stdout: String::new(),
        stderr: String::new(),
        stdout_offset: from.0,
        stderr_offset: from.1,
        running: false,
        more: false,
        error: Some(message),
    }
}

/// One other node's containers, asked on one connection within `REMOTE_LOG_TIMEOUT_MS`.
async fn fetch_remote(
    peers: Option<&PeerAccess>,
    remote: Remote,
    offsets: &Offsets,
    stream_bytes_max: u64,
) -> Vec<LogChunk> {
    let Remote {
        node,
        address,
        live,
        containers,
    } = remote;
    let all_failed = |message: String| -> Vec<LogChunk> {
        containers
            .iter()
            .map(|id| error_chunk(id.clone(), &node, from(offsets, id), message.clone()))
            .collect()
    };
    let Some(address) = address else {
        return all_failed(format!(
            "node {node} has no sync address in the cluster state; its logs cannot be read"
        ));
    };
    if !live {
        return all_failed(format!(
            "node {node} at {address} is down (no recent heartbeat); its logs cannot be read"
        ));
    }
    let Some(peers) = peers else {
        return all_failed(format!(
            "node {node} at {address}: this daemon does not dial other nodes"
        ));
    };
    let stream_bytes_max =
        stream_bytes_max.min(wire::log_stream_bytes_max(peers.limits.body_bytes_max));
    let fetch = async {
        let mut session =
            sync::connect(&peers.endpoint, address, Some(&node), &peers.limits).await?;
        let mut chunks = Vec::new();
        for container in &containers {
            let start = from(offsets, container);
            let Ok(id) = container.parse::<ContainerId>() else {
                // Ids come from the state's records, which are validated; kept total anyway.
                chunks.push(error_chunk(
                    container.clone(),
                    &node,
                    start,
                    format!("container id {container:?} is not valid"),
                ));
                continue;
            };
            let query = LogQuery {
                container: id,
                stdout_offset: start.0,
                stderr_offset: start.1,
                stream_bytes_max,
            };
            match sync::fetch_log(&mut session, &query).await {
                Ok(piece) => chunks.push(LogChunk {
                    container: container.clone(),
                    node: node.to_string(),
                    stdout: String::from_utf8_lossy(&piece.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&piece.stderr).into_owned(),
                    stdout_offset: piece.stdout_offset,
                    stderr_offset: piece.stderr_offset,
                    running: piece.running,
                    more: piece.more,
                    error: None,
                }),
                // The node answered for this container (not there, a log file error): the
                // others on the same connection may still be read.
                Err(error @ SyncError::Status { .. }) => chunks.push(error_chunk(
                    container.clone(),
                    &node,
                    start,
                    format!("node {node}: {error}"),
                )),
                Err(error) => return Err(error),
            }
        }
        session.close();
        Ok::<_, SyncError>(chunks)
    };
    match tokio::time::timeout(Duration::from_millis(REMOTE_LOG_TIMEOUT_MS), fetch).await {
        Ok(Ok(chunks)) => chunks,
        Ok(Err(error)) => all_failed(format!("node {node} at {address}: {error}")),
        Err(_) => all_failed(format!(
            "node {node} at {address}: no answer within {REMOTE_LOG_TIMEOUT_MS} ms"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_splits_its_budget_over_its_containers_within_the_chunk_limit() {
        assert_eq!(stream_bytes_max(0), LOG_CHUNK_BYTES_MAX);
        assert_eq!(stream_bytes_max(1), LOG_CHUNK_BYTES_MAX);
        assert_eq!(stream_bytes_max(64), LOG_REPLY_BYTES_MAX / 128);
        assert_eq!(stream_bytes_max(usize::MAX), 1);
        for containers in [1, 7, 8, 9, 100, 5000] {
            let total = stream_bytes_max(containers) * 2 * containers as u64;
            assert!(total <= LOG_REPLY_BYTES_MAX, "{containers}: {total}");
        }
    }
}
