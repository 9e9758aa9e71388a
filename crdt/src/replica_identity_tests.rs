//! Regression tests of two daemons with one node name (issue 13, item 2): both notice, their
//! peers notice, neither writes any more, and every replica converges on the colliding dots;
//! a restart (with its state, or empty) is not taken for a duplicate.

use super::*;
use crate::identity::Evidence;
use crate::test_support::{DRIFT, meta, ms, node};

/// A replica of `name` whose daemon drew `incarnation` and started at `started_ms`.
fn daemon(name: &str, incarnation: u64, started_ms: u64) -> Replica {
    let mut replica = Replica::new(node(name), DRIFT);
    replica.set_incarnation(incarnation, ms(started_ms) + NTP64::from(DRIFT));
    replica
}

/// One push-pull as the daemon does it: `a` sends its summary, `b` observes it and answers
/// with what `a` lacks, then `a` observes `b`'s summary and pushes what `b` lacks. Refusals
/// (own-origin coverage the first time) are returned, not unwrapped.
fn exchange(a: &mut Replica, b: &mut Replica, now: NTP64) -> Vec<ApplyError> {
    let mut refused = Vec::new();
    let a_id = a.node().clone();
    let b_id = b.node().clone();
    b.observe_summary(&a_id, &a.summary());
    let pulled = b.delta_for(&a.summary());
    if let Err(error) = a.apply_delta(now, &b_id, &pulled) {
        refused.push(error);
    }
    a.observe_summary(&b_id, &b.summary());
    let pushed = a.delta_for(&b.summary());
    if let Err(error) = b.apply_delta(now, &a_id, &pushed) {
        refused.push(error);
    }
    refused
}

/// n1 (incarnation 1), n2 and n3, members of each other, each with a service.
fn cluster() -> (Replica, Replica, Replica) {
    let mut n1 = daemon("n1", 1, 0);
    let mut n2 = daemon("n2", 2, 0);
    let mut n3 = daemon("n3", 3, 0);
    for (index, replica) in [&mut n1, &mut n2, &mut n3].into_iter().enumerate() {
        replica
            .put_node_meta(ms(10), meta(&format!("10.88.{}.0/24", index + 1)))
            .unwrap();
        replica
            .put_service(
                ms(11),
                format!("svc-{index}").parse().unwrap(),
                ServiceSpec::new("/img"),
            )
            .unwrap();
    }
    for _ in 0..2 {
        exchange(&mut n1, &mut n2, ms(12));
        exchange(&mut n2, &mut n3, ms(12));
        exchange(&mut n1, &mut n3, ms(12));
    }
    (n1, n2, n3)
}

/// Everyone syncs with everyone but the two n1s never with each other (each refuses a peer
/// with its own name).
fn rounds(replicas: &mut [&mut Replica], now: NTP64, count: usize) {
    let len = replicas.len();
    for _ in 0..count {
        for a in 0..len {
            for b in 0..len {
                if a != b && replicas[a].node() != replicas[b].node() {
                    let (left, right) = if a < b {
                        let (head, tail) = replicas.split_at_mut(b);
                        (&mut *head[a], &mut *tail[0])
                    } else {
                        let (head, tail) = replicas.split_at_mut(a);
                        (&mut *tail[0], &mut *head[b])
                    };
                    exchange(left, right, now);
                }
            }
        }
    }
}

#[test]
fn two_daemons_with_one_name_both_notice_stop_writing_and_everyone_converges() {
    let (mut n1, mut n2, mut n3) = cluster();
    // A second daemon as n1, with an empty state, starts later and joins through n2.
    let mut twin = daemon("n1", 0xbeef, 2_000);
    twin.put_node_meta(ms(5_000), meta("10.88.9.0/24")).unwrap();
    assert!(
        exchange(&mut twin, &mut n2, ms(5_001)).is_empty(),
        "fresh: adopts"
    );
    assert!(twin.contest().is_none());
    // Both write at the same next dots.
    // Their writes interleave in time, as their heartbeats do, so each wins a dot.
    let next = n1.own_counter() + 1;
    n1.put_service(
        ms(5_010),
        "from-n1".parse().unwrap(),
        ServiceSpec::new("/n1"),
    )
    .unwrap();
    twin.put_service(
        ms(5_011),
        "from-twin".parse().unwrap(),
        ServiceSpec::new("/twin"),
    )
    .unwrap();
    n1.put_node_meta(ms(5_012), meta("10.88.1.0/24")).unwrap();
    twin.put_node_meta(ms(5_013), meta("10.88.9.0/24")).unwrap();
    n1.put_service(
        ms(5_014),
        "more-n1".parse().unwrap(),
        ServiceSpec::new("/n1"),
    )
    .unwrap();
    assert_eq!(twin.own_counter(), next + 1);

    let mut all = [&mut n1, &mut twin, &mut n2, &mut n3];
    rounds(&mut all, ms(6_000), 4);

    // Both n1s know that another daemon writes as n1, and write nothing any more.
    for replica in [&n1, &twin] {
        let sighting = replica.contest().expect("contested");
        assert!(
            matches!(
                sighting.evidence,
                Evidence::ForeignIncarnation { .. }
                    | Evidence::CollidingDot { .. }
                    | Evidence::CoverageBeyond { .. }
            ),
            "{sighting:?}"
        );
    }
    let mut n1_after = n1.clone();
    let refused = n1_after
        .put_service(
            ms(7_000),
            "refused".parse().unwrap(),
            ServiceSpec::new("/x"),
        )
        .unwrap_err();
    assert!(
        matches!(refused, ReplicaError::Contested { .. }),
        "{refused}"
    );
    assert!(
        twin.clone()
            .put_node_meta(ms(7_000), meta("10.88.9.0/24"))
            .is_err()
    );
    // Their peers saw n1 written by two writers.
    for peer in [&n2, &n3] {
        assert!(
            peer.duplicates().contains_key(&node("n1")),
            "{}",
            peer.node()
        );
        assert!(peer.contest().is_none());
    }
    // All four converge, the colliding dots decided the same everywhere.
    let all = [&n1, &twin, &n2, &n3];
    for replica in &all[1..] {
        assert_eq!(replica.digest(), n1.digest(), "{}", replica.node());
        assert_eq!(replica.version_vector(), n1.version_vector());
    }
    // Of the two writes at dot `next`, one service is kept everywhere; n1's later one too.
    assert!(n2.state().service(&"more-n1".parse().unwrap()).is_some());
    let kept = ["from-twin", "from-n1"]
        .iter()
        .filter(|name| n2.state().service(&name.parse().unwrap()).is_some())
        .count();
    assert_eq!(kept, 1);
}

#[test]
fn a_contest_cleared_is_not_revived_by_old_evidence_and_writes_go_on_past_the_other() {
    let (mut n1, mut n2, mut n3) = cluster();
    let mut twin = daemon("n1", 0xbeef, 2_000);
    twin.put_node_meta(ms(5_000), meta("10.88.9.0/24")).unwrap();
    exchange(&mut twin, &mut n2, ms(5_001));
    n1.put_service(ms(5_010), "b".parse().unwrap(), ServiceSpec::new("/n1"))
        .unwrap();
    n1.put_node_meta(ms(5_011), meta("10.88.1.0/24")).unwrap();
    twin.put_service(ms(5_012), "a".parse().unwrap(), ServiceSpec::new("/twin"))
        .unwrap();
    twin.put_node_meta(ms(5_013), meta("10.88.9.0/24")).unwrap();
    let mut all = [&mut n1, &mut twin, &mut n2, &mut n3];
    rounds(&mut all, ms(6_000), 4);
    assert!(n1.contest().is_some() && twin.contest().is_some());
    // The twin is stopped; n1's daemon decides the contest is over.
    drop(twin);
    n1.clear_contest();
    let mut all = [&mut n1, &mut n2, &mut n3];
    rounds(&mut all, ms(7_000), 2);
    assert!(n1.contest().is_none(), "{:?}", n1.contest());
    // n1 writes again, past every dot of n1 anyone has seen.
    let seen = n2.version_vector().get(&node("n1"));
    n1.put_service(ms(8_000), "after".parse().unwrap(), ServiceSpec::new("/n1"))
        .unwrap();
    assert_eq!(n1.own_counter(), seen + 1);
    exchange(&mut n1, &mut n2, ms(8_001));
    assert!(n2.state().service(&"after".parse().unwrap()).is_some());
    assert_eq!(n1.digest(), n2.digest());
}

#[test]
fn a_restart_with_its_state_or_with_none_is_not_a_duplicate() {
    let (mut n1, mut n2, mut n3) = cluster();
    // Restarted with its state: a new incarnation, later.
    let mut restarted = Replica::from_snapshot(node("n1"), DRIFT, n1.to_snapshot()).unwrap();
    restarted.set_incarnation(7, ms(2_000) + NTP64::from(DRIFT));
    restarted
        .put_node_meta(ms(3_500), meta("10.88.1.0/24"))
        .unwrap();
    for _ in 0..2 {
        exchange(&mut restarted, &mut n2, ms(3_501));
        exchange(&mut n2, &mut n3, ms(3_501));
        exchange(&mut restarted, &mut n3, ms(3_501));
    }
    // Restarted again with an empty state (its state_dir emptied): it adopts its writes.
    let mut fresh = daemon("n1", 8, 4_000);
    fresh
        .put_node_meta(ms(5_500), meta("10.88.1.0/24"))
        .unwrap();
    for _ in 0..2 {
        exchange(&mut fresh, &mut n2, ms(5_501));
        exchange(&mut n2, &mut n3, ms(5_501));
        exchange(&mut fresh, &mut n3, ms(5_501));
    }
    fresh
        .put_node_meta(ms(5_502), meta("10.88.1.0/24"))
        .unwrap();
    exchange(&mut fresh, &mut n2, ms(5_503));
    exchange(&mut n2, &mut n3, ms(5_503));
    assert!(fresh.contest().is_none(), "{:?}", fresh.contest());
    for peer in [&n2, &n3] {
        assert!(peer.duplicates().is_empty(), "{:?}", peer.duplicates());
    }
    assert_eq!(fresh.digest(), n2.digest());
    assert_eq!(n3.digest(), n2.digest());
    n1.clear_contest();
}

#[test]
fn a_peer_seeing_heartbeats_alternate_between_incarnations_marks_the_node() {
    let (mut n1, mut n2, _) = cluster();
    let mut twin = daemon("n1", 0xbeef, 2_000);
    twin.put_node_meta(ms(5_000), meta("10.88.9.0/24")).unwrap();
    // n2 gets n1's heartbeats and the twin's in turn, each newer than the last.
    let twin_meta = twin.delta_for(&Summary::default());
    let mut meta_vv = VersionVector::new();
    meta_vv.dots.insert(node("n1"), 1);
    let only_meta = |delta: &Delta| {
        let changes: Vec<Change> = delta
            .changes()
            .iter()
            .filter(|change| matches!(change, Change::Node { .. }))
            .cloned()
            .collect();
        Delta::from_parts(
            DeltaBase::Repair {
                vv: meta_vv.clone(),
            },
            changes,
        )
    };
    n1.put_node_meta(ms(4_000), meta("10.88.1.0/24")).unwrap();
    exchange(&mut n1, &mut n2, ms(4_001));
    assert!(n2.duplicates().is_empty());
    n2.apply_delta(ms(5_001), &node("n3"), &only_meta(&twin_meta))
        .unwrap();
    assert!(n2.duplicates().is_empty(), "one change is a restart");
    n1.put_node_meta(ms(5_500), meta("10.88.1.0/24")).unwrap();
    exchange(&mut n1, &mut n2, ms(5_501));
    let sighting = n2.duplicates().get(&node("n1")).expect("alternating");
    assert_eq!(
        sighting.evidence,
        Evidence::AlternatingIncarnations {
            first: 0xbeef,
            second: 1
        }
    );
}
