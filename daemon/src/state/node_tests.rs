//! Tests of `Node`: durability across reopen and compaction, refused deltas that change
//! nothing, status and eviction driven by a manual clock, one commit per batch, and the
//! wake-up of the reconcile loop by remote changes that matter to it, and the commits and
//! refusals counted in the node's metrics.

use super::*;
use crate::state::clock::ManualClock;
use crate::state::store::Store;

/// 2026-01-01T00:00:00Z, where every test clock starts.
const START_MS: u64 = 1_767_225_600_000;

fn options(dir: &std::path::Path, name: &str, compact_every_entries: u64) -> NodeOptions {
    let mut options = NodeOptions::new(
        name.parse().unwrap(),
        dir.join(format!("{name}.redb")),
        "127.0.0.1:7443".parse().unwrap(),
    );
    options.compact_every_entries = compact_every_entries;
    options
}

fn open(options: NodeOptions, clock: &Arc<ManualClock>) -> Node {
    Node::open(options, clock.clone()).unwrap()
}

fn spec(name: &str, image: &str) -> (ServiceName, ServiceSpec) {
    (name.parse().unwrap(), ServiceSpec::new(image))
}

/// `to` pulls everything it lacks from `from`.
fn pull(from: &Node, to: &Node) {
    to.apply_remote(from.node_id(), from.delta_for(to.node_id(), &to.summary()))
        .unwrap();
}

/// Node a, which counts members down after `down_after_ms` and evicts them after
/// `evict_after_ms`, and node b, whose metadata a has received.
fn watcher_and_member(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    down_after_ms: u64,
    evict_after_ms: u64,
) -> (Node, Node) {
    let mut a_options = options(dir, "node-a", 1000);
    a_options.down_after_ms = down_after_ms;
    a_options.evict_after_ms = evict_after_ms;
    let a = open(a_options, clock);
    let b = open(options(dir, "node-b", 1000), clock);
    b.heartbeat().unwrap();
    pull(&b, &a);
    (a, b)
}

#[test]
fn local_changes_survive_reopen_across_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let options = options(dir.path(), "node-a", 4);
    let node = open(options.clone(), &clock);
    node.heartbeat().unwrap();
    for index in 0..10 {
        clock.advance_ms(1);
        node.apply_services(vec![spec(&format!("svc-{index}"), "/i.tar")])
            .unwrap();
    }
    node.remove_service(&"svc-3".parse().unwrap()).unwrap();
    let services = node.services();
    let digest = node.digest();
    let clock_last = node.lock().replica.clock().last();
    assert!(node.log_entries() < 4, "the log was compacted");
    drop(node);
    let reopened = open(options, &clock);
    assert_eq!(reopened.services(), services);
    assert_eq!(reopened.services().len(), 9);
    assert_eq!(reopened.digest(), digest);
    assert!(reopened.lock().replica.clock().last() >= clock_last);
    // The next local write is stamped after everything written before the restart, even
    // with a wall clock that stepped back meanwhile (by less than the drift peers accept;
    // further back, local changes are refused: node_clock_tests.rs).
    clock.set_ms(START_MS - 500);
    let after = reopened
        .apply_services(vec![spec("after", "/i.tar")])
        .unwrap();
    assert!(after[0].version > clock_last);
}

#[test]
fn remote_deltas_are_durable_and_refused_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a = open(options(dir.path(), "node-a", 1000), &clock);
    let b_options = options(dir.path(), "node-b", 1000);
    let b = open(b_options.clone(), &clock);
    let mut a_changes = a.subscribe_changes();
    a.apply_services(vec![spec("web", "/web.tar")]).unwrap();
    let first = a_changes.try_recv().expect("local change broadcast");
    let applied = b.apply_remote(a.node_id(), (*first).clone()).unwrap();
    assert_eq!(applied.entries_applied, 1);

    // Two more changes on a; b receives only the last one: its base is missing.
    a.apply_services(vec![spec("db", "/db.tar")]).unwrap();
    a.apply_services(vec![spec("cache", "/cache.tar")]).unwrap();
    let _skipped = a_changes.try_recv().unwrap();
    let last = a_changes.try_recv().unwrap();
    let before = b.digest();
    let error = b.apply_remote(a.node_id(), (*last).clone()).unwrap_err();
    assert!(matches!(error, NodeError::StaleBase { .. }), "{error}");
    assert_eq!(b.digest(), before);
    let stored_entries = b.log_entries();
    drop(b);

    let b = open(b_options, &clock);
    assert_eq!(
        b.digest(),
        before,
        "the refused delta did not reach the disk"
    );
    assert_eq!(b.log_entries(), stored_entries);
    let names: Vec<String> = b.services().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["web"]);

    // Anti-entropy then brings b up to date.
    pull(&a, &b);
    assert_eq!(b.services(), a.services());
}

#[test]
fn a_database_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a_options = options(dir.path(), "node-a", 1);
    let a = open(a_options.clone(), &clock);
    a.apply_services(vec![spec("web", "/web.tar")]).unwrap();
    drop(a);
    let mut wrong = options(dir.path(), "node-b", 1);
    wrong.database = a_options.database.clone();
    let error = Node::open(wrong, clock.clone()).unwrap_err();
    assert!(error.to_string().contains("node-a.redb"), "{error}");
}

#[test]
fn status_reports_self_and_convergence_as_far_as_known() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a = open(options(dir.path(), "node-a", 1000), &clock);
    let b = open(options(dir.path(), "node-b", 1000), &clock);
    a.heartbeat().unwrap();
    b.heartbeat().unwrap();
    pull(&a, &b);
    pull(&b, &a);
    // a has not yet heard b's summary since b applied a's changes.
    let status = a.status();
    assert_eq!(status.nodes, 2);
    assert_eq!(status.peers.len(), 1);
    assert!(!status.converged);
    let _ = b.delta_for(a.node_id(), &a.summary());
    let _ = a.delta_for(b.node_id(), &b.summary());
    let status = a.status();
    assert!(status.converged, "{status:?}");
    assert_eq!(status.digest, b.digest());
    clock.advance_ms(1_500);
    assert_eq!(a.status().uptime_ms, 1_500);
}

#[test]
fn a_member_is_down_after_down_after_ms_and_evicted_after_evict_after_ms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let (a, _b) = watcher_and_member(dir.path(), &clock, 200, 300);
    a.heartbeat().unwrap();
    assert_eq!(a.members().len(), 2, "b is a member");
    assert!(a.peers()[0].live);
    clock.advance_ms(250);
    assert!(!a.peers()[0].live, "b is down after 200 ms of silence");
    a.heartbeat().unwrap();
    assert_eq!(a.members().len(), 2, "but not evicted yet");
    clock.advance_ms(100);
    a.heartbeat().unwrap();
    let members: Vec<String> = a.members().iter().map(|n| n.id.to_string()).collect();
    assert_eq!(members, ["node-a"]);
}

#[test]
fn the_clock_never_goes_back_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let options = options(dir.path(), "node-a", 1000);
    let node = open(options.clone(), &clock);
    node.apply_services(vec![spec("web", "/web.tar")]).unwrap();
    let snapshot = codec::encode_snapshot(&node.lock().replica.to_snapshot());
    drop(node);
    // As if the clock had observed a timestamp an hour ahead that no stored write carries.
    let ahead = Timestamp::new(
        clock.now() + NTP64::from(Duration::from_secs(3600)),
        options.node.hlc_id(),
    );
    let store = Store::open(&options.database).unwrap();
    store
        .compact(&snapshot, &postcard::to_allocvec(&ahead).unwrap())
        .unwrap();
    drop(store);
    let node = open(options, &clock);
    // Peers would refuse a write stamped after it until the system clock catches up, so
    // until then none is made; after, the write is stamped after the stored timestamp.
    let refused = node
        .apply_services(vec![spec("db", "/db.tar")])
        .unwrap_err();
    assert!(matches!(refused, NodeError::ClockAhead(_)), "{refused}");
    clock.advance_ms(3_600_000 - MAX_CLOCK_DRIFT_MS + 1);
    let written = node.apply_services(vec![spec("db", "/db.tar")]).unwrap();
    assert!(
        written[0].version > ahead,
        "{} is not after the stored {ahead}",
        written[0].version
    );
}

#[test]
fn a_node_learns_that_it_was_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let (a, b) = watcher_and_member(dir.path(), &clock, 100, 200);
    clock.advance_ms(300);
    a.heartbeat().unwrap();
    assert!(!b.status().evicted);
    pull(&a, &b);
    b.heartbeat().unwrap();
    assert!(b.status().evicted);
    assert!(!a.status().evicted);
}

#[test]
fn a_request_with_one_bad_spec_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let node = open(options(dir.path(), "node-a", 1000), &clock);
    node.heartbeat().unwrap();
    let before = node.digest();
    let mut bad = spec("db", "/db.tar");
    bad.1.image_digest = Some("md5:nope".to_string());
    let error = node
        .apply_services(vec![spec("web", "/web.tar"), bad])
        .unwrap_err();
    assert!(error.to_string().contains("db"), "{error}");
    let twice = node
        .apply_services(vec![spec("web", "/a.tar"), spec("web", "/b.tar")])
        .unwrap_err();
    assert!(twice.to_string().contains("twice"), "{twice}");
    assert_eq!(node.digest(), before);
    assert!(node.services().is_empty());
}

/// A named change that makes a spec invalid.
type SpecBreaker = (&'static str, Box<dyn Fn(&mut ServiceSpec)>);

#[test]
fn every_refused_workload_field_is_named_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let node = open(options(dir.path(), "node-a", 1000), &clock);
    node.heartbeat().unwrap();
    let before = (node.digest(), node.commit_counts());
    let cases: Vec<SpecBreaker> = vec![
        ("ports[0]", Box::new(|s| s.ports = vec!["8080:0".into()])),
        (
            "ports[1]",
            Box::new(|s| s.ports = vec!["8080:80".into(), "8080:81".into()]),
        ),
        (
            "volumes[0]",
            Box::new(|s| s.volumes = vec!["data:rel".into()]),
        ),
        (
            "volumes[0]",
            Box::new(|s| s.volumes = vec!["/a/../b:/d".into()]),
        ),
        ("volumes[0]", Box::new(|s| s.volumes = vec!["v:/".into()])),
        (
            "volumes[0]",
            Box::new(|s| s.volumes = vec!["v:/proc".into()]),
        ),
        (
            "volumes[0]",
            Box::new(|s| s.volumes = vec!["v:/sys/x".into()]),
        ),
        (
            "volumes[0]",
            Box::new(|s| s.volumes = vec!["v:/dev".into()]),
        ),
        (
            "tmpfs[0]",
            Box::new(|s| {
                s.volumes = vec!["v:/data".into()];
                s.tmpfs = vec!["/data".into()];
            }),
        ),
        ("tmpfs[0]", Box::new(|s| s.tmpfs = vec!["/t:size=0".into()])),
        (
            "env_files[0]",
            Box::new(|s| s.env_files = vec!["rel.env".into()]),
        ),
        (
            "secrets.k",
            Box::new(|s| _ = s.secrets.insert("k".into(), "rel".into())),
        ),
        (
            "secrets.a/b",
            Box::new(|s| _ = s.secrets.insert("a/b".into(), "/k".into())),
        ),
    ];
    for (field, mutate) in cases {
        let mut bad = spec("web", "/web.tar");
        mutate(&mut bad.1);
        let error = node.apply_services(vec![bad]).unwrap_err().to_string();
        assert!(
            error.contains("web") && error.contains(&format!("`{field}`")),
            "{field}: {error}"
        );
    }
    assert_eq!((node.digest(), node.commit_counts()), before);
    assert!(node.services().is_empty());
}

#[test]
fn a_batch_is_one_commit_and_one_broadcast_and_no_change_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let mut node_options = options(dir.path(), "node-a", 1000);
    node_options.subnet = Some("10.60.1.0/24".parse().unwrap());
    let node = open(node_options, &clock);
    node.heartbeat().unwrap();
    let mut changes = node.subscribe_changes();
    let before = node.commit_counts();
    let me = node.node_id().clone();
    let ips = node
        .write_batch(|replica, now| {
            let mut ips = Vec::new();
            for id in ["web-1", "web-2", "web-3"] {
                let id: shoal_crdt::ContainerId = id.parse().unwrap();
                let (ip, _) = replica.allocate_ip(now, &id).unwrap();
                replica
                    .add_container(
                        now,
                        shoal_crdt::ContainerRecord {
                            id,
                            service: "web".parse().unwrap(),
                            node: me.clone(),
                            spec_version: Timestamp::new(now, me.hlc_id()),
                            ip: Some(ip),
                        },
                    )
                    .unwrap();
                ips.push(ip);
            }
            replica
                .adjust_resource(now, shoal_crdt::Resource::Containers, 3)
                .unwrap();
            ips
        })
        .unwrap();
    assert_eq!(ips.len(), 3);
    let after = node.commit_counts();
    assert_eq!(after.durable - before.durable, 1);
    assert_eq!(after.broadcast - before.broadcast, 1);
    let delta = changes.try_recv().unwrap();
    assert_eq!(delta.entry_count(), 7);
    assert!(changes.try_recv().is_err());
    // A batch that changes nothing commits nothing.
    node.write_batch(|_, _| ()).unwrap();
    assert_eq!(node.commit_counts(), after);
}

#[test]
fn a_metadata_refresh_is_durable_but_not_pushed_and_the_next_push_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a_options = options(dir.path(), "node-a", 1000);
    let a = open(a_options.clone(), &clock);
    let b = open(options(dir.path(), "node-b", 1000), &clock);
    let mut changes = a.subscribe_changes();
    a.heartbeat().unwrap();
    let first = changes.try_recv().expect("new metadata is pushed");
    b.apply_push(a.node_id(), (*first).clone()).unwrap();

    clock.advance_ms(1_000);
    let before = a.commit_counts();
    a.heartbeat().unwrap();
    let after = a.commit_counts();
    assert_eq!(after.durable - before.durable, 1, "the refresh is durable");
    assert_eq!(after.broadcast, before.broadcast, "a refresh is not pushed");
    assert!(changes.try_recv().is_err());

    // The next change is pushed with the refresh, so a peer that took every push holds
    // its base and ends equal.
    clock.advance_ms(1_000);
    a.heartbeat().unwrap();
    assert!(changes.try_recv().is_err());
    a.apply_services(vec![spec("web", "/web.tar")]).unwrap();
    let next = changes.try_recv().expect("a service change is pushed");
    b.apply_push(a.node_id(), (*next).clone()).unwrap();
    assert_eq!(b.digest(), a.digest());

    // A refresh survives a restart.
    clock.advance_ms(1_000);
    a.heartbeat().unwrap();
    let refreshed = a.read_state(|state| state.node(a.node_id()).unwrap().heartbeat);
    drop(a);
    let a = open(a_options, &clock);
    let reopened = a.read_state(|state| state.node(a.node_id()).unwrap().heartbeat);
    assert_eq!(reopened, refreshed);

    // Metadata that changes (here: labels) is pushed at once.
    let mut labelled = options(dir.path(), "node-c", 1000);
    let c = open(labelled.clone(), &clock);
    c.heartbeat().unwrap();
    drop(c);
    labelled.labels.insert("zone".into(), "eu-1".into());
    let c = open(labelled, &clock);
    let mut changes = c.subscribe_changes();
    clock.advance_ms(1_000);
    c.heartbeat().unwrap();
    assert!(changes.try_recv().is_ok(), "changed metadata is pushed");
}

#[test]
fn with_swim_refreshes_wait_a_second_per_member_and_unknown_members_stay_live_as_long() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let (a, b) = watcher_and_member(dir.path(), &clock, 5_000, 86_400_000);
    a.heartbeat().unwrap();
    // SWIM runs on a but has met nobody yet: b is judged by the age of its metadata.
    a.set_peer_states(PeerStates::new());
    let stretch_ms = 2 * REFRESH_MS_PER_MEMBER;
    let live = |node: &Node| {
        node.members()
            .iter()
            .find(|member| member.id.as_str() == "node-b")
            .unwrap()
            .live
    };

    clock.advance_ms(stretch_ms - 1);
    let before = a.commit_counts();
    a.heartbeat().unwrap();
    assert_eq!(
        a.commit_counts(),
        before,
        "a refresh waits {stretch_ms} ms with 2 members"
    );
    clock.advance_ms(1);
    a.heartbeat().unwrap();
    assert_eq!(
        a.commit_counts().durable,
        before.durable + 1,
        "then it is written"
    );

    // b last wrote at the start: down after 5 s plus twice the stretch, not after 5 s.
    clock.advance_ms(5_000 + 2 * stretch_ms - 1 - stretch_ms);
    assert!(live(&a));
    clock.advance_ms(1);
    assert!(!live(&a));
    // Without SWIM, every heartbeat writes.
    let before = b.commit_counts();
    b.heartbeat().unwrap();
    clock.advance_ms(1);
    b.heartbeat().unwrap();
    assert_eq!(b.commit_counts().durable, before.durable + 2);
}

#[test]
fn remote_changes_that_matter_to_the_planner_wake_it_and_heartbeats_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let a = open(options(dir.path(), "node-a", 1000), &clock);
    let b = open(options(dir.path(), "node-b", 1000), &clock);
    a.heartbeat().unwrap();
    b.heartbeat().unwrap();
    let mut wake = a.subscribe_plan_inputs();
    wake.mark_unchanged();
    pull(&b, &a);
    assert!(
        wake.has_changed().unwrap(),
        "a new member wakes the planner"
    );
    wake.mark_unchanged();
    clock.advance_ms(500);
    b.heartbeat().unwrap();
    pull(&b, &a);
    assert!(
        !wake.has_changed().unwrap(),
        "a live member's heartbeat does not"
    );
    b.apply_services(vec![spec("web", "/web.tar")]).unwrap();
    pull(&b, &a);
    assert!(wake.has_changed().unwrap(), "a service does");
    wake.mark_unchanged();
    clock.advance_ms(10_000);
    b.heartbeat().unwrap();
    pull(&b, &a);
    assert!(wake.has_changed().unwrap(), "a member coming back does");
}

#[test]
fn commits_and_refused_deltas_are_counted_in_the_nodes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut a_options = options(dir.path(), "node-a", 1000);
    a_options.metrics = metrics.clone();
    let a = open(a_options, &clock);
    let b = open(options(dir.path(), "node-b", 1000), &clock);
    a.heartbeat().unwrap();
    a.apply_services(vec![spec("web", "/i.tar")]).unwrap();
    b.heartbeat().unwrap();
    // A peer presenting a's own name is refused.
    let refused = a.apply_push(a.node_id(), b.delta_for(a.node_id(), &a.summary()));
    assert!(
        matches!(refused, Err(NodeError::OwnName { .. })),
        "{refused:?}"
    );
    let text = a.metrics().encode();
    let line = |series: &str| {
        text.lines()
            .find(|line| {
                line.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with(' '))
            })
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
            .to_string()
    };
    assert_eq!(
        line("shoal_state_commits_total"),
        "shoal_state_commits_total 2"
    );
    assert_eq!(
        line("shoal_state_commit_duration_seconds_count"),
        "shoal_state_commit_duration_seconds_count 2"
    );
    assert_eq!(
        line("shoal_apply_errors_total{kind=\"own_name\"}"),
        "shoal_apply_errors_total{kind=\"own_name\"} 1"
    );
    assert!(Arc::ptr_eq(a.metrics(), &metrics));
}

#[test]
fn peers_deltas_arriving_together_are_applied_on_their_own_and_made_durable_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let receiver_options = options(dir.path(), "node-r", 1000);
    let receiver = Arc::new(open(receiver_options.clone(), &clock));
    // Twelve members, each with a change of its own, and one that is not a member.
    let senders: Vec<Node> = (0..12)
        .map(|index| {
            let sender = open(options(dir.path(), &format!("node-{index}"), 1000), &clock);
            sender.heartbeat().unwrap();
            pull(&sender, &receiver);
            sender
                .apply_services(vec![spec(&format!("svc-{index}"), "/i.tar")])
                .unwrap();
            sender
        })
        .collect();
    let stranger = open(options(dir.path(), "node-x", 1000), &clock);
    stranger
        .apply_services(vec![spec("svc-x", "/i.tar")])
        .unwrap();
    let before = receiver.commit_counts().durable;
    let pushes: Vec<(NodeId, Delta)> = senders
        .iter()
        .chain(std::iter::once(&stranger))
        .map(|sender| {
            (
                sender.node_id().clone(),
                sender.delta_for(receiver.node_id(), &receiver.summary()),
            )
        })
        .collect();
    // Every push at once, from threads, as the sync server's handlers make them; the
    // receiver's state is held meanwhile, as by a commit in progress, so that all of them
    // arrive before the first group is written.
    let held = receiver.lock();
    let count = pushes.len();
    let handles: Vec<_> = pushes
        .into_iter()
        .map(|(peer, delta)| {
            let receiver = receiver.clone();
            std::thread::spawn(move || (peer.clone(), receiver.apply_push(&peer, delta)))
        })
        .collect();
    // One caller runs a group (of what had come when it began) and waits for the state;
    // the others wait for the next group.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while receiver.remote.waiting() < count - 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the pushes never queued"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(held);
    for handle in handles {
        let (peer, result) = handle.join().unwrap();
        if peer.as_str() == "node-x" {
            assert!(
                matches!(result, Err(NodeError::NotMember { .. })),
                "{result:?}"
            );
        } else {
            assert!(result.unwrap().entries_applied > 0, "{peer}");
        }
    }
    let commits = receiver.commit_counts().durable - before;
    assert!(
        (1..=2).contains(&commits),
        "12 accepted deltas took {commits} commits, not one or two groups"
    );
    let services = receiver.services();
    assert_eq!(services.len(), 12);
    assert!(
        services
            .iter()
            .all(|service| service.name.as_ref() != "svc-x")
    );
    // Durable: a reopened receiver has every accepted change.
    let digest = receiver.digest();
    drop(receiver);
    let reopened = open(receiver_options, &clock);
    assert_eq!(reopened.digest(), digest);
    assert_eq!(reopened.services().len(), 12);
}

/// Node a, and node b with a service written and the delta a lacks of it (b's metadata
/// and the service), taken `delay_ms` after the write.
fn a_and_bs_service_delta(
    dir: &std::path::Path,
    clock: &Arc<ManualClock>,
    delay_ms: u64,
) -> (Node, Node, Delta) {
    let a = open(options(dir, "node-a", 1000), clock);
    let b = open(options(dir, "node-b", 1000), clock);
    b.heartbeat().unwrap();
    b.apply_services(vec![spec("web", "/web.tar")]).unwrap();
    clock.advance_ms(delay_ms);
    let delta = b.delta_for(a.node_id(), &a.summary());
    (a, b, delta)
}

/// The value of sample `series` (name and labels) in `metrics`.
fn metric(metrics: &crate::metrics::Metrics, series: &str) -> f64 {
    metrics
        .sample(series)
        .unwrap_or_else(|| panic!("{series} missing in:\n{}", metrics.encode()))
}

#[test]
fn a_service_write_from_a_peer_is_counted_once_with_its_lag() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let (a, b, delta) = a_and_bs_service_delta(dir.path(), &clock, 30);
    a.apply_push(b.node_id(), delta.clone()).unwrap();
    // The same write again (a second push of it) is not new here: not counted twice.
    a.apply_push(b.node_id(), delta).unwrap();
    // b's metadata is not a service write.
    let value = |series: &str| metric(a.metrics(), series);
    assert_eq!(value("shoal_service_write_lag_seconds_count"), 1.0);
    // The HLC's fixed-point fraction of a second: 30 ms to within a microsecond.
    let sum = value("shoal_service_write_lag_seconds_sum");
    assert!((sum - 0.03).abs() < 1e-6, "{sum}");
    assert_eq!(
        value("shoal_service_write_lag_seconds_bucket{le=\"0.016\"}"),
        0.0
    );
    assert_eq!(
        value("shoal_service_write_lag_seconds_bucket{le=\"0.032\"}"),
        1.0
    );
}

#[test]
fn a_push_new_here_runs_its_hook_once_before_it_is_durable_and_a_repeat_or_refusal_never() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_ms(START_MS));
    let (a, b, delta) = a_and_bs_service_delta(dir.path(), &clock, 0);
    let commits = |metrics: &crate::metrics::Metrics| metric(metrics, "shoal_state_commits_total");
    let before = commits(a.metrics());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let hook = |ran: &Arc<Mutex<Vec<f64>>>, metrics: &Arc<crate::metrics::Metrics>| {
        let ran = ran.clone();
        let metrics = metrics.clone();
        Some(Box::new(move || ran.lock().unwrap().push(commits(&metrics))) as OnNew)
    };
    a.apply_push_then(b.node_id(), delta.clone(), hook(&ran, a.metrics()))
        .unwrap();
    // It ran once, when the write was not yet durable here; it is durable once the push
    // is answered.
    assert_eq!(*ran.lock().unwrap(), vec![before]);
    assert_ne!(commits(a.metrics()), before);
    // The same push again holds nothing new: no hook.
    a.apply_push_then(b.node_id(), delta.clone(), hook(&ran, a.metrics()))
        .unwrap();
    assert_eq!(ran.lock().unwrap().len(), 1);
    // A refused push (the receiver's own name): no hook.
    let refused = a.apply_push_then(a.node_id(), delta, hook(&ran, a.metrics()));
    assert!(
        matches!(refused, Err(NodeError::OwnName { .. })),
        "{refused:?}"
    );
    assert_eq!(ran.lock().unwrap().len(), 1);
}
