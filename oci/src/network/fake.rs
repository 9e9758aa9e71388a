//! An in-memory `ContainerNetwork` for the daemon's scheduler tests and simulator:
//! the same validation and rules as `NodeNetwork` (container addresses only, one
//! address per container, idempotent detach, owned routes planned the same way),
//! but nothing touches the host. `fail_next` makes the next call fail.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, MutexGuard};

use shoal_crdt::Subnet;

use super::names::ContainerNames;
use super::node::is_container_address;
use super::routes::{self, Route};
use super::{Attachment, ContainerNetwork, NetworkError, RouteReport};

/// What the fake network was asked to do, in order, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeNetworkCall {
    Attach(String, Ipv4Addr),
    Detach(String),
    SyncRoutes(Vec<(Subnet, IpAddr)>),
}

#[derive(Debug, Default)]
struct FakeState {
    attachments: BTreeMap<String, Ipv4Addr>,
    routes: BTreeMap<Subnet, Ipv4Addr>,
    calls: Vec<FakeNetworkCall>,
    failures: VecDeque<String>,
}

#[derive(Debug)]
pub struct FakeNetwork {
    subnet: Subnet,
    netns_prefix: String,
    state: Mutex<FakeState>,
}

impl FakeNetwork {
    pub fn new(subnet: Subnet, netns_prefix: &str) -> Self {
        Self {
            subnet,
            netns_prefix: netns_prefix.to_owned(),
            state: Mutex::new(FakeState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next attach/detach/route sync fail with this message.
    pub fn fail_next(&self, message: &str) {
        self.lock().failures.push_back(message.to_owned());
    }

    pub fn calls(&self) -> Vec<FakeNetworkCall> {
        self.lock().calls.clone()
    }

    /// The attached containers and their addresses.
    pub fn attachments(&self) -> BTreeMap<String, Ipv4Addr> {
        self.lock().attachments.clone()
    }

    /// The routes a real node would hold: peer subnet -> node address.
    pub fn routes(&self) -> BTreeMap<Subnet, Ipv4Addr> {
        self.lock().routes.clone()
    }

    fn record(state: &mut FakeState, call: FakeNetworkCall) -> Result<(), NetworkError> {
        state.calls.push(call);
        match state.failures.pop_front() {
            Some(message) => Err(NetworkError::Injected { message }),
            None => Ok(()),
        }
    }
}

impl ContainerNetwork for FakeNetwork {
    fn attach(&self, container_id: &str, address: Ipv4Addr) -> Result<Attachment, NetworkError> {
        let mut state = self.lock();
        Self::record(
            &mut state,
            FakeNetworkCall::Attach(container_id.to_owned(), address),
        )?;
        let names = ContainerNames::new(&self.netns_prefix, container_id)?;
        if !is_container_address(self.subnet, address) {
            return Err(NetworkError::AddressOutsideSubnet {
                ip: address,
                subnet: self.subnet,
            });
        }
        let created = match state.attachments.get(container_id) {
            Some(existing) if *existing == address => false,
            Some(existing) => {
                return Err(NetworkError::AlreadyAttached {
                    id: container_id.to_owned(),
                    existing: format!("{existing}/{}", self.subnet.prefix_len),
                    requested: address,
                });
            }
            None => {
                state.attachments.insert(container_id.to_owned(), address);
                true
            }
        };
        Ok(Attachment {
            netns_path: names.netns_path(),
            host_interface: names.host_interface,
            address,
            created,
        })
    }

    fn detach(&self, container_id: &str) -> Result<(), NetworkError> {
        let mut state = self.lock();
        Self::record(&mut state, FakeNetworkCall::Detach(container_id.to_owned()))?;
        ContainerNames::new(&self.netns_prefix, container_id)?;
        state.attachments.remove(container_id);
        Ok(())
    }

    fn attached(&self) -> Result<Vec<String>, NetworkError> {
        Ok(self.lock().attachments.keys().cloned().collect())
    }

    fn sync_routes(&self, peers: &[(Subnet, IpAddr)]) -> Result<RouteReport, NetworkError> {
        let mut state = self.lock();
        Self::record(&mut state, FakeNetworkCall::SyncRoutes(peers.to_vec()))?;
        let wanted = routes::check_peers(peers)?;
        let present: Vec<Route> = state
            .routes
            .iter()
            .map(|(subnet, gateway)| Route {
                dst: subnet.to_string(),
                gateway: Some(gateway.to_string()),
            })
            .collect();
        let plan = routes::plan(&present, &wanted);
        let mut report = RouteReport {
            unchanged: plan.unchanged,
            ..RouteReport::default()
        };
        for route in plan.remove {
            state
                .routes
                .retain(|subnet, _| subnet.to_string() != route.dst);
            report.removed.push(route.dst);
        }
        for (subnet, gateway) in plan.add {
            state.routes.insert(subnet, gateway);
            report.added.push(subnet);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> FakeNetwork {
        FakeNetwork::new("10.88.1.0/24".parse().unwrap(), "shoal.n1.")
    }

    fn address(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn attach_follows_the_rules_of_the_real_network() {
        let network = network();
        let first = network.attach("web-1", address("10.88.1.2")).unwrap();
        assert!(first.created);
        assert_eq!(first.netns_path.to_str(), Some("/run/netns/shoal.n1.web-1"));
        assert!(
            !network
                .attach("web-1", address("10.88.1.2"))
                .unwrap()
                .created
        );
        let error = network.attach("web-1", address("10.88.1.3")).unwrap_err();
        assert!(
            matches!(error, NetworkError::AlreadyAttached { .. }),
            "{error}"
        );
        let error = network.attach("web-2", address("10.88.1.1")).unwrap_err();
        assert!(
            matches!(error, NetworkError::AddressOutsideSubnet { .. }),
            "{error}"
        );
        assert!(network.attach("a/b", address("10.88.1.4")).is_err());
        assert_eq!(network.attached().unwrap(), vec!["web-1".to_owned()]);
        network.detach("web-1").unwrap();
        network.detach("web-1").unwrap();
        assert!(network.attached().unwrap().is_empty());
    }

    #[test]
    fn routes_are_planned_like_the_real_ones_and_failures_can_be_injected() {
        let network = network();
        let two: Subnet = "10.88.2.0/24".parse().unwrap();
        let peers = [(two, IpAddr::V4(address("10.89.0.12")))];
        assert_eq!(network.sync_routes(&peers).unwrap().added, vec![two]);
        assert_eq!(network.sync_routes(&peers).unwrap().unchanged, 1);
        let moved = [(two, IpAddr::V4(address("10.89.0.99")))];
        let report = network.sync_routes(&moved).unwrap();
        assert_eq!(
            (report.added, report.removed),
            (vec![two], vec![two.to_string()])
        );
        assert_eq!(network.routes().get(&two), Some(&address("10.89.0.99")));

        network.fail_next("boom");
        let error = network.sync_routes(&[]).unwrap_err();
        assert_eq!(error.to_string(), "injected failure: boom");
        assert_eq!(network.routes().len(), 1);
        assert_eq!(network.sync_routes(&[]).unwrap().removed.len(), 1);
        assert_eq!(network.calls().len(), 5);
    }
}
