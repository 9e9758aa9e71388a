//! A state larger than one sync body, over real HTTP/3 with real certificates between
//! in-process nodes (real redb): it reaches a new node and converges, also when the new node is
//! below the others' GC floor; an aborted snapshot transfer leaves the receiver valid (it
//! restarts on its state and a later sync completes); malformed snapshot piece requests are
//! refused with their status and change nothing; a change over the body limit is not pushed;
//! a spec over the size bound is refused naming its service.

mod net_support;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use net_support::{GossipCluster, Pki, Server, limits, node_id, open_node};
use shoal::state::Node;
use shoal::sync::transfer::SnapshotDownload;
use shoal::sync::{self, GossipConfig, SyncError, wire};
use shoal_crdt::{ServiceSpec, codec};

/// Services of this many bytes of environment each.
const SERVICE_ENV_BYTES: usize = 4096;
/// 250 services of 4 KiB: a state of about 1 MB, 16 times the test kit's 64 KiB body limit.
const SERVICES: usize = 250;
const DEADLINE: Duration = Duration::from_secs(90);

fn gossip() -> GossipConfig {
    GossipConfig {
        interval_ms: 100,
        jitter_ms: 20,
        ..GossipConfig::default()
    }
}

fn spec(name: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::new(format!("/images/{name}"));
    spec.env
        .insert("PADDING".to_owned(), "p".repeat(SERVICE_ENV_BYTES));
    spec
}

/// Writes `count` services named `{prefix}-{index}` in one commit.
fn fill(node: &Node, prefix: &str, count: usize) {
    node.write_batch(|replica, now| {
        for index in 0..count {
            let name = format!("{prefix}-{index}");
            replica
                .put_service(now, name.parse().unwrap(), spec(&name))
                .unwrap();
        }
    })
    .unwrap();
}

/// The bytes of every service spec `node` holds, as they travel (JSON text).
fn spec_bytes(node: &Node) -> usize {
    node.read_state(|state| {
        state
            .services()
            .map(|(_, spec, _)| serde_json::to_vec(spec).unwrap().len())
            .sum()
    })
}

fn converged(nodes: &[Arc<Node>]) -> bool {
    nodes
        .windows(2)
        .all(|pair| pair[0].digest() == pair[1].digest())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_larger_than_a_body_reaches_a_new_node_and_converges() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = GossipCluster::start_with(
        &pki,
        dir.path(),
        &["node-a"],
        &[vec![]],
        gossip(),
        limits(),
        200,
    )
    .await;
    fill(&cluster.nodes[0], "web", SERVICES);
    assert!(spec_bytes(&cluster.nodes[0]) > 15 * limits().body_bytes_max);
    let seeds = vec![cluster.addresses[0]];
    cluster.add(&pki, dir.path(), "node-b", seeds, gossip(), limits(), 200);
    cluster
        .wait_until("the new node converges", DEADLINE, |nodes| {
            converged(nodes) && nodes[1].services().len() == SERVICES
        })
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_below_the_gc_floor_gets_the_whole_state_in_pieces() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = GossipCluster::start_with(
        &pki,
        dir.path(),
        &["node-a", "node-b"],
        &[vec![1], vec![0]],
        gossip(),
        limits(),
        200,
    )
    .await;
    let a = cluster.nodes[0].clone();
    fill(&a, "web", SERVICES);
    fill(&a, "gone", 10);
    for index in 0..10 {
        a.remove_service(&format!("gone-{index}").parse().unwrap())
            .unwrap();
    }
    // Both members hold the large state and collected the removals' tombstones, so a fresh
    // node's empty summary is below their GC floor.
    cluster
        .wait_until("the members converge and collect", DEADLINE, |nodes| {
            converged(nodes)
                && nodes[1].services().len() == SERVICES
                && nodes.iter().all(|node| node.status().tombstones == 0)
        })
        .await;
    let seeds = vec![cluster.addresses[0], cluster.addresses[1]];
    cluster.add(&pki, dir.path(), "node-c", seeds, gossip(), limits(), 200);
    cluster
        .wait_until("the new node converges", DEADLINE, |nodes| {
            converged(nodes) && nodes[2].services().len() == SERVICES
        })
        .await;
    let c = &cluster.nodes[2];
    assert!(
        c.services()
            .iter()
            .all(|service| !service.name.as_ref().starts_with("gone"))
    );
    // The snapshot may be one the seed built (for B) before it collected the removals: then C
    // holds their tombstones for a while, and collects them like everyone else.
    cluster
        .wait_until("the new node holds no tombstone", DEADLINE, |nodes| {
            nodes[2].status().tombstones == 0
        })
        .await;
    cluster.stop().await;
}

/// A node with its own endpoint and database, to sync with a test server by hand.
struct Receiver {
    endpoint: quinn::Endpoint,
    node: Arc<Node>,
    dir: std::path::PathBuf,
}

impl Receiver {
    fn start(pki: &Pki, dir: &std::path::Path, name: &str) -> Receiver {
        let endpoint =
            sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material(name)).unwrap();
        let node = open_node(dir, name, endpoint.local_addr().unwrap());
        Receiver {
            endpoint,
            node,
            dir: dir.to_path_buf(),
        }
    }

    /// Closes the database and opens it again, as a restarted daemon does.
    fn restart(self) -> Receiver {
        let Receiver {
            endpoint,
            node,
            dir,
        } = self;
        let name = node.node_id().to_string();
        assert_eq!(Arc::strong_count(&node), 1, "nobody else holds the node");
        drop(node);
        let node = open_node(&dir, &name, endpoint.local_addr().unwrap());
        Receiver {
            endpoint,
            node,
            dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_transfer_leaves_the_receiver_valid_and_a_later_sync_completes() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "node-a").await;
    fill(&server.node, "web", SERVICES);
    let receiver = Receiver::start(&pki, dir.path(), "node-b");
    receiver.node.heartbeat().unwrap();
    let before = (receiver.node.digest(), receiver.node.summary());

    // The delta does not fit: the server says where to fetch it.
    let mut session = sync::connect(
        &receiver.endpoint,
        server.address,
        Some(&node_id("node-a")),
        &limits(),
    )
    .await
    .unwrap();
    let summary = codec::encode_summary(&receiver.node.summary());
    let reply = session.post(wire::PATH_SYNC, summary).await.unwrap();
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.message());
    assert!(
        reply.message().contains("/v1/snapshot"),
        "{}",
        reply.message()
    );
    // Three pieces of many, then the transfer is abandoned.
    let mut download = SnapshotDownload::new(limits().body_bytes_max);
    for _ in 0..3 {
        let reply = session
            .get(&download.next_query().path_and_query())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());
        let piece =
            wire::decode_snapshot_piece(&reply.body, limits().body_bytes_max, download.bytes_max())
                .unwrap();
        assert!(piece.total_bytes > 10 * limits().body_bytes_max as u64);
        assert!(!download.accept(piece).unwrap(), "not complete yet");
    }
    drop(download);
    session.close();
    assert_eq!(
        (receiver.node.digest(), receiver.node.summary()),
        before,
        "an aborted transfer applied nothing"
    );
    let receiver = receiver.restart();
    assert_eq!((receiver.node.digest(), receiver.node.summary()), before);

    // A later sync fetches the snapshot in pieces, applies it and converges, durably.
    let stats = sync::sync_once(
        &receiver.endpoint,
        &receiver.node,
        server.address,
        Some(&node_id("node-a")),
        &limits(),
    )
    .await
    .unwrap();
    assert!(stats.snapshot_bytes_received > 10 * limits().body_bytes_max as u64);
    assert_eq!(receiver.node.digest(), server.node.digest());
    let receiver = receiver.restart();
    assert_eq!(receiver.node.digest(), server.node.digest());
    assert_eq!(receiver.node.services().len(), SERVICES);
    receiver.endpoint.close(0u32.into(), b"test over");
    server.stop().await;
}

#[tokio::test]
async fn malformed_snapshot_requests_are_refused_with_their_status_and_change_nothing() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "node-a").await;
    fill(&server.node, "web", 20);
    let before = server.fingerprint();
    let receiver = Receiver::start(&pki, dir.path(), "node-b");
    let mut session = sync::connect(
        &receiver.endpoint,
        server.address,
        Some(&node_id("node-a")),
        &limits(),
    )
    .await
    .unwrap();
    // A valid first piece, to name a transfer the server holds.
    let reply = session
        .get("/v1/snapshot?offset=0&bytes_max=1000")
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());
    let piece = wire::decode_snapshot_piece(&reply.body, limits().body_bytes_max, 1000).unwrap();
    assert_eq!(piece.data.len(), 1000);
    let id = piece.transfer;
    let total = piece.total_bytes;
    let unknown = wire::TransferId([0x5a; 32]);
    let long = format!("/v1/snapshot?offset=0&bytes_max=1&pad={}", "x".repeat(300));
    let cases: Vec<(http::Method, String, Vec<u8>, StatusCode, String)> = vec![
        (
            http::Method::GET,
            "/v1/snapshot".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "offset is missing".into(),
        ),
        (
            http::Method::GET,
            "/v1/snapshot?offset=abc&bytes_max=1".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "is not a whole number".into(),
        ),
        (
            http::Method::GET,
            "/v1/snapshot?transfer=xyz&offset=0&bytes_max=1".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "not 64 lowercase hex digits".into(),
        ),
        (
            http::Method::GET,
            "/v1/snapshot?offset=0&bytes_max=0".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "at least 1".into(),
        ),
        (
            http::Method::GET,
            "/v1/snapshot?offset=0&bytes_max=10&piece=2".into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "unknown key \"piece\"".into(),
        ),
        (
            http::Method::GET,
            "/v1/snapshot?offset=0&bytes_max=10".into(),
            b"a body".to_vec(),
            StatusCode::BAD_REQUEST,
            "takes no body".into(),
        ),
        (
            http::Method::GET,
            format!("/v1/snapshot?transfer={unknown}&offset=0&bytes_max=10"),
            Vec::new(),
            StatusCode::GONE,
            format!("snapshot transfer {unknown} is no longer held here"),
        ),
        (
            http::Method::GET,
            format!(
                "/v1/snapshot?transfer={id}&offset={}&bytes_max=10",
                total + 1
            ),
            Vec::new(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("past the end of snapshot transfer {id} ({total} bytes)"),
        ),
        (
            http::Method::POST,
            "/v1/snapshot?offset=0&bytes_max=10".into(),
            Vec::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET".into(),
        ),
        (
            http::Method::GET,
            long,
            Vec::new(),
            StatusCode::URI_TOO_LONG,
            "longer than the limit".into(),
        ),
    ];
    for (method, path, body, status, fragment) in cases {
        let reply = session.request(method.clone(), &path, body).await.unwrap();
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.message());
        assert!(
            reply.message().contains(&fragment),
            "{method} {path}: {:?} lacks {fragment:?}",
            reply.message()
        );
    }
    // The transfer is still served from where it was left.
    let reply = session
        .get(&format!(
            "/v1/snapshot?transfer={id}&offset=1000&bytes_max=1000"
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());
    assert_eq!(server.fingerprint(), before);
    session.close();
    receiver.endpoint.close(0u32.into(), b"test over");
    server.stop().await;
}

#[tokio::test]
async fn a_change_over_the_body_limit_is_not_pushed() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "node-a").await;
    let before = server.fingerprint();
    let receiver = Receiver::start(&pki, dir.path(), "node-b");
    let mut changes = receiver.node.subscribe_changes();
    fill(&receiver.node, "web", SERVICES);
    let delta = changes.try_recv().unwrap();
    let error = sync::push(
        &receiver.endpoint,
        &receiver.node,
        server.address,
        Some(&node_id("node-a")),
        &delta,
        &limits(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, SyncError::PushTooLarge { body_bytes_max, .. } if body_bytes_max == limits().body_bytes_max),
        "{error}"
    );
    assert_eq!(server.fingerprint(), before);
    receiver.endpoint.close(0u32.into(), b"test over");
    server.stop().await;
}

#[test]
fn a_spec_over_the_size_bound_is_refused_naming_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let node = open_node(dir.path(), "node-a", "127.0.0.1:9".parse().unwrap());
    // 80 variables of 4 KiB: every field within its bounds, 320 KiB in all.
    let mut big = ServiceSpec::new("/images/big");
    for index in 0..80 {
        big.env.insert(format!("VAR_{index}"), "v".repeat(4096));
    }
    let before = node.digest();
    let error = match node.apply_services(vec![("big".parse().unwrap(), big)]) {
        Ok(_) => panic!("a spec over the size bound was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("service big"), "{error}");
    assert!(
        error.contains("more than the limit of 262144 bytes"),
        "{error}"
    );
    assert_eq!(node.digest(), before);
    // The spec file parser, which the CLI and the API use, says the same.
    let mut text = "name = \"big\"\nimage = \"/images/big\"\n[env]\n".to_string();
    for index in 0..80 {
        text.push_str(&format!("VAR_{index} = \"{}\"\n", "v".repeat(4096)));
    }
    let error = match shoal::cli::spec_file::parse(&text) {
        Ok(_) => panic!("the spec file parser accepted a spec over the size bound"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("service big"), "{error}");
    assert!(
        error.contains("more than the limit of 262144 bytes"),
        "{error}"
    );
}
