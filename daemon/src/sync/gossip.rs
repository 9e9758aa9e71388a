//! The gossip driver: anti-entropy rounds on a jittered interval plus eager push of local
//! changes. Peer choice is [`super::membership::PeerSelector`]; this file only drives it.
//!
//! - Anti-entropy: at start (after the jitter) and then every `interval_ms + jitter`, [`sync_once`] with the chosen targets, each
//!   exchange as its own task, at most one in flight per address (a slow or dead peer never
//!   delays the next round).
//! - Eager push: local changes from `Node::subscribe_changes` go into a bounded queue of
//!   `push_queue_max` deltas; when it is full (or the broadcast lagged) the change is dropped
//!   and counted: anti-entropy delivers it within an interval anyway. A pusher sends each delta
//!   to `push_fanout` live members at random concurrently (ln N + 3 unless configured); a
//!   peer that lacks the delta's base (409) gets a full push-pull instead. A delta whose
//!   encoding exceeds `body_bytes_max` is not pushed (counted as dropped): peers pull it by
//!   anti-entropy, as a snapshot in pieces.
//! - Epidemic push: a peer for which a push held something new forwards it (the body as
//!   received, `hops` one less) to `push_fanout` live members other than the sender, once; so
//!   a change reaches N members in about log N hops, each member sending `push_fanout`
//!   messages per change rather than the writer N - 1. The sync server queues them
//!   ([`super::server::Forwards`]) as soon as the push proved valid and new, before its own
//!   commit is durable (the writer's is; a hop waits for no receiver's disk); the forwarder
//!   here sends them, without retry or fallback (what a member misses, anti-entropy
//!   brings).
//! - Large states: an exchange whose delta does not fit in one body fetches the peer's snapshot
//!   in pieces ([`super::transfer`]); every exchange of this loop shares one
//!   [`TransferGate`], so the node fetches one snapshot at a time.
//! - Connections: one kept per peer and reused by every exchange and push
//!   ([`super::connections`]), so handshakes happen on (re)connect only.
//! - Liveness: a member is live when the node says so (SWIM does not hold it down; without a
//!   SWIM view, its metadata refresh is within `down_after_ms`) or we synced with it
//!   successfully within `down_after_ms`.
//! - A member coming back (SWIM says alive again) is exchanged with at once; if an exchange to
//!   its address was under way (dialed while it was down), as soon as that one fails
//!   ([`super::membership::UnderWay`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_crdt::{Delta, NodeId};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use super::SyncError;
use super::SyncLimits;
use super::client::{forward_with, push_with, sync_once_with};
use super::connections::Connections;
use super::membership::{Member, PeerSelector, Target, UnderWay, automatic_push_fanout};
use super::server::Forward;
use super::transfer::TransferGate;
use crate::state::Node;

/// How many times a local change may be forwarded beyond the members it is pushed to: a
/// bound on the epidemic, far beyond the depth it needs (about log N / log fanout: 2 for 48
/// members at the automatic fanout of 7, 3 for 1,000 at 10).
pub const PUSH_HOPS: u8 = 8;

/// How the gossip loop behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipConfig {
    /// Anti-entropy period.
    pub interval_ms: u64,
    /// Uniform random extra wait per round, from the seeded RNG.
    pub jitter_ms: u64,
    /// Peers per anti-entropy round.
    pub fanout: usize,
    /// Silence after which a member counts as down.
    pub down_after_ms: u64,
    pub rng_seed: u64,
    /// Push local changes to live peers as they happen (else anti-entropy only).
    pub eager_push: bool,
    /// Local changes waiting to be pushed; beyond this they are dropped (and counted).
    pub push_queue_max: usize,
    /// Live members an eager push goes to, and each member forwards a change new to it to;
    /// `None`: [`automatic_push_fanout`] of the cluster's size.
    pub push_fanout: Option<usize>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            jitter_ms: 200,
            fanout: 3,
            down_after_ms: 5_000,
            rng_seed: 0,
            eager_push: true,
            push_queue_max: 256,
            push_fanout: None,
        }
    }
}

/// Counters of the gossip loop, for status and benchmarks.
#[derive(Debug, Default)]
pub struct GossipCounters {
    pub rounds: AtomicU64,
    pub syncs_ok: AtomicU64,
    pub syncs_failed: AtomicU64,
    pub pushes_ok: AtomicU64,
    pub pushes_failed: AtomicU64,
    /// Local changes not pushed eagerly because the queue was full, the broadcast lagged, or
    /// the change does not fit in one body.
    pub pushes_dropped: AtomicU64,
    /// Snapshots fetched in pieces (the delta this node lacked did not fit in one body).
    pub snapshots_fetched: AtomicU64,
}

impl GossipCounters {
    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Runs anti-entropy and eager push until `shutdown` completes; in-flight exchanges are then
/// given `request_timeout_ms` to finish and aborted after that.
pub async fn run_gossip(
    endpoint: quinn::Endpoint,
    node: Arc<Node>,
    cfg: GossipConfig,
    limits: SyncLimits,
    shutdown: impl Future<Output = ()>,
) {
    run_gossip_on(
        Arc::new(Connections::new(endpoint)),
        node,
        cfg,
        limits,
        GossipInputs::default(),
        shutdown,
    )
    .await;
}

/// What other tasks hand the gossip loop.
#[derive(Default)]
pub struct GossipInputs {
    /// Members SWIM saw come back: each gets an exchange at once, not at a random later
    /// round, so a healed partition converges within one round trip of SWIM noticing.
    pub returned: Option<mpsc::Receiver<NodeId>>,
    /// Eager pushes the sync server took that were new here and may go further
    /// ([`super::server::Forwards`]): each goes on to `push_fanout` other live members.
    pub forwards: Option<mpsc::Receiver<Forward>>,
}

/// [`run_gossip`] on `connections` (kept connections shared with SWIM), with `inputs`.
pub async fn run_gossip_on(
    connections: Arc<Connections>,
    node: Arc<Node>,
    cfg: GossipConfig,
    limits: SyncLimits,
    inputs: GossipInputs,
    shutdown: impl Future<Output = ()>,
) {
    let counters = Arc::new(GossipCounters::default());
    run_gossip_with_counters(connections, node, cfg, limits, counters, inputs, shutdown).await;
}

/// [`run_gossip_on`], reporting into `counters`.
pub async fn run_gossip_with_counters(
    connections: Arc<Connections>,
    node: Arc<Node>,
    cfg: GossipConfig,
    limits: SyncLimits,
    counters: Arc<GossipCounters>,
    inputs: GossipInputs,
    shutdown: impl Future<Output = ()>,
) {
    assert!(cfg.fanout > 0, "fanout must be positive");
    assert!(cfg.push_queue_max > 0, "push_queue_max must be positive");
    assert!(cfg.push_fanout != Some(0), "push_fanout must be positive");
    let (stop_sender, stop) = watch::channel(false);
    let selector = Arc::new(std::sync::Mutex::new(PeerSelector::new(cfg.rng_seed)));
    let driver = Driver {
        connections,
        node,
        cfg,
        limits,
        counters: counters.clone(),
        selector,
        transfers: TransferGate::default(),
    };
    let (queue_sender, queue) = mpsc::channel::<Arc<Delta>>(driver.cfg.push_queue_max);
    let changes = driver.node.subscribe_changes();
    let work = async {
        tokio::join!(
            driver.anti_entropy(inputs.returned, stop.clone()),
            driver.forward_changes(changes, queue_sender, stop.clone()),
            driver.pusher(queue, stop.clone()),
            driver.forwarder(inputs.forwards, stop.clone()),
        );
    };
    let stopper = async {
        shutdown.await;
        let _ = stop_sender.send(true);
    };
    tokio::join!(work, stopper);
    tracing::info!(
        rounds = GossipCounters::get(&counters.rounds),
        syncs_ok = GossipCounters::get(&counters.syncs_ok),
        syncs_failed = GossipCounters::get(&counters.syncs_failed),
        pushes_ok = GossipCounters::get(&counters.pushes_ok),
        pushes_failed = GossipCounters::get(&counters.pushes_failed),
        pushes_dropped = GossipCounters::get(&counters.pushes_dropped),
        snapshots_fetched = GossipCounters::get(&counters.snapshots_fetched),
        "gossip stopped"
    );
}

struct Driver {
    /// One kept connection per peer, for exchanges and pushes alike.
    connections: Arc<Connections>,
    node: Arc<Node>,
    cfg: GossipConfig,
    limits: SyncLimits,
    counters: Arc<GossipCounters>,
    selector: Arc<std::sync::Mutex<PeerSelector>>,
    /// One snapshot transfer at a time, across anti-entropy and push fallbacks.
    transfers: TransferGate,
}

/// An exchange's target and how it went.
type Exchanged = (Target, Result<super::SyncStats, SyncError>);

/// The anti-entropy exchanges running as tasks, with the address each is for: one that ends
/// abnormally (a panic) is known by its address too, so it is not under way for good.
#[derive(Default)]
struct ExchangeTasks {
    set: JoinSet<Exchanged>,
    addresses: HashMap<tokio::task::Id, SocketAddr>,
}

impl ExchangeTasks {
    /// The next exchange to end: its address, and its target and result (`None` when the
    /// task did not finish normally).
    async fn join_next(&mut self) -> Option<(SocketAddr, Option<Exchanged>)> {
        loop {
            match self.set.join_next_with_id().await? {
                Ok((id, ended)) => {
                    self.addresses.remove(&id);
                    return Some((ended.0.address, Some(ended)));
                }
                Err(error) => {
                    tracing::warn!(reason = %error, "a sync exchange task ended abnormally");
                    if let Some(address) = self.addresses.remove(&error.id()) {
                        return Some((address, None));
                    }
                }
            }
        }
    }
}

/// The next member SWIM saw come back; never, without SWIM or once it stopped.
async fn next_returned(returned: &mut Option<mpsc::Receiver<NodeId>>) -> Option<NodeId> {
    match returned {
        Some(receiver) => match receiver.recv().await {
            Some(peer) => Some(peer),
            None => {
                *returned = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = stop.wait_for(|stop| *stop).await;
}

impl Driver {
    /// The peer selector; a panic while it was held leaves it consistent (every method
    /// completes its update before returning), so a poisoned lock is taken over.
    fn selector(&self) -> std::sync::MutexGuard<'_, PeerSelector> {
        self.selector
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn members(&self) -> Vec<Member> {
        self.node
            .peers()
            .into_iter()
            .map(|peer| Member {
                live: peer.live
                    || peer
                        .last_sync_ms_ago
                        .is_some_and(|ago| ago < self.cfg.down_after_ms),
                node: peer.node,
                address: peer.address,
            })
            .collect()
    }

    fn note_result(
        &self,
        target: &Target,
        result: &Result<super::SyncStats, SyncError>,
        pushed: bool,
    ) {
        let (ok, failed) = if pushed {
            (&self.counters.pushes_ok, &self.counters.pushes_failed)
        } else {
            (&self.counters.syncs_ok, &self.counters.syncs_failed)
        };
        match result {
            Ok(stats) => {
                GossipCounters::add(ok, 1);
                self.node
                    .metrics()
                    .exchange_done(pushed, stats.bytes_sent, stats.bytes_received);
                self.node.metrics().connection_used(stats.dialed);
                if stats.snapshot_bytes_received > 0 {
                    GossipCounters::add(&self.counters.snapshots_fetched, 1);
                }
            }
            Err(SyncError::SelfConnection { peer }) => {
                self.selector().mark_self(*peer);
                tracing::debug!(address = %peer, "seed is this node itself; not dialing it again");
            }
            Err(error) => {
                GossipCounters::add(failed, 1);
                self.node.metrics().exchange_failed(pushed);
                tracing::debug!(address = %target.address, reason = %error, pushed, "sync failed");
            }
        }
    }

    async fn anti_entropy(
        &self,
        mut returned: Option<mpsc::Receiver<NodeId>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut exchanges = ExchangeTasks::default();
        let mut under_way = UnderWay::default();
        // The first round comes after the jitter only: a starting node catches up at once.
        let mut first = true;
        loop {
            let delay_ms = {
                let mut selector = self.selector();
                let interval_ms = if first { 0 } else { self.cfg.interval_ms };
                first = false;
                selector.next_delay_ms(interval_ms, self.cfg.jitter_ms)
            };
            let sleep = tokio::time::sleep(Duration::from_millis(delay_ms));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = stopped(&mut stop) => {
                        self.finish(exchanges.set).await;
                        return;
                    }
                    () = &mut sleep => break,
                    Some((address, ended)) = exchanges.join_next(), if !exchanges.set.is_empty() => {
                        let succeeded = match ended {
                            Some((target, result)) => {
                                self.note_result(&target, &result, false);
                                result.is_ok()
                            }
                            None => false,
                        };
                        if let Some(heal) = under_way.finished(address, succeeded) {
                            tracing::debug!(
                                address = %heal.address,
                                "member came back during a failed exchange: exchanging at once"
                            );
                            self.spawn_exchange(&mut exchanges, heal);
                        }
                    }
                    Some(peer) = next_returned(&mut returned) => {
                        let address = self
                            .node
                            .peers()
                            .into_iter()
                            .find(|known| known.node == peer)
                            .map(|known| known.address);
                        if let Some(address) = address
                            && under_way.returned(peer.clone(), address)
                        {
                            tracing::debug!(%peer, "member came back: exchanging at once");
                            self.spawn_exchange(&mut exchanges, Target { address, expected: Some(peer) });
                        }
                    }
                }
            }
            GossipCounters::add(&self.counters.rounds, 1);
            let members: Vec<Member> = self
                .members()
                .into_iter()
                .filter(|member| !under_way.contains(&member.address))
                .collect();
            let seeds: Vec<SocketAddr> = self
                .node
                .seed_peers()
                .into_iter()
                .filter(|seed| !under_way.contains(seed))
                .collect();
            let targets = self
                .selector()
                .round_targets(&members, &seeds, self.cfg.fanout);
            for target in targets {
                if under_way.start(target.address) {
                    self.spawn_exchange(&mut exchanges, target);
                }
            }
        }
    }

    fn spawn_exchange(&self, exchanges: &mut ExchangeTasks, target: Target) {
        let connections = self.connections.clone();
        let node = self.node.clone();
        let limits = self.limits.clone();
        let transfers = self.transfers.clone();
        let address = target.address;
        let id = exchanges
            .set
            .spawn(async move {
                let result = sync_once_with(
                    &connections,
                    &node,
                    target.address,
                    target.expected.as_ref(),
                    &limits,
                    &transfers,
                )
                .await;
                (target, result)
            })
            .id();
        exchanges.addresses.insert(id, address);
    }

    async fn finish<T: 'static>(&self, mut tasks: JoinSet<T>) {
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.limits.request_timeout(), drain)
            .await
            .is_err()
        {
            tasks.shutdown().await;
        }
    }

    async fn forward_changes(
        &self,
        mut changes: broadcast::Receiver<Arc<Delta>>,
        queue: mpsc::Sender<Arc<Delta>>,
        mut stop: watch::Receiver<bool>,
    ) {
        if !self.cfg.eager_push {
            return;
        }
        loop {
            let received = tokio::select! {
                () = stopped(&mut stop) => return,
                received = changes.recv() => received,
            };
            match received {
                Ok(delta) => {
                    if queue.try_send(delta).is_err() {
                        GossipCounters::add(&self.counters.pushes_dropped, 1);
                        self.node.metrics().pushes_dropped(1);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    GossipCounters::add(&self.counters.pushes_dropped, missed);
                    self.node.metrics().pushes_dropped(missed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn pusher(&self, mut queue: mpsc::Receiver<Arc<Delta>>, mut stop: watch::Receiver<bool>) {
        loop {
            let delta = tokio::select! {
                () = stopped(&mut stop) => return,
                delta = queue.recv() => match delta {
                    Some(delta) => delta,
                    None => return,
                },
            };
            let bytes = shoal_crdt::encoded_delta_bytes(&delta);
            if bytes > self.limits.body_bytes_max {
                GossipCounters::add(&self.counters.pushes_dropped, 1);
                self.node.metrics().pushes_dropped(1);
                tracing::debug!(
                    bytes,
                    body_bytes_max = self.limits.body_bytes_max,
                    "local change over body_bytes_max: left to anti-entropy"
                );
                continue;
            }
            let targets = {
                let members = self.members();
                let fanout = self.push_fanout(&members);
                self.selector()
                    .push_targets(&members, &self.node.seed_peers(), fanout, None)
            };
            let pushes = targets.iter().map(|target| {
                let delta = delta.clone();
                async move {
                    let result = push_with(
                        &self.connections,
                        &self.node,
                        target.address,
                        target.expected.as_ref(),
                        &delta,
                        PUSH_HOPS,
                        &self.limits,
                        &self.transfers,
                    )
                    .await;
                    (target, result)
                }
            });
            let all = futures::future::join_all(pushes);
            let results = tokio::select! {
                () = stopped(&mut stop) => return,
                results = all => results,
            };
            for (target, result) in results {
                self.note_result(target, &result, true);
            }
        }
    }

    /// The fanout of an eager push: the configured one, else ln N + 3 of the members known.
    fn push_fanout(&self, members: &[Member]) -> usize {
        self.cfg
            .push_fanout
            .unwrap_or_else(|| automatic_push_fanout(members.len() + 1))
    }

    /// Forwards the pushes the sync server took as new (epidemic push): each to
    /// `push_fanout` live members other than the one it came from, all at once, none
    /// retried (a peer that misses one gets it by anti-entropy).
    async fn forwarder(
        &self,
        forwards: Option<mpsc::Receiver<Forward>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(mut forwards) = forwards else {
            return;
        };
        loop {
            let forward = tokio::select! {
                () = stopped(&mut stop) => return,
                forward = forwards.recv() => match forward {
                    Some(forward) => forward,
                    None => return,
                },
            };
            let targets = {
                let members = self.members();
                let fanout = self.push_fanout(&members);
                self.selector()
                    .push_targets(&members, &[], fanout, Some(&forward.from))
            };
            let sends = targets.iter().map(|target| {
                let forward = &forward;
                async move {
                    forward_with(
                        &self.connections,
                        &self.node,
                        target.address,
                        target.expected.as_ref(),
                        &forward.body,
                        forward.hops,
                        &self.limits,
                    )
                    .await
                }
            });
            let all = futures::future::join_all(sends);
            let results = tokio::select! {
                () = stopped(&mut stop) => return,
                results = all => results,
            };
            for result in results {
                match result {
                    Ok(stats) => {
                        self.node.metrics().forward_done("ok");
                        self.node.metrics().connection_used(stats.dialed);
                    }
                    Err(error) => {
                        self.node.metrics().forward_done("failed");
                        tracing::debug!(reason = %error, "forward failed");
                    }
                }
            }
        }
    }
}
