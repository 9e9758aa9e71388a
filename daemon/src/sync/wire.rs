//! The sync protocol on the wire: paths, body framing and status codes.
//!
//! Version 1. The state requests are `POST` with `content-type: application/vnd.shoal`:
//! - `/v1/sync`: body = our `Summary` (shoal_crdt::codec). Response 200, body =
//!   `u32 big-endian length of D` ++ `D` ++ `S`, where `D` is the encoded `Delta` the caller
//!   lacks and `S` the server's encoded `Summary`, so the caller can push back what the server
//!   lacks with `/v1/push`. The body may instead be a `CompactSummary` (the version vector's
//!   digest and the counters that moved lately; `shoal_crdt::compact`): then `S` is the
//!   server's `SummaryReply` (its counters where they differ, or its whole summary), and when
//!   the server cannot rebuild the caller's version vector from it the answer is **409**
//!   ([`SEND_FULL_SUMMARY`]) and the caller sends the full summary. A server built before
//!   compact summaries refuses one with 400; the caller then sends the full summary too.
//! - `/v1/push`: body = an encoded `Delta`. Response 204 once it is durable and applied.
//!   A caller does not push a delta whose encoding exceeds `body_bytes_max`; the peer pulls it.
//!   An eager push says how many more times it may be forwarded: `/v1/push?hops=<n>`
//!   ([`PushQuery`], at most [`PUSH_HOPS_MAX`]); a receiver for which it held something new
//!   forwards the same body with `hops=<n - 1>` (epidemic push, see `super::gossip`). No
//!   query is `hops=0`: the push-back of an exchange, never forwarded.
//!
//! When the delta for a `/v1/sync` caller does not fit in the server's `body_bytes_max`
//! (a new node joining a large state, or one that fell far behind), the server answers
//! **303** with a `text/plain` reason instead: the caller fetches the server's whole state
//! as one encoded `Full` delta, in pieces, and applies it whole (design in
//! `shoal_crdt`'s `transfer` module, cache and download in [`super::transfer`]):
//! - `GET /v1/snapshot?offset=<o>&bytes_max=<n>` starts (or joins) a transfer,
//!   `GET /v1/snapshot?transfer=<id>&offset=<o>&bytes_max=<n>` continues one
//!   ([`SnapshotQuery`]): response 200, body = an encoded [`SnapshotPiece`]: the transfer id
//!   (the SHA-256 of the whole encoded delta, 64 hex digits in the query), the whole length,
//!   the offset and at most `bytes_max` bytes from it (the server lowers it so the reply fits
//!   its `body_bytes_max`, see [`snapshot_piece_bytes_max`]). The query is at most
//!   [`SNAPSHOT_QUERY_BYTES_MAX`] bytes. 410 when the server no longer holds that transfer (the
//!   caller starts again), 416 for an offset past its end.
//!
//! Remote `shoal logs` is a `GET` without a body, answered by the node that runs the container:
//! - `/v1/logs?container=<id>&stdout=<offset>&stderr=<offset>&bytes_max=<n>` ([`LogQuery`]):
//!   response 200, body = an encoded [`LogPiece`]: the container's stdout and stderr from the
//!   given byte offsets, at most `bytes_max` bytes of each (the server lowers it so the reply
//!   fits its `body_bytes_max`, see [`log_stream_bytes_max`]), the offsets to ask from next
//!   time, and whether more is already written. The query is at most [`LOG_QUERY_BYTES_MAX`]
//!   bytes, holds exactly these four keys once each, and a container id needs no escaping.
//!
//! `shoal node drain|undrain` of another node asks that node to write its own metadata:
//! - `POST /v1/drain`, body = an encoded [`DrainRequest`] (at most [`DRAIN_BODY_BYTES_MAX`]
//!   bytes): the node it is meant for and the deadline (none: undrain). Response 204 once the
//!   answering node's drain is durable. 403 when the caller is not a member, 421 when the
//!   answering node is not the one named, 400 for a deadline out of bounds, 503 while the
//!   answering node may not write (its clock ahead, its name contested).
//!
//! Membership (`swim`) sends one SWIM packet per request:
//! - `POST /v1/swim`, body = the packet as foca encodes it (postcard), at most
//!   [`SWIM_BODY_BYTES_MAX`] bytes. Response 204 once the driver has it queued; 400 when its
//!   header names a sender other than the caller's certificate or does not decode, 404 on a
//!   node that runs no SWIM, 503 while the driver's inbox is full (SWIM counts it as lost).
//!
//! Every encoded part carries a magic and a format version: the codec's for states, `SHLG`
//! and [`LOG_FORMAT_VERSION`] for log pieces, `SHSN` and [`SNAPSHOT_FORMAT_VERSION`] for
//! snapshot pieces, `SHDR` and [`DRAIN_FORMAT_VERSION`] for drain requests. Refusals answer
//! with a `text/plain` reason:
//! 400 malformed, truncated or wrong-version body, a body longer or shorter than its
//! `content-length`, malformed log query, or a body on `GET`;
//! 403 a push from a peer that is not a member and does not join with it (`Node::apply_push`),
//! or from a peer with the answering node's own name; 404 unknown path (including other
//! protocol versions), or a container that is not on the answering node; 405 wrong method
//! (`POST` for sync and push, `GET` for logs and snapshots); 409 stale base (the caller pulls
//! first), or a compact summary that does not rebuild (the caller sends the full one); 410 snapshot transfer no longer held; 413 body over the limit (refused before it
//! is read in full); 414 log or snapshot query over its limit; 416 snapshot offset past the
//! end; 422 clock too far ahead; 500 storage or log file failure; 503 server busy. A refused
//! request changes nothing, and only `/v1/push` and `/v1/drain` change the answering node's
//! replicated state (reading logs or snapshots changes nothing at all).

use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use shoal_crdt::codec::{self, DecodeError};
use shoal_crdt::{CompactSummary, ContainerId, Delta, NodeId, Summary, SummaryReply};

pub const PATH_SYNC: &str = "/v1/sync";
pub const PATH_PUSH: &str = "/v1/push";
pub const PATH_LOGS: &str = "/v1/logs";
pub const PATH_SNAPSHOT: &str = "/v1/snapshot";
pub const PATH_DRAIN: &str = "/v1/drain";
pub const PATH_SWIM: &str = "/v1/swim";
/// The path prefix of the protocol version this build speaks.
pub const PATH_PREFIX: &str = "/v1/";
pub const CONTENT_TYPE: &str = "application/vnd.shoal";
const LENGTH_PREFIX_BYTES: usize = 4;

/// Longest query string `GET /v1/logs` accepts (a 128-character container id and three
/// 20-digit numbers need under 220); a longer one is refused with 414.
pub const LOG_QUERY_BYTES_MAX: usize = 512;
/// Format version of an encoded [`LogPiece`]; bump on an incompatible change.
pub const LOG_FORMAT_VERSION: u16 = 1;
const LOG_FRAMING: Framing = Framing {
    part: "log piece",
    magic: b"SHLG",
    version: LOG_FORMAT_VERSION,
};
/// What an encoded [`LogPiece`] adds to its two streams: the header, two length prefixes,
/// two offsets and two flags, each varint at most 10 bytes.
pub const LOG_PIECE_OVERHEAD_BYTES: usize = 64;

/// Most forwards an eager push may ask for (`/v1/push?hops=<n>`); more is refused with 400.
pub const PUSH_HOPS_MAX: u8 = 16;

/// `POST /v1/push`'s query: how many more times the receiver may forward the delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushQuery {
    pub hops: u8,
}

impl PushQuery {
    /// The path and query of a push that may be forwarded `hops` more times.
    pub fn path_and_query(&self) -> String {
        if self.hops == 0 {
            PATH_PUSH.to_owned()
        } else {
            format!("{PATH_PUSH}?hops={}", self.hops)
        }
    }

    /// Parses a query string: nothing, or `hops=<n>` with `n` at most [`PUSH_HOPS_MAX`].
    pub fn parse(query: Option<&str>) -> Result<PushQuery, WireError> {
        let Some(query) = query.filter(|query| !query.is_empty()) else {
            return Ok(PushQuery::default());
        };
        let refuse = |reason: String| WireError::PushQuery(reason);
        let value = query
            .strip_prefix("hops=")
            .ok_or_else(|| refuse(format!("{query:?}: expected hops=<n> and nothing else")))?;
        let hops: u8 = value
            .parse()
            .map_err(|_| refuse(format!("hops={value:?} is not a whole number up to 255")))?;
        if hops > PUSH_HOPS_MAX {
            return Err(refuse(format!(
                "hops={hops} is more than the {PUSH_HOPS_MAX} allowed"
            )));
        }
        Ok(PushQuery { hops })
    }
}

/// Largest `POST /v1/drain` body: a node id of at most 63 bytes and a deadline need under 90.
pub const DRAIN_BODY_BYTES_MAX: usize = 256;
/// Largest `POST /v1/swim` body: one SWIM packet.
pub const SWIM_BODY_BYTES_MAX: usize = crate::swim::core::PACKET_BYTES_MAX;
/// Format version of an encoded [`DrainRequest`]; bump on an incompatible change.
pub const DRAIN_FORMAT_VERSION: u16 = 1;
const DRAIN_FRAMING: Framing = Framing {
    part: "drain request",
    magic: b"SHDR",
    version: DRAIN_FORMAT_VERSION,
};

/// `POST /v1/drain`: drain the answering node for `deadline_ms`, or undrain it (`None`).
/// `node` names the node the caller means, so a request that reached another is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub node: NodeId,
    pub deadline_ms: Option<u64>,
}

pub fn encode_drain_request(request: &DrainRequest) -> Vec<u8> {
    DRAIN_FRAMING.encode(request, DRAIN_BODY_BYTES_MAX)
}

/// Decodes a [`DrainRequest`] of at most [`DRAIN_BODY_BYTES_MAX`] bytes (413 beyond).
pub fn decode_drain_request(bytes: &[u8]) -> Result<DrainRequest, WireError> {
    DRAIN_FRAMING.decode(bytes, DRAIN_BODY_BYTES_MAX)
}

/// A body that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{part}: {source}")]
    Decode {
        part: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("sync response truncated: {0}")]
    Truncated(String),
    #[error("log query: {0}")]
    Query(String),
    #[error("log query of {bytes} bytes is longer than the limit of {max} bytes")]
    QueryTooLong { bytes: usize, max: usize },
    #[error("body is longer than its content-length of {declared} bytes")]
    LongerThanDeclared { declared: u64 },
    #[error("body of {received} bytes is shorter than its content-length of {declared} bytes")]
    ShorterThanDeclared { declared: u64, received: u64 },
    #[error("log piece: {stream} holds {bytes} bytes, more than the {max} asked for")]
    LogPieceTooLarge {
        stream: &'static str,
        bytes: usize,
        max: u64,
    },
    #[error("snapshot query: {0}")]
    SnapshotQuery(String),
    #[error("snapshot query of {bytes} bytes is longer than the limit of {max} bytes")]
    SnapshotQueryTooLong { bytes: usize, max: usize },
    #[error("snapshot piece: {0}")]
    SnapshotPiece(String),
    #[error("push query: {0}")]
    PushQuery(String),
}

impl WireError {
    /// The status a server answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            WireError::Decode {
                source: DecodeError::TooLarge { .. },
                ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            WireError::QueryTooLong { .. } | WireError::SnapshotQueryTooLong { .. } => {
                StatusCode::URI_TOO_LONG
            }
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks a request body read in full against its declared `content-length` (if any).
pub fn check_body_length(declared: Option<u64>, received: usize) -> Result<(), WireError> {
    let received = u64::try_from(received).unwrap_or(u64::MAX);
    match declared {
        Some(declared) if received > declared => Err(WireError::LongerThanDeclared { declared }),
        Some(declared) if received < declared => {
            Err(WireError::ShorterThanDeclared { declared, received })
        }
        _ => Ok(()),
    }
}

/// The requests of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Sync,
    Push,
    Logs,
    Snapshot,
    Drain,
    Swim,
}

impl Route {
    /// The one method the route answers.
    pub fn method(self) -> http::Method {
        match self {
            Route::Sync | Route::Push | Route::Drain | Route::Swim => http::Method::POST,
            Route::Logs | Route::Snapshot => http::Method::GET,
        }
    }
}

/// Why a request's method and path are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub status: StatusCode,
    pub message: String,
}

/// Maps method and path to a route.
pub fn route(method: &http::Method, path: &str) -> Result<Route, RouteError> {
    let route = match path {
        PATH_SYNC => Route::Sync,
        PATH_PUSH => Route::Push,
        PATH_LOGS => Route::Logs,
        PATH_SNAPSHOT => Route::Snapshot,
        PATH_DRAIN => Route::Drain,
        PATH_SWIM => Route::Swim,
        _ if path.starts_with("/v") && !path.starts_with(PATH_PREFIX) => {
            return Err(RouteError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "{path}: unsupported protocol version, this node speaks {PATH_PREFIX}"
                ),
            });
        }
        _ => {
            return Err(RouteError {
                status: StatusCode::NOT_FOUND,
                message: format!("{path}: no such endpoint"),
            });
        }
    };
    let allowed = route.method();
    if method != allowed {
        return Err(RouteError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path}: method {method} not allowed, use {allowed}"),
        });
    }
    Ok(route)
}

pub fn decode_summary(bytes: &[u8], body_bytes_max: usize) -> Result<Summary, WireError> {
    codec::decode_summary(bytes, body_bytes_max).map_err(|source| WireError::Decode {
        part: "summary",
        source,
    })
}

pub fn decode_delta(bytes: &[u8], body_bytes_max: usize) -> Result<Delta, WireError> {
    codec::decode_delta(bytes, body_bytes_max).map_err(|source| WireError::Decode {
        part: "delta",
        source,
    })
}

/// What a `/v1/sync` body holds: the caller's summary, or its compact summary (told apart
/// by the codec's kind byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRequest {
    Full(Summary),
    Compact(CompactSummary),
}

/// The 409 body of `/v1/sync` for a compact summary that did not rebuild here.
pub const SEND_FULL_SUMMARY: &str =
    "your compact summary does not rebuild here; send the full summary";

/// Parses a `/v1/sync` request body.
pub fn decode_sync_request(bytes: &[u8], body_bytes_max: usize) -> Result<SyncRequest, WireError> {
    if codec::kind_of(bytes) == Some(codec::Kind::CompactSummary as u8) {
        return codec::decode_compact_summary(bytes, body_bytes_max)
            .map(SyncRequest::Compact)
            .map_err(|source| WireError::Decode {
                part: "compact summary",
                source,
            });
    }
    decode_summary(bytes, body_bytes_max).map(SyncRequest::Full)
}

/// Frames the `/v1/sync` response body: the delta, then `tail` (the server's encoded
/// `Summary`, or its encoded `SummaryReply` to a compact summary).
pub fn encode_sync_response(delta: &Delta, tail: &[u8]) -> Vec<u8> {
    let delta_bytes = codec::encode_delta(delta);
    let length = u32::try_from(delta_bytes.len()).expect("an encoded delta is under 4 GiB");
    let mut body = Vec::with_capacity(LENGTH_PREFIX_BYTES + delta_bytes.len() + tail.len());
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(&delta_bytes);
    body.extend_from_slice(tail);
    body
}

/// Splits a `/v1/sync` response body into the delta, decoded, and the tail's bytes.
fn split_sync_response(bytes: &[u8], body_bytes_max: usize) -> Result<(Delta, &[u8]), WireError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Err(WireError::Truncated(format!(
            "{} bytes, no length prefix",
            bytes.len()
        )));
    };
    let delta_length = u32::from_be_bytes(*prefix) as usize;
    if delta_length > rest.len() {
        return Err(WireError::Truncated(format!(
            "delta of {delta_length} bytes announced, {} present",
            rest.len()
        )));
    }
    let (delta_bytes, tail) = rest.split_at(delta_length);
    Ok((decode_delta(delta_bytes, body_bytes_max)?, tail))
}

/// Parses the `/v1/sync` response to a full summary.
pub fn decode_sync_response(
    bytes: &[u8],
    body_bytes_max: usize,
) -> Result<(Delta, Summary), WireError> {
    let (delta, tail) = split_sync_response(bytes, body_bytes_max)?;
    Ok((delta, decode_summary(tail, body_bytes_max)?))
}

/// Parses the `/v1/sync` response to a compact summary.
pub fn decode_compact_sync_response(
    bytes: &[u8],
    body_bytes_max: usize,
) -> Result<(Delta, SummaryReply), WireError> {
    let (delta, tail) = split_sync_response(bytes, body_bytes_max)?;
    let reply =
        codec::decode_summary_reply(tail, body_bytes_max).map_err(|source| WireError::Decode {
            part: "summary reply",
            source,
        })?;
    Ok((delta, reply))
}

/// `GET /v1/logs`: which container, from which offsets, and how much of each stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogQuery {
    pub container: ContainerId,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    /// Most bytes of each stream the caller takes in one reply; at least 1.
    pub stream_bytes_max: u64,
}

impl LogQuery {
    /// The query string, without the `?`.
    pub fn to_query(&self) -> String {
        format!(
            "container={}&stdout={}&stderr={}&bytes_max={}",
            self.container, self.stdout_offset, self.stderr_offset, self.stream_bytes_max
        )
    }

    /// The path and query of the request.
    pub fn path_and_query(&self) -> String {
        format!("{PATH_LOGS}?{}", self.to_query())
    }

    /// Parses a query string: the four keys once each, nothing else.
    pub fn parse(query: Option<&str>) -> Result<LogQuery, WireError> {
        let query = query.unwrap_or("");
        if query.len() > LOG_QUERY_BYTES_MAX {
            return Err(WireError::QueryTooLong {
                bytes: query.len(),
                max: LOG_QUERY_BYTES_MAX,
            });
        }
        let mut container = None;
        let mut stdout_offset = None;
        let mut stderr_offset = None;
        let mut stream_bytes_max = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(WireError::Query(format!("{pair:?} is not key=value")));
            };
            let number = |value: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| WireError::Query(format!("{key}={value:?} is not a whole number")))
            };
            let given_before = match key {
                "container" => {
                    let id = value
                        .parse::<ContainerId>()
                        .map_err(|error| WireError::Query(error.to_string()))?;
                    container.replace(id).is_some()
                }
                "stdout" => stdout_offset.replace(number(value)?).is_some(),
                "stderr" => stderr_offset.replace(number(value)?).is_some(),
                "bytes_max" => stream_bytes_max.replace(number(value)?).is_some(),
                _ => {
                    return Err(WireError::Query(format!(
                        "unknown key {key:?}; expected container, stdout, stderr and bytes_max"
                    )));
                }
            };
            if given_before {
                return Err(WireError::Query(format!("{key} given twice")));
            }
        }
        let missing = |key: &str| WireError::Query(format!("{key} is missing"));
        let query = LogQuery {
            container: container.ok_or_else(|| missing("container"))?,
            stdout_offset: stdout_offset.ok_or_else(|| missing("stdout"))?,
            stderr_offset: stderr_offset.ok_or_else(|| missing("stderr"))?,
            stream_bytes_max: stream_bytes_max.ok_or_else(|| missing("bytes_max"))?,
        };
        if query.stream_bytes_max == 0 {
            return Err(WireError::Query("bytes_max must be at least 1".to_string()));
        }
        Ok(query)
    }
}

/// The answer to `GET /v1/logs`: a container's new output and where to continue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPiece {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Offsets to ask from next time. A log file shorter than the offset asked for was
    /// rotated and is read from its start, so an offset can go down.
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub running: bool,
    /// More output was already written than this piece holds; ask again at once.
    pub more: bool,
}

/// Most bytes of each stream a [`LogPiece`] may hold so that its encoding fits in
/// `body_bytes_max`.
pub fn log_stream_bytes_max(body_bytes_max: usize) -> u64 {
    let room = body_bytes_max.saturating_sub(LOG_PIECE_OVERHEAD_BYTES) / 2;
    u64::try_from(room.max(1)).unwrap_or(u64::MAX)
}

pub fn encode_log_piece(piece: &LogPiece) -> Vec<u8> {
    LOG_FRAMING.encode(
        piece,
        LOG_PIECE_OVERHEAD_BYTES + piece.stdout.len() + piece.stderr.len(),
    )
}

/// Decodes a [`LogPiece`], refusing one whose streams hold more than `stream_bytes_max` (the
/// caller's own bound, paired with the server's) or whose offsets lie before its data.
pub fn decode_log_piece(
    bytes: &[u8],
    body_bytes_max: usize,
    stream_bytes_max: u64,
) -> Result<LogPiece, WireError> {
    let piece: LogPiece = LOG_FRAMING.decode(bytes, body_bytes_max)?;
    for (stream, data, offset) in [
        ("stdout", &piece.stdout, piece.stdout_offset),
        ("stderr", &piece.stderr, piece.stderr_offset),
    ] {
        if data.len() as u64 > stream_bytes_max {
            return Err(WireError::LogPieceTooLarge {
                stream,
                bytes: data.len(),
                max: stream_bytes_max,
            });
        }
        if (data.len() as u64) > offset {
            return Err(WireError::Decode {
                part: LOG_FRAMING.part,
                source: DecodeError::Malformed(format!(
                    "{stream} holds {} bytes but ends at offset {offset}",
                    data.len()
                )),
            });
        }
    }
    Ok(piece)
}

/// Room for the delta of a `/v1/sync` response next to a tail of `tail_bytes` within
/// `body_bytes_max`.
pub fn sync_delta_bytes_max(body_bytes_max: usize, tail_bytes: usize) -> usize {
    body_bytes_max
        .saturating_sub(LENGTH_PREFIX_BYTES)
        .saturating_sub(tail_bytes)
}

/// Longest query string `GET /v1/snapshot` accepts (a 64-digit transfer id and two 20-digit
/// numbers need under 140); a longer one is refused with 414.
pub const SNAPSHOT_QUERY_BYTES_MAX: usize = 256;
/// Format version of an encoded [`SnapshotPiece`]; bump on an incompatible change.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
const SNAPSHOT_FRAMING: Framing = Framing {
    part: "snapshot piece",
    magic: b"SHSN",
    version: SNAPSHOT_FORMAT_VERSION,
};
/// What an encoded [`SnapshotPiece`] adds to its data: the header, the 32-byte transfer id, and
/// the total, the offset and the data's length, each varint at most 10 bytes.
pub const SNAPSHOT_PIECE_OVERHEAD_BYTES: usize = 96;
/// Fewest bytes a piece that does not end its snapshot may hold (a server's `body_bytes_max`
/// is at least 4 KiB), so a transfer ends within a bounded number of requests.
pub const SNAPSHOT_PIECE_BYTES_MIN: u64 = 1024;

/// Names one snapshot transfer: the SHA-256 of the encoded delta it carries. Written as 64
/// lowercase hex digits in queries and messages.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TransferId(pub [u8; 32]);

impl TransferId {
    /// The id of a transfer of `bytes`.
    pub fn of(bytes: &[u8]) -> TransferId {
        TransferId(sha2::Sha256::digest(bytes).into())
    }
}

impl std::fmt::Display for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransferId({self})")
    }
}

impl std::str::FromStr for TransferId {
    type Err = WireError;

    fn from_str(text: &str) -> Result<TransferId, WireError> {
        let mut id = [0u8; 32];
        if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(WireError::SnapshotQuery(format!(
                "transfer {text:?} is not 64 lowercase hex digits"
            )));
        }
        hex::decode_to_slice(text, &mut id)
            .map_err(|error| WireError::SnapshotQuery(format!("transfer {text:?}: {error}")))?;
        Ok(TransferId(id))
    }
}

/// `GET /v1/snapshot`: which transfer (none: start or join the current one), from which
/// offset, and how many bytes at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotQuery {
    pub transfer: Option<TransferId>,
    pub offset: u64,
    /// Most bytes of the snapshot the caller takes in one reply; at least 1.
    pub bytes_max: u64,
}

impl SnapshotQuery {
    /// The query string, without the `?`.
    pub fn to_query(&self) -> String {
        let mut query = String::new();
        if let Some(transfer) = &self.transfer {
            query.push_str(&format!("transfer={transfer}&"));
        }
        query.push_str(&format!(
            "offset={}&bytes_max={}",
            self.offset, self.bytes_max
        ));
        query
    }

    /// The path and query of the request.
    pub fn path_and_query(&self) -> String {
        format!("{PATH_SNAPSHOT}?{}", self.to_query())
    }

    /// Parses a query string: `offset` and `bytes_max` once each, `transfer` at most once,
    /// nothing else.
    pub fn parse(query: Option<&str>) -> Result<SnapshotQuery, WireError> {
        let query = query.unwrap_or("");
        if query.len() > SNAPSHOT_QUERY_BYTES_MAX {
            return Err(WireError::SnapshotQueryTooLong {
                bytes: query.len(),
                max: SNAPSHOT_QUERY_BYTES_MAX,
            });
        }
        let mut transfer = None;
        let mut offset = None;
        let mut bytes_max = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(WireError::SnapshotQuery(format!(
                    "{pair:?} is not key=value"
                )));
            };
            let number = |value: &str| {
                value.parse::<u64>().map_err(|_| {
                    WireError::SnapshotQuery(format!("{key}={value:?} is not a whole number"))
                })
            };
            let given_before = match key {
                "transfer" => transfer.replace(value.parse::<TransferId>()?).is_some(),
                "offset" => offset.replace(number(value)?).is_some(),
                "bytes_max" => bytes_max.replace(number(value)?).is_some(),
                _ => {
                    return Err(WireError::SnapshotQuery(format!(
                        "unknown key {key:?}; expected transfer, offset and bytes_max"
                    )));
                }
            };
            if given_before {
                return Err(WireError::SnapshotQuery(format!("{key} given twice")));
            }
        }
        let missing = |key: &str| WireError::SnapshotQuery(format!("{key} is missing"));
        let query = SnapshotQuery {
            transfer,
            offset: offset.ok_or_else(|| missing("offset"))?,
            bytes_max: bytes_max.ok_or_else(|| missing("bytes_max"))?,
        };
        if query.bytes_max == 0 {
            return Err(WireError::SnapshotQuery(
                "bytes_max must be at least 1".to_string(),
            ));
        }
        if query.transfer.is_none() && query.offset != 0 {
            return Err(WireError::SnapshotQuery(format!(
                "offset {} without a transfer; a transfer starts at offset 0",
                query.offset
            )));
        }
        Ok(query)
    }
}

/// The answer to `GET /v1/snapshot`: bytes of one encoded `Full` delta and where they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotPiece {
    pub transfer: TransferId,
    /// Length of the whole encoded delta.
    pub total_bytes: u64,
    /// Where `data` starts in it.
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Most snapshot bytes a [`SnapshotPiece`] may hold so that its encoding fits in
/// `body_bytes_max`.
pub fn snapshot_piece_bytes_max(body_bytes_max: usize) -> u64 {
    let room = body_bytes_max.saturating_sub(SNAPSHOT_PIECE_OVERHEAD_BYTES);
    u64::try_from(room.max(1)).unwrap_or(u64::MAX)
}

pub fn encode_snapshot_piece(piece: &SnapshotPiece) -> Vec<u8> {
    SNAPSHOT_FRAMING.encode(piece, SNAPSHOT_PIECE_OVERHEAD_BYTES + piece.data.len())
}

/// Decodes a [`SnapshotPiece`], refusing one with more than `bytes_max` bytes of data (the
/// caller's own bound, paired with the server's) or that reaches past its snapshot's end.
pub fn decode_snapshot_piece(
    bytes: &[u8],
    body_bytes_max: usize,
    bytes_max: u64,
) -> Result<SnapshotPiece, WireError> {
    let piece: SnapshotPiece = SNAPSHOT_FRAMING.decode(bytes, body_bytes_max)?;
    let length = piece.data.len() as u64;
    if length > bytes_max {
        return Err(WireError::SnapshotPiece(format!(
            "{length} bytes, more than the {bytes_max} asked for"
        )));
    }
    if piece
        .offset
        .checked_add(length)
        .is_none_or(|end| end > piece.total_bytes)
    {
        return Err(WireError::SnapshotPiece(format!(
            "{length} bytes at offset {} reach past the snapshot's {} bytes",
            piece.offset, piece.total_bytes
        )));
    }
    Ok(piece)
}

/// A body of its own kind: four magic bytes, a little-endian format version, then one
/// postcard value and nothing after it.
struct Framing {
    part: &'static str,
    magic: &'static [u8; 4],
    version: u16,
}

impl Framing {
    const HEADER_BYTES: usize = 6;

    fn encode<T: Serialize>(&self, value: &T, capacity_bytes: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(capacity_bytes);
        bytes.extend_from_slice(self.magic);
        bytes.extend_from_slice(&self.version.to_le_bytes());
        postcard::to_extend(value, bytes).expect("in-memory values serialize")
    }

    fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        body_bytes_max: usize,
    ) -> Result<T, WireError> {
        let refuse = |source| WireError::Decode {
            part: self.part,
            source,
        };
        if bytes.len() > body_bytes_max {
            return Err(refuse(DecodeError::TooLarge {
                size: bytes.len(),
                max: body_bytes_max,
            }));
        }
        if bytes.len() < Self::HEADER_BYTES || &bytes[..4] != self.magic {
            return Err(refuse(DecodeError::BadMagic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != self.version {
            return Err(refuse(DecodeError::UnsupportedVersion {
                found: version,
                supported: self.version,
            }));
        }
        let (value, rest) = postcard::take_from_bytes(&bytes[Self::HEADER_BYTES..])
            .map_err(|error| refuse(DecodeError::Malformed(error.to_string())))?;
        if !rest.is_empty() {
            return Err(refuse(DecodeError::TrailingBytes));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_queries_say_the_hops_left_and_anything_else_is_refused() {
        for hops in [0, 1, PUSH_HOPS_MAX] {
            let query = PushQuery { hops };
            let path = query.path_and_query();
            let parsed = PushQuery::parse(path.split_once('?').map(|(_, query)| query));
            assert_eq!(parsed.unwrap(), query, "{path}");
        }
        assert_eq!(PushQuery::parse(Some("")).unwrap().hops, 0);
        for bad in [
            "hops=17",
            "hops=-1",
            "hops=x",
            "hops=1&hops=2",
            "ttl=3",
            "hops=300",
        ] {
            let error = PushQuery::parse(Some(bad)).unwrap_err();
            assert!(
                error.to_string().starts_with("push query: "),
                "{bad}: {error}"
            );
        }
    }
    use std::time::Duration;

    fn replica(name: &str) -> shoal_crdt::Replica {
        shoal_crdt::Replica::new(name.parse().unwrap(), Duration::from_secs(1))
    }

    #[test]
    fn routes() {
        let check = |method: http::Method, path: &str, expected: Result<Route, u16>| {
            let got = route(&method, path).map_err(|error| error.status.as_u16());
            assert_eq!(got, expected, "{method} {path}");
        };
        check(http::Method::POST, "/v1/sync", Ok(Route::Sync));
        check(http::Method::POST, "/v1/push", Ok(Route::Push));
        check(http::Method::GET, "/v1/logs", Ok(Route::Logs));
        check(http::Method::GET, "/v1/snapshot", Ok(Route::Snapshot));
        check(http::Method::POST, "/v1/drain", Ok(Route::Drain));
        check(http::Method::GET, "/v1/drain", Err(405));
        check(http::Method::POST, "/v1/snapshot", Err(405));
        check(http::Method::GET, "/v1/sync", Err(405));
        check(http::Method::POST, "/v1/logs", Err(405));
        check(http::Method::POST, "/v2/sync", Err(404));
        check(http::Method::POST, "/sync", Err(404));
        check(http::Method::POST, "/v1/other", Err(404));
        let message = route(&http::Method::POST, "/v2/sync").unwrap_err().message;
        assert_eq!(
            message,
            "/v2/sync: unsupported protocol version, this node speaks /v1/"
        );
        let message = route(&http::Method::POST, "/v1/logs").unwrap_err().message;
        assert_eq!(message, "/v1/logs: method POST not allowed, use GET");
    }

    #[test]
    fn drain_requests_round_trip_and_bad_ones_are_refused() {
        for request in [
            DrainRequest {
                node: "n2".parse().unwrap(),
                deadline_ms: Some(300_000),
            },
            DrainRequest {
                node: "a".repeat(63).parse().unwrap(),
                deadline_ms: Some(u64::MAX),
            },
            DrainRequest {
                node: "n2".parse().unwrap(),
                deadline_ms: None,
            },
        ] {
            let bytes = encode_drain_request(&request);
            assert!(bytes.len() <= DRAIN_BODY_BYTES_MAX, "{}", bytes.len());
            assert_eq!(decode_drain_request(&bytes).unwrap(), request);
        }
        let good = encode_drain_request(&DrainRequest {
            node: "n2".parse().unwrap(),
            deadline_ms: None,
        });
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(decode_drain_request(&trailing).unwrap_err().status(), 400);
        assert_eq!(decode_drain_request(b"SHDR").unwrap_err().status(), 400);
        assert_eq!(
            decode_drain_request(&good[..good.len() - 1])
                .unwrap_err()
                .status(),
            400
        );
        let mut wrong_version = good.clone();
        wrong_version[4] = 9;
        let error = decode_drain_request(&wrong_version).unwrap_err();
        assert!(error.to_string().contains("drain request"), "{error}");
        let large = vec![0u8; DRAIN_BODY_BYTES_MAX + 1];
        assert_eq!(decode_drain_request(&large).unwrap_err().status(), 413);
    }

    fn query(container: &str, stdout: u64, stderr: u64, bytes_max: u64) -> LogQuery {
        LogQuery {
            container: container.parse().unwrap(),
            stdout_offset: stdout,
            stderr_offset: stderr,
            stream_bytes_max: bytes_max,
        }
    }

    #[test]
    fn log_queries_round_trip_and_bad_ones_are_refused_with_their_status() {
        for good in [
            query("web-1a2b", 0, 0, 1),
            query("a.b_c-D", u64::MAX, 7, u64::MAX),
        ] {
            assert_eq!(LogQuery::parse(Some(&good.to_query())).unwrap(), good);
        }
        let longest = query(&"x".repeat(128), u64::MAX, u64::MAX, u64::MAX);
        assert!(longest.to_query().len() < LOG_QUERY_BYTES_MAX);
        assert_eq!(
            LogQuery::parse(Some("bytes_max=9&stderr=2&stdout=1&container=c")).unwrap(),
            query("c", 1, 2, 9),
            "keys in any order"
        );
        let check = |text: Option<&str>, status: u16, fragment: &str| {
            let error = LogQuery::parse(text).unwrap_err();
            assert_eq!(error.status().as_u16(), status, "{text:?}: {error}");
            let message = error.to_string();
            assert!(
                message.contains(fragment),
                "{text:?}: {message:?} lacks {fragment:?}"
            );
        };
        let full = "container=c&stdout=0&stderr=0&bytes_max=1";
        check(None, 400, "container is missing");
        check(
            Some("container=c&stdout=0&stderr=0"),
            400,
            "bytes_max is missing",
        );
        check(Some(&format!("{full}&stdout=1")), 400, "stdout given twice");
        check(
            Some(&format!("{full}&tail=10")),
            400,
            "unknown key \"tail\"",
        );
        check(
            Some("container=c&stdout=-1&stderr=0&bytes_max=1"),
            400,
            "whole number",
        );
        check(
            Some("container=c&stdout=0&stderr=x&bytes_max=1"),
            400,
            "whole number",
        );
        check(
            Some("container=c&stdout&stderr=0&bytes_max=1"),
            400,
            "key=value",
        );
        check(
            Some("container=a/b&stdout=0&stderr=0&bytes_max=1"),
            400,
            "container id",
        );
        check(
            Some("container=&stdout=0&stderr=0&bytes_max=1"),
            400,
            "container id",
        );
        check(
            Some("container=c&stdout=0&stderr=0&bytes_max=0"),
            400,
            "at least 1",
        );
        let long = format!("{full}&{}", "x".repeat(LOG_QUERY_BYTES_MAX));
        check(Some(&long), 414, "longer than the limit of 512 bytes");
    }

    fn piece(stdout: &[u8], stderr: &[u8]) -> LogPiece {
        LogPiece {
            stdout: stdout.to_vec(),
            stderr: stderr.to_vec(),
            stdout_offset: 100 + stdout.len() as u64,
            stderr_offset: stderr.len() as u64,
            running: true,
            more: false,
        }
    }

    #[test]
    fn log_pieces_round_trip_within_their_bounds() {
        let sample = piece(b"hello\n", b"");
        let body = encode_log_piece(&sample);
        assert_eq!(decode_log_piece(&body, 1 << 20, 6).unwrap(), sample);
        // A piece at the largest size a body limit allows fits in that limit, with the
        // largest offsets the varints can hold.
        for body_bytes_max in [4096, 64 * 1024, 8 * 1024 * 1024] {
            let stream = log_stream_bytes_max(body_bytes_max) as usize;
            let mut full = piece(&vec![b'o'; stream], &vec![b'e'; stream]);
            full.stdout_offset = u64::MAX;
            full.stderr_offset = u64::MAX;
            full.more = true;
            let body = encode_log_piece(&full);
            assert!(
                body.len() <= body_bytes_max,
                "{} > {body_bytes_max}",
                body.len()
            );
            let decoded = decode_log_piece(&body, body_bytes_max, stream as u64).unwrap();
            assert_eq!(decoded, full);
        }
        assert_eq!(log_stream_bytes_max(0), 1);
    }

    #[test]
    fn bad_log_pieces_are_refused() {
        let body = encode_log_piece(&piece(b"out", b"err"));
        let check = |bytes: &[u8], stream_bytes_max: u64, fragment: &str| {
            let error = decode_log_piece(bytes, 1 << 20, stream_bytes_max).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        };
        check(&body, 2, "stdout holds 3 bytes, more than the 2 asked for");
        check(&body[..3], 10, "magic");
        check(&body[..body.len() - 1], 10, "malformed");
        check(&[&body[..], &[0]].concat(), 10, "trailing");
        let mut wrong_version = body.clone();
        wrong_version[4..6].copy_from_slice(&9u16.to_le_bytes());
        check(&wrong_version, 10, "format version 9");
        let summary = codec::encode_summary(&replica("a").summary());
        check(&summary, 10, "magic");
        let mut behind = piece(b"out", b"");
        behind.stdout_offset = 2;
        check(&encode_log_piece(&behind), 10, "ends at offset 2");
        let too_large = decode_log_piece(&body, 4, 10).unwrap_err();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn sync_response_round_trips_and_refuses_truncation() {
        let a = replica("a");
        let b = replica("b");
        let delta = a.delta_for(&b.summary());
        let body = encode_sync_response(&delta, &codec::encode_summary(&a.summary()));
        let (got_delta, got_summary) = decode_sync_response(&body, 1 << 20).unwrap();
        assert_eq!(got_delta, delta);
        assert_eq!(got_summary, a.summary());
        for cut in [0, 3, 4, body.len() - 1] {
            assert!(
                decode_sync_response(&body[..cut], 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        let mut lying = body.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_sync_response(&lying, 1 << 20),
            Err(WireError::Truncated(_))
        ));
    }

    #[test]
    fn a_body_must_be_as_long_as_its_content_length_says() {
        assert!(check_body_length(None, 0).is_ok());
        assert!(check_body_length(None, 10).is_ok());
        assert!(check_body_length(Some(10), 10).is_ok());
        assert!(check_body_length(Some(0), 0).is_ok());
        let longer = check_body_length(Some(10), 11).unwrap_err();
        assert_eq!(longer.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            longer.to_string(),
            "body is longer than its content-length of 10 bytes"
        );
        let shorter = check_body_length(Some(10), 4).unwrap_err();
        assert_eq!(shorter.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            shorter.to_string(),
            "body of 4 bytes is shorter than its content-length of 10 bytes"
        );
    }

    #[test]
    fn decode_errors_map_to_statuses() {
        let summary = codec::encode_summary(&replica("a").summary());
        let too_large = decode_summary(&summary, 2).unwrap_err();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let garbage = decode_summary(b"definitely not a summary", 1 << 20).unwrap_err();
        assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn snapshot_queries_round_trip_and_bad_ones_are_refused_with_their_status() {
        let id = TransferId([0xab; 32]);
        for good in [
            SnapshotQuery {
                transfer: None,
                offset: 0,
                bytes_max: 1,
            },
            SnapshotQuery {
                transfer: Some(id),
                offset: u64::MAX,
                bytes_max: u64::MAX,
            },
        ] {
            assert!(good.to_query().len() < SNAPSHOT_QUERY_BYTES_MAX);
            assert_eq!(SnapshotQuery::parse(Some(&good.to_query())).unwrap(), good);
            assert!(good.path_and_query().starts_with("/v1/snapshot?"));
        }
        let check = |text: Option<&str>, status: u16, fragment: &str| {
            let error = SnapshotQuery::parse(text).unwrap_err();
            assert_eq!(error.status().as_u16(), status, "{text:?}: {error}");
            let message = error.to_string();
            assert!(
                message.contains(fragment),
                "{text:?}: {message:?} lacks {fragment:?}"
            );
        };
        let hex = id.to_string();
        check(None, 400, "offset is missing");
        check(Some("offset=0"), 400, "bytes_max is missing");
        check(Some("offset=0&bytes_max=0"), 400, "at least 1");
        check(Some("offset=x&bytes_max=1"), 400, "whole number");
        check(Some("offset=0&bytes_max=-1"), 400, "whole number");
        check(
            Some("offset=0&offset=0&bytes_max=1"),
            400,
            "offset given twice",
        );
        check(
            Some("offset=0&bytes_max=1&piece=3"),
            400,
            "unknown key \"piece\"",
        );
        check(Some("offset&bytes_max=1"), 400, "key=value");
        check(Some("offset=5&bytes_max=1"), 400, "without a transfer");
        check(
            Some("transfer=zz&offset=0&bytes_max=1"),
            400,
            "not 64 lowercase hex digits",
        );
        check(
            Some(&format!(
                "transfer={}&offset=0&bytes_max=1",
                hex.to_uppercase()
            )),
            400,
            "not 64 lowercase hex digits",
        );
        check(
            Some(&format!(
                "transfer={hex}&transfer={hex}&offset=0&bytes_max=1"
            )),
            400,
            "transfer given twice",
        );
        let long = format!(
            "offset=0&bytes_max=1&{}",
            "x".repeat(SNAPSHOT_QUERY_BYTES_MAX)
        );
        check(Some(&long), 414, "longer than the limit of 256 bytes");
    }

    #[test]
    fn snapshot_pieces_round_trip_within_their_bounds_and_bad_ones_are_refused() {
        for body_bytes_max in [4096, 64 * 1024, 8 * 1024 * 1024] {
            let room = snapshot_piece_bytes_max(body_bytes_max);
            let full = SnapshotPiece {
                transfer: TransferId([0xff; 32]),
                total_bytes: u64::MAX,
                offset: u64::MAX - room,
                data: vec![7; room as usize],
            };
            let body = encode_snapshot_piece(&full);
            assert!(
                body.len() <= body_bytes_max,
                "{} > {body_bytes_max}",
                body.len()
            );
            assert_eq!(
                decode_snapshot_piece(&body, body_bytes_max, room).unwrap(),
                full
            );
        }
        let piece = SnapshotPiece {
            transfer: TransferId::of(b"abc"),
            total_bytes: 10,
            offset: 7,
            data: b"abc".to_vec(),
        };
        let body = encode_snapshot_piece(&piece);
        let check = |bytes: &[u8], bytes_max: u64, fragment: &str| {
            let error = decode_snapshot_piece(bytes, 1 << 20, bytes_max).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        };
        check(&body, 2, "3 bytes, more than the 2 asked for");
        check(&body[..3], 10, "magic");
        check(&body[..body.len() - 1], 10, "malformed");
        check(&[&body[..], &[0]].concat(), 10, "trailing");
        let mut wrong_version = body.clone();
        wrong_version[4..6].copy_from_slice(&9u16.to_le_bytes());
        check(&wrong_version, 10, "format version 9");
        check(&encode_log_piece(&piece_of_log()), 10, "magic");
        let mut past = piece.clone();
        past.offset = 8;
        check(
            &encode_snapshot_piece(&past),
            10,
            "reach past the snapshot's 10 bytes",
        );
        past.offset = u64::MAX;
        check(&encode_snapshot_piece(&past), 10, "reach past");
        let too_large = decode_snapshot_piece(&body, 4, 10).unwrap_err();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    fn piece_of_log() -> LogPiece {
        piece(b"out", b"")
    }

    #[test]
    fn a_sync_response_with_a_delta_of_its_room_fits_the_body() {
        let mut a = replica("a");
        let now = shoal_crdt::NTP64::from(Duration::from_millis(1));
        for index in 0..50 {
            a.put_service(
                now,
                format!("web-{index}").parse().unwrap(),
                shoal_crdt::ServiceSpec::new("/img"),
            )
            .unwrap();
        }
        let theirs = replica("b").summary();
        let summary = codec::encode_summary(&a.summary());
        let exact = encode_sync_response(&a.delta_for(&theirs), &summary).len();
        for body_bytes_max in [exact - 1, exact, exact + 1] {
            let room = sync_delta_bytes_max(body_bytes_max, summary.len());
            match a.delta_for_within(&theirs, room) {
                Some(delta) => {
                    assert!(body_bytes_max >= exact);
                    let body = encode_sync_response(&delta, &summary);
                    assert!(body.len() <= body_bytes_max);
                }
                None => assert!(body_bytes_max < exact),
            }
        }
    }
}
