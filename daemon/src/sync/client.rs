//! The dialing side of sync: a session with one peer, one push-pull ([`sync_once`]) and an eager
//! push ([`push`]). Remote logs ask through the same session (`super::logs::fetch_log`).
//!
//! A push-pull is: `POST /v1/sync` with our summary; apply the delta we lack (durable before
//! applied, by `Node::apply_remote`); then `POST /v1/push` with what the peer lacks according to
//! the summary it returned. Each step is bounded by `SyncLimits` (body size, one deadline for
//! the whole exchange). A session sends no request once the peer's certificate has expired
//! (the handshake verified it, nothing does later): it closes the connection instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use shoal_crdt::{Delta, NodeId, codec};

use super::tls::{peer_node_id, peer_not_after, server_name_for};
use super::wire::{self, CONTENT_TYPE, PATH_PUSH, PATH_SYNC};
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
    /// UDP payload bytes sent and received on the connection, handshake and framing included.
    pub udp_bytes_sent: u64,
    pub udp_bytes_received: u64,
    /// Entries in the delta received from the peer and in the one pushed back.
    pub entries_received: usize,
    pub entries_sent: usize,
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
/// lacks. The outcome is recorded with `Node::record_sync` once the peer's id is known.
pub async fn sync_once(
    endpoint: &quinn::Endpoint,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    let mut known_peer = expected.cloned();
    let exchange = exchange(endpoint, node, address, expected, limits, &mut known_peer);
    let result = match tokio::time::timeout(limits.request_timeout(), exchange).await {
        Ok(result) => result,
        Err(_) => Err(SyncError::Timeout {
            peer: address,
            timeout_ms: limits.request_timeout_ms,
        }),
    };
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

async fn exchange(
    endpoint: &quinn::Endpoint,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    limits: &SyncLimits,
    known_peer: &mut Option<NodeId>,
) -> Result<SyncStats, SyncError> {
    let mut session = connect(endpoint, address, expected, limits).await?;
    let peer = session.peer().clone();
    *known_peer = Some(peer.clone());
    if &peer == node.node_id() {
        session.close();
        return Err(SyncError::SelfConnection { peer: address });
    }
    let summary = codec::encode_summary(&node.summary());
    let mut stats = SyncStats {
        peer: peer.clone(),
        bytes_sent: summary.len() as u64,
        bytes_received: 0,
        udp_bytes_sent: 0,
        udp_bytes_received: 0,
        entries_received: 0,
        entries_sent: 0,
    };
    let reply = session.post(PATH_SYNC, summary).await?;
    expect_status(&session, PATH_SYNC, &reply, StatusCode::OK)?;
    stats.bytes_received = reply.body.len() as u64;
    let (delta, theirs) =
        wire::decode_sync_response(&reply.body, limits.body_bytes_max).map_err(|source| {
            SyncError::Decode {
                peer: address,
                source,
            }
        })?;
    stats.entries_received = delta.entry_count();
    if !delta.is_empty() {
        apply_blocking(node, &peer, delta).await?;
    }
    let back = node.delta_for(&peer, &theirs);
    if !back.is_empty() {
        stats.entries_sent = back.entry_count();
        let body = codec::encode_delta(&back);
        stats.bytes_sent += body.len() as u64;
        let reply = session.post(PATH_PUSH, body).await?;
        expect_status(&session, PATH_PUSH, &reply, StatusCode::NO_CONTENT)?;
    }
    (stats.udp_bytes_sent, stats.udp_bytes_received) = session.udp_bytes();
    session.close();
    Ok(stats)
}

/// Eagerly pushes `delta` (a local change) to the peer at `address`. When the peer lacks the
/// base of the delta (409), falls back to a full push-pull with [`sync_once`].
pub async fn push(
    endpoint: &quinn::Endpoint,
    node: &Arc<Node>,
    address: SocketAddr,
    expected: Option<&NodeId>,
    delta: &Delta,
    limits: &SyncLimits,
) -> Result<SyncStats, SyncError> {
    let body = codec::encode_delta(delta);
    let attempt = async {
        let mut session = connect(endpoint, address, expected, limits).await?;
        if session.peer() == node.node_id() {
            session.close();
            return Err(SyncError::SelfConnection { peer: address });
        }
        let bytes_sent = body.len() as u64;
        let reply = session.post(PATH_PUSH, body).await?;
        let (udp_bytes_sent, udp_bytes_received) = session.udp_bytes();
        let status = expect_status(&session, PATH_PUSH, &reply, StatusCode::NO_CONTENT);
        let peer = session.peer().clone();
        session.close();
        status.map(|()| SyncStats {
            peer,
            bytes_sent,
            bytes_received: reply.body.len() as u64,
            udp_bytes_sent,
            udp_bytes_received,
            entries_received: 0,
            entries_sent: delta.entry_count(),
        })
    };
    let result = match tokio::time::timeout(limits.request_timeout(), attempt).await {
        Ok(result) => result,
        Err(_) => Err(SyncError::Timeout {
            peer: address,
            timeout_ms: limits.request_timeout_ms,
        }),
    };
    match result {
        Err(SyncError::Status { status, .. }) if status == StatusCode::CONFLICT.as_u16() => {
            sync_once(endpoint, node, address, expected, limits).await
        }
        other => other,
    }
}
