//! Shared helpers of the host-side integration tests: real certificates from `shoal::pki`,
//! real config files, real `shoal daemon` processes (the binary under test) on 127.0.0.1,
//! and API calls through the real Unix socket.
#![allow(dead_code)]

pub mod guard;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use shoal::api::NamedSpec;
use shoal::api::{Client, Request, ServiceView, StatusView};
use shoal_crdt::ServiceSpec;

pub const BINARY: &str = env!("CARGO_BIN_EXE_shoal");

/// Polls `check` every 20 ms until it returns Some, or panics after `timeout_ms`.
pub fn wait_for<T>(what: &str, timeout_ms: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout_ms} ms waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node's files and, when running, its process.
pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub address: SocketAddr,
    pub child: Option<Child>,
    pub extra_env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let mut command = Command::new(BINARY);
        command
            .arg("daemon")
            .arg("--config")
            .arg(&self.config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in &self.extra_env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().unwrap());
    }

    /// Waits until the API answers a status request.
    pub fn wait_ready(&mut self) {
        let socket = self.socket.clone();
        let name = self.name.clone();
        let log = self.dir.join("daemon.log");
        let child = self.child.as_mut().expect("daemon started");
        wait_for(&format!("{name} to answer"), 30_000, || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{name} exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let mut client = Client::connect(&socket, Duration::from_secs(5)).ok()?;
            client.call::<StatusView>(Request::Status).ok()
        });
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket, Duration::from_secs(20)).unwrap()
    }

    pub fn services(&self) -> Vec<ServiceView> {
        self.client().call(Request::ServiceList).unwrap()
    }

    pub fn status(&self) -> StatusView {
        self.client().call(Request::Status).unwrap()
    }

    pub fn apply(&self, name: &str, image: &str) -> ServiceView {
        let mut views: Vec<ServiceView> = self
            .client()
            .call(Request::ServiceApply {
                services: vec![named(name, image)],
            })
            .unwrap();
        views.pop().unwrap()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("daemon running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        let name = self.name.clone();
        wait_for(&format!("{name} to exit"), 20_000, || {
            child.try_wait().unwrap()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn named(name: &str, image: &str) -> NamedSpec {
    NamedSpec {
        name: name.parse().unwrap(),
        spec: ServiceSpec::new(image),
    }
}

/// A CA and `count` nodes on 127.0.0.1, each listing every other as a seed peer.
pub struct Cluster {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Daemon>,
}

impl Cluster {
    pub fn new(count: usize, extra_config: &str) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let ca_dir = root.path().join("ca");
        shoal::sync::pki::init_ca(&ca_dir, false).unwrap();
        let addresses: Vec<SocketAddr> = (0..count)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
            .collect();
        let mut nodes = Vec::new();
        for (index, address) in addresses.iter().enumerate() {
            let name = format!("node-{}", (b'a' + index as u8) as char);
            let dir = root.path().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            let paths = shoal::sync::pki::issue_node_cert(
                &ca_dir,
                &name.parse().unwrap(),
                &["127.0.0.1".to_string()],
                1,
                &dir,
                false,
            )
            .unwrap();
            let peers: Vec<String> = addresses
                .iter()
                .filter(|a| *a != address)
                .map(|a| format!("\"{a}\""))
                .collect();
            let config = write_config(
                &dir,
                &format!(
                    "node_name = \"{name}\"\nstate_dir = \"{state}\"\nlisten = \"{address}\"\n\
                     peers = [{peers}]\n\n[tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\n\
                     key_file = \"{key}\"\n{extra_config}",
                    state = dir.join("state").display(),
                    peers = peers.join(", "),
                    ca = paths.ca_cert.display(),
                    cert = paths.cert.display(),
                    key = paths.key.display(),
                ),
            );
            nodes.push(Daemon {
                name,
                socket: dir.join("state").join("shoal.sock"),
                dir,
                config,
                address: *address,
                child: None,
                extra_env: Vec::new(),
            });
        }
        Cluster { root, nodes }
    }

    pub fn start_all(&mut self) {
        for node in &mut self.nodes {
            node.start();
        }
        for node in &mut self.nodes {
            node.wait_ready();
        }
    }
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("shoal.toml");
    std::fs::write(&path, text).unwrap();
    path
}
