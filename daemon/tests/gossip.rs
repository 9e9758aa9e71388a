//! Gossip over real HTTP/3 between in-process nodes (real redb, real certificates): membership
//! is learned from node metadata beyond the seeds, anti-entropy alone converges, and eager
//! push alone delivers a change when the anti-entropy interval is far too long to.

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
    let cluster = GossipCluster::start(
        &pki,
        dir.path(),
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
