//! The node's background tasks: the sync server, the gossip loop and the heartbeat
//! (`spawn_sync_tasks`, which the daemon and the in-process test clusters share), and the
//! systemd watchdog. Each task stops when its `stop` watch flips to true. `ContainerLogs`
//! lets the sync server read this node's container logs through the reconciler (the sync
//! room knows nothing of containers).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::notify::Notifier;
use crate::containers::{LogError, Reconciler};
use crate::state::Node;
use crate::sync::connections::Connections;
use crate::sync::wire::{LogPiece, LogQuery};
use crate::sync::{
    self, Forwards, GossipConfig, GossipInputs, Handlers, LogSource, LogSourceError, SwimInbox,
    SwimSettings, SyncLimits,
};

/// The reconciler as the sync server's source of this node's container logs.
pub struct ContainerLogs(pub Arc<Reconciler>);

impl LogSource for ContainerLogs {
    fn read(&self, query: &LogQuery) -> Result<LogPiece, LogSourceError> {
        let from = (query.stdout_offset, query.stderr_offset);
        match self
            .0
            .read_log(query.container.as_str(), from, query.stream_bytes_max)
        {
            Ok(read) => Ok(LogPiece {
                stdout: read.stdout,
                stderr: read.stderr,
                stdout_offset: read.stdout_offset,
                stderr_offset: read.stderr_offset,
                running: read.running,
                more: read.more,
            }),
            Err(LogError::NotOnThisNode { .. } | LogError::UnknownTarget { .. }) => {
                Err(LogSourceError::NotHere(query.container.clone()))
            }
            Err(LogError::Io { path, source }) => Err(LogSourceError::Io { path, source }),
        }
    }
}

/// Members SWIM saw come back, queued for an exchange at once.
const RETURNS_QUEUED_MAX: usize = 64;

/// How often the STATUS= line is refreshed.
const STATUS_INTERVAL_MS: u64 = 2_000;

/// A future that completes when the watch flips to true (or its sender is gone).
pub async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// Spawns what keeps a node in sync on `endpoint`: the sync server (answering other nodes'
/// log requests from `logs`), the gossip loop (anti-entropy and eager push), SWIM membership
/// when `swim` is given (else liveness is judged by heartbeats alone), and a heartbeat (the
/// metadata refresh) every `heartbeat_every` (give or take a quarter with SWIM). Gossip and
/// SWIM share the kept connections.
#[allow(clippy::too_many_arguments)]
pub fn spawn_sync_tasks(
    tasks: &mut JoinSet<()>,
    endpoint: &quinn::Endpoint,
    node: &Arc<Node>,
    gossip: GossipConfig,
    limits: SyncLimits,
    logs: Option<Arc<dyn LogSource>>,
    heartbeat_every: Duration,
    swim: Option<SwimSettings>,
    stop: &watch::Receiver<bool>,
) {
    // With SWIM a heartbeat is a metadata refresh, which may come late: spread them.
    let jitter_seed = swim
        .is_some()
        .then_some(gossip.rng_seed ^ HEARTBEAT_SEED_SALT);
    let connections = Arc::new(Connections::new(endpoint.clone()));
    let (forwards, forwarded) = Forwards::new();
    let mut handlers = Handlers {
        logs,
        swim: None,
        forwards: gossip.eager_push.then_some(forwards),
    };
    let mut returned_members = None;
    if let Some(settings) = swim {
        let (inbox, packets) = SwimInbox::new();
        let (returned, returns) = tokio::sync::mpsc::channel(RETURNS_QUEUED_MAX);
        handlers.swim = Some(inbox);
        returned_members = Some(returns);
        tasks.spawn(sync::run_swim(
            connections.clone(),
            node.clone(),
            settings,
            limits.clone(),
            packets,
            returned,
            stopped(stop.clone()),
        ));
    }
    {
        let endpoint = endpoint.clone();
        let node = node.clone();
        let limits = limits.clone();
        let stop = stopped(stop.clone());
        tasks.spawn(async move {
            if let Err(error) = sync::serve(endpoint, node, limits, handlers, stop).await {
                tracing::error!(%error, "sync server stopped");
            }
        });
    }
    tasks.spawn(sync::run_gossip_on(
        connections,
        node.clone(),
        gossip,
        limits,
        GossipInputs {
            returned: returned_members,
            forwards: Some(forwarded),
        },
        stopped(stop.clone()),
    ));
    tasks.spawn(heartbeat_loop(
        node.clone(),
        heartbeat_every,
        jitter_seed,
        stopped(stop.clone()),
    ));
}

/// Mixed into the gossip's seed for the heartbeat's jitter, so the two draw apart.
const HEARTBEAT_SEED_SALT: u64 = 0x6865_6172_7462_6561;

/// The wait before the next heartbeat: `every`, or with a jitter source `every` give or take
/// a quarter. Nodes of a fleet started together (a reboot after an upgrade) would otherwise
/// write their metadata refreshes in the same second every period: a burst of writes every
/// member receives, during which anti-entropy's compact summaries list so many moved origins
/// that full summaries are sent instead.
fn heartbeat_wait(every: Duration, jitter: Option<&mut ChaCha8Rng>) -> Duration {
    match jitter {
        Some(rng) => {
            let quarter = every / 4;
            every - quarter + rng.gen_range(Duration::ZERO..=quarter * 2)
        }
        None => every,
    }
}

async fn heartbeat_loop(
    node: Arc<Node>,
    every: Duration,
    jitter_seed: Option<u64>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut jitter = jitter_seed.map(ChaCha8Rng::seed_from_u64);
    loop {
        let wait = heartbeat_wait(every, jitter.as_mut());
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let node = node.clone();
        match tokio::task::spawn_blocking(move || node.heartbeat()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "heartbeat failed"),
            Err(error) => tracing::error!(%error, "heartbeat panicked"),
        }
    }
}

/// Refreshes STATUS= and pings the watchdog; a ping is sent only when the node answers, so
/// a wedged node lets systemd restart it.
pub async fn watchdog_loop(
    node: Arc<Node>,
    notifier: Notifier,
    watchdog: Option<Duration>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let status_every = Duration::from_millis(STATUS_INTERVAL_MS);
    let every = watchdog.map_or(status_every, |w| w.min(status_every));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
        }
        let probe = {
            let node = node.clone();
            tokio::task::spawn_blocking(move || node.status_line())
        };
        let answer = tokio::time::timeout(every, probe).await;
        let Ok(Ok(line)) = answer else {
            tracing::warn!("node did not answer the watchdog probe");
            continue;
        };
        if watchdog.is_some() {
            notifier.watchdog();
        }
        if last_status.elapsed() >= status_every {
            notifier.status(&format!("running; {line}"));
            last_status = tokio::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_with_a_jitter_source_spread_over_half_the_period_and_without_one_do_not() {
        let every = Duration::from_secs(30);
        assert_eq!(heartbeat_wait(every, None), every);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let waits: Vec<Duration> = (0..1_000)
            .map(|_| heartbeat_wait(every, Some(&mut rng)))
            .collect();
        let (low, high) = (Duration::from_millis(22_500), Duration::from_millis(37_500));
        assert!(waits.iter().all(|wait| (low..=high).contains(wait)));
        // Spread over the whole range, not bunched: each sixth of it gets some.
        for sixth in 0..6u32 {
            let from = low + (high - low) * sixth / 6;
            let to = low + (high - low) * (sixth + 1) / 6;
            assert!(
                waits.iter().any(|wait| (from..to).contains(wait)),
                "none in {from:?}..{to:?}"
            );
        }
    }
}
