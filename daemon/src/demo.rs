//! `shoal demo`: a real three-node cluster on 127.0.0.1 in a temporary directory. It makes a
//! CA and three node certificates, writes three configs, starts three `shoal daemon` child
//! processes of this same binary, applies a service on node 1, shows it arriving on nodes 2
//! and 3 with the time it took, prints every node's status and stops the daemons with
//! SIGTERM (or keeps them until Ctrl-C with `--keep`). The directory is removed at the end.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::api::{Client, Request, ServiceView, StatusView};
use crate::cli::DemoArgs;
use crate::{output, pki, spec_file};

/// Nodes in the demo cluster.
const NODES: usize = 3;
/// How long to wait for a daemon to answer on its socket.
const START_TIMEOUT_MS: u64 = 30_000;
/// How long to wait for the service to reach the other nodes.
const CONVERGE_TIMEOUT_MS: u64 = 30_000;
/// How long a daemon gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT_MS: u64 = 10_000;

const DEMO_SPEC: &str = r#"name = "hello"
image = "/var/lib/shoal/images/hello.tar"
command = ["/bin/echo", "hello from shoal"]
replicas = 2
[resources]
cpu_millis = 100
memory_bytes = 16777216
"#;

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
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<PathBuf> {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let text = format!(
        "node_name = \"{name}\"\nstate_dir = \"{state}\"\nlisten = \"{listen}\"\npeers = [{peers}]\n\n\
         [tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\n\
         [sync]\ninterval_ms = 1000\nheartbeat_interval_ms = 1000\n",
        state = dir.join("state").display(),
        peers = peers.join(", "),
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
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
        let config = write_config(
            &dir,
            &name,
            *address,
            &peers,
            &paths.ca_cert,
            &paths.cert,
            &paths.key,
        )?;
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

    let services = spec_file::parse(DEMO_SPEC).map_err(anyhow::Error::msg)?;
    let applied: Vec<ServiceView> = nodes[0]
        .client()?
        .call(Request::ServiceApply { services })?;
    let applied_at = Instant::now();
    println!(
        "applied service hello on node-1 (version {})",
        output::hlc(&applied[0].version)
    );
    for node in &nodes[1..] {
        let deadline = Instant::now() + Duration::from_millis(CONVERGE_TIMEOUT_MS);
        loop {
            let listed: Vec<ServiceView> = node.client()?.call(Request::ServiceList)?;
            if listed
                .iter()
                .any(|s| s.name == applied[0].name && s.version == applied[0].version)
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
    // Let one anti-entropy round pass so the summaries reflect each other.
    std::thread::sleep(Duration::from_millis(1500));
    for node in &nodes {
        let status: StatusView = node.client()?.call(Request::Status)?;
        println!("\n== shoal status on {} ==", node.name);
        print!("{}", output::status(&status));
    }

    if args.keep {
        println!("\nthe cluster keeps running; try:");
        for node in &nodes {
            println!("  shoal --socket {} status", node.socket.display());
        }
        println!("press Ctrl-C to stop it");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(tokio::signal::ctrl_c())?;
    }
    println!("\nstopping the daemons");
    let mut failures = Vec::new();
    for node in &mut nodes {
        if let Err(error) = node.stop() {
            failures.push(format!("{error:#}"));
        }
    }
    drop(nodes);
    temp.close().context("cannot remove the demo directory")?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    println!("all daemons stopped cleanly; demo directory removed");
    Ok(())
}
