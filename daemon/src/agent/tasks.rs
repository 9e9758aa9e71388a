//! The node's background tasks: the sync server, the gossip loop and the heartbeat
//! (`spawn_sync_tasks`, which the daemon and the in-process test clusters share), and the
//! systemd watchdog. Each task stops when its `stop` watch flips to true. `ContainerLogs`
//! lets the sync server read this node's container logs through the reconciler (the sync
//! room knows nothing of containers).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
/// metadata refresh) every `heartbeat_every`. Gossip and SWIM share the kept connections.
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
        stopped(stop.clone()),
    ));
}

async fn heartbeat_loop(node: Arc<Node>, every: Duration, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
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
