//! Tests of `Node` against peers that lie or are not members (issue 13, item 1): a push from a
//! certificate that is not a member may only join, a peer with this node's own name is
//! refused, a push that would wrap this node's counter changes nothing (on disk either) and
//! the node goes on once the contest it raised clears, two daemons with one name both stop
//! writing and write again once the other is gone, and coverage a peer's own summary takes back stays taken back across a
//! restart.

use shoal_crdt::{DeltaBase, OriginRange};

use super::*;
use crate::state::clock::ManualClock;

/// 2026-01-01T00:00:00Z, where every test clock starts.
const START_MS: u64 = 1_767_225_600_000;

fn options(dir: &std::path::Path, name: &str) -> NodeOptions {
    NodeOptions::new(
        name.parse().unwrap(),
        dir.join(format!("{name}.redb")),
        "127.0.0.1:7443".parse().unwrap(),
    )
}

fn open(options: NodeOptions, clock: &Arc<ManualClock>) -> Node {
    Node::open(options, clock.clone()).unwrap()
}

fn spec(name: &str) -> (ServiceName, ServiceSpec) {
    (name.parse().unwrap(), ServiceSpec::new("/i.tar"))
}

fn node_id(name: &str) -> NodeId {
    name.parse().unwrap()
}

/// What `from` would push to `to`: everything `to` lacks.
fn push_of(from: &Node, to: &Node) -> Delta {
    from.delta_for(to.node_id(), &to.summary())
}

/// A delta with ranges claimed and no entries, as a lying peer sends it.
fn claim(origin: &str, since: u64, until: u64) -> Delta {
    Delta::from_parts(
        DeltaBase::Ranges(vec![OriginRange {
            node: node_id(origin),
            since,
            until,
        }]),
        Vec::new(),
    )
}

#[test]
fn a_certificate_that_is_not_a_member_may_only_join() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a_options = options(dir.path(), "node-a");
    let a = open(a_options.clone(), &clock);
    a.heartbeat().unwrap();
    let c = open(options(dir.path(), "node-c"), &clock);
    c.heartbeat().unwrap();
    c.apply_services(vec![spec("from-c")]).unwrap();
    // A node a has never heard of: it wrote its metadata and a service, and holds c's writes.
    let stranger = open(options(dir.path(), "stranger"), &clock);
    let mut stranger_changes = stranger.subscribe_changes();
    stranger.heartbeat().unwrap();
    let _heartbeat = stranger_changes.try_recv().unwrap();
    stranger.apply_services(vec![spec("web")]).unwrap();
    let service_only = stranger_changes.try_recv().unwrap();
    stranger
        .apply_remote(c.node_id(), push_of(&c, &stranger))
        .unwrap();

    let before = a.digest();
    let own = a.summary().vv.get(a.node_id());
    let refused = [
        // The push: a range for a member's writes, to 2^64-1, from a non-member.
        claim("node-a", own, u64::MAX),
        // Anything but its own node metadata with its own writes: here, relayed writes of c.
        push_of(&stranger, &a),
        // Its own write without its metadata: it has not joined.
        (*service_only).clone(),
    ];
    for delta in refused {
        let error = a.apply_push(stranger.node_id(), delta).unwrap_err();
        assert!(matches!(error, NodeError::NotMember { .. }), "{error}");
        assert_eq!(a.digest(), before);
    }
    drop(a);
    let a = open(a_options, &clock);
    assert_eq!(a.digest(), before, "nothing refused reached the disk");

    // Once a has c's writes (from c), what the stranger pushes is its metadata with its own
    // writes (here one made before its first sync): it joins.
    a.apply_remote(c.node_id(), push_of(&c, &a)).unwrap();
    let joining = push_of(&stranger, &a);
    assert!(joining.is_join_of(stranger.node_id()));
    a.apply_push(stranger.node_id(), joining).unwrap();
    assert!(a.members().iter().any(|m| &m.id == stranger.node_id()));
    assert_eq!(a.services().len(), 2);
    // Pulls (from seeds and members this node dials) are not limited this way.
    let other = open(options(dir.path(), "other"), &clock);
    other
        .apply_remote(a.node_id(), push_of(&a, &other))
        .unwrap();
    assert_eq!(other.services().len(), 2);
}

#[test]
fn an_evicted_node_rejoins_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let mut a_options = options(dir.path(), "node-a");
    a_options.evict_after_ms = 1_000;
    let a = open(a_options, &clock);
    a.heartbeat().unwrap();
    let b = open(options(dir.path(), "node-b"), &clock);
    b.heartbeat().unwrap();
    a.apply_push(b.node_id(), push_of(&b, &a)).unwrap();
    clock.advance_ms(2_000);
    a.heartbeat().unwrap();
    assert!(a.read_state(|state| state.node(b.node_id()).is_none()));
    // b comes back and writes: refused until its metadata comes along.
    let mut b_changes = b.subscribe_changes();
    b.apply_services(vec![spec("web")]).unwrap();
    let service_only = b_changes.try_recv().unwrap();
    let before = a.digest();
    let error = a
        .apply_push(b.node_id(), (*service_only).clone())
        .unwrap_err();
    assert!(matches!(error, NodeError::NotMember { .. }), "{error}");
    assert_eq!(a.digest(), before);
    b.heartbeat().unwrap();
    a.apply_push(b.node_id(), push_of(&b, &a)).unwrap();
    assert!(a.members().iter().any(|m| &m.id == b.node_id()));
    assert_eq!(a.services().len(), 1);
}

#[test]
fn a_peer_with_this_nodes_own_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a = open(options(dir.path(), "node-a"), &clock);
    a.heartbeat().unwrap();
    let twin = open(
        NodeOptions {
            database: dir.path().join("twin.redb"),
            ..options(dir.path(), "node-a")
        },
        &clock,
    );
    // The twin wrote more than node-a: its push carries writes node-a never made.
    twin.apply_services(vec![spec("web"), spec("db")]).unwrap();
    assert!(!push_of(&twin, &a).is_empty());
    let before = a.digest();
    for error in [
        a.apply_push(twin.node_id(), push_of(&twin, &a))
            .unwrap_err(),
        a.apply_remote(twin.node_id(), push_of(&twin, &a))
            .unwrap_err(),
    ] {
        assert!(matches!(error, NodeError::OwnName { .. }), "{error}");
    }
    assert_eq!(a.digest(), before);
}

#[test]
fn a_push_that_would_wrap_this_nodes_counter_changes_nothing_and_the_node_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a_options = options(dir.path(), "node-a");
    let a = open(a_options.clone(), &clock);
    let b = open(options(dir.path(), "node-b"), &clock);
    a.heartbeat().unwrap();
    b.heartbeat().unwrap();
    a.apply_push(b.node_id(), push_of(&b, &a)).unwrap();
    // A member pushes (own, 2^64-1] for node-a, and a finite jump, with no entries.
    let own = a.summary().vv.get(a.node_id());
    let before = a.digest();
    for until in [u64::MAX, own + 1_000_000] {
        let error = a
            .apply_push(b.node_id(), claim("node-a", own, until))
            .unwrap_err();
        assert!(matches!(error, NodeError::Invalid { .. }), "{error}");
        assert_eq!(a.summary().vv.get(a.node_id()), own);
        assert_eq!(a.digest(), before);
    }
    // A member claimed writes of node-a that node-a did not make: its name is contested, and
    // it writes nothing until nothing new has been seen for contest_quiet_ms.
    let error = a.apply_services(vec![spec("web")]).unwrap_err();
    assert!(matches!(error, NodeError::Contested(_)), "{error}");
    // Its next heartbeat writes only the announcement, numbered beyond the jump; the one after
    // writes nothing.
    a.heartbeat().unwrap();
    let announced = own + shoal_crdt::CONTEST_ANNOUNCE_JUMP;
    assert_eq!(a.summary().vv.get(a.node_id()), announced);
    a.heartbeat().unwrap();
    assert_eq!(a.summary().vv.get(a.node_id()), announced);
    clock.advance_ms(a_options.contest_quiet_ms);
    // The node goes on writing, and restarts on what it accepted.
    clock.advance_ms(1);
    a.heartbeat().unwrap();
    a.apply_services(vec![spec("web")]).unwrap();
    let summary = a.summary();
    drop(a);
    let a = open(a_options, &clock);
    assert_eq!(a.summary(), summary);
    clock.advance_ms(1);
    a.heartbeat().unwrap();
    assert_eq!(a.summary().vv.get(a.node_id()), announced + 3);
}

#[test]
fn coverage_a_peers_own_summary_takes_back_stays_taken_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a_options = options(dir.path(), "node-a");
    let a = open(a_options.clone(), &clock);
    let liar = open(options(dir.path(), "liar"), &clock);
    a.heartbeat().unwrap();
    liar.heartbeat().unwrap();
    a.apply_push(liar.node_id(), push_of(&liar, &a)).unwrap();
    // The liar (a member) claims writes of a node a does not know yet.
    a.apply_push(liar.node_id(), claim("newcomer", 0, 1_000))
        .unwrap();
    assert_eq!(a.summary().vv.get(&node_id("newcomer")), 1_000);
    // The newcomer joins; it syncs with a (its summary reaches a), and a takes the claim back.
    let newcomer = open(options(dir.path(), "newcomer"), &clock);
    newcomer.heartbeat().unwrap();
    let back = a.delta_for(newcomer.node_id(), &newcomer.summary());
    assert_eq!(a.summary().vv.get(&node_id("newcomer")), 0);
    drop(a);
    let a = open(a_options, &clock);
    assert_eq!(a.summary().vv.get(&node_id("newcomer")), 0);
    // So its metadata gets through and it is a member.
    newcomer.apply_remote(a.node_id(), back).unwrap();
    a.apply_push(newcomer.node_id(), push_of(&newcomer, &a))
        .unwrap();
    assert!(a.members().iter().any(|m| &m.id == newcomer.node_id()));
}

/// `to` takes what `from` has that it lacks, as a pull does; a refusal is returned.
fn pull(from: &Node, to: &Node) -> Result<Applied, NodeError> {
    to.apply_remote(from.node_id(), from.delta_for(to.node_id(), &to.summary()))
}

#[test]
fn two_daemons_with_one_name_stop_writing_and_write_again_once_the_other_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a_options = NodeOptions {
        incarnation: 0xa,
        ..options(dir.path(), "node-a")
    };
    let a = open(a_options.clone(), &clock);
    let b = open(options(dir.path(), "node-b"), &clock);
    a.heartbeat().unwrap();
    b.heartbeat().unwrap();
    pull(&a, &b).unwrap();
    pull(&b, &a).unwrap();
    a.apply_services(vec![spec("first")]).unwrap();
    // Later, a second daemon as node-a, with its own empty database.
    clock.advance_ms(5_000);
    let twin = open(
        NodeOptions {
            database: dir.path().join("twin.redb"),
            incarnation: 0xb,
            ..options(dir.path(), "node-a")
        },
        &clock,
    );
    twin.heartbeat().unwrap();
    twin.apply_services(vec![spec("second")]).unwrap();
    clock.advance_ms(2_000);
    // Both heartbeat, in turn, and sync with node-b, never with each other.
    for round in 0..10 {
        let (first, second) = if round % 2 == 0 {
            (&a, &twin)
        } else {
            (&twin, &a)
        };
        clock.advance_ms(100);
        let _ = first.heartbeat();
        clock.advance_ms(50);
        let _ = second.heartbeat();
        // One exchange as the daemon makes it, from either side: pull, push, and the repair
        // back when the two cover the same writes but hold different entries.
        for node in [&a, &twin] {
            let _ = pull(&b, node);
            let _ = pull(node, &b);
            let _ = pull(&b, node);
        }
    }
    for node in [&a, &twin] {
        let contest = node.identity_contest().expect("contested");
        let error = node.apply_services(vec![spec("third")]).unwrap_err();
        assert!(matches!(error, NodeError::Contested(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains("another daemon runs as node node-a"),
            "{error}"
        );
        assert_eq!(node.status().contest, Some(contest));
        // Heartbeats write nothing now.
        let before = node.summary();
        node.heartbeat().unwrap();
        assert_eq!(node.summary(), before);
    }
    assert!(b.duplicated_nodes().contains_key(&node_id("node-a")));
    // Everyone converges. "first" and "second" claim one dot (node-a's second write): one of
    // them is kept, the same one everywhere.
    for node in [&a, &twin] {
        let _ = pull(&b, node);
        let _ = pull(node, &b);
    }
    for node in [&a, &twin] {
        let _ = pull(&b, node);
    }
    assert_eq!(a.digest(), b.digest());
    assert_eq!(twin.digest(), b.digest());
    assert_eq!(b.services().len(), 1);
    assert_eq!(a.services(), b.services());
    // The twin is stopped; after contest_quiet_ms with nothing new, node-a writes again.
    drop(twin);
    clock.advance_ms(a_options.contest_quiet_ms);
    pull(&b, &a).unwrap();
    assert!(a.identity_contest().is_none());
    a.heartbeat().unwrap();
    a.apply_services(vec![spec("after")]).unwrap();
    pull(&a, &b).unwrap();
    assert_eq!(b.services().len(), 2);
    assert_eq!(a.digest(), b.digest());
    // node-b forgets node-a's duplicate once nothing new was seen for contest_quiet_ms.
    clock.advance_ms(a_options.contest_quiet_ms);
    assert!(b.duplicated_nodes().is_empty());
}
