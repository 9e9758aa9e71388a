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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct Route {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
}

/// What `sync` has to do to go from the owned routes present to the wanted ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub remove: Vec<Route>,
    pub add: Vec<(Subnet, Ipv4Addr)>,
    pub unchanged: usize,
}

/// Removes every present route that is not wanted exactly (destination and
/// gateway), adds every wanted one not present. Pure, so the fake shares it.
pub(crate) fn plan(present: &[Route], wanted: &[(Subnet, Ipv4Addr)]) -> Plan {
    let mut plan = Plan::default();
    let mut kept = BTreeSet::new();
    for route in present {
        let is_wanted = wanted.iter().any(|(subnet, gateway)| {
            route.dst == subnet.to_string()
                && route.gateway.as_deref() == Some(gateway.to_string().as_str())
        });
        if is_wanted && kept.insert(route.dst.clone()) {
            plan.unchanged += 1;
        } else {
            plan.remove.push(route.clone());
        }
    }
    plan.add = wanted
        .iter()
        .filter(|(subnet, _)| !kept.contains(&subnet.to_string()))
        .copied()
        .collect();
    plan
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
    let present: Vec<Route> = ip_json(&["route", "show", "proto", &protocol])?;
    let plan = plan(&present, &wanted);
    let mut report = RouteReport {
        unchanged: plan.unchanged,
        ..RouteReport::default()
    };
    for route in plan.remove {
        let mut args = vec!["route", "del", route.dst.as_str()];
        if let Some(gateway) = &route.gateway {
            args.extend(["via", gateway.as_str()]);
        }
        args.extend(["proto", protocol.as_str()]);
        ip(&args)?;
        report.removed.push(route.dst.clone());
    }
    for (subnet, gateway) in plan.add {
        let destination = subnet.to_string();
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
        report.added.push(subnet);
    }
    Ok(report)
}

/// The peers as IPv4 routes, after checking that no two subnets overlap.
pub(crate) fn check_peers(
    peers: &[(Subnet, IpAddr)],
) -> Result<Vec<(Subnet, Ipv4Addr)>, NetworkError> {
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

    fn route(dst: &str, gateway: &str) -> Route {
        Route {
            dst: dst.to_owned(),
            gateway: Some(gateway.to_owned()),
        }
    }

    #[test]
    fn plan_keeps_exact_matches_replaces_moved_gateways_and_removes_the_rest() {
        let wanted = check_peers(&[
            peer("10.88.1.0/24", "10.0.0.1"),
            peer("10.88.2.0/24", "10.0.0.2"),
            peer("10.88.3.0/24", "10.0.0.3"),
        ])
        .unwrap();
        let present = [
            route("10.88.1.0/24", "10.0.0.1"),
            route("10.88.2.0/24", "10.0.0.9"),
            route("10.88.4.0/24", "10.0.0.4"),
            Route {
                dst: "default".to_owned(),
                gateway: None,
            },
        ];
        let plan = plan(&present, &wanted);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.remove, present[1..].to_vec());
        assert_eq!(plan.add, wanted[1..].to_vec());
        assert_eq!(super::plan(&[], &[]), Plan::default());
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
