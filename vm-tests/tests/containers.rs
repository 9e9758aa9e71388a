//! The container scenarios of vm-tests/README.md, on real daemons in network
//! namespaces running real busybox containers through libcontainer.
//!
//! Needs root (namespaces, mounts, cgroups) and /bin/busybox; the image is
//! built here from the host's static busybox, nothing is downloaded.

#[path = "../../oci/tests/common/mod.rs"]
mod image_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_vm_tests::checker::check_containers;
use shoal_vm_tests::cluster::{Cluster, ClusterOptions};
use shoal_vm_tests::command;

const TIMEOUT: Duration = Duration::from_secs(60);

/// This node's view of the running containers of `service`: (node, id, ip).
fn containers(cluster: &Cluster, index: usize, service: &str) -> Vec<(String, String, String)> {
    let ps = cluster.cli_json(index, &["ps"]).expect("ps");
    ps["containers"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|c| c["service"] == service)
                .map(|c| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    (text(&c["node"]), text(&c["id"]), text(&c["ip"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every node's own containers of `service` run, all nodes agree
/// on `replicas` records, no address is held twice and every node's counters
/// match its containers; returns the records.
fn wait_running(
    cluster: &Cluster,
    service: &str,
    replicas: usize,
) -> Vec<(String, String, String)> {
    let started = Instant::now();
    loop {
        let views: Vec<Value> = (0..cluster.len())
            .map(|i| cluster.cli_json(i, &["ps"]).unwrap_or(Value::Null))
            .collect();
        let own_running = views.iter().enumerate().all(|(i, ps)| {
            ps["containers"].as_array().is_some_and(|list| {
                list.iter()
                    .filter(|c| c["service"] == service && c["node"] == format!("n{i}").as_str())
                    .all(|c| c["state"] == "running")
            })
        });
        let listed = containers(cluster, 0, service);
        let agree = (1..cluster.len()).all(|i| containers(cluster, i, service) == listed);
        // Every node's view: no address twice, counters equal the containers.
        let violations: Vec<String> = views
            .iter()
            .enumerate()
            .flat_map(|(i, ps)| {
                let services = cluster
                    .cli_json(i, &["service", "ls"])
                    .unwrap_or(Value::Null);
                check_containers(i, ps, &services)
            })
            .collect();
        if own_running && agree && listed.len() == replicas && violations.is_empty() {
            return listed;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{replicas} running replicas of {service} not reached: {violations:?} {views:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Scenario 1: a 3-replica service on 3 nodes spreads one replica per node,
/// and every container reaches every other by IP across nodes.
#[test]
fn deploy_spreads_replicas_and_containers_reach_each_other_across_nodes() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, _) = cluster_with_web(3, 3);
    let placed = wait_running(&cluster, "web", 3);
    let nodes: BTreeSet<&str> = placed.iter().map(|(node, _, _)| node.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "replicas not spread one per node: {placed:?}"
    );
    let ips: BTreeSet<&str> = placed.iter().map(|(_, _, ip)| ip.as_str()).collect();
    assert_eq!(
        ips.len(),
        3,
        "an address is missing or held twice: {placed:?}"
    );

    for (from_node, from_id, _) in &placed {
        let netns = format!("shoal.{from_node}.{from_id}");
        for (to_node, _, to_ip) in &placed {
            if to_node == from_node {
                continue;
            }
            let reached = command::run(
                "ip",
                &["netns", "exec", &netns, "ping", "-c", "1", "-W", "2", to_ip],
            );
            assert!(
                reached.is_ok(),
                "container on {from_node} cannot reach {to_ip} on {to_node}: {reached:?}"
            );
        }
    }
}

/// Scenario 4: kill -9 one node's daemon; its replica comes up on another
/// node; when it returns it keeps (adopts) its container, the surplus copy
/// elsewhere is stopped, and the count is back to one per node. The node that
/// stood in keeps the replica it ran all along and stops the stand-in.
#[test]
fn node_loss_moves_its_replica_and_its_return_stops_the_surplus() {
    if !image_support::require_root() {
        return;
    }
    let (mut cluster, _) = cluster_with_web(3, 3);
    let before = wait_running(&cluster, "web", 3);
    let lost_id = before
        .iter()
        .find(|(node, _, _)| node == "n2")
        .map(|(_, id, _)| id.clone())
        .expect("a replica on n2");

    cluster.kill(2);
    // Nodes 0 and 1 notice the silence and run all three replicas themselves.
    let started = Instant::now();
    loop {
        let survivors: Vec<_> = containers(&cluster, 0, "web")
            .into_iter()
            .filter(|(node, _, _)| node != "n2")
            .collect();
        if survivors.len() == 3 {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the lost replica did not move: {survivors:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    cluster.restart(2).expect("restart n2");
    let after = wait_running(&cluster, "web", 3);
    let nodes: BTreeSet<&str> = after.iter().map(|(node, _, _)| node.as_str()).collect();
    assert_eq!(
        nodes.len(),
        3,
        "not back to one replica per node: {after:?}"
    );
    assert!(
        after
            .iter()
            .any(|(node, id, _)| node == "n2" && *id == lost_id),
        "n2 did not keep its adopted container {lost_id}: {after:?}"
    );
    assert_eq!(
        after, before,
        "a node stopped the replica it ran before n2 was lost, not its stand-in"
    );
}

/// A cluster of `nodes` with container subnets, running `replicas` busybox
/// `sleep`s as service `web`; returns it and the image's path.
fn cluster_with_web(nodes: usize, replicas: usize) -> (Cluster, String) {
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        container_subnets: true,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sleep", "3600"]);
    let spec = format!(
        "name = \"web\"\nimage = \"{}\"\ncommand = [\"/bin/sleep\", \"3600\"]\nreplicas = {replicas}\n",
        image.path.display()
    );
    cluster.apply(0, &spec).expect("apply");
    wait_running(&cluster, "web", replicas);
    (cluster, image.path.display().to_string())
}

/// Each node's own containers as it reports them: (node, id, pid). A node reads a pid from
/// its runtime's state file, which a pass may be rewriting at that moment (the read then
/// fails and `ps` has no pid): read again until every pid is known, bounded.
fn own_pids(cluster: &Cluster) -> BTreeSet<(String, String, i64)> {
    let started = Instant::now();
    loop {
        let pids = own_pids_once(cluster);
        if pids.iter().all(|(_, _, pid)| *pid >= 0) || started.elapsed() > TIMEOUT {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn own_pids_once(cluster: &Cluster) -> BTreeSet<(String, String, i64)> {
    (0..cluster.len())
        .flat_map(|i| {
            let ps = cluster.cli_json(i, &["ps"]).expect("ps");
            let node = format!("n{i}");
            ps["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(move |c| c["node"] == node.as_str())
                .map(|c| {
                    (
                        c["node"].as_str().unwrap_or_default().to_owned(),
                        c["id"].as_str().unwrap_or_default().to_owned(),
                        c["pid"].as_i64().unwrap_or(-1),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Scenario 5: restart every daemon one by one (SIGTERM, as systemd does):
/// no container is restarted (same ids, same pids) and no state is lost.
#[test]
fn rolling_restart_restarts_no_container_and_loses_no_state() {
    if !image_support::require_root() {
        return;
    }
    let (mut cluster, _) = cluster_with_web(3, 3);
    let all = [0, 1, 2];
    let before = own_pids(&cluster);
    assert_eq!(before.len(), 3, "{before:?}");
    let services_before = cluster.cli_json(0, &["service", "ls"]).expect("ls");

    for index in all {
        cluster.stop(index).expect("graceful stop");
        cluster.spawn(index).expect("start again");
        cluster.wait_ready(index, TIMEOUT).expect("ready");
        cluster.wait_members(index, 3, TIMEOUT).expect("rejoined");
    }
    cluster.wait_converged(&all, TIMEOUT).expect("converged");
    wait_running(&cluster, "web", 3);
    assert_eq!(own_pids(&cluster), before, "a container was restarted");
    for index in all {
        let services = cluster.cli_json(index, &["service", "ls"]).expect("ls");
        assert_eq!(services, services_before, "node {index} lost state");
    }
}

/// Scenario 3: a 2|3 partition of 5 nodes. Both sides keep serving, accept
/// writes and run the service's replicas on their own side; after the heal
/// the replica count returns to the spec and both sides' writes are kept.
#[test]
fn partition_both_sides_serve_then_surplus_replicas_stop_after_heal() {
    if !image_support::require_root() {
        return;
    }
    let (cluster, image) = cluster_with_web(5, 3);
    let (left, right) = ([0usize, 1], [2usize, 3, 4]);
    for a in left {
        for b in right {
            cluster.lab().cut(a, b).expect("cut");
        }
    }
    // Each side accepts a write of its own.
    for (index, name) in [(0, "left"), (2, "right")] {
        let spec = format!(
            "name = \"{name}\"\nimage = \"{image}\"\ncommand = [\"/bin/sleep\", \"3600\"]\nreplicas = 1\n"
        );
        cluster
            .apply(index, &spec)
            .expect("write during the partition");
    }
    // Each side runs all three replicas of web itself.
    for (viewer, side) in [(0usize, &left[..]), (2, &right[..])] {
        let started = Instant::now();
        loop {
            let own_side: Vec<_> = containers(&cluster, viewer, "web")
                .into_iter()
                .filter(|(node, _, _)| side.iter().any(|i| *node == format!("n{i}")))
                .collect();
            if own_side.len() == 3 {
                break;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "side of n{viewer} does not run 3 replicas: {own_side:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    let healed = Instant::now();
    cluster.lab().heal().expect("heal");
    let after = wait_running(&cluster, "web", 3);
    eprintln!("replica count back to 3 after {:?}", healed.elapsed());
    let nodes: BTreeSet<&str> = after.iter().map(|(node, _, _)| node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "replicas not spread after heal: {after:?}");
    cluster
        .wait_converged(&[0, 1, 2, 3, 4], TIMEOUT)
        .expect("state converged after heal");
    for name in ["left", "right"] {
        wait_running(&cluster, name, 1);
    }
}
