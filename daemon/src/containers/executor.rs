//! The executor: carries out what a `Plan` says through the container runtime
//! (`shoal_oci::Runtime`), the container network (`ContainerNetwork`) and the images
//! (`Images`), and reports what happened. It decides nothing: which containers to touch and
//! in what order is the planner's and the pass's business.
//!
//! Every call blocks (libcontainer, `ip`, `nft`); the reconcile loop runs them on a
//! blocking thread. Stops of one pass run in parallel, each waiting up to `stop_grace_ms`.
//! The firewall (shoal's own nftables table) is replaced when the port plan changed, on the
//! first pass after startup (which repairs it from the state), and every
//! `FIREWALL_REAPPLY_PASSES` passes anyway, which puts the table back after someone
//! flushed the host's whole ruleset (a firewall reload).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use shoal_crdt::{ContainerRecord, Protocol, ServiceSpec, Subnet};
use shoal_oci::network::{
    ContainerNetwork, Firewall, FirewallRules, NetworkError, PortForward,
    Protocol as FirewallProtocol,
};
use shoal_oci::{ContainerConfig, Limits, PreparedImage, RootfsMode, Runtime, RuntimeError};

use super::images::{ImageProblem, Images};
use super::workload::{self, Workload, WorkloadProblem};
use crate::schedule::ports::PortPlan;
use crate::schedule::restarts::{SPEC_ANNOTATION, spec_digest};
use crate::schedule::{Observed, ObservedState, Outcome, Removal};

/// Why a container could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Image(#[from] ImageProblem),
    #[error("network of container {id}: {source}")]
    Network {
        id: String,
        #[source]
        source: NetworkError,
    },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Workload(#[from] WorkloadProblem),
}

/// Passes after which the firewall is applied again even when nothing changed.
pub const FIREWALL_REAPPLY_PASSES: u32 = 60;

/// The node's firewall and the name of the bridge its rules speak of.
struct NodeFirewall {
    firewall: Arc<dyn Firewall>,
    bridge: String,
    /// What was applied last (`None` until the first apply succeeded), and how many passes
    /// ago.
    applied: Mutex<(Option<FirewallRules>, u32)>,
}

/// The doing half of the reconcile loop.
pub struct Executor {
    runtime: Arc<dyn Runtime>,
    /// The node's bridge and container namespaces, when it has a subnet.
    network: Option<Arc<dyn ContainerNetwork>>,
    images: Arc<dyn Images>,
    stop_grace_ms: u64,
    firewall: Option<NodeFirewall>,
    /// Where named volumes live (`<state_dir>/volumes`).
    volumes_dir: Option<PathBuf>,
}

impl Executor {
    pub fn new(
        runtime: Arc<dyn Runtime>,
        network: Option<Arc<dyn ContainerNetwork>>,
        images: Arc<dyn Images>,
        stop_grace_ms: u64,
    ) -> Executor {
        Executor {
            runtime,
            network,
            images,
            stop_grace_ms,
            firewall: None,
            volumes_dir: None,
        }
    }

    /// Publishes ports and masquerades egress through `firewall`, whose rules name the
    /// node bridge `bridge`.
    pub fn with_firewall(mut self, firewall: Arc<dyn Firewall>, bridge: String) -> Executor {
        self.firewall = Some(NodeFirewall {
            firewall,
            bridge,
            applied: Mutex::new((None, 0)),
        });
        self
    }

    /// Keeps named volumes under `dir`.
    pub fn with_volumes_dir(mut self, dir: PathBuf) -> Executor {
        self.volumes_dir = Some(dir);
        self
    }

    /// Where named volumes live, if this node keeps any.
    pub fn volumes_dir(&self) -> Option<&std::path::Path> {
        self.volumes_dir.as_deref()
    }

    /// Reads env files, checks secrets and host paths, creates named volumes.
    pub fn prepare_workload(&self, spec: &ServiceSpec) -> Result<Workload, ExecError> {
        Ok(workload::prepare(spec, self.volumes_dir.as_deref())?)
    }

    /// The runtime it drives.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// What the runtime and the network hold now.
    pub fn observe(&self) -> Observed {
        let mut containers = std::collections::BTreeMap::new();
        let mut spec_digests = std::collections::BTreeMap::new();
        for id in self.runtime.list() {
            let observed = match self.runtime.state(&id) {
                Ok(state) => {
                    if let Some(digest) = state.annotations.get(SPEC_ANNOTATION) {
                        spec_digests.insert(id.clone(), digest.clone());
                    }
                    ObservedState::from(state.status)
                }
                Err(error) => ObservedState::Unreadable(error.to_string()),
            };
            containers.insert(id, observed);
        }
        let attachments = self
            .network
            .as_ref()
            .map(|network| match network.attached() {
                Ok(ids) => ids.into_iter().collect(),
                Err(error) => {
                    tracing::warn!(%error, "cannot list container namespaces");
                    Default::default()
                }
            });
        Observed {
            containers,
            spec_digests,
            attachments,
        }
    }

    /// Verifies and unpacks a service's image.
    pub fn prepare_image(&self, spec: &ServiceSpec) -> Result<PreparedImage, ExecError> {
        Ok(self.images.prepare(spec)?)
    }

    /// Stops, deletes and detaches every container of `removals`, in parallel.
    pub fn remove(&self, removals: &[Removal]) -> Vec<Outcome> {
        if let [removal] = removals {
            self.remove_one(removal);
        } else {
            std::thread::scope(|scope| {
                for removal in removals {
                    scope.spawn(move || self.remove_one(removal));
                }
            });
        }
        removals
            .iter()
            .map(|removal| Outcome::Removed {
                id: removal.id.clone(),
            })
            .collect()
    }

    fn remove_one(&self, removal: &Removal) {
        let id = removal.id.as_str();
        match &removal.record {
            Some(record) => {
                tracing::info!(container = %id, service = %record.service, "stopping a container no longer placed here")
            }
            None => tracing::info!(container = %id, "removing a container without a record"),
        }
        match self.runtime.stop(id, self.stop_grace_ms) {
            Ok(_) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => tracing::warn!(container = %id, %error, "cannot stop a container"),
        }
        match self.runtime.delete(id) {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => tracing::warn!(container = %id, %error, "cannot delete a container"),
        }
        if let Some(network) = &self.network
            && let Err(error) = network.detach(id)
        {
            tracing::warn!(container = %id, %error, "cannot detach a container's network");
        }
    }

    /// Deletes an ended container and starts it again from `spec`.
    pub fn restart(
        &self,
        record: &ContainerRecord,
        spec: &ServiceSpec,
        image: PreparedImage,
        workload: Workload,
    ) -> Result<(), ExecError> {
        let id = record.id.as_str();
        tracing::info!(container = %id, "restarting a container (restart policy)");
        // A running container is restarted because its health check found it unhealthy:
        // it gets its stop grace like any stop.
        if let Ok(state) = self.runtime.state(id)
            && state.status == shoal_oci::ContainerStatus::Running
        {
            match self.runtime.stop(id, self.stop_grace_ms) {
                Ok(_) | Err(RuntimeError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        match self.runtime.delete(id) {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        self.start(record, spec, image, workload)
    }

    /// Attaches the container's network, then creates and starts it. A failed start
    /// leaves no runtime container behind.
    pub fn start(
        &self,
        record: &ContainerRecord,
        spec: &ServiceSpec,
        image: PreparedImage,
        workload: Workload,
    ) -> Result<(), ExecError> {
        let netns_path = self.prepare_network(record)?;
        let config = ContainerConfig {
            id: record.id.as_str().to_string(),
            image,
            command: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: workload.env,
            limits: Limits {
                cpu_millis: Some(u64::from(spec.resources.cpu_millis)),
                memory_bytes: Some(spec.resources.memory_bytes),
                pids_max: Some(i64::from(spec.resources.pids_max)),
            },
            netns_path,
            rootfs_mode: RootfsMode::Auto,
            mounts: workload.mounts,
            annotations: [(SPEC_ANNOTATION.to_string(), spec_digest(spec))].into(),
        };
        let result = self
            .runtime
            .create(&config)
            .and_then(|()| self.runtime.start(&config.id));
        if let Err(error) = result {
            let _ = self.runtime.delete(&config.id);
            if let Some(network) = &self.network {
                let _ = network.detach(&config.id);
            }
            return Err(error.into());
        }
        tracing::info!(container = %config.id, service = %record.service, "container started");
        Ok(())
    }

    /// The container's network namespace with a veth into the node bridge holding its
    /// address. Without a node network or an address (a record made before the node had a
    /// subnet) the runtime gives it a fresh, empty namespace.
    fn prepare_network(&self, record: &ContainerRecord) -> Result<Option<PathBuf>, ExecError> {
        let (Some(network), Some(ip)) = (&self.network, record.ip) else {
            return Ok(None);
        };
        let id = record.id.as_str();
        let attachment = network
            .attach(id, ip)
            .map_err(|source| ExecError::Network {
                id: id.to_string(),
                source,
            })?;
        Ok(Some(attachment.netns_path))
    }

    /// Keeps the routes to other nodes' subnets, removes leftover namespaces and brings
    /// the firewall to `ports`.
    pub fn sync_network(
        &self,
        routes: Option<&[(Subnet, std::net::IpAddr)]>,
        leftovers: &[String],
        ports: Option<&PortPlan>,
    ) {
        let Some(network) = &self.network else {
            return;
        };
        if let (Some(node_firewall), Some(ports)) = (&self.firewall, ports) {
            node_firewall.sync(ports);
        }
        if let Some(routes) = routes
            && let Err(error) = network.sync_routes(routes)
        {
            tracing::warn!(%error, "cannot update the routes to other nodes' containers");
        }
        for id in leftovers {
            if let Err(error) = network.detach(id) {
                tracing::warn!(container = %id, %error, "cannot detach a leftover namespace");
            }
        }
    }
}

impl NodeFirewall {
    /// Applies the rules `ports` gives unless they are what was applied last.
    fn sync(&self, ports: &PortPlan) {
        let rules = FirewallRules {
            bridge: self.bridge.clone(),
            own_subnet: ports.own_subnet,
            cluster_subnets: ports.cluster_subnets.clone(),
            forwards: ports
                .forwards
                .iter()
                .map(|forward| PortForward {
                    host_ip: forward.mapping.host_ip,
                    host_port: forward.mapping.host_port,
                    protocol: match forward.mapping.protocol {
                        Protocol::Tcp => FirewallProtocol::Tcp,
                        Protocol::Udp => FirewallProtocol::Udp,
                    },
                    container_port: forward.mapping.container_port,
                    backends: forward.backends.clone(),
                    masquerade: forward.mesh,
                })
                .collect(),
        };
        let mut applied = self
            .applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, passes) = &mut *applied;
        *passes = passes.saturating_add(1);
        if last.as_ref() == Some(&rules) && *passes < FIREWALL_REAPPLY_PASSES {
            return;
        }
        match self.firewall.apply(&rules) {
            Ok(()) => {
                if last.as_ref() != Some(&rules) {
                    // Each forward with its backends: which replica got new connections
                    // from when is what a failed request to a published port asks.
                    let published = rules
                        .forwards
                        .iter()
                        .map(|forward| {
                            let backends: Vec<String> =
                                forward.backends.iter().map(|ip| ip.to_string()).collect();
                            format!("{forward} -> {}", backends.join(","))
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    tracing::info!(
                        forwards = rules.forwards.len(),
                        %published,
                        "firewall updated (published ports, egress)"
                    );
                }
                *last = Some(rules);
                *passes = 0;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot update the firewall; trying again next pass")
            }
        }
    }
}
