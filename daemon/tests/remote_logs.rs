//! Remote `shoal logs` over real mutual-TLS HTTP/3 on loopback with real certificates, without
//! root: node B serves `GET /v1/logs` from an in-memory log source whose streams grow. A peer of
//! the cluster reads them from offsets in bounded pieces; bad requests are refused with their
//! status and read nothing; a peer from another CA reads nothing, and a server from another CA
//! or under another node's name is not believed. Then node A's real API server and the real
//! `shoal logs` binary read B's containers, follow them, label a service's containers by node,
//! and fail with the node's name and address when B is unreachable or down.
//! (`containers.rs` does the same with real daemons and real containers, as root.)

mod net_support;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use net_support::{Pki, Server, limits, node_id, raw_client};
use shoal::api::REMOTE_LOG_TIMEOUT_MS;
use shoal::state::{Clock, ManualClock, Node, NodeOptions, SystemClock};
use shoal::sync::wire::{self, LogPiece, LogQuery};
use shoal::sync::{self, LogSource, LogSourceError, PeerSession, SyncError};
use shoal_crdt::{ContainerRecord, NTP64, Timestamp};

const BINARY: &str = env!("CARGO_BIN_EXE_shoal");

/// A container's stdout and stderr.
type Streams = (Vec<u8>, Vec<u8>);

/// Containers' stdout and stderr held in memory; counts the reads that reached it.
#[derive(Default)]
struct FakeLogs {
    streams: Mutex<BTreeMap<String, Streams>>,
    reads: AtomicUsize,
}

impl FakeLogs {
    fn write(&self, container: &str, stdout: &str, stderr: &str) {
        let mut streams = self.streams.lock().unwrap();
        let entry = streams.entry(container.to_string()).or_default();
        entry.0.extend_from_slice(stdout.as_bytes());
        entry.1.extend_from_slice(stderr.as_bytes());
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

fn slice(data: &[u8], offset: u64, bytes_max: u64) -> (Vec<u8>, u64, bool) {
    let start = (offset as usize).min(data.len());
    let end = (start + bytes_max as usize).min(data.len());
    (data[start..end].to_vec(), end as u64, end < data.len())
}

impl LogSource for FakeLogs {
    fn read(&self, query: &LogQuery) -> Result<LogPiece, LogSourceError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let streams = self.streams.lock().unwrap();
        let Some((stdout, stderr)) = streams.get(query.container.as_str()) else {
            return Err(LogSourceError::NotHere(query.container.clone()));
        };
        let (stdout, stdout_offset, stdout_more) =
            slice(stdout, query.stdout_offset, query.stream_bytes_max);
        let (stderr, stderr_offset, stderr_more) =
            slice(stderr, query.stderr_offset, query.stream_bytes_max);
        Ok(LogPiece {
            stdout,
            stderr,
            stdout_offset,
            stderr_offset,
            running: true,
            more: stdout_more || stderr_more,
        })
    }
}

/// Node B serving sync with `logs` as its log source.
async fn node_b(pki: &Pki, dir: &Path, logs: &Arc<FakeLogs>) -> Server {
    let source: Arc<dyn LogSource> = logs.clone();
    Server::start_with_logs(
        &pki.material("node-b"),
        dir,
        "node-b",
        limits(),
        Some(source),
    )
    .await
}

/// A session from node A (a cluster member) to node B.
async fn session_to_b(pki: &Pki, server: &Server) -> (quinn::Endpoint, PeerSession) {
    let endpoint =
        sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("node-a")).unwrap();
    let session = sync::connect(
        &endpoint,
        server.address,
        Some(&node_id("node-b")),
        &limits(),
    )
    .await
    .unwrap();
    (endpoint, session)
}

fn query(container: &str, from: (u64, u64), stream_bytes_max: u64) -> LogQuery {
    LogQuery {
        container: container.parse().unwrap(),
        stdout_offset: from.0,
        stderr_offset: from.1,
        stream_bytes_max,
    }
}

#[tokio::test]
async fn a_peer_reads_new_output_from_offsets_in_bounded_pieces() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(FakeLogs::default());
    logs.write("web-1", "line 1\n", "oops 1\n");
    let server = node_b(&pki, dir.path(), &logs).await;
    let (_endpoint, mut session) = session_to_b(&pki, &server).await;

    let first = sync::fetch_log(&mut session, &query("web-1", (0, 0), 1024))
        .await
        .unwrap();
    assert_eq!(first.stdout, b"line 1\n");
    assert_eq!(first.stderr, b"oops 1\n");
    assert_eq!((first.stdout_offset, first.stderr_offset), (7, 7));
    assert!(!first.more);

    // Following: from the returned offsets, only what was written since.
    let from = (first.stdout_offset, first.stderr_offset);
    let nothing = sync::fetch_log(&mut session, &query("web-1", from, 1024))
        .await
        .unwrap();
    assert!(nothing.stdout.is_empty() && nothing.stderr.is_empty());
    assert_eq!((nothing.stdout_offset, nothing.stderr_offset), from);
    logs.write("web-1", "line 2\n", "");
    let later = sync::fetch_log(&mut session, &query("web-1", from, 1024))
        .await
        .unwrap();
    assert_eq!(later.stdout, b"line 2\n");
    assert_eq!(later.stdout_offset, 14);

    // The caller's bound: pieces of at most 4 bytes, `more` until the end.
    let mut paged = Vec::new();
    let mut from = (0, 0);
    loop {
        let piece = sync::fetch_log(&mut session, &query("web-1", from, 4))
            .await
            .unwrap();
        assert!(piece.stdout.len() <= 4 && piece.stderr.len() <= 4);
        paged.extend_from_slice(&piece.stdout);
        from = (piece.stdout_offset, piece.stderr_offset);
        if !piece.more {
            break;
        }
    }
    assert_eq!(paged, b"line 1\nline 2\n");

    // The server's bound: a caller asking for everything gets what fits the body limit.
    logs.write("big-1", &"x".repeat(3 * limits().body_bytes_max), "");
    let piece = sync::fetch_log(&mut session, &query("big-1", (0, 0), u64::MAX))
        .await
        .unwrap();
    let cap = wire::log_stream_bytes_max(limits().body_bytes_max);
    assert_eq!(piece.stdout.len() as u64, cap);
    assert!(piece.more);
    session.close();
    server.stop().await;
}

#[tokio::test]
async fn bad_log_requests_are_refused_with_their_status_and_read_nothing() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(FakeLogs::default());
    logs.write("web-1", "line\n", "");
    let server = node_b(&pki, dir.path(), &logs).await;
    let before = server.fingerprint();
    let (_endpoint, mut session) = session_to_b(&pki, &server).await;
    let max = limits().body_bytes_max;
    let good = query("web-1", (0, 0), 10).path_and_query();

    let long_query = format!("{good}&{}", "x".repeat(wire::LOG_QUERY_BYTES_MAX));
    // (what, method, path and query, body, status, a fragment of the reason)
    type Case<'a> = (&'a str, http::Method, String, Vec<u8>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no query",
            http::Method::GET,
            wire::PATH_LOGS.to_string(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "container is missing",
        ),
        (
            "offset not a number",
            http::Method::GET,
            "/v1/logs?container=web-1&stdout=x&stderr=0&bytes_max=1".to_string(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "whole number",
        ),
        (
            "bad container id",
            http::Method::GET,
            "/v1/logs?container=../etc&stdout=0&stderr=0&bytes_max=1".to_string(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "container id",
        ),
        (
            "unknown key",
            http::Method::GET,
            format!("{good}&tail=5"),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "unknown key",
        ),
        (
            "query too long",
            http::Method::GET,
            long_query,
            Vec::new(),
            StatusCode::URI_TOO_LONG,
            "longer than the limit",
        ),
        (
            "a body on GET",
            http::Method::GET,
            good.clone(),
            b"hello".to_vec(),
            StatusCode::BAD_REQUEST,
            "takes no body",
        ),
        (
            "an oversized body",
            http::Method::GET,
            good.clone(),
            vec![0; max + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds the limit",
        ),
        (
            "POST",
            http::Method::POST,
            good.clone(),
            Vec::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET",
        ),
    ];
    for (what, method, path, body, status, message) in cases {
        let reply = session.request(method, &path, body).await.unwrap();
        assert_eq!(reply.status, status, "{what}: {}", reply.message());
        assert!(
            reply.message().contains(message),
            "{what}: {:?} lacks {message:?}",
            reply.message()
        );
    }
    assert_eq!(logs.reads(), 0, "a refused request reached the log source");

    // A container that is not on this node: a clear 404 naming the node, never a panic.
    let error = sync::fetch_log(&mut session, &query("db-1", (0, 0), 10))
        .await
        .unwrap_err();
    let SyncError::Status {
        status, message, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(*status, 404);
    assert_eq!(message, "container db-1 is not on node node-b");

    // The same connection still answers a good request; nothing changed the state.
    let piece = sync::fetch_log(&mut session, &query("web-1", (0, 0), 10))
        .await
        .unwrap();
    assert_eq!(piece.stdout, b"line\n");
    assert_eq!(server.fingerprint(), before);
    session.close();
    server.stop().await;

    // A node without containers has no container at all.
    let dir = tempfile::tempdir().unwrap();
    let bare = Server::start(&pki, dir.path(), "node-b").await;
    let (_endpoint, mut session) = session_to_b(&pki, &bare).await;
    let error = sync::fetch_log(&mut session, &query("web-1", (0, 0), 10))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("status 404"), "{error}");
    assert!(error.contains("containers are disabled"), "{error}");
    session.close();
    bare.stop().await;
}

#[tokio::test]
async fn peers_outside_the_cluster_ca_read_nothing_and_are_not_believed() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(FakeLogs::default());
    logs.write("web-1", "secret\n", "");
    let server = node_b(&pki, dir.path(), &logs).await;
    let path = query("web-1", (0, 0), 10).path_and_query();

    // A client whose certificate (named like a member) comes from another CA.
    let foreign = Pki::new();
    let client = raw_client(&pki.ca_cert(), Some(&foreign.issue("node-a")));
    // Refused in the handshake, or at the latest when the request is sent.
    if let Ok(mut session) = sync::connect(&client, server.address, None, &limits()).await {
        let reply = session.get(&path).await;
        assert!(reply.is_err(), "a foreign peer got an answer: {reply:?}");
    }
    // No certificate at all.
    let anonymous = raw_client(&pki.ca_cert(), None);
    if let Ok(mut session) = sync::connect(&anonymous, server.address, None, &limits()).await {
        assert!(session.get(&path).await.is_err());
    }
    assert_eq!(
        logs.reads(),
        0,
        "a peer outside the CA reached the log source"
    );

    // A member expecting node-c at node-b's address refuses the answer it would get.
    let member =
        sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("node-a")).unwrap();
    let error = sync::connect(&member, server.address, Some(&node_id("node-c")), &limits())
        .await
        .err()
        .expect("node-b accepted as node-c");
    assert!(
        matches!(
            error,
            SyncError::Connect { .. } | SyncError::UnexpectedPeer { .. }
        ),
        "{error}"
    );

    // A server whose certificate comes from another CA, under the expected name.
    let dir = tempfile::tempdir().unwrap();
    let impostor = Server::start(&foreign, dir.path(), "node-b").await;
    let error = sync::connect(
        &member,
        impostor.address,
        Some(&node_id("node-b")),
        &limits(),
    )
    .await
    .err()
    .expect("a server from another CA was believed");
    assert!(matches!(error, SyncError::Connect { .. }), "{error}");

    // Positive control: the member reads.
    let (_endpoint, mut session) = session_to_b(&pki, &server).await;
    let piece = sync::fetch_log(&mut session, &query("web-1", (0, 0), 10))
        .await
        .unwrap();
    assert_eq!(piece.stdout, b"secret\n");
    assert_eq!(logs.reads(), 1);
    session.close();
    impostor.stop().await;
    server.stop().await;
}

/// Node A: a real node and API server, with no containers of its own, reaching B through its
/// sync endpoint. Its clock is manual, so a test can let B's heartbeat age.
struct NodeA {
    node: Arc<Node>,
    clock: Arc<ManualClock>,
    endpoint: quinn::Endpoint,
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    api: Option<tokio::task::JoinHandle<()>>,
}

const DOWN_AFTER_MS: u64 = 10_000;

impl NodeA {
    async fn start(pki: &Pki, dir: &Path) -> NodeA {
        let tls = sync::TlsHandle::new(pki.material("node-a"));
        let endpoint =
            sync::bind_reloadable_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
        let clock = Arc::new(ManualClock::at_ms(SystemClock.now_ms()));
        let mut options = NodeOptions::new(
            node_id("node-a"),
            dir.join("node-a.redb"),
            endpoint.local_addr().unwrap(),
        );
        options.down_after_ms = DOWN_AFTER_MS;
        let node = Arc::new(Node::open(options, clock.clone()).unwrap());
        let socket = dir.join("node-a.sock");
        let listener = shoal::api::server::bind(&socket).unwrap();
        let peers = shoal::api::server::PeerAccess {
            endpoint: endpoint.clone(),
            limits: limits(),
            tls,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let api = tokio::spawn(shoal::api::server::serve(
            listener,
            node.clone(),
            None,
            Some(peers),
            async {
                let _ = stopped.await;
            },
        ));
        NodeA {
            node,
            clock,
            endpoint,
            socket,
            stop: Some(stop),
            api: Some(api),
        }
    }

    /// Pulls B's state (its metadata and container records).
    async fn sync_from(&self, b: &Server) {
        sync::sync_once(
            &self.endpoint,
            &self.node,
            b.address,
            Some(&node_id("node-b")),
            &limits(),
        )
        .await
        .unwrap();
    }

    /// `shoal logs ARGS --socket A`, on a blocking thread.
    async fn logs(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BINARY);
        command
            .arg("logs")
            .args(args)
            .arg("--socket")
            .arg(&self.socket);
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(api) = self.api.take() {
            api.await.unwrap();
        }
        self.endpoint.close(0u32.into(), b"test over");
    }
}

/// Records container `id` of `service` as `node`'s own.
fn record(node: &Node, id: &str, service: &str) {
    let record = ContainerRecord {
        id: id.parse().unwrap(),
        service: service.parse().unwrap(),
        node: node.node_id().clone(),
        spec_version: Timestamp::new(NTP64(1), node.node_id().hlc_id()),
        ip: None,
    };
    node.write_batch(|replica, now| replica.add_container(now, record))
        .unwrap()
        .unwrap();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shoal_logs_on_node_a_reads_and_follows_containers_on_node_b() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let logs = Arc::new(FakeLogs::default());
    logs.write("web-b1", "hello from b1\n", "warning from b1\n");
    logs.write("web-b2", "hello from b2\n", "");
    let b = node_b(&pki, dir.path(), &logs).await;
    b.node.heartbeat().unwrap();
    record(&b.node, "web-b1", "web");
    record(&b.node, "web-b2", "web");
    let a = NodeA::start(&pki, dir.path()).await;
    a.sync_from(&b).await;

    // One container: its output as it is, stdout and stderr apart.
    let output = a.logs(&["web-b1"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stdout), "hello from b1\n");
    assert_eq!(text(&output.stderr), "warning from b1\n");

    // A service: every container, each line labelled with its node and container.
    let output = a.logs(&["web"]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "node-b web-b1 | hello from b1\nnode-b web-b2 | hello from b2\n"
    );

    // Unknown targets are refused by A without asking anyone.
    let reads = logs.reads();
    let output = a.logs(&["nosuch"]).await;
    assert!(!output.status.success());
    assert!(
        text(&output.stderr).contains("nosuch"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(logs.reads(), reads);

    // Follow: what is there, then what is written later, each line once.
    let mut follow = Command::new(BINARY)
        .args(["logs", "web-b1", "-f", "--socket"])
        .arg(&a.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, reader) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |reader: &std::sync::mpsc::Receiver<String>| {
        reader
            .recv_timeout(Duration::from_secs(20))
            .expect("a line from logs -f within 20 s")
    };
    assert_eq!(next_line(&reader), "hello from b1");
    logs.write("web-b1", "later from b1\n", "");
    assert_eq!(next_line(&reader), "later from b1");
    logs.write("web-b1", "even later\n", "");
    assert_eq!(next_line(&reader), "even later");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f must keep running"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();

    // B unreachable: the command fails within the bound, naming the node and its address.
    let address = b.address.to_string();
    b.stop().await;
    let started = std::time::Instant::now();
    let output = a.logs(&["web-b1"]).await;
    assert!(!output.status.success());
    let message = text(&output.stderr);
    assert!(
        message.contains("node-b") && message.contains(&address),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(REMOTE_LOG_TIMEOUT_MS + 10_000),
        "took {:?}",
        started.elapsed()
    );
    // Following a container nobody can read fails too, rather than waiting forever.
    let output = a.logs(&["web", "-f"]).await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("no container can be read"));

    // A node that never answers (a UDP socket nobody reads): the call gives up after
    // REMOTE_LOG_TIMEOUT_MS and names the node and its address.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap();
    let c = net_support::open_node(dir.path(), "node-c", silent_address);
    c.heartbeat().unwrap();
    record(&c, "api-c1", "api");
    // A's manual clock stood still since it started; C's writes carry the real time.
    a.clock.set_ms(SystemClock.now_ms());
    let delta = c.delta_for(&node_id("node-a"), &a.node.summary());
    a.node.apply_remote(&node_id("node-c"), delta).unwrap();
    let started = std::time::Instant::now();
    let output = a.logs(&["api-c1"]).await;
    let elapsed = started.elapsed();
    assert!(!output.status.success());
    let message = text(&output.stderr);
    assert!(
        message.contains(&format!(
            "node node-c at {silent_address}: no answer within {REMOTE_LOG_TIMEOUT_MS} ms"
        )),
        "{message}"
    );
    assert!(
        elapsed >= Duration::from_millis(REMOTE_LOG_TIMEOUT_MS)
            && elapsed < Duration::from_millis(REMOTE_LOG_TIMEOUT_MS + 10_000),
        "took {elapsed:?}"
    );

    // B's heartbeat silent: A does not dial it and says why at once.
    a.clock.advance_ms(DOWN_AFTER_MS + 1);
    let output = a.logs(&["web"]).await;
    assert!(!output.status.success());
    let message = text(&output.stderr);
    assert!(
        message.contains("2 of 2 containers could not be read"),
        "{message}"
    );
    let down = format!("node node-b at {address} is down");
    assert_eq!(message.matches(&down).count(), 1, "said once: {message}");
    a.stop().await;
}
