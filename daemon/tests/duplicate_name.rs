//! Two daemons with one node name (issue 13, item 2), over real mutual-TLS HTTP/3 on loopback
//! with real redb databases: n1, n2 and n3 run a cluster; a second n1 starts with the same
//! certificate and its own empty state and applies a service, the first n1 applies another.
//! Both n1s must say in `shoal status` that their identity is contested and refuse further
//! applies, `shoal nodes` on n2 and n3 must show n1 as duplicated, and all four replicas must
//! converge. Once the second n1 is stopped, the first, restarted, writes again.

mod net_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net_support::{Daemon, DaemonSpec, Pki, call, named_spec, node_id};
use shoal::api::{self, NodeView, Request, StatusView};
use shoal::state::{Node, NodeError};
use shoal::sync::TlsMaterial;

const DEADLINE: Duration = Duration::from_secs(30);
const HEARTBEAT_MS: u64 = 200;

/// A daemon named `name` whose database and socket are named `label` (two daemons share n1).
fn start(
    tls: &TlsMaterial,
    dir: &Path,
    name: &str,
    label: &str,
    incarnation: u64,
    seeds: Vec<SocketAddr>,
) -> Daemon {
    let spec = DaemonSpec {
        name,
        label,
        seeds,
        incarnation: Some(incarnation),
        down_after_ms: None,
        heartbeat_ms: HEARTBEAT_MS,
        rng_seed: incarnation,
    };
    Daemon::start(tls, dir, spec)
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn apply_request(name: &str) -> Request {
    let services = named_spec(name, &format!("/images/{name}"))
        .into_iter()
        .map(|(name, spec)| api::NamedSpec { name, spec })
        .collect();
    Request::ServiceApply { services }
}

fn service_names(node: &Node) -> Vec<String> {
    node.services()
        .iter()
        .map(|service| service.name.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_with_one_name_both_say_so_stop_writing_and_the_cluster_converges() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let n1_tls = pki.material("n1");
    let n2 = start(&pki.material("n2"), dir.path(), "n2", "n2", 2, Vec::new());
    let n3 = start(
        &pki.material("n3"),
        dir.path(),
        "n3",
        "n3",
        3,
        vec![n2.address],
    );
    let first = start(
        &n1_tls,
        dir.path(),
        "n1",
        "n1-first",
        0x1111,
        vec![n2.address, n3.address],
    );
    wait_until("n1, n2, n3 know each other", || {
        [&first, &n2, &n3]
            .iter()
            .all(|daemon| daemon.node.members().len() == 3)
    })
    .await;
    let applied: Vec<api::ServiceView> = call(&first.socket, apply_request("from-first"))
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);

    // The same name and certificate, its own empty state directory: it applies a service as
    // its first write after its metadata, then syncs with n2 and n3.
    let second_dir = tempfile::tempdir().unwrap();
    let second = start(
        &n1_tls,
        second_dir.path(),
        "n1",
        "n1-second",
        0x2222,
        vec![n2.address, n3.address],
    );
    let applied: Vec<api::ServiceView> = call(&second.socket, apply_request("from-second"))
        .await
        .unwrap();
    assert_eq!(applied.len(), 1);

    // Both n1s notice that another daemon writes as n1.
    wait_until("both n1s see their identity contested", || {
        first.node.identity_contest().is_some() && second.node.identity_contest().is_some()
    })
    .await;
    for daemon in [&first, &second] {
        let status: StatusView = call(&daemon.socket, Request::Status).await.unwrap();
        let contested = status.identity_contested.clone().expect("contested");
        assert!(
            contested.contains("another daemon runs as node n1"),
            "{contested}"
        );
        assert_eq!(status.writes_refused.as_ref(), Some(&contested));
        let text = shoal::cli::output::status(&status);
        assert!(
            text.contains("identity:    CONTESTED: another daemon runs as node n1"),
            "{text}"
        );
        // Further applies are refused, through the API and on the node.
        let refused = call::<Vec<api::ServiceView>>(&daemon.socket, apply_request("refused"))
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("another daemon runs as node n1"),
            "{refused}"
        );
        let error = daemon
            .node
            .apply_services(named_spec("refused", "/images/refused"))
            .unwrap_err();
        assert!(matches!(error, NodeError::Contested(_)), "{error}");
    }

    // n2 and n3 show n1 as written by two daemons.
    wait_until("n2 and n3 see n1 duplicated", || {
        [&n2, &n3]
            .iter()
            .all(|daemon| daemon.node.duplicated_nodes().contains_key(&node_id("n1")))
    })
    .await;
    for daemon in [&n2, &n3] {
        let views: Vec<NodeView> = call(&daemon.socket, Request::Nodes).await.unwrap();
        let n1 = views
            .iter()
            .find(|view| view.id == node_id("n1"))
            .unwrap_or_else(|| panic!("n1 not in {views:?}"));
        assert!(n1.duplicated.is_some(), "{n1:?}");
        let text = shoal::cli::output::nodes(&views);
        assert!(
            text.contains("DUPLICATED: two daemons write as node n1"),
            "shoal nodes on {}:\n{text}",
            daemon.node.node_id()
        );
    }

    // All four replicas converge: the same digest and the same services, nothing refused
    // written anywhere.
    let all = [&first, &second, &n2, &n3];
    wait_until("the four replicas converge", || {
        let digest = all[0].node.digest();
        all.iter().all(|daemon| daemon.node.digest() == digest)
    })
    .await;
    // The two applies may claim one dot (each n1 numbers its writes on its own): then one of
    // them is kept, by the tie-break every replica makes the same way.
    let services = service_names(&n2.node);
    assert!(
        services == ["from-first"]
            || services == ["from-second"]
            || services == ["from-first", "from-second"],
        "{services:?}"
    );
    for daemon in all {
        assert_eq!(service_names(&daemon.node), services);
    }

    // The second n1 is stopped and the first restarted (a new incarnation): it writes again.
    drop(second.stop().await);
    let node = first.stop().await;
    assert_eq!(Arc::strong_count(&node), 1, "nobody else holds the node");
    drop(node);
    let first = start(
        &n1_tls,
        dir.path(),
        "n1",
        "n1-first",
        0x3333,
        vec![n2.address, n3.address],
    );
    assert!(
        first.node.identity_contest().is_none(),
        "{:?}",
        first.node.identity_contest()
    );
    let applied: Vec<api::ServiceView> = call(&first.socket, apply_request("after")).await.unwrap();
    assert_eq!(applied.len(), 1);
    wait_until("n2 and n3 take n1's new write", || {
        [&n2, &n3]
            .iter()
            .all(|daemon| service_names(&daemon.node).contains(&"after".to_string()))
    })
    .await;
    // A few heartbeats later it is still not contested.
    tokio::time::sleep(Duration::from_millis(5 * HEARTBEAT_MS)).await;
    assert!(
        first.node.identity_contest().is_none(),
        "{:?}",
        first.node.identity_contest()
    );
    for daemon in [first, n2, n3] {
        daemon.stop().await;
    }
}
