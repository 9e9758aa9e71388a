//! SWIM membership between in-process nodes over real HTTP/3 with real certificates: members
//! learn each other from the document and SWIM, one that stops answering is suspected and
//! then down everywhere (and so not live), and `POST /v1/swim` believes only what the caller's
//! certificate says: a packet naming another sender is refused, a client of another CA never
//! gets a packet in.

mod net_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use net_support::{Pki, limits, node_id, open_node_with, raw_client};
use shoal::state::Node;
use shoal::state::members::PeerState;
use shoal::swim::{Dissemination, Swim, SwimConfig, SwimId};
use shoal::sync::{self, GossipConfig, SwimSettings, wire};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Quick SWIM timing: a silent member is down about 2 s after its last answer.
fn quick() -> SwimConfig {
    SwimConfig {
        probe_period_ms: 200,
        probe_timeout_ms: 100,
        suspect_to_down_ms: 1_000,
        forget_down_after_ms: 60_000,
        announce_down_every_ms: 400,
        dissemination: Dissemination::DAEMON,
        cluster_size: 3,
    }
}

struct Member {
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
    _stop: watch::Sender<bool>,
}

fn start(
    pki: &Pki,
    dir: &std::path::Path,
    name: &str,
    seeds: Vec<std::net::SocketAddr>,
    seed: u64,
) -> Member {
    let endpoint =
        sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material(name)).unwrap();
    let node = open_node_with(dir, name, endpoint.local_addr().unwrap(), seeds);
    node.heartbeat().unwrap();
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    shoal::agent::tasks::spawn_sync_tasks(
        &mut tasks,
        &endpoint,
        &node,
        GossipConfig {
            interval_ms: 200,
            jitter_ms: 20,
            rng_seed: seed,
            ..GossipConfig::default()
        },
        limits(),
        None,
        Duration::from_secs(30),
        Some(SwimSettings {
            swim: quick(),
            seed,
            started_ms: 1_000 + seed,
        }),
        &stopped,
    );
    Member {
        node,
        endpoint,
        tasks,
        _stop: stop,
    }
}

fn swim_state(observer: &Node, member: &str) -> Option<PeerState> {
    observer
        .members()
        .into_iter()
        .find(|m| m.id == node_id(member))
        .and_then(|m| m.swim)
        .map(|view| view.state)
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_meet_through_swim_and_one_that_stops_answering_is_down_everywhere() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let a = start(&pki, dir.path(), "node-a", Vec::new(), 1);
    let seed = vec![a.endpoint.local_addr().unwrap()];
    let b = start(&pki, dir.path(), "node-b", seed.clone(), 2);
    let mut c = start(&pki, dir.path(), "node-c", seed, 3);
    let names = ["node-a", "node-b", "node-c"];
    let all = [&a, &b, &c];
    wait_for(
        "every node to see the others alive in SWIM",
        Duration::from_secs(20),
        || {
            all.iter().zip(names).all(|(observer, me)| {
                names
                    .iter()
                    .filter(|name| **name != me)
                    .all(|name| swim_state(&observer.node, name) == Some(PeerState::Alive))
            })
        },
    )
    .await;

    // node-c stops answering at once: no leave, its endpoint gone.
    c.tasks.abort_all();
    c.endpoint.close(0u32.into(), b"gone");
    let stopped = Instant::now();
    let mut suspected = false;
    wait_for(
        "node-c to be down at a and b",
        Duration::from_secs(15),
        || {
            for observer in [&a, &b] {
                suspected |= swim_state(&observer.node, "node-c") == Some(PeerState::Suspect);
            }
            [&a, &b]
                .iter()
                .all(|observer| swim_state(&observer.node, "node-c") == Some(PeerState::Down))
        },
    )
    .await;
    let detected = stopped.elapsed();
    for observer in [&a, &b] {
        let member = observer
            .node
            .members()
            .into_iter()
            .find(|m| m.id == node_id("node-c"))
            .unwrap();
        assert!(!member.live, "a member SWIM says is down is not live");
        // Its metadata is fresh (written at start): liveness is SWIM's, not the heartbeat's.
        assert!(member.heartbeat_age_ms < 30_000);
    }
    assert!(
        suspected || detected >= Duration::from_millis(1_000),
        "down without a suspicion first ({detected:?})"
    );
    // a and b still see each other alive.
    assert_eq!(swim_state(&a.node, "node-b"), Some(PeerState::Alive));
    assert_eq!(swim_state(&b.node, "node-a"), Some(PeerState::Alive));
}

/// A member that died while this node was away (its metadata fresh in the document, its
/// address silent) is never met by SWIM: it is down once announces to it went unanswered for
/// SWIM's detection time, not live for as long as its metadata is young.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_in_the_document_that_never_answers_is_down_after_the_detection_time() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ghost_address = silent.local_addr().unwrap();
    drop(silent);
    let ghost = open_node_with(dir.path(), "node-g", ghost_address, Vec::new());
    ghost.heartbeat().unwrap();
    let a = start(&pki, dir.path(), "node-a", Vec::new(), 1);
    let join = ghost.delta_for(a.node.node_id(), &a.node.summary());
    a.node.apply_push(ghost.node_id(), join).unwrap();
    let live = |node: &Node| {
        node.members()
            .into_iter()
            .find(|m| m.id == node_id("node-g"))
            .is_some_and(|m| m.live)
    };
    let joined = Instant::now();
    wait_for(
        "node-g to be down at node-a",
        Duration::from_secs(10),
        || swim_state(&a.node, "node-g") == Some(PeerState::Down),
    )
    .await;
    // Detection is 1.3 s with this timing; the announces start at the next probe tick.
    assert!(
        joined.elapsed() >= Duration::from_millis(1_300),
        "{:?}",
        joined.elapsed()
    );
    assert!(
        !live(&a.node),
        "not live, though its metadata was written just now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swim_packets_are_believed_only_from_the_certificate_that_sends_them() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&pki, dir.path(), "node-a", Vec::new(), 1);
    let address = server.endpoint.local_addr().unwrap();
    let announce_from = |name: &str| {
        let me = SwimId::new(node_id(name), "127.0.0.1:9".parse().unwrap(), 5);
        let mut swim = Swim::new(me, quick(), 7);
        swim.announce(SwimId::placeholder(node_id("node-a"), address))
            .unwrap();
        swim.take_outbox().sends.remove(0).1
    };

    // A member of the cluster CA whose packet names another node as its sender.
    let x = pki.issue("node-x");
    let client = raw_client(&pki.ca_cert(), Some(&x));
    let mut session = sync::connect(&client, address, None, &limits())
        .await
        .unwrap();
    let reply = session
        .post(wire::PATH_SWIM, announce_from("node-y").to_vec())
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        http::StatusCode::BAD_REQUEST,
        "{}",
        reply.message()
    );
    assert!(
        reply
            .message()
            .contains("from node-x claims to be from node-y"),
        "{}",
        reply.message()
    );
    // Garbage and oversized packets too.
    let reply = session.post(wire::PATH_SWIM, vec![0xff; 16]).await.unwrap();
    assert_eq!(
        reply.status,
        http::StatusCode::BAD_REQUEST,
        "{}",
        reply.message()
    );
    let reply = session
        .post(wire::PATH_SWIM, vec![0; wire::SWIM_BODY_BYTES_MAX + 1])
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        http::StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.message()
    );
    // Its own packet is taken.
    let reply = session
        .post(wire::PATH_SWIM, announce_from("node-x").to_vec())
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        http::StatusCode::NO_CONTENT,
        "{}",
        reply.message()
    );

    // A certificate of another CA with a name that looks right never gets a packet in.
    let foreign = Pki::new();
    let z = foreign.issue("node-z");
    let outsider = raw_client(&pki.ca_cert(), Some(&z));
    let refused = match sync::connect(&outsider, address, None, &limits()).await {
        Err(error) => error.to_string(),
        Ok(mut session) => match session
            .post(wire::PATH_SWIM, announce_from("node-z").to_vec())
            .await
        {
            Err(error) => error.to_string(),
            Ok(reply) => panic!("a client of another CA got an answer: {}", reply.status),
        },
    };
    assert!(!refused.is_empty());

    // SWIM took node-x's announce and nothing of the others.
    wait_for("node-x in a's SWIM view", Duration::from_secs(5), || {
        server
            .node
            .peer_states()
            .is_some_and(|peers| peers.contains_key(&node_id("node-x")))
    })
    .await;
    let peers = server.node.peer_states().unwrap();
    assert!(!peers.contains_key(&node_id("node-y")), "{peers:?}");
    assert!(!peers.contains_key(&node_id("node-z")), "{peers:?}");
}
