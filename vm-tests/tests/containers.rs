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

/// Waits until every node's own containers of `service` run and all nodes
/// agree on `replicas` records; returns them.
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
        if own_running && agree && listed.len() == replicas {
            return listed;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{replicas} running replicas of {service} not reached: {views:?}"
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
    let cluster = Cluster::start(ClusterOptions {
        container_subnets: true,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sleep", "3600"]);
    let spec = format!(
        "name = \"web\"\nimage = \"{}\"\ncommand = [\"/bin/sleep\", \"3600\"]\nreplicas = 3\n",
        image.path.display()
    );
    cluster.apply(0, &spec).expect("apply");

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
/// elsewhere is stopped, and the count is back to one per node.
#[test]
fn node_loss_moves_its_replica_and_its_return_stops_the_surplus() {
    if !image_support::require_root() {
        return;
    }
    let mut cluster = Cluster::start(ClusterOptions {
        container_subnets: true,
        ..ClusterOptions::default()
    })
    .expect("cluster");
    let image = image_support::busybox_image(&cluster.dir().join("image"), &["/bin/sleep", "3600"]);
    let spec = format!(
        "name = \"web\"\nimage = \"{}\"\ncommand = [\"/bin/sleep\", \"3600\"]\nreplicas = 3\n",
        image.path.display()
    );
    cluster.apply(0, &spec).expect("apply");
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
}
