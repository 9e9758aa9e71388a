//! The local operator API: a Unix stream socket (mode 0660) served by the daemon and the
//! blocking client the CLI uses.
//!
//! Protocol (version `API_VERSION`): the client writes one JSON object on one line,
//! `{"version":1,"request":{"op":"service_list"}}`, and the server answers with one JSON
//! line, `{"ok":<result>}` or `{"error":"<message>"}`. A connection may carry several
//! request/response pairs in sequence. A request line longer than `REQUEST_BYTES_MAX` is
//! refused and the connection closed; at most `CONNECTIONS_MAX` connections are served at
//! once; an idle connection is closed after `IDLE_TIMEOUT_MS`.
//!
//! Operations (`op`): `service_apply {services:[{name,spec}]}`, `service_list`,
//! `service_remove {name}`, `nodes`, `status`, `ps`, `logs {target, offsets}`. Results are the
//! view types below (and `reconcile::PsView`, `reconcile::LogChunk`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_crdt::{NodeId, ServiceName, ServiceSpec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::node::Node;
use crate::reconcile::Reconciler;
use crate::spec_file::{NamedSpec, SERVICES_PER_FILE_MAX};

/// Version of the request envelope.
pub const API_VERSION: u32 = 1;
/// Largest request line, newline included.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest response line the client reads.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Connections served at the same time; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 32;
/// A connection with no request for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;
/// How long in-flight requests may run after shutdown begins.
pub const SHUTDOWN_GRACE_MS: u64 = 3_000;

/// Socket file mode: owner and group may talk to the daemon.
const SOCKET_MODE: u32 = 0o660;

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
    Nodes,
    Status,
    /// Containers cluster-wide, with this node's runtime states.
    Ps,
    /// New log output of a container or of a service's containers on this node.
    Logs {
        target: String,
        /// container -> (stdout offset, stderr offset) from the previous call.
        #[serde(default)]
        offsets: BTreeMap<String, (u64, u64)>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    version: u32,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// A service as listed: its spec and the HLC timestamp of the write that won.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: ServiceName,
    pub version: String,
    pub spec: ServiceSpec,
}

/// A cluster member as this node sees it.
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
    /// Every live peer's last known summary equals ours.
    pub converged: bool,
    /// A peer evicted this node after a long silence; see the daemon log.
    pub evicted: bool,
    /// service -> why this node cannot run its share of it (bad image, no room, ...).
    #[serde(default)]
    pub service_errors: BTreeMap<String, String>,
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

/// Binds the API socket: refuses when a live daemon answers on it, removes a stale socket
/// file, and sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let io = |source| ApiError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(metadata) => {
            if !metadata.file_type().is_socket() {
                return Err(ApiError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ApiError::InUse {
                        path: path.to_path_buf(),
                    });
                }
                Err(_) => {
                    tracing::info!(path = %path.display(), "removing stale api socket");
                    std::fs::remove_file(path).map_err(io)?;
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(error)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io)?;
    Ok(listener)
}

/// Serves requests until `shutdown` completes; then stops accepting and gives in-flight
/// requests `SHUTDOWN_GRACE_MS` before aborting them.
pub async fn serve(
    listener: UnixListener,
    node: Arc<Node>,
    containers: Option<Arc<Reconciler>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        let containers = containers.clone();
        tasks.spawn(async move {
            if let Err(error) = serve_connection(stream, node, containers).await {
                tracing::debug!(%error, "api connection ended");
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let grace = tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => {
                tasks.abort_all();
                break;
            }
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
}

async fn serve_connection(
    stream: UnixStream,
    node: Arc<Node>,
    containers: Option<Arc<Reconciler>>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = u64::try_from(REQUEST_BYTES_MAX).unwrap_or(u64::MAX);
        let read = tokio::time::timeout(
            Duration::from_millis(IDLE_TIMEOUT_MS),
            (&mut reader).take(limit).read_until(b'\n', &mut line),
        )
        .await;
        let count = match read {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        };
        if count == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let reply = if line.len() >= REQUEST_BYTES_MAX {
                Reply::Error(format!("request larger than {REQUEST_BYTES_MAX} bytes"))
            } else {
                Reply::Error("request must end with a newline".to_string())
            };
            write_reply(&mut write, &reply).await?;
            return Ok(());
        }
        let reply = match serde_json::from_slice::<Envelope>(&line) {
            Err(error) => Reply::Error(format!("malformed request: {error}")),
            Ok(envelope) if envelope.version != API_VERSION => Reply::Error(format!(
                "unsupported api version {}, this daemon speaks {API_VERSION}",
                envelope.version
            )),
            Ok(envelope) => {
                let node = node.clone();
                let containers = containers.clone();
                // Node operations commit to redb (fsync); keep them off the async workers.
                let work = move || handle(&node, containers.as_deref(), envelope.request);
                match tokio::task::spawn_blocking(work).await {
                    Ok(reply) => reply,
                    Err(error) => Reply::Error(format!("request failed: {error}")),
                }
            }
        };
        write_reply(&mut write, &reply).await?;
    }
}

async fn write_reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.flush().await
}

fn to_value<T: Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(value) => Reply::Ok(value),
        Err(error) => Reply::Error(format!("cannot encode the result: {error}")),
    }
}

/// Runs one request against the node.
/// Largest `offsets` map a `logs` request may carry.
const LOG_OFFSETS_MAX: usize = 1024;

fn handle(node: &Node, containers: Option<&Reconciler>, request: Request) -> Reply {
    match request {
        Request::ServiceApply { services } => {
            if services.is_empty() || services.len() > SERVICES_PER_FILE_MAX {
                return Reply::Error(format!(
                    "service_apply takes 1 to {SERVICES_PER_FILE_MAX} services, got {}",
                    services.len()
                ));
            }
            match node.apply_services(services) {
                Ok(views) => to_value(&views),
                Err(error) => Reply::Error(error.to_string()),
            }
        }
        Request::ServiceList => to_value(&node.services()),
        Request::ServiceRemove { name } => match node.remove_service(&name) {
            Ok(view) => to_value(&view),
            Err(error) => Reply::Error(error.to_string()),
        },
        Request::Nodes => to_value(&node.nodes()),
        Request::Status => {
            let mut status = node.status();
            if let Some(containers) = containers {
                status.service_errors = containers.errors();
            }
            to_value(&status)
        }
        Request::Ps => match containers {
            Some(containers) => to_value(&containers.ps()),
            None => Reply::Error(
                "containers are disabled on this node (containers.enabled = false)".to_string(),
            ),
        },
        Request::Logs { target, offsets } => {
            if offsets.len() > LOG_OFFSETS_MAX {
                return Reply::Error(format!(
                    "logs takes at most {LOG_OFFSETS_MAX} offsets, got {}",
                    offsets.len()
                ));
            }
            match containers {
                Some(containers) => match containers.logs(&target, &offsets) {
                    Ok(chunks) => to_value(&chunks),
                    Err(error) => Reply::Error(error.to_string()),
                },
                None => Reply::Error(
                    "containers are disabled on this node (containers.enabled = false)".to_string(),
                ),
            }
        }
    }
}

/// A blocking client of the local API, one connection per client.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    /// Connects to the daemon's socket; `timeout` bounds every read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ApiError> {
        let stream =
            std::os::unix::net::UnixStream::connect(path).map_err(|source| ApiError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let io = |source| ApiError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and returns the decoded result.
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        request: Request,
    ) -> Result<T, ApiError> {
        let io = |source| ApiError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&Envelope {
            version: API_VERSION,
            request,
        })
        .map_err(|error| ApiError::Malformed {
            path: self.path.clone(),
            message: error.to_string(),
        })?;
        line.push(b'\n');
        if line.len() > REQUEST_BYTES_MAX {
            return Err(ApiError::Refused(format!(
                "request of {} bytes is larger than the {REQUEST_BYTES_MAX} allowed",
                line.len()
            )));
        }
        self.reader.get_mut().write_all(&line).map_err(io)?;
        let mut response = Vec::new();
        let limit = u64::try_from(RESPONSE_BYTES_MAX).unwrap_or(u64::MAX);
        (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut response)
            .map_err(|source| ApiError::Io {
                path: self.path.clone(),
                source,
            })?;
        if response.last() != Some(&b'\n') {
            return Err(ApiError::Malformed {
                path: self.path.clone(),
                message: "the daemon closed the connection without a complete response".to_string(),
            });
        }
        let reply: Reply =
            serde_json::from_slice(&response).map_err(|error| ApiError::Malformed {
                path: self.path.clone(),
                message: error.to_string(),
            })?;
        match reply {
            Reply::Ok(value) => {
                serde_json::from_value(value).map_err(|error| ApiError::Malformed {
                    path: self.path.clone(),
                    message: error.to_string(),
                })
            }
            Reply::Error(message) => Err(ApiError::Refused(message)),
        }
    }
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

    #[tokio::test]
    async fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&path), Err(ApiError::InUse { .. })));
        drop(listener);
        // The file is left behind by the dropped listener: stale, so it is replaced.
        assert!(path.exists());
        let _listener = bind(&path).unwrap();
        let regular = dir.path().join("file");
        std::fs::write(&regular, b"x").unwrap();
        assert!(matches!(bind(&regular), Err(ApiError::NotASocket { .. })));
        assert_eq!(std::fs::read(&regular).unwrap(), b"x");
    }

    fn raw_call(path: &Path, line: &[u8]) -> String {
        let mut stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The server may close after reading only part of an oversized line.
        let _ = stream.write_all(line);
        let mut reader = BufReader::new(stream);
        let mut response = String::new();
        reader.read_line(&mut response).unwrap();
        response
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_clear_errors_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let node = Arc::new(
            Node::open(crate::node::NodeOptions {
                node: "node-a".parse().unwrap(),
                database: dir.path().join("state.redb"),
                max_clock_drift: Duration::from_secs(1),
                seeds: Vec::new(),
                address: "127.0.0.1:7443".parse().unwrap(),
                capacity: shoal_crdt::Capacity {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                },
                down_after_ms: 5000,
                compact_every_entries: 1000,
            })
            .unwrap(),
        );
        let path = dir.path().join("shoal.sock");
        let listener = bind(&path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, node.clone(), None, async move {
            let _ = stopped.await;
        }));
        let digest = node.digest();
        let socket = path.clone();
        let responses = tokio::task::spawn_blocking(move || {
            let mut oversized = vec![b' '; REQUEST_BYTES_MAX + 10];
            oversized.push(b'\n');
            vec![
                raw_call(&socket, b"{not json\n"),
                raw_call(&socket, b"{\"version\":2,\"request\":{\"op\":\"status\"}}\n"),
                raw_call(&socket, b"{\"version\":1,\"request\":{\"op\":\"service_apply\",\"services\":[]}}\n"),
                raw_call(
                    &socket,
                    b"{\"version\":1,\"request\":{\"op\":\"service_apply\",\"services\":[{\"name\":\"Bad Name\",\"spec\":{\"image\":\"/i\"}}]}}\n",
                ),
                raw_call(&socket, &oversized),
            ]
        })
        .await
        .unwrap();
        let expected = [
            "malformed request",
            "unsupported api version 2",
            "1 to 256 services",
            "malformed request",
            "larger than",
        ];
        for (response, fragment) in responses.iter().zip(expected) {
            assert!(response.starts_with("{\"error\""), "{response}");
            assert!(
                response.contains(fragment),
                "{response:?} lacks {fragment:?}"
            );
        }
        assert_eq!(node.digest(), digest, "bad requests changed the state");

        // A good request on the same server still works.
        let socket = path.clone();
        let services: Vec<ServiceView> = tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&socket, Duration::from_secs(10)).unwrap();
            client
                .call(Request::ServiceApply {
                    services: vec![NamedSpec {
                        name: "web".parse().unwrap(),
                        spec: ServiceSpec::new("/web.tar"),
                    }],
                })
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(services[0].name.as_str(), "web");
        assert_ne!(node.digest(), digest);
        stop.send(()).unwrap();
        server.await.unwrap();
    }
}
