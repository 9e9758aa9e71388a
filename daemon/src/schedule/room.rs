//! Room on a node: the one notion of "does one more container fit" that placement and the
//! planner share. A `Reserved` sums what some containers reserve (cpu, memory, count);
//! `fits` checks one more against a node's advertised capacity and the per-node cap.
//! Placement fills a `Reserved` per node as it deals replicas; the planner fills one from
//! this node's kept records before it starts anything, so the two cannot disagree about
//! whether a replica fits. Published host ports are room too: a node listens on one
//! (address, port, protocol) for one container at most.

use shoal_crdt::{Capacity, HostPort, Resources, ServiceName};

/// Containers one node runs at most, whatever its capacity.
pub const CONTAINERS_PER_NODE_MAX: u32 = 256;

/// Who holds a host port on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortHolder {
    Service(ServiceName),
    /// The node's own sync endpoint (UDP): no service may publish it.
    Sync,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortHolder::Service(name) => write!(f, "service {name}"),
            PortHolder::Sync => f.write_str("shoal's sync endpoint"),
        }
    }
}

/// What a set of containers reserves on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub containers: u32,
    /// Host ports taken on the node, with who holds each.
    pub ports: Vec<(HostPort, PortHolder)>,
}

impl Reserved {
    /// Whether one more container with `resources` fits in `capacity` on top of this.
    pub fn fits(&self, capacity: &Capacity, resources: &Resources) -> bool {
        self.containers < CONTAINERS_PER_NODE_MAX
            && self
                .cpu_millis
                .saturating_add(u64::from(resources.cpu_millis))
                <= u64::from(capacity.cpu_millis)
            && self.memory_bytes.saturating_add(resources.memory_bytes) <= capacity.memory_bytes
    }

    /// The first of `ports` the node already hands out, with the service holding it.
    pub fn port_taken(&self, ports: &[HostPort]) -> Option<(HostPort, &PortHolder)> {
        ports.iter().find_map(|port| {
            self.ports
                .iter()
                .find(|(taken, _)| taken.collides(port))
                .map(|(_, holder)| (*port, holder))
        })
    }

    /// Takes `ports` for `service`.
    pub fn take_ports(&mut self, ports: &[HostPort], service: &ServiceName) {
        self.ports.extend(
            ports
                .iter()
                .map(|port| (*port, PortHolder::Service(service.clone()))),
        );
    }

    /// A room whose node's sync endpoint listens on UDP `sync_port` (on every address).
    pub fn with_sync_port(sync_port: Option<u16>) -> Reserved {
        let ports = sync_port
            .map(|port| {
                let key = HostPort {
                    ip: None,
                    port,
                    protocol: shoal_crdt::Protocol::Udp,
                };
                (key, PortHolder::Sync)
            })
            .into_iter()
            .collect();
        Reserved {
            ports,
            ..Reserved::default()
        }
    }

    /// Adds one container with `resources`.
    pub fn add(&mut self, resources: &Resources) {
        self.cpu_millis = self
            .cpu_millis
            .saturating_add(u64::from(resources.cpu_millis));
        self.memory_bytes = self.memory_bytes.saturating_add(resources.memory_bytes);
        self.containers = self.containers.saturating_add(1);
    }

    /// Adds one container whose service is gone: it still counts, but reserves nothing.
    pub fn add_unknown(&mut self) {
        self.containers = self.containers.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(cpu_millis: u32, memory_bytes: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
            pids_max: 64,
        }
    }

    #[test]
    fn room_is_capacity_minus_what_is_reserved() {
        let capacity = Capacity {
            cpu_millis: 1000,
            memory_bytes: 1000,
        };
        let mut reserved = Reserved::default();
        assert!(reserved.fits(&capacity, &resources(1000, 1000)));
        assert!(!reserved.fits(&capacity, &resources(1001, 1)));
        reserved.add(&resources(600, 100));
        assert!(reserved.fits(&capacity, &resources(400, 900)));
        assert!(!reserved.fits(&capacity, &resources(401, 1)));
        assert!(!reserved.fits(&capacity, &resources(1, 901)));
        reserved.add_unknown();
        assert_eq!(reserved.containers, 2);
        assert_eq!(reserved.cpu_millis, 600);
    }

    #[test]
    fn the_container_cap_holds_whatever_the_capacity() {
        let capacity = Capacity {
            cpu_millis: u32::MAX,
            memory_bytes: u64::MAX,
        };
        let reserved = Reserved {
            containers: CONTAINERS_PER_NODE_MAX,
            ..Reserved::default()
        };
        assert!(!reserved.fits(&capacity, &resources(0, 0)));
    }
}
