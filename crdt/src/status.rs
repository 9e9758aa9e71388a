//! What a node reports about its own containers: one `NodeStatus` per node in the
//! status LWW-map, written only by that node and only when something in it changed, so
//! every node (and `shoal ps` on any node) sees the real state of every container.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ContainerId, ServiceName};

/// Containers one node reports at most.
pub const STATUS_CONTAINERS_MAX: usize = 1024;
/// Longest failure reason kept in a status.
pub const STATUS_REASON_BYTES_MAX: usize = 512;
/// Longest spec digest a container status carries.
pub const STATUS_SPEC_DIGEST_BYTES_MAX: usize = 64;

/// How a container is doing, as its node's runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum RunState {
    /// Recorded and being created or started.
    Starting,
    Running,
    /// Ended with an exit code (or a signal), not to be restarted.
    Exited {
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
    },
    /// Ended and waiting for its restart (backoff).
    Restarting {
        #[serde(default)]
        code: Option<i32>,
        #[serde(default)]
        signal: Option<i32>,
    },
    /// Could not be started: the reason (a missing secret file, a bad image, ...).
    Failed {
        reason: String,
    },
}

impl RunState {
    /// The short form `shoal ps` prints.
    pub fn label(&self) -> String {
        let ended = |code: &Option<i32>, signal: &Option<i32>| match (code, signal) {
            (Some(code), _) => format!("({code})"),
            (None, Some(signal)) => format!("(signal {signal})"),
            (None, None) => "(unknown)".to_owned(),
        };
        match self {
            RunState::Starting => "starting".to_owned(),
            RunState::Running => "running".to_owned(),
            RunState::Exited { code, signal } => format!("exited{}", ended(code, signal)),
            RunState::Restarting { code, signal } => {
                format!("restarting{}", ended(code, signal))
            }
            RunState::Failed { reason } => format!("failed: {reason}"),
        }
    }
}

/// What a container's health check says (its service's `[health]`), as its node probes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "health")]
pub enum Health {
    /// The service has no health check.
    #[default]
    None,
    /// Not yet passed a probe since its start, and not yet `retries` failures past the
    /// start period.
    Starting,
    Healthy,
    /// `retries` consecutive probes failed; the last one's failure.
    Unhealthy {
        reason: String,
    },
}

impl Health {
    pub fn is_none(&self) -> bool {
        *self == Health::None
    }

    /// The short form `shoal ps` prints (`-` without a check).
    pub fn label(&self) -> &'static str {
        match self {
            Health::None => "-",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy { .. } => "unhealthy",
        }
    }
}

/// One container's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub state: RunState,
    /// Unix milliseconds of the last start, by the node's clock.
    #[serde(default)]
    pub started_unix_ms: Option<u64>,
    #[serde(default)]
    pub restarts: u32,
    /// Left out when the service has no check, so a status without it (from a node that
    /// predates health checks) reads as `Health::None`.
    #[serde(default, skip_serializing_if = "Health::is_none")]
    pub health: Health,
    /// A short digest of the spec it runs, the replica count left out (so every node can
    /// tell an updated replica from an outdated one); absent from nodes that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// It counts for its service's rollout: running, healthy if checked, for the spec's
    /// `update.min_healthy_ms` without a break (by its node's clock).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ready: bool,
    /// About to be stopped by its service's rollout: no node forwards new connections to it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retiring: bool,
}

/// Every container a node runs, with its status (an entry of the status LWW-map).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeStatus {
    pub containers: BTreeMap<ContainerId, ContainerStatus>,
    /// Services this node should run but could not start, with why (a missing secret
    /// file, a bad image, no room).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<ServiceName, String>,
}

/// Why a status is one no honest node writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    #[error("reports {count} containers, more than {STATUS_CONTAINERS_MAX}")]
    TooMany { count: usize },
    #[error("container {id}: failure reason longer than {STATUS_REASON_BYTES_MAX} bytes")]
    ReasonTooLong { id: ContainerId },
    #[error("reports errors of {count} services, more than {STATUS_CONTAINERS_MAX}")]
    TooManyErrors { count: usize },
    #[error("container {id}: spec digest longer than {STATUS_SPEC_DIGEST_BYTES_MAX} bytes")]
    DigestTooLong { id: ContainerId },
    #[error("service {service}: error longer than {STATUS_REASON_BYTES_MAX} bytes")]
    ErrorTooLong { service: ServiceName },
}

impl NodeStatus {
    pub fn validate(&self) -> Result<(), StatusError> {
        if self.containers.len() > STATUS_CONTAINERS_MAX {
            return Err(StatusError::TooMany {
                count: self.containers.len(),
            });
        }
        if self.errors.len() > STATUS_CONTAINERS_MAX {
            return Err(StatusError::TooManyErrors {
                count: self.errors.len(),
            });
        }
        if let Some((service, _)) = self
            .errors
            .iter()
            .find(|(_, message)| message.len() > STATUS_REASON_BYTES_MAX)
        {
            return Err(StatusError::ErrorTooLong {
                service: service.clone(),
            });
        }
        for (id, status) in &self.containers {
            if let RunState::Failed { reason } = &status.state
                && reason.len() > STATUS_REASON_BYTES_MAX
            {
                return Err(StatusError::ReasonTooLong { id: id.clone() });
            }
            if let Health::Unhealthy { reason } = &status.health
                && reason.len() > STATUS_REASON_BYTES_MAX
            {
                return Err(StatusError::ReasonTooLong { id: id.clone() });
            }
            if status
                .spec
                .as_ref()
                .is_some_and(|digest| digest.len() > STATUS_SPEC_DIGEST_BYTES_MAX)
            {
                return Err(StatusError::DigestTooLong { id: id.clone() });
            }
        }
        Ok(())
    }
}

/// Cuts a failure reason to `STATUS_REASON_BYTES_MAX` on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= STATUS_REASON_BYTES_MAX {
        return reason.to_owned();
    }
    let mut end = STATUS_REASON_BYTES_MAX - 3;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_bounds() {
        assert_eq!(RunState::Running.label(), "running");
        assert_eq!(
            RunState::Exited {
                code: Some(3),
                signal: None
            }
            .label(),
            "exited(3)"
        );
        let long = "é".repeat(STATUS_REASON_BYTES_MAX);
        let cut = bounded_reason(&long);
        assert!(cut.len() <= STATUS_REASON_BYTES_MAX && cut.ends_with("..."));
        let mut status = NodeStatus::default();
        status.containers.insert(
            "c1".parse().unwrap(),
            ContainerStatus {
                state: RunState::Failed { reason: long },
                started_unix_ms: None,
                restarts: 0,
                health: Health::None,
                spec: None,
                ready: false,
                retiring: false,
            },
        );
        assert!(matches!(
            status.validate(),
            Err(StatusError::ReasonTooLong { .. })
        ));
    }

    #[test]
    fn health_is_compatible_with_statuses_without_it() {
        let old = r#"{"state":{"state":"running"},"started_unix_ms":5,"restarts":1}"#;
        let status: ContainerStatus = serde_json::from_str(old).unwrap();
        assert_eq!(status.health, Health::None);
        assert_eq!(serde_json::to_string(&status).unwrap(), old);
        let unhealthy = ContainerStatus {
            health: Health::Unhealthy {
                reason: "connection refused".into(),
            },
            ..status
        };
        let text = serde_json::to_string(&unhealthy).unwrap();
        assert!(text.contains(r#""health":{"health":"unhealthy","reason":"connection refused"}"#));
        assert_eq!(
            serde_json::from_str::<ContainerStatus>(&text).unwrap(),
            unhealthy
        );
        let mut status = NodeStatus::default();
        status.containers.insert(
            "c1".parse().unwrap(),
            ContainerStatus {
                health: Health::Unhealthy {
                    reason: "x".repeat(STATUS_REASON_BYTES_MAX + 1),
                },
                ..unhealthy
            },
        );
        assert!(matches!(
            status.validate(),
            Err(StatusError::ReasonTooLong { .. })
        ));
    }
}
