//! Real containers through real daemons: services in the replicated state become busybox
//! containers run by libcontainer on the nodes the placement picks; `shoal ps`, `service rm`,
//! daemon restarts (SIGTERM and kill -9) adopting running containers, a tampered image,
//! three daemons spreading three replicas, and `shoal logs` of a container on another node
//! read and followed through that node. Needs root (mounts, cgroups).

mod host_support;
#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use host_support::guard::{Guarded, ps, runtime_containers};
use host_support::{BINARY, Cluster, Daemon, wait_for};
use shoal::api::NamedSpec;
use shoal::api::{ContainerView, PsView};
use shoal::api::{Request, ServiceView, StatusView};
use shoal_crdt::ServiceSpec;

const CONTAINERS_CONFIG: &str =
    "\n[containers]\nreconcile_interval_ms = 200\nstop_grace_ms = 500\n";

fn busybox(dir: &Path) -> String {
    let layout = dir.join("busybox-image");
    image_support::busybox_image(&layout, &["/bin/busybox", "sleep", "3600"]);
    layout.display().to_string()
}

fn apply(daemon: &Daemon, name: &str, image: &str, replicas: u32) -> ServiceView {
    let mut spec = ServiceSpec::new(image);
    spec.replicas = replicas;
    spec.command = vec!["/bin/busybox".into(), "sleep".into(), "3600".into()];
    let mut views: Vec<ServiceView> = daemon
        .client()
        .call(Request::ServiceApply {
            services: vec![NamedSpec {
                name: name.parse().unwrap(),
                spec,
            }],
        })
        .unwrap();
    views.pop().unwrap()
}

fn running_of(view: &PsView, service: &str) -> Vec<ContainerView> {
    view.containers
        .iter()
        .filter(|c| c.service == service && c.state == "running")
        .cloned()
        .collect()
}

fn wait_running(daemon: &Daemon, service: &str, count: usize) -> Vec<ContainerView> {
    wait_for(
        &format!("{count} running containers of {service}"),
        60_000,
        || {
            let view = ps(daemon);
            let running = running_of(&view, service);
            (running.len() == count
                && view
                    .containers
                    .iter()
                    .filter(|c| c.service == service)
                    .count()
                    == count)
                .then_some(running)
        },
    )
}

trait LiveNodes {
    fn nodes_live(&self) -> usize;
}

impl LiveNodes for Daemon {
    fn nodes_live(&self) -> usize {
        let nodes: Vec<shoal::api::NodeView> = self.client().call(Request::Nodes).unwrap();
        nodes.iter().filter(|n| n.live).count()
    }
}

fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_service_runs_its_replicas_and_service_rm_removes_them() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(1, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    let daemon = &cluster.nodes[0];
    apply(daemon, "sleeper", &image, 2);
    let running = wait_running(daemon, "sleeper", 2);
    for container in &running {
        assert_eq!(container.node, "node-a");
        assert!(process_alive(
            container.pid.expect("running containers have a pid")
        ));
        assert!(container.since_unix_ms.is_some());
    }
    let view = wait_for("counters to follow the records", 10_000, || {
        let view = ps(daemon);
        (view.usage["node-a"].containers == 2).then_some(view)
    });
    let usage = &view.usage["node-a"];
    assert_eq!(usage.cpu_millis, 200);
    assert_eq!(usage.memory_bytes, 2 * 64 * 1024 * 1024);
    assert!(view.errors.is_empty(), "{:?}", view.errors);
    assert_eq!(runtime_containers(daemon).len(), 2);

    // The human table names both containers.
    let table = Command::new(BINARY)
        .args(["ps", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    for container in &running {
        assert!(table.contains(&container.id), "{table}");
    }

    let removed = Command::new(BINARY)
        .args(["service", "rm", "sleeper", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(removed.status.success());
    wait_for("the containers to be removed", 30_000, || {
        let view = ps(daemon);
        (view.containers.is_empty() && view.usage["node-a"] == Default::default()).then_some(())
    });
    wait_for("the runtime to forget them", 10_000, || {
        runtime_containers(daemon).is_empty().then_some(())
    });
    for container in &running {
        assert!(!process_alive(container.pid.unwrap()));
    }
}

#[test]
fn a_restarted_daemon_adopts_running_containers_without_restarting_them() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(1, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    apply(&cluster.nodes[0], "steady", &image, 1);
    let before = wait_running(&cluster.nodes[0], "steady", 1);
    let pid = before[0].pid.unwrap();

    // Graceful stop: containers keep running.
    assert!(cluster.nodes[0].stop().success());
    assert!(process_alive(pid));
    cluster.nodes[0].start();
    cluster.nodes[0].wait_ready();
    let after = wait_running(&cluster.nodes[0], "steady", 1);
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].pid, Some(pid), "the container was restarted");

    // kill -9: the same.
    cluster.nodes[0].kill9();
    assert!(process_alive(pid));
    cluster.nodes[0].start();
    cluster.nodes[0].wait_ready();
    // A few passes must go by without a restart.
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    let after = wait_running(&cluster.nodes[0], "steady", 1);
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].pid, Some(pid), "the container was restarted");

    // Scaled to two, then restarted: the first container is the current spec still (only
    // the replica count changed), so the new daemon keeps it and adds one.
    apply(&cluster.nodes[0], "steady", &image, 2);
    wait_running(&cluster.nodes[0], "steady", 2);
    assert!(cluster.nodes[0].stop().success());
    cluster.nodes[0].start();
    cluster.nodes[0].wait_ready();
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    let scaled = wait_running(&cluster.nodes[0], "steady", 2);
    let first = scaled
        .iter()
        .find(|c| c.id == before[0].id)
        .expect("the first container survives a scale and a daemon restart");
    assert_eq!(first.pid, Some(pid), "the container was replaced");

    cluster.nodes[0]
        .client()
        .call::<ServiceView>(Request::ServiceRemove {
            name: "steady".parse().unwrap(),
        })
        .unwrap();
    wait_for("removal", 30_000, || {
        ps(&cluster.nodes[0]).containers.is_empty().then_some(())
    });
}

#[test]
fn a_tampered_or_missing_image_is_an_error_on_the_service_not_a_crash() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(1, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    // Flip bytes in the largest blob (the busybox layer): its digest no longer matches.
    let blobs = Path::new(&image).join("blobs/sha256");
    let largest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&largest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&largest, bytes).unwrap();
    let daemon = &cluster.nodes[0];
    apply(daemon, "tampered", &image, 1);
    apply(daemon, "missing", "/nonexistent/image", 1);

    let view = wait_for("both errors in ps", 30_000, || {
        let view = ps(daemon);
        (view.errors.contains_key("tampered") && view.errors.contains_key("missing"))
            .then_some(view)
    });
    assert!(view.containers.is_empty(), "{:?}", view.containers);
    assert!(
        view.errors["tampered"].contains(&image),
        "{}",
        view.errors["tampered"]
    );
    assert!(
        view.errors["missing"].contains("/nonexistent/image"),
        "{}",
        view.errors["missing"]
    );
    let status: StatusView = daemon.client().call(Request::Status).unwrap();
    assert!(status.service_errors.contains_key("tampered"));
    let status_text = Command::new(BINARY)
        .args(["status", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let status_text = String::from_utf8(status_text.stdout).unwrap();
    assert!(status_text.contains("service tampered"), "{status_text}");
    // Still serving, nothing recorded for the bad services.
    assert_eq!(view.usage["node-a"], Default::default());
    assert_eq!(daemon.services().len(), 2);
    assert!(runtime_containers(daemon).is_empty());
}

#[test]
fn three_daemons_spread_three_replicas_one_per_node() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(3, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    // Wait until every node knows every other (else each places on its own view).
    wait_for("every node to see 3 live nodes", 30_000, || {
        cluster
            .nodes
            .iter()
            .all(|n| n.status().nodes == 3)
            .then_some(())
    });
    apply(&cluster.nodes[0], "spread", &image, 3);
    for daemon in &cluster.nodes {
        let view = wait_for(
            &format!("{} to see 3 containers", daemon.name),
            60_000,
            || {
                let view = ps(daemon);
                let nodes: BTreeSet<&str> = view
                    .containers
                    .iter()
                    .filter(|c| c.service == "spread")
                    .map(|c| c.node.as_str())
                    .collect();
                let own_running = view
                    .containers
                    .iter()
                    .filter(|c| c.node == daemon.name && c.state == "running")
                    .count();
                (nodes.len() == 3 && view.containers.len() == 3 && own_running == 1).then_some(view)
            },
        );
        assert!(view.errors.is_empty(), "{:?}", view.errors);
    }
    // Logs of a container on another node are read through that node (it prints nothing).
    let view = ps(&cluster.nodes[0]);
    let remote = view.containers.iter().find(|c| c.node != "node-a").unwrap();
    let output = Command::new(BINARY)
        .args(["logs", &remote.id, "--socket"])
        .arg(&cluster.nodes[0].socket)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    cluster.nodes[1]
        .client()
        .call::<ServiceView>(Request::ServiceRemove {
            name: "spread".parse().unwrap(),
        })
        .unwrap();
    for daemon in &cluster.nodes {
        wait_for("removal everywhere", 30_000, || {
            (ps(daemon).containers.is_empty() && runtime_containers(daemon).is_empty())
                .then_some(())
        });
    }
}

#[test]
fn logs_show_a_containers_output() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(1, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    let daemon = &cluster.nodes[0];
    let mut spec = ServiceSpec::new(&image);
    spec.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "echo hello from the log; sleep 3600".into(),
    ];
    daemon
        .client()
        .call::<Vec<ServiceView>>(Request::ServiceApply {
            services: vec![NamedSpec {
                name: "talker".parse().unwrap(),
                spec,
            }],
        })
        .unwrap();
    wait_running(daemon, "talker", 1);
    wait_for("the output in shoal logs", 20_000, || {
        let output = Command::new(BINARY)
            .args(["logs", "talker", "--socket"])
            .arg(&daemon.socket)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .contains("hello from the log")
            .then_some(())
    });
    // `-f` prints what is there and keeps following.
    let mut follow = Command::new(BINARY)
        .args(["logs", "talker", "-f", "--socket"])
        .arg(&daemon.socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(follow.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "hello from the log\n");
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f must keep running"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
    let output = Command::new(BINARY)
        .args(["logs", "nosuch", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nosuch"));
    daemon
        .client()
        .call::<ServiceView>(Request::ServiceRemove {
            name: "talker".parse().unwrap(),
        })
        .unwrap();
    wait_for("removal", 30_000, || {
        ps(daemon).containers.is_empty().then_some(())
    });
}

/// `shoal logs ARGS --socket` of `daemon`, through the real CLI.
fn logs(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .arg("logs")
        .args(args)
        .arg("--socket")
        .arg(&daemon.socket)
        .output()
        .unwrap()
}

#[test]
fn logs_of_a_container_on_another_node_are_read_and_followed_through_its_node() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(2, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    wait_for("both nodes to see 2 live nodes", 30_000, || {
        cluster
            .nodes
            .iter()
            .all(|n| n.nodes_live() == 2)
            .then_some(())
    });
    let mut spec = ServiceSpec::new(&image);
    spec.replicas = 2;
    spec.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "i=0; while true; do echo tick $i; echo err $i >&2; i=$((i+1)); sleep 0.3; done".into(),
    ];
    apply_spec(&cluster.nodes[0], "ticker", spec);
    // Each node runs one replica (placement spreads them); A sees B's only as recorded.
    for daemon in &cluster.nodes {
        wait_for(
            &format!("{} to run its replica", daemon.name),
            60_000,
            || {
                ps(daemon)
                    .containers
                    .iter()
                    .any(|c| c.node == daemon.name && c.state == "running")
                    .then_some(())
            },
        );
    }
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    // B's record of its replica reaches A by sync, a moment after B starts it.
    let view = wait_for("A to see B's running replica", 30_000, || {
        let view = ps(a);
        view.containers
            .iter()
            .any(|c| c.node == "node-b" && c.state == "running")
            .then_some(view)
    });
    let on_b = view
        .containers
        .iter()
        .find(|c| c.node == "node-b")
        .expect("a replica on node-b")
        .id
        .clone();
    let on_a = view
        .containers
        .iter()
        .find(|c| c.node == "node-a")
        .expect("a replica on node-a")
        .id
        .clone();

    // Asked on A, B's container's output: stdout and stderr apart, unlabelled.
    let output = wait_for("B's container's output through A", 20_000, || {
        let output = logs(a, &[&on_b]);
        (output.status.success() && String::from_utf8_lossy(&output.stdout).contains("tick 1\n"))
            .then_some(output)
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("tick 0\ntick 1\n"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&output.stderr).starts_with("err 0\n"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The service: both nodes' containers, each line labelled with its node and container.
    let output = logs(a, &["ticker"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for label in [
        format!("node-a {on_a} | tick 0\n"),
        format!("node-b {on_b} | tick 0\n"),
    ] {
        assert!(stdout.contains(&label), "{stdout} lacks {label:?}");
    }

    // Follow on A: what B's container printed so far, then later lines, in order, each once.
    let mut follow = Command::new(BINARY)
        .args(["logs", &on_b, "-f", "--socket"])
        .arg(&a.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel::<String>();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Enough lines to be sure some were printed after the follow began (B prints ~3/s).
    for expected in 0..30 {
        let line = received
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a line from logs -f within 20 s");
        assert_eq!(line, format!("tick {expected}"));
    }
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs -f must keep running"
    );
    follow.kill().unwrap();
    follow.wait().unwrap();

    // B's daemon gone: asking A fails, naming node-b and its address, within the bound.
    let address = b.address.to_string();
    cluster.nodes[1].kill9();
    let started = std::time::Instant::now();
    let output = logs(&cluster.nodes[0], &[&on_b]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("node node-b") && message.contains(&address),
        "{message}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// A network namespace for one test, removed on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        let netns = Netns(name.to_string());
        netns.exec(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    fn exec(&self, command: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .args(command)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

#[test]
fn with_a_subnet_a_container_gets_its_address_on_the_node_bridge() {
    if !image_support::require_root() {
        return;
    }
    // The node runs in its own network namespace, so its bridge and routes stay there.
    let netns = Netns::new(&format!("shoal-place-{}", std::process::id()));
    let mut cluster = Guarded::new(
        1,
        &format!("{CONTAINERS_CONFIG}subnet = \"10.77.1.0/24\"\nbridge = \"shoaltest0\"\n"),
    );
    let image = busybox(cluster.root.path());
    {
        let daemon = &mut cluster.nodes[0];
        let log = std::fs::File::create(daemon.dir.join("daemon.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", netns.0))
            .arg(BINARY)
            .args(["daemon", "--config"])
            .arg(&daemon.config)
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        daemon.child = Some(child);
        daemon.wait_ready();
    }
    let daemon = &cluster.nodes[0];
    let mut spec = ServiceSpec::new(&image);
    spec.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "/bin/busybox ip -4 addr show dev eth0; sleep 3600".into(),
    ];
    daemon
        .client()
        .call::<Vec<ServiceView>>(Request::ServiceApply {
            services: vec![NamedSpec {
                name: "addressed".parse().unwrap(),
                spec,
            }],
        })
        .unwrap();
    let running = wait_running(daemon, "addressed", 1);
    let ip = running[0]
        .ip
        .clone()
        .expect("a node with a subnet gives addresses");
    assert!(ip.starts_with("10.77.1."), "{ip}");
    wait_for("the address in the container's own output", 20_000, || {
        let output = Command::new(BINARY)
            .args(["logs", "addressed", "--socket"])
            .arg(&daemon.socket)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .contains(&format!("inet {ip}/24"))
            .then_some(())
    });
    // The node reaches the container through its bridge.
    let ping = netns.exec(&["ping", "-c", "1", "-W", "2", &ip]);
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let netns_file = format!("/run/netns/shoal.node-a.{}", running[0].id);
    assert!(Path::new(&netns_file).exists());

    daemon
        .client()
        .call::<ServiceView>(Request::ServiceRemove {
            name: "addressed".parse().unwrap(),
        })
        .unwrap();
    wait_for("removal", 30_000, || {
        ps(daemon).containers.is_empty().then_some(())
    });
    wait_for("the namespace to go", 10_000, || {
        (!Path::new(&netns_file).exists()).then_some(())
    });
}

fn apply_spec(daemon: &Daemon, name: &str, spec: ServiceSpec) {
    daemon
        .client()
        .call::<Vec<ServiceView>>(Request::ServiceApply {
            services: vec![NamedSpec {
                name: name.parse().unwrap(),
                spec,
            }],
        })
        .unwrap();
}

#[test]
fn scaling_keeps_the_running_containers_and_adjusts_the_counters() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(1, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    let daemon = &cluster.nodes[0];
    apply(daemon, "scaled", &image, 2);
    let two = wait_running(daemon, "scaled", 2);
    apply(daemon, "scaled", &image, 1);
    let one = wait_running(daemon, "scaled", 1);
    assert!(
        two.iter().any(|c| c.id == one[0].id && c.pid == one[0].pid),
        "scaling down replaced the container that stays: {two:?} -> {one:?}"
    );
    wait_for("counters for one container", 10_000, || {
        (ps(daemon).usage["node-a"].containers == 1).then_some(())
    });
    wait_for("the removed one to leave the runtime", 10_000, || {
        (runtime_containers(daemon).len() == 1).then_some(())
    });
    apply(daemon, "scaled", &image, 3);
    let three = wait_running(daemon, "scaled", 3);
    assert!(
        three
            .iter()
            .any(|c| c.id == one[0].id && c.pid == one[0].pid)
    );
    // A real spec change (the command) replaces them.
    let mut spec = ServiceSpec::new(&image);
    spec.replicas = 3;
    spec.command = vec!["/bin/busybox".into(), "sleep".into(), "3599".into()];
    apply_spec(daemon, "scaled", spec);
    wait_for("three new containers", 60_000, || {
        let running = running_of(&ps(daemon), "scaled");
        (running.len() == 3
            && running
                .iter()
                .all(|c| three.iter().all(|old| old.id != c.id)))
        .then_some(())
    });
}

#[test]
fn restart_policies_restart_failures_and_leave_successes() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(1, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    let daemon = &cluster.nodes[0];
    let mut failing = ServiceSpec::new(&image);
    failing.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "exit 3".into(),
    ];
    failing.restart = shoal_crdt::RestartPolicy::OnFailure;
    apply_spec(daemon, "failing", failing);
    let mut done = ServiceSpec::new(&image);
    done.command = vec!["/bin/busybox".into(), "true".into()];
    done.restart = shoal_crdt::RestartPolicy::OnFailure;
    apply_spec(daemon, "done", done);

    let view = wait_for("failing to be restarted twice", 30_000, || {
        let view = ps(daemon);
        view.containers
            .iter()
            .any(|c| c.service == "failing" && c.restarts >= 2)
            .then_some(view)
    });
    let failing_ids: BTreeSet<&str> = view
        .containers
        .iter()
        .filter(|c| c.service == "failing")
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(failing_ids.len(), 1, "restarts keep the container id");
    let done = wait_for("done to exit with 0", 20_000, || {
        ps(daemon)
            .containers
            .into_iter()
            .find(|c| c.service == "done" && c.state == "exited(0)")
    });
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    let later = ps(daemon);
    let still = later.containers.iter().find(|c| c.id == done.id).unwrap();
    assert_eq!(still.state, "exited(0)");
    assert_eq!(still.restarts, 0);
    assert_eq!(
        later
            .containers
            .iter()
            .filter(|c| c.service == "done")
            .count(),
        1,
        "a finished container still fills its replica"
    );
}

#[test]
fn a_lost_nodes_replica_moves_and_the_surplus_goes_when_it_returns() {
    if !image_support::require_root() {
        return;
    }
    let config = format!(
        "\n[sync]\nheartbeat_interval_ms = 200\ndown_after_ms = 1500\ninterval_ms = 300\n\
         {CONTAINERS_CONFIG}"
    );
    let mut cluster = Guarded::new(3, &config);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    wait_for("every node to see 3 live nodes", 30_000, || {
        cluster
            .nodes
            .iter()
            .all(|n| n.nodes_live() == 3)
            .then_some(())
    });
    apply(&cluster.nodes[0], "moving", &image, 2);
    let placed = wait_for("2 replicas on 2 nodes", 60_000, || {
        let view = ps(&cluster.nodes[0]);
        let nodes: BTreeSet<String> = view.containers.iter().map(|c| c.node.clone()).collect();
        (view.containers.len() == 2 && nodes.len() == 2).then_some(nodes)
    });
    // Lose a node that runs a replica (not node-a, which we ask).
    let victim_name = placed.iter().find(|n| *n != "node-a").unwrap().clone();
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.name == victim_name)
        .unwrap();
    let own_running = |daemon: &Daemon| {
        ps(daemon)
            .containers
            .into_iter()
            .find(|c| c.node == daemon.name && c.state == "running")
    };
    let victim_pid = wait_for("the victim's container", 30_000, || {
        own_running(&cluster.nodes[victim])
    })
    .pid
    .unwrap();
    cluster.nodes[victim].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    // The survivors run 2 replicas between them while the victim's record shows node-down.
    wait_for("the replica to move to the survivors", 60_000, || {
        let view = ps(&cluster.nodes[survivors[0]]);
        let running_on_survivors = view
            .containers
            .iter()
            .filter(|c| c.node != victim_name && !c.state.starts_with("node-down"))
            .count();
        let down = view
            .containers
            .iter()
            .any(|c| c.state.starts_with("node-down"));
        (running_on_survivors == 2 && down).then_some(())
    });
    // The victim comes back: it adopts its container, placement is as before, and the
    // survivor that took over stops its surplus.
    cluster.nodes[victim].start();
    cluster.nodes[victim].wait_ready();
    wait_for("the count to return to the spec", 60_000, || {
        let view = ps(&cluster.nodes[victim]);
        let nodes: BTreeSet<String> = view.containers.iter().map(|c| c.node.clone()).collect();
        (view.containers.len() == 2 && nodes == placed).then_some(())
    });
    let back = wait_for("the victim's container", 30_000, || {
        own_running(&cluster.nodes[victim])
    });
    assert_eq!(
        back.pid,
        Some(victim_pid),
        "the returning node restarted its container"
    );
}

/// Everything `node`'s sync endpoint answers a peer that has seen nothing: its whole state,
/// as the bytes on the wire (HTTP/3, mutual TLS, a certificate of the cluster CA).
fn full_sync_body(cluster: &Cluster, node: &Daemon) -> Vec<u8> {
    let ca_dir = cluster.root.path().join("ca");
    let probe_dir = cluster.root.path().join("probe");
    std::fs::create_dir_all(&probe_dir).unwrap();
    let paths = shoal::sync::pki::issue_node_cert(
        &ca_dir,
        &"probe".parse().unwrap(),
        &["127.0.0.1".to_string()],
        1,
        &probe_dir,
        true,
    )
    .unwrap();
    let tls = shoal::sync::TlsMaterial::load(&paths.ca_cert, &paths.cert, &paths.key).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let endpoint = shoal::sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
        let limits = shoal::sync::SyncLimits {
            body_bytes_max: 1 << 20,
            request_timeout_ms: 10_000,
            connections_max: 4,
        };
        let mut session = shoal::sync::connect(
            &endpoint,
            node.address,
            Some(&node.name.parse().unwrap()),
            &limits,
        )
        .await
        .unwrap();
        let empty = shoal_crdt::Summary::default();
        let reply = session
            .post(
                shoal::sync::wire::PATH_SYNC,
                shoal_crdt::codec::encode_summary(&empty),
            )
            .await
            .unwrap();
        assert!(reply.status.is_success(), "{}", reply.message());
        let body = reply.body.to_vec();
        session.close();
        body
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn a_secret_reaches_its_container_and_never_the_state_the_wire_or_the_log() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Guarded::new(2, CONTAINERS_CONFIG);
    cluster.start_all();
    let image = busybox(cluster.root.path());
    let token = format!("tok-{:016x}", rand::random::<u64>());
    let secret = cluster.root.path().join("web-token");
    std::fs::write(&secret, &token).unwrap();
    let env_file = cluster.root.path().join("web.env");
    std::fs::write(&env_file, format!("# from a file\nFROM_FILE={token}-env\n")).unwrap();
    let mut spec = ServiceSpec::new(&image);
    spec.replicas = 2;
    spec.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "cat /run/secrets/token > /dev/null && echo secret-readable; \
         test \"${FROM_FILE%-env}\" != \"\" && echo env-file-read; sleep 3600"
            .into(),
    ];
    spec.secrets
        .insert("token".into(), secret.to_str().unwrap().into());
    spec.env_files = vec![env_file.to_str().unwrap().into()];
    apply_spec(&cluster.nodes[0], "web", spec);
    for daemon in &cluster.nodes {
        wait_running(daemon, "web", 2);
    }
    for daemon in &cluster.nodes {
        wait_for(
            "the container to read its secret and env file",
            20_000,
            || {
                let output = Command::new(BINARY)
                    .args(["logs", "web", "--socket"])
                    .arg(&daemon.socket)
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&output.stdout);
                (text.contains("secret-readable") && text.contains("env-file-read")).then_some(())
            },
        );
    }
    // The path is replicated, the content is not: not on the wire, not in any database,
    // not in any daemon's log.
    let path_bytes = secret.to_str().unwrap().as_bytes();
    for daemon in &cluster.nodes {
        let body = full_sync_body(&cluster, daemon);
        assert!(contains(&body, path_bytes), "the probe did read the state");
        assert!(
            !contains(&body, token.as_bytes()),
            "{} sent the secret",
            daemon.name
        );
        let database = std::fs::read(daemon.dir.join("state").join("state.redb")).unwrap();
        assert!(contains(&database, path_bytes));
        assert!(
            !contains(&database, token.as_bytes()),
            "{}'s database",
            daemon.name
        );
        assert!(!daemon.log().contains(&token), "{}'s log", daemon.name);
    }
    // A missing secret is an error on that service, naming the path; the other runs on.
    let mut broken = ServiceSpec::new(&image);
    broken
        .secrets
        .insert("gone".into(), "/nonexistent/shoal-secret".into());
    apply_spec(&cluster.nodes[0], "broken", broken);
    wait_for("the missing secret reported on every node", 20_000, || {
        cluster
            .nodes
            .iter()
            .all(|daemon| {
                ps(daemon).node_errors.values().any(|errors| {
                    errors
                        .get("broken")
                        .is_some_and(|e| e.contains("/nonexistent/shoal-secret"))
                })
            })
            .then_some(())
    });
    assert_eq!(running_of(&ps(&cluster.nodes[1]), "web").len(), 2);
}
