//! Three real daemons on loopback (real certificates, HTTP/3, redb): a service applied on
//! one node is listed on the others, and concurrent applies of one service on two nodes end
//! with the same winner (spec and HLC version) everywhere.

mod host_support;

use host_support::{Cluster, wait_for};
use shoal_crdt::Timestamp;

const CONVERGE_TIMEOUT_MS: u64 = 20_000;

#[test]
fn a_service_applied_on_a_is_listed_on_b_and_c() {
    let mut cluster = Cluster::new(3, "");
    cluster.start_all();
    let applied = cluster.nodes[0].apply("web", "/images/web.tar");
    for node in &cluster.nodes[1..] {
        let listed = wait_for(
            &format!("web on {}", node.name),
            CONVERGE_TIMEOUT_MS,
            || node.services().into_iter().find(|s| s.name == applied.name),
        );
        assert_eq!(listed, applied, "{} lists a different web", node.name);
    }
    // Every node knows every member.
    for node in &cluster.nodes {
        wait_for(
            &format!("{} to know 3 members", node.name),
            CONVERGE_TIMEOUT_MS,
            || (node.status().nodes == 3).then_some(()),
        );
    }
    for node in &mut cluster.nodes {
        assert!(node.stop().success(), "{}:\n{}", node.name, node.log());
    }
}

#[test]
fn concurrent_applies_of_one_service_end_with_the_same_winner_everywhere() {
    // Anti-entropy only, so the two writes are truly concurrent (neither node has seen the
    // other's before writing its own).
    let mut cluster = Cluster::new(
        3,
        "[sync]\neager_push = false\ninterval_ms = 300\njitter_ms = 50\n",
    );
    cluster.start_all();
    let (first, second) = std::thread::scope(|scope| {
        let a = &cluster.nodes[0];
        let b = &cluster.nodes[1];
        let first = scope.spawn(move || a.apply("db", "/images/db-from-a.tar"));
        let second = scope.spawn(move || b.apply("db", "/images/db-from-b.tar"));
        (first.join().unwrap(), second.join().unwrap())
    });
    assert_ne!(first.version, second.version, "two writes got the same HLC");
    assert_ne!(first.spec, second.spec);
    let first_hlc: Timestamp = first.version.parse().unwrap();
    let second_hlc: Timestamp = second.version.parse().unwrap();
    let expected = if first_hlc > second_hlc {
        &first
    } else {
        &second
    };
    let winners: Vec<_> = cluster
        .nodes
        .iter()
        .map(|node| {
            wait_for(
                &format!("{} to settle on db", node.name),
                CONVERGE_TIMEOUT_MS,
                || {
                    let views = node.services();
                    let db = views.into_iter().find(|s| s.name.as_str() == "db")?;
                    // LWW: the write with the higher HLC wins on every node.
                    (db.version == expected.version).then_some(db)
                },
            )
        })
        .collect();
    for winner in &winners {
        assert_eq!(winner, expected);
    }
    // The loser is gone everywhere: a second look still shows the winner.
    for node in &cluster.nodes {
        let db = node
            .services()
            .into_iter()
            .find(|s| s.name.as_str() == "db")
            .unwrap();
        assert_eq!(&db, expected, "{} flipped back", node.name);
    }
    for node in &mut cluster.nodes {
        assert!(node.stop().success(), "{}:\n{}", node.name, node.log());
    }
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused_and_the_first_keeps_serving() {
    let mut cluster = Cluster::new(1, "");
    cluster.start_all();
    let first = &cluster.nodes[0];
    let output = std::process::Command::new(host_support::BINARY)
        .args(["daemon", "--config"])
        .arg(&first.config)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.contains("state.redb"), "{message}");
    // The live daemon's socket was left alone and still answers.
    assert_eq!(first.status().node.as_str(), "node-a");
    for node in &mut cluster.nodes {
        assert!(node.stop().success(), "{}:\n{}", node.name, node.log());
    }
}

#[test]
fn the_demo_runs_a_cluster_shows_convergence_and_cleans_up() {
    let output = std::process::Command::new(host_support::BINARY)
        .arg("demo")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "node-2 lists it after",
        "node-3 lists it after",
        "== shoal status on node-3 ==",
        "all daemons stopped cleanly; demo directory removed",
        "next steps:",
        "Running a node",
    ] {
        assert!(
            stdout.contains(needle),
            "demo output lacks {needle:?}:\n{stdout}"
        );
    }
    let real_containers =
        nix::unistd::Uid::effective().is_root() && std::path::Path::new("/bin/busybox").is_file();
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(
            real_containers,
            "CI=true: the demo must run real containers (needs root and /bin/busybox)"
        );
    }
    if real_containers {
        // Real containers: one running on each node, then all removed.
        for needle in [
            "3 containers running, one per node",
            "no container left on any node",
        ] {
            assert!(
                stdout.contains(needle),
                "demo output lacks {needle:?}:\n{stdout}"
            );
        }
        for node in ["node-1", "node-2", "node-3"] {
            let own_running = stdout
                .lines()
                .filter(|line| {
                    line.starts_with(&format!("{node} (self)")) && line.contains(" running ")
                })
                .count();
            assert_eq!(own_running, 1, "{node} ran no container:\n{stdout}");
        }
    } else {
        assert!(
            stdout.contains("containers skipped: "),
            "the demo does not say why it ran no containers:\n{stdout}"
        );
    }
    let directory = stdout
        .lines()
        .find_map(|line| line.strip_prefix("shoal demo in "))
        .expect("the demo names its directory");
    assert!(
        !std::path::Path::new(directory).exists(),
        "{directory} left behind"
    );
}
