//! Property tests of the replicated document: merge laws on whole replicas,
//! delta merge equals full-state merge, and convergence of random histories
//! delivered with reordering, duplication and loss followed by anti-entropy.
//!
//! The merge laws hold for the state (the entries held). Coverage (the version vector) is
//! the join too, except that a replica covers a third node's writes relayed by another
//! only as far as it holds one of them (`Replica::apply_delta`): when the latest writes of
//! that node were superseded by another node's, it covers them once that node vouches for
//! them itself. `coverage_is_vouched` checks exactly that.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use shoal_crdt::{
    ApplyError, Capacity, ContainerId, ContainerRecord, Delta, NTP64, NodeId, NodeMeta, Replica,
    Resource, ServiceName, ServiceSpec, Subnet, Summary, Timestamp,
};

const REPLICAS: usize = 3;
const GHOST: usize = REPLICAS; // a member that dies after joining; only eviction unblocks GC
const DRIFT: Duration = Duration::from_secs(3600);

fn node(index: usize) -> NodeId {
    format!("n{index}").parse().unwrap()
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
    PutService { name: u8, replicas: u32 },
    RemoveService { name: u8 },
    Heartbeat,
    EvictGhost,
    AddContainer { id: u8 },
    RemoveContainer { id: u8 },
    Adjust { resource: u8, amount: i16 },
    AllocateIp { container: u8 },
    ReleaseIp { offset: u8 },
}

#[derive(Debug, Clone)]
enum Step {
    /// A local operation on a replica; its delta goes to the message pool.
    Local { replica: usize, op: Op },
    /// Pull: `to` sends its summary to `from`, which answers with a delta.
    Pull { from: usize, to: usize },
    /// `to` learns `from`'s summary and collects garbage.
    Gossip { from: usize, to: usize },
    /// Deliver a pooled message (by index modulo the pool) to a replica.
    Deliver { message: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4, 0u32..4).prop_map(|(name, replicas)| Op::PutService { name, replicas }),
        2 => (0u8..4).prop_map(|name| Op::RemoveService { name }),
        1 => Just(Op::Heartbeat),
        1 => Just(Op::EvictGhost),
        3 => (0u8..4).prop_map(|id| Op::AddContainer { id }),
        2 => (0u8..4).prop_map(|id| Op::RemoveContainer { id }),
        2 => (0u8..3, -50i16..100).prop_map(|(resource, amount)| Op::Adjust { resource, amount }),
        2 => (0u8..4).prop_map(|container| Op::AllocateIp { container }),
        1 => (0u8..4).prop_map(|offset| Op::ReleaseIp { offset }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..REPLICAS, op()).prop_map(|(replica, op)| Step::Local { replica, op }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Pull { from, to }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Gossip { from, to }),
        3 => (any::<usize>(), 0..REPLICAS).prop_map(|(message, to)| Step::Deliver { message, to }),
    ]
}

struct Cluster {
    replicas: Vec<Replica>,
    pool: Vec<(usize, Delta)>,
    time_ms: u64,
    /// Oracle: per service name, the acknowledged write with the highest HLC
    /// (`Some(replicas)` for a put, `None` for a remove).
    services: BTreeMap<u8, (Timestamp, Option<u32>)>,
    /// Oracle: per (replica, resource), the sum of acknowledged adjustments.
    counters: BTreeMap<(usize, u8), i64>,
}

impl Cluster {
    /// Every replica (and the ghost) publishes its metadata and everyone syncs,
    /// so all of them are members before the history starts.
    fn new() -> Self {
        let mut replicas: Vec<Replica> =
            (0..=GHOST).map(|i| Replica::new(node(i), DRIFT)).collect();
        for (index, replica) in replicas.iter_mut().enumerate() {
            replica.put_node_meta(ms(1), meta(index)).unwrap();
        }
        let mut cluster = Self {
            replicas,
            pool: Vec::new(),
            time_ms: 10,
            services: BTreeMap::new(),
            counters: BTreeMap::new(),
        };
        cluster.anti_entropy(0..=GHOST);
        for to in 0..=GHOST {
            for from in 0..=GHOST {
                let summary = cluster.replicas[from].summary();
                cluster.replicas[to].observe_summary(&node(from), &summary);
            }
        }
        cluster
    }

    fn now(&mut self) -> NTP64 {
        self.time_ms += 1;
        ms(self.time_ms)
    }

    fn local(&mut self, index: usize, op: &Op) {
        let now = self.now();
        let replica = &mut self.replicas[index];
        let me = node(index);
        let delta = match op {
            Op::PutService { name, replicas } => {
                let mut spec = ServiceSpec::new(format!("/images/{name}"));
                spec.replicas = *replicas;
                replica
                    .put_service(now, format!("s{name}").parse().unwrap(), spec)
                    .ok()
            }
            Op::RemoveService { name } => replica
                .remove_service(now, &format!("s{name}").parse::<ServiceName>().unwrap())
                .ok(),
            Op::Heartbeat => replica.put_node_meta(now, meta(index)).ok(),
            Op::EvictGhost => replica.evict_node(now, &node(GHOST)).ok(),
            Op::AddContainer { id } => {
                let record = ContainerRecord {
                    id: format!("c{id}-{me}").parse().unwrap(),
                    service: "s0".parse().unwrap(),
                    node: me.clone(),
                    spec_version: Timestamp::new(NTP64(1), me.hlc_id()),
                    ip: None,
                };
                replica.add_container(now, record).ok()
            }
            Op::RemoveContainer { id } => {
                // Any node may remove any container; pick one by index.
                let ids: Vec<ContainerId> =
                    replica.state().containers().map(|c| c.id.clone()).collect();
                let chosen = ids.get(usize::from(*id) % ids.len().max(1)).cloned();
                chosen.and_then(|id| replica.remove_container(now, &id).ok())
            }
            Op::Adjust { resource, amount } => {
                let resource = [
                    Resource::CpuMillis,
                    Resource::MemoryBytes,
                    Resource::Containers,
                ][usize::from(*resource)];
                replica
                    .adjust_resource(now, resource, i64::from(*amount))
                    .ok()
            }
            Op::AllocateIp { container } => replica
                .allocate_ip(now, &format!("c{container}-{me}").parse().unwrap())
                .ok()
                .map(|(_, delta)| delta),
            Op::ReleaseIp { offset } => {
                let ip = format!("10.88.{index}.{}", 2 + offset).parse().unwrap();
                replica.release_ip(now, ip).ok()
            }
        };
        if delta.is_some() {
            let hlc = replica.clock().last();
            let written = match op {
                Op::PutService { name, replicas } => Some((*name, Some(*replicas))),
                Op::RemoveService { name } => Some((*name, None)),
                _ => None,
            };
            if let Some((name, value)) = written {
                let slot = self.services.entry(name).or_insert((hlc, value));
                if hlc >= slot.0 {
                    *slot = (hlc, value);
                }
            }
            if let Op::Adjust { resource, amount } = op {
                *self.counters.entry((index, *resource)).or_default() += i64::from(*amount);
            }
        }
        if let Some(delta) = delta
            && !delta.is_empty()
        {
            self.pool.push((index, delta));
        }
    }

    fn pull(&mut self, from: usize, to: usize) {
        if from == to {
            return;
        }
        let now = self.now();
        let delta = self.replicas[from].delta_for(&self.replicas[to].summary());
        self.replicas[to]
            .apply_delta(now, &node(from), &delta)
            .unwrap();
    }

    fn gossip(&mut self, from: usize, to: usize) {
        let summary = self.replicas[from].summary();
        self.replicas[to].observe_summary(&node(from), &summary);
        self.replicas[to].collect_garbage();
    }

    fn deliver(&mut self, message: usize, to: usize) {
        if self.pool.is_empty() {
            return;
        }
        let now = self.now();
        let (from, delta) = self.pool[message % self.pool.len()].clone();
        if from == to {
            return;
        }
        let before = self.replicas[to].digest();
        // Stale deltas (lost predecessors) are refused and change nothing.
        if self.replicas[to]
            .apply_delta(now, &node(from), &delta)
            .is_err()
        {
            assert_eq!(self.replicas[to].digest(), before);
        }
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            match step {
                Step::Local { replica, op } => self.local(*replica, op),
                Step::Pull { from, to } => self.pull(*from, *to),
                Step::Gossip { from, to } => self.gossip(*from, *to),
                Step::Deliver { message, to } => self.deliver(*message, *to),
            }
        }
    }

    fn anti_entropy(&mut self, members: std::ops::RangeInclusive<usize>) {
        for _round in 0..2 {
            for from in members.clone() {
                for to in members.clone() {
                    self.pull(from, to);
                }
            }
        }
    }
}

fn history() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..80)
}

/// `into` merged with `other`, by the delta `other` computes for `into`.
fn merged(into: &Replica, other: &Replica) -> Replica {
    let mut result = into.clone();
    let delta = other.delta_for(&into.summary());
    result
        .apply_delta(ms(1_000_000), other.node(), &delta)
        .unwrap();
    result
}

fn same(a: &Replica, b: &Replica) -> bool {
    a.digest() == b.digest() && a.version_vector() == b.version_vector()
}

/// `merged` (= `into` merged with `other`) covers everything `into` covered, everything the
/// sender wrote itself, and of third nodes' writes at most what `other` covered and at
/// least up to the highest of them it holds.
fn coverage_is_vouched(merged: &Replica, into: &Replica, other: &Replica) -> bool {
    let (a, b) = (into.version_vector(), other.version_vector());
    a.dots.keys().chain(b.dots.keys()).all(|origin| {
        let join = a.get(origin).max(b.get(origin));
        let covered = merged.version_vector().get(origin);
        let floor = if origin == other.node() || origin == into.node() {
            join
        } else {
            a.get(origin)
        };
        floor <= covered && covered <= join
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn merge_is_commutative_associative_idempotent(steps in history()) {
        let mut cluster = Cluster::new();
        cluster.run(&steps);
        let [x, y, z] = [&cluster.replicas[0], &cluster.replicas[1], &cluster.replicas[2]];
        let (xy, yx) = (merged(x, y), merged(y, x));
        prop_assert_eq!(xy.digest(), yx.digest(), "commutative");
        prop_assert_eq!(
            merged(&xy, z).digest(),
            merged(x, &merged(y, z)).digest(),
            "associative"
        );
        prop_assert!(same(&merged(x, x), x), "idempotent");
        prop_assert!(same(&merged(&xy, y), &xy), "re-applying is a no-op");
        prop_assert!(coverage_is_vouched(&xy, x, y), "coverage of x <- y");
        prop_assert!(coverage_is_vouched(&yx, y, x), "coverage of y <- x");
    }

    #[test]
    fn delta_merge_equals_full_state_merge(steps in history()) {
        let mut cluster = Cluster::new();
        cluster.run(&steps);
        let [x, y] = [&cluster.replicas[0], &cluster.replicas[1]];
        let by_delta = merged(x, y);
        let mut by_full = x.clone();
        let full = y.delta_for(&Summary::default());
        by_full.apply_delta(ms(1_000_000), y.node(), &full).unwrap();
        prop_assert!(same(&by_delta, &by_full));
        // The delta carries no more entries than the full state.
        prop_assert!(y.delta_for(&x.summary()).entry_count() <= full.entry_count());
    }

    #[test]
    fn lossy_reordered_duplicated_delivery_then_anti_entropy_converges(steps in history()) {
        let mut cluster = Cluster::new();
        // A replica that is not a member syncs once, halfway, and comes back
        // after GC: it must get what it missed, removals included.
        let half = steps.len() / 2;
        cluster.run(&steps[..half]);
        let mut late = Replica::new("late".parse().unwrap(), DRIFT);
        let early = cluster.replicas[0].delta_for(&late.summary());
        late.apply_delta(ms(cluster.time_ms), &node(0), &early).unwrap();
        cluster.run(&steps[half..]);
        cluster.anti_entropy(0..=REPLICAS - 1);
        let digest = cluster.replicas[0].digest();
        for replica in &cluster.replicas[..REPLICAS] {
            prop_assert_eq!(replica.digest(), digest);
            prop_assert_eq!(replica.version_vector(), cluster.replicas[0].version_vector());
        }
        // Every acknowledged write is reflected: LWW services, PN-Counters.
        let state = cluster.replicas[0].state();
        for name in 0u8..4 {
            let found = state.service(&format!("s{name}").parse().unwrap()).map(|(spec, version)| (version, spec.replicas));
            let expected = cluster.services.get(&name).and_then(|(hlc, value)| value.map(|replicas| (*hlc, replicas)));
            prop_assert_eq!(found, expected, "service s{}", name);
        }
        for index in 0..REPLICAS {
            for (resource_index, resource) in [Resource::CpuMillis, Resource::MemoryBytes, Resource::Containers].into_iter().enumerate() {
                let expected = cluster.counters.get(&(index, resource_index as u8)).copied().unwrap_or(0);
                prop_assert_eq!(state.resource_used(&node(index), resource), expected);
            }
        }
        // Evict the dead ghost everywhere; then GC must empty the tombstones
        // without changing what is visible.
        let now = cluster.now();
        if let Ok(delta) = cluster.replicas[0].evict_node(now, &node(GHOST)) {
            cluster.pool.push((0, delta));
        }
        cluster.anti_entropy(0..=REPLICAS - 1);
        let visible = cluster.replicas[0].digest();
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                cluster.gossip(from, to);
            }
        }
        cluster.anti_entropy(0..=REPLICAS - 1);
        for replica in &cluster.replicas[..REPLICAS] {
            prop_assert_eq!(replica.digest(), visible);
            prop_assert_eq!(replica.state().tombstone_count(), 0);
        }
        // Every old message arrives again, late: nothing removed comes back.
        for message in 0..cluster.pool.len() {
            for to in 0..REPLICAS {
                cluster.deliver(message, to);
            }
        }
        cluster.anti_entropy(0..=REPLICAS - 1);
        for replica in &cluster.replicas[..REPLICAS] {
            prop_assert_eq!(replica.digest(), visible);
        }
        let now = ms(cluster.time_ms);
        let catch_up = cluster.replicas[0].delta_for(&late.summary());
        late.apply_delta(now, &node(0), &catch_up).unwrap();
        prop_assert_eq!(late.digest(), visible);
    }

    #[test]
    fn a_delta_from_beyond_the_drift_limit_is_refused_and_changes_nothing(
        steps in history(),
        ahead_ms in 1u64..100_000,
    ) {
        let mut cluster = Cluster::new();
        cluster.run(&steps);
        // Replica 1 runs ahead by more than the drift limit and writes.
        let drift_ms = u64::try_from(DRIFT.as_millis()).unwrap();
        let future = ms(cluster.time_ms + drift_ms + ahead_ms);
        let delta = cluster.replicas[1]
            .put_service(future, "skewed".parse().unwrap(), ServiceSpec::new("/images/skewed"))
            .unwrap();
        let pulled = cluster.replicas[1].delta_for(&cluster.replicas[0].summary());
        let receiver = &mut cluster.replicas[0];
        let before = (receiver.digest(), receiver.summary(), receiver.clock().last());
        let now = ms(cluster.time_ms);
        for candidate in [&delta, &pulled] {
            let result = receiver.apply_delta(now, &node(1), candidate);
            // The eager delta may also be stale; either way nothing changes.
            let refused = matches!(result, Err(ApplyError::ClockDrift { .. }) | Err(ApplyError::StaleBase { .. }));
            prop_assert!(refused, "result: {:?}", result);
            prop_assert_eq!(&(receiver.digest(), receiver.summary(), receiver.clock().last()), &before);
        }
        let again = receiver.apply_delta(now, &node(1), &pulled);
        let is_drift = matches!(again, Err(ApplyError::ClockDrift { .. }));
        prop_assert!(is_drift, "pulled delta: {:?}", again);
    }
}
