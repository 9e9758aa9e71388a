//! Remote `shoal logs` over sync: the [`LogSource`] seam through which the sync server reads
//! this node's container logs ([`answer`], for `GET /v1/logs`), and [`fetch_log`], the
//! caller's side on a [`PeerSession`].
//!
//! The sync room knows nothing of containers: the agent implements [`LogSource`] over the
//! reconciler, and a node without containers serves no source, so every container is "not on
//! this node" there. Reading happens on a blocking thread (log files, the state's mutex). The
//! caller is any peer whose certificate verified against the cluster CA (the server refuses
//! everyone else in the handshake); reading logs changes nothing.

use std::path::PathBuf;
use std::sync::Arc;

use http::StatusCode;
use shoal_crdt::{ContainerId, NodeId};

use super::SyncError;
use super::client::PeerSession;
use super::wire::{self, LogPiece, LogQuery, PATH_LOGS};

/// Where the sync server reads this node's container logs.
pub trait LogSource: Send + Sync {
    /// The output of `query.container` from its offsets, at most `query.stream_bytes_max`
    /// bytes of each stream. A container this node neither records nor holds is
    /// [`LogSourceError::NotHere`].
    fn read(&self, query: &LogQuery) -> Result<LogPiece, LogSourceError>;
}

/// Why a [`LogSource`] could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LogSourceError {
    #[error("container {0} is not on this node")]
    NotHere(ContainerId),
    #[error("log file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A refusal of `GET /v1/logs`: the status and the reason for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRefusal {
    pub status: StatusCode,
    pub message: String,
}

/// Answers `GET /v1/logs` with `query` on node `me`: reads through `source` (none when this
/// node runs no containers), each stream capped so the reply fits in `body_bytes_max`, and
/// returns the encoded [`LogPiece`].
pub async fn answer(
    source: Option<Arc<dyn LogSource>>,
    me: &NodeId,
    mut query: LogQuery,
    body_bytes_max: usize,
) -> Result<Vec<u8>, LogRefusal> {
    let not_here = |container: &ContainerId, why: &str| LogRefusal {
        status: StatusCode::NOT_FOUND,
        message: format!("container {container} is not on node {me}{why}"),
    };
    let Some(source) = source else {
        return Err(not_here(
            &query.container,
            " (containers are disabled on it)",
        ));
    };
    query.stream_bytes_max = query
        .stream_bytes_max
        .min(wire::log_stream_bytes_max(body_bytes_max));
    let cap = query.stream_bytes_max;
    let read = tokio::task::spawn_blocking(move || source.read(&query))
        .await
        .map_err(|error| LogRefusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("reading the log failed: {error}"),
        })?;
    let piece = match read {
        Ok(piece) => piece,
        Err(LogSourceError::NotHere(container)) => return Err(not_here(&container, "")),
        Err(error @ LogSourceError::Io { .. }) => {
            return Err(LogRefusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: error.to_string(),
            });
        }
    };
    // The source must honour the cap; the caller checks it again when decoding.
    if piece.stdout.len() as u64 > cap || piece.stderr.len() as u64 > cap {
        return Err(LogRefusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the log source returned more than the {cap} bytes asked for"),
        });
    }
    let body = wire::encode_log_piece(&piece);
    assert!(
        body.len() <= body_bytes_max.max(wire::LOG_PIECE_OVERHEAD_BYTES + 2),
        "a capped log piece of {} bytes exceeds body_bytes_max {body_bytes_max}",
        body.len()
    );
    Ok(body)
}

/// Asks the peer of `session` for the output `query` names. A container that is not on that
/// node is a [`SyncError::Status`] with 404.
pub async fn fetch_log(session: &mut PeerSession, query: &LogQuery) -> Result<LogPiece, SyncError> {
    let reply = session.get(&query.path_and_query()).await?;
    if reply.status != StatusCode::OK {
        return Err(SyncError::Status {
            peer: session.address(),
            path: PATH_LOGS,
            status: reply.status.as_u16(),
            message: reply.message(),
        });
    }
    wire::decode_log_piece(
        &reply.body,
        session.body_bytes_max(),
        query.stream_bytes_max,
    )
    .map_err(|source| SyncError::Decode {
        peer: session.address(),
        source,
    })
}
