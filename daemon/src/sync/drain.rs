//! Draining another node over sync: [`answer`] serves `POST /v1/drain` (the answering node
//! writes its own drain, so a node's metadata stays written by that node alone), and
//! [`ask_drain`] is the caller's side on a [`PeerSession`].
//!
//! Only a member may ask (a certificate of the cluster CA whose node is not in the state, or
//! was evicted, is refused with 403, and so is one with this node's own name), as only a
//! member may write services or evict a node: draining is an operator's change like those.

use std::sync::Arc;

use http::StatusCode;
use shoal_crdt::{Drain, NodeId, ReplicaError};

use super::SyncError;
use super::client::PeerSession;
use super::wire::{self, DrainRequest, PATH_DRAIN};
use crate::state::{Node, NodeError};

/// A refusal of `POST /v1/drain`: the status and the reason for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRefusal {
    pub status: StatusCode,
    pub message: String,
}

impl DrainRefusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Answers `POST /v1/drain` from `peer` (its id from its certificate) with `body`: decodes
/// it in full, checks the caller and the target, then writes this node's drain. Returns the
/// drain now written.
pub async fn answer(
    node: Arc<Node>,
    peer: &NodeId,
    body: &[u8],
) -> Result<Option<Drain>, DrainRefusal> {
    let request = wire::decode_drain_request(body)
        .map_err(|error| DrainRefusal::new(error.status(), error.to_string()))?;
    let me = node.node_id().clone();
    if peer == &me {
        return Err(DrainRefusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "the caller presents this node's own name {me}: another daemon runs with this \
                 node's certificate"
            ),
        ));
    }
    if request.node != me {
        return Err(DrainRefusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("this is node {me}, not {}", request.node),
        ));
    }
    let checked = node.clone();
    let asker = peer.clone();
    // Both read the state's mutex and the write commits to redb (fsync): off the async workers.
    let written = tokio::task::spawn_blocking(move || {
        if !checked.is_member(&asker) {
            return Err(DrainRefusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "node {asker} is not a member of this cluster (no node metadata here, or \
                     evicted): only members may drain a node"
                ),
            ));
        }
        checked
            .set_drain(request.deadline_ms)
            .map_err(|error| DrainRefusal::new(status_for(&error), error.to_string()))
    })
    .await
    .map_err(|error| DrainRefusal::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))??;
    tracing::info!(%peer, drain = ?written, "drain changed at a peer's request");
    Ok(written)
}

fn status_for(error: &NodeError) -> StatusCode {
    match error {
        NodeError::Operation {
            source: ReplicaError::Drain(_),
            ..
        } => StatusCode::BAD_REQUEST,
        NodeError::ClockAhead(_) | NodeError::Contested(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Asks the peer of `session` to drain itself for `deadline_ms`, or to undrain (`None`). A
/// refusal is a [`SyncError::Status`] with the peer's reason.
pub async fn ask_drain(
    session: &mut PeerSession,
    deadline_ms: Option<u64>,
) -> Result<(), SyncError> {
    let request = DrainRequest {
        node: session.peer().clone(),
        deadline_ms,
    };
    let reply = session
        .post(PATH_DRAIN, wire::encode_drain_request(&request))
        .await?;
    if reply.status != StatusCode::NO_CONTENT {
        return Err(SyncError::Status {
            peer: session.address(),
            path: PATH_DRAIN,
            status: reply.status.as_u16(),
            message: reply.message(),
        });
    }
    Ok(())
}
