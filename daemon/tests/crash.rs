//! kill -9 of a daemon in a loop while a client applies services through the API: after
//! every restart each change the API acknowledged is present, and at the end the node
//! re-converges with its peer. And a second daemon on a running daemon's state is refused
//! with one clear message, while the database it holds is readable by its user only.

mod host_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use host_support::{BINARY, Cluster, named, wait_for};
use shoal::api::{Client, Request, ServiceView};

const ROUNDS: usize = 10;

/// Applies services on `socket` until the daemon dies or `stop` is set; returns the names
/// the daemon acknowledged.
fn apply_until_dead(socket: &std::path::Path, round: usize, stop: &AtomicBool) -> Vec<String> {
    let mut acknowledged = Vec::new();
    let Ok(mut client) = Client::connect(socket, Duration::from_secs(5)) else {
        return acknowledged;
    };
    for index in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let name = format!("crash-{round}-{index}");
        let request = Request::ServiceApply {
            services: vec![named(&name, "/images/crash.tar")],
        };
        match client.call::<Vec<ServiceView>>(request) {
            Ok(views) => {
                assert_eq!(views[0].name.as_str(), name);
                acknowledged.push(name);
            }
            Err(_) => break,
        }
    }
    acknowledged
}

fn listed(services: &[ServiceView]) -> BTreeSet<String> {
    services.iter().map(|s| s.name.to_string()).collect()
}

#[test]
fn acknowledged_changes_survive_kill_9_and_the_node_reconverges() {
    let mut cluster = Cluster::new(2, "");
    cluster.start_all();
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    for round in 0..ROUNDS {
        let socket = cluster.nodes[0].socket.clone();
        let stop = AtomicBool::new(false);
        let names = std::thread::scope(|scope| {
            let worker = scope.spawn(|| apply_until_dead(&socket, round, &stop));
            // Vary the moment of the kill from round to round.
            std::thread::sleep(Duration::from_millis(120 + 37 * round as u64));
            cluster.nodes[0].kill9();
            stop.store(true, Ordering::Relaxed);
            worker.join().unwrap()
        });
        assert!(
            !names.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        acknowledged.extend(names);
        cluster.nodes[0].start();
        cluster.nodes[0].wait_ready();
        let present = listed(&cluster.nodes[0].services());
        let lost: Vec<&String> = acknowledged.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged but lost after kill -9: {lost:?}"
        );
    }
    // The peer receives everything, and both end with the same services.
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    wait_for("node-b to hold every acknowledged service", 30_000, || {
        let on_b = listed(&b.services());
        acknowledged.is_subset(&on_b).then_some(())
    });
    wait_for(
        "node-a and node-b to list the same services",
        30_000,
        || (a.services() == b.services()).then_some(()),
    );
    // And the restarted node still takes new changes that reach the peer.
    let after = a.apply("after-crashes", "/images/after.tar");
    wait_for("the post-crash change on node-b", 30_000, || {
        b.services().contains(&after).then_some(())
    });
    eprintln!(
        "{} acknowledged changes survived {ROUNDS} kill -9 rounds",
        acknowledged.len()
    );
    for node in &mut cluster.nodes {
        assert!(node.stop().success(), "{}:\n{}", node.name, node.log());
    }
}

#[test]
fn a_second_daemon_on_held_state_is_refused_once_and_the_database_is_0600() {
    let mut cluster = Cluster::new(1, "");
    cluster.start_all();
    let node = &cluster.nodes[0];
    let database = node.dir.join("state").join("state.redb");
    let mode = std::fs::metadata(&database).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", database.display());

    let second = std::process::Command::new(BINARY)
        .arg("daemon")
        .arg("--config")
        .arg(&node.config)
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr:?}"));
    assert!(error.contains(&database.display().to_string()), "{error}");
    assert_eq!(
        error.matches("Database already open").count(),
        1,
        "the cause is said more than once: {error}"
    );
    // The running daemon is untouched.
    assert!(cluster.nodes[0].status().nodes >= 1);
    assert!(cluster.nodes[0].stop().success());
}
