//! A simulated machine's container runtime: `shoal_oci::FakeRuntime`, plus a switch that
//! makes the next container create fail. `FakeRuntime::fail_next` alone fails whichever call
//! comes next, and the executor stops and deletes the containers of one pass on parallel
//! threads, so which removal it hit would depend on thread timing; creates run one after
//! another, so failing the next create keeps a seed's run deterministic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_oci::{
    ContainerConfig, ContainerState, ContainerStatus, ExecOutcome, ExitStatus, FakeRuntime,
    Runtime, RuntimeError,
};

use crate::schedule::restarts::SPEC_ANNOTATION;

#[derive(Default)]
pub(crate) struct SimRuntime {
    fake: FakeRuntime,
    fail_next_create: AtomicBool,
}

impl SimRuntime {
    pub(crate) fn new() -> Arc<SimRuntime> {
        Arc::new(SimRuntime::default())
    }

    /// The next `create` fails as a runtime error would (disk full, cgroup refused).
    pub(crate) fn fail_next_create(&self) {
        self.fail_next_create.store(true, Ordering::SeqCst);
    }

    /// Ends a running container on its own, as its process exiting would.
    pub(crate) fn finish(&self, id: &str, exit: ExitStatus) -> Result<(), RuntimeError> {
        self.fake.finish(id, exit)
    }

    /// The machine lost power: what ran ends with an unknown status and stays.
    pub(crate) fn power_loss(&self) {
        self.fake.power_loss();
    }

    /// Every container with its status, by id.
    pub(crate) fn containers(&self) -> Vec<(String, ContainerStatus)> {
        self.fake
            .list()
            .into_iter()
            .filter_map(|id| {
                let status = self.fake.state(&id).ok()?.status;
                Some((id, status))
            })
            .collect()
    }

    /// Every container with its status and the spec digest written on it at create
    /// (`restarts::SPEC_ANNOTATION`), by id: what each one really runs.
    pub(crate) fn specs(&self) -> BTreeMap<String, (ContainerStatus, Option<String>)> {
        self.fake
            .list()
            .into_iter()
            .filter_map(|id| {
                let state = self.fake.state(&id).ok()?;
                let digest = state.annotations.get(SPEC_ANNOTATION).cloned();
                Some((id, (state.status, digest)))
            })
            .collect()
    }

    /// Whether it knows a container with this id, in any state.
    pub(crate) fn holds(&self, id: &str) -> bool {
        self.fake.state(id).is_ok()
    }

    /// The ids of the running containers.
    pub(crate) fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|(_, status)| *status == ContainerStatus::Running)
            .map(|(id, _)| id)
            .collect()
    }
}

impl Runtime for SimRuntime {
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        if self.fail_next_create.swap(false, Ordering::SeqCst) {
            self.fake
                .fail_next("injected by the simulator: no space left on device");
        }
        self.fake.create(config)
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.fake.start(id)
    }

    fn stop(&self, id: &str, grace_ms: u64) -> Result<ExitStatus, RuntimeError> {
        self.fake.stop(id, grace_ms)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.fake.delete(id)
    }

    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.fake.state(id)
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        timeout_ms: u64,
    ) -> Result<ExecOutcome, RuntimeError> {
        self.fake.exec(id, args, timeout_ms)
    }

    fn wait(&self, id: &str, timeout_ms: u64) -> Result<Option<ExitStatus>, RuntimeError> {
        self.fake.wait(id, timeout_ms)
    }

    fn list(&self) -> Vec<String> {
        self.fake.list()
    }
}
