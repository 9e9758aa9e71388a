//! The SWIM driver: runs one `swim::Swim` on tokio. Packets come from the sync server
//! (`POST /v1/swim`, through a bounded [`SwimInbox`]) and go out as the same request on the
//! kept connections the gossip loop uses, each to the address in its member's identity and
//! only to a peer whose certificate names that member. Timers are kept here in a map by
//! deadline. After every step SWIM's view is handed to the node (`Node::set_peer_states`),
//! which wakes the reconcile loop when the live set changed.
//!
//! A member SWIM sees come back (alive after down, or new) is handed to the gossip loop for
//! an anti-entropy exchange at once, so a heal converges without waiting for a random round.
//!
//! Joining: every `probe_period_ms` the members in the node metadata that SWIM has no entry
//! for are announced to (at most [`ANNOUNCES_PER_TICK_MAX`] a tick, in turn), so a node
//! learns its first peers from the document and the rest from their replies. A member
//! announced to that SWIM still has no entry for after its detection time (probe period,
//! timeout and suspicion) is handed to the node as down: a member that died while this node
//! was away never answers, and its metadata alone would count it live. A stopping
//! daemon does not say it leaves: its containers keep running and the next daemon adopts
//! them, so a restart quicker than SWIM's detection time moves no replica (the restarted
//! daemon is a newer identity that replaces the old one at once).
//!
//! Bounds: the inbox holds [`INBOX_PACKETS_MAX`] packets (a full inbox answers 503 and SWIM
//! counts the packet lost), at most [`SENDS_IN_FLIGHT_MAX`] sends at once (one more is
//! dropped, as a lossy network would), each within the probe timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use shoal_crdt::NodeId;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use super::SyncLimits;
use super::connections::Connections;
use super::wire::PATH_SWIM;
use crate::state::Node;
use crate::state::members::{PeerState, PeerStates, PeerView};
use crate::swim::{Swim, SwimConfig, SwimError, SwimId, SwimTimer, core::check_packet};

/// Packets waiting for the driver.
pub const INBOX_PACKETS_MAX: usize = 256;
/// Packets being sent at once.
pub const SENDS_IN_FLIGHT_MAX: usize = 32;
/// Members announced to per join tick.
pub const ANNOUNCES_PER_TICK_MAX: usize = 4;

/// Why a packet was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Refused(#[from] SwimError),
    #[error("SWIM inbox is full ({INBOX_PACKETS_MAX} packets)")]
    Full,
    #[error("SWIM has stopped on this node")]
    Closed,
}

impl InboxError {
    pub fn status(&self) -> StatusCode {
        match self {
            InboxError::Refused(_) => StatusCode::BAD_REQUEST,
            InboxError::Full | InboxError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Where the sync server hands SWIM packets to the driver.
#[derive(Clone)]
pub struct SwimInbox {
    sender: mpsc::Sender<(NodeId, Bytes)>,
}

impl SwimInbox {
    /// An inbox and the receiving end [`run_swim`] takes.
    pub fn new() -> (SwimInbox, mpsc::Receiver<(NodeId, Bytes)>) {
        let (sender, receiver) = mpsc::channel(INBOX_PACKETS_MAX);
        (SwimInbox { sender }, receiver)
    }

    /// Queues `packet` from the authenticated `peer`, after checking its size and that its
    /// sender is `peer`.
    pub fn deliver(&self, peer: &NodeId, packet: Bytes) -> Result<(), InboxError> {
        check_packet(peer, &packet)?;
        self.sender
            .try_send((peer.clone(), packet))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => InboxError::Full,
                mpsc::error::TrySendError::Closed(_) => InboxError::Closed,
            })
    }
}

/// What the driver needs besides the node and the connections.
#[derive(Debug, Clone)]
pub struct SwimSettings {
    pub swim: SwimConfig,
    /// Seed of SWIM's random choices (the daemon draws it from the OS at start).
    pub seed: u64,
    /// This daemon's start (ms since the Unix epoch): a restart is a newer identity.
    pub started_ms: u64,
}

/// Runs SWIM for `node` until `shutdown`. Each member that
/// comes back (alive again after down, or first seen alive) is sent on `returned`, for an
/// anti-entropy exchange at once.
pub async fn run_swim(
    connections: Arc<Connections>,
    node: Arc<Node>,
    settings: SwimSettings,
    limits: SyncLimits,
    mut inbox: mpsc::Receiver<(NodeId, Bytes)>,
    returned: mpsc::Sender<NodeId>,
    shutdown: impl Future<Output = ()>,
) {
    let me = SwimId::new(node.node_id().clone(), node.address(), settings.started_ms);
    let probe_period = Duration::from_millis(settings.swim.probe_period_ms.max(1));
    let send_timeout = Duration::from_millis(settings.swim.probe_timeout_ms.max(1));
    let detection = Duration::from_millis(
        settings
            .swim
            .probe_period_ms
            .saturating_add(settings.swim.probe_timeout_ms)
            .saturating_add(settings.swim.suspect_to_down_ms),
    );
    let mut driver = Driver {
        swim: Swim::new(me, settings.swim, settings.seed),
        timers: BTreeMap::new(),
        sequence: 0,
        published: None,
        connections,
        limits,
        sends: Arc::new(Semaphore::new(SENDS_IN_FLIGHT_MAX)),
        send_timeout,
        announce_turn: 0,
        unanswered: BTreeMap::new(),
        detection,
        node,
        returned,
    };
    let mut join = tokio::time::interval(probe_period);
    join.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let next_timer = driver.timers.keys().next().map(|(at, _)| *at);
        tokio::select! {
            () = &mut shutdown => break,
            Some((peer, packet)) = inbox.recv() => {
                if let Err(error) = driver.swim.handle_packet(&peer, &packet) {
                    tracing::debug!(%peer, %error, "SWIM packet refused");
                }
            }
            () = sleep_until(next_timer), if next_timer.is_some() => driver.fire_due_timers(),
            _ = join.tick() => driver.join(),
        }
        driver.flush();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Driver {
    swim: Swim,
    /// Pending timer events by (deadline, sequence).
    timers: BTreeMap<(Instant, u64), SwimTimer>,
    sequence: u64,
    /// The view last handed to the node.
    published: Option<PeerStates>,
    connections: Arc<Connections>,
    limits: SyncLimits,
    sends: Arc<Semaphore>,
    send_timeout: Duration,
    announce_turn: usize,
    /// Members of the document SWIM has no entry for, since our first announce to each: one
    /// that never answers within `detection` is published as down (a member that died while
    /// this node was away is never met by SWIM, and its metadata alone would count it live).
    unanswered: BTreeMap<NodeId, (Instant, SocketAddr)>,
    detection: Duration,
    node: Arc<Node>,
    returned: mpsc::Sender<NodeId>,
}

impl Driver {
    fn fire_due_timers(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            if let Err(error) = self.swim.handle_timer(timer) {
                tracing::debug!(%error, "SWIM timer");
            }
        }
    }

    /// Announces to members of the document SWIM has no entry for, a few per tick in turn,
    /// and retunes SWIM for the cluster's size.
    fn join(&mut self) {
        let peers = self.node.peers();
        let members = u32::try_from(peers.len() + 1).unwrap_or(u32::MAX);
        if let Err(error) = self.swim.resize(members) {
            tracing::debug!(%error, "SWIM resize");
        }
        let unknown: Vec<_> = peers
            .into_iter()
            .filter(|peer| !self.swim.knows(&peer.node))
            .collect();
        let unknown_ids: std::collections::BTreeSet<&NodeId> =
            unknown.iter().map(|peer| &peer.node).collect();
        self.unanswered.retain(|node, _| unknown_ids.contains(node));
        if unknown.is_empty() {
            return;
        }
        let now = Instant::now();
        for index in 0..unknown.len().min(ANNOUNCES_PER_TICK_MAX) {
            let peer = &unknown[(self.announce_turn + index) % unknown.len()];
            let to = SwimId::placeholder(peer.node.clone(), peer.address);
            if let Err(error) = self.swim.announce(to) {
                tracing::debug!(peer = %peer.node, %error, "SWIM announce");
            }
            self.unanswered
                .entry(peer.node.clone())
                .or_insert((now, peer.address));
        }
        self.announce_turn = self.announce_turn.wrapping_add(ANNOUNCES_PER_TICK_MAX);
    }

    /// Sends what SWIM produced, schedules its timers and hands a changed view to the node.
    fn flush(&mut self) {
        let outbox = self.swim.take_outbox();
        let now = Instant::now();
        for (after, timer) in outbox.timers {
            self.sequence = self.sequence.wrapping_add(1);
            self.timers.insert((now + after, self.sequence), timer);
        }
        for (to, packet) in outbox.sends {
            self.send(to, packet);
        }
        let mut peers = self.swim.peers();
        let now = Instant::now();
        for (node, (first, address)) in &self.unanswered {
            if now.duration_since(*first) >= self.detection && !peers.contains_key(node) {
                peers.insert(
                    node.clone(),
                    PeerView {
                        state: PeerState::Down,
                        incarnation: 0,
                        address: *address,
                    },
                );
            }
        }
        if self.published.as_ref() == Some(&peers) {
            return;
        }
        for (peer, view) in &peers {
            let was_down = self
                .published
                .as_ref()
                .and_then(|published| published.get(peer))
                .is_none_or(|before| before.state == PeerState::Down);
            if view.state != PeerState::Down && was_down {
                // Full: exchanges are already queued; the next round reaches it anyway.
                let _ = self.returned.try_send(peer.clone());
            }
        }
        self.published = Some(peers.clone());
        self.node.set_peer_states(peers);
    }

    fn send(&self, to: SwimId, packet: Bytes) {
        let metrics = self.node.metrics().clone();
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            tracing::debug!(peer = %to.node(), "SWIM send dropped: too many in flight");
            metrics.swim_packet("dropped");
            return;
        };
        let connections = self.connections.clone();
        let limits = self.limits.clone();
        let timeout = self.send_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let sent = tokio::time::timeout(timeout, async {
                // Behind an exchange on the kept connection rather than beside it on a new
                // one: half the send's time, then a connection of its own.
                let mut lease = connections
                    .lease_waiting(to.address, Some(to.node()), &limits, timeout / 2)
                    .await?;
                let dialed = lease.dialed();
                let result = lease.session().post(PATH_SWIM, packet.to_vec()).await;
                let ok = matches!(&result, Ok(reply) if reply.status == StatusCode::NO_CONTENT);
                lease.finish(ok);
                if ok {
                    metrics.connection_used(dialed);
                }
                result
            })
            .await;
            let ok = match sent {
                Ok(Ok(reply)) if reply.status == StatusCode::NO_CONTENT => true,
                Ok(Ok(reply)) => {
                    tracing::debug!(peer = %to.node(), status = %reply.status, reason = %reply.message(), "SWIM packet refused");
                    false
                }
                Ok(Err(error)) => {
                    tracing::debug!(peer = %to.node(), %error, "SWIM send failed");
                    false
                }
                Err(_) => {
                    tracing::debug!(peer = %to.node(), "SWIM send timed out");
                    false
                }
            };
            metrics.swim_packet(if ok { "sent" } else { "failed" });
        });
    }
}
