//! The update scenarios of vm-tests/README.md (issue 12): a 3-replica httpd behind a
//! mesh-mode published port, polled from the lab's outside host through every node while
//! its spec changes. A good update rolls through without one failed request; an update
//! whose health check never passes is rolled back by the cluster on its own while the old
//! version keeps answering. Real daemons in network namespaces, real busybox containers.
//!
//! Needs root (namespaces, mounts, cgroups, nftables) and /bin/busybox. A failure prints
//! every node's `shoal ps --json`, its nftables table and the daemons' log tails.

mod workload_support;

use std::time::{Duration, Instant};

use shoal_vm_tests::cluster::Cluster;
use workload_support::*;

/// Polls until `done` holds, sampling the healthy replicas on the way; returns the
/// fewest seen. Panics with the diagnostics after `ROLLOUT_TIMEOUT`.
fn roll_until(cluster: &Cluster, what: &str, mut done: impl FnMut() -> bool) -> usize {
    let started = Instant::now();
    let mut fewest = usize::MAX;
    loop {
        if let Some(healthy) = healthy_replicas(cluster) {
            fewest = fewest.min(healthy);
        }
        if done() {
            return fewest;
        }
        assert!(
            started.elapsed() < ROLLOUT_TIMEOUT,
            "timed out after {ROLLOUT_TIMEOUT:?} waiting for {what}\n{}",
            cluster.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The versions in `shoal service history web --json`, newest first.
fn history(cluster: &Cluster) -> Vec<serde_json::Value> {
    cluster
        .cli_json(0, &["service", "history", "web"])
        .ok()
        .and_then(|view| view["versions"].as_array().cloned())
        .unwrap_or_default()
}

/// A 3-node cluster serving v1 of web from three replicas; returns it and the image path.
fn serving_v1() -> (Cluster, String) {
    let (cluster, image) = start(3, true);
    cluster
        .apply(0, &web(&image, "v1", true))
        .expect("apply v1");
    wait_serving(&cluster, "v1");
    (cluster, image)
}

/// Fails with the cluster's diagnostics when the outside client saw a failed request.
fn assert_none_failed(cluster: &Cluster, seen: &Seen, during: &str) {
    assert!(
        seen.failures.is_empty(),
        "{} of {} requests failed {during}: {:?}\n{}",
        seen.failures.len(),
        seen.failures.len() + seen.answers.len(),
        seen.failures,
        cluster.diagnostics()
    );
}

/// A good update rolls one replica at a time: the outside client never sees a failed
/// request and some replica is healthy throughout; at the end all three run v2.
#[test]
fn rolling_update_serves_every_request() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = serving_v1();

    let client = Client::start(&cluster);
    std::thread::sleep(Duration::from_secs(1));
    cluster
        .apply(1, &web(&image, "v2", true))
        .expect("apply v2");
    let fewest = roll_until(&cluster, "every node to answer v2 from 3 replicas", || {
        three_serve(&cluster, "v2")
    });
    std::thread::sleep(Duration::from_secs(1));
    let seen = client.finish();

    assert_none_failed(&cluster, &seen, "during the update");
    assert!(seen.answers.iter().any(|body| body == "v1"));
    assert!(seen.answers.iter().any(|body| body == "v2"));
    assert!(
        seen.answers.iter().all(|body| body == "v1" || body == "v2"),
        "{:?}",
        seen.answers
    );
    assert!(
        fewest >= 1,
        "no healthy replica at some point of the update"
    );
    let versions = history(&cluster);
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions[0]["current"].as_bool().unwrap_or(false));
    eprintln!(
        "rolling update: {} requests, none failed; at least {fewest} healthy replicas throughout",
        seen.answers.len()
    );
}

/// An update whose health check never passes fails its deadline; the cluster writes v1
/// back by itself, the new replica goes, and v1 answers every request throughout.
#[test]
fn failed_update_rolls_back_by_itself() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = serving_v1();
    let replicas_v1: Vec<String> = own_containers(&cluster, "web")
        .into_iter()
        .map(|c| c.id)
        .collect();

    let client = Client::start(&cluster);
    cluster
        .apply(2, &web(&image, "broken", false))
        .expect("apply the broken version");
    roll_until(&cluster, "the broken version to be rolled back", || {
        let versions = history(&cluster);
        versions.first().is_some_and(|current| {
            current["current"].as_bool() == Some(true)
                && current["rollback_of"].is_string()
                && versions
                    .get(1)
                    .is_some_and(|failed| failed["failed"].is_string())
        })
    });
    roll_until(&cluster, "only the three v1 replicas to be left", || {
        let mut ids: Vec<String> = own_containers(&cluster, "web")
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        let mut expected = replicas_v1.clone();
        expected.sort();
        ids == expected
    });
    std::thread::sleep(Duration::from_secs(1));
    let seen = client.finish();

    assert_none_failed(&cluster, &seen, "while the broken version was tried");
    assert!(
        !seen.answers.is_empty() && seen.answers.iter().all(|body| body == "v1"),
        "the broken version answered or nothing did: {:?}",
        seen.answers
    );
    let versions = history(&cluster);
    let reason = versions[1]["failed"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not ready within 10000 ms"),
        "the failure does not say why: {reason:?}"
    );
    eprintln!(
        "rolled back: {} requests answered v1, none failed; reason: {reason}",
        seen.answers.len()
    );
}

/// Draining a node moves its replica with no failed request: its replacement starts on
/// another node and counts before the drained node stops its own; afterwards the drained
/// node runs nothing and still forwards its mesh port to the replicas elsewhere.
#[test]
fn drain_moves_replicas_with_no_failed_request() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, _) = serving_v1();
    let drained = cluster.node(1).name.clone();

    let client = Client::start(&cluster);
    std::thread::sleep(Duration::from_secs(1));
    cluster
        .cli_text(0, &["node", "drain", &drained, "--deadline-ms", "60000"])
        .expect("drain from another node");
    let fewest = roll_until(&cluster, "the drained node's replica to move", || {
        let replicas = own_containers(&cluster, "web");
        replicas.len() == 3
            && replicas.iter().all(|c| c.state == "running" && c.node != 1)
            && all_answer(&cluster, "v1")
    });
    std::thread::sleep(Duration::from_secs(1));
    let seen = client.finish();

    assert_none_failed(&cluster, &seen, "during the drain");
    assert!(fewest >= 1, "no healthy replica at some point of the drain");
    let nodes = cluster.cli_json(2, &["nodes"]).expect("nodes");
    let listed = nodes
        .as_array()
        .and_then(|nodes| nodes.iter().find(|node| node["id"] == drained.as_str()))
        .cloned()
        .unwrap_or_default();
    assert!(
        listed["drain"].is_object(),
        "{drained} is not shown drained on n2: {listed}"
    );
    eprintln!(
        "drain: {} requests, none failed; at least {fewest} healthy replicas throughout",
        seen.answers.len()
    );
}

/// A partition during an update: v2 is applied on n0 and n2 is cut off from the others at
/// once; each side rolls on its own view, and n2's side takes a v3 too. After the heal the
/// cluster ends on one version (v3, the later write) with exactly three replicas, every
/// node answering it.
#[test]
fn partition_during_update_ends_on_one_version() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = serving_v1();

    cluster
        .apply(0, &web(&image, "v2", true))
        .expect("apply v2");
    for other in [0, 1] {
        cluster.lab().cut(other, 2).expect("cut");
    }
    // n2, alone, sees the others go down and runs all three itself; the majority side
    // keeps rolling.
    roll_until(
        &cluster,
        "n2's side to run three replicas of its own",
        || {
            own_containers(&cluster, "web")
                .iter()
                .filter(|c| c.node == 2 && c.state == "running")
                .count()
                == 3
        },
    );
    cluster
        .apply(2, &web(&image, "v3", true))
        .expect("apply v3 on the small side");
    std::thread::sleep(Duration::from_secs(3));

    cluster.lab().heal().expect("heal");
    roll_until(
        &cluster,
        "one version (v3) with exactly three replicas",
        || three_serve(&cluster, "v3") && (0..4).all(|_| all_answer(&cluster, "v3")),
    );
    cluster
        .wait_converged(&[0, 1, 2], ROLLOUT_TIMEOUT)
        .expect("state converged after heal");
    let replicas = own_containers(&cluster, "web");
    assert_eq!(replicas.len(), 3, "{replicas:?}\n{}", cluster.diagnostics());
    for index in 0..3 {
        let versions = cluster
            .cli_json(index, &["service", "history", "web"])
            .expect("history");
        let current = &versions["versions"][0];
        assert_eq!(
            current["current"].as_bool(),
            Some(true),
            "n{index}: {versions}"
        );
        assert!(
            current["spec"]["command"][2]
                .as_str()
                .is_some_and(|script| script.contains("echo v3")),
            "n{index} does not hold v3 as current: {current}"
        );
    }
}

/// A global service follows the fleet and constraints hold: with n2 (the only node in zone
/// b) stopped, a global service runs on n0 and n1 and a service constrained to zone b is
/// unplaced with the reason; when n2 comes back, the global service gets a replica there
/// and the constrained one runs there only.
#[test]
fn global_service_follows_the_fleet_and_constraints_hold() {
    if !image_support::require_root() {
        return;
    }
    let zone = |value: &str| vec![("zone".to_owned(), value.to_owned())];
    let mut cluster =
        shoal_vm_tests::cluster::Cluster::start(shoal_vm_tests::cluster::ClusterOptions {
            nodes: 3,
            container_subnets: true,
            labels: vec![zone("a"), zone("a"), zone("b")],
            ..Default::default()
        })
        .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sh"]);
    let image = image.path.display().to_string();
    cluster.stop(2).expect("stop n2");
    wait_for(&cluster, "n2 to be down for n0", || {
        let nodes = cluster.cli_json(0, &["nodes"]).ok()?;
        nodes
            .as_array()?
            .iter()
            .any(|node| node["id"] == "n2" && node["live"] == false)
            .then_some(())
    });

    cluster
        .apply(0, &spec("agent", &image, IDLE, "mode = \"global\""))
        .expect("apply the global service");
    cluster
        .apply(
            0,
            &spec(
                "edge",
                &image,
                IDLE,
                "replicas = 2\nconstraints = [\"zone == b\"]",
            ),
        )
        .expect("apply the constrained service");
    wait_for(&cluster, "agent on n0 and n1", || {
        (running_on(&cluster, "agent") == [0, 1]).then_some(())
    });
    let ps = cluster.cli_json(0, &["ps"]).expect("ps");
    let reason = ps["unplaced_reasons"]["edge"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        running_on(&cluster, "edge").is_empty() && reason.contains("zone == b"),
        "edge runs where its constraint fails, or its reason does not say why: {reason:?}\n{}",
        cluster.diagnostics()
    );

    cluster.restart(2).expect("n2 comes back");
    wait_for(&cluster, "agent on every node and edge only on n2", || {
        (running_on(&cluster, "agent") == [0, 1, 2] && running_on(&cluster, "edge") == [2, 2])
            .then_some(())
    });
}

/// The nodes (sorted, once per replica) where `service` has a running container.
fn running_on(cluster: &shoal_vm_tests::cluster::Cluster, service: &str) -> Vec<usize> {
    let mut nodes: Vec<usize> = own_containers(cluster, service)
        .into_iter()
        .filter(|c| c.state == "running")
        .map(|c| c.node)
        .collect();
    nodes.sort();
    nodes
}
