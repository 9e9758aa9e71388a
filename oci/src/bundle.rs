//! Generates a container's OCI runtime bundle (`config.json`) from the image config and the
//! service's command, environment, limits and optional network namespace.

use std::path::{Path, PathBuf};

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

/// Builds the runtime spec for `options` on top of `image`.
pub fn runtime_spec(image: &PreparedImage, options: &BundleOptions) -> Result<Spec, BundleError> {
    validate_id(&options.id)?;
    if !options.cgroup_parent.split('/').all(is_safe_name) {
        return Err(BundleError::InvalidCgroupParent(
            options.cgroup_parent.clone(),
        ));
    }
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
        }
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
