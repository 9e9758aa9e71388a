//! `NodeNetwork`: the node bridge (created idempotently, with the subnet's gateway
//! address, IPv4 forwarding on) and the per-container attach/detach of a network
//! namespace with a veth into that bridge.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use shoal_crdt::Subnet;

use super::NetworkError;
use super::command::ip;
use super::interface::{find_link, ipv4_addresses};
use super::names::{
    ContainerNames, NETNS_DIR, check_container_id, check_interface_name, check_netns_prefix,
};

/// The container's end of its veth, inside its namespace.
pub const CONTAINER_INTERFACE: &str = "eth0";

/// Per-namespace IPv4 forwarding switch (read in the calling thread's namespace).
const IP_FORWARD_PATH: &str = "/proc/sys/net/ipv4/ip_forward";

/// One node's container network: a bridge holding `subnet`'s gateway address, and
/// container namespaces named `<netns_prefix><container id>` under `NETNS_DIR`.
///
/// Every method acts on the network namespace of the calling thread, so a node
/// that is a namespace runs them from a thread that entered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    bridge: String,
    subnet: Subnet,
    netns_prefix: String,
}

/// A container attached to the node network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The namespace file: `ContainerConfig::netns_path`.
    pub netns_path: PathBuf,
    /// Host end of the veth, a port of the bridge.
    pub host_interface: String,
    pub address: Ipv4Addr,
    /// False when the container was already attached exactly like this.
    pub created: bool,
}

impl NodeNetwork {
    /// Makes the bridge exist, be up and hold exactly the subnet's gateway
    /// address (other IPv4 addresses on it are removed: a node whose subnet
    /// changed moves its bridge), and turns IPv4 forwarding on. Idempotent.
    ///
    /// `netns_prefix` must be unique per node on a host and not a prefix of
    /// another node's, e.g. `shoal.<node id>.` (node ids hold no dots).
    pub fn ensure(bridge: &str, subnet: Subnet, netns_prefix: &str) -> Result<Self, NetworkError> {
        check_interface_name(bridge)?;
        check_netns_prefix(netns_prefix)?;
        match find_link(None, bridge)? {
            Some(link) if link.kind() == Some("bridge") => {}
            Some(link) => {
                return Err(NetworkError::NotABridge {
                    name: bridge.to_owned(),
                    kind: link.kind().map(str::to_owned),
                });
            }
            None => {
                ip(&["link", "add", "name", bridge, "type", "bridge"])?;
            }
        }
        let gateway = format!("{}/{}", subnet.gateway(), subnet.prefix_len);
        for address in ipv4_addresses(None, bridge)? {
            if address.cidr() != gateway {
                ip(&["addr", "del", &address.cidr(), "dev", bridge])?;
            }
        }
        ip(&["addr", "replace", &gateway, "dev", bridge])?;
        ip(&["link", "set", "dev", bridge, "up"])?;
        enable_forwarding()?;
        Ok(Self {
            bridge: bridge.to_owned(),
            subnet,
            netns_prefix: netns_prefix.to_owned(),
        })
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The namespace path a container with this id gets (whether attached or not).
    pub fn netns_path(&self, container_id: &str) -> Result<PathBuf, NetworkError> {
        Ok(ContainerNames::new(&self.netns_prefix, container_id)?.netns_path())
    }

    /// Gives the container a network namespace with loopback up and `eth0`
    /// holding `address/prefix`, a default route via the gateway, and the host
    /// end of the veth in the bridge.
    ///
    /// Attaching an attached container again with the same address returns the
    /// same namespace (`created: false`); with another address it is refused
    /// and nothing changes. A half-made attachment (a crash in the middle) is
    /// removed and made again; a container still running in the old namespace
    /// keeps it and must be restarted to use the new one. A failure removes what
    /// this call made.
    pub fn attach(
        &self,
        container_id: &str,
        address: Ipv4Addr,
    ) -> Result<Attachment, NetworkError> {
        let names = ContainerNames::new(&self.netns_prefix, container_id)?;
        if !is_container_address(self.subnet, address) {
            return Err(NetworkError::AddressOutsideSubnet {
                ip: address,
                subnet: self.subnet,
            });
        }
        let cidr = format!("{address}/{}", self.subnet.prefix_len);
        let attachment = Attachment {
            netns_path: names.netns_path(),
            host_interface: names.host_interface.clone(),
            address,
            created: true,
        };
        if attachment.netns_path.exists() {
            match self.inspect(&names, &cidr)? {
                Existing::Complete => {
                    return Ok(Attachment {
                        created: false,
                        ..attachment
                    });
                }
                Existing::OtherAddress(existing) => {
                    return Err(NetworkError::AlreadyAttached {
                        id: container_id.to_owned(),
                        existing,
                        requested: address,
                    });
                }
                Existing::Incomplete => self.detach(container_id)?,
            }
        }
        if let Some(link) = find_link(None, &names.host_interface)? {
            if link.ifalias.as_deref() == Some(names.alias.as_str()) {
                // Ours, left by a namespace that is gone from NETNS_DIR.
                ip(&["link", "del", "dev", &names.host_interface])?;
            } else {
                return Err(NetworkError::InterfaceTaken {
                    name: names.host_interface,
                    id: container_id.to_owned(),
                    alias: link.ifalias,
                });
            }
        }
        ip(&["netns", "add", &names.netns])?;
        if let Err(error) = self.wire(&names, &cidr) {
            if let Err(cleanup) = self.detach(container_id) {
                tracing::warn!(container_id, %cleanup, "cannot undo a failed attach");
            }
            return Err(error);
        }
        Ok(attachment)
    }

    /// Removes the container's veth and namespace. Idempotent: detaching a
    /// container that is not attached does nothing. A veth with the container's
    /// host-side name that is not marked as its own is left alone.
    ///
    /// Stop the container first: a namespace still in use by a process lives on
    /// (without its name and veth) until that process exits.
    pub fn detach(&self, container_id: &str) -> Result<(), NetworkError> {
        let names = ContainerNames::new(&self.netns_prefix, container_id)?;
        if let Some(link) = find_link(None, &names.host_interface)?
            && link.ifalias.as_deref() == Some(names.alias.as_str())
        {
            ip(&["link", "del", "dev", &names.host_interface])?;
        }
        if names.netns_path().exists() {
            ip(&["netns", "delete", &names.netns])?;
        }
        Ok(())
    }

    /// Ids of the containers that have a namespace of this node, sorted: what a
    /// restarted daemon compares with what it runs, to detach the leftovers.
    pub fn attached(&self) -> Result<Vec<String>, NetworkError> {
        let directory = Path::new(NETNS_DIR);
        let entries = match std::fs::read_dir(directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(NetworkError::NetnsDirectory {
                    path: directory.to_owned(),
                    source,
                });
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| NetworkError::NetnsDirectory {
                path: directory.to_owned(),
                source,
            })?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|name| name.strip_prefix(&self.netns_prefix))
            else {
                continue;
            };
            if check_container_id(id).is_ok() {
                ids.push(id.to_owned());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The steps after `ip netns add`; any failure leaves the rest undone.
    fn wire(&self, names: &ContainerNames, cidr: &str) -> Result<(), NetworkError> {
        let netns = names.netns.as_str();
        let host = names.host_interface.as_str();
        let gateway = self.subnet.gateway().to_string();
        ip(&["-n", netns, "link", "set", "dev", "lo", "up"])?;
        ip(&[
            "link",
            "add",
            "name",
            host,
            "type",
            "veth",
            "peer",
            "name",
            CONTAINER_INTERFACE,
            "netns",
            netns,
        ])?;
        ip(&["link", "set", "dev", host, "alias", &names.alias])?;
        ip(&["link", "set", "dev", host, "master", &self.bridge, "up"])?;
        // Hairpin: a container reaching its own published port is DNAT-ed back out the
        // port it came in on, which a bridge does only in hairpin mode (with br_netfilter).
        ip(&[
            "link",
            "set",
            "dev",
            host,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        ip(&["-n", netns, "addr", "add", cidr, "dev", CONTAINER_INTERFACE])?;
        ip(&["-n", netns, "link", "set", "dev", CONTAINER_INTERFACE, "up"])?;
        // The address may have been a removed container's a moment ago: the node's
        // neighbour entry for it would still name that container's MAC, and the node would
        // not reach the new one (probes, forwarded ports) until the entry went stale.
        let address = cidr.split('/').next().unwrap_or(cidr);
        ip(&["neigh", "flush", "to", address, "dev", &self.bridge])?;
        ip(&[
            "-n",
            netns,
            "route",
            "add",
            "default",
            "via",
            &gateway,
            "dev",
            CONTAINER_INTERFACE,
        ])?;
        Ok(())
    }

    /// How far an existing namespace of this container got.
    fn inspect(&self, names: &ContainerNames, cidr: &str) -> Result<Existing, NetworkError> {
        let netns = Some(names.netns.as_str());
        let Some(container_link) = find_link(netns, CONTAINER_INTERFACE)? else {
            return Ok(Existing::Incomplete);
        };
        let addresses = ipv4_addresses(netns, CONTAINER_INTERFACE)?;
        if let Some(other) = addresses.iter().find(|address| address.cidr() != cidr) {
            return Ok(Existing::OtherAddress(other.cidr()));
        }
        let host_ready = find_link(None, &names.host_interface)?.is_some_and(|link| {
            link.ifalias.as_deref() == Some(names.alias.as_str())
                && link.master.as_deref() == Some(self.bridge.as_str())
                && link.is_up()
        });
        let default_routes: Vec<serde_json::Value> =
            super::command::ip_json(&["-n", &names.netns, "route", "show", "default"])?;
        let complete = host_ready
            && container_link.is_up()
            && addresses.len() == 1
            && !default_routes.is_empty();
        Ok(if complete {
            Existing::Complete
        } else {
            Existing::Incomplete
        })
    }
}

enum Existing {
    Complete,
    /// `eth0` holds another address: the container is attached differently.
    OtherAddress(String),
    Incomplete,
}

/// A host address of the subnet other than the gateway.
pub(crate) fn is_container_address(subnet: Subnet, address: Ipv4Addr) -> bool {
    let network = u32::from(subnet.addr);
    let broadcast = network | (u32::MAX >> subnet.prefix_len);
    let value = u32::from(address);
    subnet.contains(address)
        && value != network
        && value != broadcast
        && address != subnet.gateway()
}

/// Turns on IPv4 forwarding in the calling thread's namespace, so the node
/// routes between its bridge and its link to the other nodes.
fn enable_forwarding() -> Result<(), NetworkError> {
    let path = Path::new(IP_FORWARD_PATH);
    let current = std::fs::read_to_string(path).map_err(|source| NetworkError::Sysctl {
        action: "read",
        path: path.to_owned(),
        source,
    })?;
    if current.trim() != "1" {
        std::fs::write(path, "1\n").map_err(|source| NetworkError::Sysctl {
            action: "write",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(subnet: &str, address: &str, expected: bool) {
        let subnet: Subnet = subnet.parse().unwrap();
        let address: Ipv4Addr = address.parse().unwrap();
        assert_eq!(
            is_container_address(subnet, address),
            expected,
            "{address} in {subnet}"
        );
    }

    #[test]
    fn container_addresses_exclude_network_gateway_and_broadcast() {
        check("10.88.1.0/24", "10.88.1.2", true);
        check("10.88.1.0/24", "10.88.1.254", true);
        check("10.88.1.0/24", "10.88.1.0", false);
        check("10.88.1.0/24", "10.88.1.1", false);
        check("10.88.1.0/24", "10.88.1.255", false);
        check("10.88.1.0/24", "10.88.2.2", false);
        check("10.88.0.0/30", "10.88.0.2", true);
        check("10.88.0.0/30", "10.88.0.3", false);
    }
}
