//! Property test: a peer that sends arbitrary lying ranges and entries never leaves an honest
//! replica covering a write whose effect it lacks, once the replicas have synced honestly
//! again (the repair included): every replica shows, at every key, the greatest write ever
//! made there, and covers no node's writes beyond what that node wrote. No lie makes a
//! replica panic, wrap a counter, or change anything when it is refused.
//!
//! What repair cannot restore, and this does not check: a removal of something a replica
//! never held (its digest, over live entries, is the same with or without it).
//!
//! The liar is a member that also writes and syncs honestly, so it holds real entries of
//! every node. A lie is a delta from the liar (or from an honest node, as a buggy peer would
//! send it) with ranges for any origin (honest members, the liar, the receiver itself, a node
//! nobody knows) and any counters (real ones give or take a few, huge ones, 2^64-1), carrying
//! any subset of the real entries ever written (current or superseded) and the liar's own, as
//! ranges or as a repair. Not covered: forged entries in another node's name, and full
//! snapshots, whose removals the receiver takes on trust (see ARCHITECTURE.md, "Trust model").

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use shoal_crdt::state::{Change, Key};
use shoal_crdt::{
    Capacity, Delta, DeltaBase, NTP64, NodeId, NodeMeta, OriginRange, Replica, Resource,
    ServiceSpec, Subnet, Summary, Timestamp, VersionVector,
};

const HONEST: usize = 3;
const LIAR: usize = HONEST;
const DRIFT: Duration = Duration::from_secs(3600);
/// Full-mesh sync rounds after the lies: vouching, then repair, then quiet.
const FINAL_ROUNDS: usize = 4;

fn node(index: usize) -> NodeId {
    if index == LIAR {
        "liar".parse().unwrap()
    } else {
        format!("n{index}").parse().unwrap()
    }
}

fn ms(value: u64) -> NTP64 {
    NTP64::from(Duration::from_millis(value))
}

fn meta(index: usize) -> NodeMeta {
    NodeMeta {
        address: format!("127.0.0.{}:7000", index + 1).parse().unwrap(),
        capacity: Capacity {
            cpu_millis: 4000,
            memory_bytes: 1 << 32,
        },
        subnet: Some(Subnet::new(format!("10.88.{index}.0").parse().unwrap(), 24).unwrap()),
        heartbeat: Timestamp::new(NTP64(0), node(index).hlc_id()),
        labels: Default::default(),
        incarnation: None,
        drain: None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Put { name: u8 },
    Remove { name: u8 },
    Heartbeat,
    Adjust { amount: i16 },
}

/// A counter in a lie, relative to something real or not at all.
#[derive(Debug, Clone)]
enum Counter {
    /// The origin's real counter (its writer's), plus or minus a little.
    Real(i8),
    /// What the receiver covers of the origin, plus or minus a little.
    Covered(i8),
    Huge(u8),
}

#[derive(Debug, Clone)]
struct Lie {
    /// Index into the senders: 0..HONEST honest (a buggy peer), LIAR the liar.
    sender: usize,
    repair: bool,
    /// Pick the entries among those inside the ranges (a plausible lie) or among all.
    plausible: bool,
    /// (origin: 0..=LIAR a node, LIAR+1 the receiver, LIAR+2 a stranger; since; until).
    ranges: Vec<(usize, Counter, Counter)>,
    /// Indices into every entry ever written.
    entries: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        writer: usize,
        op: Op,
    },
    /// An honest push-pull between two nodes, the liar included (it learns real entries).
    Sync {
        a: usize,
        b: usize,
    },
    Lie {
        to: usize,
        lie: Lie,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4).prop_map(|name| Op::Put { name }),
        2 => (0u8..4).prop_map(|name| Op::Remove { name }),
        1 => Just(Op::Heartbeat),
        1 => (-20i16..50).prop_map(|amount| Op::Adjust { amount }),
    ]
}

fn counter() -> impl Strategy<Value = Counter> {
    prop_oneof![
        3 => (-3i8..=3).prop_map(Counter::Real),
        3 => (-3i8..=3).prop_map(Counter::Covered),
        1 => (0u8..5).prop_map(Counter::Huge),
    ]
}

/// Where a range starts: mostly where the receiver is (else it is refused as stale).
fn since() -> impl Strategy<Value = Counter> {
    prop_oneof![
        4 => (-2i8..=0).prop_map(Counter::Covered),
        1 => counter(),
    ]
}

fn lie() -> impl Strategy<Value = Lie> {
    (
        0..=LIAR,
        prop::bool::weighted(0.25),
        prop::bool::weighted(0.7),
        prop::collection::vec((0..=LIAR + 2, since(), counter()), 0..4),
        prop::collection::vec(any::<usize>(), 0..6),
    )
        .prop_map(|(sender, repair, plausible, ranges, entries)| Lie {
            sender,
            repair,
            plausible,
            ranges,
            entries,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..=LIAR, op()).prop_map(|(writer, op)| Step::Write { writer, op }),
        3 => (0..=LIAR, 0..=LIAR).prop_map(|(a, b)| Step::Sync { a, b }),
        4 => (0..HONEST, lie()).prop_map(|(to, lie)| Step::Lie { to, lie }),
    ]
}

struct World {
    /// The honest replicas, then the liar.
    replicas: Vec<Replica>,
    /// Every entry a replica stored by a local write (the liar's included).
    written: Vec<Change>,
    time_ms: u64,
}

impl World {
    /// Everyone publishes its metadata and syncs: all are members.
    fn new() -> Self {
        let mut world = Self {
            replicas: (0..=LIAR).map(|i| Replica::new(node(i), DRIFT)).collect(),
            written: Vec::new(),
            time_ms: 10,
        };
        for index in 0..=LIAR {
            world.write(index, &Op::Heartbeat);
        }
        for _ in 0..2 {
            for a in 0..=LIAR {
                for b in 0..=LIAR {
                    world.sync(a, b);
                }
            }
        }
        world
    }

    fn now(&mut self) -> NTP64 {
        self.time_ms += 1;
        ms(self.time_ms)
    }

    fn write(&mut self, writer: usize, op: &Op) {
        let now = self.now();
        let replica = &mut self.replicas[writer];
        let delta = match op {
            Op::Put { name } => replica
                .put_service(
                    now,
                    format!("s{name}").parse().unwrap(),
                    ServiceSpec::new(format!("/images/{writer}")),
                )
                .ok(),
            Op::Remove { name } => replica
                .remove_service(now, &format!("s{name}").parse().unwrap())
                .ok(),
            Op::Heartbeat => replica.put_node_meta(now, meta(writer)).ok(),
            Op::Adjust { amount } => replica
                .adjust_resource(now, Resource::Containers, i64::from(*amount))
                .ok(),
        };
        self.written
            .extend(delta.iter().flat_map(Delta::changes).cloned());
    }

    /// `to` pulls from `from` as the daemon does: each side learns the other's summary
    /// (`from` from the request, `to` from the response).
    fn pull(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let now = self.now();
        let theirs = self.replicas[to].summary();
        self.replicas[from].observe_summary(&node(to), &theirs);
        let delta = self.replicas[from].delta_for(&theirs);
        let ours = self.replicas[from].summary();
        let result = self.replicas[to].apply_delta(now, &node(from), &delta);
        assert!(
            result.is_ok(),
            "honest delta {} -> {} refused: {result:?}",
            node(from),
            node(to)
        );
        self.replicas[to].observe_summary(&node(from), &ours);
    }

    fn sync(&mut self, a: usize, b: usize) {
        self.pull(a, b);
        self.pull(b, a);
    }

    fn resolve(&self, to: usize, origin: &NodeId, counter: &Counter) -> u64 {
        let real = (0..=LIAR)
            .find(|index| &node(*index) == origin)
            .map_or(0, |index| self.replicas[index].own_counter());
        let covered = self.replicas[to].version_vector().get(origin);
        let offset = |base: u64, delta: i8| base.saturating_add_signed(i64::from(delta));
        match counter {
            Counter::Real(delta) => offset(real, *delta),
            Counter::Covered(delta) => offset(covered, *delta),
            Counter::Huge(which) => [
                1 << 20,
                shoal_crdt::DOT_COUNTER_MAX - 1,
                shoal_crdt::DOT_COUNTER_MAX,
                shoal_crdt::DOT_COUNTER_MAX + 1,
                u64::MAX,
            ][usize::from(*which)],
        }
    }

    fn lie(&mut self, to: usize, lie: &Lie) {
        let origin_of = |index: usize| match index {
            i if i <= LIAR => node(i),
            i if i == LIAR + 1 => node(to),
            _ => "stranger".parse().unwrap(),
        };
        let ranges: Vec<OriginRange> = lie
            .ranges
            .iter()
            .map(|(origin, since, until)| {
                let origin = origin_of(*origin);
                OriginRange {
                    since: self.resolve(to, &origin, since),
                    until: self.resolve(to, &origin, until),
                    node: origin,
                }
            })
            .collect();
        let mut pool: Vec<Change> = self.written.clone();
        pool.extend(
            self.replicas[LIAR]
                .delta_for(&Summary::default())
                .changes()
                .iter()
                .cloned(),
        );
        if lie.plausible {
            pool.retain(|change| {
                let dot = change.dot();
                ranges.iter().any(|range| {
                    range.node == dot.node
                        && range.since < dot.counter
                        && dot.counter <= range.until
                })
            });
        }
        let mut entries: Vec<Change> = lie
            .entries
            .iter()
            .filter(|_| !pool.is_empty())
            .map(|index| pool[index % pool.len()].clone())
            .collect();
        entries.sort_by(|a, b| a.dot().cmp(b.dot()));
        entries.dedup_by(|a, b| a.dot() == b.dot());
        let base = if lie.repair {
            let mut vv = VersionVector::new();
            for range in &ranges {
                vv.dots.insert(range.node.clone(), range.until);
            }
            DeltaBase::Repair { vv }
        } else {
            DeltaBase::Ranges(ranges)
        };
        let delta = Delta::from_parts(base, entries);
        let now = self.now();
        let receiver = &mut self.replicas[to];
        let before = (
            receiver.digest(),
            receiver.version_vector().clone(),
            receiver.clock().last(),
        );
        if receiver
            .apply_delta(now, &node(lie.sender), &delta)
            .is_err()
        {
            let after = (
                receiver.digest(),
                receiver.version_vector().clone(),
                receiver.clock().last(),
            );
            assert_eq!(after, before, "a refused delta changed {}", node(to));
        }
        let own = receiver.own_counter();
        assert!(own <= shoal_crdt::DOT_COUNTER_MAX, "{} at {own}", node(to));
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            match step {
                Step::Write { writer, op } => self.write(*writer, op),
                Step::Sync { a, b } => self.sync(*a, *b),
                Step::Lie { to, lie } => self.lie(*to, lie),
            }
        }
    }
}

/// Every entry a replica holds, tombstones included, by key.
fn holdings(replica: &Replica) -> BTreeMap<Key, Change> {
    let all = replica.delta_for(&Summary::default());
    assert!(!all.is_full(), "no tombstone was collected");
    all.changes()
        .iter()
        .map(|change| (change.key(), change.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lies_never_leave_an_honest_replica_covering_a_write_it_lacks(
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut world = World::new();
        world.run(&steps);
        // The liar stops lying (a buggy peer fixed, still a member): everyone heartbeats and
        // syncs honestly.
        for writer in 0..=LIAR {
            world.write(writer, &Op::Heartbeat);
        }
        for _ in 0..FINAL_ROUNDS {
            for a in 0..=LIAR {
                for b in 0..=LIAR {
                    world.sync(a, b);
                }
            }
        }
        let mut truth: BTreeMap<Key, &Change> = BTreeMap::new();
        for change in &world.written {
            let slot = truth.entry(change.key()).or_insert(change);
            if (change.hlc(), change.dot()) > (slot.hlc(), slot.dot()) {
                *slot = change;
            }
        }
        let reference = &world.replicas[0];
        for replica in &world.replicas {
            prop_assert_eq!(replica.digest(), reference.digest(), "{} converged", replica.node());
            prop_assert_eq!(replica.version_vector(), reference.version_vector());
            // No node's writes are covered beyond what it wrote.
            for index in 0..=LIAR {
                let covered = replica.version_vector().get(&node(index));
                let real = world.replicas[index].own_counter();
                prop_assert_eq!(covered, real, "{} covers {}", replica.node(), node(index));
            }
            // Every write's effect is there: at every key written, the live entry is the
            // greatest write ever made there (none if that is a removal). A replica may lack a
            // removal of something it never held; that changes nothing it shows.
            let held = holdings(replica);
            for (key, greatest) in &truth {
                let live = held.get(key).filter(|change| !change.is_tombstone());
                let expected = (!greatest.is_tombstone()).then_some(*greatest);
                prop_assert_eq!(live, expected, "{} at {:?}", replica.node(), key);
            }
        }
    }
}
