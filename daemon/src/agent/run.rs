//! The daemon's life: load the state, bind the HTTP/3 endpoint and the API socket, tell
//! systemd READY=1, run the sync server, gossip, heartbeat, API, reconcile and watchdog
//! tasks, and on shutdown stop them within a bound and close the database.
//!
//! Order matters: READY=1 is sent only after the state is loaded and the listeners (sync,
//! API and, when configured, metrics) are bound, so `systemctl start` returning means the
//! node answers. At shutdown, STOPPING=1 is sent first, then every task is told to stop
//! through one watch channel; tasks get `SHUTDOWN_GRACE_MS` to finish in-flight work and
//! are aborted after that. The database is closed when the last `Arc<Node>` is dropped,
//! which `run` checks before returning.
//!
//! SIGHUP reloads the TLS files (see `reload`); its handler is installed first thing, so a
//! SIGHUP never kills the daemon by the default action once `run` has begun.

use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_crdt::Capacity;
use shoal_oci::network::{ContainerNetwork, NftFirewall, NodeNetwork};
use shoal_oci::{ImageStore, LibcontainerRuntime, RuntimeSettings};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::config::{Config, TlsCheckError};
use super::notify::{self, Notifier};
use super::reload::{self, CertificateReloader};
use super::sampling;
use super::tasks::{self, stopped};
use crate::api;
use crate::containers::{Executor, LogPaths, ReconcileSettings, Reconciler};
use crate::metrics::{self, Metrics};
use crate::schedule::PlannerSettings;
use crate::schedule::plan::STARTS_PER_PASS_MAX;
use crate::state::{Clock, Node, NodeError, NodeOptions, SystemClock};
use crate::swim::{Dissemination, SwimConfig};
use crate::sync::{self, GossipConfig, SwimSettings, SyncLimits, TlsHandle};

/// Time given to tasks to finish after shutdown begins, before they are aborted.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Concurrent sync connections served. Peers keep their connections (one each, plus one
/// for an exchange that finds it busy), so this bounds the fleet a node serves at once:
/// 2,048 leaves room for a thousand peers. An idle connection costs a few KiB.
pub const SYNC_CONNECTIONS_MAX: usize = 2_048;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Tls(#[from] TlsCheckError),
    #[error("state_dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("listen {listen}: {source}")]
    Bind {
        listen: std::net::SocketAddr,
        #[source]
        source: sync::SyncError,
    },
    #[error("api: {0}")]
    Api(#[from] api::ApiError),
    #[error("container runtime {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("{what} panicked: {message}")]
    Panicked { what: &'static str, message: String },
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::serve::ServeError),
}

/// A random seed for the gossip, the planner's container ids and the node's incarnation: the
/// only place the daemon takes randomness from the host.
fn rng_seed() -> u64 {
    rand::random()
}

/// SWIM's settings from the config; the start time orders this daemon's identity after
/// every earlier start of it.
fn swim_settings(config: &Config) -> SwimSettings {
    let membership = &config.membership;
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    SwimSettings {
        swim: SwimConfig {
            probe_period_ms: membership.probe_period_ms,
            probe_timeout_ms: membership.probe_timeout_ms,
            suspect_to_down_ms: membership.suspect_to_down_ms,
            // Remembered down for longer than its metadata counts it live, which in a large
            // cluster is beyond down_after_ms (refreshes come further apart): until it is
            // evicted from the document.
            forget_down_after_ms: config
                .sync
                .evict_after_ms
                .saturating_add(config.sync.down_after_ms),
            announce_down_every_ms: membership.probe_period_ms.saturating_mul(2),
            dissemination: Dissemination::DAEMON,
            cluster_size: 1,
        },
        seed: rng_seed(),
        started_ms,
    }
}

/// Runs the daemon until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(RunError::Signal)?;
    let tls = TlsHandle::new(config.load_tls()?);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&config.state_dir)
        .map_err(|source| RunError::StateDir {
            path: config.state_dir.clone(),
            source,
        })?;

    let (cpu_millis, memory_bytes) = config.effective_capacity();
    let mut options = NodeOptions::new(
        config.node_name.clone(),
        config.database_path(),
        config.advertised_address(),
    );
    options.max_clock_drift = Duration::from_millis(config.sync.max_clock_drift_ms);
    options.seeds = config.peers.clone();
    options.capacity = Capacity {
        cpu_millis,
        memory_bytes,
    };
    options.down_after_ms = config.sync.down_after_ms;
    options.evict_after_ms = config.sync.evict_after_ms;
    options.subnet = config.containers.subnet;
    options.labels = config.labels.clone();
    // A new incarnation at every start: another daemon with this name writes another one.
    options.incarnation = rng_seed();
    // The daemon's one metrics handle; every room that records reaches it through the node.
    let metrics_handle = Arc::new(Metrics::new());
    options.metrics = metrics_handle.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let node = Arc::new(
        tokio::task::spawn_blocking(move || Node::open(options, clock))
            .await
            .map_err(|error| RunError::Panicked {
                what: "loading the state",
                message: error.to_string(),
            })??,
    );
    tracing::info!(node = %node.node_id(), digest = %hex::encode(node.digest()), "state loaded");

    let endpoint =
        sync::bind_reloadable_endpoint(config.listen, &tls).map_err(|source| RunError::Bind {
            listen: config.listen,
            source,
        })?;
    let api_socket = config.api_socket();
    let api_listener = api::server::bind(&api_socket)?;
    let metrics_listener = match config.metrics.listen {
        Some(address) => Some(metrics::serve::bind(address).await?),
        None => None,
    };

    // Our metadata is in the state before anyone can ask for it.
    {
        let node = node.clone();
        tokio::task::spawn_blocking(move || node.heartbeat())
            .await
            .map_err(|error| RunError::Panicked {
                what: "the first heartbeat",
                message: error.to_string(),
            })??;
    }

    let containers = if config.containers.enabled {
        Some(open_containers(&config, node.clone()).await?)
    } else {
        tracing::info!("containers disabled (containers.enabled = false)");
        None
    };

    let (stop_sender, stop_receiver) = watch::channel(false);
    let limits = SyncLimits {
        body_bytes_max: config.sync.body_bytes_max,
        request_timeout_ms: config.sync.request_timeout_ms,
        connections_max: SYNC_CONNECTIONS_MAX,
    };
    let gossip = GossipConfig {
        interval_ms: config.sync.interval_ms,
        jitter_ms: config.sync.jitter_ms,
        fanout: config.sync.fanout,
        // Peers SWIM counts live are chosen; one it has no entry for is tried until its
        // metadata is this old, or for SWIM's detection time after the last good exchange.
        down_after_ms: config.membership.detection_ms(),
        rng_seed: rng_seed(),
        eager_push: config.sync.eager_push,
        push_fanout: config.sync.push_fanout,
        ..GossipConfig::default()
    };
    let mut tasks = JoinSet::new();
    let log_source = containers
        .clone()
        .map(|reconciler| Arc::new(tasks::ContainerLogs(reconciler)) as Arc<dyn sync::LogSource>);
    // `shoal logs` of other nodes' containers dials them through this node's own endpoint.
    let peers = api::server::PeerAccess {
        endpoint: endpoint.clone(),
        limits: limits.clone(),
        tls: tls.clone(),
    };
    tasks::spawn_sync_tasks(
        &mut tasks,
        &endpoint,
        &node,
        gossip,
        limits,
        log_source,
        Duration::from_millis(config.sync.heartbeat_interval_ms),
        Some(swim_settings(&config)),
        &stop_receiver,
    );
    tasks.spawn(api::server::serve(
        api_listener,
        node.clone(),
        containers.clone(),
        Some(peers),
        stopped(stop_receiver.clone()),
    ));
    if let Some(containers) = &containers {
        tasks.spawn(containers.clone().run(stopped(stop_receiver.clone())));
    }
    if let Some(listener) = metrics_listener {
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "metrics endpoint listening: GET /metrics");
        }
        let sampled = node.clone();
        let sample: metrics::serve::Sample =
            Arc::new(move |metrics: &Metrics| sampling::sample(&sampled, metrics));
        tasks.spawn(metrics::serve::serve(
            listener,
            metrics_handle,
            sample,
            stopped(stop_receiver.clone()),
        ));
    }
    let notifier = Notifier;
    tasks.spawn(reload::reload_loop(
        CertificateReloader::new(tls.clone(), config.tls.clone()),
        hangups,
        notifier,
        stopped(stop_receiver.clone()),
    ));
    tasks.spawn(tasks::watchdog_loop(
        node.clone(),
        notifier,
        notify::watchdog_interval(),
        stopped(stop_receiver.clone()),
    ));

    notifier.ready();
    notifier.status(&format!("running; {}", node.status_line()));
    tracing::info!(
        listen = %config.listen,
        api = %api_socket.display(),
        "shoal daemon ready"
    );

    shutdown.await;
    tracing::info!("shutting down");
    notifier.stopping();
    notifier.status("stopping");
    let _ = stop_sender.send(true);
    let grace = tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => {
                tracing::warn!(tasks = tasks.len(), "tasks did not stop in time; aborting them");
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_millis(1_000), endpoint.wait_idle()).await;
    drop(endpoint);
    let _ = std::fs::remove_file(&api_socket);
    // Containers keep running; the next daemon adopts them.
    drop(containers);
    // Every task has ended, so this is the last reference: dropping it closes redb.
    let references = Arc::strong_count(&node);
    if references != 1 {
        tracing::warn!(references, "node still referenced at shutdown");
    }
    drop(node);
    tracing::info!("stopped");
    Ok(())
}

/// Opens the container runtime (adopting running and ended containers), the
/// image store, the network, and the reconciler that drives them.
async fn open_containers(config: &Config, node: Arc<Node>) -> Result<Arc<Reconciler>, RunError> {
    let runtime_dir = config.runtime_dir();
    let mut runtime_settings = RuntimeSettings::new(&runtime_dir);
    runtime_settings.log_bytes_max = config.containers.log_bytes_max;
    runtime_settings.cgroup_parent = format!("shoal/{}", config.node_name);
    let settings = ReconcileSettings {
        interval_ms: config.containers.reconcile_interval_ms,
        // SWIM learns the members' states within its detection time of a start.
        startup_grace_ms: config.membership.detection_ms(),
        planner: PlannerSettings {
            starts_per_pass_max: STARTS_PER_PASS_MAX,
            retry_after_failure_ms: config.containers.reconcile_interval_ms,
        },
        rng_seed: rng_seed(),
    };
    let stop_grace_ms = config.containers.stop_grace_ms;
    let image_cache_dir = config.image_cache_dir();
    let runtime_error = |message: String| RunError::Runtime {
        path: runtime_dir.clone(),
        message,
    };
    let network_settings = config
        .containers
        .subnet
        .map(|subnet| (config.containers.bridge.clone(), subnet));
    let firewall_batch = config
        .containers
        .firewall
        .then(|| config.state_dir.join("firewall.json"));
    let volumes_dir = config.volumes_dir();
    let netns_prefix = format!("shoal.{}.", config.node_name);
    tokio::task::spawn_blocking(move || {
        let (runtime, report) =
            LibcontainerRuntime::open(runtime_settings).map_err(|error| error.to_string())?;
        tracing::info!(
            running = report.running.len(),
            dead = report.dead.len(),
            "container runtime opened; running containers adopted"
        );
        let runtime = Arc::new(runtime);
        let logs = runtime.clone();
        let log_paths: LogPaths = Arc::new(move |id: &str| logs.log_paths(id));
        let images = ImageStore::open(&image_cache_dir)
            .map_err(|error| format!("image cache {}: {error}", image_cache_dir.display()))?;
        let network: Option<Arc<dyn ContainerNetwork>> = match &network_settings {
            Some((bridge, subnet)) => {
                let network = NodeNetwork::ensure(bridge, *subnet, &netns_prefix)
                    .map_err(|error| format!("containers.bridge {bridge}: {error}"))?;
                tracing::info!(%bridge, %subnet, "container network ready");
                Some(Arc::new(network))
            }
            None => None,
        };
        // Containers found ended stay in the runtime with their exit status: the planner
        // restarts them per policy, or removes them when they are no longer placed here.
        let mut executor = Executor::new(runtime, network, Arc::new(images), stop_grace_ms)
            .with_volumes_dir(volumes_dir);
        if let (Some(batch), Some((bridge, _))) = (firewall_batch, network_settings) {
            executor = executor.with_firewall(Arc::new(NftFirewall::new(batch)), bridge);
        }
        Ok::<_, String>(Arc::new(Reconciler::new(
            node, executor, log_paths, settings,
        )))
    })
    .await
    .map_err(|error| runtime_error(format!("opening the runtime panicked: {error}")))?
    .map_err(runtime_error)
}
