//! The daemon's side of the local API: binds the Unix socket (mode 0660), serves request
//! lines within the bounds `api` sets, runs each request against the node and the
//! reconciler, and builds the response views. Every view of `api` is built here (and in
//! `logs`, which answers `shoal logs`, and `drain`, which answers `shoal node drain|undrain`,
//! both asking other nodes over sync), and only here, from what the node, the reconciler
//! and other nodes return.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_crdt::{NodeId, RunState};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{
    API_VERSION, ApiError, CONNECTIONS_MAX, CertificatesView, Envelope, HistoryView,
    IDLE_TIMEOUT_MS, LOG_OFFSETS_MAX, NodeChangeView, NodeView, PeerView, REQUEST_BYTES_MAX, Reply,
    Request, SERVICES_PER_REQUEST_MAX, ServiceView, StatusView, SwimView, VersionView,
};
use crate::containers::Reconciler;
use crate::state::{Member, Node, NodeStatus, RefusedWrites, ServiceEntry};
use crate::sync::{SyncLimits, TlsHandle, TlsMaterial};

mod drain;
mod logs;

/// How the API reaches other nodes (for `shoal logs`): the node's sync endpoint, whose default
/// client config presents this node's certificate (the one gossip dials with), the sync
/// limits, and that certificate material itself (`shoal status` reports its expiry).
#[derive(Clone)]
pub struct PeerAccess {
    pub endpoint: quinn::Endpoint,
    pub limits: SyncLimits,
    pub tls: TlsHandle,
}

/// Socket file mode: owner and group may talk to the daemon.
const SOCKET_MODE: u32 = 0o660;

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

/// Serves requests until `shutdown` completes; then stops accepting, closes idle
/// connections and waits for in-flight requests to be answered. The caller bounds that
/// wait (the daemon's shutdown grace) and aborts the task after it. Without `peers`, logs of
/// containers on other nodes are reported as unreadable.
///
/// At most `CONNECTIONS_MAX` connections are served at once; one more is accepted only to be
/// answered at once with an error line saying so and closed, so a client never waits behind
/// idle connections (which close after `IDLE_TIMEOUT_MS`).
pub async fn serve(
    listener: UnixListener,
    node: Arc<Node>,
    containers: Option<Arc<Reconciler>>,
    peers: Option<PeerAccess>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let (closing, closed) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
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
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse_busy(&stream);
            continue;
        };
        let node = node.clone();
        let containers = containers.clone();
        let peers = peers.clone();
        let closed = closed.clone();
        tasks.spawn(async move {
            if let Err(error) = serve_connection(stream, node, containers, peers, closed).await {
                tracing::debug!(%error, "api connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    while tasks.join_next().await.is_some() {}
}

/// The error line a connection over `CONNECTIONS_MAX` gets before it is closed.
pub fn busy_message() -> String {
    format!(
        "the daemon is already serving {CONNECTIONS_MAX} api connections, its limit; try again \
         shortly (an idle connection is closed after {} s)",
        IDLE_TIMEOUT_MS / 1000
    )
}

/// Answers a connection over the limit with an error line and closes it, without waiting: the
/// line is far smaller than a fresh socket's send buffer, so one non-blocking write sends it.
fn refuse_busy(stream: &UnixStream) {
    tracing::warn!(
        connections_max = CONNECTIONS_MAX,
        "refused an api connection: too many open"
    );
    let Ok(mut line) = serde_json::to_vec(&Reply::Error(busy_message())) else {
        return;
    };
    line.push(b'\n');
    if let Err(error) = stream.try_write(&line) {
        tracing::debug!(%error, "could not tell a refused api connection why");
    }
}

async fn serve_connection(
    stream: UnixStream,
    node: Arc<Node>,
    containers: Option<Arc<Reconciler>>,
    peers: Option<PeerAccess>,
    mut closed: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = u64::try_from(REQUEST_BYTES_MAX).unwrap_or(u64::MAX);
        // Waiting for the next request: the daemon shutting down closes the connection.
        let mut limited = (&mut reader).take(limit);
        let read = tokio::select! {
            _ = closed.wait_for(|closed| *closed) => return Ok(()),
            read = tokio::time::timeout(
                Duration::from_millis(IDLE_TIMEOUT_MS),
                limited.read_until(b'\n', &mut line),
            ) => read,
        };
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
        let reply = match decode_request_line(&line) {
            Err(error) => Reply::Error(error.to_string()),
            Ok(request) => match request {
                Request::Logs { target, offsets } => {
                    let (node, containers) = (node.clone(), containers.clone());
                    logs::answer(node, containers, peers.clone(), target, offsets).await
                }
                Request::NodeDrain {
                    node: target,
                    deadline_ms,
                } => drain::answer(node.clone(), peers.clone(), target, Some(deadline_ms)).await,
                Request::NodeUndrain { node: target } => {
                    drain::answer(node.clone(), peers.clone(), target, None).await
                }
                request => {
                    let node = node.clone();
                    let containers = containers.clone();
                    let tls = peers.as_ref().map(|peers| peers.tls.clone());
                    // Node operations commit to redb (fsync); keep them off the async workers.
                    let work = move || handle(&node, containers.as_deref(), tls.as_ref(), request);
                    match tokio::task::spawn_blocking(work).await {
                        Ok(reply) => reply,
                        Err(error) => Reply::Error(format!("request failed: {error}")),
                    }
                }
            },
        };
        write_reply(&mut write, &reply).await?;
    }
}

/// Why a request line was refused before it reached the node.
#[derive(Debug, thiserror::Error)]
pub enum RequestLineError {
    #[error("malformed request: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unsupported api version {found}, this daemon speaks {API_VERSION}")]
    UnsupportedVersion { found: u32 },
    #[error("logs takes at most {LOG_OFFSETS_MAX} offsets, got {count}")]
    TooManyOffsets { count: usize },
}

/// Decodes one request line (newline included or not) into the request it carries: the
/// envelope, its version and the bounds checked before any work. The fuzz target
/// `api_request` (fuzz/) drives this function.
pub fn decode_request_line(line: &[u8]) -> Result<Request, RequestLineError> {
    let envelope = serde_json::from_slice::<Envelope>(line).map_err(RequestLineError::Malformed)?;
    if envelope.version != API_VERSION {
        return Err(RequestLineError::UnsupportedVersion {
            found: envelope.version,
        });
    }
    if let Request::Logs { offsets, .. } = &envelope.request
        && offsets.len() > LOG_OFFSETS_MAX
    {
        return Err(RequestLineError::TooManyOffsets {
            count: offsets.len(),
        });
    }
    Ok(envelope.request)
}

/// Writes one reply line; a client that does not read it within `IDLE_TIMEOUT_MS` is
/// dropped, so it cannot hold a connection slot forever.
async fn write_reply(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &Reply,
) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    let written = async {
        write.write_all(&bytes).await?;
        write.flush().await
    };
    tokio::time::timeout(Duration::from_millis(IDLE_TIMEOUT_MS), written)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its reply",
            )
        })?
}

fn to_value<T: serde::Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(value) => Reply::Ok(value),
        Err(error) => Reply::Error(format!("cannot encode the result: {error}")),
    }
}

const CONTAINERS_DISABLED: &str =
    "containers are disabled on this node (containers.enabled = false)";

/// Runs one request against the node and the reconciler (`logs` is answered by `logs`).
fn handle(
    node: &Node,
    containers: Option<&Reconciler>,
    tls: Option<&TlsHandle>,
    request: Request,
) -> Reply {
    match request {
        Request::ServiceApply { services } => {
            if services.is_empty() || services.len() > SERVICES_PER_REQUEST_MAX {
                return Reply::Error(format!(
                    "service_apply takes 1 to {SERVICES_PER_REQUEST_MAX} services, got {}",
                    services.len()
                ));
            }
            let services = services.into_iter().map(|s| (s.name, s.spec)).collect();
            match node.apply_services(services) {
                Ok(entries) => to_value(&entries.iter().map(service_view).collect::<Vec<_>>()),
                Err(error) => Reply::Error(error.to_string()),
            }
        }
        Request::ServiceList => {
            to_value(&node.services().iter().map(service_view).collect::<Vec<_>>())
        }
        Request::ServiceRemove { name } => match node.remove_service(&name) {
            Ok(entry) => to_value(&service_view(&entry)),
            Err(error) => Reply::Error(error.to_string()),
        },
        Request::ServiceHistory { name } => match node.service_record(&name) {
            Ok((record, version)) => to_value(&history_view(&name, &record, version)),
            Err(error) => Reply::Error(error.to_string()),
        },
        Request::ServiceRollback { name } => match node.rollback_service(&name) {
            Ok(entry) => to_value(&service_view(&entry)),
            Err(error) => Reply::Error(error.to_string()),
        },
        Request::Nodes => to_value(&node_views(node)),
        Request::Status => {
            let errors = containers.map(Reconciler::errors).unwrap_or_default();
            let certificates = tls.map(|tls| certificates_view(&tls.current(), SystemTime::now()));
            to_value(&status_view(node.status(), errors, certificates))
        }
        Request::Ps => match containers {
            Some(containers) => to_value(&containers.ps()),
            None => Reply::Error(CONTAINERS_DISABLED.to_string()),
        },
        Request::VolumeList => match containers {
            Some(containers) => match containers.volumes() {
                Ok(views) => to_value(&views),
                Err(error) => Reply::Error(error.to_string()),
            },
            None => Reply::Error(CONTAINERS_DISABLED.to_string()),
        },
        Request::VolumeRemove { name } => match containers {
            Some(containers) => match containers.remove_volume(&name) {
                Ok(view) => to_value(&view),
                Err(error) => Reply::Error(error.to_string()),
            },
            None => Reply::Error(CONTAINERS_DISABLED.to_string()),
        },
        Request::NodeEvict { node: target } => match node.evict_member(&target) {
            Ok(()) => to_value(&NodeChangeView {
                node: target,
                change: "evicted".to_owned(),
                deadline_ms: None,
                asked: None,
            }),
            Err(error) => Reply::Error(error.to_string()),
        },
        // Answered asynchronously before `handle` is called; kept total without a panic.
        Request::Logs { .. } | Request::NodeDrain { .. } | Request::NodeUndrain { .. } => {
            Reply::Error("this request is not answered here".to_string())
        }
    }
}

fn service_view(entry: &ServiceEntry) -> ServiceView {
    ServiceView {
        name: entry.name.clone(),
        version: entry.version.to_string(),
        spec: entry.spec.clone(),
    }
}

fn history_view(
    name: &shoal_crdt::ServiceName,
    record: &shoal_crdt::ServiceRecord,
    version: shoal_crdt::Timestamp,
) -> HistoryView {
    let current = VersionView {
        version: version.to_string(),
        current: true,
        spec: record.spec.clone(),
        failed: record.failed.clone(),
        rollback_of: record.rollback_of.map(|of| of.to_string()),
    };
    let earlier = record.history.iter().map(|past| VersionView {
        version: past.version.to_string(),
        current: false,
        spec: past.spec.clone(),
        failed: past.failed.clone(),
        rollback_of: past.rollback_of.map(|of| of.to_string()),
    });
    HistoryView {
        name: name.clone(),
        versions: std::iter::once(current).chain(earlier).collect(),
    }
}

/// `shoal nodes`: every member, then every other node whose writes this node refused.
fn node_views(node: &Node) -> Vec<NodeView> {
    let mut refused = node.refused_writes();
    let duplicated = node.duplicated_nodes();
    let contest = node.identity_contest();
    let running = containers_running(node);
    let now_ms = node.clock().now_ms();
    let mut views: Vec<NodeView> = node
        .members()
        .iter()
        .map(|member| {
            let mut view = node_view(member, refused.remove(&member.id));
            view.drain_left_ms = member.meta.drain.map(|drain| drain.left_ms(now_ms));
            view.containers_running = running.get(&member.id).copied().unwrap_or(0);
            if member.is_self {
                if let Some(contest) = &contest {
                    view.duplicated = Some(format!(
                        "this daemon's identity is contested: {}",
                        contest.evidence
                    ));
                    view.duplicated_ms_ago = Some(contest.ms_ago);
                }
            } else if let Some(seen) = duplicated.get(&member.id) {
                view.duplicated = Some(format!("{} (seen from {})", seen.evidence, seen.from));
                view.duplicated_ms_ago = Some(seen.ms_ago);
            }
            view
        })
        .collect();
    views.extend(refused.into_iter().map(|(id, refused)| NodeView {
        id,
        address: refused.address.to_string(),
        live: false,
        is_self: false,
        heartbeat_age_ms: None,
        subnet: None,
        cpu_millis: 0,
        memory_bytes: 0,
        labels: Default::default(),
        member: false,
        writes_refused: Some(refused.reason),
        writes_refused_ms_ago: Some(refused.ms_ago),
        incarnation: None,
        duplicated: None,
        duplicated_ms_ago: None,
        drain: None,
        drain_left_ms: None,
        containers_running: 0,
        swim: None,
    }));
    views
}

/// Per node, the containers its own status report lists as starting, running or restarting.
fn containers_running(node: &Node) -> BTreeMap<NodeId, u64> {
    node.read_state(|state| {
        state
            .nodes()
            .filter_map(|(id, _)| {
                let status = state.node_status(id)?;
                let running = status
                    .containers
                    .values()
                    .filter(|container| {
                        matches!(
                            container.state,
                            RunState::Starting | RunState::Running | RunState::Restarting { .. }
                        )
                    })
                    .count();
                Some((id.clone(), u64::try_from(running).unwrap_or(u64::MAX)))
            })
            .collect()
    })
}

fn node_view(member: &Member, refused: Option<RefusedWrites>) -> NodeView {
    NodeView {
        id: member.id.clone(),
        address: member.meta.address.to_string(),
        live: member.live,
        is_self: member.is_self,
        heartbeat_age_ms: Some(member.heartbeat_age_ms),
        subnet: member.meta.subnet.map(|s| s.to_string()),
        cpu_millis: u64::from(member.meta.capacity.cpu_millis),
        memory_bytes: member.meta.capacity.memory_bytes,
        labels: member.meta.labels.clone(),
        member: true,
        writes_refused_ms_ago: refused.as_ref().map(|refused| refused.ms_ago),
        writes_refused: refused.map(|refused| refused.reason),
        incarnation: member
            .meta
            .incarnation
            .map(|incarnation| format!("{incarnation:016x}")),
        duplicated: None,
        duplicated_ms_ago: None,
        drain: member.meta.drain,
        drain_left_ms: None,
        containers_running: 0,
        swim: member.swim.as_ref().map(|view| SwimView {
            state: view.state.as_str().to_string(),
            incarnation: view.incarnation,
        }),
    }
}

/// The expiry of the certificates in use, with a warning when one is near or past.
fn certificates_view(material: &TlsMaterial, now: SystemTime) -> CertificatesView {
    let expiry = material.expiry();
    let unix_ms = |time: SystemTime| {
        time.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
    };
    CertificatesView {
        cert_not_after_unix_ms: unix_ms(expiry.certificate),
        ca_not_after_unix_ms: unix_ms(expiry.ca),
        warnings: expiry.warnings(now),
    }
}

/// `shoal status`: the node's freshness, the reconciler's errors and the certificates' expiry.
fn status_view(
    status: NodeStatus,
    service_errors: BTreeMap<String, String>,
    certificates: Option<CertificatesView>,
) -> StatusView {
    StatusView {
        node: status.node,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: status.uptime_ms,
        version_vector: status
            .summary
            .vv
            .dots
            .iter()
            .map(|(node, counter)| (node.to_string(), *counter))
            .collect(),
        digest: hex::encode(status.digest),
        services: status.services,
        nodes: status.nodes,
        tombstones: status.tombstones,
        hlc_last: status.hlc_last.to_string(),
        peers: status
            .peers
            .into_iter()
            .map(|peer| PeerView {
                id: peer.id,
                address: peer.address.to_string(),
                live: peer.live,
                last_sync_ms_ago: peer.last_sync_ms_ago,
                last_error: peer.last_error,
                same_summary: peer.same_summary,
                writes_refused: peer.writes_refused.map(|refused| refused.reason),
            })
            .collect(),
        live_peers: status.live_peers,
        converged: status.converged,
        writes_refused: status
            .clock_ahead
            .map(|ahead| ahead.to_string())
            .or_else(|| status.contest.as_ref().map(ToString::to_string)),
        clock_ahead_ms: status.clock_ahead.map(|ahead| ahead.ahead_ms),
        identity_contested: status.contest.as_ref().map(ToString::to_string),
        incarnation: Some(format!("{:016x}", status.incarnation)),
        evicted: status.evicted,
        service_errors,
        certificates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Client, NamedSpec};
    use crate::state::{NodeOptions, SystemClock};
    use shoal_crdt::ServiceSpec;
    use std::io::{BufRead, BufReader, Write};

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

    #[test]
    fn request_lines_decode_or_say_what_is_wrong() {
        let check = |line: &str, expected: Result<Request, &str>| match (
            decode_request_line(line.as_bytes()),
            expected,
        ) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{line}"),
            (Err(error), Err(fragment)) => {
                let message = error.to_string();
                assert!(
                    message.contains(fragment),
                    "{line}: {message:?} lacks {fragment:?}"
                );
            }
            (got, want) => panic!("{line}: got {got:?}, expected {want:?}"),
        };
        check(
            "{\"version\":1,\"request\":{\"op\":\"status\"}}\n",
            Ok(Request::Status),
        );
        check(
            "{\"version\":1,\"request\":{\"op\":\"logs\",\"target\":\"web\"}}",
            Ok(Request::Logs {
                target: "web".to_string(),
                offsets: BTreeMap::new(),
            }),
        );
        check("{not json\n", Err("malformed request"));
        check(
            "{\"version\":1,\"request\":{\"op\":\"status\"},\"extra\":0}",
            Err("malformed request: unknown field `extra`"),
        );
        check(
            "{\"version\":2,\"request\":{\"op\":\"status\"}}",
            Err("unsupported api version 2, this daemon speaks 1"),
        );
        let offsets: Vec<String> = (0..=LOG_OFFSETS_MAX)
            .map(|index| format!("\"c{index}\":[0,0]"))
            .collect();
        let line = format!(
            "{{\"version\":1,\"request\":{{\"op\":\"logs\",\"target\":\"web\",\"offsets\":{{{}}}}}}}",
            offsets.join(",")
        );
        check(&line, Err("logs takes at most 1024 offsets, got 1025"));
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

    fn open_node(dir: &Path) -> Arc<Node> {
        Arc::new(
            Node::open(
                NodeOptions::new(
                    "node-a".parse().unwrap(),
                    dir.join("state.redb"),
                    "127.0.0.1:7443".parse().unwrap(),
                ),
                Arc::new(SystemClock),
            )
            .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_over_the_limit_is_refused_at_once_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        let path = dir.path().join("shoal.sock");
        let listener = bind(&path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, node, None, None, async move {
            let _ = stopped.await;
        }));
        let socket = path.clone();
        tokio::task::spawn_blocking(move || {
            // Every slot held by a connection that answered one request and then idles.
            let mut idle = Vec::new();
            for _ in 0..CONNECTIONS_MAX {
                let mut client = Client::connect(&socket, Duration::from_secs(10)).unwrap();
                let _: StatusView = client.call(Request::Status).unwrap();
                idle.push(client);
            }
            // Eight more, as in the report (40 idle connections): each is told why at once.
            // Before, they waited in the listen backlog until an idle one timed out, and a
            // client's 5 s timeout expired first.
            for _ in 0..8 {
                let mut client = Client::connect(&socket, Duration::from_secs(5)).unwrap();
                let error = client.call::<StatusView>(Request::Status).unwrap_err();
                match error {
                    ApiError::Refused(message) => {
                        assert_eq!(message, busy_message());
                        assert!(message.contains("32 api connections"), "{message}");
                    }
                    other => panic!("not refused with a reason: {other}"),
                }
            }
            // A slot freed is served again (the server sees the close, then frees it).
            drop(idle.pop());
            let mut served = None;
            for _ in 0..500 {
                let mut client = Client::connect(&socket, Duration::from_secs(5)).unwrap();
                match client.call::<StatusView>(Request::Status) {
                    Ok(status) => {
                        served = Some(status);
                        break;
                    }
                    Err(ApiError::Refused(_)) => std::thread::sleep(Duration::from_millis(10)),
                    Err(other) => panic!("{other}"),
                }
            }
            assert!(served.is_some(), "the freed slot was never served");
        })
        .await
        .unwrap();
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_clear_errors_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let node = open_node(dir.path());
        let path = dir.path().join("shoal.sock");
        let listener = bind(&path).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, node.clone(), None, None, async move {
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
