//! Regression tests of `Replica` against a lying or buggy peer (issue 13, item 1): counters
//! that would wrap, ranges for the receiver's own origin, finite jumps for another origin,
//! omitted entries, and colliding dots. Each refusal must leave the replica untouched.

use std::time::Duration;

use super::*;
use crate::Capacity;

const DRIFT: Duration = Duration::from_secs(1);

fn node(name: &str) -> NodeId {
    name.parse().unwrap()
}

fn ms(value: u64) -> NTP64 {
    NTP64::from(Duration::from_millis(value))
}

fn replica(name: &str) -> Replica {
    Replica::new(node(name), DRIFT)
}

fn meta(subnet: &str) -> NodeMeta {
    NodeMeta {
        address: "127.0.0.1:7000".parse().unwrap(),
        capacity: Capacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
        subnet: Some(subnet.parse().unwrap()),
        heartbeat: Timestamp::new(NTP64(0), node("x").hlc_id()),
    }
}

/// `to` pulls everything it lacks from `from`.
fn pull(from: &Replica, to: &mut Replica, now: NTP64) {
    let delta = from.delta_for(&to.summary());
    to.apply_delta(now, from.node(), &delta).unwrap();
}

/// A delta as a lying peer would send it: any ranges, any entries.
fn lie(ranges: Vec<OriginRange>, changes: Vec<Change>) -> Delta {
    Delta {
        base: DeltaBase::Ranges(ranges),
        changes,
    }
}

fn range(origin: &NodeId, since: u64, until: u64) -> OriginRange {
    OriginRange {
        node: origin.clone(),
        since,
        until,
    }
}

/// Three members n1, n2, n3 that know each other's metadata and each wrote a service.
fn cluster() -> [Replica; 3] {
    let mut replicas = [replica("n1"), replica("n2"), replica("n3")];
    for (index, replica) in replicas.iter_mut().enumerate() {
        replica
            .put_node_meta(ms(1), meta(&format!("10.88.{}.0/24", index + 1)))
            .unwrap();
        replica
            .put_service(
                ms(2),
                format!("svc-{index}").parse().unwrap(),
                ServiceSpec::new("/img"),
            )
            .unwrap();
    }
    sync_all(&mut replicas, ms(3));
    replicas
}

/// Every replica pulls from every other one, twice (push-pull in both directions).
fn sync_all(replicas: &mut [Replica; 3], now: NTP64) {
    for _ in 0..2 {
        for from in 0..3 {
            for to in 0..3 {
                if from != to {
                    let delta = replicas[from].delta_for(&replicas[to].summary());
                    let from_id = replicas[from].node().clone();
                    replicas[to].apply_delta(now, &from_id, &delta).unwrap();
                }
            }
        }
    }
}

fn fingerprint(replica: &Replica) -> ([u8; 32], VersionVector, Timestamp) {
    (
        replica.digest(),
        replica.version_vector().clone(),
        replica.clock().last(),
    )
}

#[test]
fn a_range_that_would_wrap_the_receivers_counter_is_refused_and_changes_nothing() {
    let [mut n1, _, _] = cluster();
    let own = n1.own_counter();
    let before = fingerprint(&n1);
    // Any certificate of the cluster CA pushed (own, 2^64-1] for n1 with no entries.
    let poison = lie(vec![range(&node("n1"), own, u64::MAX)], Vec::new());
    let result = n1.apply_delta(ms(4), &node("intruder"), &poison);
    assert!(result.is_err(), "accepted: {result:?}");
    assert_eq!(fingerprint(&n1), before);
    // n1 goes on writing with the next counter, and its state still loads.
    n1.put_service(ms(5), "after".parse().unwrap(), ServiceSpec::new("/img"))
        .unwrap();
    assert_eq!(n1.own_counter(), own + 1);
    Replica::from_snapshot(node("n1"), DRIFT, n1.to_snapshot()).unwrap();
}

#[test]
fn a_range_for_the_receivers_own_origin_beyond_its_counter_is_refused() {
    let [n1, mut n2, _] = cluster();
    let own = n2.own_counter();
    let before = fingerprint(&n2);
    for until in [own + 1, own + 1_000_000] {
        let jump = lie(vec![range(&node("n2"), own, until)], Vec::new());
        let result = n2.apply_delta(ms(4), n1.node(), &jump);
        assert!(result.is_err(), "range to {until} accepted: {result:?}");
        assert_eq!(fingerprint(&n2), before);
    }
    // The same jump hidden in an honest-looking delta from a member is refused whole.
    let mut honest = n1.clone();
    honest
        .put_service(ms(4), "more".parse().unwrap(), ServiceSpec::new("/img"))
        .unwrap();
    let mut delta = honest.delta_for(&n2.summary());
    if let DeltaBase::Ranges(ranges) = &mut delta.base {
        ranges.push(range(&node("n2"), own, own + 5));
    }
    assert!(n2.apply_delta(ms(5), n1.node(), &delta).is_err());
    assert_eq!(fingerprint(&n2), before);
}

#[test]
fn a_finite_jump_for_another_origin_does_not_hide_its_later_writes() {
    let [mut n1, mut n2, mut n3] = cluster();
    // (c, c + 1000000] for n2, pushed to n3 by n1 with no entries.
    let c = n2.own_counter();
    let jump = lie(vec![range(&node("n2"), c, c + 1_000_000)], Vec::new());
    // Accepted or refused, it must not make n3 cover writes n2 has not made.
    let _ = n3.apply_delta(ms(4), n1.node(), &jump);
    assert!(
        n3.version_vector().get(&node("n2")) <= n2.own_counter(),
        "n3 covers n2 up to {}, n2 is at {}",
        n3.version_vector().get(&node("n2")),
        n2.own_counter()
    );
    // The jump does not spread either.
    pull(&n3, &mut n1, ms(5));
    assert!(n1.version_vector().get(&node("n2")) <= n2.own_counter());
    // n2's next writes reach n3, directly and relayed.
    n2.put_service(ms(6), "later".parse().unwrap(), ServiceSpec::new("/img"))
        .unwrap();
    pull(&n2, &mut n1, ms(7));
    pull(&n1, &mut n3, ms(7));
    assert!(n3.state().service(&"later".parse().unwrap()).is_some());
    n2.put_service(ms(8), "direct".parse().unwrap(), ServiceSpec::new("/img"))
        .unwrap();
    pull(&n2, &mut n3, ms(9));
    assert!(n3.state().service(&"direct".parse().unwrap()).is_some());
    let mut all = [n1, n2, n3];
    sync_all(&mut all, ms(10));
    assert_eq!(all[0].digest(), all[2].digest());
    assert_eq!(all[1].digest(), all[2].digest());
}

#[test]
fn writes_a_peer_omitted_from_a_range_are_repaired() {
    let [mut n1, mut n2, mut n3] = cluster();
    // n2 writes three times; n1 (lying, or buggy) relays only the last one to n3.
    let c = n2.own_counter();
    for name in ["x", "y", "z"] {
        n2.put_service(ms(4), name.parse().unwrap(), ServiceSpec::new("/img"))
            .unwrap();
    }
    pull(&n2, &mut n1, ms(5));
    let full = n1.delta_for(&n3.summary());
    let last: Vec<Change> = full
        .changes
        .iter()
        .filter(|change| change.dot().node == node("n2") && change.dot().counter == c + 3)
        .cloned()
        .collect();
    assert_eq!(last.len(), 1);
    let omission = lie(vec![range(&node("n2"), c, c + 3)], last);
    n3.apply_delta(ms(6), n1.node(), &omission).unwrap();
    // Honest exchanges afterwards bring back what was omitted.
    let mut all = [n1, n2, n3];
    sync_all(&mut all, ms(7));
    for name in ["x", "y", "z"] {
        assert!(
            all[2].state().service(&name.parse().unwrap()).is_some(),
            "n3 lacks {name}"
        );
    }
    assert_eq!(all[2].digest(), all[1].digest());
    assert_eq!(all[2].version_vector(), all[1].version_vector());
}

#[test]
fn an_entry_whose_dot_is_already_indexed_is_refused_not_a_panic() {
    let mut a = replica("a");
    a.put_service(ms(1), "one".parse().unwrap(), ServiceSpec::new("/img"))
        .unwrap();
    let held = a.delta_for(&Summary::default()).changes[0].clone();
    // The same dot at another key: a second write claiming the first one's identity.
    let Change::Service { entry, .. } = held else {
        panic!("a service write");
    };
    let collision = Change::Service {
        name: "two".parse().unwrap(),
        entry,
    };
    let mut state = a.state().clone();
    let before = state.digest();
    let outcome = state.apply_change(collision);
    assert!(
        !matches!(outcome, Ok(MergeOutcome::Stored { .. })),
        "{outcome:?}"
    );
    assert_eq!(state.digest(), before);
    assert!(state.service(&"two".parse().unwrap()).is_none());
}
