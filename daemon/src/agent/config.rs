//! The daemon's TOML configuration: the structs, their defaults, loading with errors that
//! name the key and the file, semantic checks, and the key list and example derived from
//! the structs (the NixOS module's option drift test compares against `config_keys()`).
//!
//! The key set is a contract with the NixOS module (`services.shoal.settings`); every
//! table denies unknown keys.
//!
//! `Config::load_tls` is the one check of the TLS files (they chain to the CA, are valid now,
//! the key matches, the certificate names `node_name`): the daemon runs it at start and
//! `shoal daemon --check-config` runs it too, so the check cannot say OK to what the daemon
//! then refuses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_crdt::{NodeId, Subnet};

use crate::sync::{TlsError, TlsMaterial};

/// Largest accepted sync body; bigger values are refused so a typo cannot disable the bound.
pub const BODY_BYTES_LIMIT: usize = 1 << 30;

/// Largest config file read, so a wrong path (a device, a huge file) fails fast.
const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must equal the node id in its certificate.
    pub node_name: NodeId,
    /// Directory of the redb database, the API socket and later the container state.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// UDP address of the HTTP/3 sync endpoint.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Address peers use to reach us; defaults to `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// Seed peers contacted until members are learnt from node metadata.
    #[serde(default)]
    pub peers: Vec<SocketAddr>,
    /// Log line format.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Certificate files (required).
    pub tls: TlsFiles,
    /// Sync timing and limits.
    #[serde(default)]
    pub sync: SyncSettings,
    /// Local operator API.
    #[serde(default)]
    pub api: ApiSettings,
    /// Resources this node offers; detected from the host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<CapacitySettings>,
    /// Running this node's share of the services' containers.
    #[serde(default)]
    pub containers: ContainerSettings,
    /// This node's labels (`labels = { zone = "eu-1", role = "edge" }`), published in its
    /// metadata; services select nodes by them (`constraints`, `spread`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The Prometheus metrics endpoint; off unless `listen` is set.
    #[serde(default)]
    pub metrics: MetricsSettings,
    /// SWIM membership: how quickly a failed node is found.
    #[serde(default)]
    pub membership: MembershipSettings,
}

/// SWIM failure detection (`[membership]`). A failed node is counted down after about
/// `probe_period_ms + probe_timeout_ms + suspect_to_down_ms`; each node sends about two
/// small packets per `probe_period_ms` whatever the fleet's size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSettings {
    /// One member is probed per period.
    pub probe_period_ms: u64,
    /// A probe unanswered this long is retried through other members.
    pub probe_timeout_ms: u64,
    /// A suspected member that does not refute it within this is down.
    pub suspect_to_down_ms: u64,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            probe_period_ms: 1_000,
            probe_timeout_ms: 500,
            suspect_to_down_ms: 4_000,
        }
    }
}

impl MembershipSettings {
    /// About how long a failed node stays counted live.
    pub fn detection_ms(&self) -> u64 {
        self.probe_period_ms
            .saturating_add(self.probe_timeout_ms)
            .saturating_add(self.suspect_to_down_ms)
    }
}

/// The Prometheus metrics endpoint (`GET /metrics`, plain HTTP).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// TCP address to serve on, e.g. "127.0.0.1:9464"; absent: no endpoint. It is plain
    /// HTTP without authentication: keep it on loopback or a management network.
    #[serde(
        deserialize_with = "socket_address_or_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
}

/// An optional `IP:port`, refused with a message that says what is expected.
fn socket_address_or_none<'de, D>(deserializer: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address and port, like \"127.0.0.1:9464\" or \"[::1]:9464\""
        ))
    })
}

/// The container runtime and the reconcile loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerSettings {
    /// Run containers at all; when false the node still syncs state but places nothing.
    pub enabled: bool,
    /// Runtime state (bundles, logs, libcontainer state); default `<state_dir>/containers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<PathBuf>,
    /// How often the loop compares placement with what runs (it also runs on every change).
    pub reconcile_interval_ms: u64,
    /// Time between SIGTERM and SIGKILL when a container is stopped.
    pub stop_grace_ms: u64,
    /// Each of a container's stdout and stderr keeps at most twice this (one rotation).
    pub log_bytes_max: u64,
    /// This node's container subnet, e.g. "10.88.1.0/24"; containers get addresses from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
    /// The node bridge that holds the subnet's gateway (used only with `subnet`).
    pub bridge: String,
    /// Keep shoal's own nftables table (`ip shoal`, used only with `subnet`): published
    /// ports and masquerade for containers' traffic leaving the cluster. Nothing else of
    /// the host's firewall is touched. When false, no table is made: published ports and
    /// egress do not work.
    pub firewall: bool,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            runtime_dir: None,
            reconcile_interval_ms: 1000,
            stop_grace_ms: 10_000,
            log_bytes_max: 8 * 1024 * 1024,
            subnet: None,
            bridge: "shoal0".to_string(),
            firewall: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// PEM files of the cluster CA and this node's certificate and key. A relative path is
/// resolved against `$CREDENTIALS_DIRECTORY` when systemd set it (`LoadCredential=`, as the
/// NixOS module does), otherwise against the directory of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Sync timing and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    pub interval_ms: u64,
    pub jitter_ms: u64,
    pub fanout: usize,
    pub heartbeat_interval_ms: u64,
    pub down_after_ms: u64,
    pub evict_after_ms: u64,
    pub max_clock_drift_ms: u64,
    pub body_bytes_max: usize,
    pub request_timeout_ms: u64,
    pub eager_push: bool,
    /// Live members a local change is pushed to, and each member forwards a change new to it
    /// to; absent: ln N + 3 for N members (`sync::membership::automatic_push_fanout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_fanout: Option<usize>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            jitter_ms: 200,
            fanout: 1,
            heartbeat_interval_ms: 30_000,
            down_after_ms: 90_000,
            evict_after_ms: 86_400_000,
            max_clock_drift_ms: 1000,
            body_bytes_max: 8 * 1024 * 1024,
            request_timeout_ms: 5000,
            eager_push: true,
            push_fanout: None,
        }
    }
}

/// Local operator API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSettings {
    /// Unix socket path; default `<state_dir>/shoal.sock`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// Resources this node offers to containers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacitySettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// Why a configuration was refused. Every message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is {size} bytes, more than the {max} allowed")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// Why the TLS files a config names cannot be used by the daemon.
#[derive(Debug, thiserror::Error)]
pub enum TlsCheckError {
    #[error("tls files (tls.ca_file {ca}, tls.cert_file {cert}, tls.key_file {key}): {source}")]
    Load {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
    #[error(
        "node_name {configured} does not match the node id {certified} in tls.cert_file {cert}"
    )]
    NodeMismatch {
        configured: String,
        certified: String,
        cert: PathBuf,
    },
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/shoal")
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}

impl Config {
    /// Reads, parses and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > CONFIG_FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size,
                max: CONFIG_FILE_BYTES_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        let mut config = Config::parse(&text, path)?;
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        config.resolve_tls_paths(path, credentials.as_deref());
        Ok(config)
    }

    /// Makes the relative `tls.*` paths absolute: under `credentials` (systemd's
    /// `$CREDENTIALS_DIRECTORY`) when given, else under the config file's directory.
    pub fn resolve_tls_paths(&mut self, config_path: &Path, credentials: Option<&Path>) {
        let base = match credentials {
            Some(directory) if !directory.as_os_str().is_empty() => directory.to_path_buf(),
            _ => config_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        for file in [
            &mut self.tls.ca_file,
            &mut self.tls.cert_file,
            &mut self.tls.key_file,
        ] {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }

    /// Parses and checks `text`; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(&error),
        })?;
        config.check(path)?;
        Ok(config)
    }

    /// Semantic checks serde cannot express.
    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(invalid(
                "advertise",
                format!(
                    "required when listen ({}) is an unspecified address",
                    self.listen
                ),
            ));
        }
        if let Some(advertise) = self.advertise
            && (advertise.ip().is_unspecified() || advertise.port() == 0)
        {
            return Err(invalid(
                "advertise",
                format!("{advertise} is not an address peers can reach"),
            ));
        }
        for (key, value) in [
            ("tls.ca_file", &self.tls.ca_file),
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
        ] {
            if value.as_os_str().is_empty() {
                return Err(invalid(key, "must not be empty".to_string()));
            }
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty".to_string()));
        }
        let sync = &self.sync;
        for (key, value) in [
            ("sync.interval_ms", sync.interval_ms),
            ("sync.heartbeat_interval_ms", sync.heartbeat_interval_ms),
            ("sync.down_after_ms", sync.down_after_ms),
            ("sync.evict_after_ms", sync.evict_after_ms),
            ("sync.max_clock_drift_ms", sync.max_clock_drift_ms),
            ("sync.request_timeout_ms", sync.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".to_string()));
            }
        }
        let membership = &self.membership;
        for (key, value) in [
            ("membership.probe_period_ms", membership.probe_period_ms),
            ("membership.probe_timeout_ms", membership.probe_timeout_ms),
            (
                "membership.suspect_to_down_ms",
                membership.suspect_to_down_ms,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0".to_string()));
            }
        }
        // Bounds of one key relative to another, each refused naming both.
        for (holds, key, rule, other_key, other) in [
            (
                membership.probe_timeout_ms < membership.probe_period_ms,
                "membership.probe_timeout_ms",
                "less than",
                "membership.probe_period_ms",
                membership.probe_period_ms,
            ),
            (
                membership.suspect_to_down_ms >= membership.probe_period_ms,
                "membership.suspect_to_down_ms",
                "at least",
                "membership.probe_period_ms",
                membership.probe_period_ms,
            ),
            (
                sync.down_after_ms > sync.heartbeat_interval_ms,
                "sync.down_after_ms",
                "greater than",
                "sync.heartbeat_interval_ms",
                sync.heartbeat_interval_ms,
            ),
            (
                sync.evict_after_ms >= sync.down_after_ms,
                "sync.evict_after_ms",
                "at least",
                "sync.down_after_ms",
                sync.down_after_ms,
            ),
        ] {
            if !holds {
                return Err(invalid(
                    key,
                    format!("must be {rule} {other_key} ({other})"),
                ));
            }
        }
        if sync.fanout == 0 {
            return Err(invalid("sync.fanout", "must be at least 1".to_string()));
        }
        if sync.push_fanout == Some(0) {
            return Err(invalid(
                "sync.push_fanout",
                "must be at least 1 (leave it out for ln N + 3)".to_string(),
            ));
        }
        if sync.body_bytes_max < 4096 || sync.body_bytes_max > BODY_BYTES_LIMIT {
            return Err(invalid(
                "sync.body_bytes_max",
                format!("must be between 4096 and {BODY_BYTES_LIMIT}"),
            ));
        }
        let containers = &self.containers;
        if containers.reconcile_interval_ms == 0 {
            return Err(invalid(
                "containers.reconcile_interval_ms",
                "must be greater than 0".to_string(),
            ));
        }
        if containers.log_bytes_max < 4096 {
            return Err(invalid(
                "containers.log_bytes_max",
                "must be at least 4096".to_string(),
            ));
        }
        if containers.stop_grace_ms > 600_000 {
            return Err(invalid(
                "containers.stop_grace_ms",
                "must be at most 600000 (10 minutes)".to_string(),
            ));
        }
        let bridge_valid = (1..=15).contains(&containers.bridge.len())
            && containers
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && containers.bridge != "."
            && containers.bridge != "..";
        if !bridge_valid {
            return Err(invalid(
                "containers.bridge",
                format!(
                    "{:?} must be 1 to 15 characters of a-z, A-Z, 0-9, '-', '_' or '.'",
                    containers.bridge
                ),
            ));
        }
        if let Err(reason) = shoal_crdt::constraints::check_labels(&self.labels) {
            return Err(invalid("labels", reason.to_string()));
        }
        if let Some(dir) = &containers.runtime_dir
            && !dir.is_absolute()
        {
            return Err(invalid(
                "containers.runtime_dir",
                format!("{} must be an absolute path", dir.display()),
            ));
        }
        if let Some(capacity) = &self.capacity {
            if capacity.cpu_millis == Some(0) {
                return Err(invalid(
                    "capacity.cpu_millis",
                    "must be greater than 0".to_string(),
                ));
            }
            if capacity.memory_bytes == Some(0) {
                return Err(invalid(
                    "capacity.memory_bytes",
                    "must be greater than 0".to_string(),
                ));
            }
        }
        Ok(())
    }

    /// Loads the TLS files and checks them as the daemon needs them: the certificate chains
    /// to the CA and is valid now, the key is its key, and it names this config's `node_name`.
    pub fn load_tls(&self) -> Result<TlsMaterial, TlsCheckError> {
        let tls = TlsMaterial::load(&self.tls.ca_file, &self.tls.cert_file, &self.tls.key_file)
            .map_err(|source| TlsCheckError::Load {
                ca: self.tls.ca_file.clone(),
                cert: self.tls.cert_file.clone(),
                key: self.tls.key_file.clone(),
                source: Box::new(source),
            })?;
        if tls.node_id() != &self.node_name {
            return Err(TlsCheckError::NodeMismatch {
                configured: self.node_name.to_string(),
                certified: tls.node_id().to_string(),
                cert: self.tls.cert_file.clone(),
            });
        }
        Ok(tls)
    }

    /// The TLS files this process cannot open (missing, or not readable by this user), with
    /// why. `--check-config` cannot check those: systemd credentials exist only inside the
    /// unit, and a key is often readable by the daemon's user only.
    pub fn unopenable_tls_files(&self) -> Vec<(PathBuf, std::io::Error)> {
        [&self.tls.ca_file, &self.tls.cert_file, &self.tls.key_file]
            .into_iter()
            .filter_map(|path| match std::fs::File::open(path) {
                Ok(_) => None,
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ) =>
                {
                    Some((path.clone(), error))
                }
                // Anything else is the daemon's problem too: `load_tls` reports it.
                Err(_) => None,
            })
            .collect()
    }

    /// The address peers should use to reach this node.
    pub fn advertised_address(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// The Unix socket of the local API.
    pub fn api_socket(&self) -> PathBuf {
        self.api
            .socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("shoal.sock"))
    }

    /// The container runtime's directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.containers
            .runtime_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("containers"))
    }

    /// The image layer cache.
    pub fn image_cache_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    /// Named volumes, one directory each.
    pub fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    /// The redb database file.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("state.redb")
    }

    /// A configuration with every key set, used for the example and the key list.
    pub fn example() -> Config {
        Config {
            node_name: "node-a".parse().expect("valid example node id"),
            state_dir: default_state_dir(),
            listen: default_listen(),
            advertise: Some(SocketAddr::from(([192, 0, 2, 10], 7443))),
            peers: vec![SocketAddr::from(([192, 0, 2, 11], 7443))],
            log_format: LogFormat::Text,
            tls: TlsFiles {
                ca_file: PathBuf::from("/etc/shoal/ca.pem"),
                cert_file: PathBuf::from("/etc/shoal/node.pem"),
                key_file: PathBuf::from("/etc/shoal/node.key"),
            },
            sync: SyncSettings {
                push_fanout: Some(7),
                ..SyncSettings::default()
            },
            api: ApiSettings {
                socket: Some(PathBuf::from("/var/lib/shoal/shoal.sock")),
            },
            capacity: Some(CapacitySettings {
                cpu_millis: Some(4000),
                memory_bytes: Some(8 * 1024 * 1024 * 1024),
            }),
            containers: ContainerSettings {
                runtime_dir: Some(PathBuf::from("/var/lib/shoal/containers")),
                subnet: Some("10.88.1.0/24".parse().expect("valid example subnet")),
                ..ContainerSettings::default()
            },
            labels: [
                ("zone".to_owned(), "eu-1".to_owned()),
                ("role".to_owned(), "edge".to_owned()),
            ]
            .into(),
            metrics: MetricsSettings {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            },
            membership: MembershipSettings::default(),
        }
    }
}

/// Turns a toml/serde error into one line-oriented message that keeps the key and position.
fn describe_toml_error(error: &toml::de::Error) -> String {
    // toml's Display already quotes the offending line (and so the key); keep it whole but
    // drop the trailing newline so the message composes.
    error.to_string().trim_end().to_string()
}

/// Every config key, dotted, sorted; derived by serialising `Config::example()`, which sets
/// every optional key, so adding a field to a struct adds it here.
pub fn config_keys() -> Vec<String> {
    let value = toml::Value::try_from(Config::example()).expect("the example config serialises");
    let mut keys = Vec::new();
    collect_keys(&value, "", &mut keys);
    keys.sort();
    keys
}

fn collect_keys(value: &toml::Value, prefix: &str, keys: &mut Vec<String>) {
    if let toml::Value::Table(table) = value {
        for (key, child) in table {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match child {
                // `labels` is a free map of names: the key is the map, not its entries.
                toml::Value::Table(_) if dotted != "labels" => collect_keys(child, &dotted, keys),
                _ => keys.push(dotted),
            }
        }
    }
}

/// A commented example configuration; it parses back to `Config::example()`.
pub fn example_config_text() -> String {
    let body = toml::to_string_pretty(&Config::example()).expect("the example config serialises");
    let mut text = String::from(
        "# shoal daemon configuration (TOML). Unknown keys are errors.\n\
         # Every key but node_name and [tls] has a default; see `shoal daemon --print-config-keys`.\n\
         # node_name must equal the node id in the certificate (tls.cert_file).\n\
         # Relative [tls] paths are under $CREDENTIALS_DIRECTORY (systemd LoadCredential=),\n\
         # or else under this file's directory.\n\
         # advertise is required when listen is 0.0.0.0 or [::].\n\
         # [sync] intervals are milliseconds; body_bytes_max bounds every sync body;\n\
         # push_fanout left out is ln N + 3 for N members (7 for 48).\n\
         # [capacity] is optional: without it the host's CPUs and memory are offered.\n\
         # [metrics] is off unless listen is set: plain HTTP GET /metrics, keep it private.\n\n",
    );
    text.push_str(&body);
    text
}

/// The host's CPUs (in millis) and memory (bytes), used when `[capacity]` leaves them out.
pub fn detect_capacity() -> (u32, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu_millis = u32::try_from(cpus.saturating_mul(1000)).unwrap_or(u32::MAX);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| kib.saturating_mul(1024))
        .unwrap_or(1 << 30);
    (cpu_millis, memory_bytes)
}

impl Config {
    /// The capacity this node advertises: configured values, else the host's.
    pub fn effective_capacity(&self) -> (u32, u64) {
        let (cpu, memory) = detect_capacity();
        let configured = self.capacity.clone().unwrap_or_default();
        (
            configured.cpu_millis.unwrap_or(cpu),
            configured.memory_bytes.unwrap_or(memory),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
node_name = "node-a"
[tls]
ca_file = "/etc/shoal/ca.pem"
cert_file = "/etc/shoal/node.pem"
key_file = "/etc/shoal/node.key"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/shoal/shoal.toml"))
    }

    fn check_error(text: &str, expected: &[&str]) {
        let message = parse(text).expect_err("config must be refused").to_string();
        for fragment in expected {
            assert!(
                message.contains(fragment),
                "error {message:?} lacks {fragment:?}"
            );
        }
    }

    #[test]
    fn relative_tls_paths_resolve_under_the_credentials_directory_or_the_config_file() {
        let text = "node_name = \"node-a\"\n[tls]\nca_file = \"ca.pem\"\ncert_file = \"node.pem\"\nkey_file = \"/abs/node.key\"\n";
        let path = Path::new("/etc/shoal/shoal.toml");
        let mut config = Config::parse(text, path).unwrap();
        config.resolve_tls_paths(path, Some(Path::new("/run/credentials/shoal.service")));
        assert_eq!(
            config.tls.ca_file,
            Path::new("/run/credentials/shoal.service/ca.pem")
        );
        assert_eq!(
            config.tls.cert_file,
            Path::new("/run/credentials/shoal.service/node.pem")
        );
        assert_eq!(
            config.tls.key_file,
            Path::new("/abs/node.key"),
            "absolute stays"
        );
        let mut config = Config::parse(text, path).unwrap();
        config.resolve_tls_paths(path, None);
        assert_eq!(config.tls.ca_file, Path::new("/etc/shoal/ca.pem"));
        let mut config = Config::parse(text, path).unwrap();
        config.resolve_tls_paths(path, Some(Path::new("")));
        assert_eq!(config.tls.cert_file, Path::new("/etc/shoal/node.pem"));
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.node_name.as_ref(), "node-a");
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/shoal"));
        assert_eq!(config.listen, "127.0.0.1:7443".parse().unwrap());
        assert_eq!(config.advertised_address(), config.listen);
        assert_eq!(config.sync, SyncSettings::default());
        assert_eq!(config.sync.interval_ms, 1000);
        assert_eq!(config.sync.body_bytes_max, 8_388_608);
        assert_eq!(
            config.api_socket(),
            PathBuf::from("/var/lib/shoal/shoal.sock")
        );
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn example_text_parses_back_to_the_example() {
        assert_eq!(parse(&example_config_text()).unwrap(), Config::example());
    }

    #[test]
    fn keys_cover_every_documented_key() {
        let keys = config_keys();
        for key in [
            "node_name",
            "state_dir",
            "listen",
            "advertise",
            "peers",
            "log_format",
            "tls.ca_file",
            "tls.cert_file",
            "tls.key_file",
            "sync.interval_ms",
            "sync.jitter_ms",
            "sync.fanout",
            "sync.heartbeat_interval_ms",
            "sync.down_after_ms",
            "sync.evict_after_ms",
            "sync.max_clock_drift_ms",
            "sync.body_bytes_max",
            "sync.request_timeout_ms",
            "sync.eager_push",
            "sync.push_fanout",
            "membership.probe_period_ms",
            "membership.probe_timeout_ms",
            "membership.suspect_to_down_ms",
            "api.socket",
            "capacity.cpu_millis",
            "capacity.memory_bytes",
            "containers.enabled",
            "containers.runtime_dir",
            "containers.reconcile_interval_ms",
            "containers.stop_grace_ms",
            "containers.log_bytes_max",
            "containers.subnet",
            "containers.bridge",
            "containers.firewall",
            "labels",
            "metrics.listen",
        ] {
            assert!(keys.contains(&key.to_string()), "missing {key}");
        }
        assert_eq!(keys.len(), 36, "{keys:?}");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn refusals_name_the_key_and_the_file() {
        check_error(
            &format!("{MINIMAL}\n[sync]\nintervall_ms = 5\n"),
            &["/etc/shoal/shoal.toml", "intervall_ms"],
        );
        check_error(
            "node_name = \"node-a\"\n",
            &["/etc/shoal/shoal.toml", "tls"],
        );
        check_error(
            &format!("listen = \"not-an-address\"\n{MINIMAL}"),
            &["/etc/shoal/shoal.toml", "listen"],
        );
        check_error(
            &MINIMAL.replace("node-a", "Node_A"),
            &["/etc/shoal/shoal.toml", "node_name"],
        );
        check_error(
            &format!("listen = \"0.0.0.0:7443\"\n{MINIMAL}"),
            &["/etc/shoal/shoal.toml", "advertise"],
        );
        check_error(
            &format!("{MINIMAL}\n[sync]\nfanout = 0\n"),
            &["/etc/shoal/shoal.toml", "sync.fanout"],
        );
        check_error(
            &format!("{MINIMAL}\n[sync]\npush_fanout = 0\n"),
            &["/etc/shoal/shoal.toml", "sync.push_fanout", "ln N + 3"],
        );
        check_error(
            &format!("{MINIMAL}\n[membership]\nprobe_period_ms = 500\nprobe_timeout_ms = 500\n"),
            &[
                "membership.probe_timeout_ms",
                "less than membership.probe_period_ms (500)",
            ],
        );
        check_error(
            &format!("{MINIMAL}\n[membership]\nsuspect_to_down_ms = 10\n"),
            &[
                "membership.suspect_to_down_ms",
                "at least membership.probe_period_ms (1000)",
            ],
        );
        check_error(
            &format!("{MINIMAL}\n[membership]\nprobe_period_ms = 0\n"),
            &["membership.probe_period_ms", "greater than 0"],
        );
        check_error(
            &format!("{MINIMAL}\n[sync]\ndown_after_ms = 500\n"),
            &["sync.down_after_ms"],
        );
        check_error(
            &format!("{MINIMAL}\n[sync]\nbody_bytes_max = 10\n"),
            &["sync.body_bytes_max"],
        );
        check_error(
            &format!("{MINIMAL}\nlog_format = \"xml\"\n"),
            &["log_format"],
        );
        check_error(
            &format!("{MINIMAL}\n[containers]\nsubnet = \"10.88.1.1/24\"\n"),
            &["/etc/shoal/shoal.toml", "subnet", "host bits"],
        );
        check_error(
            &format!("{MINIMAL}\n[containers]\nreconcile_interval_ms = 0\n"),
            &["containers.reconcile_interval_ms"],
        );
        check_error(
            &format!("{MINIMAL}\n[containers]\nruntime = \"runc\"\n"),
            &["/etc/shoal/shoal.toml", "runtime"],
        );
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        assert_eq!(parse(MINIMAL).unwrap().metrics.listen, None);
        let config = parse(&format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        check_error(
            &format!("{MINIMAL}\n[metrics]\nlisten = \"localhost:9464\"\n"),
            &[
                "/etc/shoal/shoal.toml",
                "listen",
                "\"localhost:9464\" is not an IP address and port",
            ],
        );
        check_error(
            &format!("{MINIMAL}\n[metrics]\nport = 9464\n"),
            &["/etc/shoal/shoal.toml", "port"],
        );
    }

    #[test]
    fn unspecified_listen_with_advertise_is_accepted() {
        let config = parse(&format!(
            "listen = \"0.0.0.0:7443\"\nadvertise = \"192.0.2.1:7443\"\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(
            config.advertised_address(),
            "192.0.2.1:7443".parse().unwrap()
        );
    }

    #[test]
    fn detected_capacity_is_positive() {
        let (cpu, memory) = detect_capacity();
        assert!(cpu >= 1000);
        assert!(memory > 0);
    }
}
