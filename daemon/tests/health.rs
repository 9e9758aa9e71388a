//! Health checks with real containers through a real daemon (issue 12): a busybox httpd
//! with an `http` check becomes healthy in `shoal ps --json` and the table's HEALTH column;
//! a container whose `tcp` check finds nothing listening becomes unhealthy and is
//! restarted per its policy (its restart count grows). The daemon runs in a network
//! namespace of its own with a container subnet, so probes go to the containers'
//! addresses on the node bridge. A `cmd` check runs inside the container through
//! libcontainer, with no network at all: healthy once the container's own file exists,
//! unhealthy (and restarted) when the command exits non-zero. Needs root (mounts, cgroups,
//! namespaces).

mod host_support;
#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use std::process::Command;

use host_support::guard::{Guarded, ps};
use host_support::{BINARY, Cluster, Daemon, wait_for};
use shoal::api::{ContainerView, NamedSpec, PsView, Request, ServiceView};
use shoal_crdt::{HealthCheck, ServiceSpec};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        let netns = Netns(name.to_string());
        let up = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{name}"))
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success());
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn of_service(view: &PsView, service: &str) -> Option<ContainerView> {
    view.containers
        .iter()
        .find(|container| container.service == service)
        .cloned()
}

fn apply(daemon: &Daemon, name: &str, spec: ServiceSpec) {
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

fn check(mut check: HealthCheck) -> HealthCheck {
    check.interval_ms = 500;
    check.timeout_ms = 400;
    check.retries = 2;
    check
}

#[test]
fn an_http_check_makes_a_server_healthy_and_a_failing_tcp_check_restarts_its_container() {
    if !image_support::require_root() {
        return;
    }
    let netns = Netns::new(&format!("shoal-health-{}", std::process::id()));
    let mut cluster = Guarded(Cluster::new(
        1,
        "\n[containers]\nreconcile_interval_ms = 200\nstop_grace_ms = 500\nsubnet = \"10.78.1.0/24\"\nbridge = \"shoalhealth0\"\n",
    ));
    let layout = cluster.0.root.path().join("busybox-image");
    image_support::busybox_image(&layout, &["/bin/busybox", "sleep", "3600"]);
    let image = layout.display().to_string();
    {
        let daemon = &mut cluster.0.nodes[0];
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
    let daemon = &cluster.0.nodes[0];

    let mut web = ServiceSpec::new(&image);
    web.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "mkdir -p /www && echo ok > /www/healthz && exec /bin/busybox httpd -f -p 8080 -h /www"
            .into(),
    ];
    web.health = Some(Box::new(check(HealthCheck::http(
        "http://127.0.0.1:8080/healthz",
    ))));
    apply(daemon, "web", web);

    let mut dead = ServiceSpec::new(&image);
    dead.command = vec!["/bin/busybox".into(), "sleep".into(), "3600".into()];
    dead.restart = shoal_crdt::RestartPolicy::Always;
    dead.health = Some(Box::new(check(HealthCheck::tcp(9))));
    apply(daemon, "dead", dead);

    let healthy = wait_for("web to be healthy in shoal ps --json", 30_000, || {
        of_service(&ps(daemon), "web")
            .filter(|web| web.state == "running" && web.health == "healthy")
    });
    assert!(healthy.ip.is_some());
    assert_eq!(healthy.health_reason, None);

    // The dead one is seen unhealthy, with the probe's failure as the reason, then
    // restarted again and again (always, with backoff).
    let unhealthy = wait_for("dead to be unhealthy", 30_000, || {
        of_service(&ps(daemon), "dead").filter(|dead| dead.health == "unhealthy")
    });
    let reason = unhealthy
        .health_reason
        .expect("an unhealthy container says why");
    assert!(reason.contains(":9"), "{reason}");
    wait_for("dead to be restarted twice", 45_000, || {
        of_service(&ps(daemon), "dead").filter(|dead| dead.restarts >= 2)
    });
    // The healthy one was never restarted.
    let web = of_service(&ps(daemon), "web").unwrap();
    assert_eq!((web.restarts, web.health.as_str()), (0, "healthy"));

    let table = Command::new(BINARY)
        .args(["ps", "--socket"])
        .arg(&daemon.socket)
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("HEALTH") && table.contains("healthy"),
        "{table}"
    );
    assert!(
        daemon.log().contains("container unhealthy"),
        "the daemon logs why it restarts"
    );
}

#[test]
fn a_command_check_runs_inside_the_container_and_needs_no_network() {
    if !image_support::require_root() {
        return;
    }
    // No container subnet: the containers' namespaces have nothing a node could reach.
    let mut cluster = Guarded::new(
        1,
        "\n[containers]\nreconcile_interval_ms = 200\nstop_grace_ms = 500\n",
    );
    cluster.start_all();
    let layout = cluster.root.path().join("busybox-image");
    image_support::busybox_image(&layout, &["/bin/busybox", "sleep", "3600"]);
    let image = layout.display().to_string();
    let daemon = &cluster.nodes[0];

    // Ready once it has made its own file, a second after it starts; only its root has it.
    let mut ready = ServiceSpec::new(&image);
    ready.command = vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "sleep 1; touch /tmp/ready; exec /bin/busybox sleep 3600".into(),
    ];
    let mut probe = check(HealthCheck::tcp(1));
    probe.tcp = None;
    probe.cmd = Some(vec![
        "/bin/busybox".into(),
        "test".into(),
        "-e".into(),
        "/tmp/ready".into(),
    ]);
    ready.health = Some(Box::new(probe.clone()));
    apply(daemon, "ready", ready);

    let mut failing = ServiceSpec::new(&image);
    failing.command = vec!["/bin/busybox".into(), "sleep".into(), "3600".into()];
    failing.restart = shoal_crdt::RestartPolicy::Always;
    probe.cmd = Some(vec![
        "/bin/busybox".into(),
        "sh".into(),
        "-c".into(),
        "exit 4".into(),
    ]);
    failing.health = Some(Box::new(probe));
    apply(daemon, "failing", failing);

    let healthy = wait_for("ready to be healthy", 30_000, || {
        of_service(&ps(daemon), "ready")
            .filter(|ready| ready.state == "running" && ready.health == "healthy")
    });
    assert_eq!(healthy.ip, None, "no subnet, no address");
    let unhealthy = wait_for("failing to be unhealthy", 30_000, || {
        of_service(&ps(daemon), "failing").filter(|failing| failing.health == "unhealthy")
    });
    assert_eq!(
        unhealthy.health_reason.as_deref(),
        Some("/bin/busybox exited with code 4")
    );
    wait_for("failing to be restarted", 45_000, || {
        of_service(&ps(daemon), "failing").filter(|failing| failing.restarts >= 1)
    });
    let ready = of_service(&ps(daemon), "ready").unwrap();
    assert_eq!((ready.restarts, ready.health.as_str()), (0, "healthy"));
}
