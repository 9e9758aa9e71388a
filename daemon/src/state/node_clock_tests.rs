//! Tests of a node whose clock once ran ahead: after a restart with the right time, local
//! changes are refused with the gap and the wait (not acknowledged while no peer would take
//! them), status says so, and changes are taken again once the system clock catches up; and
//! of the refusals a node records of its peers' writes, and of status on an isolated node.

use super::*;
use crate::state::clock::ManualClock;

/// 2026-01-01T00:00:00Z, where every test clock starts.
const START_MS: u64 = 1_767_225_600_000;
const HOUR_MS: u64 = 3_600_000;

fn options(dir: &std::path::Path, name: &str) -> NodeOptions {
    NodeOptions::new(
        name.parse().unwrap(),
        dir.join(format!("{name}.redb")),
        "127.0.0.1:7443".parse().unwrap(),
    )
}

fn spec(name: &str) -> (ServiceName, ServiceSpec) {
    (
        name.parse().unwrap(),
        ServiceSpec::new(format!("/{name}.tar")),
    )
}

/// Node `name` that ran an hour ahead for ten seconds (a heartbeat and a service written
/// then), reopened with the right time on `clock`.
fn ran_ahead(dir: &std::path::Path, name: &str, clock: &Arc<ManualClock>) -> Node {
    let ahead = Arc::new(ManualClock::at_ms(START_MS + HOUR_MS));
    {
        let node = Node::open(options(dir, name), ahead.clone()).unwrap();
        node.heartbeat().unwrap();
        node.apply_services(vec![spec("early")]).unwrap();
        ahead.advance_ms(10_000);
        node.heartbeat().unwrap();
    }
    Node::open(options(dir, name), clock.clone()).unwrap()
}

#[test]
fn a_node_whose_clock_ran_ahead_refuses_local_changes_until_the_clock_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let node = ran_ahead(dir.path(), "node-a", &clock);
    let digest = node.digest();

    let ahead = node.clock_ahead().expect("the clock is an hour ahead");
    assert_eq!(ahead.ahead_ms, HOUR_MS + 10_000);
    assert_eq!(ahead.max_drift_ms, MAX_CLOCK_DRIFT_MS);
    assert_eq!(ahead.wait_ms(), HOUR_MS + 10_000 - MAX_CLOCK_DRIFT_MS);

    // A local change is refused, naming the gap, the limit and the fix, and changes nothing.
    let error = node.apply_services(vec![spec("web")]).unwrap_err();
    assert!(matches!(error, NodeError::ClockAhead(_)), "{error}");
    let message = error.to_string();
    for fragment in [
        "3610000 ms ahead of its system clock",
        "sync.max_clock_drift_ms (1000 ms)",
        "peers refuse every change it writes",
        "until the system clock reaches 2026-01-01T01:00:09Z (in 1h 0m 9s)",
        "fix its time sync",
    ] {
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }
    let error = node.remove_service(&"early".parse().unwrap()).unwrap_err();
    assert!(matches!(error, NodeError::ClockAhead(_)), "{error}");
    assert_eq!(node.digest(), digest, "a refused change changed the state");
    assert_eq!(node.status().clock_ahead, Some(ahead));

    // The node's own bookkeeping goes on (it spreads once the clock is back in range).
    node.heartbeat().unwrap();

    // Still refused a moment before the gap is back within the limit...
    clock.advance_ms(ahead.wait_ms() - 5);
    assert!(matches!(
        node.apply_services(vec![spec("web")]),
        Err(NodeError::ClockAhead(_))
    ));
    // ...and taken once it is: its timestamp is within what peers accept.
    clock.advance_ms(10);
    assert_eq!(node.clock_ahead(), None);
    assert_eq!(node.status().clock_ahead, None);
    let entries = node.apply_services(vec![spec("web")]).unwrap();
    let written = *entries[0].version.get_time();
    let peer_limit = clock.now() + NTP64::from(Duration::from_millis(MAX_CLOCK_DRIFT_MS));
    assert!(written <= peer_limit, "{written} > {peer_limit}");
    node.remove_service(&"web".parse().unwrap()).unwrap();
}

#[test]
fn a_peer_refuses_the_writes_of_a_node_whose_clock_ran_ahead_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let ahead = ran_ahead(dir.path(), "node-a", &clock);
    let peer = Node::open(options(dir.path(), "node-b"), clock.clone()).unwrap();
    peer.heartbeat().unwrap();
    // What the node would push is refused for drift: this is why its changes cannot spread.
    let delta = ahead.delta_for(peer.node_id(), &peer.summary());
    let error = peer.apply_remote(ahead.node_id(), delta).unwrap_err();
    assert!(matches!(error, NodeError::ClockDrift { .. }), "{error}");
    // The sync server records such a refusal; the peer's status and refused_writes show it.
    let address: SocketAddr = "127.0.0.1:7443".parse().unwrap();
    peer.record_refused_writes(ahead.node_id(), address, error.to_string());
    clock.advance_ms(1_500);
    let refused = peer.refused_writes();
    let record = &refused[ahead.node_id()];
    assert_eq!(record.ms_ago, 1_500);
    assert_eq!(record.address, address);
    assert!(
        record.reason.contains("delta from node-a refused"),
        "{record:?}"
    );
    peer.record_accepted_writes(ahead.node_id());
    assert!(peer.refused_writes().is_empty());
}

#[test]
fn a_node_that_never_ran_ahead_takes_changes_and_reports_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let node = Node::open(options(dir.path(), "node-a"), clock.clone()).unwrap();
    node.heartbeat().unwrap();
    assert_eq!(node.clock_ahead(), None);
    // Many writes within one tick of a clock that does not move stay far within the limit.
    for index in 0..100 {
        node.apply_services(vec![spec(&format!("s{index}"))])
            .unwrap();
    }
    assert_eq!(node.clock_ahead(), None);
}

#[test]
fn an_isolated_node_is_not_converged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let mut a_options = options(dir.path(), "node-a");
    a_options.down_after_ms = 1_000;
    let a = Node::open(a_options, clock.clone()).unwrap();
    let b = Node::open(options(dir.path(), "node-b"), clock.clone()).unwrap();
    // Alone, before any peer is known: nothing to compare with.
    a.heartbeat().unwrap();
    let status = a.status();
    assert_eq!((status.live_peers, status.converged), (0, false));

    b.heartbeat().unwrap();
    a.apply_remote(b.node_id(), b.delta_for(a.node_id(), &a.summary()))
        .unwrap();
    b.apply_remote(a.node_id(), a.delta_for(b.node_id(), &b.summary()))
        .unwrap();
    let _ = b.delta_for(a.node_id(), &a.summary());
    let _ = a.delta_for(b.node_id(), &b.summary());
    let status = a.status();
    assert_eq!(
        (status.live_peers, status.converged),
        (1, true),
        "{status:?}"
    );

    // b falls silent: a is isolated, and its old comparison no longer counts.
    clock.advance_ms(2_000);
    a.heartbeat().unwrap();
    let status = a.status();
    assert_eq!(status.peers.len(), 1);
    assert_eq!(
        (status.live_peers, status.converged),
        (0, false),
        "{status:?}"
    );
}

#[test]
fn durations_read_as_hours_minutes_and_seconds() {
    assert_eq!(duration_text(0), "0s");
    assert_eq!(duration_text(1), "1s");
    assert_eq!(duration_text(59_000), "59s");
    assert_eq!(duration_text(240_000), "4m 0s");
    assert_eq!(duration_text(HOUR_MS + 9_000), "1h 0m 9s");
}
