//! Snapshot transfers: how a state too large for one sync body reaches a peer.
//!
//! When the delta a `/v1/sync` caller lacks does not fit in `body_bytes_max`, the server
//! answers 303 and the caller fetches the server's whole state as one encoded `Full` delta,
//! in pieces of at most one body (`GET /v1/snapshot`, see [`super::wire`]), then applies it
//! whole. Why a whole snapshot, fetched in pieces and applied at once, rather than pieces
//! applied one by one: `shoal_crdt`'s `transfer` module (in short: it keeps the version-vector
//! invariant by construction, since the one all-or-nothing apply is the `Full` apply that
//! already exists, and an aborted transfer applied nothing).
//!
//! - Server: [`SnapshotCache`] holds recently built snapshots (encoded once, shared by every
//!   transfer that starts while one is fresh), at most [`SNAPSHOT_CACHE_ENTRIES_MAX`], each
//!   dropped after [`SNAPSHOT_IDLE_MS`] without a read; [`answer`] serves a piece. A transfer
//!   is named by the SHA-256 of its bytes, so a piece can never be taken from another
//!   snapshot, not even after the server restarted. A transfer whose snapshot is gone gets 410
//!   and starts again.
//! - Caller: [`SnapshotDownload`] checks each piece (same transfer and length, the next offset,
//!   at least [`wire::SNAPSHOT_PIECE_BYTES_MIN`] bytes unless it is the last, at most
//!   [`SNAPSHOT_BYTES_MAX`] in all), then the digest of the whole; the whole is decoded in full
//!   and must be a `Full` delta. [`fetch_snapshot`] drives it with one deadline per piece and
//!   applies the result through `Node::apply_remote` (durable, all-or-nothing). A node runs one
//!   transfer at a time ([`TransferGate`]), so joining through several seeds does not hold
//!   several snapshots at once.
//!
//! Memory: the server holds each cached snapshot's bytes; the caller holds the bytes it
//! received, then the decoded delta, then the state it becomes. That is what a one-body
//! transfer of the same state needs too; `daemon/benches/join.rs` measures both.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use shoal_crdt::{Delta, NodeId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::PeerSession;
use super::wire::{
    self, PATH_SNAPSHOT, SnapshotPiece, SnapshotQuery, TransferId, snapshot_piece_bytes_max,
};
use super::{SyncError, SyncLimits};
use crate::state::{Node, STORED_BYTES_MAX};

/// A transfer that starts shares the newest cached snapshot if it was built this recently.
pub const SNAPSHOT_REUSE_MS: u64 = 5_000;
/// A cached snapshot no piece was read from for this long is dropped.
pub const SNAPSHOT_IDLE_MS: u64 = 60_000;
/// Snapshots cached at once. When every one is in use, a new transfer shares the newest
/// (older than [`SNAPSHOT_REUSE_MS`] but still a valid state) instead of evicting one.
pub const SNAPSHOT_CACHE_ENTRIES_MAX: usize = 2;
/// Largest snapshot a node fetches: the largest state it can load from its database.
pub const SNAPSHOT_BYTES_MAX: usize = STORED_BYTES_MAX;
/// Snapshots one push-pull may fetch before it gives up (the state grew by more than a body
/// while the first one was fetched); the next round tries again.
pub const SNAPSHOT_TRANSFERS_PER_SYNC_MAX: usize = 2;

/// Why a snapshot transfer failed on the caller's side. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the snapshot is {total} bytes, more than the limit of {max} bytes")]
    TooLarge { total: u64, max: usize },
    #[error("the snapshot is empty")]
    Empty,
    #[error(
        "piece of transfer {found} ({found_total} bytes) in transfer {expected} ({expected_total} bytes)"
    )]
    Mismatch {
        expected: TransferId,
        expected_total: u64,
        found: TransferId,
        found_total: u64,
    },
    #[error("piece at offset {found}, expected offset {expected}")]
    OutOfOrder { expected: u64, found: u64 },
    #[error(
        "piece of {bytes} bytes at offset {offset} is neither the last nor at least {min} bytes"
    )]
    TooSmall { bytes: u64, offset: u64, min: u64 },
    #[error("only {received} of {total} bytes received")]
    Incomplete { received: u64, total: u64 },
    #[error("the bytes received have digest {found}, not the transfer's {expected}")]
    DigestMismatch {
        expected: TransferId,
        found: TransferId,
    },
    #[error("{0}")]
    Decode(wire::WireError),
    #[error("a snapshot transfer must carry a full delta, not dot ranges")]
    NotFull,
    #[error("the peer serves snapshot {0} again, which this node has just applied")]
    Repeated(TransferId),
    #[error("a snapshot transfer from another peer is in progress")]
    Busy,
}

/// A refusal of `GET /v1/snapshot`: the status and the reason for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRefusal {
    pub status: StatusCode,
    pub message: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section below leaves its data consistent before it can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Clone)]
struct CachedSnapshot {
    id: TransferId,
    bytes: Bytes,
    built: Instant,
    used: Instant,
}

/// The snapshots a server is serving (see the module comment). Time comes in as an argument.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    /// Held while a snapshot is built, so concurrent starts build it once.
    building: Mutex<()>,
    entries: Mutex<Vec<CachedSnapshot>>,
}

fn since_ms(now: Instant, then: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(then).as_millis()).unwrap_or(u64::MAX)
}

impl SnapshotCache {
    pub fn new() -> SnapshotCache {
        SnapshotCache::default()
    }

    /// The snapshot a transfer starts on: the newest cached one if it was built within
    /// [`SNAPSHOT_REUSE_MS`] or every slot is in use, else a new one from `build` (idle ones
    /// are dropped first). `now` is read again after waiting for a concurrent build. Blocks
    /// while a snapshot is built: call it off the async workers.
    pub fn start(
        &self,
        now: impl Fn() -> Instant,
        build: impl FnOnce() -> Vec<u8>,
    ) -> (TransferId, Bytes) {
        let _building = lock(&self.building);
        {
            let at = now();
            let mut entries = lock(&self.entries);
            entries.retain(|entry| since_ms(at, entry.used) < SNAPSHOT_IDLE_MS);
            let full = entries.len() >= SNAPSHOT_CACHE_ENTRIES_MAX;
            if let Some(newest) = entries.iter_mut().max_by_key(|entry| entry.built)
                && (full || since_ms(at, newest.built) <= SNAPSHOT_REUSE_MS)
            {
                newest.used = at;
                return (newest.id, newest.bytes.clone());
            }
        }
        let bytes = Bytes::from(build());
        let id = TransferId::of(&bytes);
        let at = now();
        let mut entries = lock(&self.entries);
        entries.retain(|entry| entry.id != id && since_ms(at, entry.used) < SNAPSHOT_IDLE_MS);
        if entries.len() >= SNAPSHOT_CACHE_ENTRIES_MAX
            && let Some(oldest) = entries
                .iter()
                .enumerate()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(index, _)| index)
        {
            entries.remove(oldest);
        }
        entries.push(CachedSnapshot {
            id,
            bytes: bytes.clone(),
            built: at,
            used: at,
        });
        (id, bytes)
    }

    /// The bytes of transfer `id`, if still held; marks it used at `now`.
    pub fn get(&self, id: &TransferId, now: Instant) -> Option<Bytes> {
        let mut entries = lock(&self.entries);
        let entry = entries.iter_mut().find(|entry| &entry.id == id)?;
        entry.used = now;
        Some(entry.bytes.clone())
    }

    /// The transfers held, oldest build first.
    pub fn transfers(&self) -> Vec<TransferId> {
        let mut entries = lock(&self.entries).clone();
        entries.sort_by_key(|entry| entry.built);
        entries.into_iter().map(|entry| entry.id).collect()
    }
}

/// Answers `GET /v1/snapshot` with `query`: starts or joins a transfer of `node`'s state, or
/// continues one, and returns the encoded [`SnapshotPiece`], capped so it fits in
/// `body_bytes_max`.
pub async fn answer(
    cache: Arc<SnapshotCache>,
    node: Arc<Node>,
    query: SnapshotQuery,
    body_bytes_max: usize,
) -> Result<Vec<u8>, TransferRefusal> {
    let (id, bytes) = match query.transfer {
        None => tokio::task::spawn_blocking(move || {
            cache.start(Instant::now, || node.snapshot_transfer_bytes())
        })
        .await
        .map_err(|error| TransferRefusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("building the snapshot failed: {error}"),
        })?,
        Some(id) => {
            let bytes = cache.get(&id, Instant::now()).ok_or_else(|| TransferRefusal {
                status: StatusCode::GONE,
                message: format!(
                    "snapshot transfer {id} is no longer held here; start again without transfer="
                ),
            })?;
            (id, bytes)
        }
    };
    let total = bytes.len() as u64;
    if query.offset > total {
        return Err(TransferRefusal {
            status: StatusCode::RANGE_NOT_SATISFIABLE,
            message: format!(
                "offset {} is past the end of snapshot transfer {id} ({total} bytes)",
                query.offset
            ),
        });
    }
    let length = query
        .bytes_max
        .min(snapshot_piece_bytes_max(body_bytes_max))
        .min(total - query.offset);
    // Both fit in usize: they are at most the length of bytes held in memory.
    let start = query.offset as usize;
    let end = start + length as usize;
    let piece = SnapshotPiece {
        transfer: id,
        total_bytes: total,
        offset: query.offset,
        data: bytes[start..end].to_vec(),
    };
    let body = wire::encode_snapshot_piece(&piece);
    assert!(
        body.len() <= body_bytes_max.max(wire::SNAPSHOT_PIECE_OVERHEAD_BYTES + 1),
        "a capped snapshot piece of {} bytes exceeds body_bytes_max {body_bytes_max}",
        body.len()
    );
    Ok(body)
}

/// The caller's side of one transfer: the pieces received so far, checked as they come.
#[derive(Debug)]
pub struct SnapshotDownload {
    transfer: Option<(TransferId, u64)>,
    bytes: Vec<u8>,
    bytes_max: u64,
    pieces: u64,
}

impl SnapshotDownload {
    /// A transfer that asks for pieces that fit in `body_bytes_max`.
    pub fn new(body_bytes_max: usize) -> SnapshotDownload {
        SnapshotDownload {
            transfer: None,
            bytes: Vec::new(),
            bytes_max: snapshot_piece_bytes_max(body_bytes_max),
            pieces: 0,
        }
    }

    /// The request for the next piece.
    pub fn next_query(&self) -> SnapshotQuery {
        SnapshotQuery {
            transfer: self.transfer.map(|(id, _)| id),
            offset: self.bytes.len() as u64,
            bytes_max: self.bytes_max,
        }
    }

    /// Most bytes a piece may hold.
    pub fn bytes_max(&self) -> u64 {
        self.bytes_max
    }

    /// Takes the next piece; `Ok(true)` once the snapshot is complete. A refused piece
    /// changes nothing.
    pub fn accept(&mut self, piece: SnapshotPiece) -> Result<bool, TransferError> {
        let (id, total) = match self.transfer {
            Some((id, total)) => {
                if piece.transfer != id || piece.total_bytes != total {
                    return Err(TransferError::Mismatch {
                        expected: id,
                        expected_total: total,
                        found: piece.transfer,
                        found_total: piece.total_bytes,
                    });
                }
                (id, total)
            }
            None => {
                if piece.total_bytes > SNAPSHOT_BYTES_MAX as u64 {
                    return Err(TransferError::TooLarge {
                        total: piece.total_bytes,
                        max: SNAPSHOT_BYTES_MAX,
                    });
                }
                if piece.total_bytes == 0 {
                    return Err(TransferError::Empty);
                }
                (piece.transfer, piece.total_bytes)
            }
        };
        let received = self.bytes.len() as u64;
        if piece.offset != received {
            return Err(TransferError::OutOfOrder {
                expected: received,
                found: piece.offset,
            });
        }
        let length = piece.data.len() as u64;
        let end = received.saturating_add(length);
        let min = wire::SNAPSHOT_PIECE_BYTES_MIN.min(self.bytes_max);
        if end > total || (end < total && length < min) {
            return Err(TransferError::TooSmall {
                bytes: length,
                offset: piece.offset,
                min,
            });
        }
        if self.transfer.is_none() {
            // Address space only: pages are touched as the pieces arrive.
            self.bytes.reserve_exact(total as usize);
            self.transfer = Some((id, total));
        }
        self.bytes.extend_from_slice(&piece.data);
        self.pieces += 1;
        Ok(end == total)
    }

    /// Pieces taken so far.
    pub fn pieces(&self) -> u64 {
        self.pieces
    }

    /// Snapshot bytes taken so far.
    pub fn received_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The transfer, once its first piece arrived.
    pub fn transfer(&self) -> Option<TransferId> {
        self.transfer.map(|(id, _)| id)
    }

    /// Checks the digest of the whole, decodes it in full and returns the `Full` delta.
    pub fn finish(self) -> Result<(TransferId, Delta), TransferError> {
        let Some((id, total)) = self.transfer else {
            return Err(TransferError::Incomplete {
                received: 0,
                total: 0,
            });
        };
        let received = self.bytes.len() as u64;
        if received != total {
            return Err(TransferError::Incomplete { received, total });
        }
        let found = TransferId::of(&self.bytes);
        if found != id {
            return Err(TransferError::DigestMismatch {
                expected: id,
                found,
            });
        }
        let delta =
            wire::decode_delta(&self.bytes, SNAPSHOT_BYTES_MAX).map_err(TransferError::Decode)?;
        if !delta.is_full() {
            return Err(TransferError::NotFull);
        }
        Ok((id, delta))
    }
}

/// Allows one snapshot transfer at a time per node. Clones share the one permit.
#[derive(Debug, Clone)]
pub struct TransferGate(Arc<Semaphore>);

impl Default for TransferGate {
    fn default() -> Self {
        TransferGate(Arc::new(Semaphore::new(1)))
    }
}

impl TransferGate {
    /// The permit, unless a transfer holds it.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

/// What [`fetch_snapshot`] moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub transfer: TransferId,
    /// Bytes of the encoded snapshot.
    pub bytes: u64,
    pub pieces: u64,
    pub entries: usize,
}

/// Fetches the snapshot of the peer of `session` in pieces, each request with its own
/// `request_timeout_ms`, and applies it whole, durably, through `Node::apply_remote`.
/// `last` is the transfer this exchange applied before, if any: the peer serving it again is
/// an error (its cached snapshot is older than what it now says we lack). Refused when another
/// transfer holds `gate`. On any error nothing was applied.
pub async fn fetch_snapshot(
    session: &mut PeerSession,
    node: &Arc<Node>,
    limits: &SyncLimits,
    gate: &TransferGate,
    last: Option<TransferId>,
) -> Result<Fetched, SyncError> {
    let peer_address = session.address();
    let failed = |source| SyncError::Snapshot {
        peer: peer_address,
        source,
    };
    let _permit = gate
        .try_enter()
        .ok_or_else(|| failed(TransferError::Busy))?;
    let mut download = SnapshotDownload::new(limits.body_bytes_max);
    loop {
        let path = download.next_query().path_and_query();
        let request = session.get(&path);
        let reply = tokio::time::timeout(limits.request_timeout(), request)
            .await
            .map_err(|_| SyncError::Timeout {
                peer: peer_address,
                timeout_ms: limits.request_timeout_ms,
            })??;
        if reply.status != StatusCode::OK {
            return Err(SyncError::Status {
                peer: peer_address,
                path: PATH_SNAPSHOT,
                status: reply.status.as_u16(),
                message: reply.message(),
            });
        }
        let piece = wire::decode_snapshot_piece(
            &reply.body,
            session.body_bytes_max(),
            download.bytes_max(),
        )
        .map_err(|source| SyncError::Decode {
            peer: peer_address,
            source,
        })?;
        if download.transfer().is_none() && Some(piece.transfer) == last {
            return Err(failed(TransferError::Repeated(piece.transfer)));
        }
        if download.accept(piece).map_err(failed)? {
            break;
        }
    }
    let (pieces, bytes) = (download.pieces(), download.received_bytes());
    let (transfer, delta) = download.finish().map_err(failed)?;
    let entries = delta.entry_count();
    apply(node, session.peer(), delta).await?;
    tracing::info!(
        peer = %session.peer(),
        %transfer,
        bytes,
        pieces,
        entries,
        "applied a snapshot fetched in pieces"
    );
    Ok(Fetched {
        transfer,
        bytes,
        pieces,
        entries,
    })
}

async fn apply(node: &Arc<Node>, peer: &NodeId, delta: Delta) -> Result<(), SyncError> {
    let apply_error = |reason: String| SyncError::Apply {
        peer: peer.clone(),
        reason,
    };
    let node = node.clone();
    let from = peer.clone();
    // apply_remote decodes nothing but commits to redb (fsync): off the async workers.
    tokio::task::spawn_blocking(move || node.apply_remote(&from, delta))
        .await
        .map_err(|error| apply_error(error.to_string()))?
        .map(|_| ())
        .map_err(|error| apply_error(error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use super::*;
    use shoal_crdt::{Replica, ServiceSpec, codec};

    /// A clock for the cache that the test moves.
    struct TestClock {
        origin: Instant,
        ms: Cell<u64>,
    }

    impl TestClock {
        fn new() -> TestClock {
            TestClock {
                origin: Instant::now(),
                ms: Cell::new(0),
            }
        }

        fn now(&self) -> Instant {
            self.origin + Duration::from_millis(self.ms.get())
        }

        fn advance(&self, ms: u64) {
            self.ms.set(self.ms.get() + ms);
        }
    }

    fn start(cache: &SnapshotCache, clock: &TestClock, content: &str) -> TransferId {
        cache
            .start(|| clock.now(), || content.as_bytes().to_vec())
            .0
    }

    #[test]
    fn the_cache_shares_fresh_snapshots_and_stays_bounded() {
        let clock = TestClock::new();
        let cache = SnapshotCache::new();
        let first = start(&cache, &clock, "state one");
        assert_eq!(first, TransferId::of(b"state one"));
        // Within the reuse window a new transfer shares it, whatever the state is now.
        clock.advance(SNAPSHOT_REUSE_MS);
        assert_eq!(start(&cache, &clock, "state two"), first);
        // After it, a new snapshot is built beside the old one.
        clock.advance(1);
        let second = start(&cache, &clock, "state two");
        assert_eq!(cache.transfers(), vec![first, second]);
        // Both slots in use: a stale transfer shares the newest rather than evict one.
        clock.advance(SNAPSHOT_REUSE_MS + 1);
        assert!(cache.get(&first, clock.now()).is_some());
        assert_eq!(start(&cache, &clock, "state three"), second);
        assert_eq!(cache.transfers(), vec![first, second]);
        // An idle entry is dropped, which makes room for a new build.
        clock.advance(SNAPSHOT_IDLE_MS - 1);
        assert!(cache.get(&second, clock.now()).is_some());
        clock.advance(1);
        let third = start(&cache, &clock, "state three");
        assert_eq!(cache.transfers(), vec![second, third]);
        assert!(cache.get(&first, clock.now()).is_none());
        // Second idles out while third is still held; the state did not change, so the new
        // build has third's bytes and stays one entry.
        clock.advance(SNAPSHOT_IDLE_MS - 1);
        assert_eq!(start(&cache, &clock, "state three"), third);
        assert_eq!(cache.transfers(), vec![third]);
    }

    fn snapshot_bytes(services: usize) -> Vec<u8> {
        let mut replica = Replica::new("seed".parse().unwrap(), Duration::from_secs(1));
        let now = shoal_crdt::NTP64::from(Duration::from_millis(1));
        for index in 0..services {
            replica
                .put_service(
                    now,
                    format!("web-{index}").parse().unwrap(),
                    ServiceSpec::new(format!("/images/web-{index}")),
                )
                .unwrap();
        }
        codec::encode_delta(&replica.full_delta())
    }

    fn pieces(bytes: &[u8], size: usize) -> Vec<SnapshotPiece> {
        let transfer = TransferId::of(bytes);
        bytes
            .chunks(size)
            .enumerate()
            .map(|(index, data)| SnapshotPiece {
                transfer,
                total_bytes: bytes.len() as u64,
                offset: (index * size) as u64,
                data: data.to_vec(),
            })
            .collect()
    }

    #[test]
    fn a_download_reassembles_checks_and_decodes_the_whole() {
        let bytes = snapshot_bytes(100);
        let size = 2048;
        let mut download = SnapshotDownload::new(size + wire::SNAPSHOT_PIECE_OVERHEAD_BYTES);
        assert_eq!(download.bytes_max(), size as u64);
        let all = pieces(&bytes, size);
        assert!(all.len() > 2);
        for (index, piece) in all.iter().enumerate() {
            assert_eq!(download.next_query().offset, piece.offset);
            assert_eq!(
                download.next_query().transfer,
                (index > 0).then_some(piece.transfer)
            );
            assert_eq!(
                download.accept(piece.clone()).unwrap(),
                index + 1 == all.len()
            );
        }
        let (id, delta) = download.finish().unwrap();
        assert_eq!(id, TransferId::of(&bytes));
        assert!(delta.is_full());
        assert_eq!(delta.entry_count(), 100);
    }

    #[test]
    fn bad_pieces_are_refused_and_change_nothing() {
        let bytes = snapshot_bytes(100);
        let size = 2048;
        let all = pieces(&bytes, size);
        let fresh = || SnapshotDownload::new(size + wire::SNAPSHOT_PIECE_OVERHEAD_BYTES);
        let check = |download: &mut SnapshotDownload, piece: SnapshotPiece, fragment: &str| {
            let before = (download.next_query(), download.pieces());
            let error = download.accept(piece).unwrap_err().to_string();
            assert!(error.contains(fragment), "{error:?} lacks {fragment:?}");
            assert_eq!((download.next_query(), download.pieces()), before);
        };
        let mut download = fresh();
        download.accept(all[0].clone()).unwrap();
        check(&mut download, all[2].clone(), "expected offset 2048");
        let mut other = all[1].clone();
        other.transfer = TransferId([7; 32]);
        check(&mut download, other, "in transfer");
        let mut longer = all[1].clone();
        longer.total_bytes += 1;
        check(&mut download, longer, "in transfer");
        let mut small = all[1].clone();
        small.data.truncate(10);
        check(
            &mut download,
            small,
            "neither the last nor at least 1024 bytes",
        );
        let mut first = fresh();
        let mut huge = all[0].clone();
        huge.total_bytes = SNAPSHOT_BYTES_MAX as u64 + 1;
        check(&mut first, huge, "more than the limit");
        // A complete download whose bytes do not hash to the transfer id is refused whole.
        let mut forged = fresh();
        for mut piece in all.clone() {
            if piece.offset == 0 {
                piece.data[10] ^= 1;
            }
            forged.accept(piece).unwrap();
        }
        let error = forged.finish().unwrap_err().to_string();
        assert!(error.contains("digest"), "{error}");
        // An incomplete one is refused.
        let mut partial = fresh();
        partial.accept(all[0].clone()).unwrap();
        let error = partial.finish().unwrap_err().to_string();
        assert!(error.contains("only 2048 of"), "{error}");
        // Bytes that are no delta, or a delta of ranges, are refused after reassembly.
        for (body, fragment) in [
            (b"not a delta at all".to_vec(), "magic"),
            (
                codec::encode_delta(
                    &Replica::new("x".parse().unwrap(), Duration::from_secs(1))
                        .delta_for(&Default::default()),
                ),
                "full delta",
            ),
        ] {
            let mut download = fresh();
            for piece in pieces(&body, size) {
                download.accept(piece).unwrap();
            }
            let error = download.finish().unwrap_err().to_string();
            assert!(error.contains(fragment), "{error:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn one_transfer_at_a_time() {
        let gate = TransferGate::default();
        let held = gate.try_enter().unwrap();
        assert!(gate.clone().try_enter().is_none());
        drop(held);
        assert!(gate.try_enter().is_some());
    }
}
