//! A checker in the Jepsen spirit: records every operation a node
//! acknowledged, then checks what the cluster converged to against it.
//!
//! Service definitions are last-writer-wins by HLC, so after healing every
//! node must hold, for each service, exactly the acknowledged write with the
//! highest version, and no acknowledged write may be missing from that order.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;

use serde_json::Value;
use shoal_crdt::Timestamp;

/// One acknowledged `service apply`.
#[derive(Debug, Clone)]
pub struct Ack {
    pub node: usize,
    pub service: String,
    /// A value unique to this write, carried in the spec's environment.
    pub marker: String,
    pub version: Timestamp,
}

/// Every acknowledged write of a run, in the order they were acknowledged.
#[derive(Debug, Default)]
pub struct History {
    acks: Mutex<Vec<Ack>>,
}

/// The environment key a test puts its per-write marker in.
pub const MARKER_KEY: &str = "SHOAL_MARKER";

impl History {
    /// Records the daemon's answer to an apply of one service whose spec
    /// carried `marker`; panics with the answer if it is not an acknowledgement.
    pub fn record_apply(&self, node: usize, marker: &str, answer: &Value) -> Ack {
        let applied = answer
            .as_array()
            .and_then(|list| list.first())
            .unwrap_or_else(|| panic!("apply answer is not a list of services: {answer}"));
        let service = applied["name"]
            .as_str()
            .expect("applied service has a name");
        let version = applied["version"]
            .as_str()
            .expect("applied service has a version");
        let version = Timestamp::from_str(version)
            .unwrap_or_else(|e| panic!("version {version:?} is not an HLC timestamp: {e:?}"));
        let ack = Ack {
            node,
            service: service.to_owned(),
            marker: marker.to_owned(),
            version,
        };
        self.acks.lock().expect("history lock").push(ack.clone());
        ack
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("history lock").clone()
    }

    /// Checks one node's `service ls --json` against the history: every
    /// service written holds the acknowledged write with the highest version.
    /// Returns every violation found, empty when the listing is right.
    pub fn check_services(&self, node: usize, listing: &Value) -> Vec<String> {
        let mut winners: BTreeMap<&str, &Ack> = BTreeMap::new();
        let acks = self.acks();
        for ack in &acks {
            let entry = winners.entry(ack.service.as_str()).or_insert(ack);
            if ack.version > entry.version {
                *entry = ack;
            }
        }
        let mut violations = Vec::new();
        let listed: BTreeMap<&str, &Value> = listing
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|s| Some((s["name"].as_str()?, s)))
                    .collect()
            })
            .unwrap_or_default();
        for (service, winner) in winners {
            let Some(found) = listed.get(service) else {
                violations.push(format!(
                    "node {node}: service {service} is missing; last acknowledged write {} from node {}",
                    winner.version, winner.node
                ));
                continue;
            };
            let version = found["version"].as_str().unwrap_or_default();
            let marker = found["spec"]["env"][MARKER_KEY]
                .as_str()
                .unwrap_or_default();
            if version != winner.version.to_string() || marker != winner.marker {
                violations.push(format!(
                    "node {node}: service {service} holds version {version} marker {marker}, \
                     expected the highest acknowledged write {} marker {} from node {}",
                    winner.version, winner.marker, winner.node
                ));
            }
        }
        violations
    }
}

/// A spec file for one service whose environment carries `marker`.
pub fn spec_with_marker(service: &str, marker: &str, replicas: u32) -> String {
    format!(
        "name = \"{service}\"\n\
         image = \"/var/lib/shoal-test/images/busybox\"\n\
         command = [\"/bin/sleep\", \"3600\"]\n\
         replicas = {replicas}\n\
         [env]\n\
         {MARKER_KEY} = \"{marker}\"\n"
    )
}

/// Checks one node's `ps --json` against `service ls --json`: no address is
/// held by two containers, and every node's resource counters (PN-counters)
/// equal what the containers recorded on it reserve. Returns every violation.
pub fn check_containers(node: usize, ps: &Value, services: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let specs: BTreeMap<&str, &Value> = services
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|s| Some((s["name"].as_str()?, &s["spec"])))
                .collect()
        })
        .unwrap_or_default();
    let containers = ps["containers"].as_array().cloned().unwrap_or_default();
    let mut holders: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for container in &containers {
        if let Some(ip) = container["ip"].as_str() {
            let id = container["id"].as_str().unwrap_or_default();
            holders.entry(ip).or_default().push(id);
        }
    }
    for (ip, ids) in holders {
        if ids.len() > 1 {
            violations.push(format!("node {node}: {ip} is held by {ids:?}"));
        }
    }
    // node -> (containers, cpu_millis, memory_bytes) the records reserve
    let mut reserved: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for container in &containers {
        let owner = container["node"].as_str().unwrap_or_default();
        let spec = specs
            .get(container["service"].as_str().unwrap_or_default())
            .copied();
        let entry = reserved.entry(owner).or_default();
        entry.0 += 1;
        entry.1 += spec
            .and_then(|s| s["resources"]["cpu_millis"].as_i64())
            .unwrap_or(0);
        entry.2 += spec
            .and_then(|s| s["resources"]["memory_bytes"].as_i64())
            .unwrap_or(0);
    }
    let usage = ps["usage"].as_object().cloned().unwrap_or_default();
    let owners: std::collections::BTreeSet<&str> = reserved
        .keys()
        .copied()
        .chain(usage.keys().map(String::as_str))
        .collect();
    for owner in owners {
        let (count, cpu, memory) = reserved.get(owner).copied().unwrap_or_default();
        let counted = &usage.get(owner).cloned().unwrap_or(Value::Null);
        let field = |name: &str| counted[name].as_i64().unwrap_or(0);
        if (
            field("containers"),
            field("cpu_millis"),
            field("memory_bytes"),
        ) != (count, cpu, memory)
        {
            violations.push(format!(
                "node {node}: counters of {owner} say {counted}, its containers reserve \
                 containers={count} cpu_millis={cpu} memory_bytes={memory}"
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn services() -> Value {
        json!([{ "name": "web", "spec": { "resources": { "cpu_millis": 100, "memory_bytes": 64 } } }])
    }

    fn ps(second_ip: &str, n1_containers: i64) -> Value {
        json!({
            "containers": [
                { "id": "a", "service": "web", "node": "n0", "ip": "10.88.1.2" },
                { "id": "b", "service": "web", "node": "n1", "ip": second_ip },
            ],
            "usage": {
                "n0": { "containers": 1, "cpu_millis": 100, "memory_bytes": 64 },
                "n1": { "containers": n1_containers, "cpu_millis": 100 * n1_containers, "memory_bytes": 64 * n1_containers },
            }
        })
    }

    #[test]
    fn consistent_containers_pass() {
        assert_eq!(
            check_containers(0, &ps("10.88.2.2", 1), &services()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_address_held_twice_and_drifted_counters_are_reported() {
        let violations = check_containers(0, &ps("10.88.1.2", 2), &services());
        assert_eq!(violations.len(), 2, "{violations:?}");
        assert!(
            violations[0].contains("10.88.1.2 is held by"),
            "{violations:?}"
        );
        assert!(violations[1].contains("counters of n1"), "{violations:?}");
    }
}
