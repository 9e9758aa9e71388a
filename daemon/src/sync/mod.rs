//! State sync between nodes over mutually authenticated HTTP/3 (quinn + h3 + rustls).
//!
//! - [`wire`]: the protocol: versioned paths, body framing, status codes.
//! - [`server`]: [`serve`] answers `POST /v1/sync`, `POST /v1/push`, `GET /v1/logs`,
//!   `GET /v1/snapshot`, `POST /v1/drain` and `POST /v1/swim` on the endpoint.
//! - [`client`]: [`sync_once`] (one push-pull with a peer) and [`push`] (eager push).
//! - [`logs`]: remote `shoal logs`: the [`LogSource`] seam the server reads this node's
//!   containers through, and [`fetch_log`] for the caller.
//! - [`drain`]: `shoal node drain|undrain` of another node: `POST /v1/drain`, answered by
//!   the node named, which writes its own drain; [`ask_drain`] for the caller.
//! - [`membership`]: sans-IO choice of whom to sync with, with seeded randomness.
//! - [`gossip`]: [`run_gossip`], the anti-entropy loop plus eager push of local changes and
//!   forwards of pushes new to this node (epidemic push).
//! - [`sim`]: the sync protocol and SWIM for many replicas in one process, virtual time, one
//!   seed (the scale bench, `cargo bench -p shoal --bench sync_scale`).
//! - [`swim`]: [`run_swim`], the SWIM membership driver (`crate::swim` on tokio): packets
//!   as `POST /v1/swim` on the kept connections, SWIM's view handed to the node.
//! - [`transfer`]: a state too large for one body travels as a snapshot in pieces
//!   (`GET /v1/snapshot`): the server's cache and the caller's download.
//!
//! One UDP socket ([`bind_endpoint`]) serves both directions: the endpoint accepts peers'
//! connections and dials peers with our certificate. Both directions take the certificate and
//! the CA from a [`TlsHandle`] at each handshake ([`bind_reloadable_endpoint`]), so a reload
//! applies to new connections without rebinding. *Invariant:* the peer's node id used for any
//! state operation comes from its verified certificate, never from a body; and a connection
//! is used only while that certificate is valid.

pub mod client;
pub mod connections;
pub mod drain;
pub mod gossip;
pub mod logs;
pub mod membership;
pub mod pki;
pub mod server;
pub mod sim;
pub mod swim;
pub mod tls;
pub mod transfer;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_crdt::NodeId;

pub use client::{
    PeerSession, Reply, SyncStats, connect, forward_with, push, push_with, sync_once,
    sync_once_with,
};
pub use drain::ask_drain;
pub use gossip::{GossipConfig, GossipCounters, GossipInputs, run_gossip, run_gossip_on};
pub use logs::{LogSource, LogSourceError, fetch_log};
pub use server::{Forward, Forwards, Handlers, serve};
pub use swim::{SwimInbox, SwimSettings, run_swim};
pub use tls::{CertificateExpiry, TlsError, TlsHandle, TlsMaterial, node_id_from_cert};

/// Bounds of the sync protocol, for both the server and the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLimits {
    /// Largest request or response body accepted; larger ones are refused (413) unread.
    pub body_bytes_max: usize,
    /// Deadline for one request (server) or one whole push-pull (client), handshake included.
    pub request_timeout_ms: u64,
    /// Concurrent incoming connections; more are refused at once.
    pub connections_max: usize,
}

impl Default for SyncLimits {
    fn default() -> Self {
        Self {
            body_bytes_max: 8 * 1024 * 1024,
            request_timeout_ms: 5_000,
            connections_max: 256,
        }
    }
}

impl SyncLimits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Concurrent request streams one peer may open on a connection (QUIC flow control enforces it).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 8;
/// A connection with no traffic for this long is closed. Long, so the kept connection to a
/// peer outlives the gaps between SWIM's probes of it (about one per member count of probe
/// periods) and handshakes stay rare; an idle QUIC connection costs memory, not packets.
pub const IDLE_TIMEOUT_MS: u32 = 300_000;

/// Errors of the sync layer. Each names the peer (address or node id) or the address at fault.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("bind {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connect to {peer}: {reason}")]
    Connect { peer: SocketAddr, reason: String },
    #[error("peer {peer} is node {found}, expected {expected}")]
    UnexpectedPeer {
        peer: SocketAddr,
        expected: NodeId,
        found: NodeId,
    },
    #[error("peer {peer} ({node}): its certificate expired; the connection is closed")]
    PeerCertificateExpired { peer: SocketAddr, node: NodeId },
    #[error("peer {peer} is this node itself")]
    SelfConnection { peer: SocketAddr },
    #[error("http/3 with {peer}: {reason}")]
    Http { peer: SocketAddr, reason: String },
    #[error("{peer}: no answer within {timeout_ms} ms")]
    Timeout { peer: SocketAddr, timeout_ms: u64 },
    #[error("{peer} answered {path} with status {status}: {message}")]
    Status {
        peer: SocketAddr,
        path: &'static str,
        status: u16,
        message: String,
    },
    #[error("{peer}: response body over {body_bytes_max} bytes")]
    ResponseTooLarge {
        peer: SocketAddr,
        body_bytes_max: usize,
    },
    #[error("{peer}: bad response body: {source}")]
    Decode {
        peer: SocketAddr,
        #[source]
        source: wire::WireError,
    },
    #[error("applying the delta from {peer} failed: {reason}")]
    Apply { peer: NodeId, reason: String },
    #[error("a delta of {bytes} bytes is over body_bytes_max ({body_bytes_max}); not pushed")]
    PushTooLarge { bytes: usize, body_bytes_max: usize },
    #[error("snapshot from {peer}: {source}")]
    Snapshot {
        peer: SocketAddr,
        #[source]
        source: transfer::TransferError,
    },
}

/// Binds the node's UDP socket: an HTTP/3 server requiring client certificates, and the
/// default client config that presents ours, on the same endpoint, with fixed material.
pub fn bind_endpoint(listen: SocketAddr, tls: &TlsMaterial) -> Result<quinn::Endpoint, SyncError> {
    bind_reloadable_endpoint(listen, &TlsHandle::new(tls.clone()))
}

/// [`bind_endpoint`] with the material of `tls` at each handshake: after
/// [`TlsHandle::reload`], new connections in both directions use the new certificate and CA.
pub fn bind_reloadable_endpoint(
    listen: SocketAddr,
    tls: &TlsHandle,
) -> Result<quinn::Endpoint, SyncError> {
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server_config()?)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server_config.transport_config(transport_config());
    let bind_error = |source| SyncError::Bind {
        address: listen,
        source,
    };
    let socket = std::net::UdpSocket::bind(listen).map_err(bind_error)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| bind_error(std::io::Error::other("no async runtime for QUIC")))?;
    let mut endpoint = quinn::Endpoint::new(
        tls.current().quic_endpoint_config(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(bind_error)?;
    endpoint.set_default_client_config(client_config(tls)?);
    Ok(endpoint)
}

/// The quinn client config that presents the certificate of `tls`;
/// [`bind_reloadable_endpoint`] installs it.
pub fn client_config(tls: &TlsHandle) -> Result<quinn::ClientConfig, SyncError> {
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client_config()?)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(client_crypto));
    config.transport_config(transport_config());
    Ok(config)
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into())
        // HTTP/3 needs a control and two QPACK streams per side; a few spare.
        .max_concurrent_uni_streams(8u32.into())
        .max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    Arc::new(transport)
}
