//! `shoal node drain|undrain` on the daemon's side of the API. A node's drain is in its own
//! metadata, which only that node writes: this node's is written here, another node's is
//! asked of that node over its sync endpoint (`POST /v1/drain`, mutual TLS with this node's
//! certificate, the peer's certificate required to name the node asked), within
//! `REMOTE_DRAIN_TIMEOUT_MS`. The change then spreads from its owner like any other write.
//!
//! Refused, changing nothing: a node that is not a member, a deadline out of bounds (checked
//! here before anything is dialled, and again by the owner), a node that is down or does not
//! answer (the message says how to evict a node that is gone).

use std::sync::Arc;
use std::time::Duration;

use shoal_crdt::{Drain, NodeId};

use super::{PeerAccess, to_value};
use crate::api::{NodeChangeView, REMOTE_DRAIN_TIMEOUT_MS, Reply};
use crate::state::{Node, NodeError};
use crate::sync::{self, SyncError};

/// Answers `Request::NodeDrain` (`deadline_ms` given) and `Request::NodeUndrain` (none).
pub(super) async fn answer(
    node: Arc<Node>,
    peers: Option<PeerAccess>,
    target: NodeId,
    deadline_ms: Option<u64>,
) -> Reply {
    let (action, change) = if deadline_ms.is_some() {
        ("drain", "drained")
    } else {
        ("undrain", "undrained")
    };
    let view = |asked: Option<String>| NodeChangeView {
        node: target.clone(),
        change: change.to_owned(),
        deadline_ms,
        asked,
    };
    if let Some(deadline_ms) = deadline_ms {
        let drain = Drain {
            since_unix_ms: 0,
            deadline_ms,
        };
        if let Err(error) = drain.validate() {
            return Reply::Error(format!("drain of node {target}: {error}"));
        }
    }
    if &target == node.node_id() {
        let written = tokio::task::spawn_blocking(move || node.set_drain(deadline_ms)).await;
        return match written {
            Ok(Ok(_)) => to_value(&view(None)),
            Ok(Err(error)) => Reply::Error(error.to_string()),
            Err(error) => Reply::Error(format!("{action} failed: {error}")),
        };
    }
    let members = {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.members()).await
    };
    let members = match members {
        Ok(members) => members,
        Err(error) => return Reply::Error(format!("{change} failed: {error}")),
    };
    let Some(member) = members.into_iter().find(|member| member.id == target) else {
        return Reply::Error(NodeError::UnknownNode(target).to_string());
    };
    let address = member.meta.address;
    let gone = |why: String| {
        Reply::Error(format!(
            "node {target} did not answer: {why}; a node that is gone can be evicted with \
             `shoal node evict {target}`"
        ))
    };
    if !member.live {
        return gone(format!(
            "it is down at {address} (its last heartbeat is {} ms old)",
            member.heartbeat_age_ms
        ));
    }
    let Some(peers) = peers else {
        return Reply::Error(format!(
            "node {target} at {address}: this daemon does not dial other nodes"
        ));
    };
    let ask = async {
        let mut session =
            sync::connect(&peers.endpoint, address, Some(&target), &peers.limits).await?;
        let asked = sync::ask_drain(&mut session, deadline_ms).await;
        session.close();
        asked
    };
    match tokio::time::timeout(Duration::from_millis(REMOTE_DRAIN_TIMEOUT_MS), ask).await {
        Ok(Ok(())) => to_value(&view(Some(address.to_string()))),
        Ok(Err(SyncError::Status {
            status, message, ..
        })) => Reply::Error(format!(
            "node {target} at {address} refused the {action}: {status} {message}"
        )),
        Ok(Err(error)) => gone(format!("{error}")),
        Err(_) => gone(format!(
            "no answer from {address} within {REMOTE_DRAIN_TIMEOUT_MS} ms"
        )),
    }
}
