//! The executor: carries out what a `Plan` says through the container runtime
//! (`shoal_oci::Runtime`), the container network (`ContainerNetwork`) and the images
//! (`Images`), and reports what happened. It decides nothing: which containers to touch and
//! in what order is the planner's and the pass's business.
//!
//! Every call blocks (libcontainer, `ip`); the reconcile loop runs them on a blocking
//! thread. Stops of one pass run in parallel, each waiting up to `stop_grace_ms`.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_crdt::{ContainerRecord, ServiceSpec, Subnet};
use shoal_oci::network::{ContainerNetwork, NetworkError};
use shoal_oci::{ContainerConfig, Limits, PreparedImage, RootfsMode, Runtime, RuntimeError};

use super::images::{ImageProblem, Images};
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
}

/// The doing half of the reconcile loop.
pub struct Executor {
    runtime: Arc<dyn Runtime>,
    /// The node's bridge and container namespaces, when it has a subnet.
    network: Option<Arc<dyn ContainerNetwork>>,
    images: Arc<dyn Images>,
    stop_grace_ms: u64,
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
        }
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
    ) -> Result<(), ExecError> {
        let id = record.id.as_str();
        tracing::info!(container = %id, "restarting a container (restart policy)");
        match self.runtime.delete(id) {
            Ok(()) | Err(RuntimeError::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        self.start(record, spec, image)
    }

    /// Attaches the container's network, then creates and starts it. A failed start
    /// leaves no runtime container behind.
    pub fn start(
        &self,
        record: &ContainerRecord,
        spec: &ServiceSpec,
        image: PreparedImage,
    ) -> Result<(), ExecError> {
        let netns_path = self.prepare_network(record)?;
        let config = ContainerConfig {
            id: record.id.as_str().to_string(),
            image,
            command: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            limits: Limits {
                cpu_millis: Some(u64::from(spec.resources.cpu_millis)),
                memory_bytes: Some(spec.resources.memory_bytes),
                pids_max: Some(i64::from(spec.resources.pids_max)),
            },
            netns_path,
            rootfs_mode: RootfsMode::Auto,
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

    /// Keeps the routes to other nodes' subnets and removes leftover namespaces.
    pub fn sync_network(
        &self,
        routes: Option<&[(Subnet, std::net::IpAddr)]>,
        leftovers: &[String],
    ) {
        let Some(network) = &self.network else {
            return;
        };
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
