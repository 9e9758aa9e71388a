//! Routes to the other nodes' container subnets via their node addresses. Every
//! route installed here carries `proto ROUTE_PROTOCOL`; `sync` adds the missing
//! ones and removes the stale ones among those, and never touches another route.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use shoal_crdt::Subnet;

use super::NetworkError;
use super::command::{ip, ip_json};
use super::names::ROUTE_PROTOCOL;

/// What one `sync` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Destinations of routes added (new peers, or a peer whose address changed).
    pub added: Vec<Subnet>,
    /// Destinations of routes removed (as `ip` prints them).
    pub removed: Vec<String>,
    /// Routes already right.
    pub unchanged: usize,
}

/// One route as listed by `ip -json route show`.
#[derive(Debug, Clone, Default, Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
}

/// Makes this namespace's main table hold exactly one owned route per peer:
/// `subnet via node_address proto ROUTE_PROTOCOL`. The caller leaves its own node
/// out and passes only subnets that won their conflicts; overlapping or
/// duplicate subnets, or a node address that is not IPv4, are refused before
/// anything changes.
///
/// A route to the same destination that is not ours (another `proto`) is not
/// replaced: adding ours fails with an error naming the command.
pub fn sync(peers: &[(Subnet, IpAddr)]) -> Result<RouteReport, NetworkError> {
    let wanted = check_peers(peers)?;
    let protocol = ROUTE_PROTOCOL.to_string();
    let current: Vec<Route> = ip_json(&["route", "show", "proto", &protocol])?;
    let mut report = RouteReport::default();
    let mut present = BTreeSet::new();
    for route in &current {
        let owned_and_wanted = wanted.iter().any(|(subnet, gateway)| {
            route.dst == subnet.to_string()
                && route.gateway.as_deref() == Some(gateway.to_string().as_str())
        });
        if owned_and_wanted {
            present.insert(route.dst.clone());
            report.unchanged += 1;
            continue;
        }
        let mut args = vec!["route", "del", route.dst.as_str()];
        if let Some(gateway) = &route.gateway {
            args.extend(["via", gateway.as_str()]);
        }
        args.extend(["proto", protocol.as_str()]);
        ip(&args)?;
        report.removed.push(route.dst.clone());
    }
    for (subnet, gateway) in &wanted {
        let destination = subnet.to_string();
        if present.contains(&destination) {
            continue;
        }
        let gateway = gateway.to_string();
        ip(&[
            "route",
            "add",
            &destination,
            "via",
            &gateway,
            "proto",
            &protocol,
        ])?;
        report.added.push(*subnet);
    }
    Ok(report)
}

/// The peers as IPv4 routes, after checking that no two subnets overlap.
fn check_peers(peers: &[(Subnet, IpAddr)]) -> Result<Vec<(Subnet, Ipv4Addr)>, NetworkError> {
    let mut wanted = Vec::with_capacity(peers.len());
    for (index, (subnet, address)) in peers.iter().enumerate() {
        let IpAddr::V4(gateway) = address else {
            return Err(NetworkError::NodeAddressNotIpv4 {
                subnet: *subnet,
                address: *address,
            });
        };
        if let Some((other, _)) = peers[..index]
            .iter()
            .find(|(other, _)| other.overlaps(subnet))
        {
            return Err(NetworkError::OverlappingPeers {
                first: *other,
                second: *subnet,
            });
        }
        wanted.push((*subnet, *gateway));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(subnet: &str, address: &str) -> (Subnet, IpAddr) {
        (subnet.parse().unwrap(), address.parse().unwrap())
    }

    #[test]
    fn overlapping_duplicate_and_ipv6_peers_are_refused() {
        let error = check_peers(&[
            peer("10.88.0.0/16", "10.0.0.2"),
            peer("10.88.3.0/24", "10.0.0.3"),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "peer subnets 10.88.0.0/16 and 10.88.3.0/24 overlap"
        );
        assert!(
            check_peers(&[
                peer("10.88.1.0/24", "10.0.0.2"),
                peer("10.88.1.0/24", "10.0.0.3")
            ])
            .is_err()
        );
        let error = check_peers(&[peer("10.88.1.0/24", "fd00::1")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "node address fd00::1 for subnet 10.88.1.0/24 is not IPv4"
        );
        let wanted = check_peers(&[
            peer("10.88.1.0/24", "10.0.0.2"),
            peer("10.88.2.0/24", "10.0.0.3"),
        ])
        .unwrap();
        assert_eq!(wanted.len(), 2);
    }
}
