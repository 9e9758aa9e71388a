//! What the workload and update scenarios share: a cluster with container subnets and a
//! busybox image, specs of `/bin/sh -c` services, the containers each node reports as its
//! own, and requests from the lab's outside host to a node's published port.
#![allow(dead_code)] // each scenario file uses its part

#[path = "../../../oci/tests/common/mod.rs"]
pub mod image_support;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};
use shoal_vm_tests::probe::{self, HttpResponse, ProbeError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Each probe's connect, write and read.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A shell that idles and stops at once on SIGTERM (a shell runs its trap
/// only after a foreground command ends, so it waits on a background sleep).
pub const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 1 & wait $!; done";

/// An httpd container answering `body` on port 80.
pub fn httpd_command(body: &str) -> String {
    format!("echo {body} > /tmp/index.html; exec httpd -f -p 80 -h /tmp")
}

/// A TOML basic string (JSON's escapes are valid TOML).
pub fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

/// One service's spec: `/bin/sh -c SCRIPT` in the busybox image, plus `extra`
/// TOML lines (ports, volumes, secrets, restart, a `[publish]` table last).
pub fn spec(name: &str, image: &str, script: &str, extra: &str) -> String {
    format!(
        "name = {}\nimage = {}\ncommand = [\"/bin/sh\", \"-c\", {}]\n{extra}\n",
        quoted(name),
        quoted(image),
        quoted(script)
    )
}

/// A cluster with container subnets and the busybox image; returns the
/// image's path.
pub fn start(nodes: usize, outside_host: bool) -> (Cluster, String) {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        container_subnets: true,
        outside_host,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sh"]);
    (cluster, image.path.display().to_string())
}

/// A container as its own node reports it in `shoal ps --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub node: usize,
    pub id: String,
    pub ip: String,
    pub state: String,
    pub ports: Vec<String>,
}

/// Containers of `service` as each running node reports its own.
pub fn own_containers(cluster: &Cluster, service: &str) -> Vec<Container> {
    let mut found = Vec::new();
    for index in cluster.running() {
        let Ok(ps) = cluster.cli_json(index, &["ps"]) else {
            continue;
        };
        let me = cluster.node(index).name.as_str();
        for c in ps["containers"].as_array().into_iter().flatten() {
            if c["service"] != service || c["node"] != me {
                continue;
            }
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            found.push(Container {
                node: index,
                id: text(&c["id"]),
                ip: text(&c["ip"]),
                state: text(&c["state"]),
                ports: c["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect(),
            });
        }
    }
    found
}

/// Polls `check` until it gives a value; on timeout panics with `what` and the
/// cluster's diagnostics.
pub fn wait_for<T>(cluster: &Cluster, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if started.elapsed() > TIMEOUT {
            panic!(
                "timed out after {TIMEOUT:?} waiting for {what}\n{}",
                cluster.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until exactly one container of `service` exists and it runs.
pub fn one_running(cluster: &Cluster, service: &str) -> Container {
    wait_for(
        cluster,
        &format!("one running replica of {service}"),
        || match own_containers(cluster, service).as_slice() {
            [only] if only.state == "running" => Some(only.clone()),
            _ => None,
        },
    )
}

/// Node `index`'s address in the lab.
pub fn node_address(cluster: &Cluster, index: usize) -> Ipv4Addr {
    cluster.lab().host(index).address
}

/// `GET /` to node `index`'s `port` from the outside host.
pub fn get_from_outside(
    cluster: &Cluster,
    index: usize,
    port: u16,
) -> Result<HttpResponse, ProbeError> {
    let addr = SocketAddrV4::new(node_address(cluster, index), port);
    probe::get_in(cluster.outside_netns(), addr, "/", PROBE_TIMEOUT)
}

/// Waits until node `index`'s `port` answers `body` to the outside host.
pub fn wait_answers(cluster: &Cluster, index: usize, port: u16, body: &str) {
    let mut last = None;
    let what = format!("n{index}:{port} to answer {body:?} to the outside host");
    wait_for(cluster, &what, || {
        match get_from_outside(cluster, index, port) {
            Ok(answer) if answer.status == 200 && answer.body.trim() == body => Some(()),
            other => {
                if last.as_ref() != Some(&format!("{other:?}")) {
                    eprintln!("n{index}:{port} from outside: {other:?}");
                    last = Some(format!("{other:?}"));
                }
                None
            }
        }
    });
}

/// Asserts that node `index`'s `port` does not answer the outside host.
pub fn assert_unanswered(cluster: &Cluster, index: usize, port: u16, why: &str) {
    match get_from_outside(cluster, index, port) {
        Err(error) if error.is_unanswered() => {}
        other => panic!(
            "n{index}:{port} answered the outside host ({why}): {other:?}\n{}",
            cluster.diagnostics()
        ),
    }
}

/// Between two requests of the outside client.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// A whole rolling update of three replicas, with time to spare.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// The web service answering `body`; `/healthz` exists only when `healthy`.
pub fn web(image: &str, body: &str, healthy: bool) -> String {
    let health_file = if healthy {
        "echo ok > /tmp/healthz; "
    } else {
        ""
    };
    // The shell stays PID 1 and exits on SIGTERM (httpd as PID 1 would ignore it and be
    // killed only after the stop grace), as a well-behaved service stops.
    let script = format!(
        "{health_file}echo {body} > /tmp/index.html; trap 'exit 0' TERM; httpd -f -p 80 -h /tmp & wait $!"
    );
    spec(
        "web",
        image,
        &script,
        "replicas = 3\nports = [\"8080:80\"]\n\
         [publish]\nmode = \"mesh\"\n\
         [health]\nhttp = \"http://127.0.0.1:80/healthz\"\ninterval_ms = 500\ntimeout_ms = 400\nretries = 2\n\
         [update]\nmax_parallel = 1\norder = \"start-first\"\nmin_healthy_ms = 1000\nhealthy_deadline_ms = 10000",
    )
}

/// Now as `HH:MM:SS.mmm` UTC, the time of day the daemons' log lines start with.
fn time_of_day_utc() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let millis = since_epoch.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        millis / 3_600_000,
        millis / 60_000 % 60,
        millis / 1_000 % 60,
        millis % 1_000
    )
}

/// What the outside client saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub answers: Vec<String>,
    pub failures: Vec<String>,
}

/// Polls port 8080 of every node in turn from the outside host until stopped.
pub struct Client {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Client {
    pub fn start(cluster: &Cluster) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let netns = cluster.outside_netns().to_owned();
        let addresses: Vec<_> = (0..cluster.len())
            .map(|index| node_address(cluster, index))
            .collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut turn = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let address = addresses[turn % addresses.len()];
                turn += 1;
                let target = std::net::SocketAddrV4::new(address, 8080);
                match shoal_vm_tests::probe::get_in(&netns, target, "/", PROBE_TIMEOUT) {
                    Ok(answer) if answer.status == 200 => {
                        seen.answers.push(answer.body.trim().to_owned())
                    }
                    // When, in the daemons' log time (UTC), so a failure can be matched
                    // with what each node did at that moment.
                    other => seen
                        .failures
                        .push(format!("at {} {target}: {other:?}", time_of_day_utc())),
                }
                std::thread::sleep(POLL_INTERVAL);
            }
            seen
        });
        Client { stop, thread }
    }

    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the client thread")
    }
}

/// Healthy running replicas of web, by the body they answer, as `shoal ps` on node 0
/// reports them cluster-wide.
pub fn healthy_replicas(cluster: &Cluster) -> Option<usize> {
    let ps = cluster.cli_json(0, &["ps"]).ok()?;
    Some(
        ps["containers"]
            .as_array()?
            .iter()
            .filter(|c| {
                c["service"] == "web" && c["state"] == "running" && c["health"] == "healthy"
            })
            .count(),
    )
}

/// Three running replicas of web whose own nodes answer `body` through the mesh.
pub fn wait_serving(cluster: &Cluster, body: &str) {
    wait_for(cluster, "3 running replicas of web", || {
        let running = own_containers(cluster, "web")
            .iter()
            .filter(|c| c.state == "running")
            .count();
        (running == 3).then_some(())
    });
    for index in 0..cluster.len() {
        wait_answers(cluster, index, 8080, body);
    }
}

/// Whether web runs exactly three replicas, all running, and every node answers `body`.
pub fn three_serve(cluster: &Cluster, body: &str) -> bool {
    let replicas = own_containers(cluster, "web");
    replicas.len() == 3
        && replicas.iter().all(|c| c.state == "running")
        && all_answer(cluster, body)
}

/// Whether every node answers `body` and only `body` right now.
pub fn all_answer(cluster: &Cluster, body: &str) -> bool {
    (0..cluster.len()).all(|index| {
        get_from_outside(cluster, index, 8080)
            .is_ok_and(|answer| answer.status == 200 && answer.body.trim() == body)
    })
}
