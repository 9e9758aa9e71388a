//! Generates a container's OCI runtime bundle (`config.json`) from the image config and the
//! service's command, environment, limits, mounts and optional network namespace.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{Value, json};

use crate::image::PreparedImage;
use crate::seccomp_profile;

/// Container ids become directory and cgroup names, so they are kept to a safe alphabet.
pub const CONTAINER_ID_BYTES_MAX: usize = 64;

/// cgroup limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// CPU bandwidth in thousandths of a CPU (1000 = one full CPU).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<i64>,
}

/// A file system mounted into a container, on top of its root filesystem.
///
/// Targets are absolute paths inside the container. The daemon validates them against its
/// own rules first; the bundle still refuses a relative target or one with a `..`
/// component, a bind whose source does not exist and an unbounded tmpfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mount {
    /// An existing host path (directory or file) bind-mounted at `target`.
    Bind {
        source: PathBuf,
        target: String,
        read_only: bool,
    },
    /// A fresh tmpfs of at most size_bytes at `target`.
    Tmpfs { target: String, size_bytes: u64 },
}

impl Mount {
    /// The path inside the container.
    pub fn target(&self) -> &str {
        match self {
            Self::Bind { target, .. } | Self::Tmpfs { target, .. } => target,
        }
    }
}

/// What the bundle is made from, apart from the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleOptions {
    pub id: String,
    /// Replaces the image's entrypoint and cmd when given.
    pub command: Option<Vec<String>>,
    /// `KEY=VALUE` pairs; they override the image's variables of the same name.
    pub env: Vec<String>,
    pub limits: Limits,
    /// `cgroupsPath` is `/<cgroup_parent>/<id>`.
    pub cgroup_parent: String,
    /// Join this network namespace instead of getting a fresh, empty one. The seam for
    /// container networking: the daemon makes the netns with its veth and passes it here.
    pub netns_path: Option<PathBuf>,
    pub seccomp: bool,
    /// Mounted in order, after the runtime's own (`/proc`, `/dev`, `/sys`, ...).
    pub mounts: Vec<Mount>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error(
        "container id {0:?} must be 1 to 64 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
    )]
    InvalidId(String),
    #[error("cgroup parent {0:?} must be a relative path of safe names")]
    InvalidCgroupParent(String),
    #[error("image {image} has no entrypoint or cmd and the service gives no command")]
    NoCommand { image: PathBuf },
    #[error("environment entry {0:?} is not KEY=VALUE")]
    InvalidEnv(String),
    #[error("image user {0:?} is not numeric (uid or uid:gid); user names are not supported")]
    UnsupportedUser(String),
    #[error("mount target {0:?} must be an absolute path without '..' components")]
    InvalidMountTarget(String),
    #[error("tmpfs at {0:?} needs a size above 0 bytes (0 would leave it unbounded)")]
    UnboundedTmpfs(String),
    #[error("bind mount source {path} for {target:?} must be an absolute path")]
    RelativeBindSource { path: PathBuf, target: String },
    #[error("bind mount source {path} for {target:?} does not exist")]
    MissingBindSource { path: PathBuf, target: String },
    #[error("generated runtime spec is invalid: {0}")]
    InvalidSpec(String),
}

fn is_safe_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= CONTAINER_ID_BYTES_MAX
        && text.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && text.as_bytes()[0].is_ascii_alphanumeric()
}

pub fn validate_id(id: &str) -> Result<(), BundleError> {
    if is_safe_name(id) {
        Ok(())
    } else {
        Err(BundleError::InvalidId(id.to_owned()))
    }
}

fn parse_user(user: &str) -> Result<(u32, u32), BundleError> {
    let unsupported = || BundleError::UnsupportedUser(user.to_owned());
    match user {
        "" | "root" => return Ok((0, 0)),
        _ => {}
    }
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    let uid = uid.parse().map_err(|_| unsupported())?;
    let gid = gid.parse().map_err(|_| unsupported())?;
    Ok((uid, gid))
}

fn merge_env(image_env: &[String], overrides: &[String]) -> Result<Vec<String>, BundleError> {
    let mut merged: Vec<String> = Vec::new();
    for entry in image_env.iter().chain(overrides) {
        let Some((key, _)) = entry.split_once('=') else {
            return Err(BundleError::InvalidEnv(entry.clone()));
        };
        if key.is_empty() {
            return Err(BundleError::InvalidEnv(entry.clone()));
        }
        merged.retain(|existing| existing.split_once('=').map(|(k, _)| k) != Some(key));
        merged.push(entry.clone());
    }
    if !merged.iter().any(|entry| entry.starts_with("PATH=")) {
        merged.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
    }
    Ok(merged)
}

/// Checks what can be checked of `mounts` without looking at the host: every target is
/// absolute without `..` components and every tmpfs is bounded.
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), BundleError> {
    for mount in mounts {
        let target = mount.target();
        let path = Path::new(target);
        if !path.is_absolute() || path.components().any(|part| part == Component::ParentDir) {
            return Err(BundleError::InvalidMountTarget(target.to_owned()));
        }
        if let Mount::Tmpfs { size_bytes: 0, .. } = mount {
            return Err(BundleError::UnboundedTmpfs(target.to_owned()));
        }
    }
    Ok(())
}

/// The runtime spec's entry for `mount`; a bind's source must exist now.
fn mount_entry(mount: &Mount) -> Result<Value, BundleError> {
    match mount {
        Mount::Bind {
            source,
            target,
            read_only,
        } => {
            if !source.is_absolute() {
                return Err(BundleError::RelativeBindSource {
                    path: source.clone(),
                    target: target.clone(),
                });
            }
            // A dangling symlink counts as missing: libcontainer would fail to resolve it.
            if !matches!(source.try_exists(), Ok(true)) {
                return Err(BundleError::MissingBindSource {
                    path: source.clone(),
                    target: target.clone(),
                });
            }
            // `rro` makes mounts below the source read-only too, not only the top one.
            let access: &[&str] = if *read_only { &["ro", "rro"] } else { &["rw"] };
            let mut options = vec!["rbind"];
            options.extend_from_slice(access);
            options.extend_from_slice(&["nosuid", "nodev", "rprivate"]);
            Ok(json!({
                "destination": target,
                "type": "bind",
                "source": source,
                "options": options,
            }))
        }
        Mount::Tmpfs { target, size_bytes } => Ok(json!({
            "destination": target,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", format!("size={size_bytes}"), "mode=1777"],
        })),
    }
}

/// Builds the runtime spec for `options` on top of `image`.
pub fn runtime_spec(image: &PreparedImage, options: &BundleOptions) -> Result<Spec, BundleError> {
    validate_id(&options.id)?;
    if !options.cgroup_parent.split('/').all(is_safe_name) {
        return Err(BundleError::InvalidCgroupParent(
            options.cgroup_parent.clone(),
        ));
    }
    validate_mounts(&options.mounts)?;
    let mount_entries = options
        .mounts
        .iter()
        .map(mount_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let image_config = image.config.config().clone().unwrap_or_default();
    let args = match &options.command {
        Some(command) => command.clone(),
        None => {
            let mut args = image_config.entrypoint().clone().unwrap_or_default();
            args.extend(image_config.cmd().clone().unwrap_or_default());
            args
        }
    };
    if args.is_empty() {
        return Err(BundleError::NoCommand {
            image: image.path.clone(),
        });
    }
    let env = merge_env(
        &image_config.env().clone().unwrap_or_default(),
        &options.env,
    )?;
    let (uid, gid) = parse_user(image_config.user().as_deref().unwrap_or(""))?;
    let cwd = image_config
        .working_dir()
        .clone()
        .filter(|dir| dir.starts_with('/'))
        .unwrap_or_else(|| "/".to_owned());

    let mut spec = serde_json::to_value(Spec::default())
        .map_err(|error| BundleError::InvalidSpec(error.to_string()))?;
    spec["hostname"] = json!(options.id);
    spec["root"] = json!({ "path": "rootfs", "readonly": false });
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(env);
    spec["process"]["cwd"] = json!(cwd);
    spec["process"]["user"] = json!({ "uid": uid, "gid": gid });
    spec["process"]["noNewPrivileges"] = json!(true);
    match spec["mounts"].as_array_mut() {
        Some(mounts) => mounts.extend(mount_entries),
        None => spec["mounts"] = json!(mount_entries),
    }
    let linux = &mut spec["linux"];
    linux["cgroupsPath"] = json!(format!("/{}/{}", options.cgroup_parent, options.id));
    let mut resources = linux["resources"].take();
    if !resources.is_object() {
        resources = json!({});
    }
    if let Some(memory_bytes) = options.limits.memory_bytes {
        resources["memory"] = json!({ "limit": memory_bytes });
    }
    if let Some(cpu_millis) = options.limits.cpu_millis {
        let period_us: u64 = 100_000;
        resources["cpu"] = json!({ "quota": cpu_millis * period_us / 1000, "period": period_us });
    }
    if let Some(pids_max) = options.limits.pids_max {
        resources["pids"] = json!({ "limit": pids_max });
    }
    linux["resources"] = resources;
    if let Some(netns_path) = &options.netns_path {
        set_network_namespace(linux, netns_path);
    }
    if options.seccomp {
        linux["seccomp"] = seccomp_profile::default_profile();
    }
    let spec: Spec = serde_json::from_value(spec)
        .map_err(|error| BundleError::InvalidSpec(error.to_string()))?;
    Ok(spec)
}

fn set_network_namespace(linux: &mut Value, netns_path: &Path) {
    let entry = json!({ "type": "network", "path": netns_path });
    match linux["namespaces"].as_array_mut() {
        Some(namespaces) => {
            namespaces.retain(|namespace| namespace["type"] != "network");
            namespaces.push(entry);
        }
        None => linux["namespaces"] = json!([entry]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use oci_spec::image::ImageConfiguration;

    fn image(config: Value) -> PreparedImage {
        let config: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [] },
        }))
        .unwrap();
        PreparedImage {
            path: PathBuf::from("/images/test"),
            manifest_digest: None,
            config_digest: Digest::of_bytes(b"config"),
            config,
            layer_dirs: Vec::new(),
        }
    }

    fn options() -> BundleOptions {
        BundleOptions {
            id: "web-1".to_owned(),
            command: None,
            env: vec!["MODE=prod".to_owned()],
            limits: Limits {
                cpu_millis: Some(500),
                memory_bytes: Some(64 << 20),
                pids_max: Some(32),
            },
            cgroup_parent: "shoal".to_owned(),
            netns_path: Some(PathBuf::from("/run/netns/web-1")),
            seccomp: true,
            mounts: Vec::new(),
        }
    }

    /// The spec's mount entries after the runtime's defaults, as JSON.
    fn added_mounts(mounts: Vec<Mount>) -> Result<Vec<Value>, BundleError> {
        let image = image(json!({ "Cmd": ["x"] }));
        let defaults =
            serde_json::to_value(runtime_spec(&image, &options()).unwrap()).unwrap()["mounts"]
                .as_array()
                .unwrap()
                .len();
        let mut options = options();
        options.mounts = mounts;
        let spec = serde_json::to_value(runtime_spec(&image, &options)?).unwrap();
        let all = spec["mounts"].as_array().unwrap();
        Ok(all[defaults..].to_vec())
    }

    #[test]
    fn mounts_follow_the_runtime_defaults_with_their_options() {
        let host_dir = tempfile::tempdir().unwrap();
        let host_file = host_dir.path().join("key");
        std::fs::write(&host_file, b"secret").unwrap();
        let added = added_mounts(vec![
            Mount::Bind {
                source: host_dir.path().to_owned(),
                target: "/var/lib/data".to_owned(),
                read_only: false,
            },
            Mount::Bind {
                source: host_file.clone(),
                target: "/run/secrets/tls_key".to_owned(),
                read_only: true,
            },
            Mount::Tmpfs {
                target: "/scratch".to_owned(),
                size_bytes: 1 << 20,
            },
        ])
        .unwrap();
        assert_eq!(
            added,
            [
                json!({
                    "destination": "/var/lib/data",
                    "type": "bind",
                    "source": host_dir.path(),
                    "options": ["rbind", "rw", "nosuid", "nodev", "rprivate"],
                }),
                json!({
                    "destination": "/run/secrets/tls_key",
                    "type": "bind",
                    "source": host_file,
                    "options": ["rbind", "ro", "rro", "nosuid", "nodev", "rprivate"],
                }),
                json!({
                    "destination": "/scratch",
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": ["nosuid", "nodev", "size=1048576", "mode=1777"],
                }),
            ]
        );
        // The runtime's own mounts stay.
        let image = image(json!({ "Cmd": ["x"] }));
        let spec = serde_json::to_value(runtime_spec(&image, &options()).unwrap()).unwrap();
        let destinations: Vec<&str> = spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|mount| mount["destination"].as_str())
            .collect();
        assert!(destinations.contains(&"/proc"), "{destinations:?}");
        assert!(destinations.contains(&"/dev"), "{destinations:?}");
    }

    #[test]
    fn bad_mounts_are_refused_naming_the_target_or_source() {
        let tmpfs = |target: &str| Mount::Tmpfs {
            target: target.to_owned(),
            size_bytes: 4096,
        };
        for target in [
            "",
            "data",
            "./data",
            "/data/../etc",
            "/..",
            "../x",
            "/a/b/..",
        ] {
            assert_eq!(
                added_mounts(vec![tmpfs(target)]).unwrap_err(),
                BundleError::InvalidMountTarget(target.to_owned()),
                "{target:?}"
            );
        }
        // A bad target is refused before its source is looked at.
        let error = added_mounts(vec![Mount::Bind {
            source: PathBuf::from("/nonexistent/shoal"),
            target: "relative".to_owned(),
            read_only: true,
        }])
        .unwrap_err();
        assert_eq!(
            error,
            BundleError::InvalidMountTarget("relative".to_owned())
        );
        assert!(error.to_string().contains("\"relative\""), "{error}");

        let missing = PathBuf::from("/nonexistent/shoal/volume");
        let error = added_mounts(vec![Mount::Bind {
            source: missing.clone(),
            target: "/data".to_owned(),
            read_only: false,
        }])
        .unwrap_err();
        assert_eq!(
            error,
            BundleError::MissingBindSource {
                path: missing,
                target: "/data".to_owned()
            }
        );
        assert!(
            error.to_string().contains("/nonexistent/shoal/volume"),
            "{error}"
        );

        let dir = tempfile::tempdir().unwrap();
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
        assert!(matches!(
            added_mounts(vec![Mount::Bind {
                source: dangling,
                target: "/data".to_owned(),
                read_only: false,
            }]),
            Err(BundleError::MissingBindSource { .. })
        ));
        assert!(matches!(
            added_mounts(vec![Mount::Bind {
                source: PathBuf::from("relative/dir"),
                target: "/data".to_owned(),
                read_only: false,
            }]),
            Err(BundleError::RelativeBindSource { .. })
        ));
        assert_eq!(
            added_mounts(vec![Mount::Tmpfs {
                target: "/scratch".to_owned(),
                size_bytes: 0
            }])
            .unwrap_err(),
            BundleError::UnboundedTmpfs("/scratch".to_owned())
        );
        // Plain absolute targets, also with `.` parts, pass.
        added_mounts(vec![tmpfs("/a/./b"), tmpfs("/tmp/")]).unwrap();
    }

    #[test]
    fn spec_takes_command_env_user_and_limits() {
        let image = image(json!({
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo hi"],
            "Env": ["MODE=dev", "PATH=/bin"],
            "User": "1000:1000",
            "WorkingDir": "/srv",
        }));
        let spec = serde_json::to_value(runtime_spec(&image, &options()).unwrap()).unwrap();
        assert_eq!(spec["process"]["args"], json!(["/bin/sh", "-c", "echo hi"]));
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "MODE=prod"]));
        assert_eq!(spec["process"]["user"]["uid"], 1000);
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(spec["linux"]["cgroupsPath"], "/shoal/web-1");
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 32);
        let namespaces = spec["linux"]["namespaces"].as_array().unwrap();
        let network: Vec<_> = namespaces
            .iter()
            .filter(|namespace| namespace["type"] == "network")
            .collect();
        assert_eq!(
            network,
            [&json!({ "type": "network", "path": "/run/netns/web-1" })]
        );
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    }

    #[test]
    fn command_override_replaces_entrypoint_and_cmd() {
        let image = image(json!({ "Entrypoint": ["/bin/a"], "Cmd": ["b"] }));
        let mut options = options();
        options.command = Some(vec!["/bin/true".to_owned()]);
        let spec = runtime_spec(&image, &options).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_ref().unwrap(),
            &["/bin/true"]
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let no_command = image(json!({}));
        assert!(matches!(
            runtime_spec(&no_command, &options()),
            Err(BundleError::NoCommand { .. })
        ));
        let named_user = image(json!({ "Cmd": ["x"], "User": "nobody" }));
        assert_eq!(
            runtime_spec(&named_user, &options()).unwrap_err(),
            BundleError::UnsupportedUser("nobody".to_owned())
        );
        let runnable = image(json!({ "Cmd": ["x"] }));
        for id in ["", "../x", "A", "-x", &"a".repeat(65), "a/b"] {
            let mut options = options();
            options.id = id.to_owned();
            assert_eq!(
                runtime_spec(&runnable, &options).unwrap_err(),
                BundleError::InvalidId(id.to_owned())
            );
        }
        let mut bad_env = options();
        bad_env.env = vec!["NOEQUALS".to_owned()];
        assert_eq!(
            runtime_spec(&runnable, &bad_env).unwrap_err(),
            BundleError::InvalidEnv("NOEQUALS".to_owned())
        );
        let mut bad_parent = options();
        bad_parent.cgroup_parent = "../etc".to_owned();
        assert!(matches!(
            runtime_spec(&runnable, &bad_parent),
            Err(BundleError::InvalidCgroupParent(_))
        ));
    }
}
