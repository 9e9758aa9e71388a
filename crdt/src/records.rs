//! The typed records stored in the cluster state: service specs, container
//! records, node metadata, subnets and resource kinds. TOML-friendly serde.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uhlc::Timestamp;

use crate::constraints::{Constraint, Mode, check_label};
use crate::drain::{Drain, DrainError};
use crate::health::HealthCheck;
use crate::rollout::UpdatePolicy;
use crate::workload::{
    HostPort, PortMapping, Publish, TmpfsMount, VolumeMount, WorkloadError, check_host_path,
    check_name, secret_target,
};
use crate::{ContainerId, NodeId, ServiceName};

/// A service spec field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid field `{field}`: {reason}")]
    Field { field: String, reason: String },
    #[error("spec encodes to {bytes} bytes, more than the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What to do when a container exits.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

/// Limits for one container of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub pids_max: u32,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_millis: 100,
            memory_bytes: 64 * 1024 * 1024,
            pids_max: 256,
        }
    }
}

fn default_replicas() -> u32 {
    1
}

/// Upper bounds that keep one spec small on the wire and in memory.
pub const SPEC_REPLICAS_MAX: u32 = 10_000;
pub const SPEC_STRING_BYTES_MAX: usize = 4096;
pub const SPEC_LIST_LEN_MAX: usize = 256;
pub const SPEC_MEMORY_BYTES_MIN: u64 = 1024 * 1024;
/// Largest encoding (the JSON text a spec travels and is stored as) of one spec a node
/// writes. The field bounds alone allow about 10 MiB; a real spec is a few KiB.
pub const SPEC_ENCODED_BYTES_MAX: usize = 256 * 1024;

/// The desired state of a service: what to run and how many.
// `PartialEq` (below) is the derive's relation, every field compared, only in another order,
// so the derived `Hash` agrees with it.
#[allow(clippy::derived_hash_with_manual_eq)]
#[derive(Debug, Clone, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Path to an OCI layout directory, an oci-archive or a docker-archive.
    pub image: String,
    /// "sha256:<64 hex>" when given.
    #[serde(default)]
    pub image_digest: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Published ports, `[host_ip:]host_port:container_port[/tcp|/udp]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `host_path:target[:ro]` (bind) or `name:target[:ro]` (named volume).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// `target[:size=N[k|m|g]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<String>,
    /// Absolute host paths of `KEY=VALUE` files, read on the node at container start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_files: Vec<String>,
    /// name -> absolute host path, mounted read-only at `/run/secrets/<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Publish::is_default")]
    pub publish: Publish,
    /// `replicated` (default: `replicas` of them) or `global` (one per eligible node).
    #[serde(default, skip_serializing_if = "Mode::is_replicated")]
    pub mode: Mode,
    /// `LABEL == VALUE`, `LABEL != VALUE`, `LABEL in (A, B)`, `LABEL not in (A, B)`: all must
    /// hold on a node for it to run a replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread replicas evenly over the values of this node label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
    /// Probed on the node that runs each container; see `crate::health`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<HealthCheck>>,
    /// How a new version replaces the running replicas; see `crate::rollout`.
    #[serde(default, skip_serializing_if = "UpdatePolicy::is_default")]
    pub update: UpdatePolicy,
}

/// Field by field, as a derive would, but the numbers first and an empty list or map without
/// walking it: a peer's record is compared with the held one version by version
/// (`record_check`), and most of a spec's lists are empty.
impl PartialEq for ServiceSpec {
    fn eq(&self, other: &Self) -> bool {
        // Every field named, so that one added cannot be left out of the comparison.
        let ServiceSpec {
            image,
            image_digest,
            command,
            env,
            replicas,
            resources,
            restart,
            ports,
            volumes,
            tmpfs,
            env_files,
            secrets,
            publish,
            mode,
            constraints,
            spread,
            health,
            update,
        } = self;
        fn same_list(a: &[String], b: &[String]) -> bool {
            a.len() == b.len() && (a.is_empty() || a == b)
        }
        fn same_map(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> bool {
            a.len() == b.len() && (a.is_empty() || a == b)
        }
        *replicas == other.replicas
            && *resources == other.resources
            && *restart == other.restart
            && *publish == other.publish
            && *mode == other.mode
            && *update == other.update
            && *image == other.image
            && *image_digest == other.image_digest
            && same_list(command, &other.command)
            && same_map(env, &other.env)
            && same_list(ports, &other.ports)
            && same_list(volumes, &other.volumes)
            && same_list(tmpfs, &other.tmpfs)
            && same_list(env_files, &other.env_files)
            && same_map(secrets, &other.secrets)
            && same_list(constraints, &other.constraints)
            && *spread == other.spread
            && *health == other.health
    }
}

impl ServiceSpec {
    /// A spec with defaults for everything but the image.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_digest: None,
            command: Vec::new(),
            env: BTreeMap::new(),
            replicas: default_replicas(),
            resources: Resources::default(),
            restart: RestartPolicy::default(),
            ports: Vec::new(),
            volumes: Vec::new(),
            tmpfs: Vec::new(),
            env_files: Vec::new(),
            secrets: BTreeMap::new(),
            publish: Publish::default(),
            mode: Mode::default(),
            constraints: Vec::new(),
            spread: None,
            health: None,
            update: UpdatePolicy::default(),
        }
    }

    /// What the spec runs: the spec without its replica count and update policy. Two specs
    /// with one workload run the same containers (a change of only those replaces nothing).
    pub fn workload(&self) -> ServiceSpec {
        ServiceSpec {
            replicas: 0,
            update: UpdatePolicy::default(),
            ..self.clone()
        }
    }

    /// The placement constraints. Specs in a state were validated, so this only fails on a
    /// spec that was never checked.
    pub fn placement_constraints(&self) -> Result<Vec<Constraint>, SpecError> {
        indexed("constraints", &self.constraints, |text| {
            text.parse::<Constraint>()
        })
    }

    /// The published ports. Specs in a state were validated, so this only fails on a
    /// spec that was never checked.
    pub fn port_mappings(&self) -> Result<Vec<PortMapping>, SpecError> {
        indexed("ports", &self.ports, |text| text.parse::<PortMapping>())
    }

    /// Ports this service takes on a node that runs one of its replicas (host mode).
    pub fn host_ports(&self) -> Vec<HostPort> {
        self.port_mappings()
            .unwrap_or_default()
            .iter()
            .map(PortMapping::host_port_key)
            .collect()
    }

    pub fn volume_mounts(&self) -> Result<Vec<VolumeMount>, SpecError> {
        indexed("volumes", &self.volumes, |text| text.parse::<VolumeMount>())
    }

    pub fn tmpfs_mounts(&self) -> Result<Vec<TmpfsMount>, SpecError> {
        indexed("tmpfs", &self.tmpfs, |text| text.parse::<TmpfsMount>())
    }

    fn validate_workload(&self) -> Result<(), SpecError> {
        // Most specs list none of what `validate_listed` checks; its checks would walk empty
        // lists. Every field is named, so one added is placed on one side or the other.
        let ServiceSpec {
            image: _,
            image_digest: _,
            command: _,
            env: _,
            replicas: _,
            resources: _,
            restart: _,
            publish: _,
            mode: _,
            update: _,
            ports,
            volumes,
            tmpfs,
            env_files,
            secrets,
            constraints,
            spread,
            health,
        } = self;
        let listed = !ports.is_empty()
            || !volumes.is_empty()
            || !tmpfs.is_empty()
            || !env_files.is_empty()
            || !secrets.is_empty()
            || !constraints.is_empty()
            || spread.is_some()
            || health.is_some();
        if listed {
            self.validate_listed()?;
        }
        self.update
            .validate(self.health.as_ref().map(|health| health.interval_ms))
            .map_err(|error| field_error(format!("update.{}", error.field), error.reason))
    }

    /// The checks of the lists, mounts, spread and health check: none of them finds anything
    /// wrong when the spec has none (`validate_workload` skips them then).
    fn validate_listed<'a>(&'a self) -> Result<(), SpecError> {
        for (field, list) in [
            ("ports", &self.ports),
            ("volumes", &self.volumes),
            ("tmpfs", &self.tmpfs),
            ("env_files", &self.env_files),
        ] {
            if list.len() > SPEC_LIST_LEN_MAX {
                return Err(field_error(
                    field,
                    format!("has more than {SPEC_LIST_LEN_MAX} elements"),
                ));
            }
            for (index, text) in list.iter().enumerate() {
                check_string_of(|| format!("{field}[{index}]"), text)?;
            }
        }
        let ports = self.port_mappings()?;
        for (index, port) in ports.iter().enumerate() {
            if let Some(earlier) = ports[..index]
                .iter()
                .position(|other| other.host_port_key().collides(&port.host_port_key()))
            {
                return Err(field_error(
                    format!("ports[{index}]"),
                    format!(
                        "host port {} is already published by ports[{earlier}]",
                        port.host_port_key()
                    ),
                ));
            }
        }
        // Every mount's target (without trailing slashes) with the field that mounts it.
        let mut targets: BTreeMap<String, Mount<'_>> = BTreeMap::new();
        let mut claim = |mount: Mount<'a>, target: &str| -> Result<(), SpecError> {
            let normal = target.trim_end_matches('/');
            if let Some(earlier) = targets.get(normal) {
                return Err(field_error(
                    mount.to_string(),
                    format!("target {target:?} is already mounted by {earlier}"),
                ));
            }
            targets.insert(normal.to_owned(), mount);
            Ok(())
        };
        for (index, volume) in self.volume_mounts()?.iter().enumerate() {
            claim(Mount::Volume(index), &volume.target)?;
        }
        for (index, tmpfs) in self.tmpfs_mounts()?.iter().enumerate() {
            claim(Mount::Tmpfs(index), &tmpfs.target)?;
        }
        if self.secrets.len() > SPEC_LIST_LEN_MAX {
            return Err(field_error(
                "secrets",
                format!("has more than {SPEC_LIST_LEN_MAX} entries"),
            ));
        }
        for (name, path) in &self.secrets {
            let field = || format!("secrets.{name}");
            check_string_of(field, path)?;
            check_name(name).map_err(|reason| field_error(field(), reason.to_string()))?;
            check_host_path(path).map_err(|reason| field_error(field(), reason.to_string()))?;
            claim(Mount::Secret(name), &secret_target(name))?;
        }
        for (index, path) in self.env_files.iter().enumerate() {
            check_host_path(path)
                .map_err(|reason| field_error(format!("env_files[{index}]"), reason.to_string()))?;
        }
        if self.constraints.len() > SPEC_LIST_LEN_MAX {
            return Err(field_error(
                "constraints",
                format!("has more than {SPEC_LIST_LEN_MAX} elements"),
            ));
        }
        self.placement_constraints()?;
        if let Some(label) = &self.spread {
            check_label(label).map_err(|reason| field_error("spread", reason.to_string()))?;
        }
        if let Some(health) = &self.health {
            health
                .validate()
                .map_err(|error| field_error(format!("health.{}", error.field), error.reason))?;
        }
        Ok(())
    }

    /// Checks a spec about to be written: its encoded size (at most
    /// [`SPEC_ENCODED_BYTES_MAX`]) and every field ([`ServiceSpec::validate_fields`]).
    pub fn validate(&self) -> Result<(), SpecError> {
        let bytes = self.encoded_bytes();
        if bytes > SPEC_ENCODED_BYTES_MAX {
            return Err(SpecError::TooLarge {
                bytes,
                max: SPEC_ENCODED_BYTES_MAX,
            });
        }
        self.validate_fields()
    }

    /// The size of the spec's encoding: the JSON text it travels and is stored as.
    pub fn encoded_bytes(&self) -> usize {
        json_bytes(self)
    }

    /// Checks every field; the error names the first bad one. Unlike [`ServiceSpec::validate`]
    /// this does not bound the encoded size: it is what an entry already written must satisfy
    /// (a stored state, a peer's delta), so that a spec written before the bound existed still
    /// loads and travels, and a node always restarts on a state it once accepted.
    pub fn validate_fields(&self) -> Result<(), SpecError> {
        check_string("image", &self.image)?;
        if self.image.is_empty() {
            return Err(field_error("image", "must not be empty"));
        }
        if let Some(digest) = &self.image_digest {
            let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                field_error(
                    "image_digest",
                    format!("{digest:?} does not start with \"sha256:\""),
                )
            })?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(field_error(
                    "image_digest",
                    format!("{digest:?} is not sha256:<64 lowercase hex>"),
                ));
            }
        }
        if self.command.len() > SPEC_LIST_LEN_MAX {
            return Err(field_error(
                "command",
                format!("has more than {SPEC_LIST_LEN_MAX} elements"),
            ));
        }
        for (index, argument) in self.command.iter().enumerate() {
            check_string_of(|| format!("command[{index}]"), argument)?;
        }
        if self.env.len() > SPEC_LIST_LEN_MAX {
            return Err(field_error(
                "env",
                format!("has more than {SPEC_LIST_LEN_MAX} variables"),
            ));
        }
        for (key, value) in &self.env {
            let field = || format!("env.{key}");
            if key.is_empty() || key.contains('=') {
                return Err(field_error(
                    field(),
                    "variable name must be non-empty and contain no '='",
                ));
            }
            check_string_of(field, key)?;
            check_string_of(field, value)?;
        }
        if self.replicas > SPEC_REPLICAS_MAX {
            return Err(field_error(
                "replicas",
                format!("{} is more than {SPEC_REPLICAS_MAX}", self.replicas),
            ));
        }
        if self.resources.cpu_millis == 0 {
            return Err(field_error("resources.cpu_millis", "must be at least 1"));
        }
        if self.resources.memory_bytes < SPEC_MEMORY_BYTES_MIN {
            return Err(field_error(
                "resources.memory_bytes",
                format!(
                    "{} is less than {SPEC_MEMORY_BYTES_MIN}",
                    self.resources.memory_bytes
                ),
            ));
        }
        if self.resources.pids_max == 0 {
            return Err(field_error("resources.pids_max", "must be at least 1"));
        }
        self.validate_workload()
    }
}

/// An `io::Write` that only counts the bytes written.
/// The length of `value`'s JSON encoding, counted without building it (`usize::MAX` if it
/// does not serialize).
pub(crate) fn json_bytes(value: &impl serde::Serialize) -> usize {
    let mut counter = ByteCounter(0);
    // Writing to a counter cannot fail.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses every element of a list field; the error names the element.
fn indexed<T>(
    field: &str,
    list: &[String],
    parse: impl Fn(&str) -> Result<T, WorkloadError>,
) -> Result<Vec<T>, SpecError> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    list.iter()
        .enumerate()
        .map(|(index, text)| {
            parse(text).map_err(|error| field_error(format!("{field}[{index}]"), error.to_string()))
        })
        .collect()
}

fn check_string(field: &str, value: &str) -> Result<(), SpecError> {
    check_string_of(|| field.to_owned(), value)
}

/// `check_string` of an element whose field name is built only for an error: a spec is
/// checked on every write that reaches a node, and a name built for each element of each
/// list was most of the check's work.
fn check_string_of(field: impl FnOnce() -> String, value: &str) -> Result<(), SpecError> {
    if value.len() > SPEC_STRING_BYTES_MAX {
        return Err(field_error(
            field(),
            format!("is longer than {SPEC_STRING_BYTES_MAX} bytes"),
        ));
    }
    if value.contains('\0') {
        return Err(field_error(field(), "contains a NUL byte"));
    }
    Ok(())
}

/// The field of a mount, named in an error when two mounts share a target.
#[derive(Debug, Clone, Copy)]
enum Mount<'a> {
    Volume(usize),
    Tmpfs(usize),
    Secret(&'a str),
}

impl std::fmt::Display for Mount<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mount::Volume(index) => write!(formatter, "volumes[{index}]"),
            Mount::Tmpfs(index) => write!(formatter, "tmpfs[{index}]"),
            Mount::Secret(name) => write!(formatter, "secrets.{name}"),
        }
    }
}

/// A container that a node runs (an element of the container OR-Set).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRecord {
    pub id: ContainerId,
    pub service: ServiceName,
    pub node: NodeId,
    /// The version (HLC) of the service spec the container was started from.
    pub spec_version: Timestamp,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

/// Why a subnet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("subnet {input:?} is not of the form a.b.c.d/len")]
    Syntax { input: String },
    #[error("subnet {input:?}: prefix length {prefix_len} is outside 8..=30")]
    PrefixLength { input: String, prefix_len: u8 },
    #[error("subnet {input:?} has host bits set")]
    HostBits { input: String },
}

/// An IPv4 subnet a node allocates container addresses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    /// A checked subnet: prefix length 8..=30, no host bits.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, SubnetError> {
        let input = format!("{addr}/{prefix_len}");
        if !(8..=30).contains(&prefix_len) {
            return Err(SubnetError::PrefixLength { input, prefix_len });
        }
        let subnet = Self { addr, prefix_len };
        if u32::from(addr) & !subnet.mask() != 0 {
            return Err(SubnetError::HostBits { input });
        }
        Ok(subnet)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// Whether `ip` is inside this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        let mask = u32::MAX << (32 - u32::from(shorter));
        u32::from(self.addr) & mask == u32::from(other.addr) & mask
    }

    /// The gateway address (first host), used by the node's bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }

    /// Addresses containers may get: every host address except the gateway,
    /// in ascending order.
    pub fn container_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let base = u32::from(self.addr);
        let broadcast = base | !self.mask();
        (base + 2..broadcast).map(Ipv4Addr::from)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;
    fn from_str(input: &str) -> Result<Self, SubnetError> {
        let syntax = || SubnetError::Syntax {
            input: input.to_owned(),
        };
        let (addr, len) = input.split_once('/').ok_or_else(syntax)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| syntax())?;
        let len: u8 = len.parse().map_err(|_| syntax())?;
        Self::new(addr, len)
    }
}

impl TryFrom<String> for Subnet {
    type Error = SubnetError;
    fn try_from(value: String) -> Result<Self, SubnetError> {
        value.parse()
    }
}

impl From<Subnet> for String {
    fn from(value: Subnet) -> String {
        value.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What a node offers to containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
}

/// A node's entry in the node-metadata LWW-Map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeMeta {
    /// Where peers reach this node's sync endpoint.
    pub address: SocketAddr,
    pub capacity: Capacity,
    #[serde(default)]
    pub subnet: Option<Subnet>,
    /// Set by `Replica::put_node_meta` to the HLC of the write: liveness.
    pub heartbeat: Timestamp,
    /// The node's labels (`zone = "eu-1"`), for placement constraints and spread.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Drawn at random by each daemon at its start (`Replica::set_incarnation`): metadata of
    /// one node written by two incarnations that alternate is two daemons with one name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
    /// Set while the node is drained (`shoal node drain`): it takes no new replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

impl NodeMeta {
    /// Checks what an honest node writes in its metadata (the drain's bounds). Paired: the
    /// writer checks before it writes, every replica checks what it receives or loads.
    pub fn validate(&self) -> Result<(), DrainError> {
        match &self.drain {
            Some(drain) => drain.validate(),
            None => Ok(()),
        }
    }
}

/// A per-node resource counter (PN-Counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    CpuMillis,
    MemoryBytes,
    Containers,
}

/// One IP allocation as seen by queries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpAllocation {
    pub ip: Ipv4Addr,
    pub container: ContainerId,
    pub node: NodeId,
    /// HLC of the allocation; earlier wins a conflict.
    pub allocated: Timestamp,
}

/// Two or more live allocations of one IP. The winner is the earliest
/// allocation (HLC, then node id); the losers must release it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpConflict {
    pub ip: Ipv4Addr,
    pub winner: IpAllocation,
    pub losers: Vec<IpAllocation>,
}

/// Two or more live nodes claiming overlapping subnets. The winner is the
/// earliest claim (HLC of the first write with that subnet, then node id).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubnetConflict {
    pub subnet: Subnet,
    pub winner: NodeId,
    pub losers: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_parsing() {
        let subnet: Subnet = "10.88.1.0/24".parse().unwrap();
        assert_eq!(subnet.to_string(), "10.88.1.0/24");
        assert!("10.88.1.1/24".parse::<Subnet>().is_err());
        assert!("10.88.1.0/31".parse::<Subnet>().is_err());
        assert!("10.88.1.0".parse::<Subnet>().is_err());
        assert!(subnet.contains("10.88.1.77".parse().unwrap()));
        assert!(!subnet.contains("10.88.2.1".parse().unwrap()));
        assert!(subnet.overlaps(&"10.88.0.0/16".parse().unwrap()));
        assert!(!subnet.overlaps(&"10.88.2.0/24".parse().unwrap()));
        assert_eq!(subnet.container_addresses().count(), 253);
        assert_eq!(
            subnet.container_addresses().next(),
            Some("10.88.1.2".parse().unwrap())
        );
    }

    fn check_spec(mutate: impl FnOnce(&mut ServiceSpec), field: Option<&str>) {
        let mut spec = ServiceSpec::new("/images/web");
        mutate(&mut spec);
        match (spec.validate(), field) {
            (Ok(()), None) => {}
            (Err(SpecError::Field { field: got, .. }), Some(want)) => assert_eq!(got, want),
            (result, want) => panic!("got {result:?}, want error on {want:?}"),
        }
    }

    #[test]
    fn a_spec_written_now_is_bounded_in_size_but_a_stored_one_is_not() {
        let mut spec = ServiceSpec::new("/images/web");
        // 200 variables of 2 KiB each: under every field bound, over the size bound.
        for index in 0..200 {
            spec.env.insert(format!("VAR_{index}"), "x".repeat(2048));
        }
        let bytes = spec.encoded_bytes();
        assert_eq!(bytes, serde_json::to_string(&spec).unwrap().len());
        assert!(bytes > SPEC_ENCODED_BYTES_MAX);
        assert_eq!(
            spec.validate(),
            Err(SpecError::TooLarge {
                bytes,
                max: SPEC_ENCODED_BYTES_MAX
            })
        );
        assert_eq!(spec.validate_fields(), Ok(()));
        let message = spec.validate().unwrap_err().to_string();
        assert!(
            message.contains("more than the limit of 262144 bytes"),
            "{message}"
        );
        spec.env = std::mem::take(&mut spec.env)
            .into_iter()
            .take(100)
            .collect();
        assert!(spec.encoded_bytes() <= SPEC_ENCODED_BYTES_MAX);
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn spec_validation_names_the_field() {
        check_spec(|_| {}, None);
        check_spec(|s| s.image.clear(), Some("image"));
        check_spec(
            |s| s.image_digest = Some("md5:00".into()),
            Some("image_digest"),
        );
        check_spec(
            |s| s.image_digest = Some(format!("sha256:{}", "a".repeat(64))),
            None,
        );
        check_spec(
            |s| s.image_digest = Some(format!("sha256:{}", "A".repeat(64))),
            Some("image_digest"),
        );
        check_spec(|s| s.command = vec!["a\0".into()], Some("command[0]"));
        check_spec(
            |s| _ = s.env.insert("A=B".into(), "x".into()),
            Some("env.A=B"),
        );
        check_spec(|s| s.replicas = SPEC_REPLICAS_MAX + 1, Some("replicas"));
        check_spec(|s| s.resources.cpu_millis = 0, Some("resources.cpu_millis"));
        check_spec(
            |s| s.resources.memory_bytes = 1,
            Some("resources.memory_bytes"),
        );
        check_spec(|s| s.resources.pids_max = 0, Some("resources.pids_max"));
    }

    #[test]
    fn workload_fields_are_checked_by_name() {
        check_spec(
            |s| {
                s.ports = vec![
                    "8080:80".into(),
                    "127.0.0.1:9000:9000".into(),
                    "5353:53/udp".into(),
                ];
                s.volumes = vec!["/srv/web:/data:ro".into(), "cache:/var/cache/web".into()];
                s.tmpfs = vec!["/tmp:size=64m".into()];
                s.env_files = vec!["/run/keys/web.env".into()];
                s.secrets
                    .insert("tls_key".into(), "/run/credentials/shoal.service/k".into());
            },
            None,
        );
        check_spec(|s| s.ports = vec!["80".into()], Some("ports[0]"));
        check_spec(
            |s| s.ports = vec!["8080:80".into(), "127.0.0.1:8080:81".into()],
            Some("ports[1]"),
        );
        check_spec(
            |s| s.ports = vec!["8080:80".into(), "8080:80/udp".into()],
            None,
        );
        check_spec(|s| s.volumes = vec!["data:rel".into()], Some("volumes[0]"));
        check_spec(
            |s| s.volumes = vec!["data:/proc".into()],
            Some("volumes[0]"),
        );
        check_spec(
            |s| s.volumes = vec!["../x:/data".into()],
            Some("volumes[0]"),
        );
        check_spec(
            |s| {
                s.volumes = vec!["a:/data".into()];
                s.tmpfs = vec!["/data/".into()];
            },
            Some("tmpfs[0]"),
        );
        check_spec(|s| s.tmpfs = vec!["/".into()], Some("tmpfs[0]"));
        check_spec(
            |s| s.env_files = vec!["web.env".into()],
            Some("env_files[0]"),
        );
        check_spec(
            |s| _ = s.secrets.insert("a/b".into(), "/k".into()),
            Some("secrets.a/b"),
        );
        check_spec(
            |s| _ = s.secrets.insert("k".into(), "k".into()),
            Some("secrets.k"),
        );
        check_spec(
            |s| {
                s.secrets.insert("k".into(), "/k".into());
                s.volumes = vec!["v:/run/secrets/k".into()];
            },
            Some("secrets.k"),
        );
    }

    /// The update policy is checked whether or not the spec lists anything (the list checks
    /// are skipped for a spec without lists), against the health check's interval when there
    /// is one; a health check alone is checked too.
    #[test]
    fn the_update_policy_and_health_are_checked_with_or_without_lists() {
        check_spec(|s| s.update.max_parallel = 0, Some("update.max_parallel"));
        check_spec(
            |s| {
                s.update.max_parallel = 0;
                s.ports = vec!["8080:80".into()];
            },
            Some("update.max_parallel"),
        );
        let mut health = crate::HealthCheck::http("http://127.0.0.1:8080/");
        health.interval_ms = 5_000;
        health.timeout_ms = 1_000;
        let checked = health.clone();
        check_spec(
            |s| {
                s.health = Some(Box::new(checked));
                s.update.min_healthy_ms = 1_000;
                s.update.healthy_deadline_ms = 4_000;
            },
            Some("update.healthy_deadline_ms"),
        );
        check_spec(|s| s.health = Some(Box::new(health.clone())), None);
        health.timeout_ms = 9_000;
        check_spec(
            |s| s.health = Some(Box::new(health)),
            Some("health.timeout_ms"),
        );
    }

    /// The names of list elements, variables and mounts are built only for an error; they
    /// are the same names as when they were built for every element.
    #[test]
    fn specs_differing_in_any_one_field_are_unequal() {
        let mut base = ServiceSpec::new("/img/a");
        base.command = vec!["/bin/app".to_owned()];
        base.env.insert("KEY".to_owned(), "value".to_owned());
        base.ports = vec!["80:8080".to_owned()];
        base.volumes = vec!["/srv:/data".to_owned()];
        base.tmpfs = vec!["/tmp".to_owned()];
        base.env_files = vec!["/run/app.env".to_owned()];
        base.secrets.insert("key".to_owned(), "/run/key".to_owned());
        base.constraints = vec!["zone == a".to_owned()];
        base.spread = Some("zone".to_owned());
        type Change = (&'static str, fn(&mut ServiceSpec));
        let changes: Vec<Change> = vec![
            ("image", |s| s.image.push('x')),
            ("image_digest", |s| {
                s.image_digest = Some("sha256:0".to_owned())
            }),
            ("command", |s| s.command[0].push('x')),
            ("command length", |s| s.command.clear()),
            ("env value", |s| {
                s.env.insert("KEY".to_owned(), "other".to_owned());
            }),
            ("env key", |s| {
                s.env.insert("OTHER".to_owned(), "value".to_owned());
            }),
            ("replicas", |s| s.replicas += 1),
            ("resources", |s| s.resources.pids_max += 1),
            ("restart", |s| s.restart = RestartPolicy::Always),
            ("ports", |s| s.ports[0].push('0')),
            ("volumes", |s| s.volumes[0].push('x')),
            ("tmpfs", |s| s.tmpfs[0].push('x')),
            ("env_files", |s| s.env_files[0].push('x')),
            ("secrets", |s| {
                s.secrets.insert("key".to_owned(), "/run/other".to_owned());
            }),
            ("publish", |s| {
                s.publish.mode = crate::workload::PublishMode::Mesh
            }),
            ("mode", |s| s.mode = crate::constraints::Mode::Global),
            ("constraints", |s| s.constraints[0].push('x')),
            ("spread", |s| s.spread = None),
            ("health", |s| {
                s.health = Some(Box::new(crate::HealthCheck {
                    http: None,
                    tcp: Some(80),
                    cmd: None,
                    interval_ms: 1000,
                    timeout_ms: 500,
                    retries: 3,
                    start_period_ms: 0,
                }))
            }),
            ("update", |s| s.update.max_parallel += 1),
        ];
        assert_eq!(base, base.clone());
        for (field, change) in changes {
            let mut changed = base.clone();
            change(&mut changed);
            assert_ne!(base, changed, "a change of {field}");
            assert_ne!(changed, base, "a change of {field}");
            assert_eq!(changed, changed.clone(), "{field}");
        }
    }

    #[test]
    fn element_names_are_built_for_the_error() {
        check_spec(
            |s| s.command = vec!["/bin/app".into(), "x".repeat(SPEC_STRING_BYTES_MAX + 1)],
            Some("command[1]"),
        );
        check_spec(
            |s| _ = s.env.insert("KEY".into(), "a\0b".into()),
            Some("env.KEY"),
        );
        check_spec(
            |s| s.volumes = vec!["a:/data".into(), "b:/x\0".into()],
            Some("volumes[1]"),
        );
        // Over /proc, /sys or /dev only under them, not beside them.
        check_spec(|s| s.volumes = vec!["v:/procfs".into()], None);
        check_spec(|s| s.volumes = vec!["v:/dev/".into()], Some("volumes[0]"));
        let mut spec = ServiceSpec::new("/images/web");
        spec.volumes = vec!["a:/data".into(), "b:/cache".into()];
        spec.tmpfs = vec!["/cache/".into()];
        match spec.validate() {
            Err(SpecError::Field { field, reason }) => {
                assert_eq!(field, "tmpfs[0]");
                assert_eq!(
                    reason,
                    "target \"/cache/\" is already mounted by volumes[1]"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn placement_fields_are_checked_by_name() {
        check_spec(
            |s| {
                s.mode = Mode::Global;
                s.constraints = vec!["zone == eu-1".into(), "role in (edge, core)".into()];
                s.spread = Some("zone".into());
            },
            None,
        );
        check_spec(
            |s| s.constraints = vec!["zone == eu-1".into(), "zone ~= x".into()],
            Some("constraints[1]"),
        );
        check_spec(|s| s.spread = Some("a zone".into()), Some("spread"));
    }

    #[test]
    fn new_fields_leave_old_specs_json_unchanged() {
        // Spec digests of running containers are taken over the JSON; an upgrade must not
        // change the digest of a spec that uses none of the new fields.
        let json = serde_json::to_string(&ServiceSpec::new("/img")).unwrap();
        assert!(
            !json.contains("ports") && !json.contains("publish"),
            "{json}"
        );
        let back: ServiceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ServiceSpec::new("/img"));
    }
}
