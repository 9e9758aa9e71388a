//! A cluster of real `shoal daemon` processes, one per lab host, with real
//! certificates from `shoal ca init` / `shoal cert issue`.
//!
//! The harness talks to each node through the real CLI over the node's API
//! socket (`shoal --socket … --json`), exactly as an operator would.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::command::CommandError;
use crate::lab::Lab;

/// UDP port every node listens on, inside its own namespace.
pub const SYNC_PORT: u16 = 7443;

/// Where a node of a cluster started with [`ClusterOptions::metrics`] serves its metrics:
/// the loopback of its own namespace.
pub const METRICS_ADDRESS: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9464);

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "shoal binary not found at {0}; build it first (`cargo build -p shoal`) or set SHOAL_BIN"
    )]
    NoBinary(PathBuf),
    #[error(
        "optimised shoal binary not found at {0}; build it first (`cargo build --release -p shoal`) or set SHOAL_RELEASE_BIN"
    )]
    NoReleaseBinary(PathBuf),
    #[error("node {node}: `shoal {args}` failed: {stderr}")]
    Cli {
        node: String,
        args: String,
        stderr: String,
    },
    #[error("node {node}: `shoal {args}` printed invalid JSON: {error}")]
    Json {
        node: String,
        args: String,
        error: serde_json::Error,
    },
    #[error("timed out after {waited_ms} ms waiting for {what}")]
    Timeout { what: String, waited_ms: u128 },
    #[error("node {node}: metrics scrape failed: {reason}")]
    Metrics { node: String, reason: String },
    #[error("cannot send {signal} to {node} (pid {pid}): {source}")]
    Signal {
        node: String,
        pid: i32,
        signal: Signal,
        source: nix::Error,
    },
}

/// Tunables for a test cluster. Intervals are short so scenarios run quickly.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub sync_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    pub evict_after_ms: u64,
    /// The last node gets a certificate from a CA of its own: a rogue that
    /// sits on the same network and knows the others' addresses.
    pub rogue_last: bool,
    /// Give node `i` the container subnet `10.88.(i + 1).0/24`, so its
    /// containers get addresses and routes to the other nodes' containers.
    pub container_subnets: bool,
    /// `containers.reconcile_interval_ms` (with `container_subnets`); the
    /// daemon's default when `None`.
    pub reconcile_interval_ms: Option<u64>,
    /// Add the lab's outside host ([`crate::lab::OUTSIDE_ADDRESS`]): a
    /// namespace on the bridge that runs no daemon, for clients of published
    /// ports and servers that containers reach through their node.
    pub outside_host: bool,
    /// Node `i`'s labels (`labels` in its config), when given.
    pub labels: Vec<Vec<(String, String)>>,
    /// SWIM timing (`[membership]`); the daemon's defaults when `None`.
    pub membership: Option<Membership>,
    /// Run the optimised daemon ([`release_shoal_binary`]): many nodes on few cores need it.
    pub optimised: bool,
    /// Serve metrics on the node's loopback ([`METRICS_ADDRESS`], `[metrics] listen`), for
    /// [`Cluster::metrics`].
    pub metrics: bool,
}

/// `[membership]` in a test node's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    pub probe_period_ms: u64,
    pub probe_timeout_ms: u64,
    pub suspect_to_down_ms: u64,
}

impl Membership {
    /// Quick failure detection for scenarios: about 1.7 s after a node's last answer.
    pub const QUICK: Membership = Membership {
        probe_period_ms: 300,
        probe_timeout_ms: 150,
        suspect_to_down_ms: 1_200,
    };
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            sync_interval_ms: 300,
            heartbeat_interval_ms: 300,
            down_after_ms: 3_000,
            evict_after_ms: 86_400_000,
            rogue_last: false,
            container_subnets: false,
            reconcile_interval_ms: None,
            labels: Vec::new(),
            outside_host: false,
            membership: Some(Membership::QUICK),
            metrics: false,
            optimised: false,
        }
    }
}

/// One node: its files and, while it runs, its process.
#[derive(Debug)]
pub struct ClusterNode {
    pub name: String,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// The daemon's `state_dir` (state.redb, volumes, the API socket).
    pub state_dir: PathBuf,
    netns: String,
    process: Option<Child>,
}

impl ClusterNode {
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The lab namespace the daemon runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The daemon's process id while it runs (`nsenter` execs the daemon).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }
}

/// Running nodes in a lab. Dropping it kills every daemon, then removes the
/// lab's namespaces and the temporary directory.
pub struct Cluster {
    // Field order is drop order: processes first, then files, then namespaces.
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
    lab: Lab,
    shoal: PathBuf,
}

impl Cluster {
    /// Creates a lab, a CA and one certificate per node, writes the configs and
    /// starts every daemon; returns once every node answers on its API socket.
    pub fn start(options: ClusterOptions) -> Result<Cluster, HarnessError> {
        let shoal = if options.optimised {
            release_shoal_binary()?
        } else {
            shoal_binary()?
        };
        let mut lab = Lab::create(options.nodes)?;
        if options.outside_host {
            lab.add_outside()?;
        }
        let dir = tempfile::Builder::new()
            .prefix("shoal-cluster-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let ca_dir = dir.path().join("ca");
        run_shoal(
            &shoal,
            "harness",
            &["ca", "init", "--dir", path_str(&ca_dir)],
        )?;
        let rogue_ca_dir = dir.path().join("rogue-ca");
        if options.rogue_last {
            run_shoal(
                &shoal,
                "harness",
                &["ca", "init", "--dir", path_str(&rogue_ca_dir)],
            )?;
        }

        let mut nodes = Vec::with_capacity(options.nodes);
        for (index, host) in lab.hosts().iter().enumerate() {
            let name = format!("n{index}");
            let node_dir = dir.path().join(&name);
            let address = host.address.to_string();
            let is_rogue = options.rogue_last && index + 1 == options.nodes;
            let ca_dir = if is_rogue { &rogue_ca_dir } else { &ca_dir };
            run_shoal(
                &shoal,
                &name,
                &[
                    "cert",
                    "issue",
                    "--node",
                    &name,
                    "--ca-dir",
                    path_str(ca_dir),
                    "--out-dir",
                    path_str(&node_dir.join("tls")),
                    "--address",
                    &address,
                ],
            )?;
            // Every node but the first is seeded with the first only, so the
            // rest of the membership must be learned through node metadata.
            let seed = if index == 0 { 1 } else { 0 };
            let seeds = if options.nodes > 1 {
                format!("[\"{}:{SYNC_PORT}\"]", lab.host(seed).address)
            } else {
                "[]".to_owned()
            };
            let socket = node_dir.join("state").join("shoal.sock");
            let config = node_dir.join("shoal.toml");
            let text = format!(
                "node_name = \"{name}\"\n\
                 state_dir = \"{state}\"\n\
                 listen = \"{address}:{SYNC_PORT}\"\n\
                 peers = {seeds}\n\
                 {labels}\
                 [tls]\n\
                 ca_file = \"{ca}\"\n\
                 cert_file = \"{cert}\"\n\
                 key_file = \"{key}\"\n\
                 [sync]\n\
                 interval_ms = {interval}\n\
                 jitter_ms = {jitter}\n\
                 heartbeat_interval_ms = {heartbeat}\n\
                 down_after_ms = {down}\n\
                 evict_after_ms = {evict}\n\
                 {membership}\
                 {metrics}\
                 {containers}",
                state = node_dir.join("state").display(),
                ca = ca_dir.join("ca.pem").display(),
                cert = node_dir.join("tls").join(format!("{name}.pem")).display(),
                key = node_dir.join("tls").join(format!("{name}.key")).display(),
                interval = options.sync_interval_ms,
                jitter = options.sync_interval_ms / 4,
                heartbeat = options.heartbeat_interval_ms,
                down = options.down_after_ms,
                evict = options.evict_after_ms,
                membership = match options.membership {
                    Some(membership) => format!(
                        "[membership]\nprobe_period_ms = {}\nprobe_timeout_ms = {}\n\
                         suspect_to_down_ms = {}\n",
                        membership.probe_period_ms,
                        membership.probe_timeout_ms,
                        membership.suspect_to_down_ms
                    ),
                    None => String::new(),
                },
                metrics = if options.metrics {
                    format!("[metrics]\nlisten = \"{METRICS_ADDRESS}\"\n")
                } else {
                    String::new()
                },
                labels = match options.labels.get(index) {
                    Some(labels) if !labels.is_empty() => format!(
                        "labels = {{ {} }}\n",
                        labels
                            .iter()
                            .map(|(name, value)| format!("{name} = \"{value}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => String::new(),
                },
                containers = if options.container_subnets {
                    let interval = options
                        .reconcile_interval_ms
                        .map(|ms| format!("reconcile_interval_ms = {ms}\n"))
                        .unwrap_or_default();
                    format!(
                        "[containers]\nsubnet = \"10.88.{}.0/24\"\n{interval}",
                        index + 1
                    )
                } else {
                    String::new()
                },
            );
            write_file(&config, &text)?;
            nodes.push(ClusterNode {
                name,
                config,
                socket,
                log: node_dir.join("daemon.log"),
                state_dir: node_dir.join("state"),
                netns: host.netns.name().to_owned(),
                process: None,
            });
        }
        let mut cluster = Cluster {
            nodes,
            dir,
            lab,
            shoal,
        };
        for index in 0..cluster.nodes.len() {
            cluster.spawn(index)?;
        }
        for index in 0..cluster.nodes.len() {
            cluster.wait_ready(index, Duration::from_secs(30))?;
        }
        let honest = if options.rogue_last {
            options.nodes - 1
        } else {
            options.nodes
        };
        for index in 0..honest {
            cluster.wait_members(index, honest, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, index: usize) -> &ClusterNode {
        &self.nodes[index]
    }

    /// The harness's scratch directory (certificates, configs, state, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the daemon of node `index` inside its namespace.
    pub fn spawn(&mut self, index: usize) -> Result<(), HarnessError> {
        let node = &mut self.nodes[index];
        assert!(node.process.is_none(), "{} is already running", node.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|source| HarnessError::Io {
                path: node.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| HarnessError::Io {
            path: node.log.clone(),
            source,
        })?;
        // nsenter enters only the network namespace (`ip netns exec` would also
        // remount /sys and hide the cgroup hierarchies the containers need) and
        // execs the daemon, so the child's pid is the daemon's.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.netns))
            .arg(&self.shoal)
            .args(["daemon", "--config"])
            .arg(&node.config)
            .env(
                "RUST_LOG",
                std::env::var("HACK_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| HarnessError::Io {
                path: self.shoal.clone(),
                source,
            })?;
        node.process = Some(child);
        Ok(())
    }

    /// Kills node `index` with SIGKILL and reaps it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `index` with SIGTERM, as systemd would, and waits for it.
    pub fn stop(&mut self, index: usize) -> Result<(), HarnessError> {
        let Some(mut child) = self.nodes[index].process.take() else {
            return Ok(());
        };
        // A syscall, not a spawned `kill`: a minimal Debian has no kill binary.
        let pid = i32::try_from(child.id()).expect("pids fit in i32");
        kill(Pid::from_raw(pid), Signal::SIGTERM).map_err(|source| HarnessError::Signal {
            node: self.nodes[index].name.clone(),
            pid,
            signal: Signal::SIGTERM,
            source,
        })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Timeout {
                    what: format!("{} to stop on SIGTERM", self.nodes[index].name),
                    waited_ms: 15_000,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts node `index` (after kill or stop) and waits until it answers.
    pub fn restart(&mut self, index: usize) -> Result<(), HarnessError> {
        self.kill(index);
        self.spawn(index)?;
        self.wait_ready(index, Duration::from_secs(30))
    }

    /// Waits until node `index` answers `status` on its API socket.
    pub fn wait_ready(&self, index: usize, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            if self.cli_json(index, &["status"]).is_ok() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{} to answer on {}",
                        self.nodes[index].name,
                        self.nodes[index].socket.display()
                    ),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until node `index` lists `count` live members (itself included):
    /// the cluster has formed, through seeds and node metadata.
    pub fn wait_members(
        &self,
        index: usize,
        count: usize,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            let nodes = self.cli_json(index, &["nodes"]);
            let live = nodes
                .as_ref()
                .ok()
                .and_then(Value::as_array)
                .map(|list| list.iter().filter(|n| n["live"] == true).count());
            if live == Some(count) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{} to see {count} live members: {nodes:?}",
                        self.nodes[index].name
                    ),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sum of every sample of node `index`'s metrics whose line starts with `series`
    /// (`shoal_sync_summaries_total{form="compact"}`, or `shoal_sync_exchanges_total{` for
    /// every label); see [`metric_sum`].
    pub fn metric_sum(&self, index: usize, series: &str) -> Result<f64, HarnessError> {
        Ok(metric_sum(&self.metrics(index)?, series))
    }

    /// Node `index`'s metrics (OpenMetrics text), scraped inside its namespace; the cluster
    /// must have been started with [`ClusterOptions::metrics`].
    pub fn metrics(&self, index: usize) -> Result<String, HarnessError> {
        let node = &self.nodes[index];
        let failed = |reason: String| HarnessError::Metrics {
            node: node.name.clone(),
            reason,
        };
        let response = crate::probe::get_in(
            &node.netns,
            METRICS_ADDRESS,
            "/metrics",
            Duration::from_secs(5),
        )
        .map_err(|error| failed(error.to_string()))?;
        if response.status != 200 {
            return Err(failed(format!("status {}", response.status)));
        }
        Ok(response.body)
    }

    /// Runs `shoal --socket <node's socket> --json ARGS` and parses its output.
    pub fn cli_json(&self, index: usize, args: &[&str]) -> Result<Value, HarnessError> {
        let node = &self.nodes[index];
        let mut full = vec!["--socket", path_str(&node.socket), "--json"];
        full.extend_from_slice(args);
        let stdout = run_shoal(&self.shoal, &node.name, &full)?;
        serde_json::from_str(&stdout).map_err(|error| HarnessError::Json {
            node: node.name.clone(),
            args: args.join(" "),
            error,
        })
    }

    /// Runs `shoal --socket <node's socket> ARGS` and returns what it printed
    /// (for commands whose output is text, such as `logs`).
    pub fn cli_text(&self, index: usize, args: &[&str]) -> Result<String, HarnessError> {
        let node = &self.nodes[index];
        let mut full = vec!["--socket", path_str(&node.socket)];
        full.extend_from_slice(args);
        run_shoal(&self.shoal, &node.name, &full)
    }

    /// The outside host's namespace; panics if the cluster was started
    /// without `outside_host`.
    pub fn outside_netns(&self) -> &str {
        self.lab
            .outside()
            .expect("the cluster was started without outside_host")
            .netns
            .name()
    }

    /// `nft list table ip shoal` inside node `index`'s namespace, or why it
    /// could not be listed.
    pub fn nft_table(&self, index: usize) -> String {
        match crate::command::run_in(
            &self.nodes[index].netns,
            "nft",
            &["list", "table", "ip", "shoal"],
        ) {
            Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
            Err(error) => format!("({error})"),
        }
    }

    /// What a failing scenario should print: every running node's `shoal ps`
    /// (JSON), its `ip shoal` nftables table and the tail of every daemon log.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for index in 0..self.nodes.len() {
            let name = &self.nodes[index].name;
            if !self.nodes[index].is_running() {
                out.push_str(&format!("==== {name}: daemon not running\n"));
            } else {
                let ps = self
                    .cli_json(index, &["ps"])
                    .map(|ps| ps.to_string())
                    .unwrap_or_else(|error| format!("({error})"));
                out.push_str(&format!("==== {name}: shoal ps --json\n{ps}\n"));
            }
            out.push_str(&format!(
                "==== {name}: nft list table ip shoal\n{}\n",
                self.nft_table(index)
            ));
            if self.nodes[index].is_running() {
                out.push_str(&self.service_logs(index, 10));
            }
        }
        out.push_str(&self.log_tails(30));
        out
    }

    /// The last `lines` lines of `shoal logs` of every service node `index`
    /// lists, as far as that node has containers of it.
    fn service_logs(&self, index: usize, lines: usize) -> String {
        let name = &self.nodes[index].name;
        let services: Vec<String> = self
            .cli_json(index, &["service", "ls"])
            .ok()
            .and_then(|list| list.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        let mut out = String::new();
        for service in services {
            let node = &self.nodes[index];
            let args = ["--socket", path_str(&node.socket), "logs", &service];
            let Ok(streams) = run_shoal_output(&self.shoal, &node.name, &args) else {
                continue;
            };
            for (stream, text) in [("stdout", streams.0), ("stderr", streams.1)] {
                let tail: Vec<&str> = text.lines().rev().take(lines).collect();
                if tail.is_empty() {
                    continue;
                }
                out.push_str(&format!(
                    "==== {name}: shoal logs {service}, {stream} (tail)\n"
                ));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Writes a spec file and applies it on node `index`; returns the daemon's
    /// answer (the applied services with their versions).
    pub fn apply(&self, index: usize, spec_toml: &str) -> Result<Value, HarnessError> {
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let sequence = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.path().join(format!("spec-{sequence}.toml"));
        write_file(&path, spec_toml)?;
        self.cli_json(index, &["service", "apply", "-f", path_str(&path)])
    }

    /// Indices of the nodes whose daemon is running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Waits until the nodes `among` list the same services with the same
    /// versions; returns how long that took. (Heartbeats keep changing node
    /// metadata, so the comparison is on what settles once writes stop.)
    pub fn wait_converged(
        &self,
        among: &[usize],
        timeout: Duration,
    ) -> Result<Duration, HarnessError> {
        assert!(!among.is_empty());
        let started = Instant::now();
        loop {
            let listings: Vec<Option<Value>> = among
                .iter()
                .map(|&i| self.cli_json(i, &["service", "ls"]).ok())
                .collect();
            let all_answered = listings.iter().all(Option::is_some);
            if all_answered && listings.windows(2).all(|pair| pair[0] == pair[1]) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: format!("service listings of nodes {among:?} to converge: {listings:?}"),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `check` holds for node `index`'s `status --json`.
    pub fn wait_status(
        &self,
        index: usize,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value, HarnessError> {
        let started = Instant::now();
        loop {
            let status = self.cli_json(index, &["status"]);
            if let Ok(status) = &status
                && check(status)
            {
                return Ok(status.clone());
            }
            if started.elapsed() > timeout {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "{what} on {}: last status {status:?}",
                        self.nodes[index].name
                    ),
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `lines` lines of every node's daemon log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("---- {} ({})\n", node.name, node.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("cluster logs at failure:\n{}", self.log_tails(40));
        }
        self.remove_all_services();
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        self.sweep_container_leftovers();
    }
}

impl Cluster {
    /// Removes every service through a running node and waits (bounded) until
    /// no running node lists a container: containers outlive their daemon by
    /// design, so they must be stopped before the daemons are killed.
    fn remove_all_services(&self) {
        let running = self.running();
        let Some(&first) = running.first() else {
            return;
        };
        let Ok(listing) = self.cli_json(first, &["service", "ls"]) else {
            return;
        };
        let names: Vec<String> = listing
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|s| s["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            return;
        }
        for name in &names {
            let _ = self.cli_json(first, &["service", "rm", name]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let left: usize = running
                .iter()
                .map(|&i| {
                    self.cli_json(i, &["ps"])
                        .ok()
                        .and_then(|ps| ps["containers"].as_array().map(Vec::len))
                        .unwrap_or(0)
                })
                .sum();
            if left == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("warning: containers still listed 30 s after removing every service");
    }

    /// Last resort after a failed test: kills processes left in this
    /// cluster's container cgroups, deletes its container namespaces and
    /// unmounts what is still mounted under its directory.
    fn sweep_container_leftovers(&self) {
        for node in &self.nodes {
            for hierarchy in fs::read_dir("/sys/fs/cgroup")
                .into_iter()
                .flatten()
                .flatten()
            {
                let parent = hierarchy.path().join("shoal").join(&node.name);
                for procs in walk_files(&parent, "cgroup.procs") {
                    for pid in fs::read_to_string(&procs).unwrap_or_default().lines() {
                        if let Ok(pid) = pid.trim().parse::<i32>() {
                            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                    }
                }
                remove_cgroup_tree(&parent);
            }
            let prefix = format!("shoal.{}.", node.name);
            if let Ok(list) = crate::command::run("ip", &["netns", "list"]) {
                for line in String::from_utf8_lossy(&list.stdout).lines() {
                    if let Some(name) = line.split_whitespace().next()
                        && name.starts_with(&prefix)
                    {
                        let _ = crate::command::run("ip", &["netns", "delete", name]);
                    }
                }
            }
        }
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|point| point.starts_with(&dir))
            .collect();
        // Deepest first.
        ours.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in ours {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Removes a cgroup directory and its children, deepest first (a cgroup
/// directory is removed with rmdir once it has no processes).
fn remove_cgroup_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Every file named `name` below `dir`, depth first (cgroup trees are shallow).
fn walk_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk_files(&path, name));
        } else if path.file_name().is_some_and(|n| n == name) {
            found.push(path);
        }
    }
    found
}

/// The `shoal` binary under test: `SHOAL_BIN`, else the one cargo built next
/// to this test executable.
pub fn shoal_binary() -> Result<PathBuf, HarnessError> {
    let path = match std::env::var_os("SHOAL_BIN") {
        Some(path) => PathBuf::from(path),
        None => profile_dir()?.join("shoal"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NoBinary(path))
    }
}

/// The optimised `shoal` binary: `SHOAL_RELEASE_BIN`, else `release/shoal` in the target
/// directory this test executable was built in.
pub fn release_shoal_binary() -> Result<PathBuf, HarnessError> {
    let path = match std::env::var_os("SHOAL_RELEASE_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let profile_dir = profile_dir()?;
            profile_dir
                .parent()
                .unwrap_or(&profile_dir)
                .join("release")
                .join("shoal")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::NoReleaseBinary(path))
    }
}

/// target/<profile> of this test executable (target/<profile>/deps/<test>).
fn profile_dir() -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    Ok(exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default())
}

fn run_shoal(shoal: &Path, node: &str, args: &[&str]) -> Result<String, HarnessError> {
    run_shoal_output(shoal, node, args).map(|(stdout, _)| stdout)
}

/// Runs `shoal ARGS`; returns its standard output and standard error.
fn run_shoal_output(
    shoal: &Path,
    node: &str,
    args: &[&str],
) -> Result<(String, String), HarnessError> {
    let output = Command::new(shoal)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HarnessError::Io {
            path: shoal.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(HarnessError::Cli {
            node: node.to_owned(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok((
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn write_file(path: &Path, text: &str) -> Result<(), HarnessError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|source| HarnessError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    fs::write(path, text).map_err(|source| HarnessError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn path_str(path: &Path) -> &str {
    // The harness makes every path itself under a UTF-8 temp dir.
    path.to_str().expect("harness paths are UTF-8")
}

/// The sum of the samples in OpenMetrics `text` whose line starts with `series`.
pub fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(series))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
