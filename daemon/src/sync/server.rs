//! The answering side of sync: accepts mutually authenticated HTTP/3 connections and serves
//! `POST /v1/sync`, `POST /v1/push`, `GET /v1/logs`, `GET /v1/snapshot`, `POST /v1/drain` and
//! `POST /v1/swim` (a SWIM packet, handed to the membership driver's inbox, see
//! [`super::swim`])
//! (see [`super::wire`]; logs are read through the [`LogSource`] the caller gives, see
//! [`super::logs`]; a delta too large for one body is answered with 303 and fetched as a
//! snapshot in pieces from the server's [`SnapshotCache`], see [`super::transfer`]; a drain
//! is written by this node itself, see [`super::drain`]).
//!
//! Bounds: at most `connections_max` connections at once (more are refused before the
//! handshake), `STREAMS_PER_CONNECTION_MAX` concurrent requests per connection (QUIC stream
//! credit), bodies up to `body_bytes_max` (a larger Content-Length is refused with 413 before any
//! byte of the body is read; a streamed body is cut off at the limit; a body longer than its
//! Content-Length is cut off there and one shorter is refused, both 400), and `request_timeout_ms`
//! per request. A connection whose certificate fails verification ends in the handshake, so it
//! never reaches a handler; the refusal is logged with the peer address and reason. A
//! connection ends when the peer's certificate expires (a timer at its notAfter, and a check
//! before each request, in case the wall clock jumped): the handshake verified it, and nothing
//! checks it again later.
//!
//! Shutdown: when `shutdown` completes, no new connection is accepted and open connections
//! (peers keep theirs between exchanges) take no new request: each is closed once its
//! requests in flight have been answered, within `request_timeout_ms`, then aborted. The endpoint itself is left open (the
//! gossip loop dials through it); the caller closes it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use h3::server::RequestStream;
use http::StatusCode;
use shoal_crdt::{NodeId, codec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::drain;
use super::logs::{self, LogSource};
use super::swim::SwimInbox;
use super::tls::{peer_node_id, peer_not_after};
use super::transfer::{self, SnapshotCache};
use super::wire::{self, CONTENT_TYPE, Route};
use super::{SyncError, SyncLimits};
use crate::state::{Node, NodeError, OnNew};

type ServerStream = RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// What answers the requests that are not the node's own: logs and SWIM packets.
#[derive(Clone, Default)]
pub struct Handlers {
    /// Answers `GET /v1/logs`; without it every container is "not on this node".
    pub logs: Option<Arc<dyn LogSource>>,
    /// Takes `POST /v1/swim` packets; without it they are refused with 404.
    pub swim: Option<SwimInbox>,
    /// Takes eager pushes to forward (new to this node, hops left); without it none is.
    pub forwards: Option<Forwards>,
}

/// An eager push this node took and forwards: its encoded delta, as received.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The member that pushed it here (not sent it back).
    pub from: NodeId,
    pub body: Bytes,
    /// How many more times the receivers may forward it.
    pub hops: u8,
}

/// Most pushes waiting to be forwarded; beyond it they are dropped (and counted):
/// anti-entropy delivers them.
pub const FORWARDS_QUEUED_MAX: usize = 256;

/// The sync server's side of the forward queue (the gossip loop takes from the other).
#[derive(Clone)]
pub struct Forwards {
    queue: tokio::sync::mpsc::Sender<Forward>,
}

impl Forwards {
    /// A bounded queue of [`FORWARDS_QUEUED_MAX`] forwards and its receiving end.
    pub fn new() -> (Forwards, tokio::sync::mpsc::Receiver<Forward>) {
        let (queue, receiver) = tokio::sync::mpsc::channel(FORWARDS_QUEUED_MAX);
        (Forwards { queue }, receiver)
    }

    /// Queues `forward`; false when the queue is full or gone (the forward is dropped).
    fn offer(&self, forward: Forward) -> bool {
        self.queue.try_send(forward).is_ok()
    }
}

/// Serves sync requests on `endpoint` until `shutdown` completes or the endpoint is closed.
pub async fn serve(
    endpoint: quinn::Endpoint,
    node: Arc<Node>,
    limits: SyncLimits,
    handlers: Handlers,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SyncError> {
    assert!(
        limits.connections_max > 0,
        "connections_max must be positive"
    );
    assert!(limits.body_bytes_max > 0, "body_bytes_max must be positive");
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let snapshots = Arc::new(SnapshotCache::new());
    let mut connections = JoinSet::new();
    let (closing_sender, closing) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                let _ = closing_sender.send(true);
                break;
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(serve_connection(
                            incoming,
                            node.clone(),
                            limits.clone(),
                            handlers.clone(),
                            snapshots.clone(),
                            permit,
                            closing.clone(),
                        ));
                    }
                    Err(_) => {
                        tracing::warn!(
                            remote = %incoming.remote_address(),
                            connections_max = limits.connections_max,
                            "refused connection: too many connections"
                        );
                        incoming.refuse();
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.request_timeout(), drain)
        .await
        .is_err()
    {
        tracing::info!(
            remaining = connections.len(),
            "sync server: aborting connections still open at shutdown"
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn serve_connection(
    incoming: quinn::Incoming,
    node: Arc<Node>,
    limits: SyncLimits,
    handlers: Handlers,
    snapshots: Arc<SnapshotCache>,
    _permit: OwnedSemaphorePermit,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let remote = incoming.remote_address();
    let connection = match tokio::time::timeout(limits.request_timeout(), incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            tracing::warn!(%remote, reason = %error, "refused connection: handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused connection: handshake timed out");
            return;
        }
    };
    let peer = match peer_node_id(&connection) {
        Ok(peer) => peer,
        Err(error) => {
            // Unreachable with our verifier (it refuses certificates without a node id), kept
            // so that no request is ever served without a certificate-derived identity.
            tracing::warn!(%remote, reason = %error, "refused connection: no node id");
            connection.close(0u32.into(), b"no node id");
            return;
        }
    };
    let not_after = match peer_not_after(&connection) {
        Ok(not_after) => not_after,
        Err(error) => {
            tracing::warn!(%remote, %peer, reason = %error, "refused connection: no certificate validity");
            connection.close(0u32.into(), b"bad certificate");
            return;
        }
    };
    tracing::debug!(%remote, %peer, "sync connection accepted");
    let mut h3_connection = match h3::server::Connection::<_, Bytes>::new(
        h3_quinn::Connection::new(connection.clone()),
    )
    .await
    {
        Ok(h3_connection) => h3_connection,
        Err(error) => {
            tracing::debug!(%remote, %peer, reason = %error, "http/3 setup failed");
            return;
        }
    };
    let deadline = until(not_after);
    let expiry = async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expiry);
    let mut requests = JoinSet::new();
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = closing.wait_for(|closing| *closing) => {
                shutting_down = true;
                break;
            }
            () = &mut expiry => {
                close_expired(&connection, &peer, remote);
                requests.abort_all();
                break;
            }
            accepted = h3_connection.accept() => match accepted {
                Ok(Some(resolver)) => {
                    if SystemTime::now() >= not_after {
                        close_expired(&connection, &peer, remote);
                        requests.abort_all();
                        break;
                    }
                    let context = RequestContext {
                        node: node.clone(),
                        peer: peer.clone(),
                        remote,
                        limits: limits.clone(),
                        handlers: handlers.clone(),
                        snapshots: snapshots.clone(),
                    };
                    requests.spawn(async move {
                        match resolver.resolve_request().await {
                            Ok((request, stream)) => context.handle(request, stream).await,
                            Err(error) => tracing::debug!(%remote, reason = %error, "bad request headers"),
                        }
                    });
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%remote, %peer, reason = %error, "sync connection ended");
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    while requests.join_next().await.is_some() {}
    if shutting_down {
        connection.close(0u32.into(), b"shutting down");
    }
}

/// `time` on the wall clock as a tokio deadline (now if past; `None` if too far to represent).
fn until(time: SystemTime) -> Option<tokio::time::Instant> {
    let left = time
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now().checked_add(left)
}

fn close_expired(connection: &quinn::Connection, peer: &NodeId, remote: SocketAddr) {
    tracing::info!(%remote, %peer, "closing sync connection: peer certificate expired");
    connection.close(0u32.into(), b"certificate expired");
}

struct RequestContext {
    node: Arc<Node>,
    peer: NodeId,
    remote: SocketAddr,
    limits: SyncLimits,
    handlers: Handlers,
    snapshots: Arc<SnapshotCache>,
}

/// A refusal: status and a reason for the caller.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What answering a request gave: a response, a refusal, or `None` when the stream failed.
type Answer = Result<Option<(StatusCode, Bytes)>, Refusal>;

/// How reading a request body ended, when it did not yield the body.
enum BodyError {
    TooLarge,
    /// Longer or shorter than its Content-Length.
    Length(wire::WireError),
    Stream(String),
}

impl RequestContext {
    async fn handle(self, request: http::Request<()>, mut stream: ServerStream) {
        let path = request.uri().path().to_owned();
        let answer = tokio::time::timeout(
            self.limits.request_timeout(),
            self.answer(&request, &mut stream),
        )
        .await;
        if path == wire::PATH_PUSH
            && let Ok(answer) = &answer
        {
            self.note_push_outcome(answer);
        }
        let (status, body) = match answer {
            Ok(Ok(Some((status, body)))) => (status, body),
            Ok(Ok(None)) => return, // the stream broke; nobody to answer
            Ok(Err(refusal)) => {
                tracing::warn!(
                    peer = %self.peer,
                    remote = %self.remote,
                    %path,
                    status = refusal.status.as_u16(),
                    reason = %refusal.message,
                    "refused sync request"
                );
                (refusal.status, Bytes::from(refusal.message))
            }
            Err(_) => {
                tracing::warn!(peer = %self.peer, %path, "sync request timed out");
                return;
            }
        };
        if let Err(error) = respond(&mut stream, status, body).await {
            tracing::debug!(peer = %self.peer, %path, reason = %error, "response not delivered");
        }
    }

    /// Remembers, for `shoal nodes`, that the peer's writes were refused and why (a 4xx other
    /// than 409, which only asks the peer to pull first), or that they are accepted again.
    fn note_push_outcome(&self, answer: &Answer) {
        match answer {
            Ok(Some((status, _))) if status.is_success() => {
                self.node.record_accepted_writes(&self.peer);
            }
            Err(refusal)
                if refusal.status.is_client_error() && refusal.status != StatusCode::CONFLICT =>
            {
                self.node.record_refused_writes(
                    &self.peer,
                    self.remote,
                    format!("{} {}", refusal.status.as_u16(), refusal.message),
                );
            }
            _ => {}
        }
    }

    /// The response to send, a refusal, or `None` when the stream failed.
    async fn answer(
        &self,
        request: &http::Request<()>,
        stream: &mut ServerStream,
    ) -> Result<Option<(StatusCode, Bytes)>, Refusal> {
        let route = wire::route(request.method(), request.uri().path())
            .map_err(|error| Refusal::new(error.status, error.message))?;
        let max = match route {
            Route::Swim => wire::SWIM_BODY_BYTES_MAX,
            _ => self.limits.body_bytes_max,
        };
        let declared = declared_length(request)?;
        if let Some(length) = declared
            && length > max as u64
        {
            stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
            return Err(Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body of {length} bytes exceeds the limit of {max} bytes"),
            ));
        }
        let body = match read_body(stream, max, declared).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                return Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("body exceeds the limit of {max} bytes"),
                ));
            }
            Err(BodyError::Length(error)) => {
                stream.stop_sending(h3::error::Code::H3_REQUEST_REJECTED);
                return Err(Refusal::new(error.status(), error.to_string()));
            }
            Err(BodyError::Stream(reason)) => {
                tracing::debug!(peer = %self.peer, %reason, "request body not received");
                return Ok(None);
            }
        };
        let decode_refusal =
            |error: wire::WireError| Refusal::new(error.status(), error.to_string());
        match route {
            Route::Sync => {
                let request = wire::decode_sync_request(&body, max).map_err(decode_refusal)?;
                let (theirs, tail) = match request {
                    wire::SyncRequest::Full(theirs) => {
                        (theirs, codec::encode_summary(&self.node.summary()))
                    }
                    wire::SyncRequest::Compact(compact) => {
                        let Some(theirs) = self.node.expand_summary(&compact) else {
                            return Ok(Some((
                                StatusCode::CONFLICT,
                                Bytes::from_static(wire::SEND_FULL_SUMMARY.as_bytes()),
                            )));
                        };
                        let reply = self.node.summary_reply(&theirs.vv);
                        (theirs, codec::encode_summary_reply(&reply))
                    }
                };
                let room = wire::sync_delta_bytes_max(max, tail.len());
                let Some(delta) = self.node.delta_within(&self.peer, &theirs, room) else {
                    tracing::debug!(
                        peer = %self.peer,
                        body_bytes_max = max,
                        "delta for peer exceeds body_bytes_max; it fetches a snapshot in pieces"
                    );
                    return Ok(Some((
                        StatusCode::SEE_OTHER,
                        Bytes::from(format!(
                            "the delta for you does not fit in {max} bytes; \
                             fetch GET {} in pieces",
                            wire::PATH_SNAPSHOT
                        )),
                    )));
                };
                let response = wire::encode_sync_response(&delta, &tail);
                debug_assert!(response.len() <= max, "a bounded delta overflows its body");
                Ok(Some((StatusCode::OK, Bytes::from(response))))
            }
            Route::Push => {
                let query =
                    wire::PushQuery::parse(request.uri().query()).map_err(decode_refusal)?;
                let delta = wire::decode_delta(&body, max).map_err(decode_refusal)?;
                let node = self.node.clone();
                let peer = self.peer.clone();
                // New to us and allowed further: on to other members (epidemic push), as
                // soon as it proved valid and new, not after this node's fsync.
                let forward = match &self.handlers.forwards {
                    Some(forwards) if query.hops > 0 => {
                        let forwards = forwards.clone();
                        let metrics = self.node.metrics().clone();
                        let forward = Forward {
                            from: self.peer.clone(),
                            body,
                            hops: query.hops - 1,
                        };
                        Some(Box::new(move || {
                            if !forwards.offer(forward) {
                                metrics.forward_done("dropped");
                            }
                        }) as OnNew)
                    }
                    _ => None,
                };
                // Making the push durable is an fsync: off the async workers.
                let applied = tokio::task::spawn_blocking(move || {
                    node.apply_push_then(&peer, delta, forward)
                })
                .await
                .map_err(|error| {
                    Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
                })?;
                applied.map_err(|error| Refusal::new(status_for(&error), error.to_string()))?;
                Ok(Some((StatusCode::NO_CONTENT, Bytes::new())))
            }
            Route::Logs => {
                if !body.is_empty() {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        format!("GET {} takes no body", wire::PATH_LOGS),
                    ));
                }
                let query = wire::LogQuery::parse(request.uri().query()).map_err(decode_refusal)?;
                tracing::debug!(peer = %self.peer, container = %query.container, "log request");
                let piece =
                    logs::answer(self.handlers.logs.clone(), self.node.node_id(), query, max)
                        .await
                        .map_err(|refusal| Refusal::new(refusal.status, refusal.message))?;
                Ok(Some((StatusCode::OK, Bytes::from(piece))))
            }
            Route::Swim => {
                let Some(inbox) = &self.handlers.swim else {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        "this node does not run SWIM membership",
                    ));
                };
                inbox
                    .deliver(&self.peer, body)
                    .map_err(|error| Refusal::new(error.status(), error.to_string()))?;
                Ok(Some((StatusCode::NO_CONTENT, Bytes::new())))
            }
            Route::Drain => {
                drain::answer(self.node.clone(), &self.peer, &body)
                    .await
                    .map_err(|refusal| Refusal::new(refusal.status, refusal.message))?;
                Ok(Some((StatusCode::NO_CONTENT, Bytes::new())))
            }
            Route::Snapshot => {
                if !body.is_empty() {
                    return Err(Refusal::new(
                        StatusCode::BAD_REQUEST,
                        format!("GET {} takes no body", wire::PATH_SNAPSHOT),
                    ));
                }
                let query =
                    wire::SnapshotQuery::parse(request.uri().query()).map_err(decode_refusal)?;
                tracing::debug!(peer = %self.peer, ?query, "snapshot piece request");
                let piece = transfer::answer(self.snapshots.clone(), self.node.clone(), query, max)
                    .await
                    .map_err(|refusal| Refusal::new(refusal.status, refusal.message))?;
                Ok(Some((StatusCode::OK, Bytes::from(piece))))
            }
        }
    }
}

/// The status a node refusal maps to.
fn status_for(error: &NodeError) -> StatusCode {
    match error {
        NodeError::StaleBase { .. } => StatusCode::CONFLICT,
        NodeError::ClockDrift { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        NodeError::NotMember { .. } | NodeError::OwnName { .. } => StatusCode::FORBIDDEN,
        NodeError::Invalid { .. }
        | NodeError::Operation { .. }
        | NodeError::InvalidSpec { .. }
        | NodeError::DuplicateService(_)
        | NodeError::NotFound(_)
        | NodeError::NothingToRollBack(_)
        | NodeError::UnknownNode(_)
        | NodeError::Evict(_) => StatusCode::BAD_REQUEST,
        NodeError::Storage(_)
        | NodeError::Poisoned
        | NodeError::Abandoned(_)
        | NodeError::Load { .. }
        | NodeError::Encode { .. }
        | NodeError::ClockAhead(_)
        | NodeError::Contested(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn declared_length(request: &http::Request<()>) -> Result<Option<u64>, Refusal> {
    let Some(value) = request.headers().get(http::header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| Refusal::new(StatusCode::BAD_REQUEST, "content-length is not a number"))
}

/// Reads a body of at most `body_bytes_max` bytes that must be exactly `declared` bytes when a
/// Content-Length was sent: reading stops at the first byte past it.
async fn read_body(
    stream: &mut ServerStream,
    body_bytes_max: usize,
    declared: Option<u64>,
) -> Result<Bytes, BodyError> {
    let mut body = BytesMut::new();
    loop {
        let chunk = stream
            .recv_data()
            .await
            .map_err(|error| BodyError::Stream(error.to_string()))?;
        let Some(mut chunk) = chunk else { break };
        let length = body.len() + chunk.remaining();
        if length > body_bytes_max {
            return Err(BodyError::TooLarge);
        }
        if let Some(declared) = declared
            && length as u64 > declared
        {
            return Err(BodyError::Length(wire::WireError::LongerThanDeclared {
                declared,
            }));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let length = part.len();
            body.extend_from_slice(part);
            chunk.advance(length);
        }
    }
    wire::check_body_length(declared, body.len()).map_err(BodyError::Length)?;
    Ok(body.freeze())
}

async fn respond(
    stream: &mut ServerStream,
    status: StatusCode,
    body: Bytes,
) -> Result<(), h3::error::StreamError> {
    let content_type = if status.is_success() {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let response = http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(())
        .expect("a response from a valid status and headers");
    stream.send_response(response).await?;
    if !body.is_empty() {
        stream.send_data(body).await?;
    }
    stream.finish().await
}
