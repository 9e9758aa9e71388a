//! The in-process test kit of the sync tests and benches: a CA, nodes with real
//! certificates and a real redb database in a temp dir, HTTP/3 sync servers on 127.0.0.1
//! port 0, and a gossip cluster running the daemon's own sync tasks
//! (`agent::tasks::spawn_sync_tasks`), and whole in-process daemons with their local API
//! (`Daemon`).
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shoal::api;
use shoal::state::{Node, NodeOptions, SystemClock};
use shoal::sync::pki::{self, NodePaths, Validity};
use shoal::sync::tls::ClusterServerVerifier;
use shoal::sync::{self, GossipConfig, SyncLimits, TlsHandle, TlsMaterial};
use shoal_crdt::NodeId;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub fn node_id(name: &str) -> NodeId {
    name.parse().unwrap()
}

pub fn limits() -> SyncLimits {
    SyncLimits {
        body_bytes_max: 64 * 1024,
        request_timeout_ms: 5_000,
        connections_max: 16,
    }
}

/// A temp dir holding the cluster CA.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        pki::init_ca(&dir.path().join("ca"), false).unwrap();
        Self { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca_dir().join(pki::CA_CERT_FILE)
    }

    pub fn issue(&self, name: &str) -> NodePaths {
        let out = self.dir.path().join("certs");
        pki::issue_node_cert(
            &self.ca_dir(),
            &node_id(name),
            &["127.0.0.1".to_owned()],
            30,
            &out,
            true,
        )
        .unwrap()
    }

    pub fn issue_with(&self, name: &str, validity: Validity) -> NodePaths {
        let out = self.dir.path().join("certs");
        pki::issue_node_cert_with(&self.ca_dir(), &node_id(name), &[], validity, &out, false)
            .unwrap()
    }

    pub fn material(&self, name: &str) -> TlsMaterial {
        let paths = self.issue(name);
        TlsMaterial::load(&self.ca_cert(), &paths.cert, &paths.key).unwrap()
    }
}

pub fn open_node(dir: &Path, name: &str, address: SocketAddr) -> Arc<Node> {
    open_node_with(dir, name, address, Vec::new())
}

/// A node with the default options, seeded with `seeds`, on the system clock.
pub fn open_node_with(
    dir: &Path,
    name: &str,
    address: SocketAddr,
    seeds: Vec<SocketAddr>,
) -> Arc<Node> {
    let mut options = NodeOptions::new(node_id(name), dir.join(format!("{name}.redb")), address);
    options.seeds = seeds;
    Arc::new(Node::open(options, Arc::new(SystemClock)).unwrap())
}

/// A node with the default options on `clock`.
pub fn open_node_on(
    dir: &Path,
    name: &str,
    address: SocketAddr,
    clock: Arc<dyn shoal::state::Clock>,
) -> Arc<Node> {
    let options = NodeOptions::new(node_id(name), dir.join(format!("{name}.redb")), address);
    Arc::new(Node::open(options, clock).unwrap())
}

/// A one-service spec file's services.
pub fn named_spec(
    name: &str,
    image: &str,
) -> Vec<(shoal_crdt::ServiceName, shoal_crdt::ServiceSpec)> {
    let text = format!("name = \"{name}\"\nimage = \"{image}\"\n");
    shoal::cli::spec_file::parse(&text)
        .unwrap()
        .into_iter()
        .map(|named| (named.name, named.spec))
        .collect()
}

pub fn apply_service(node: &Node, name: &str, image: &str) {
    node.apply_services(named_spec(name, image)).unwrap();
}

/// A node serving sync on its own endpoint.
pub struct Server {
    pub node: Arc<Node>,
    pub endpoint: quinn::Endpoint,
    pub address: SocketAddr,
    pub database: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub async fn start(pki: &Pki, dir: &Path, name: &str) -> Self {
        Self::start_with(&pki.material(name), dir, name, limits()).await
    }

    pub async fn start_with(tls: &TlsMaterial, dir: &Path, name: &str, limits: SyncLimits) -> Self {
        Self::start_with_logs(tls, dir, name, limits, None).await
    }

    /// A server that answers `GET /v1/logs` from `logs`.
    pub async fn start_with_logs(
        tls: &TlsMaterial,
        dir: &Path,
        name: &str,
        limits: SyncLimits,
        logs: Option<Arc<dyn sync::LogSource>>,
    ) -> Self {
        let endpoint = sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), tls).unwrap();
        let address = endpoint.local_addr().unwrap();
        let node = open_node(dir, name, address);
        let (stop, stopped) = oneshot::channel::<()>();
        let handlers = sync::Handlers {
            logs,
            ..sync::Handlers::default()
        };
        let serving = sync::serve(endpoint.clone(), node.clone(), limits, handlers, async {
            let _ = stopped.await;
        });
        let task = tokio::spawn(serving);
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        Self {
            node,
            endpoint,
            address,
            database: dir.join(format!("{name}.redb")),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// What must not change when a request is refused: the state digest, the summary and
    /// the database file's bytes.
    pub fn fingerprint(&self) -> (String, String, Vec<u8>) {
        (
            hex(&self.node.digest()),
            format!("{:?}", self.node.summary()),
            std::fs::read(&self.database).unwrap(),
        )
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
        self.endpoint.close(0u32.into(), b"test over");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A client endpoint built from raw parts, bypassing `TlsMaterial::load`'s checks, so a test
/// can present no certificate, a foreign one or an expired one. It verifies the server against
/// `ca_cert` like a real node does.
pub fn raw_client(ca_cert: &Path, identity: Option<&NodePaths>) -> quinn::Endpoint {
    let ca_pem = std::fs::read(ca_cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(shoal::sync::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier::new(Arc::new(roots))));
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(paths) => {
            let cert_pem = std::fs::read(&paths.cert).unwrap();
            let key_pem = std::fs::read(&paths.key).unwrap();
            let chain = rustls_pemfile::certs(&mut &cert_pem[..])
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut &key_pem[..])
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// In-process nodes running serve + gossip + heartbeats (every 200 ms) until stopped.
pub struct GossipCluster {
    pub nodes: Vec<Arc<Node>>,
    pub addresses: Vec<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl GossipCluster {
    /// Starts nodes `names`; node i is seeded with the addresses of `seeds[i]` (indices).
    /// Each runs the daemon's sync tasks with heartbeats every `heartbeat_ms`.
    pub async fn start(
        pki: &Pki,
        dir: &Path,
        names: &[&str],
        seeds: &[Vec<usize>],
        gossip: sync::GossipConfig,
    ) -> Self {
        Self::start_with(pki, dir, names, seeds, gossip, limits(), 200).await
    }

    pub async fn start_with(
        pki: &Pki,
        dir: &Path,
        names: &[&str],
        seeds: &[Vec<usize>],
        gossip: sync::GossipConfig,
        limits: SyncLimits,
        heartbeat_ms: u64,
    ) -> Self {
        let endpoints: Vec<quinn::Endpoint> = names
            .iter()
            .map(|name| {
                sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material(name)).unwrap()
            })
            .collect();
        let addresses: Vec<SocketAddr> =
            endpoints.iter().map(|e| e.local_addr().unwrap()).collect();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut nodes = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let seeds = seeds[index].iter().map(|seed| addresses[*seed]).collect();
            let node = open_node_with(dir, name, addresses[index], seeds);
            node.heartbeat().unwrap();
            let gossip = sync::GossipConfig {
                rng_seed: index as u64 + 1,
                ..gossip.clone()
            };
            shoal::agent::tasks::spawn_sync_tasks(
                &mut tasks,
                &endpoints[index],
                &node,
                gossip,
                limits.clone(),
                None,
                Duration::from_millis(heartbeat_ms),
                None,
                &stopped,
            );
            nodes.push(node);
        }
        Self {
            nodes,
            addresses,
            stop,
            tasks,
        }
    }

    /// Starts one more node, `name`, seeded with `seeds`, with the same tasks as the others;
    /// returns its index.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        pki: &Pki,
        dir: &Path,
        name: &str,
        seeds: Vec<SocketAddr>,
        gossip: sync::GossipConfig,
        limits: SyncLimits,
        heartbeat_ms: u64,
    ) -> usize {
        let endpoint =
            sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material(name)).unwrap();
        let address = endpoint.local_addr().unwrap();
        let node = open_node_with(dir, name, address, seeds);
        node.heartbeat().unwrap();
        let index = self.nodes.len();
        let gossip = sync::GossipConfig {
            rng_seed: index as u64 + 1,
            ..gossip
        };
        shoal::agent::tasks::spawn_sync_tasks(
            &mut self.tasks,
            &endpoint,
            &node,
            gossip,
            limits,
            None,
            Duration::from_millis(heartbeat_ms),
            None,
            &self.stop.subscribe(),
        );
        self.nodes.push(node);
        self.addresses.push(address);
        index
    }

    /// Waits until `done` holds, or panics after `deadline`.
    pub async fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        done: impl Fn(&[Arc<Node>]) -> bool,
    ) {
        let started = std::time::Instant::now();
        while !done(&self.nodes) {
            assert!(
                started.elapsed() < deadline,
                "{what}: not within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `observe` sees `expected`, or panics after `deadline` with what it saw
    /// last.
    pub async fn wait_for<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        deadline: Duration,
        observe: impl Fn(&[Arc<Node>]) -> T,
        expected: T,
    ) {
        let started = std::time::Instant::now();
        loop {
            let seen = observe(&self.nodes);
            if seen == expected {
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "{what}: not within {deadline:?}; last seen {seen:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while let Some(joined) = self.tasks.join_next().await {
            joined.unwrap();
        }
    }
}

/// One request to a daemon's API socket, off the async runtime's threads.
pub async fn call<T: serde::de::DeserializeOwned + Send + 'static>(
    socket: &Path,
    request: shoal::api::Request,
) -> Result<T, shoal::api::ApiError> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        shoal::api::Client::connect(&socket, Duration::from_secs(10))
            .unwrap()
            .call(request)
    })
    .await
    .unwrap()
}

/// How `Daemon::start` starts one in-process daemon.
pub struct DaemonSpec<'a> {
    pub name: &'a str,
    /// Names its database and API socket in the directory (two daemons may share a name).
    pub label: &'a str,
    pub seeds: Vec<SocketAddr>,
    /// The daemon's incarnation; `NodeOptions`' own when `None`.
    pub incarnation: Option<u64>,
    /// `NodeOptions`' own when `None`.
    pub down_after_ms: Option<u64>,
    pub heartbeat_ms: u64,
    /// Seeds the gossip's peer choice.
    pub rng_seed: u64,
}

/// One daemon's sync tasks (server, gossip, heartbeat) and its local API, which dials other
/// nodes through the node's endpoint as the daemon's does; until stopped.
pub struct Daemon {
    pub node: Arc<Node>,
    pub address: SocketAddr,
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    endpoint: quinn::Endpoint,
}

impl Daemon {
    pub fn start(tls: &TlsMaterial, dir: &Path, spec: DaemonSpec<'_>) -> Daemon {
        let handle = TlsHandle::new(tls.clone());
        let endpoint =
            sync::bind_reloadable_endpoint("127.0.0.1:0".parse().unwrap(), &handle).unwrap();
        let address = endpoint.local_addr().unwrap();
        let mut options = NodeOptions::new(
            node_id(spec.name),
            dir.join(format!("{}.redb", spec.label)),
            address,
        );
        options.seeds = spec.seeds;
        if let Some(incarnation) = spec.incarnation {
            options.incarnation = incarnation;
        }
        if let Some(down_after_ms) = spec.down_after_ms {
            options.down_after_ms = down_after_ms;
        }
        let node = Arc::new(Node::open(options, Arc::new(SystemClock)).unwrap());
        node.heartbeat().unwrap();
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let gossip = GossipConfig {
            interval_ms: 100,
            jitter_ms: 20,
            rng_seed: spec.rng_seed,
            ..GossipConfig::default()
        };
        shoal::agent::tasks::spawn_sync_tasks(
            &mut tasks,
            &endpoint,
            &node,
            gossip,
            limits(),
            None,
            Duration::from_millis(spec.heartbeat_ms),
            None,
            &stopped,
        );
        let socket = dir.join(format!("{}.sock", spec.label));
        let listener = api::server::bind(&socket).unwrap();
        let peers = api::server::PeerAccess {
            endpoint: endpoint.clone(),
            limits: limits(),
            tls: handle,
        };
        tasks.spawn(api::server::serve(
            listener,
            node.clone(),
            None,
            Some(peers),
            shoal::agent::tasks::stopped(stopped),
        ));
        Daemon {
            node,
            address,
            socket,
            stop,
            tasks,
            endpoint,
        }
    }

    /// Stops every task and closes the endpoint; returns the node (its database closes
    /// when the last reference goes).
    pub async fn stop(mut self) -> Arc<Node> {
        let _ = self.stop.send(true);
        while let Some(joined) = self.tasks.join_next().await {
            joined.unwrap();
        }
        self.endpoint.close(0u32.into(), b"stopped");
        self.node
    }
}
