//! The local operator API: what the CLI and the daemon say to each other over the daemon's
//! Unix socket. This module is the leaf both sides import: the request, the envelope and
//! every response view. `server` (in the daemon) answers requests from the node's state;
//! `client` (in the CLI) sends them. Neither the durable state nor the scheduler imports
//! this module: the server builds every view here from what they return.
//!
//! Protocol (version `API_VERSION`): the client writes one JSON object on one line,
//! `{"version":1,"request":{"op":"service_list"}}`, and the server answers with one JSON
//! line, `{"ok":<result>}` or `{"error":"<message>"}`. A connection may carry several
//! request/response pairs in sequence. A request line longer than `REQUEST_BYTES_MAX` is
//! refused and the connection closed; at most `CONNECTIONS_MAX` connections are served at
//! once, and one more gets an error line at once (`server::busy_message`) and is closed; an
//! idle connection, or one that does not read its reply, is closed after `IDLE_TIMEOUT_MS`.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shoal_crdt::{Drain, NodeId, ServiceName, ServiceSpec};

pub use client::Client;

/// Version of the request envelope.
pub const API_VERSION: u32 = 1;
/// Largest request line, newline included.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest response line the client reads.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Connections served at the same time; one more is refused at once with an error line.
pub const CONNECTIONS_MAX: usize = 32;
/// A connection with no request (or whose client reads no reply) for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 10_000;
/// Most services in one apply request (and so in one spec file).
pub const SERVICES_PER_REQUEST_MAX: usize = 256;
/// Largest `offsets` map a `logs` request may carry.
pub const LOG_OFFSETS_MAX: usize = 1024;
/// Most log output (both streams of every container) one `logs` reply carries; the rest
/// comes with the next call (`LogChunk::more`).
pub const LOG_REPLY_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Deadline for everything one `logs` call asks of one other node, handshake included.
pub const REMOTE_LOG_TIMEOUT_MS: u64 = 5_000;
/// Deadline for asking another node to drain or undrain itself, handshake included.
pub const REMOTE_DRAIN_TIMEOUT_MS: u64 = 5_000;
/// The drain deadline `shoal node drain` asks for when none is given.
pub const DRAIN_DEADLINE_MS_DEFAULT: u64 = 300_000;

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    ServiceApply {
        services: Vec<NamedSpec>,
    },
    ServiceList,
    ServiceRemove {
        name: ServiceName,
    },
    /// A service's current version and the earlier ones its record keeps.
    ServiceHistory {
        name: ServiceName,
    },
    /// Writes a service's last good earlier version back.
    ServiceRollback {
        name: ServiceName,
    },
    Nodes,
    Status,
    /// Containers cluster-wide, with this node's runtime states.
    Ps,
    /// This node's named volumes.
    VolumeList,
    /// Deletes a named volume of this node that no container of this node uses.
    VolumeRemove {
        name: String,
    },
    /// New log output of a container, or of a service's containers on every node (other
    /// nodes' are fetched from them over sync).
    Logs {
        target: String,
        /// container -> (stdout offset, stderr offset) from the previous call.
        #[serde(default)]
        offsets: BTreeMap<String, (u64, u64)>,
    },
    /// Drains a node (this one, or another asked over sync to drain itself): it takes no new
    /// replicas, and its running ones move elsewhere within `deadline_ms`.
    NodeDrain {
        node: NodeId,
        deadline_ms: u64,
    },
    /// Ends a node's drain, as `NodeDrain` reaches it.
    NodeUndrain {
        node: NodeId,
    },
    /// Removes a member that is down in this node's view from the cluster.
    NodeEvict {
        node: NodeId,
    },
}

/// A request line: the protocol version and the request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

/// A response line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// One named service as sent to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedSpec {
    pub name: ServiceName,
    pub spec: ServiceSpec,
}

/// A service as listed: its spec and the HLC timestamp of the write that won.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: ServiceName,
    pub version: String,
    pub spec: ServiceSpec,
}

/// One version of a service in `shoal service history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionView {
    /// The HLC of the write that made it current.
    pub version: String,
    pub current: bool,
    pub spec: ServiceSpec,
    /// Its update failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// It was written back because the version with this HLC failed or was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
}

/// `shoal service history`: newest first, the current version on top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub name: ServiceName,
    pub versions: Vec<VersionView>,
}

/// A cluster member as this node sees it, or a node that is not a member but whose writes
/// this node refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: NodeId,
    pub address: String,
    pub live: bool,
    pub is_self: bool,
    pub heartbeat_age_ms: Option<u64>,
    pub subnet: Option<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// The node's labels (`labels` in its config), for constraints and spread.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// In the node metadata; false for a node known only because its writes were refused.
    #[serde(default = "member_by_default")]
    pub member: bool,
    /// Why this node refused that node's last push (status and reason), until one is accepted.
    #[serde(default)]
    pub writes_refused: Option<String>,
    #[serde(default)]
    pub writes_refused_ms_ago: Option<u64>,
    /// The incarnation in the node's metadata (hex): each daemon draws one at its start.
    #[serde(default)]
    pub incarnation: Option<String>,
    /// Two daemons were seen writing as this node, recently: what was seen last. On the node
    /// itself, its own contested identity.
    #[serde(default)]
    pub duplicated: Option<String>,
    #[serde(default)]
    pub duplicated_ms_ago: Option<u64>,
    /// Set while the node is drained (in its own metadata): since when and for how long.
    #[serde(default)]
    pub drain: Option<Drain>,
    /// What is left of the drain's deadline by this node's clock (0 once it passed).
    #[serde(default)]
    pub drain_left_ms: Option<u64>,
    /// Containers the node's own status report lists as starting, running or restarting.
    #[serde(default)]
    pub containers_running: u64,
    /// What SWIM says of the node ("alive", "suspect" or "down") and its SWIM incarnation
    /// (raised each time it refutes a suspicion); none for this node itself and for nodes
    /// SWIM has no entry for (not contacted yet, or long gone).
    #[serde(default)]
    pub swim: Option<SwimView>,
}

/// A member in SWIM's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwimView {
    pub state: String,
    pub incarnation: u16,
}

#[cfg(test)]
impl NodeView {
    /// A live member with 1000 millicpu and 1 GiB, nothing refused, not drained: what the
    /// CLI's output tests vary one field of at a time.
    pub fn sample(id: &str) -> NodeView {
        NodeView {
            id: id.parse().expect("a sample node id"),
            address: "127.0.0.1:7444".to_string(),
            live: true,
            is_self: false,
            heartbeat_age_ms: Some(100),
            subnet: None,
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            labels: Default::default(),
            member: true,
            writes_refused: None,
            writes_refused_ms_ago: None,
            incarnation: None,
            duplicated: None,
            duplicated_ms_ago: None,
            drain: None,
            drain_left_ms: None,
            containers_running: 0,
            swim: None,
        }
    }
}

/// What `node drain`, `node undrain` and `node evict` changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChangeView {
    pub node: NodeId,
    /// `drained`, `undrained` or `evicted`.
    pub change: String,
    /// The drain's deadline, for `drained`.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The sync address of the node that wrote the change, when this node asked another.
    #[serde(default)]
    pub asked: Option<String>,
}

fn member_by_default() -> bool {
    true
}

/// A peer with its sync history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub id: NodeId,
    pub address: String,
    pub live: bool,
    pub last_sync_ms_ago: Option<u64>,
    pub last_error: Option<String>,
    /// Whether the peer's last known summary equals ours.
    pub same_summary: bool,
    /// Why this node refused the peer's last push, until one is accepted.
    #[serde(default)]
    pub writes_refused: Option<String>,
}

/// This node's summary of the cluster state and of how fresh it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub node: NodeId,
    pub version: String,
    pub uptime_ms: u64,
    pub version_vector: BTreeMap<String, u64>,
    pub digest: String,
    pub services: usize,
    pub nodes: usize,
    pub tombstones: usize,
    pub hlc_last: String,
    pub peers: Vec<PeerView>,
    /// Peers whose heartbeat is recent.
    #[serde(default)]
    pub live_peers: usize,
    /// There is a live peer and every live peer's last known summary equals ours (an isolated
    /// node cannot know: false).
    pub converged: bool,
    /// Why this node refuses local changes now: its clock is further ahead of the system
    /// clock than peers accept, so they would refuse them (the gap, and when it closes).
    #[serde(default)]
    pub writes_refused: Option<String>,
    /// How far this node's clock is ahead of its system clock, when that refuses changes.
    #[serde(default)]
    pub clock_ahead_ms: Option<u64>,
    /// Another daemon runs with this node's name: what was seen, and what to do. This node
    /// writes nothing meanwhile (`writes_refused` says so too).
    #[serde(default)]
    pub identity_contested: Option<String>,
    /// This daemon's incarnation (hex), drawn at its start and written in its metadata.
    #[serde(default)]
    pub incarnation: Option<String>,
    /// A peer evicted this node after a long silence; see the daemon log.
    pub evicted: bool,
    /// service -> why this node cannot run its share of it (bad image, no room, ...).
    #[serde(default)]
    pub service_errors: BTreeMap<String, String>,
    /// This node's certificate and the cluster CA as the daemon uses them now (absent when
    /// the API server has no TLS material, as in some tests).
    #[serde(default)]
    pub certificates: Option<CertificatesView>,
}

/// When this node's certificate and the cluster CA expire, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesView {
    /// notAfter of this node's certificate (tls.cert_file), Unix milliseconds.
    pub cert_not_after_unix_ms: u64,
    /// notAfter of the cluster CA (tls.ca_file), Unix milliseconds.
    pub ca_not_after_unix_ms: u64,
    /// One sentence per certificate that expires within the warning window
    /// (`sync::tls::CERT_EXPIRY_WARNING_DAYS`) or has expired.
    pub warnings: Vec<String>,
}

/// A container as `shoal ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    pub id: String,
    pub service: String,
    pub node: String,
    /// This node's containers, from its runtime: `running`, `created`, `exited(<code>)`,
    /// `killed(<signal>)`, `exited(unknown)`, `starting` (recorded, not yet started). Other
    /// nodes' containers, as their node last reported them in the replicated state:
    /// `starting`, `running`, `exited(<code>)`, `restarting(<code>)`, `failed: <reason>`;
    /// `reported-later` before the first report arrives; `node-down` (with the last report)
    /// when that node's heartbeat is silent.
    pub state: String,
    pub ip: Option<String>,
    /// Unix milliseconds of its last start, by its node's clock.
    pub since_unix_ms: Option<u64>,
    /// The main process (this node's containers only).
    pub pid: Option<i32>,
    pub restarts: u32,
    /// Published ports, `[host_ip:]host_port:container_port/proto`, with ` (mesh)` for
    /// ports every node accepts.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The health check's verdict: `starting`, `healthy`, `unhealthy`, or `-` when the
    /// service has none or the container does not run.
    #[serde(default = "no_health")]
    pub health: String,
    /// Why it is unhealthy: the last probe's failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
}

fn no_health() -> String {
    "-".to_owned()
}

/// A named volume on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeView {
    pub name: String,
    pub path: String,
    /// This node's containers whose service mounts it.
    pub used_by: Vec<String>,
}

/// `shoal ps`: every container in the cluster state plus this node's problems.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsView {
    pub node: String,
    pub containers: Vec<ContainerView>,
    /// service -> why this node could not run it (bad image, no capacity, ...).
    pub errors: BTreeMap<String, String>,
    /// service -> replicas no live node has room for (the placement as this node sees it).
    pub unplaced: BTreeMap<String, u32>,
    /// service -> why those replicas found no node (room, a published port taken).
    #[serde(default)]
    pub unplaced_reasons: BTreeMap<String, String>,
    /// node -> service -> why that node does not run its share, as each node reported it
    /// in the replicated state (this node's own included).
    #[serde(default)]
    pub node_errors: BTreeMap<String, BTreeMap<String, String>>,
    /// node -> what its PN-counters say it reserves.
    pub usage: BTreeMap<String, Usage>,
}

/// One node's resource PN-counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub containers: i64,
}

/// One container's new log output since the offsets the caller gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub container: String,
    /// The node that runs it.
    #[serde(default)]
    pub node: String,
    pub stdout: String,
    pub stderr: String,
    /// Offsets to pass next time (for `logs -f`).
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub running: bool,
    /// More output is already written; ask again without waiting.
    #[serde(default)]
    pub more: bool,
    /// Why this container's output could not be read (its node down or unreachable, ...);
    /// the offsets are then the ones the caller passed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot connect to the daemon at {path}: {source} (is `shoal daemon` running? see --socket)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("api socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("api socket {path}: malformed response: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("api socket {path} is in use by a running daemon")]
    InUse { path: PathBuf },
    #[error("api socket path {path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        for request in [
            Request::ServiceList,
            Request::Nodes,
            Request::Status,
            Request::ServiceRemove {
                name: "web".parse().unwrap(),
            },
            Request::NodeDrain {
                node: "n2".parse().unwrap(),
                deadline_ms: 60_000,
            },
            Request::NodeUndrain {
                node: "n2".parse().unwrap(),
            },
            Request::NodeEvict {
                node: "n3".parse().unwrap(),
            },
        ] {
            let text = serde_json::to_string(&Envelope {
                version: API_VERSION,
                request: request.clone(),
            })
            .unwrap();
            let back: Envelope = serde_json::from_str(&text).unwrap();
            assert_eq!(back.request, request);
        }
        let text = serde_json::to_string(&Envelope {
            version: 1,
            request: Request::Status,
        })
        .unwrap();
        assert_eq!(text, r#"{"version":1,"request":{"op":"status"}}"#);
    }

    #[test]
    fn unknown_operations_and_fields_are_refused() {
        assert!(
            serde_json::from_str::<Envelope>(r#"{"version":1,"request":{"op":"reboot"}}"#).is_err()
        );
        assert!(
            serde_json::from_str::<Envelope>(r#"{"version":1,"request":{"op":"status"},"x":1}"#)
                .is_err()
        );
    }
}
