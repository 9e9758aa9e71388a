//! `shoal logs`: which of this node's containers a target names (a container id or a
//! service), and their new output from the offsets the caller gave, read from the runtime's
//! log files in bounded pieces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_crdt::{ContainerRecord, NodeId};

use crate::api::LogChunk;

/// Largest piece of one log file returned by one `logs` call.
pub const LOG_CHUNK_BYTES_MAX: u64 = 256 * 1024;

/// Where a container's stdout and stderr log files are (the runtime's layout).
pub type LogPaths = Arc<dyn Fn(&str) -> (PathBuf, PathBuf) + Send + Sync>;

/// Why `logs` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("container {target}: not found on this node or in the cluster state")]
    UnknownTarget { target: String },
    #[error("container {container} runs on node {node}; run `shoal logs` on that node")]
    OnOtherNode { container: String, node: NodeId },
    #[error("service {service} has no container on this node; its containers run on {nodes}")]
    ServiceElsewhere { service: String, nodes: String },
    #[error("log file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The ids of this node's containers `target` names. `runtime_ids` are the containers the
/// runtime still has (one being removed has no record any more but still has logs).
pub fn resolve(
    target: &str,
    me: &NodeId,
    records: &[ContainerRecord],
    runtime_ids: &[String],
) -> Result<Vec<String>, LogError> {
    if let Some(record) = records.iter().find(|r| r.id.as_str() == target) {
        if &record.node != me {
            return Err(LogError::OnOtherNode {
                container: target.to_string(),
                node: record.node.clone(),
            });
        }
        return Ok(vec![target.to_string()]);
    }
    let of_service: Vec<&ContainerRecord> = records
        .iter()
        .filter(|r| r.service.as_str() == target)
        .collect();
    if of_service.is_empty() {
        if runtime_ids.iter().any(|id| id == target) {
            return Ok(vec![target.to_string()]);
        }
        return Err(LogError::UnknownTarget {
            target: target.to_string(),
        });
    }
    let here: Vec<String> = of_service
        .iter()
        .filter(|r| &r.node == me)
        .map(|r| r.id.as_str().to_string())
        .collect();
    if here.is_empty() {
        let nodes: BTreeSet<String> = of_service.iter().map(|r| r.node.to_string()).collect();
        return Err(LogError::ServiceElsewhere {
            service: target.to_string(),
            nodes: nodes.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    Ok(here)
}

/// New output of container `id` since `offsets` (stdout, stderr).
pub fn chunk(
    id: &str,
    paths: &LogPaths,
    offsets: &BTreeMap<String, (u64, u64)>,
    running: bool,
) -> Result<LogChunk, LogError> {
    let (stdout_path, stderr_path) = paths(id);
    let (stdout_from, stderr_from) = offsets.get(id).copied().unwrap_or((0, 0));
    let (stdout, stdout_offset) = read_log(&stdout_path, stdout_from)?;
    let (stderr, stderr_offset) = read_log(&stderr_path, stderr_from)?;
    Ok(LogChunk {
        container: id.to_string(),
        stdout,
        stderr,
        stdout_offset,
        stderr_offset,
        running,
    })
}

/// Reads up to `LOG_CHUNK_BYTES_MAX` of `path` from `offset`; a file shorter than the offset
/// was rotated, so it is read from the start. A missing file is empty.
fn read_log(path: &Path, offset: u64) -> Result<(String, u64), LogError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((String::new(), 0));
        }
        Err(error) => return Err(io(error)),
    };
    let length = file.metadata().map_err(io)?.len();
    let start = if offset > length { 0 } else { offset };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(LOG_CHUNK_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let next = start + bytes.len() as u64;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crdt::{NTP64, Timestamp};

    #[test]
    fn logs_are_read_from_offsets_and_restart_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        assert_eq!(read_log(&path, 0).unwrap(), (String::new(), 0));
        std::fs::write(&path, "hello\nworld\n").unwrap();
        assert_eq!(read_log(&path, 0).unwrap(), ("hello\nworld\n".into(), 12));
        assert_eq!(read_log(&path, 6).unwrap(), ("world\n".into(), 12));
        assert_eq!(read_log(&path, 12).unwrap(), (String::new(), 12));
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(read_log(&path, 12).unwrap(), ("new\n".into(), 4));
    }

    fn record(id: &str, service: &str, node: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.parse().unwrap(),
            service: service.parse().unwrap(),
            node: node.parse().unwrap(),
            spec_version: Timestamp::new(NTP64(1), node.parse::<NodeId>().unwrap().hlc_id()),
            ip: None,
        }
    }

    #[test]
    fn targets_resolve_to_this_nodes_containers_or_say_where_they_are() {
        let me: NodeId = "a".parse().unwrap();
        let records = [
            record("web-1", "web", "a"),
            record("web-2", "web", "b"),
            record("db-1", "db", "b"),
        ];
        let check = |target: &str| resolve(target, &me, &records, &["gone-1".to_string()]);
        assert_eq!(check("web").unwrap(), ["web-1"]);
        assert_eq!(check("web-1").unwrap(), ["web-1"]);
        assert_eq!(check("gone-1").unwrap(), ["gone-1"]);
        let elsewhere = check("db").unwrap_err().to_string();
        assert!(elsewhere.contains("run on b"), "{elsewhere}");
        let other = check("web-2").unwrap_err().to_string();
        assert!(other.contains("node b"), "{other}");
        assert!(matches!(check("nope"), Err(LogError::UnknownTarget { .. })));
    }
}
