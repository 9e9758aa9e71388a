//! Container networking in real network namespaces, as root: two "node" namespaces
//! on a bridge namespace, each with its node bridge and subnet; containers on both
//! reach each other once routes are synced; attach/detach leave nothing behind.
//! The `NodeNetwork` and `routes` calls run in a thread that entered the node's
//! namespace, which is how a node that is a namespace runs them.

mod common;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use common::{busybox_image, require_root};
use nix::sched::{CloneFlags, setns};
use shoal_crdt::Subnet;
use shoal_oci::network::{self, NetworkError, NodeNetwork, ROUTE_PROTOCOL};
use shoal_oci::{
    ContainerConfig, ExitStatus, ImageStore, LibcontainerRuntime, Limits, RootfsMode, Runtime,
    RuntimeSettings,
};

/// Every namespace these tests make starts with this, then the test process's pid.
const TEST_PREFIX: &str = "shoal-ntest-";
const BRIDGE: &str = "shoal0";

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A named network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Self {
        ip(&["netns", "add", &name]);
        let netns = Netns(name);
        ip(&["-n", &netns.0, "link", "set", "lo", "up"]);
        netns
    }

    fn name(&self) -> &str {
        &self.0
    }

    /// Runs `f` in a thread that entered this namespace; the `ip` commands it
    /// starts inherit the thread's namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(Path::new(network::NETNS_DIR).join(&self.0)).unwrap();
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

    /// `ip -n <this> args...`.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
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

fn unique(name: &str) -> String {
    format!("{TEST_PREFIX}{}-{name}", std::process::id())
}

/// One node of the test cluster: its namespace, its address on the link between
/// nodes, and the prefix of its containers' namespaces.
struct Node {
    _containers: DeletePrefixed,
    netns: Netns,
    address: Ipv4Addr,
    subnet: Subnet,
    netns_prefix: String,
}

impl Node {
    fn network(&self) -> NodeNetwork {
        self.netns
            .run(|| NodeNetwork::ensure(BRIDGE, self.subnet, &self.netns_prefix))
            .unwrap()
    }
}

/// Two nodes wired to a bridge in a namespace of its own. Field order makes the
/// nodes go first on drop (their veths go with their namespaces).
struct Cluster {
    nodes: Vec<Node>,
    _link: Netns,
}

fn cluster(name: &str) -> Cluster {
    sweep_stale();
    let link = Netns::create(unique(&format!("{name}-link")));
    link.ip(&["link", "add", "br0", "type", "bridge"]);
    link.ip(&["link", "set", "br0", "up"]);
    let mut nodes = Vec::new();
    for index in 1..=2u8 {
        let netns = Netns::create(unique(&format!("{name}-n{index}")));
        let port = format!("p{index}");
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            netns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            link.name(),
        ]);
        link.ip(&["link", "set", &port, "master", "br0"]);
        link.ip(&["link", "set", &port, "up"]);
        let address = Ipv4Addr::new(10, 89, 0, 10 + index);
        netns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        netns.ip(&["link", "set", "eth0", "up"]);
        let netns_prefix = format!("{}.n{index}.", netns.name());
        nodes.push(Node {
            _containers: DeletePrefixed(netns_prefix.clone()),
            netns,
            address,
            subnet: format!("10.88.{index}.0/24").parse().unwrap(),
            netns_prefix,
        });
    }
    Cluster { nodes, _link: link }
}

/// Whether one ICMP echo from namespace path `from` to `to` is answered.
fn pings(from: &Path, to: Ipv4Addr, wait_s: u32) -> bool {
    let status = Command::new("nsenter")
        .arg(format!("--net={}", from.display()))
        .args(["busybox", "ping", "-c", "1", "-W", &wait_s.to_string()])
        .arg(to.to_string())
        .output()
        .unwrap();
    status.status.success()
}

/// Retries a ping a few times: the first one may race the neighbour discovery.
fn reaches(from: &Path, to: Ipv4Addr) -> bool {
    (0..3).any(|_| pings(from, to, 2))
}

fn owned_routes(node: &Node) -> String {
    node.netns
        .ip(&["route", "show", "proto", &ROUTE_PROTOCOL.to_string()])
}

fn host_veths(node: &Node) -> Vec<String> {
    node.netns
        .ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with(network::HOST_INTERFACE_PREFIX))
        .collect()
}

fn peer(node: &Node) -> (Subnet, IpAddr) {
    (node.subnet, IpAddr::V4(node.address))
}

#[test]
fn containers_on_two_nodes_reach_each_other_once_routes_are_synced() {
    if !require_root() {
        return;
    }
    let cluster = cluster("ping");
    let [one, two] = &cluster.nodes[..] else {
        unreachable!()
    };
    let network_one = one.network();
    let network_two = two.network();
    let address_a = Ipv4Addr::new(10, 88, 1, 2);
    let address_b = Ipv4Addr::new(10, 88, 2, 2);
    let a = one
        .netns
        .run(|| network_one.attach("web-a", address_a))
        .unwrap();
    let b = two
        .netns
        .run(|| network_two.attach("web-b", address_b))
        .unwrap();
    assert!(a.created && b.created);
    assert_eq!(a.netns_path, network_one.netns_path("web-a").unwrap());
    assert!(a.netns_path.exists() && b.netns_path.exists());
    for node in [one, two] {
        let forwarding = node
            .netns
            .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap());
        assert_eq!(forwarding.trim(), "1");
    }

    // Same node: the container reaches its gateway. Across nodes: nothing yet.
    assert!(reaches(&a.netns_path, one.subnet.gateway()));
    assert!(
        !pings(&a.netns_path, address_b, 1),
        "reached B without a route"
    );

    let report_one = one
        .netns
        .run(|| network::routes::sync(&[peer(two)]))
        .unwrap();
    let report_two = two
        .netns
        .run(|| network::routes::sync(&[peer(one)]))
        .unwrap();
    assert_eq!(report_one.added, vec![two.subnet]);
    assert_eq!(report_two.added, vec![one.subnet]);
    assert!(
        owned_routes(one).contains("10.88.2.0/24 via 10.89.0.12"),
        "{}",
        owned_routes(one)
    );
    assert!(reaches(&a.netns_path, address_b), "A cannot reach B");
    assert!(reaches(&b.netns_path, address_a), "B cannot reach A");

    // Again: nothing to do.
    let again = one
        .netns
        .run(|| network::routes::sync(&[peer(two)]))
        .unwrap();
    assert_eq!(
        (again.added.len(), again.removed.len(), again.unchanged),
        (0, 0, 1)
    );

    // A route we did not make survives; ours goes when its peer goes.
    one.netns
        .ip(&["route", "add", "10.77.0.0/24", "via", "10.89.0.12"]);
    let emptied = one.netns.run(|| network::routes::sync(&[])).unwrap();
    assert_eq!(emptied.removed, vec!["10.88.2.0/24".to_owned()]);
    assert_eq!(owned_routes(one).trim(), "");
    assert!(
        one.netns
            .ip(&["route", "show"])
            .contains("10.77.0.0/24 via 10.89.0.12")
    );
    assert!(
        !pings(&a.netns_path, address_b, 1),
        "reached B after its route went"
    );

    // A peer whose node address changed gets its route replaced.
    one.netns
        .run(|| network::routes::sync(&[peer(two)]))
        .unwrap();
    let moved = (two.subnet, IpAddr::V4(Ipv4Addr::new(10, 89, 0, 99)));
    let report = one.netns.run(|| network::routes::sync(&[moved])).unwrap();
    assert_eq!(report.added, vec![two.subnet]);
    assert_eq!(report.removed, vec!["10.88.2.0/24".to_owned()]);
    assert!(owned_routes(one).contains("10.88.2.0/24 via 10.89.0.99"));

    // Bad input changes nothing.
    let overlapping = [
        moved,
        ("10.88.0.0/16".parse().unwrap(), IpAddr::V4(two.address)),
    ];
    let error = one
        .netns
        .run(|| network::routes::sync(&overlapping))
        .unwrap_err();
    assert!(
        matches!(error, NetworkError::OverlappingPeers { .. }),
        "{error}"
    );
    assert!(owned_routes(one).contains("10.88.2.0/24 via 10.89.0.99"));

    // Detach leaves no namespace and no veth behind, and may be repeated.
    for (node, network, id) in [(one, &network_one, "web-a"), (two, &network_two, "web-b")] {
        assert_eq!(
            node.netns.run(|| network.attached()).unwrap(),
            vec![id.to_owned()]
        );
        node.netns.run(|| network.detach(id)).unwrap();
        node.netns.run(|| network.detach(id)).unwrap();
        assert_eq!(host_veths(node), Vec::<String>::new());
        assert!(node.netns.run(|| network.attached()).unwrap().is_empty());
    }
    assert!(!a.netns_path.exists() && !b.netns_path.exists());
}

#[test]
fn attach_is_idempotent_refuses_a_second_address_and_repairs_a_half_made_one() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let netns = Netns::create(unique("attach"));
    let subnet: Subnet = "10.88.1.0/24".parse().unwrap();
    let prefix = format!("{}.", netns.name());
    let _containers = DeletePrefixed(prefix.clone());
    let network = netns
        .run(|| NodeNetwork::ensure(BRIDGE, subnet, &prefix))
        .unwrap();
    let address = Ipv4Addr::new(10, 88, 1, 5);
    let first = netns.run(|| network.attach("db", address)).unwrap();
    assert!(first.created);
    let eth0 = |path: &Path| {
        let output = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(eth0(&first.netns_path).contains("10.88.1.5/24"));

    let second = netns.run(|| network.attach("db", address)).unwrap();
    assert!(!second.created);
    assert_eq!(second.netns_path, first.netns_path);

    let error = netns
        .run(|| network.attach("db", Ipv4Addr::new(10, 88, 1, 6)))
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "container db is already attached with address 10.88.1.5/24, refusing 10.88.1.6"
    );
    assert!(eth0(&first.netns_path).contains("10.88.1.5/24"));
    assert!(!eth0(&first.netns_path).contains("10.88.1.6"));

    // Half made: the host end of the veth is gone. Attaching again repairs it.
    netns.ip(&["link", "del", "dev", &first.host_interface]);
    let repaired = netns.run(|| network.attach("db", address)).unwrap();
    assert!(repaired.created);
    let link = netns.ip(&["-o", "link", "show", "dev", &repaired.host_interface]);
    assert!(link.contains(&format!("master {BRIDGE}")), "{link}");
    assert!(eth0(&repaired.netns_path).contains("10.88.1.5/24"));

    // Bad input: an error naming it, and no namespace made.
    for (id, address, expected) in [
        (
            "other",
            "10.88.2.5",
            "address 10.88.2.5 is not a container address of subnet 10.88.1.0/24",
        ),
        (
            "other",
            "10.88.1.1",
            "address 10.88.1.1 is not a container address of subnet 10.88.1.0/24",
        ),
        (
            "other",
            "10.88.1.255",
            "address 10.88.1.255 is not a container address of subnet 10.88.1.0/24",
        ),
        ("a/b", "10.88.1.7", "container id \"a/b\" is invalid"),
    ] {
        let error = netns
            .run(|| network.attach(id, address.parse().unwrap()))
            .unwrap_err();
        assert!(error.to_string().starts_with(expected), "{error}");
    }
    assert_eq!(
        netns.run(|| network.attached()).unwrap(),
        vec!["db".to_owned()]
    );

    // A link that is not ours under the derived name: refused, and left alone.
    let taken_name = {
        let probe = netns
            .run(|| network.attach("taken", Ipv4Addr::new(10, 88, 1, 8)))
            .unwrap();
        netns.run(|| network.detach("taken")).unwrap();
        probe.host_interface
    };
    netns.ip(&[
        "link",
        "add",
        &taken_name,
        "type",
        "veth",
        "peer",
        "name",
        "foreign0",
    ]);
    let error = netns
        .run(|| network.attach("taken", Ipv4Addr::new(10, 88, 1, 8)))
        .unwrap_err();
    assert!(
        matches!(error, NetworkError::InterfaceTaken { .. }),
        "{error}"
    );
    assert!(!network.netns_path("taken").unwrap().exists());
    netns.run(|| network.detach("taken")).unwrap();
    assert!(netns.ip(&["-o", "link", "show"]).contains(&taken_name));

    // The bridge: ensure is idempotent, moves to a new subnet, refuses a non-bridge.
    let again = netns
        .run(|| NodeNetwork::ensure(BRIDGE, subnet, &prefix))
        .unwrap();
    assert_eq!(again, network);
    let bridge_addresses = || netns.ip(&["-o", "-4", "addr", "show", "dev", BRIDGE]);
    assert_eq!(bridge_addresses().matches("inet ").count(), 1);
    let moved: Subnet = "10.88.9.0/24".parse().unwrap();
    netns
        .run(|| NodeNetwork::ensure(BRIDGE, moved, &prefix))
        .unwrap();
    let addresses = bridge_addresses();
    assert!(
        addresses.contains("10.88.9.1/24") && !addresses.contains("10.88.1.1"),
        "{addresses}"
    );
    let error = netns
        .run(|| NodeNetwork::ensure(&taken_name, subnet, &prefix))
        .unwrap_err();
    assert!(matches!(error, NetworkError::NotABridge { .. }), "{error}");
    let error = netns
        .run(|| NodeNetwork::ensure("a-name-far-too-long", subnet, &prefix))
        .unwrap_err();
    assert!(
        matches!(error, NetworkError::InterfaceName { .. }),
        "{error}"
    );

    netns.run(|| network.detach("db")).unwrap();
    assert!(!first.netns_path.exists());
    assert!(netns.run(|| network.attached()).unwrap().is_empty());
    netns.ip(&["link", "del", "dev", &taken_name]);
    let veths = netns.ip(&["-o", "link", "show", "type", "veth"]);
    assert_eq!(veths.trim(), "", "veths left behind");
}

/// Deletes the container when the test ends, passed or not.
struct DeleteContainer<'a>(&'a LibcontainerRuntime, String);

impl Drop for DeleteContainer<'_> {
    fn drop(&mut self) {
        let _ = self.0.delete(&self.1);
    }
}

#[test]
fn a_real_container_in_its_attached_namespace_reaches_a_container_on_the_other_node() {
    if !require_root() {
        return;
    }
    let cluster = cluster("real");
    let [one, two] = &cluster.nodes[..] else {
        unreachable!()
    };
    let network_one = one.network();
    let network_two = two.network();
    let address_b = Ipv4Addr::new(10, 88, 2, 7);
    let a = one
        .netns
        .run(|| network_one.attach("real-a", Ipv4Addr::new(10, 88, 1, 7)))
        .unwrap();
    two.netns
        .run(|| network_two.attach("real-b", address_b))
        .unwrap();
    one.netns
        .run(|| network::routes::sync(&[peer(two)]))
        .unwrap();
    two.netns
        .run(|| network::routes::sync(&[peer(one)]))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_image(&dir.path().join("image"), &["/bin/true"]);
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout.path, None)
        .unwrap();
    let mut settings = RuntimeSettings::new(&dir.path().join("runtime"));
    settings.cgroup_parent = "shoal-test".to_owned();
    settings.zygote = common::zygote_command();
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    let id = format!("net-real-{}", std::process::id());
    let _delete = DeleteContainer(&runtime, id.clone());
    // Unprivileged containers lack CAP_NET_RAW, so busybox ping cannot run in
    // them: the container sends a line over TCP to a listener in B's namespace.
    let b_path = network_two.netns_path("real-b").unwrap();
    let mut listener = Command::new("nsenter")
        .arg(format!("--net={}", b_path.display()))
        .args(["busybox", "nc", "-l", "-p", "7000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script = format!(
        "ip -o -4 addr show dev eth0; for try in 1 2 3 4 5; do echo hello from a | nc {address_b} 7000 && exit 0; sleep 1; done; exit 1"
    );
    let config = ContainerConfig {
        id: id.clone(),
        image,
        command: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), script]),
        env: Vec::new(),
        limits: Limits::default(),
        netns_path: Some(a.netns_path.clone()),
        rootfs_mode: RootfsMode::Auto,
        mounts: Vec::new(),
        annotations: Default::default(),
    };
    runtime.create(&config).unwrap();
    runtime.start(&id).unwrap();
    let exit = runtime
        .wait(&id, 20_000)
        .unwrap()
        .expect("ping ends in time");
    let (stdout_path, stderr_path) = runtime.log_paths(&id);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert_eq!(exit, ExitStatus::Code(0), "stderr: {stderr}");
    // The listener ends when the connection closes; a listener that got nothing is killed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while listener.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = listener.kill();
    let received = listener.wait_with_output().unwrap().stdout;
    assert_eq!(String::from_utf8_lossy(&received), "hello from a\n");
    // The log thread may still be draining the pipe right after the exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut stdout = String::new();
    while !stdout.contains("inet ") && std::time::Instant::now() < deadline {
        stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(stdout.contains("inet 10.88.1.7/24"), "{stdout}");

    runtime.delete(&id).unwrap();
    one.netns.run(|| network_one.detach("real-a")).unwrap();
    two.netns.run(|| network_two.detach("real-b")).unwrap();
    assert!(!a.netns_path.exists() && !b_path.exists());
}

#[test]
fn parallel_attaches_and_detaches_on_one_node_do_not_interfere() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let netns = Netns::create(unique("parallel"));
    let subnet: Subnet = "10.88.1.0/24".parse().unwrap();
    let prefix = format!("{}.", netns.name());
    let _containers = DeletePrefixed(prefix.clone());
    let network = netns
        .run(|| NodeNetwork::ensure(BRIDGE, subnet, &prefix))
        .unwrap();
    let ids: Vec<String> = (0..8).map(|index| format!("web-{index}")).collect();
    let attachments: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(index, id)| {
                let (netns, network) = (&netns, &network);
                scope.spawn(move || {
                    let address = Ipv4Addr::new(10, 88, 1, 10 + index as u8);
                    netns.run(|| network.attach(id, address)).unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    assert_eq!(netns.run(|| network.attached()).unwrap(), ids);
    let ports = netns.ip(&["-o", "link", "show", "master", BRIDGE]);
    for attachment in &attachments {
        assert!(attachment.created);
        assert!(ports.contains(&attachment.host_interface), "{ports}");
    }
    // Every container reaches every other through the bridge.
    for attachment in &attachments[1..] {
        assert!(
            reaches(&attachments[0].netns_path, attachment.address),
            "{} unreachable",
            attachment.address
        );
    }
    std::thread::scope(|scope| {
        for id in &ids {
            let (netns, network) = (&netns, &network);
            scope.spawn(move || netns.run(|| network.detach(id)).unwrap());
        }
    });
    assert!(netns.run(|| network.attached()).unwrap().is_empty());
    let veths = netns.ip(&["-o", "link", "show", "type", "veth"]);
    assert_eq!(veths.trim(), "", "veths left behind");
}

#[test]
fn network_calls_run_while_containers_are_created_without_deadlock() {
    if !require_root() {
        return;
    }
    sweep_stale();
    let netns = Netns::create(unique("concurrent"));
    let subnet: Subnet = "10.88.1.0/24".parse().unwrap();
    let prefix = format!("{}.", netns.name());
    let _containers = DeletePrefixed(prefix.clone());
    let network = netns
        .run(|| NodeNetwork::ensure(BRIDGE, subnet, &prefix))
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_image(&dir.path().join("image"), &["/bin/true"]);
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout.path, None)
        .unwrap();
    let mut settings = RuntimeSettings::new(&dir.path().join("runtime"));
    settings.cgroup_parent = "shoal-test".to_owned();
    settings.zygote = common::zygote_command();
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let network_calls = std::thread::scope(|scope| {
        // Network calls spawn `ip` over and over while the other thread clones
        // container processes.
        let caller = scope.spawn(|| {
            netns.run(|| {
                let mut calls = 0u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    network.attach("busy", Ipv4Addr::new(10, 88, 1, 9)).unwrap();
                    network.detach("busy").unwrap();
                    calls += 1;
                }
                calls
            })
        });
        for round in 0..10 {
            let id = format!("net-busy-{}-{round}", std::process::id());
            let _delete = DeleteContainer(&runtime, id.clone());
            let config = ContainerConfig {
                id: id.clone(),
                image: image.clone(),
                command: None,
                env: Vec::new(),
                limits: Limits::default(),
                netns_path: None,
                rootfs_mode: RootfsMode::Auto,
                mounts: Vec::new(),
                annotations: Default::default(),
            };
            runtime.create(&config).unwrap();
            runtime.start(&id).unwrap();
            let exit = runtime.wait(&id, 10_000).unwrap();
            assert_eq!(exit, Some(ExitStatus::Code(0)), "round {round}");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        caller.join().unwrap()
    });
    assert!(network_calls > 0);
    assert!(netns.run(|| network.attached()).unwrap().is_empty());
}
