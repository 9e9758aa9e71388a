//! This node's named volumes: one directory each under `<state_dir>/volumes`, made when a
//! container first mounts it (`workload`), kept across container restarts, replacements
//! and daemon restarts, and deleted only by `shoal volume rm` while no container of this
//! node uses it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_crdt::workload::{PathCheckError, VolumeSource, check_name};
use shoal_crdt::{ContainerRecord, ServiceName, ServiceSpec};

use super::workload::volume_path;

/// Volumes listed at most.
pub const VOLUMES_LISTED_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("this node keeps no named volumes (containers are disabled or have no state dir)")]
    NoVolumeDir,
    #[error("volume name {name:?}: {reason}")]
    Name {
        name: String,
        #[source]
        reason: PathCheckError,
    },
    #[error("volume {name} does not exist on this node")]
    NotFound { name: String },
    #[error(
        "volume {name} is used by container(s) {containers}; remove or change their service first"
    )]
    InUse { name: String, containers: String },
    #[error("volume directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A named volume and this node's containers using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
    pub used_by: Vec<String>,
}

/// Which of `records` (this node's) mount which named volume under `specs`.
fn users(
    records: &[ContainerRecord],
    specs: &BTreeMap<ServiceName, ServiceSpec>,
) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in records {
        let Some(spec) = specs.get(&record.service) else {
            continue;
        };
        for volume in spec.volume_mounts().unwrap_or_default() {
            if let VolumeSource::Named(name) = volume.source {
                users
                    .entry(name)
                    .or_default()
                    .push(record.id.as_str().to_owned());
            }
        }
    }
    users
}

/// The volumes in `dir`, with their users among `records`.
pub fn list(
    dir: &Path,
    records: &[ContainerRecord],
    specs: &BTreeMap<ServiceName, ServiceSpec>,
) -> Result<Vec<Volume>, VolumeError> {
    let io = |source| VolumeError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut users = users(records, specs);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io(error)),
    };
    let mut volumes = Vec::new();
    for entry in entries.take(VOLUMES_LISTED_MAX) {
        let entry = entry.map_err(io)?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if check_name(&name).is_err() || !entry.path().is_dir() {
            continue;
        }
        volumes.push(Volume {
            used_by: users.remove(&name).unwrap_or_default(),
            path: entry.path(),
            name,
        });
    }
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(volumes)
}

/// Deletes volume `name` with its data, unless one of `records` uses it.
pub fn remove(
    dir: &Path,
    name: &str,
    records: &[ContainerRecord],
    specs: &BTreeMap<ServiceName, ServiceSpec>,
) -> Result<Volume, VolumeError> {
    check_name(name).map_err(|reason| VolumeError::Name {
        name: name.to_owned(),
        reason,
    })?;
    let path = volume_path(dir, name);
    if !path.is_dir() {
        return Err(VolumeError::NotFound {
            name: name.to_owned(),
        });
    }
    if let Some(containers) = users(records, specs).get(name) {
        return Err(VolumeError::InUse {
            name: name.to_owned(),
            containers: containers.join(", "),
        });
    }
    std::fs::remove_dir_all(&path).map_err(|source| VolumeError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Volume {
        name: name.to_owned(),
        path,
        used_by: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_remove_refuse_what_is_used() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        std::fs::create_dir_all(dir.path().join("old")).unwrap();
        std::fs::write(dir.path().join("cache/data"), b"x").unwrap();
        let mut spec = ServiceSpec::new("/img");
        spec.volumes = vec!["cache:/data".into()];
        let specs: BTreeMap<ServiceName, ServiceSpec> = [("web".parse().unwrap(), spec)].into();
        let records = vec![ContainerRecord {
            id: "web-1".parse().unwrap(),
            service: "web".parse().unwrap(),
            node: "a".parse().unwrap(),
            spec_version: uhlc::Timestamp::new(Default::default(), uhlc::ID::rand()),
            ip: None,
        }];
        let volumes = list(dir.path(), &records, &specs).unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].name, "cache");
        assert_eq!(volumes[0].used_by, ["web-1"]);
        assert!(volumes[1].used_by.is_empty());
        let error = remove(dir.path(), "cache", &records, &specs).unwrap_err();
        assert!(matches!(error, VolumeError::InUse { .. }), "{error}");
        assert!(dir.path().join("cache/data").exists(), "nothing changed");
        remove(dir.path(), "old", &records, &specs).unwrap();
        assert!(!dir.path().join("old").exists());
        assert!(matches!(
            remove(dir.path(), "old", &records, &specs),
            Err(VolumeError::NotFound { .. })
        ));
        assert!(matches!(
            remove(dir.path(), "../etc", &records, &specs),
            Err(VolumeError::Name { .. })
        ));
        assert!(
            list(&dir.path().join("none"), &records, &specs)
                .unwrap()
                .is_empty()
        );
    }
}
