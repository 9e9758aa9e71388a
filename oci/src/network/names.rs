//! Names of everything this module creates: the container's network namespace,
//! the host end of its veth (derived from the container id, within IFNAMSIZ), the
//! alias that marks that veth as ours, and the route protocol that marks our routes.

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

use super::NetworkError;

/// Where `ip netns add` puts named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Host-side veth names start with this; the rest is a hash of the container id.
pub const HOST_INTERFACE_PREFIX: &str = "shv";

/// The `proto` number stamped on every route `routes::sync` installs, so it only
/// ever changes its own routes. Not in iproute2's `rt_protos` list of reserved numbers.
pub const ROUTE_PROTOCOL: u8 = 211;

/// Linux's IFNAMSIZ (16) minus the terminating NUL.
const INTERFACE_NAME_BYTES_MAX: usize = 15;
const CONTAINER_ID_BYTES_MAX: usize = 128;
const NETNS_PREFIX_BYTES_MAX: usize = 64;
/// The alias (`ifalias`) on a host-side veth: this, then the container id.
const ALIAS_PREFIX: &str = "shoal:";

/// The network names of one container on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerNames {
    /// Name of the container's network namespace (`ip netns`).
    pub netns: String,
    /// Host end of the veth, in the node's namespace, enslaved to the bridge.
    pub host_interface: String,
    /// The alias set on the host end, naming the container that owns it.
    pub alias: String,
}

impl ContainerNames {
    pub(crate) fn new(netns_prefix: &str, container_id: &str) -> Result<Self, NetworkError> {
        check_container_id(container_id)?;
        let hash = hex::encode(Sha256::digest(container_id.as_bytes()));
        let hash_len = INTERFACE_NAME_BYTES_MAX - HOST_INTERFACE_PREFIX.len();
        let host_interface = format!("{HOST_INTERFACE_PREFIX}{}", &hash[..hash_len]);
        debug_assert!(host_interface.len() == INTERFACE_NAME_BYTES_MAX);
        Ok(Self {
            netns: format!("{netns_prefix}{container_id}"),
            host_interface,
            alias: format!("{ALIAS_PREFIX}{container_id}"),
        })
    }

    pub(crate) fn netns_path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.netns)
    }
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-')
}

/// Same rule as the cluster state's `ContainerId`; checked again here because a
/// container id becomes part of a file name under `NETNS_DIR`.
pub(crate) fn check_container_id(id: &str) -> Result<(), NetworkError> {
    let valid = (1..=CONTAINER_ID_BYTES_MAX).contains(&id.len())
        && id.bytes().all(is_name_byte)
        && !id.starts_with(['-', '.']);
    if valid {
        Ok(())
    } else {
        Err(NetworkError::ContainerId { id: id.to_owned() })
    }
}

pub(crate) fn check_netns_prefix(prefix: &str) -> Result<(), NetworkError> {
    let valid = (1..=NETNS_PREFIX_BYTES_MAX).contains(&prefix.len())
        && prefix.bytes().all(is_name_byte)
        && !prefix.starts_with(['-', '.']);
    if valid {
        Ok(())
    } else {
        Err(NetworkError::NetnsPrefix {
            prefix: prefix.to_owned(),
        })
    }
}

pub(crate) fn check_interface_name(name: &str) -> Result<(), NetworkError> {
    let valid = (1..=INTERFACE_NAME_BYTES_MAX).contains(&name.len())
        && name.bytes().all(is_name_byte)
        && name != "."
        && name != "..";
    if valid {
        Ok(())
    } else {
        Err(NetworkError::InterfaceName {
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_ifnamsiz_and_differ_per_container() {
        let first = ContainerNames::new("shoal-", "web-1").unwrap();
        let second = ContainerNames::new("shoal-", "web-2").unwrap();
        let long = ContainerNames::new("shoal-", &"a".repeat(128)).unwrap();
        for names in [&first, &second, &long] {
            assert_eq!(names.host_interface.len(), 15);
            assert!(names.host_interface.starts_with(HOST_INTERFACE_PREFIX));
            check_interface_name(&names.host_interface).unwrap();
        }
        assert_ne!(first.host_interface, second.host_interface);
        assert_eq!(first.netns, "shoal-web-1");
        assert_eq!(first.alias, "shoal:web-1");
        assert_eq!(first.netns_path(), PathBuf::from("/run/netns/shoal-web-1"));
        // Derived, not random: the same id always gets the same name.
        assert_eq!(first, ContainerNames::new("shoal-", "web-1").unwrap());
    }

    fn check(name_ok: fn(&str) -> Result<(), NetworkError>, input: &str, ok: bool) {
        assert_eq!(name_ok(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn names_are_validated() {
        check(check_container_id, "web-1.n1_x", true);
        check(check_container_id, &"a".repeat(128), true);
        check(check_container_id, &"a".repeat(129), false);
        check(check_container_id, "", false);
        check(check_container_id, ".x", false);
        check(check_container_id, "-x", false);
        check(check_container_id, "a/b", false);
        check(check_container_id, "a b", false);
        check(check_netns_prefix, "shoal-n1-", true);
        check(check_netns_prefix, "", false);
        check(check_netns_prefix, "a/", false);
        check(check_interface_name, "shoal0", true);
        check(check_interface_name, "br.0-x_y", true);
        check(check_interface_name, &"b".repeat(15), true);
        check(check_interface_name, &"b".repeat(16), false);
        check(check_interface_name, "", false);
        check(check_interface_name, "a:b", false);
        check(check_interface_name, "a/b", false);
        check(check_interface_name, "..", false);
    }
}
