//! Gossip over real HTTP/3 between in-process nodes (real redb, real certificates): membership
//! is learned from node metadata beyond the seeds, anti-entropy alone converges, eager
//! push alone delivers a change when the anti-entropy interval is far too long to, a
//! member that a push reached forwards it (epidemic push), and a compact summary the peer
//! cannot rebuild is followed by the full one.

mod net_support;

use std::time::Duration;

use net_support::{GossipCluster, Pki, apply_service, node_id};
use shoal::sync::GossipConfig;

fn converged(nodes: &[std::sync::Arc<shoal::state::Node>]) -> bool {
    nodes
        .windows(2)
        .all(|pair| pair[0].digest() == pair[1].digest())
}

fn has_service(node: &shoal::state::Node, name: &str) -> bool {
    node.services()
        .iter()
        .any(|service| service.name.as_ref() == name)
}

/// The value of a series every node exposes from its start.
fn series(node: &shoal::state::Node, series: &str) -> f64 {
    node.metrics()
        .sample(series)
        .unwrap_or_else(|| panic!("{series} is not exposed"))
}

/// Nodes a, b and c, each seeded with the other two, once each sees both others live.
async fn three_that_see_each_other(
    pki: &Pki,
    dir: &std::path::Path,
    gossip: GossipConfig,
) -> GossipCluster {
    let cluster = GossipCluster::start(
        pki,
        dir,
        &["node-a", "node-b", "node-c"],
        &[vec![1, 2], vec![0, 2], vec![0, 1]],
        gossip,
    )
    .await;
    cluster
        .wait_until(
            "everyone sees two live peers",
            Duration::from_secs(20),
            |nodes| {
                nodes
                    .iter()
                    .all(|node| node.peers().iter().filter(|peer| peer.live).count() == 2)
            },
        )
        .await;
    // Each node starts one exchange at once; with a long interval there is no other for a
    // while. Once each has ended, nothing but what a test does moves a change.
    let exchanges_ended = |node: &shoal::state::Node| {
        ["ok", "failed"]
            .iter()
            .map(|outcome| {
                series(
                    node,
                    &format!("shoal_sync_exchanges_total{{outcome=\"{outcome}\"}}"),
                )
            })
            .sum::<f64>()
    };
    cluster
        .wait_until(
            "every node's first exchange ended",
            Duration::from_secs(20),
            |nodes| nodes.iter().all(|node| exchanges_ended(node) >= 1.0),
        )
        .await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_alone_converges_and_members_are_learned_beyond_seeds() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // A star of seeds: B and C only know A; they must find each other through node metadata.
    let gossip = GossipConfig {
        interval_ms: 100,
        jitter_ms: 20,
        eager_push: false,
        ..GossipConfig::default()
    };
    let cluster = GossipCluster::start(
        &pki,
        dir.path(),
        &["node-a", "node-b", "node-c"],
        &[vec![], vec![0], vec![0]],
        gossip,
    )
    .await;
    apply_service(&cluster.nodes[1], "web", "/images/web");
    apply_service(&cluster.nodes[2], "db", "/images/db");
    cluster
        .wait_until("all three converge", Duration::from_secs(20), |nodes| {
            converged(nodes) && has_service(&nodes[0], "web") && has_service(&nodes[0], "db")
        })
        .await;
    // C synced with B directly, an address it only learned from B's node metadata.
    cluster
        .wait_until(
            "C syncs with B directly",
            Duration::from_secs(20),
            |nodes| {
                nodes[2]
                    .peers()
                    .iter()
                    .any(|peer| peer.node == node_id("node-b") && peer.last_sync_ms_ago.is_some())
            },
        )
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_push_delivers_without_waiting_for_anti_entropy() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // Anti-entropy once at start, then not for a minute: after that only an eager push can
    // deliver a change to C within the deadline.
    let gossip = GossipConfig {
        interval_ms: 60_000,
        jitter_ms: 0,
        eager_push: true,
        ..GossipConfig::default()
    };
    let cluster = three_that_see_each_other(&pki, dir.path(), gossip).await;
    apply_service(&cluster.nodes[0], "web", "/images/web");
    cluster
        .wait_until(
            "C sees A's change by eager push",
            Duration::from_secs(10),
            |nodes| has_service(&nodes[2], "web"),
        )
        .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_change_is_forwarded_by_the_members_it_reaches() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    // A change goes to one member (push_fanout 1) and anti-entropy waits a minute: only a
    // forward by that member brings it to the third within the deadline.
    let gossip = GossipConfig {
        interval_ms: 60_000,
        jitter_ms: 0,
        eager_push: true,
        push_fanout: Some(1),
        ..GossipConfig::default()
    };
    let cluster = three_that_see_each_other(&pki, dir.path(), gossip).await;
    apply_service(&cluster.nodes[0], "web", "/images/web");
    cluster
        .wait_until(
            "B and C see A's change, one of them by a forward",
            Duration::from_secs(10),
            |nodes| has_service(&nodes[1], "web") && has_service(&nodes[2], "web"),
        )
        .await;
    // The first of B and C forwards to the other, which forwards to A (never back to the
    // sender); A holds the change, so the epidemic stops there. Each forward is counted once
    // its receiver answered (after the change is in), or failed.
    let forwards = |node: &shoal::state::Node| {
        let count = |outcome: &str| {
            series(
                node,
                &format!("shoal_push_forwards_total{{outcome=\"{outcome}\"}}"),
            )
        };
        (count("ok"), count("failed"))
    };
    cluster
        .wait_for(
            "B and C each forward once, A not at all (forwards ok, failed)",
            Duration::from_secs(5),
            |nodes| nodes.iter().map(|node| forwards(node)).collect::<Vec<_>>(),
            vec![(0.0, 0.0), (1.0, 0.0), (1.0, 0.0)],
        )
        .await;
    cluster.stop().await;
}

/// Exchanges and pushes through one `Connections` reuse one kept connection: only the
/// first pays for a handshake; one that finds the connection busy dials its own and
/// leaves the kept one in place; asking an address for another node than the one its kept
/// connection reaches dials again (and that handshake refuses the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_reuse_one_kept_connection_and_handshake_once() {
    use shoal::sync::connections::Connections;
    use shoal::sync::transfer::TransferGate;
    use shoal::sync::{SyncError, push_with, sync_once_with};

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = net_support::Server::start(&pki, dir.path(), "node-b").await;
    let endpoint =
        shoal::sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("node-a"))
            .unwrap();
    let client = net_support::open_node(dir.path(), "node-a", endpoint.local_addr().unwrap());
    // Its node metadata reaches node-b with the first exchange: it joins.
    client.heartbeat().unwrap();
    let connections = Connections::new(endpoint.clone());
    let limits = net_support::limits();
    let gate = TransferGate::default();
    let b = node_id("node-b");
    let exchange = || {
        sync_once_with(
            &connections,
            &client,
            server.address,
            Some(&b),
            &limits,
            &gate,
        )
    };

    let first = exchange().await.unwrap();
    assert_eq!(connections.kept(), 1);
    let second = exchange().await.unwrap();
    assert_eq!(connections.kept(), 1);
    // A handshake sends the certificate chain and signatures (kilobytes); a reused
    // connection sends only the two requests.
    assert!(
        second.udp_bytes_sent * 3 < first.udp_bytes_sent,
        "first {} bytes, second {} bytes: the second exchange handshook again",
        first.udp_bytes_sent,
        second.udp_bytes_sent
    );

    // A change pushed on the same connection arrives.
    apply_service(&client, "web", "img");
    let delta = client.delta_for(&b, &server.node.summary());
    let pushed = push_with(
        &connections,
        &client,
        server.address,
        Some(&b),
        &delta,
        0,
        &limits,
        &gate,
    )
    .await
    .unwrap();
    assert!(
        pushed.udp_bytes_sent * 3 < first.udp_bytes_sent,
        "first {} bytes, push {} bytes ({} of body)",
        first.udp_bytes_sent,
        pushed.udp_bytes_sent,
        pushed.bytes_sent
    );
    assert!(has_service(&server.node, "web"));

    // Two at once: one takes the kept connection, the other dials its own; both succeed.
    let (one, two) = tokio::join!(exchange(), exchange());
    one.unwrap();
    two.unwrap();
    assert_eq!(connections.kept(), 1);

    // The kept connection is to node-b; asking that address for another node is refused.
    let other = node_id("node-c");
    let refused = sync_once_with(
        &connections,
        &client,
        server.address,
        Some(&other),
        &limits,
        &gate,
    )
    .await;
    assert!(
        matches!(&refused, Err(SyncError::Connect { reason, .. }) if reason.contains("NotValidForName")),
        "{refused:?}"
    );
    assert_eq!(
        connections.kept(),
        0,
        "the kept connection to node-b was not reused"
    );
    exchange().await.unwrap();
    assert_eq!(connections.kept(), 1);
    // Dropped, the kept connection closes: the server's shutdown has nothing to wait for.
    drop(connections);
    server.stop().await;
}

/// A peer killed and started again on its address (same certificate and key) answers the
/// packets of the connection its previous run held with a stateless reset keyed by its
/// private key: the kept connection fails at once and the exchange runs again on a new
/// one, instead of waiting out the request deadline.
#[test]
fn a_restarted_peer_is_reached_again_in_the_same_exchange() {
    use shoal::sync::connections::Connections;
    use shoal::sync::sync_once_with;
    use shoal::sync::transfer::TransferGate;

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tls_b = pki.material("node-b");
    // node-b runs on a runtime of its own, so that dropping that runtime stops it without
    // a word on the wire, as a kill would.
    let serve_b = |state: &std::path::Path, address: std::net::SocketAddr| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let endpoint = {
            let _inside = runtime.enter();
            shoal::sync::bind_endpoint(address, &tls_b).unwrap()
        };
        let address = endpoint.local_addr().unwrap();
        let node = net_support::open_node(state, "node-b", address);
        runtime.spawn(shoal::sync::serve(
            endpoint,
            node,
            net_support::limits(),
            shoal::sync::Handlers::default(),
            std::future::pending(),
        ));
        (runtime, address)
    };
    let first_state = dir.path().join("b1");
    std::fs::create_dir_all(&first_state).unwrap();
    let (first_run, address) = serve_b(&first_state, "127.0.0.1:0".parse().unwrap());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let endpoint = {
        let _inside = runtime.enter();
        shoal::sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("node-a")).unwrap()
    };
    let client = net_support::open_node(dir.path(), "node-a", endpoint.local_addr().unwrap());
    client.heartbeat().unwrap();
    let connections = Connections::new(endpoint);
    let mut limits = net_support::limits();
    limits.request_timeout_ms = 10_000;
    let gate = TransferGate::default();
    let b = node_id("node-b");
    let exchange = || {
        runtime.block_on(sync_once_with(
            &connections,
            &client,
            address,
            Some(&b),
            &limits,
            &gate,
        ))
    };
    exchange().unwrap();
    assert_eq!(connections.kept(), 1);

    // Gone without a word; then up again on its address, with its own key, empty.
    drop(first_run);
    let second_state = dir.path().join("b2");
    std::fs::create_dir_all(&second_state).unwrap();
    let (second_run, _) = serve_b(&second_state, address);

    let started = std::time::Instant::now();
    let stats = exchange().unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(limits.request_timeout_ms / 2),
        "the broken connection was found only after {:?}",
        started.elapsed()
    );
    // The new node-b had nothing: it received node-a's metadata in this exchange.
    assert!(stats.entries_sent > 0);
    assert_eq!(connections.kept(), 1);
    drop(connections);
    drop(second_run);
}

/// A compact summary the peer cannot rebuild (409: the two are further apart than the
/// windows tell) is followed by the full summary on the same session, and the exchange
/// converges both ways. An older daemon that does not know the form answers 400, which the
/// client takes the same way. The client holds the writes of six other nodes, made a minute
/// ago on its clock, so no origin moved lately: its summary is compact; the server has
/// never heard of those nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compact_summary_the_peer_cannot_rebuild_is_followed_by_the_full_one() {
    use shoal::state::{Clock, ManualClock, SystemClock};
    use std::sync::Arc;

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let endpoint =
        shoal::sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("node-a"))
            .unwrap();
    let address = endpoint.local_addr().unwrap();
    let clock = Arc::new(ManualClock::at_ms(SystemClock.now_ms() - 60_000));
    let open = |name: &str| net_support::open_node_on(dir.path(), name, address, clock.clone());
    let a = node_id("node-a");
    let b = node_id("node-b");
    let server = net_support::Server::start(&pki, dir.path(), "node-b").await;
    apply_service(&server.node, "db", "/images/db");
    // The client is a member of the server's cluster (its node metadata is there), so the
    // server takes what it pushes back.
    let client = open("node-a");
    client.heartbeat().unwrap();
    let join = client.delta_for(&b, &server.node.summary());
    server.node.apply_remote(&a, join).unwrap();
    for index in 1..=6 {
        let name = format!("writer-{index}");
        let writer = open(&name);
        apply_service(&writer, &format!("svc-{index}"), "/images/app");
        let delta = writer.delta_for(&a, &client.summary());
        client.apply_remote(&node_id(&name), delta).unwrap();
    }
    assert!(
        client.compact_summary().is_none(),
        "every origin moved just now"
    );
    clock.set_ms(SystemClock.now_ms());
    assert!(
        client.compact_summary().is_some(),
        "a minute on, no origin moved lately"
    );

    shoal::sync::sync_once(
        &endpoint,
        &client,
        server.address,
        Some(&b),
        &net_support::limits(),
    )
    .await
    .unwrap();

    let form = |form: &str| {
        series(
            &client,
            &format!("shoal_sync_summaries_total{{form=\"{form}\"}}"),
        )
    };
    assert_eq!(form("compact_refused"), 1.0);
    assert_eq!(form("full"), 1.0);
    assert_eq!(form("compact"), 0.0);
    assert!(has_service(&client, "db"));
    for index in 1..=6 {
        assert!(has_service(&server.node, &format!("svc-{index}")));
    }
    assert_eq!(client.digest(), server.node.digest());
    server.stop().await;
}
