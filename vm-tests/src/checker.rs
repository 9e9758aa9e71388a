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
