//! Long-lived connections to peers: one QUIC connection per peer address, reused for every
//! exchange and push as HTTP/3 requests, so a handshake (about 16 KB and two signatures per
//! side) happens only when a connection is (re)made, not at every exchange.
//!
//! A kept connection that breaks under an exchange (the peer restarted: its reset, keyed
//! by its private key, says so at once) is replaced and the exchange runs once more on a
//! new connection, so a peer that comes back is reached in the same round.
//!
//! A cached connection is used by one exchange at a time; a second one that finds it busy
//! dials a connection of its own for that exchange and closes it after, so nothing waits
//! behind a slow exchange (a SWIM packet waits up to half its deadline first: a handshake
//! costs a hundred times the packet). A connection is dropped, and the next use dials again, when an
//! exchange on it fails, when it has been idle for nearly the QUIC idle timeout (so it is not
//! used just as the peer drops it), when it is older than `CONNECTION_AGE_MAX_MS` (so a
//! reloaded certificate or CA is in force everywhere within that bound), and when the peer's
//! certificate expires (the session refuses to send). Bounded: at most `CONNECTIONS_MAX`
//! addresses are remembered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_crdt::NodeId;

use super::client::{PeerSession, SyncStats, connect, within};
use super::{IDLE_TIMEOUT_MS, SyncError, SyncLimits};

/// A connection older than this is replaced at its next use (a reloaded certificate or CA is
/// in force on every connection within this bound).
pub const CONNECTION_AGE_MAX_MS: u64 = 900_000;
/// A connection idle this long is replaced at its next use: 15 s short of the QUIC idle
/// timeout, so it is not used just as the peer drops it (and if it is, the exchange is
/// retried on a new one).
pub const CONNECTION_IDLE_REUSE_MS: u64 = IDLE_TIMEOUT_MS as u64 - 15_000;
/// Most peer addresses whose connections are kept.
pub const CONNECTIONS_MAX: usize = 4_096;

struct Cached {
    session: PeerSession,
    opened: Instant,
    used: Instant,
}

impl Cached {
    fn reusable(&self, expected: Option<&NodeId>, now: Instant) -> bool {
        expected.is_none_or(|expected| expected == self.session.peer())
            && now.duration_since(self.used) < Duration::from_millis(CONNECTION_IDLE_REUSE_MS)
            && now.duration_since(self.opened) < Duration::from_millis(CONNECTION_AGE_MAX_MS)
            && self.session.is_open()
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Whether a slot holds a kept connection or is in use by an exchange.
fn occupied(slot: &Slot) -> bool {
    slot.try_lock().map_or(true, |cached| cached.is_some())
}

/// The dialing side's connections, shared by the gossip loop's exchanges and pushes.
pub struct Connections {
    endpoint: quinn::Endpoint,
    reuse: bool,
    slots: std::sync::Mutex<HashMap<SocketAddr, Slot>>,
}

impl Connections {
    /// Connections of `endpoint`, kept and reused.
    pub fn new(endpoint: quinn::Endpoint) -> Connections {
        Connections {
            endpoint,
            reuse: true,
            slots: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A connection per use, closed after it: one exchange on its own.
    pub fn fresh(endpoint: quinn::Endpoint) -> Connections {
        Connections {
            reuse: false,
            ..Connections::new(endpoint)
        }
    }

    /// Connections currently kept or in use (for tests).
    pub fn kept(&self) -> usize {
        self.slots().values().filter(|slot| occupied(slot)).count()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        // Only whole values are inserted or removed under the lock.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn slot(&self, address: SocketAddr) -> Slot {
        let mut slots = self.slots();
        if slots.len() >= CONNECTIONS_MAX && !slots.contains_key(&address) {
            // Forget the addresses with no connection kept and none in use.
            slots.retain(|_, slot| occupied(slot));
        }
        if slots.len() >= CONNECTIONS_MAX && !slots.contains_key(&address) {
            // Still full of live connections: this use gets a slot that is not kept.
            return Slot::default();
        }
        Arc::clone(slots.entry(address).or_default())
    }

    /// A new connection, dialed within the request deadline.
    async fn dial(
        &self,
        address: SocketAddr,
        expected: Option<&NodeId>,
        limits: &SyncLimits,
    ) -> Result<Cached, SyncError> {
        let session = within(
            limits,
            address,
            connect(&self.endpoint, address, expected, limits),
        )
        .await?;
        let now = Instant::now();
        Ok(Cached {
            session,
            opened: now,
            used: now,
        })
    }

    /// A session with the peer at `address` (whose certificate must name `expected`, when
    /// given) for one exchange: the kept connection if it can be reused, else a new one.
    /// Hand it back with [`Lease::finish`].
    pub async fn lease(
        &self,
        address: SocketAddr,
        expected: Option<&NodeId>,
        limits: &SyncLimits,
    ) -> Result<Lease<'_>, SyncError> {
        self.lease_waiting(address, expected, limits, Duration::ZERO)
            .await
    }

    /// [`Connections::lease`] that waits up to `wait` for the kept connection when another
    /// use holds it, and dials only after that: for short messages (SWIM's), for which a
    /// handshake costs far more than waiting behind an exchange.
    pub async fn lease_waiting(
        &self,
        address: SocketAddr,
        expected: Option<&NodeId>,
        limits: &SyncLimits,
        wait: Duration,
    ) -> Result<Lease<'_>, SyncError> {
        let slot = if self.reuse {
            self.slot(address)
        } else {
            Slot::default()
        };
        // In use by another exchange (after `wait`): this one dials a connection of its own.
        let mut guard = match slot.clone().try_lock_owned() {
            Ok(guard) => Some(guard),
            Err(_) if wait.is_zero() => None,
            Err(_) => tokio::time::timeout(wait, slot.lock_owned()).await.ok(),
        };
        let now = Instant::now();
        let kept = guard.as_mut().and_then(|guard| guard.take());
        let kept = match kept {
            Some(old) if old.reusable(expected, now) => Some(old),
            Some(old) => {
                old.session.close();
                None
            }
            None => None,
        };
        let (current, reused) = match kept {
            Some(current) => (current, true),
            None => (self.dial(address, expected, limits).await?, false),
        };
        Ok(Lease {
            connections: self,
            address,
            expected: expected.cloned(),
            limits: limits.clone(),
            keep: self.reuse && guard.is_some(),
            slot: guard,
            udp_before: if reused {
                current.session.udp_bytes()
            } else {
                (0, 0)
            },
            current,
            reused,
        })
    }
}

/// One exchange's use of a connection.
pub struct Lease<'a> {
    connections: &'a Connections,
    address: SocketAddr,
    expected: Option<NodeId>,
    limits: SyncLimits,
    keep: bool,
    slot: Option<tokio::sync::OwnedMutexGuard<Option<Cached>>>,
    current: Cached,
    reused: bool,
    /// UDP bytes (sent, received) on the connection when this use began: none for one
    /// dialed for it, so its handshake counts.
    udp_before: (u64, u64),
}

impl Lease<'_> {
    pub fn session(&mut self) -> &mut PeerSession {
        &mut self.current.session
    }

    /// Writes into `stats` what this use moved on the wire (UDP bytes since it began, a
    /// dialed connection's handshake included) and whether it dialed.
    pub fn account(&self, stats: &mut SyncStats) {
        let (sent, received) = self.current.session.udp_bytes();
        stats.udp_bytes_sent = sent.saturating_sub(self.udp_before.0);
        stats.udp_bytes_received = received.saturating_sub(self.udp_before.1);
        stats.dialed = self.dialed();
    }

    /// Whether this use dialed its connection (a handshake) rather than reusing a kept one.
    pub fn dialed(&self) -> bool {
        !self.reused
    }

    /// After an attempt that failed with `error`: whether to run it once more. Yes when a
    /// kept connection broke under it (the peer restarted or dropped it), after dialing a
    /// new one; no for a new connection or an answer from the peer.
    pub async fn redial_after(&mut self, error: &SyncError) -> Result<bool, SyncError> {
        if !self.reused || !matches!(error, SyncError::Http { .. }) {
            return Ok(false);
        }
        let fresh = self
            .connections
            .dial(self.address, self.expected.as_ref(), &self.limits)
            .await?;
        std::mem::replace(&mut self.current, fresh).session.close();
        self.reused = false;
        self.udp_before = (0, 0);
        Ok(true)
    }

    /// Hands the connection back: kept after a success, closed after a failure.
    pub fn finish(self, succeeded: bool) {
        let Lease {
            keep,
            slot,
            mut current,
            ..
        } = self;
        match slot {
            Some(mut slot) if succeeded && keep => {
                current.used = Instant::now();
                *slot = Some(current);
            }
            _ => current.session.close(),
        }
    }
}
