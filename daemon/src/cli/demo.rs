//! `shoal demo`: a real three-node cluster on 127.0.0.1 in a temporary directory. It makes a
//! CA and three node certificates, writes three configs, builds a tiny OCI image from the
//! host's static `/bin/busybox`, starts three `shoal daemon` child processes of this same
//! binary, applies a three-replica service on node 1, shows it arriving on nodes 2 and 3 with
//! the time it took, waits until `shoal ps` shows one running container per node, prints
//! every node's status, removes the service and waits until no container is left, and stops
//! the daemons with SIGTERM (or keeps them until Ctrl-C with `--keep`). Without root or
//! without `/bin/busybox` it says so and runs the state-only part (containers disabled).
//! The directory is removed at the end.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::DemoArgs;
use super::{output, spec_file};
use crate::api::{Client, PsView, Request, ServiceView, StatusView};
use crate::sync::pki;

/// Nodes in the demo cluster.
const NODES: usize = 3;
/// How long to wait for a daemon to answer on its socket.
const START_TIMEOUT_MS: u64 = 30_000;
/// How long to wait for the service to reach the other nodes.
const CONVERGE_TIMEOUT_MS: u64 = 30_000;
/// How long a daemon gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT_MS: u64 = 10_000;

/// How long to wait for the containers to run, and to be gone after `service rm`.
const CONTAINERS_TIMEOUT_MS: u64 = 30_000;
/// The host's static busybox the demo image is made of (Debian: busybox-static).
const BUSYBOX: &str = shoal_oci::image_layout::BUSYBOX;
/// Replicas of the demo service: one per node.
const REPLICAS: usize = NODES;

/// The demo service, running `image` (an OCI layout directory).
fn demo_spec(image: &str) -> String {
    format!(
        "name = \"hello\"\nimage = {image:?}\n\
         command = [\"/bin/busybox\", \"sleep\", \"3600\"]\nreplicas = {REPLICAS}\n\
         [resources]\ncpu_millis = 100\nmemory_bytes = 16777216\n"
    )
}

/// Why this host cannot run the demo's containers, if it cannot.
fn containers_unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not running as root (containers need mounts and cgroups)".to_string());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!(
            "{BUSYBOX} is missing (install the busybox-static package)"
        ));
    }
    None
}

/// One daemon of the demo.
struct DemoNode {
    name: String,
    dir: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
}

impl DemoNode {
    fn client(&self) -> Result<Client> {
        Ok(Client::connect(&self.socket, Duration::from_secs(10))?)
    }

    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "{} exited with {status}; see {}",
                        self.name,
                        self.log().display()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not stop within {STOP_TIMEOUT_MS} ms; killed it",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_udp_port() -> Result<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("cannot find a free UDP port")?;
    Ok(socket.local_addr()?.port())
}

fn write_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    peers: &[SocketAddr],
    tls: &pki::NodePaths,
    containers: bool,
) -> Result<PathBuf> {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let text = format!(
        "node_name = \"{name}\"\nstate_dir = \"{state}\"\nlisten = \"{listen}\"\npeers = [{peers}]\n\n\
         [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n\
         [sync]\ninterval_ms = 1000\nheartbeat_interval_ms = 1000\n\n[containers]\n{containers}",
        state = dir.join("state").display(),
        peers = peers.join(", "),
        ca = tls.ca_cert.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        containers = if containers {
            "reconcile_interval_ms = 200\nstop_grace_ms = 500\n"
        } else {
            "enabled = false\n"
        },
    );
    let path = dir.join("shoal.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn wait_until_answers(node: &mut DemoNode) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    loop {
        if let Ok(mut client) = node.client()
            && client.call::<StatusView>(Request::Status).is_ok()
        {
            return Ok(());
        }
        if let Some(child) = node.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            node.child = None;
            let log = std::fs::read_to_string(node.log()).unwrap_or_default();
            bail!("{} exited with {status} while starting:\n{log}", node.name);
        }
        if Instant::now() > deadline {
            bail!("{} did not answer within {START_TIMEOUT_MS} ms", node.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_all_live(nodes: &[DemoNode]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
    for node in nodes {
        loop {
            let status: StatusView = node.client()?.call(Request::Status)?;
            if status.nodes == NODES {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not see all {NODES} nodes within {CONVERGE_TIMEOUT_MS} ms",
                    node.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Every node's `shoal ps`.
fn ps_all(nodes: &[DemoNode]) -> Result<Vec<PsView>> {
    nodes
        .iter()
        .map(|node| Ok(node.client()?.call::<PsView>(Request::Ps)?))
        .collect()
}

/// Waits until each node runs one container of the service, then prints `shoal ps`.
fn wait_containers_running(nodes: &[DemoNode]) -> Result<()> {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(CONTAINERS_TIMEOUT_MS);
    loop {
        let views = ps_all(nodes)?;
        let running_per_node: Vec<usize> = views
            .iter()
            .map(|view| {
                view.containers
                    .iter()
                    .filter(|c| c.node == view.node && c.state == "running")
                    .count()
            })
            .collect();
        if running_per_node.iter().all(|running| *running == 1)
            && views.iter().all(|view| view.containers.len() == REPLICAS)
        {
            println!(
                "\n{REPLICAS} containers running, one per node, {} ms after the apply",
                started.elapsed().as_millis()
            );
            for (node, view) in nodes.iter().zip(&views) {
                println!("\n== shoal ps on {} ==", node.name);
                print!("{}", output::ps(view));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let errors: Vec<String> = views
                .iter()
                .flat_map(|view| {
                    view.errors
                        .iter()
                        .map(move |(service, error)| format!("{}: {service}: {error}", view.node))
                })
                .collect();
            bail!(
                "the containers did not all run within {CONTAINERS_TIMEOUT_MS} ms \
                 (running per node: {running_per_node:?}; errors: {errors:?})"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `service rm` on node 1, then waits until no node's `shoal ps` shows a container.
fn remove_containers(nodes: &[DemoNode]) -> Result<()> {
    println!("\nremoving service hello");
    let _: ServiceView = nodes[0].client()?.call(Request::ServiceRemove {
        name: "hello".parse().context("demo service name")?,
    })?;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(CONTAINERS_TIMEOUT_MS);
    loop {
        let left: usize = ps_all(nodes)?
            .iter()
            .map(|view| view.containers.len())
            .sum();
        if left == 0 {
            println!(
                "no container left on any node after {} ms",
                started.elapsed().as_millis()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} containers still listed {CONTAINERS_TIMEOUT_MS} ms after service rm");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Shows the applied service reaching the other nodes, its containers (when enabled) and
/// every node's status; with `keep`, waits for Ctrl-C.
fn show(nodes: &[DemoNode], applied: &ServiceView, containers: bool, keep: bool) -> Result<()> {
    let applied_at = Instant::now();
    println!(
        "applied service hello on node-1 (version {})",
        output::hlc(&applied.version)
    );
    for node in &nodes[1..] {
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
        loop {
            let listed: Vec<ServiceView> = node.client()?.call(Request::ServiceList)?;
            if listed
                .iter()
                .any(|s| s.name == applied.name && s.version == applied.version)
            {
                println!(
                    "{} lists it after {} ms:",
                    node.name,
                    applied_at.elapsed().as_millis()
                );
                print!("{}", output::services(&listed));
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not list the service within {CONVERGE_TIMEOUT_MS} ms",
                    node.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if containers {
        wait_containers_running(nodes)?;
    }
    // Let one anti-entropy round pass so the summaries reflect each other.
    std::thread::sleep(Duration::from_millis(1500));
    for node in nodes {
        let status: StatusView = node.client()?.call(Request::Status)?;
        println!("\n== shoal status on {} ==", node.name);
        print!("{}", output::status(&status));
    }
    if keep {
        println!("\nthe cluster keeps running; try:");
        for node in nodes {
            println!("  shoal --socket {} status", node.socket.display());
        }
        println!("press Ctrl-C to stop it");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(tokio::signal::ctrl_c())?;
    }
    Ok(())
}

/// Runs the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("shoal-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let root = temp.path();
    println!("shoal demo in {}", root.display());
    let ca_dir = root.join("ca");
    pki::init_ca(&ca_dir, false)?;
    let mut ports = Vec::with_capacity(NODES);
    for index in 0..NODES {
        ports.push(if args.base_port == 0 {
            free_udp_port()?
        } else {
            args.base_port
                .checked_add(u16::try_from(index)?)
                .context("--base-port too high")?
        });
    }
    let addresses: Vec<SocketAddr> = ports
        .iter()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
        .collect();
    let image = root.join("busybox-image");
    let unavailable = containers_unavailable();
    let containers = match &unavailable {
        None => {
            shoal_oci::image_layout::busybox_image(&image, &[BUSYBOX, "sleep", "3600"])?;
            println!("built a busybox OCI image at {}", image.display());
            true
        }
        Some(reason) => {
            println!("containers skipped: {reason}; running the state-only part");
            false
        }
    };
    let executable = std::env::current_exe().context("cannot find this executable")?;
    let mut nodes = Vec::with_capacity(NODES);
    for (index, address) in addresses.iter().enumerate() {
        let name = format!("node-{}", index + 1);
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        let node_id = name.parse().context("demo node name")?;
        let paths = pki::issue_node_cert(
            &ca_dir,
            &node_id,
            &["127.0.0.1".to_string()],
            1,
            &dir,
            false,
        )?;
        let peers: Vec<SocketAddr> = addresses
            .iter()
            .filter(|a| *a != address)
            .copied()
            .collect();
        let config = write_config(&dir, &name, *address, &peers, &paths, containers)?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(&executable)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        println!("started {name} (pid {}) on udp {address}", child.id());
        nodes.push(DemoNode {
            name,
            socket: dir.join("state").join("shoal.sock"),
            dir,
            child: Some(child),
        });
    }
    for node in &mut nodes {
        wait_until_answers(node)?;
    }
    println!("all {NODES} daemons answer on their API sockets\n");

    if containers {
        // Placement needs every node to know the others, else each places on its own view.
        wait_all_live(&nodes)?;
    }
    let spec = demo_spec(&image.display().to_string());
    let services = spec_file::parse(&spec)?;
    let applied: Vec<ServiceView> = nodes[0]
        .client()?
        .call(Request::ServiceApply { services })?;
    let shown = show(&nodes, &applied[0], containers, args.keep);
    let removed = if containers {
        remove_containers(&nodes)
    } else {
        Ok(())
    };
    println!("\nstopping the daemons");
    let mut failures = Vec::new();
    for node in &mut nodes {
        if let Err(error) = node.stop() {
            failures.push(super::output::error_text(&error));
        }
    }
    drop(nodes);
    temp.close().context("cannot remove the demo directory")?;
    shown?;
    removed?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    println!("all daemons stopped cleanly; demo directory removed");
    print_next_steps(args.keep);
    Ok(())
}

/// What a user who liked the demo does next.
fn print_next_steps(kept: bool) {
    println!("\nnext steps:");
    if !kept {
        println!(
            "  keep a demo cluster running to try the CLI on it:  scripts/demo.sh --keep  (or: shoal demo --keep)"
        );
    }
    println!(
        "  run a node on a real host: README.md, section \"Running a node\" (shoal ca init, shoal cert issue, shoal daemon)"
    );
    println!("  run a fleet on NixOS: nixos-module/README.md (services.shoal)");
    println!("  every command explains itself: shoal --help, shoal service apply --help");
}
