//! The dialing side of sync: a session with one peer, one push-pull ([`sync_once`]) and an eager
//! push ([`push`]). Remote logs ask through the same session (`super::logs::fetch_log`).
//!
//! A push-pull is: `POST /v1/sync` with our summary (compact when smaller, then the full one
//! if the peer cannot rebuild it); apply the delta we lack (durable before applied, by
//! `Node::apply_remote`); then `POST /v1/push` with what the peer lacks according to the
//! summary it returned. Each step is bounded by `SyncLimits` (body size, one deadline for the
//! whole exchange). A session sends no request once the peer's certificate has expired (the
//! handshake verified it, nothing does later): it closes the connection instead. When what
//! we lack does not fit in one body the peer answers 303: we fetch its snapshot in pieces
//! ([`super::transfer`]) and push-pull again. What the peer lacks is pushed only when it fits
//! in one body; otherwise the peer pulls it the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use shoal_crdt::compact::expand_reply;
use shoal_crdt::{Delta, NodeId, Summary, codec};

use super::connections::Connections;
use super::tls::{peer_node_id, peer_not_after, server_name_for};
use super::transfer::{SNAPSHOT_TRANSFERS_PER_SYNC_MAX, TransferGate, fetch_snapshot};
use super::wire::{self, CONTENT_TYPE, PATH_PUSH, PATH_SYNC, PushQuery};
use super::{SyncError, SyncLimits};
use crate::state::{Node, NodeError, SyncOutcome};

/// What one exchange with a peer moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStats {
    /// The peer's node id, from its certificate.
    pub peer: NodeId,
    /// Request bodies sent.
    pub bytes_sent: u64,
    /// Response bodies received.
    pub bytes_received: u64,
    /// UDP payload bytes sent and received for it, framing included, and the handshake when
    /// it dialed (filled in by `connections::Lease::account`).
    pub udp_bytes_sent: u64,
    pub udp_bytes_received: u64,
    /// Entries in the delta received from the peer and in the one pushed back.
    pub entries_received: usize,
    pub entries_sent: usize,
    /// Bytes of snapshots fetched in pieces (counted in `bytes_received` too); 0 when the
    /// delta fit in one body.
    pub snapshot_bytes_received: u64,
    /// It ran on a connection dialed for it, not on one kept from an earlier exchange.
    pub dialed: bool,
}

/// A response: status and body (bounded by `body_bytes_max`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    /// The body as text, for error messages (refusals carry a `text/plain` reason).
    pub fn message(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/3 connection to a peer whose certificate has been verified.
pub struct PeerSession {
    address: SocketAddr,
    peer: NodeId,
    /// The earliest notAfter of the peer's certificate chain.
    peer_not_after: SystemTime,
    authority: String,
    connection: quinn::Connection,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
    body_bytes_max: usize,
}

/// Dials `address` with the endpoint's default client config (our certificate). When
/// `expected` is given, a peer presenting another node id is refused in the handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    address: SocketAddr,
    expected: Option<&NodeId>,
    limits: &SyncLimits,
) -> Result<PeerSession, SyncError> {
    let connect_error = |reason: String| SyncError::Connect {
        peer: address,
        reason,
    };
    let server_name = server_name_for(expected);
    let connecting = endpoint
        .connect(address, &server_name)
        .map_err(|error| connect_error(error.to_string()))?;
    let connection = connecting
        .await
        .map_err(|error| connect_error(error.to_string()))?;
    let peer = peer_node_id(&connection)?;
    let peer_not_after = peer_not_after(&connection)?;
    if let Some(expected) = expected
        && expected != &peer
    {
        connection.close(0u32.into(), b"unexpected node");
        return Err(SyncError::UnexpectedPeer {
            peer: address,
            expected: expected.clone(),
            found: peer,
        });
    }
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
        .await
        .map_err(|error| SyncError::Http {
            peer: address,
            reason: error.to_string(),
        })?;
    let driver = tokio::spawn(async move {
        let _closed = futures::future::poll_fn(|context| driver.poll_close(context)).await;
    });
    Ok(PeerSession {
        address,
        peer,
        peer_not_after,
        authority: server_name,
        connection,
        send,
        driver,
        body_bytes_max: limits.body_bytes_max,
    })
}

impl PeerSession {
    /// The peer's node id, from its verified certificate.
    pub fn peer(&self) -> &NodeId {
        &self.peer
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The largest response body this session reads.
    pub fn body_bytes_max(&self) -> usize {
        self.body_bytes_max
    }

    /// One `POST` with `body`; the response body is read up to `body_bytes_max`.
    pub async fn post(&mut self, path: &str, body: Vec<u8>) -> Result<Reply, SyncError> {
        self.send(http::Method::POST, path, body, true).await
    }

    /// Like [`PeerSession::post`] but without a Content-Length header, as a streamed body.
    pub async fn post_unsized(&mut self, path: &str, body: Vec<u8>) -> Result<Reply, SyncError> {
        self.send(http::Method::POST, path, body, false).await
    }

    /// One `GET` of `path_and_query`, without a body.
    pub async fn get(&mut self, path_and_query: &str) -> Result<Reply, SyncError> {
        self.send(http::Method::GET, path_and_query, Vec::new(), false)
            .await
    }

    /// Any method with any body (declared with a Content-Length), for tests of refusals.
    pub async fn request(
        &mut self,
        method: http::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Reply, SyncError> {
        self.send(method, path_and_query, body, true).await
    }

    async fn send(
        &mut self,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
        declare_length: bool,
    ) -> Result<Reply, SyncError> {
        if SystemTime::now() >= self.peer_not_after {
            tracing::info!(peer = %self.peer, address = %self.address, "closing sync connection: peer certificate expired");
            self.connection.close(0u32.into(), b"certificate expired");
            return Err(SyncError::PeerCertificateExpired {
                peer: self.address,
                node: self.peer.clone(),
            });
        }
        let http_error = |error: &dyn std::fmt::Display| SyncError::Http {
            peer: self.address,
            reason: error.to_string(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE);
        if declare_length {
            request = request.header(http::header::CONTENT_LENGTH, body.len());
        }
        let request = request.body(()).map_err(|error| http_error(&error))?;
        let mut stream = self
            .send
            .send_request(request)
            .await
            .map_err(|error| http_error(&error))?;
        let sent = async {
            if !body.is_empty() {
                stream.send_data(Bytes::from(body)).await?;
            }
            stream.finish().await
        }
        .await;
        // A server refusing the body (413) stops reading it; its response still says why, so
        // a failed send is only reported when no response arrives.
        let response = match stream.recv_response().await {
            Ok(response) => response,
            Err(error) => {
                return Err(match sent {
                    Err(send_error) => http_error(&send_error),
                    Ok(()) => http_error(&error),
                });
            }
        };
        let mut received = BytesMut::new();
        loop {
            let chunk = stream
                .recv_data()
                .await
                .map_err(|error| http_error(&error))?;
            let Some(mut chunk) = chunk else { break };
            if received.len() + chunk.remaining() > self.body_bytes_max {
                stream.stop_sending(h3::error::Code::H3_REQUEST_CANCELLED);
                return Err(SyncError::ResponseTooLarge {
                    peer: self.address,
                    body_bytes_max: self.body_bytes_max,
                });
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                received.extend_from_slice(part);
                let length = part.len();
                chunk.advance(length);
            }
        }
        Ok(Reply {
            status: response.status(),
            body: received.freeze(),
        })
    }

    /// UDP payload bytes (sent, received) on this connection so far.
    pub fn udp_bytes(&self) -> (u64, u64) {
        let stats = self.connection.stats();
        (stats.udp_tx.bytes, stats.udp_rx.bytes)
    }

    /// Whether the connection has not been closed by either side.
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// Closes the connection.
    pub fn close(self) {
        self.connection.close(0u32.into(), b"done");
    }
}

impl Drop for PeerSession {
    /// A session dropped without [`PeerSession::close`] (an error, a deadline) ends its
    /// connection driver too, so the connection does not linger until its idle timeout.
    fn drop(&mut self) {
        self.driver.abort();
    }
}

fn expect_status(
    session: &PeerSession,
    path: &'static str,
    reply: &Reply,
    expected: StatusCode,
) -> Result<(), SyncError> {
    if reply.status == expected {
        return Ok(());
    }
    Err(SyncError::Status {
        peer: session.address,
        path,
        status: reply.status.as_u16(),
        message: reply.message(),
    })
}

async fn apply_blocking(node: &Arc<Node>, peer: &NodeId, delta: Delta) -> Result<(), SyncError> {
    let apply_error = |reason: String| SyncError::Apply {
        peer: peer.clone(),
        reason,
    };
    let node = node.clone();
    let from = peer.clone();
    // apply_remote commits to redb (fsync): keep it off the async workers.
    let applied: Result<_, NodeError> =
        tokio::task::spawn_blocking(move || node.apply_remote(&from, delta))
            .await
            .map_err(|error| apply_error(error.to_string()))?;
    applied
        .map(|_| ())
        .map_err(|error| apply_error(error.to_string()))
}

/// One anti-entropy exchange with the peer at `address`: pull what we lack, push what it
/// lacks. The outcome is recorded with `Node::record_sync` once the peer's id is known. A
/// snapshot transfer this needs is not limited to one at a time (see [`sync_once_with`]).
pub async fn sync_once(
    endpoint: &quinn::Endpoint,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    sync_once_with(
        &Connections::fresh(endpoint.clone()),
        node,
        address,
        expected,
        limits,
        &TransferGate::default(),
    )
    .await
}

/// [`sync_once`], where a snapshot transfer (the delta we lack does not fit in one body) must
/// hold `gate`: the gossip loop shares one gate across its exchanges, so a node fetches one
/// snapshot at a time.
///
/// The push-pull proper has one deadline (`request_timeout_ms`); a snapshot transfer in
/// between has one per piece, and the push-pull after it a fresh one.
pub async fn sync_once_with(
    connections: &Connections,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    limits: &SyncLimits,
    gate: &TransferGate,
) -> Result<SyncStats, SyncError> {
    let mut known_peer = expected.cloned();
    let result = exchange(
        connections,
        node,
        address,
        expected,
        limits,
        gate,
        &mut known_peer,
    )
    .await;
    match (&result, &known_peer) {
        (Ok(stats), _) => node.record_sync(
            &stats.peer,
            SyncOutcome::Ok {
                bytes_sent: stats.bytes_sent,
                bytes_received: stats.bytes_received,
            },
        ),
        (Err(SyncError::SelfConnection { .. }), _) => {}
        (Err(error), Some(peer)) => node.record_sync(peer, SyncOutcome::Failed(error.to_string())),
        (Err(_), None) => {}
    }
    result
}

/// `future` within `request_timeout_ms`.
pub(super) async fn within<T>(
    limits: &SyncLimits,
    address: SocketAddr,
    future: impl std::future::Future<Output = Result<T, SyncError>>,
) -> Result<T, SyncError> {
    match tokio::time::timeout(limits.request_timeout(), future).await {
        Ok(result) => result,
        Err(_) => Err(SyncError::Timeout {
            peer: address,
            timeout_ms: limits.request_timeout_ms,
        }),
    }
}

/// How a push-pull ended.
enum PushPull {
    Done,
    /// The delta we lack does not fit in one body (303): fetch the peer's snapshot.
    SnapshotNeeded,
}

async fn exchange(
    connections: &Connections,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    limits: &SyncLimits,
    gate: &TransferGate,
    known_peer: &mut Option<NodeId>,
) -> Result<SyncStats, SyncError> {
    let mut lease = connections.lease(address, expected, limits).await?;
    let mut result = exchange_on(lease.session(), node, limits, gate, known_peer).await;
    if let Err(error) = &result
        && lease.redial_after(error).await?
    {
        result = exchange_on(lease.session(), node, limits, gate, known_peer).await;
    }
    if let Ok(stats) = &mut result {
        lease.account(stats);
    }
    lease.finish(result.is_ok());
    result
}

/// One exchange on `session`: push-pull, and snapshot transfers while the delta we lack
/// does not fit in one body.
async fn exchange_on(
    session: &mut PeerSession,
    node: &Arc<Node>,
    limits: &SyncLimits,
    gate: &TransferGate,
    known_peer: &mut Option<NodeId>,
) -> Result<SyncStats, SyncError> {
    let address = session.address();
    let peer = session.peer().clone();
    *known_peer = Some(peer.clone());
    if &peer == node.node_id() {
        return Err(SyncError::SelfConnection { peer: address });
    }
    let mut stats = SyncStats {
        peer,
        bytes_sent: 0,
        bytes_received: 0,
        udp_bytes_sent: 0,
        udp_bytes_received: 0,
        entries_received: 0,
        entries_sent: 0,
        snapshot_bytes_received: 0,
        dialed: false,
    };
    let mut step = within(
        limits,
        address,
        push_pull(session, node, limits, &mut stats),
    )
    .await?;
    let mut last = None;
    let mut transfers = 0;
    while let PushPull::SnapshotNeeded = step {
        if transfers == SNAPSHOT_TRANSFERS_PER_SYNC_MAX {
            return Err(SyncError::Status {
                peer: address,
                path: PATH_SYNC,
                status: StatusCode::SEE_OTHER.as_u16(),
                message: format!(
                    "still too large for one body after {transfers} snapshot transfers"
                ),
            });
        }
        transfers += 1;
        let fetched = fetch_snapshot(session, node, limits, gate, last).await?;
        last = Some(fetched.transfer);
        stats.bytes_received += fetched.bytes;
        stats.snapshot_bytes_received += fetched.bytes;
        stats.entries_received += fetched.entries;
        step = within(
            limits,
            address,
            push_pull(session, node, limits, &mut stats),
        )
        .await?;
    }
    Ok(stats)
}

/// `POST /v1/sync` with our summary, apply what we lack, `POST /v1/push` what the peer lacks.
/// The summary is compact when that is smaller (`Node::compact_summary`); when the peer
/// cannot rebuild it (409) or does not know the form (400, a daemon built before it), the
/// full summary follows on the same session. A delta for the peer that does not fit in one
/// body is not pushed: the peer pulls it.
async fn push_pull(
    session: &mut PeerSession,
    node: &Arc<Node>,
    limits: &SyncLimits,
    stats: &mut SyncStats,
) -> Result<PushPull, SyncError> {
    let address = session.address();
    let decode_error = |source| SyncError::Decode {
        peer: address,
        source,
    };
    if let Some((compact, sent)) = node.compact_summary() {
        let body = codec::encode_compact_summary(&compact);
        stats.bytes_sent += body.len() as u64;
        let reply = session.post(PATH_SYNC, body).await?;
        match reply.status {
            StatusCode::SEE_OTHER => return Ok(PushPull::SnapshotNeeded),
            StatusCode::OK => {
                node.metrics().summary_sent("compact");
                stats.bytes_received += reply.body.len() as u64;
                let (delta, answer) =
                    wire::decode_compact_sync_response(&reply.body, limits.body_bytes_max)
                        .map_err(decode_error)?;
                let theirs = expand_reply(&sent, answer);
                if theirs.is_none() {
                    tracing::debug!(
                        peer = %session.peer(),
                        "the peer's reply to our compact summary does not add up to its digest; \
                         nothing pushed back"
                    );
                }
                return finish_push_pull(session, node, limits, stats, delta, theirs).await;
            }
            StatusCode::CONFLICT | StatusCode::BAD_REQUEST => {
                node.metrics().summary_sent("compact_refused");
                tracing::debug!(
                    peer = %session.peer(),
                    status = reply.status.as_u16(),
                    reason = %reply.message(),
                    "compact summary refused; sending the full summary"
                );
            }
            _ => expect_status(session, PATH_SYNC, &reply, StatusCode::OK)?,
        }
    }
    let summary = codec::encode_summary(&node.summary());
    stats.bytes_sent += summary.len() as u64;
    let reply = session.post(PATH_SYNC, summary).await?;
    if reply.status == StatusCode::SEE_OTHER {
        return Ok(PushPull::SnapshotNeeded);
    }
    expect_status(session, PATH_SYNC, &reply, StatusCode::OK)?;
    node.metrics().summary_sent("full");
    stats.bytes_received += reply.body.len() as u64;
    let (delta, theirs) =
        wire::decode_sync_response(&reply.body, limits.body_bytes_max).map_err(decode_error)?;
    finish_push_pull(session, node, limits, stats, delta, Some(theirs)).await
}

/// The rest of a push-pull once the peer answered: apply `delta` (what we lack), then push
/// what the peer lacks according to `theirs`, its summary, when known.
async fn finish_push_pull(
    session: &mut PeerSession,
    node: &Arc<Node>,
    limits: &SyncLimits,
    stats: &mut SyncStats,
    delta: Delta,
    theirs: Option<Summary>,
) -> Result<PushPull, SyncError> {
    let peer = session.peer().clone();
    stats.entries_received += delta.entry_count();
    if !delta.is_empty() {
        apply_blocking(node, &peer, delta).await?;
    }
    let Some(theirs) = theirs else {
        return Ok(PushPull::Done);
    };
    match node.delta_within(&peer, &theirs, limits.body_bytes_max) {
        Some(back) if !back.is_empty() => {
            stats.entries_sent += back.entry_count();
            let body = codec::encode_delta(&back);
            stats.bytes_sent += body.len() as u64;
            let reply = session.post(PATH_PUSH, body).await?;
            expect_status(session, PATH_PUSH, &reply, StatusCode::NO_CONTENT)?;
        }
        Some(_) => {}
        None => tracing::debug!(
            %peer,
            body_bytes_max = limits.body_bytes_max,
            "what the peer lacks exceeds body_bytes_max; it fetches a snapshot from us"
        ),
    }
    Ok(PushPull::Done)
}

/// Eagerly pushes `delta` (a local change) to the peer at `address`. When the peer lacks the
/// base of the delta (409), falls back to a full push-pull with [`sync_once`]. A delta whose
/// encoding exceeds `body_bytes_max` is not pushed; see [`push_with`].
pub async fn push(
    endpoint: &quinn::Endpoint,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    delta: &Delta,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    push_with(
        &Connections::fresh(endpoint.clone()),
        node,
        address,
        expected,
        delta,
        0,
        limits,
        &TransferGate::default(),
    )
    .await
}

/// [`push`], whose fallback push-pull is [`sync_once_with`] `gate`, and which the peer may
/// forward `hops` more times (`/v1/push?hops=`). A delta whose encoding exceeds
/// `body_bytes_max` is refused here with [`SyncError::PushTooLarge`], unsent: the peers pull
/// it (in pieces) by anti-entropy.
#[allow(clippy::too_many_arguments)]
pub async fn push_with(
    connections: &Connections,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    delta: &Delta,
    hops: u8,
    limits: &SyncLimits,
    gate: &TransferGate,
) -> Result<SyncStats, SyncError> {
    let bytes = shoal_crdt::encoded_delta_bytes(delta);
    if bytes > limits.body_bytes_max {
        return Err(SyncError::PushTooLarge {
            bytes,
            body_bytes_max: limits.body_bytes_max,
        });
    }
    let body = codec::encode_delta(delta);
    let push = Push {
        body: &body,
        entries: delta.entry_count(),
        query: PushQuery { hops },
    };
    match push_body(connections, node, address, expected, push, limits).await {
        Err(SyncError::Status { status, .. }) if status == StatusCode::CONFLICT.as_u16() => {
            sync_once_with(connections, node, address, expected, limits, gate).await
        }
        other => other,
    }
}

/// Forwards another member's eager push (`body`, as this node received it) to the peer at
/// `address`, which may forward it `hops` more times. No fallback: a peer that lacks the
/// delta's base (409) gets it by anti-entropy.
pub async fn forward_with(
    connections: &Connections,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    body: &[u8],
    hops: u8,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    let push = Push {
        body,
        entries: 0,
        query: PushQuery { hops },
    };
    push_body(connections, node, address, expected, push, limits).await
}

/// One push's body and what it says.
#[derive(Clone, Copy)]
struct Push<'a> {
    body: &'a [u8],
    /// Entries in the body, for the stats (0 when not decoded here).
    entries: usize,
    query: PushQuery,
}

/// `push` on the kept connection to `address`, once more on a new connection when the
/// kept one broke under it.
async fn push_body(
    connections: &Connections,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    push: Push<'_>,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    let mut lease = connections.lease(address, expected, limits).await?;
    let mut result = push_on(lease.session(), node, push, limits).await;
    if let Err(error) = &result
        && lease.redial_after(error).await?
    {
        result = push_on(lease.session(), node, push, limits).await;
    }
    if let Ok(stats) = &mut result {
        lease.account(stats);
    }
    lease.finish(result.is_ok());
    result
}

/// One `POST /v1/push` of `push` on `session`.
async fn push_on(
    session: &mut PeerSession,
    node: &Arc<Node>,
    push: Push<'_>,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    let address = session.address();
    if session.peer() == node.node_id() {
        return Err(SyncError::SelfConnection { peer: address });
    }
    let path = push.query.path_and_query();
    let reply = within(limits, address, session.post(&path, push.body.to_vec())).await?;
    expect_status(session, PATH_PUSH, &reply, StatusCode::NO_CONTENT)?;
    Ok(SyncStats {
        peer: session.peer().clone(),
        bytes_sent: push.body.len() as u64,
        bytes_received: reply.body.len() as u64,
        udp_bytes_sent: 0,
        udp_bytes_received: 0,
        entries_received: 0,
        entries_sent: push.entries,
        snapshot_bytes_received: 0,
        dialed: false,
    })
}
