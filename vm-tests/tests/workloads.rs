//! The workload scenarios of vm-tests/README.md (issue 11): published ports in
//! host and mesh mode, port conflicts, egress through the node, named volumes
//! and secrets, on real daemons in network namespaces running real busybox
//! containers. The outside host of the lab stands for a client outside the
//! cluster and for a server on the network beyond it.
//!
//! Needs root (namespaces, mounts, cgroups, nftables) and /bin/busybox; the
//! image is built here from the host's static busybox, nothing is downloaded.
//! A failure prints every node's `shoal ps --json`, its `ip shoal` nftables
//! table and the daemons' log tails.

mod workload_support;

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::path::PathBuf;

use shoal_vm_tests::cluster::Cluster;
use shoal_vm_tests::lab::OUTSIDE_ADDRESS;
use shoal_vm_tests::probe::HttpServer;
use workload_support::*;

/// Host mode: one replica of an httpd published as 8080:80; from outside the
/// cluster, port 8080 answers on the node that runs it and nowhere else.
#[test]
fn ports_host_mode() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = start(3, true);
    let spec = spec(
        "web",
        &image,
        &httpd_command("hello"),
        "ports = [\"8080:80\"]",
    );
    cluster.apply(0, &spec).expect("apply");
    let replica = one_running(&cluster, "web");
    assert!(
        replica.ports.iter().any(|p| p == "8080:80/tcp"),
        "ps does not list the published port: {replica:?}\n{}",
        cluster.diagnostics()
    );
    wait_answers(&cluster, replica.node, 8080, "hello");
    for index in 0..cluster.len() {
        if index != replica.node {
            assert_unanswered(
                &cluster,
                index,
                8080,
                "it runs no replica of a host-mode port",
            );
        }
    }
    // Still one replica, still on the same node (the probes changed nothing).
    assert_eq!(
        own_containers(&cluster, "web"),
        vec![replica],
        "{}",
        cluster.diagnostics()
    );
}

/// Mesh mode: every node answers on the published port and forwards to the
/// one replica; after the replica's node is cut off and its daemon killed, the
/// replica moves and every remaining node answers again.
#[test]
fn ports_mesh_mode() {
    if !image_support::require_root() {
        return;
    }
    let (mut cluster, image) = start(3, true);
    let spec = spec(
        "web",
        &image,
        &httpd_command("hello"),
        "ports = [\"8080:80\"]\n[publish]\nmode = \"mesh\"",
    );
    cluster.apply(0, &spec).expect("apply");
    let first = one_running(&cluster, "web");
    for index in 0..cluster.len() {
        wait_answers(&cluster, index, 8080, "hello");
    }

    let lost = first.node;
    cluster.lab().isolate(lost).expect("isolate");
    cluster.kill(lost);
    let moved = one_running(&cluster, "web");
    assert_ne!(
        moved.node, lost,
        "the replica did not move off the lost node"
    );
    for index in cluster.running() {
        wait_answers(&cluster, index, 8080, "hello");
    }
    assert_unanswered(&cluster, lost, 8080, "its node is off the network");
}

/// Two services ask for host port 8080 on a one-node cluster: one runs and
/// answers, the other is unplaced with a reason naming the port.
#[test]
fn ports_conflict_unplaced() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = start(1, true);
    for name in ["alpha", "beta"] {
        let spec = spec(name, &image, &httpd_command(name), "ports = [\"8080:80\"]");
        cluster.apply(0, &spec).expect("apply");
    }
    let (running, unplaced, reason) = wait_for(
        &cluster,
        "one of alpha and beta running, the other unplaced with a reason",
        || {
            let ps = cluster.cli_json(0, &["ps"]).ok()?;
            let has_running = |name: &str| {
                ps["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["service"] == name && c["state"] == "running")
            };
            let (running, unplaced) = match (has_running("alpha"), has_running("beta")) {
                (true, false) => ("alpha", "beta"),
                (false, true) => ("beta", "alpha"),
                _ => return None,
            };
            let count = ps["unplaced"][unplaced].as_u64().unwrap_or(0);
            let reason = ps["unplaced_reasons"][unplaced].as_str()?.to_owned();
            (count == 1).then_some((running, unplaced, reason))
        },
    );
    assert!(
        reason.contains("8080"),
        "the reason {unplaced} is unplaced does not name port 8080: {reason:?}"
    );
    wait_answers(&cluster, 0, 8080, running);
    assert!(
        own_containers(&cluster, unplaced).is_empty(),
        "{unplaced} has a container although it is unplaced\n{}",
        cluster.diagnostics()
    );
}

/// A container fetches from a server outside the cluster; the server sees the
/// address of the container's node (masquerade), and the container gets the
/// answer.
#[test]
fn egress_masquerade() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = start(2, true);
    let server_addr = SocketAddrV4::new(OUTSIDE_ADDRESS, 8000);
    let server = HttpServer::start(cluster.outside_netns(), server_addr, "outside-ok")
        .expect("outside server");
    // nc, not wget: the host's static busybox wget crashes in a container
    // without /etc (glibc's static resolver), nc takes a numeric address as is.
    let script = format!(
        "trap 'exit 0' TERM; while true; do printf 'GET /egress HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {} {} 2>&1; echo; sleep 1 & wait $!; done",
        server_addr.ip(),
        server_addr.port()
    );
    let spec = spec("fetch", &image, &script, "");
    cluster.apply(0, &spec).expect("apply");
    let replica = one_running(&cluster, "fetch");
    let node_ip = node_address(&cluster, replica.node);

    let seen = wait_for(
        &cluster,
        "a request from the container at the outside server",
        || {
            let seen: Vec<_> = server
                .seen()
                .into_iter()
                .filter(|request| request.line.starts_with("GET /egress "))
                .collect();
            (!seen.is_empty()).then_some(seen)
        },
    );
    let sources: BTreeSet<std::net::IpAddr> = seen.iter().map(|r| r.peer.ip()).collect();
    assert_eq!(
        sources,
        BTreeSet::from([std::net::IpAddr::V4(node_ip)]),
        "the outside server saw other sources than n{}'s address {node_ip} (container {})",
        replica.node,
        replica.ip
    );
    wait_for(
        &cluster,
        "the container's output to hold the answer",
        || {
            let logs = cluster.cli_text(replica.node, &["logs", "fetch"]).ok()?;
            logs.contains("outside-ok").then_some(())
        },
    );
}

/// The file `count` in node 0's named volume `cache`, as the host sees it.
fn volume_file(cluster: &Cluster) -> PathBuf {
    cluster
        .node(0)
        .state_dir
        .join("volumes")
        .join("cache")
        .join("count")
}

/// A container appends a line to a file in the named volume `cache` each time
/// it runs; its restarts (it exits, restart = "always") and a daemon restart
/// keep what was written, and `shoal volume ls` lists the volume.
#[test]
fn named_volume_survives_restarts() {
    if !image_support::require_root() {
        return;
    }
    let (mut cluster, image) = start(1, false);
    let spec = spec(
        "counter",
        &image,
        "echo \"run $RANDOM$RANDOM\" >> /data/count; cat /data/count; sleep 1",
        "volumes = [\"cache:/data\"]\nrestart = \"always\"",
    );
    cluster.apply(0, &spec).expect("apply");
    let file = volume_file(&cluster);
    let read = || std::fs::read_to_string(&file).unwrap_or_default();

    let before = wait_for(&cluster, "two runs' lines in the volume", || {
        let text = read();
        (text.lines().count() >= 2).then_some(text)
    });
    assert!(
        before.lines().all(|line| line.starts_with("run ")),
        "unexpected volume content: {before:?}"
    );

    let listing = cluster.cli_json(0, &["volume", "ls"]).expect("volume ls");
    let volumes = listing
        .as_array()
        .or_else(|| listing["volumes"].as_array())
        .cloned()
        .unwrap_or_default();
    let cache = volumes
        .iter()
        .find(|v| v["name"] == "cache")
        .unwrap_or_else(|| panic!("volume ls does not list cache: {listing}"));
    let expected_path = cluster.node(0).state_dir.join("volumes").join("cache");
    assert_eq!(
        cache["path"].as_str().map(PathBuf::from),
        Some(expected_path),
        "volume ls: {listing}"
    );

    let before_restart = read();
    cluster.restart(0).expect("daemon restart");
    let after = wait_for(&cluster, "two more runs after the daemon restart", || {
        let text = read();
        (text.lines().count() >= before_restart.lines().count() + 2).then_some(text)
    });
    assert!(
        after.starts_with(&before_restart),
        "the volume lost lines across the daemon restart:\nbefore: {before_restart:?}\nafter: {after:?}"
    );
    assert!(
        after.starts_with(&before),
        "the volume lost lines across container restarts:\nbefore: {before:?}\nafter: {after:?}"
    );
    // The container reads what earlier runs wrote through the mount.
    wait_for(
        &cluster,
        "the container's output to show earlier runs",
        || {
            let logs = cluster.cli_text(0, &["logs", "counter"]).ok()?;
            let first = before.lines().next()?;
            logs.contains(first).then_some(())
        },
    );
}

/// A token that appears nowhere by chance.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut urandom, &mut bytes).expect("random bytes");
    format!("shoal-secret-{}", hex::encode(bytes))
}

/// Whether `needle` occurs in `haystack`.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A secret is readable inside the container at /run/secrets/NAME, but its
/// content is in no node's state.redb and no daemon's log; a service whose
/// secret file is missing shows an error naming the path on the node that
/// should run it, and the other service keeps running.
#[test]
fn secrets_stay_off_the_state() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = start(2, false);
    let token = random_token();
    let secrets = cluster.dir().join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets dir");
    let token_file = secrets.join("token");
    std::fs::write(&token_file, &token).expect("write the secret");
    let missing = secrets.join(format!("missing-{}", random_token()));

    let reader = spec(
        "reader",
        &image,
        &format!("cat /run/secrets/token; echo; {IDLE}"),
        &format!(
            "secrets = {{ token = {} }}",
            quoted(&token_file.display().to_string())
        ),
    );
    cluster.apply(0, &reader).expect("apply reader");
    let running = one_running(&cluster, "reader");
    wait_for(&cluster, "the container to print its secret", || {
        let logs = cluster.cli_text(running.node, &["logs", "reader"]).ok()?;
        logs.contains(&token).then_some(())
    });

    let broken = spec(
        "broken",
        &image,
        IDLE,
        &format!(
            "secrets = {{ token = {} }}",
            quoted(&missing.display().to_string())
        ),
    );
    cluster.apply(0, &broken).expect("apply broken");
    let missing_text = missing.display().to_string();
    let (node, error) = wait_for(&cluster, "an error naming the missing secret", || {
        (0..cluster.len()).find_map(|index| {
            let ps = cluster.cli_json(index, &["ps"]).ok()?;
            let error = ps["errors"]["broken"].as_str()?.to_owned();
            error.contains(&missing_text).then_some((index, error))
        })
    });
    eprintln!("n{node} reports for broken: {error}");
    assert!(
        own_containers(&cluster, "broken")
            .iter()
            .all(|c| c.state != "running"),
        "a container of broken runs without its secret\n{}",
        cluster.diagnostics()
    );
    assert_eq!(
        own_containers(&cluster, "reader"),
        vec![running],
        "reader did not keep running\n{}",
        cluster.diagnostics()
    );

    let mut path_seen = false;
    for index in 0..cluster.len() {
        let node = cluster.node(index);
        let state_file = node.state_dir.join("state.redb");
        let state = std::fs::read(&state_file).expect("state.redb");
        assert!(
            !contains_bytes(&state, token.as_bytes()),
            "the secret's content is in {}",
            state_file.display()
        );
        path_seen |= contains_bytes(&state, token_file.display().to_string().as_bytes());
        let log = std::fs::read(&node.log).expect("daemon log");
        assert!(
            !contains_bytes(&log, token.as_bytes()),
            "the secret's content is in {}",
            node.log.display()
        );
        for args in [&["service", "ls"][..], &["ps"][..]] {
            let answer = cluster.cli_json(index, args).expect("cli").to_string();
            assert!(
                !answer.contains(&token),
                "`shoal {}` on n{index} shows the secret's content",
                args.join(" ")
            );
        }
    }
    // The search above can find what is there: the path is replicated.
    assert!(
        path_seen,
        "no state.redb holds the secret's path; is the state stored in a form the search cannot read?"
    );
}
