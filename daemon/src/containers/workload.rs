//! What a container gets from its node at start besides the image: the environment (the
//! spec's `env` over what its `env_files` say, read now, on this node), its mounts (bind
//! mounts of host paths that must exist, named volumes kept under the state directory,
//! tmpfs, and each secret's host file mounted read-only at `/run/secrets/<name>`).
//!
//! Only paths are replicated. The content of env files and secrets is read here, kept in
//! memory for the start and handed to the runtime; it never reaches the replicated state,
//! the database or a log line (errors name the path, never the content).

use std::io::Read;
use std::path::{Path, PathBuf};

use shoal_crdt::ServiceSpec;
use shoal_crdt::workload::{VolumeSource, secret_target};
use shoal_oci::Mount;

/// The largest env file read: 1 MiB.
pub const ENV_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// The most variables one env file may set.
pub const ENV_FILE_VARIABLES_MAX: usize = 4096;

/// Why a container's workload could not be prepared on this node.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadProblem {
    #[error("spec: {0}")]
    Spec(#[from] shoal_crdt::SpecError),
    #[error("env file {path}: {source}")]
    EnvFileRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("env file {path}: larger than {ENV_FILE_BYTES_MAX} bytes")]
    EnvFileTooLarge { path: String },
    #[error("env file {path}, line {line}: {reason}")]
    EnvFileLine {
        path: String,
        line: usize,
        reason: &'static str,
    },
    #[error("secret {name}: cannot read {path}: {source}")]
    Secret {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret {name}: {path} is not a regular file")]
    SecretNotAFile { name: String, path: String },
    #[error("volume {path}: the host path does not exist or cannot be read: {source}")]
    HostPath {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("named volume {name}: cannot create {path}: {source}")]
    NamedVolume {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("named volume {name}: this node has no volume directory")]
    NoVolumeDir { name: String },
}

/// The environment and mounts of one container start.
#[derive(Clone, PartialEq, Eq)]
pub struct Workload {
    /// `KEY=VALUE`, env files first, then the spec's `env` (which wins).
    pub env: Vec<String>,
    pub mounts: Vec<Mount>,
}

impl std::fmt::Debug for Workload {
    // The environment may hold what env files said: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("env", &format_args!("{} variables", self.env.len()))
            .field("mounts", &self.mounts)
            .finish()
    }
}

/// Where a named volume lives on this node.
pub fn volume_path(volumes_dir: &Path, name: &str) -> PathBuf {
    volumes_dir.join(name)
}

/// Reads env files, checks secrets and host paths, creates named volumes.
pub fn prepare(
    spec: &ServiceSpec,
    volumes_dir: Option<&Path>,
) -> Result<Workload, WorkloadProblem> {
    let mut env: Vec<String> = Vec::new();
    for path in &spec.env_files {
        env.extend(read_env_file(path)?);
    }
    env.extend(spec.env.iter().map(|(key, value)| format!("{key}={value}")));

    let mut mounts = Vec::new();
    for volume in spec.volume_mounts()? {
        let source = match &volume.source {
            VolumeSource::HostPath(path) => {
                std::fs::metadata(path).map_err(|source| WorkloadProblem::HostPath {
                    path: path.clone(),
                    source,
                })?;
                PathBuf::from(path)
            }
            VolumeSource::Named(name) => {
                let dir = volumes_dir
                    .ok_or_else(|| WorkloadProblem::NoVolumeDir { name: name.clone() })?;
                let path = volume_path(dir, name);
                std::fs::create_dir_all(&path).map_err(|source| WorkloadProblem::NamedVolume {
                    name: name.clone(),
                    path: path.clone(),
                    source,
                })?;
                path
            }
        };
        mounts.push(Mount::Bind {
            source,
            target: volume.target,
            read_only: volume.read_only,
        });
    }
    for tmpfs in spec.tmpfs_mounts()? {
        mounts.push(Mount::Tmpfs {
            target: tmpfs.target,
            size_bytes: tmpfs.size_bytes,
        });
    }
    for (name, path) in &spec.secrets {
        check_secret(name, path)?;
        mounts.push(Mount::Bind {
            source: PathBuf::from(path),
            target: secret_target(name),
            read_only: true,
        });
    }
    Ok(Workload { env, mounts })
}

/// A secret must be a regular file this node can read now.
fn check_secret(name: &str, path: &str) -> Result<(), WorkloadProblem> {
    let secret = |source| WorkloadProblem::Secret {
        name: name.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(secret)?;
    if !file.metadata().map_err(secret)?.is_file() {
        return Err(WorkloadProblem::SecretNotAFile {
            name: name.to_owned(),
            path: path.to_owned(),
        });
    }
    let mut first = [0u8; 1];
    file.read(&mut first).map_err(secret)?;
    Ok(())
}

/// `KEY=VALUE` lines; blank lines and lines starting with `#` are skipped, a leading
/// `export ` is allowed, the value is taken as written (no quotes removed).
fn read_env_file(path: &str) -> Result<Vec<String>, WorkloadProblem> {
    let read = |source| WorkloadProblem::EnvFileRead {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut text = String::new();
    file.take(ENV_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > ENV_FILE_BYTES_MAX {
        return Err(WorkloadProblem::EnvFileTooLarge {
            path: path.to_owned(),
        });
    }
    let mut variables = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_error = |reason| WorkloadProblem::EnvFileLine {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, _)) = line.split_once('=') else {
            return Err(line_error("not KEY=VALUE"));
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            return Err(line_error("the name is not [A-Za-z0-9_.-]+"));
        }
        if line.contains('\0') {
            return Err(line_error("contains a NUL byte"));
        }
        if variables.len() == ENV_FILE_VARIABLES_MAX {
            return Err(line_error("more variables than allowed"));
        }
        variables.push(line.to_owned());
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn env_files_then_env_and_errors_name_the_path_not_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(
            dir.path(),
            "good.env",
            "# comment\n\nexport A=1\nB=two=2\nTOKEN=s3cr3t\n",
        );
        let mut spec = ServiceSpec::new("/img");
        spec.env_files = vec![good];
        spec.env.insert("A".into(), "override".into());
        let workload = prepare(&spec, None).unwrap();
        assert_eq!(
            workload.env,
            ["A=1", "B=two=2", "TOKEN=s3cr3t", "A=override"]
        );
        assert!(!format!("{workload:?}").contains("s3cr3t"));

        let bad = write(dir.path(), "bad.env", "OK=1\nsecretvalue-without-equals\n");
        spec.env_files = vec![bad.clone()];
        let error = prepare(&spec, None).unwrap_err().to_string();
        assert!(error.contains(&bad) && error.contains("line 2"), "{error}");
        assert!(!error.contains("secretvalue"), "{error}");

        spec.env_files = vec![dir.path().join("missing.env").to_str().unwrap().to_owned()];
        let error = prepare(&spec, None).unwrap_err().to_string();
        assert!(error.contains("missing.env"), "{error}");
    }

    #[test]
    fn mounts_volumes_tmpfs_and_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let secret = write(dir.path(), "key", "k");
        let volumes = dir.path().join("volumes");
        let mut spec = ServiceSpec::new("/img");
        spec.volumes = vec![
            format!("{}:/host:ro", dir.path().display()),
            "cache:/data".into(),
        ];
        spec.tmpfs = vec!["/tmp:size=1m".into()];
        spec.secrets.insert("tls_key".into(), secret.clone());
        let workload = prepare(&spec, Some(&volumes)).unwrap();
        assert!(volumes.join("cache").is_dir(), "named volume created");
        assert_eq!(
            workload.mounts,
            vec![
                Mount::Bind {
                    source: dir.path().to_path_buf(),
                    target: "/host".into(),
                    read_only: true
                },
                Mount::Bind {
                    source: volumes.join("cache"),
                    target: "/data".into(),
                    read_only: false
                },
                Mount::Tmpfs {
                    target: "/tmp".into(),
                    size_bytes: 1 << 20
                },
                Mount::Bind {
                    source: secret.into(),
                    target: "/run/secrets/tls_key".into(),
                    read_only: true
                },
            ]
        );
        spec.secrets
            .insert("gone".into(), "/nonexistent/shoal-secret".into());
        let error = prepare(&spec, Some(&volumes)).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/shoal-secret"), "{error}");
        spec.secrets.clear();
        spec.volumes = vec!["/nonexistent/shoal-dir:/x".into()];
        let error = prepare(&spec, Some(&volumes)).unwrap_err().to_string();
        assert!(error.contains("/nonexistent/shoal-dir"), "{error}");
    }
}
