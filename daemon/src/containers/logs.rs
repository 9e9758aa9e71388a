//! `shoal logs`: which containers a target names cluster-wide and on which node each runs
//! ([`locate`]), and a container's new output from the offsets the caller gave, read from this
//! node's runtime log files in bounded pieces ([`read`]). The API server reads this node's
//! containers through the reconciler and asks other nodes over sync (`GET /v1/logs`), whose
//! server reads through the same reconciler method.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use shoal_crdt::{ContainerRecord, NodeId};

/// Largest piece of one log file returned by one `logs` call.
pub const LOG_CHUNK_BYTES_MAX: u64 = 256 * 1024;

/// Where a container's stdout and stderr log files are (the runtime's layout).
pub type LogPaths = Arc<dyn Fn(&str) -> (PathBuf, PathBuf) + Send + Sync>;

/// Why `logs` could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("container {target}: not found on this node or in the cluster state")]
    UnknownTarget { target: String },
    #[error("container {container} is not on node {node}")]
    NotOnThisNode { container: String, node: NodeId },
    #[error("log file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A container a target names, and the node that runs it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Located {
    pub node: NodeId,
    pub container: String,
}

/// The containers `target` names, sorted by node and id: the container with that id, or
/// every container of the service of that name on every node, or a container this node's
/// runtime still holds without a record (one being removed still has logs). `me` is this
/// node; `runtime_ids` are the containers its runtime holds.
pub fn locate(
    target: &str,
    me: &NodeId,
    records: &[ContainerRecord],
    runtime_ids: &[String],
) -> Result<Vec<Located>, LogError> {
    let located = |record: &ContainerRecord| Located {
        node: record.node.clone(),
        container: record.id.as_str().to_string(),
    };
    if let Some(record) = records.iter().find(|r| r.id.as_str() == target) {
        return Ok(vec![located(record)]);
    }
    let of_service: BTreeSet<Located> = records
        .iter()
        .filter(|r| r.service.as_str() == target)
        .map(located)
        .collect();
    if !of_service.is_empty() {
        return Ok(of_service.into_iter().collect());
    }
    if runtime_ids.iter().any(|id| id == target) {
        return Ok(vec![Located {
            node: me.clone(),
            container: target.to_string(),
        }]);
    }
    Err(LogError::UnknownTarget {
        target: target.to_string(),
    })
}

/// New output of one container: the bytes read and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub running: bool,
    /// A stream holds more than was read.
    pub more: bool,
}

/// New output of container `id` from `from` (stdout, stderr offsets), at most
/// `stream_bytes_max` (and never more than `LOG_CHUNK_BYTES_MAX`) bytes of each stream.
pub fn read(
    id: &str,
    paths: &LogPaths,
    from: (u64, u64),
    stream_bytes_max: u64,
    running: bool,
) -> Result<LogRead, LogError> {
    let bytes_max = stream_bytes_max.min(LOG_CHUNK_BYTES_MAX);
    let (stdout_path, stderr_path) = paths(id);
    let (stdout, stdout_offset, stdout_more) = read_log(&stdout_path, from.0, bytes_max)?;
    let (stderr, stderr_offset, stderr_more) = read_log(&stderr_path, from.1, bytes_max)?;
    Ok(LogRead {
        stdout,
        stderr,
        stdout_offset,
        stderr_offset,
        running,
        more: stdout_more || stderr_more,
    })
}

/// Reads up to `bytes_max` of `path` from `offset`: the bytes, the next offset, and whether
/// the file holds more. A file shorter than the offset was rotated, so it is read from the
/// start. A missing file is empty.
fn read_log(path: &Path, offset: u64, bytes_max: u64) -> Result<(Vec<u8>, u64, bool), LogError> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), 0, false));
        }
        Err(error) => return Err(io(error)),
    };
    let length = file.metadata().map_err(io)?.len();
    let start = if offset > length { 0 } else { offset };
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut bytes = Vec::new();
    file.take(bytes_max).read_to_end(&mut bytes).map_err(io)?;
    let next = start + bytes.len() as u64;
    Ok((bytes, next, next < length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_crdt::{NTP64, Timestamp};

    #[test]
    fn logs_are_read_from_offsets_in_bounded_pieces_and_restart_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let check = |offset, bytes_max, expected: (&str, u64, bool)| {
            let (bytes, next, more) = read_log(&path, offset, bytes_max).unwrap();
            assert_eq!(
                (String::from_utf8(bytes).unwrap().as_str(), next, more),
                expected,
                "from {offset}, at most {bytes_max}"
            );
        };
        check(0, 100, ("", 0, false));
        std::fs::write(&path, "hello\nworld\n").unwrap();
        check(0, 100, ("hello\nworld\n", 12, false));
        check(6, 100, ("world\n", 12, false));
        check(12, 100, ("", 12, false));
        check(0, 6, ("hello\n", 6, true));
        check(6, 6, ("world\n", 12, false));
        std::fs::write(&path, "new\n").unwrap();
        check(12, 100, ("new\n", 4, false));
    }

    #[test]
    fn a_read_is_capped_at_the_chunk_limit_and_reports_more() {
        let dir = tempfile::tempdir().unwrap();
        let stdout = dir.path().join("out");
        let stderr = dir.path().join("err");
        std::fs::write(&stdout, vec![b'x'; LOG_CHUNK_BYTES_MAX as usize + 10]).unwrap();
        std::fs::write(&stderr, "e\n").unwrap();
        let paths: LogPaths = {
            let (stdout, stderr) = (stdout.clone(), stderr.clone());
            Arc::new(move |_: &str| (stdout.clone(), stderr.clone()))
        };
        let first = read("c", &paths, (0, 0), u64::MAX, true).unwrap();
        assert_eq!(first.stdout.len() as u64, LOG_CHUNK_BYTES_MAX);
        assert_eq!(first.stderr, b"e\n");
        assert!(first.more && first.running);
        let second = read("c", &paths, (first.stdout_offset, 2), u64::MAX, false).unwrap();
        assert_eq!((second.stdout.len(), second.stderr.len()), (10, 0));
        assert!(!second.more && !second.running);
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
    fn targets_locate_containers_on_every_node() {
        let me: NodeId = "a".parse().unwrap();
        let records = [
            record("web-2", "web", "b"),
            record("web-1", "web", "a"),
            record("web-3", "web", "b"),
            record("db-1", "db", "c"),
        ];
        let check = |target: &str, expected: &[(&str, &str)]| {
            let got = locate(target, &me, &records, &["gone-1".to_string()]).unwrap();
            let got: Vec<(String, String)> = got
                .into_iter()
                .map(|l| (l.node.to_string(), l.container))
                .collect();
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, c)| (n.to_string(), c.to_string()))
                .collect();
            assert_eq!(got, expected, "{target}");
        };
        check("web", &[("a", "web-1"), ("b", "web-2"), ("b", "web-3")]);
        check("web-2", &[("b", "web-2")]);
        check("db", &[("c", "db-1")]);
        check("gone-1", &[("a", "gone-1")]);
        assert!(matches!(
            locate("nope", &me, &records, &[]),
            Err(LogError::UnknownTarget { .. })
        ));
    }
}
