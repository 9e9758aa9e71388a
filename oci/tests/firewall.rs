//! shoal's nftables table in real network namespaces, as root. One topology per
//! test: a node namespace with its bridge and two container namespaces (made by
//! `NodeNetwork`), a client and an outside server each on a veth to the node, and
//! a second node with one container, routed to the first. Every container runs a
//! small TCP (and UDP) responder that answers with its name and the address the
//! connection came from, so each check sees both where it landed and which source
//! the backend saw. Firewall calls run in a thread that entered the node's
//! namespace, as on a node that is a namespace.

mod common;

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::require_root;
use nix::sched::{CloneFlags, setns};
use shoal_crdt::Subnet;
use shoal_oci::network::{
    self, Firewall, FirewallRules, NetworkError, NftFirewall, NodeNetwork, PortForward, Protocol,
};

/// Every namespace these tests make starts with this, then the test process's pid.
const TEST_PREFIX: &str = "shoal-ftest-";
const BRIDGE: &str = "shoal0";
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
/// The node's address toward the outside server, and the server's.
const UPLINK_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 1);
const OUTSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 2);
/// The two nodes' addresses on the link between them.
const NODE_LINK_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
const NODE_TWO_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 2);
const C1: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 2);
const C2: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 3);
const C3: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 2);
const GATEWAY_ONE: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 1);
const CONTAINER_PORT: u16 = 80;
const OUTSIDE_PORT: u16 = 9000;
/// A connection that works here answers in microseconds; one that does not is
/// refused or dropped, and a drop waits this long.
const CONNECT_TIMEOUT_MS: u64 = 1500;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// A named network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let netns = Netns(name);
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    fn name(&self) -> &str {
        &self.0
    }

    fn path(&self) -> PathBuf {
        Path::new(network::NETNS_DIR).join(&self.0)
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.path(), f)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// `nft args...` inside this namespace.
    fn nft(&self, args: &[&str]) -> String {
        let mut full = vec!["netns", "exec", self.name(), "nft"];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Whether `nft list table ip <table>` finds it.
    fn has_table(&self, table: &str) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                self.name(),
                "nft",
                "list",
                "table",
                "ip",
                table,
            ])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// `nft -j list table ip <table>` without the handles, which change whenever
    /// a table is made again.
    fn table_json(&self, table: &str) -> serde_json::Value {
        let mut value: serde_json::Value =
            serde_json::from_str(&self.nft(&["-j", "list", "table", "ip", table])).unwrap();
        strip_handles(&mut value);
        value
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn strip_handles(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("handle");
            map.remove("metainfo");
            map.values_mut().for_each(strip_handles);
        }
        serde_json::Value::Array(items) => {
            items.retain(|item| item.get("metainfo").is_none());
            items.iter_mut().for_each(strip_handles);
        }
        _ => {}
    }
}

/// Runs `f` in a thread that entered the namespace at `path`; sockets made there
/// stay in that namespace.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(path).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
    })
}

/// Deletes every namespace whose name starts with the prefix when dropped: the
/// container namespaces a failed test did not detach.
struct DeletePrefixed(String);

impl Drop for DeletePrefixed {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(network::NETNS_DIR) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.0) {
                let _ = Command::new("ip").args(["netns", "delete", &name]).status();
            }
        }
    }
}

/// Deletes test namespaces left by runs whose process is gone (SIGKILL-ed).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(network::NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TEST_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !Path::new("/proc").join(&pid).exists() {
            let _ = Command::new("ip").args(["netns", "delete", &name]).status();
        }
    }
}

/// Answers every TCP connection (and UDP datagram) with `<name> <peer address>`
/// until dropped.
struct Responder {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(netns: &Path, name: &str, address: SocketAddrV4, udp: bool) -> Self {
        let (listener, socket) = in_netns(netns, || {
            let listener = TcpListener::bind(address).unwrap();
            let socket = udp.then(|| UdpSocket::bind(address).unwrap());
            (listener, socket)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let (name_tcp, stop_tcp) = (name.to_owned(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop_tcp.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = writeln!(stream, "{name_tcp} {}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        if let Some(socket) = socket {
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let (name_udp, stop_udp) = (name.to_owned(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 64];
                while !stop_udp.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                        let reply = format!("{name_udp} {}", peer.ip());
                        let _ = socket.send_to(reply.as_bytes(), peer);
                    }
                }
            }));
        }
        Responder { stop, threads }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Connects from the namespace at `from` to `to` and returns the answer, or
/// `None` when the connection is refused or times out.
fn ask(from: &Path, to: Ipv4Addr, port: u16) -> Option<String> {
    in_netns(from, || {
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let target = SocketAddr::V4(SocketAddrV4::new(to, port));
        let mut stream = TcpStream::connect_timeout(&target, timeout).ok()?;
        stream.set_read_timeout(Some(timeout)).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer.trim().to_owned())
    })
}

/// Sends one UDP datagram from `from` to `to` and returns the answer.
fn ask_udp(from: &Path, to: Ipv4Addr, port: u16) -> Option<String> {
    in_netns(from, || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .ok()?;
        socket.send_to(b"hello", (to, port)).ok()?;
        let mut buffer = [0u8; 64];
        let (length, _) = socket.recv_from(&mut buffer).ok()?;
        Some(String::from_utf8_lossy(&buffer[..length]).into_owned())
    })
}

fn answer(name: &str, source: Ipv4Addr) -> Option<String> {
    Some(format!("{name} {source}"))
}

/// Connects `left` (interface `left_name`, `left_address/24`) to `right` with a
/// veth pair; both ends up.
fn link(
    left: &Netns,
    left_name: &str,
    left_address: Ipv4Addr,
    right: &Netns,
    right_name: &str,
    right_address: Ipv4Addr,
) {
    ip(&[
        "link",
        "add",
        left_name,
        "netns",
        left.name(),
        "type",
        "veth",
        "peer",
        "name",
        right_name,
        "netns",
        right.name(),
    ]);
    for (netns, name, address) in [
        (left, left_name, left_address),
        (right, right_name, right_address),
    ] {
        netns.ip(&["addr", "add", &format!("{address}/24"), "dev", name]);
        netns.ip(&["link", "set", name, "up"]);
    }
}

/// The namespaces of one test, the node networks and the responders. Field
/// order is drop order: responders, then container namespaces, then the rest.
struct Topology {
    _responders: Vec<Responder>,
    _containers: Vec<DeletePrefixed>,
    node: Netns,
    network: NodeNetwork,
    client: Netns,
    _outside: Netns,
    _node_two: Netns,
    /// Namespace paths of containers c1, c2 (node one) and c3 (node two).
    c1: PathBuf,
    c2: PathBuf,
    c3: PathBuf,
    batch_dir: tempfile::TempDir,
}

fn subnet(text: &str) -> Subnet {
    text.parse().unwrap()
}

impl Topology {
    fn build(test: &str) -> Self {
        sweep_stale();
        let unique = |role: &str| format!("{TEST_PREFIX}{}-{test}-{role}", std::process::id());
        let node = Netns::create(unique("node"));
        let client = Netns::create(unique("client"));
        let outside = Netns::create(unique("outside"));
        let node_two = Netns::create(unique("node2"));
        let prefix_one = format!("{}.", node.name());
        let prefix_two = format!("{}.", node_two.name());
        let containers = vec![
            DeletePrefixed(prefix_one.clone()),
            DeletePrefixed(prefix_two.clone()),
        ];
        link(&node, "eth0", NODE_ADDRESS, &client, "eth0", CLIENT_ADDRESS);
        link(
            &node,
            "up0",
            UPLINK_ADDRESS,
            &outside,
            "eth0",
            OUTSIDE_ADDRESS,
        );
        link(
            &node,
            "n2",
            NODE_LINK_ADDRESS,
            &node_two,
            "eth0",
            NODE_TWO_ADDRESS,
        );
        let (subnet_one, subnet_two) = (subnet("10.88.1.0/24"), subnet("10.88.2.0/24"));
        let network = node
            .run(|| NodeNetwork::ensure(BRIDGE, subnet_one, &prefix_one))
            .unwrap();
        let network_two = node_two
            .run(|| NodeNetwork::ensure(BRIDGE, subnet_two, &prefix_two))
            .unwrap();
        let c1_attachment = node.run(|| network.attach("c1", C1)).unwrap();
        let c1 = c1_attachment.netns_path;
        let c2 = node.run(|| network.attach("c2", C2)).unwrap().netns_path;
        let c3 = node_two
            .run(|| network_two.attach("c3", C3))
            .unwrap()
            .netns_path;
        node.run(|| network::routes::sync(&[(subnet_two, IpAddr::V4(NODE_TWO_ADDRESS))]))
            .unwrap();
        node_two
            .run(|| network::routes::sync(&[(subnet_one, IpAddr::V4(NODE_LINK_ADDRESS))]))
            .unwrap();
        let responders = vec![
            Responder::start(&c1, "c1", SocketAddrV4::new(C1, CONTAINER_PORT), true),
            Responder::start(&c2, "c2", SocketAddrV4::new(C2, CONTAINER_PORT), false),
            Responder::start(&c3, "c3", SocketAddrV4::new(C3, CONTAINER_PORT), false),
            Responder::start(
                &outside.path(),
                "outside",
                SocketAddrV4::new(OUTSIDE_ADDRESS, OUTSIDE_PORT),
                false,
            ),
        ];
        Topology {
            _responders: responders,
            _containers: containers,
            node,
            network,
            client,
            _outside: outside,
            _node_two: node_two,
            c1,
            c2,
            c3,
            batch_dir: tempfile::tempdir().unwrap(),
        }
    }

    fn firewall(&self) -> NftFirewall {
        NftFirewall::new(self.batch_dir.path().join("firewall.json"))
    }

    fn rules(&self, forwards: Vec<PortForward>) -> FirewallRules {
        FirewallRules {
            bridge: self.network.bridge().to_owned(),
            own_subnet: self.network.subnet(),
            cluster_subnets: vec![subnet("10.88.1.0/24"), subnet("10.88.2.0/24")],
            forwards,
        }
    }

    fn apply(&self, firewall: &NftFirewall, rules: &FirewallRules) -> Result<(), NetworkError> {
        self.node.run(|| firewall.apply(rules))
    }
}

fn forward(host_port: u16, backends: &[Ipv4Addr]) -> PortForward {
    PortForward {
        host_ip: None,
        host_port,
        protocol: Protocol::Tcp,
        container_port: CONTAINER_PORT,
        backends: backends.to_vec(),
        masquerade: false,
    }
}

#[test]
fn published_ports_reach_their_containers_from_a_client_the_node_and_containers() {
    if !require_root() {
        return;
    }
    let topology = Topology::build("publish");
    let (client, node) = (topology.client.path(), topology.node.path());
    assert_eq!(
        ask(&client, NODE_ADDRESS, 8080),
        None,
        "published before apply"
    );

    let mut only_here = forward(8070, &[C2]);
    only_here.host_ip = Some(NODE_ADDRESS);
    let mut dns = forward(5353, &[C1]);
    dns.protocol = Protocol::Udp;
    dns.container_port = 80;
    let rules = topology.rules(vec![
        forward(8080, &[C1]),
        forward(8090, &[C1, C2]),
        only_here,
        dns,
    ]);
    let firewall = topology.firewall();
    topology.apply(&firewall, &rules).unwrap();

    // From the client: the backend sees the client's own address.
    assert_eq!(
        ask(&client, NODE_ADDRESS, 8080),
        answer("c1", CLIENT_ADDRESS)
    );
    assert_eq!(
        ask(&client, NODE_ADDRESS, 8070),
        answer("c2", CLIENT_ADDRESS)
    );
    assert_eq!(
        ask_udp(&client, NODE_ADDRESS, 5353),
        answer("c1", CLIENT_ADDRESS)
    );
    // Nothing else is published.
    assert_eq!(ask(&client, NODE_ADDRESS, 8081), None);
    assert_eq!(ask(&client, NODE_ADDRESS, CONTAINER_PORT), None);

    // From the node itself: its own address, and 127.0.0.1 (masqueraded to the
    // bridge address, so the container can answer).
    assert_eq!(ask(&node, NODE_ADDRESS, 8080), answer("c1", NODE_ADDRESS));
    assert_eq!(
        ask(&node, Ipv4Addr::LOCALHOST, 8080),
        answer("c1", GATEWAY_ONE)
    );
    // A forward for one address only is not on the others.
    assert_eq!(ask(&node, Ipv4Addr::LOCALHOST, 8070), None);
    let route_localnet = topology.node.run(|| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet")).unwrap()
    });
    assert_eq!(route_localnet.trim(), "1");

    // Hairpin: containers reach their own node's published port.
    assert_eq!(
        ask(&topology.c2, NODE_ADDRESS, 8080),
        answer("c1", GATEWAY_ONE)
    );
    assert_eq!(
        ask(&topology.c2, GATEWAY_ONE, 8080),
        answer("c1", GATEWAY_ONE)
    );
    // The backend itself too: where br_netfilter is loaded the DNAT-ed packet is
    // bridged back out of the port it came in by, which needs the hairpin mode
    // `NodeNetwork::attach` sets.
    assert_eq!(
        ask(&topology.c1, NODE_ADDRESS, 8080),
        answer("c1", GATEWAY_ONE)
    );

    // Two backends: new connections go to both (all on one has odds 2^-39).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = ask(&client, NODE_ADDRESS, 8090).expect("a balanced answer");
        seen.insert(reply);
    }
    let expected: std::collections::BTreeSet<String> = [
        format!("c1 {CLIENT_ADDRESS}"),
        format!("c2 {CLIENT_ADDRESS}"),
    ]
    .into();
    assert_eq!(seen, expected);

    // The batch file stays for reading, private.
    let metadata = std::fs::metadata(firewall.batch_path()).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
}

#[test]
fn egress_is_masqueraded_and_traffic_between_containers_keeps_its_source() {
    if !require_root() {
        return;
    }
    let topology = Topology::build("egress");
    // Without the table the outside server cannot answer a container address.
    assert_eq!(ask(&topology.c1, OUTSIDE_ADDRESS, OUTSIDE_PORT), None);

    let firewall = topology.firewall();
    topology
        .apply(&firewall, &topology.rules(Vec::new()))
        .unwrap();
    assert_eq!(
        ask(&topology.c1, OUTSIDE_ADDRESS, OUTSIDE_PORT),
        answer("outside", UPLINK_ADDRESS)
    );
    // To a container on the other node: the container's own address.
    assert_eq!(ask(&topology.c1, C3, CONTAINER_PORT), answer("c3", C1));
    assert_eq!(ask(&topology.c3, C2, CONTAINER_PORT), answer("c2", C3));
}

#[test]
fn a_mesh_forward_reaches_a_backend_on_another_node_through_this_one() {
    if !require_root() {
        return;
    }
    let topology = Topology::build("mesh");
    let client = topology.client.path();
    let firewall = topology.firewall();
    // Without masquerade, node two answers the client directly and cannot.
    let mut mesh = forward(8300, &[C3]);
    topology
        .apply(&firewall, &topology.rules(vec![mesh.clone()]))
        .unwrap();
    assert_eq!(ask(&client, NODE_ADDRESS, 8300), None);

    mesh.masquerade = true;
    topology
        .apply(&firewall, &topology.rules(vec![mesh]))
        .unwrap();
    assert_eq!(
        ask(&client, NODE_ADDRESS, 8300),
        answer("c3", NODE_LINK_ADDRESS)
    );
    // A mesh forward over backends on both nodes reaches each.
    let mut both = forward(8301, &[C1, C3]);
    both.masquerade = true;
    topology
        .apply(&firewall, &topology.rules(vec![both]))
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(ask(&client, NODE_ADDRESS, 8301).expect("a mesh answer"));
    }
    let expected: std::collections::BTreeSet<String> = [
        format!("c1 {CLIENT_ADDRESS}"),
        format!("c3 {NODE_LINK_ADDRESS}"),
    ]
    .into();
    assert_eq!(seen, expected);
}

#[test]
fn apply_replaces_only_its_table_idempotently_and_remove_deletes_it() {
    if !require_root() {
        return;
    }
    let topology = Topology::build("table");
    let node = &topology.node;
    let client = topology.client.path();
    node.nft(&["add", "table", "ip", "foreign"]);
    node.nft(&[
        "add", "chain", "ip", "foreign", "input", "{", "type", "filter", "hook", "input",
        "priority", "0", ";", "policy", "accept", ";", "}",
    ]);
    node.nft(&[
        "add", "rule", "ip", "foreign", "input", "tcp", "dport", "1", "accept",
    ]);
    let foreign = node.table_json("foreign");

    let firewall = topology.firewall();
    let rules = topology.rules(vec![forward(8080, &[C1]), forward(8081, &[C2])]);
    topology.apply(&firewall, &rules).unwrap();
    let first = node.table_json("shoal");
    topology.apply(&firewall, &rules).unwrap();
    assert_eq!(
        node.table_json("shoal"),
        first,
        "a second apply changed the table"
    );
    assert_eq!(node.table_json("foreign"), foreign);
    assert_eq!(
        ask(&client, NODE_ADDRESS, 8081),
        answer("c2", CLIENT_ADDRESS)
    );

    // New rules replace the old ones entirely.
    let fewer = topology.rules(vec![forward(8080, &[C1])]);
    topology.apply(&firewall, &fewer).unwrap();
    assert_ne!(node.table_json("shoal"), first);
    assert_eq!(ask(&client, NODE_ADDRESS, 8081), None);
    assert_eq!(
        ask(&client, NODE_ADDRESS, 8080),
        answer("c1", CLIENT_ADDRESS)
    );

    // A refused apply changes nothing: bad input, a missing bridge.
    let replaced = node.table_json("shoal");
    let error = topology
        .apply(&firewall, &topology.rules(vec![forward(8082, &[])]))
        .unwrap_err();
    assert!(matches!(error, NetworkError::NoBackends { .. }), "{error}");
    let mut no_bridge = topology.rules(vec![forward(8082, &[C1])]);
    no_bridge.bridge = "shoal-missing".to_owned();
    let error = topology.apply(&firewall, &no_bridge).unwrap_err();
    assert!(matches!(error, NetworkError::Sysctl { .. }), "{error}");
    assert_eq!(node.table_json("shoal"), replaced);

    // Remove: only shoal's table goes; again is fine.
    node.run(|| firewall.remove()).unwrap();
    assert!(!node.has_table("shoal"));
    assert_eq!(node.table_json("foreign"), foreign);
    assert_eq!(ask(&client, NODE_ADDRESS, 8080), None);
    node.run(|| firewall.remove()).unwrap();
    assert!(node.has_table("foreign"));

    // A firewall with another table leaves shoal's alone.
    topology.apply(&firewall, &rules).unwrap();
    let other =
        NftFirewall::with_table("shoal_other", topology.batch_dir.path().join("o.json")).unwrap();
    topology.apply(&other, &fewer).unwrap();
    node.run(|| other.remove()).unwrap();
    assert_eq!(node.table_json("shoal"), first);
}
