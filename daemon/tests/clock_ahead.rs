//! A node whose clock ran an hour ahead for ten seconds and was restarted with the right
//! time, syncing over real mutual-TLS HTTP/3 with a peer on the system clock: the peer
//! refuses its writes (422) and says so in `shoal nodes`, the node says in `shoal status` that
//! it refuses local changes and why, and a `service apply` on it is an error, not a success
//! for a change that would never reach a peer.

mod net_support;

use std::path::Path;
use std::sync::Arc;

use net_support::{Pki, Server, call, named_spec, node_id};
use shoal::api::{self, NodeView, Request, StatusView};
use shoal::state::{Clock, ManualClock, Node, NodeError, NodeOptions, SystemClock};
use shoal::sync;

const HOUR_MS: u64 = 3_600_000;

/// Serves the local API of `node` on `dir/name.sock` until the returned sender is used.
fn serve_api(
    dir: &Path,
    name: &str,
    node: &Arc<Node>,
) -> (std::path::PathBuf, tokio::sync::oneshot::Sender<()>) {
    let path = dir.join(format!("{name}.sock"));
    let listener = api::server::bind(&path).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(api::server::serve(
        listener,
        node.clone(),
        None,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    (path, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_ran_ahead_is_told_and_its_peers_say_they_refuse_it() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let peer = Server::start(&pki, dir.path(), "node-b").await;
    peer.node.heartbeat().unwrap();

    let endpoint =
        sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("node-a")).unwrap();
    let options = NodeOptions::new(
        node_id("node-a"),
        dir.path().join("node-a.redb"),
        endpoint.local_addr().unwrap(),
    );
    let now_ms = SystemClock.now_ms();
    // Ten seconds an hour ahead: a heartbeat and a service are written with that time.
    {
        let clock = Arc::new(ManualClock::at_ms(now_ms + HOUR_MS));
        let node = Node::open(options.clone(), clock.clone()).unwrap();
        node.heartbeat().unwrap();
        node.apply_services(named_spec("early", "/images/early"))
            .unwrap();
        clock.advance_ms(10_000);
        node.heartbeat().unwrap();
    }
    // Restarted with the right time.
    let node = Arc::new(Node::open(options, Arc::new(ManualClock::at_ms(now_ms))).unwrap());
    let limits = net_support::limits();

    // An anti-entropy round: the pull works, the push back is refused for the clock.
    let error = sync::sync_once(&endpoint, &node, peer.address, None, &limits)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("status 422"), "{error}");

    // The peer records whose writes it refused and why; `shoal nodes` there says so.
    let refused = peer.node.refused_writes();
    let record = refused.get(&node_id("node-a")).expect("refusal recorded");
    assert!(record.reason.starts_with("422 "), "{record:?}");
    assert!(
        record.reason.contains("delta from node-a refused"),
        "{record:?}"
    );
    let (peer_socket, stop_peer_api) = serve_api(dir.path(), "node-b", &peer.node);
    let views: Vec<NodeView> = call(&peer_socket, Request::Nodes).await.unwrap();
    let view = views
        .iter()
        .find(|view| view.id == node_id("node-a"))
        .unwrap_or_else(|| panic!("node-a not in {views:?}"));
    // Its heartbeats never got in: it is known only by the refusal.
    assert!(!view.member && !view.live, "{view:?}");
    assert_eq!(view.writes_refused.as_ref(), Some(&record.reason));
    let text = shoal::cli::output::nodes(&views);
    assert!(
        text.contains("refused: node-a (not a member)"),
        "shoal nodes on the peer:\n{text}"
    );

    // The node itself: `shoal status` says it refuses changes, why, and until when; the
    // peer's refusal is its last error; `service apply` fails instead of a false success.
    let (socket, stop_api) = serve_api(dir.path(), "node-a", &node);
    let status: StatusView = call(&socket, Request::Status).await.unwrap();
    let reason = status.writes_refused.clone().expect("writes refused");
    assert!(
        reason.contains("ahead of its system clock") && reason.contains("sync.max_clock_drift_ms"),
        "{reason}"
    );
    assert!(status.clock_ahead_ms.unwrap() >= HOUR_MS, "{status:?}");
    let peer_view = status
        .peers
        .iter()
        .find(|peer| peer.id == node_id("node-b"))
        .expect("node-b learnt from the pull");
    let last_error = peer_view.last_error.clone().unwrap_or_default();
    assert!(last_error.contains("status 422"), "{last_error}");
    let text = shoal::cli::output::status(&status);
    assert!(
        text.contains("writes:      refused: this node's clock"),
        "{text}"
    );

    let services = named_spec("web", "/images/web")
        .into_iter()
        .map(|(name, spec)| api::NamedSpec { name, spec })
        .collect();
    let refused = call::<Vec<api::ServiceView>>(&socket, Request::ServiceApply { services })
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("ms ahead of its system clock"),
        "{message}"
    );
    assert!(
        matches!(
            node.apply_services(named_spec("web", "/images/web")),
            Err(NodeError::ClockAhead(_))
        ),
        "refused through the node too"
    );

    // The peer's refusal as an error line says what refused it once, though the node's error
    // wraps the replica's (which names the node) and that wraps the clock's.
    let delta = node.delta_for(&node_id("node-b"), &peer.node.summary());
    let error = peer
        .node
        .apply_remote(&node_id("node-a"), delta)
        .unwrap_err();
    let line = shoal::cli::output::error_text(&anyhow::Error::from(error));
    assert_eq!(
        line.matches("delta from node-a refused").count(),
        1,
        "{line}"
    );
    assert_eq!(line.matches("ms ahead of local time").count(), 1, "{line}");

    // A push that is accepted clears the record on the peer.
    let fresh = Arc::new(
        Node::open(
            NodeOptions::new(
                node_id("node-a"),
                dir.path().join("node-a-fresh.redb"),
                endpoint.local_addr().unwrap(),
            ),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    fresh.heartbeat().unwrap();
    sync::sync_once(&endpoint, &fresh, peer.address, None, &limits)
        .await
        .unwrap();
    assert!(peer.node.refused_writes().is_empty());

    let _ = stop_api.send(());
    let _ = stop_peer_api.send(());
    endpoint.close(0u32.into(), b"done");
    peer.stop().await;
}
