//! An in-memory `Runtime` for the daemon's scheduler tests and simulator: it keeps the same
//! state machine as the real runtime (created -> running -> stopped, delete removes) and
//! enforces the same rules, but runs nothing. The test decides when a container ends with
//! `finish`, and can make the next operations fail with `fail_next` to exercise error paths.
//! A command run in a container (`exec`) exits 0 unless `set_exec_outcome` says otherwise.
//! It keeps each container's mounts (`mounts_of`) and refuses the mount targets the real
//! runtime refuses; it does not look at bind sources on the host.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::bundle::{self, Mount};
use crate::runtime::{
    ContainerConfig, ContainerState, ContainerStatus, ExecOutcome, ExitStatus, Runtime,
    RuntimeError,
};

/// What the fake runtime was asked to do, in order, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    Create(String),
    Start(String),
    Stop(String),
    Delete(String),
    Exec(String, Vec<String>),
}

#[derive(Default)]
struct FakeState {
    containers: BTreeMap<String, ContainerStatus>,
    annotations: BTreeMap<String, BTreeMap<String, String>>,
    mounts: BTreeMap<String, Vec<Mount>>,
    calls: Vec<FakeCall>,
    failures: VecDeque<String>,
    exec_outcomes: BTreeMap<String, ExecOutcome>,
}

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<FakeState>,
    changed: Condvar,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How commands run in container `id` end from now on.
    pub fn set_exec_outcome(&self, id: &str, outcome: ExecOutcome) {
        self.lock().exec_outcomes.insert(id.to_owned(), outcome);
    }

    /// Ends a running container with `exit`, as if its process had exited.
    pub fn finish(&self, id: &str, exit: ExitStatus) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let status = state
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        if *status != ContainerStatus::Running {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "finish",
                status: *status,
            });
        }
        *status = ContainerStatus::Stopped(exit);
        self.changed.notify_all();
        Ok(())
    }

    /// The machine lost power: every container that has not ended ends with an unknown
    /// status, as the real runtime reports containers whose processes are gone after a
    /// reboot. The containers stay, as their state directories stay on disk.
    pub fn power_loss(&self) {
        let mut state = self.lock();
        for status in state.containers.values_mut() {
            if !matches!(status, ContainerStatus::Stopped(_)) {
                *status = ContainerStatus::Stopped(ExitStatus::Unknown);
            }
        }
        self.changed.notify_all();
    }

    /// Makes the next create/start/stop/delete fail with this message.
    pub fn fail_next(&self, message: &str) {
        self.lock().failures.push_back(message.to_owned());
    }

    /// The mounts a container was created with, while it exists.
    pub fn mounts_of(&self, id: &str) -> Option<Vec<Mount>> {
        self.lock().mounts.get(id).cloned()
    }

    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    fn record(
        &self,
        state: &mut FakeState,
        call: FakeCall,
        id: &str,
        action: &'static str,
    ) -> Result<(), RuntimeError> {
        state.calls.push(call);
        match state.failures.pop_front() {
            Some(message) => Err(RuntimeError::Libcontainer {
                id: id.to_owned(),
                action,
                message,
            }),
            None => Ok(()),
        }
    }
}

impl Runtime for FakeRuntime {
    fn create(&self, config: &ContainerConfig) -> Result<(), RuntimeError> {
        let id = config.id.as_str();
        bundle::validate_id(id)
            .and_then(|()| bundle::validate_mounts(&config.mounts))
            .map_err(|source| RuntimeError::Bundle {
                id: id.to_owned(),
                source,
            })?;
        let mut state = self.lock();
        if state.containers.contains_key(id) {
            return Err(RuntimeError::AlreadyExists { id: id.to_owned() });
        }
        self.record(&mut state, FakeCall::Create(id.to_owned()), id, "create")?;
        state
            .containers
            .insert(id.to_owned(), ContainerStatus::Created);
        state
            .annotations
            .insert(id.to_owned(), config.annotations.clone());
        state.mounts.insert(id.to_owned(), config.mounts.clone());
        Ok(())
    }

    fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        let status = *state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        if status != ContainerStatus::Created {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "start",
                status,
            });
        }
        self.record(&mut state, FakeCall::Start(id.to_owned()), id, "start")?;
        state
            .containers
            .insert(id.to_owned(), ContainerStatus::Running);
        Ok(())
    }

    /// A fake process obeys SIGTERM at once and ends with signal 15.
    fn stop(&self, id: &str, _grace_ms: u64) -> Result<ExitStatus, RuntimeError> {
        let mut state = self.lock();
        let status = *state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        if let ContainerStatus::Stopped(exit) = status {
            return Ok(exit);
        }
        self.record(&mut state, FakeCall::Stop(id.to_owned()), id, "stop")?;
        let exit = ExitStatus::Signal(libc::SIGTERM);
        state
            .containers
            .insert(id.to_owned(), ContainerStatus::Stopped(exit));
        self.changed.notify_all();
        Ok(exit)
    }

    fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        if !state.containers.contains_key(id) {
            return Err(RuntimeError::NotFound { id: id.to_owned() });
        }
        self.record(&mut state, FakeCall::Delete(id.to_owned()), id, "delete")?;
        state.containers.remove(id);
        state.annotations.remove(id);
        state.mounts.remove(id);
        self.changed.notify_all();
        Ok(())
    }

    fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        let state = self.lock();
        let status = *state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        Ok(ContainerState {
            id: id.to_owned(),
            status,
            pid: None,
            annotations: state.annotations.get(id).cloned().unwrap_or_default(),
        })
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        _timeout_ms: u64,
    ) -> Result<ExecOutcome, RuntimeError> {
        let mut state = self.lock();
        let status = *state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound { id: id.to_owned() })?;
        if status != ContainerStatus::Running {
            return Err(RuntimeError::WrongState {
                id: id.to_owned(),
                action: "exec in",
                status,
            });
        }
        self.record(
            &mut state,
            FakeCall::Exec(id.to_owned(), args.to_vec()),
            id,
            "exec in",
        )?;
        Ok(state
            .exec_outcomes
            .get(id)
            .copied()
            .unwrap_or(ExecOutcome::Exited(ExitStatus::Code(0))))
    }

    fn wait(&self, id: &str, timeout_ms: u64) -> Result<Option<ExitStatus>, RuntimeError> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut state = self.lock();
        loop {
            match state.containers.get(id) {
                None => return Err(RuntimeError::NotFound { id: id.to_owned() }),
                Some(ContainerStatus::Stopped(exit)) => return Ok(Some(*exit)),
                Some(_) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn list(&self) -> Vec<String> {
        self.lock().containers.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Limits;
    use crate::digest::Digest;
    use crate::image::PreparedImage;
    use crate::rootfs::RootfsMode;

    fn config(id: &str) -> ContainerConfig {
        let image_config = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
        }))
        .unwrap();
        ContainerConfig {
            id: id.to_owned(),
            image: PreparedImage {
                path: "/images/none".into(),
                manifest_digest: None,
                config_digest: Digest::of_bytes(b"x"),
                config: image_config,
                layer_dirs: Vec::new(),
            },
            command: None,
            env: Vec::new(),
            limits: Limits::default(),
            netns_path: None,
            rootfs_mode: RootfsMode::Auto,
            mounts: Vec::new(),
            annotations: Default::default(),
        }
    }

    #[test]
    fn follows_the_lifecycle_and_its_rules() {
        let runtime = FakeRuntime::new();
        runtime.create(&config("a")).unwrap();
        assert!(matches!(
            runtime.create(&config("a")),
            Err(RuntimeError::AlreadyExists { .. })
        ));
        assert!(matches!(
            runtime.create(&config("../a")),
            Err(RuntimeError::Bundle { .. })
        ));
        assert_eq!(runtime.state("a").unwrap().status, ContainerStatus::Created);
        runtime.start("a").unwrap();
        assert!(matches!(
            runtime.start("a"),
            Err(RuntimeError::WrongState { .. })
        ));
        assert_eq!(runtime.wait("a", 0).unwrap(), None);
        runtime.finish("a", ExitStatus::Code(2)).unwrap();
        assert_eq!(runtime.wait("a", 0).unwrap(), Some(ExitStatus::Code(2)));
        assert_eq!(runtime.stop("a", 1_000).unwrap(), ExitStatus::Code(2));
        runtime.delete("a").unwrap();
        assert!(matches!(
            runtime.state("a"),
            Err(RuntimeError::NotFound { .. })
        ));
        assert_eq!(
            runtime.calls(),
            [
                FakeCall::Create("a".into()),
                FakeCall::Start("a".into()),
                FakeCall::Delete("a".into())
            ]
        );
    }

    #[test]
    fn annotations_are_kept_and_power_loss_ends_what_ran() {
        let runtime = FakeRuntime::new();
        let mut annotated = config("a");
        annotated.annotations.insert("k".into(), "v".into());
        runtime.create(&annotated).unwrap();
        runtime.start("a").unwrap();
        runtime.create(&config("b")).unwrap();
        assert_eq!(
            runtime.state("a").unwrap().annotations,
            annotated.annotations
        );
        runtime.power_loss();
        for id in ["a", "b"] {
            assert_eq!(
                runtime.state(id).unwrap().status,
                ContainerStatus::Stopped(ExitStatus::Unknown)
            );
        }
        runtime.delete("a").unwrap();
        runtime.create(&config("a")).unwrap();
        assert!(runtime.state("a").unwrap().annotations.is_empty());
    }

    #[test]
    fn mounts_are_kept_per_container_and_bad_targets_refused() {
        let runtime = FakeRuntime::new();
        let mut mounted = config("a");
        mounted.mounts = vec![
            Mount::Bind {
                source: "/var/lib/shoal/volumes/data".into(),
                target: "/data".to_owned(),
                read_only: false,
            },
            Mount::Tmpfs {
                target: "/scratch".to_owned(),
                size_bytes: 1 << 20,
            },
        ];
        runtime.create(&mounted).unwrap();
        runtime.create(&config("b")).unwrap();
        assert_eq!(runtime.mounts_of("a"), Some(mounted.mounts.clone()));
        assert_eq!(runtime.mounts_of("b"), Some(Vec::new()));
        assert_eq!(runtime.mounts_of("c"), None);
        runtime.delete("a").unwrap();
        assert_eq!(runtime.mounts_of("a"), None);

        let mut escaping = config("c");
        escaping.mounts = vec![Mount::Tmpfs {
            target: "/data/../etc".to_owned(),
            size_bytes: 4096,
        }];
        assert!(matches!(
            runtime.create(&escaping),
            Err(RuntimeError::Bundle {
                source: bundle::BundleError::InvalidMountTarget(_),
                ..
            })
        ));
        assert_eq!(runtime.list(), ["b"]);
    }

    #[test]
    fn injected_failures_change_nothing() {
        let runtime = FakeRuntime::new();
        runtime.fail_next("disk full");
        let error = runtime.create(&config("a")).unwrap_err();
        assert!(error.to_string().contains("disk full"), "{error}");
        assert!(runtime.list().is_empty());
        runtime.create(&config("a")).unwrap();
        assert_eq!(runtime.list(), ["a"]);
    }

    #[test]
    fn wait_wakes_when_another_thread_finishes_the_container() {
        let runtime = std::sync::Arc::new(FakeRuntime::new());
        runtime.create(&config("a")).unwrap();
        runtime.start("a").unwrap();
        let waiter = {
            let runtime = runtime.clone();
            std::thread::spawn(move || runtime.wait("a", 60_000).unwrap())
        };
        runtime.finish("a", ExitStatus::Code(0)).unwrap();
        assert_eq!(waiter.join().unwrap(), Some(ExitStatus::Code(0)));
    }
}
