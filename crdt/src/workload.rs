//! What a service's containers get from their node besides an image: published ports,
//! volumes, tmpfs mounts, env files and secrets. The spec keeps the notation operators
//! write (docker / NixOS `oci-containers`: `"127.0.0.1:8080:80/tcp"`, `"cache:/data:ro"`,
//! `"/tmp:size=64m"`) as strings, so a replicated spec reads like the file it came from;
//! this module parses them into typed values and says precisely what is wrong with one
//! that does not parse. Only paths are ever replicated: env files and secrets are read on
//! the node that starts the container.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where a tmpfs has no `size=`: 64 MiB.
pub const TMPFS_SIZE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The largest tmpfs a spec may ask for: 64 GiB.
pub const TMPFS_SIZE_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;
/// Where secrets appear inside a container, one read-only file per secret.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Names of secrets and named volumes: at most this many bytes.
pub const WORKLOAD_NAME_BYTES_MAX: usize = 128;

/// Why one workload string was refused (the spec names the field around it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason}")]
pub struct WorkloadError {
    pub input: String,
    pub reason: String,
}

fn refuse(input: &str, reason: impl Into<String>) -> WorkloadError {
    WorkloadError {
        input: input.to_owned(),
        reason: reason.into(),
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a published port is accepted.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On the nodes that run a replica, forwarded to that node's replica.
    #[default]
    Host,
    /// On every live node, forwarded to a live replica anywhere in the cluster.
    Mesh,
}

impl PublishMode {
    pub fn is_host(&self) -> bool {
        *self == PublishMode::Host
    }
}

/// The `[publish]` table of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Publish {
    pub mode: PublishMode,
}

impl Publish {
    pub fn is_default(&self) -> bool {
        *self == Publish::default()
    }
}

/// `[host_ip:]host_port:container_port[/tcp|/udp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMapping {
    /// `None`: every address of the node.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl PortMapping {
    /// What a node hands out for this mapping: its address, port and protocol.
    pub fn host_port_key(&self) -> HostPort {
        HostPort {
            ip: self.host_ip,
            port: self.host_port,
            protocol: self.protocol,
        }
    }
}

impl std::str::FromStr for PortMapping {
    type Err = WorkloadError;
    fn from_str(input: &str) -> Result<Self, WorkloadError> {
        let (ports, protocol) = match input.rsplit_once('/') {
            Some((ports, "tcp")) => (ports, Protocol::Tcp),
            Some((ports, "udp")) => (ports, Protocol::Udp),
            Some((_, other)) => {
                return Err(refuse(
                    input,
                    format!("protocol {other:?} is not tcp or udp"),
                ));
            }
            None => (input, Protocol::Tcp),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [host, container] => (None, *host, *container),
            [ip, host, container] => {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| refuse(input, format!("host address {ip:?} is not IPv4")))?;
                (Some(ip), *host, *container)
            }
            _ => {
                return Err(refuse(
                    input,
                    "is not [host_ip:]host_port:container_port[/tcp|/udp]",
                ));
            }
        };
        let port = |text: &str, what: &str| -> Result<u16, WorkloadError> {
            match text.parse::<u16>() {
                Ok(0) | Err(_) => Err(refuse(
                    input,
                    format!("{what} {text:?} is not a port in 1..=65535"),
                )),
                Ok(port) => Ok(port),
            }
        };
        Ok(PortMapping {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            host_port: port(host_port, "host port")?,
            container_port: port(container_port, "container port")?,
            protocol,
        })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

/// A port a node listens on for a service: the per-node resource placement hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// `None`: every address of the node.
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
    pub protocol: Protocol,
}

impl HostPort {
    /// Whether both cannot be listened on at once: same port and protocol, and the same
    /// address or either on every address.
    pub fn collides(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip.is_none() || other.ip.is_none() || self.ip == other.ip)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// Where a volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VolumeSource {
    /// An absolute host path that must exist on the node.
    HostPath(String),
    /// A node-local directory the daemon keeps under its state directory.
    Named(String),
}

/// `source:target[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeMount {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

impl std::str::FromStr for VolumeMount {
    type Err = WorkloadError;
    fn from_str(input: &str) -> Result<Self, WorkloadError> {
        let parts: Vec<&str> = input.split(':').collect();
        let (source, target, read_only) = match parts.as_slice() {
            [source, target] => (*source, *target, false),
            [source, target, "ro"] => (*source, *target, true),
            [source, target, "rw"] => (*source, *target, false),
            [_, _, mode] => {
                return Err(refuse(input, format!("mode {mode:?} is not ro or rw")));
            }
            _ => return Err(refuse(input, "is not source:target[:ro|:rw]")),
        };
        let source = if source.starts_with('/') {
            check_host_path(source).map_err(|reason| refuse(input, reason.to_string()))?;
            VolumeSource::HostPath(source.to_owned())
        } else {
            check_name(source).map_err(|reason| refuse(input, format!("volume name: {reason}")))?;
            VolumeSource::Named(source.to_owned())
        };
        check_target(target).map_err(|reason| refuse(input, reason.to_string()))?;
        Ok(VolumeMount {
            source,
            target: target.to_owned(),
            read_only,
        })
    }
}

/// `target[:size=N[k|m|g]]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TmpfsMount {
    pub target: String,
    pub size_bytes: u64,
}

impl std::str::FromStr for TmpfsMount {
    type Err = WorkloadError;
    fn from_str(input: &str) -> Result<Self, WorkloadError> {
        let (target, options) = match input.split_once(':') {
            Some((target, options)) => (target, Some(options)),
            None => (input, None),
        };
        check_target(target).map_err(|reason| refuse(input, reason.to_string()))?;
        let size_bytes = match options {
            None => TMPFS_SIZE_BYTES_DEFAULT,
            Some(options) => {
                let size = options.strip_prefix("size=").ok_or_else(|| {
                    refuse(input, format!("option {options:?} is not size=N[k|m|g]"))
                })?;
                parse_size(size).ok_or_else(|| {
                    refuse(
                        input,
                        format!(
                            "size {size:?} is not a number of bytes (k, m, g suffixes) in 1..={TMPFS_SIZE_BYTES_MAX}"
                        ),
                    )
                })?
            }
        };
        Ok(TmpfsMount {
            target: target.to_owned(),
            size_bytes,
        })
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let (digits, unit) = match text.char_indices().last()? {
        (index, 'k' | 'K') => (&text[..index], 1u64 << 10),
        (index, 'm' | 'M') => (&text[..index], 1 << 20),
        (index, 'g' | 'G') => (&text[..index], 1 << 30),
        _ => (text, 1),
    };
    let size = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (1..=TMPFS_SIZE_BYTES_MAX).contains(&size).then_some(size)
}

/// A secret's file inside the container.
pub fn secret_target(name: &str) -> String {
    format!("{SECRETS_DIR}/{name}")
}

/// Why a secret's or volume's name, a host path or a mount target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathCheckError {
    #[error(
        "{name:?} is not 1..={WORKLOAD_NAME_BYTES_MAX} characters of [A-Za-z0-9_.-] starting with a letter or digit"
    )]
    Name { name: String },
    #[error("host path {path:?} is not absolute")]
    HostNotAbsolute { path: String },
    #[error("host path {path:?} contains . or ..")]
    HostDots { path: String },
    #[error("target {target:?} is not an absolute path")]
    TargetNotAbsolute { target: String },
    #[error("target {target:?} contains . or ..")]
    TargetDots { target: String },
    #[error("target \"/\": a mount over the root is not allowed")]
    TargetRoot,
    #[error("target {target:?} is under {owned}, which the runtime owns")]
    TargetOwned { target: String, owned: &'static str },
}

/// Checks a secret's or a named volume's name: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn check_name(name: &str) -> Result<(), PathCheckError> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > WORKLOAD_NAME_BYTES_MAX
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(PathCheckError::Name {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks a host path: absolute, no `..`, no empty or `.` components.
pub fn check_host_path(path: &str) -> Result<(), PathCheckError> {
    if !path.starts_with('/') {
        return Err(PathCheckError::HostNotAbsolute {
            path: path.to_owned(),
        });
    }
    if path
        .split('/')
        .skip(1)
        .any(|part| part == ".." || part == ".")
    {
        return Err(PathCheckError::HostDots {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Checks a mount target inside the container: absolute, no `..`, not `/` and not over
/// `/proc`, `/sys` or `/dev` (the runtime owns those).
pub fn check_target(target: &str) -> Result<(), PathCheckError> {
    let target_owned = || target.to_owned();
    if !target.starts_with('/') {
        return Err(PathCheckError::TargetNotAbsolute {
            target: target_owned(),
        });
    }
    if target.split('/').any(|part| part == ".." || part == ".") {
        return Err(PathCheckError::TargetDots {
            target: target_owned(),
        });
    }
    let normal = target.trim_end_matches('/');
    if normal.is_empty() {
        return Err(PathCheckError::TargetRoot);
    }
    for owned in ["/proc", "/sys", "/dev"] {
        let under = normal
            .strip_prefix(owned)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        if under {
            return Err(PathCheckError::TargetOwned {
                target: target_owned(),
                owned,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_in_docker_notation() {
        let mapping: PortMapping = "8080:80".parse().unwrap();
        assert_eq!(mapping.to_string(), "8080:80/tcp");
        assert_eq!(mapping.host_ip, None);
        let mapping: PortMapping = "127.0.0.1:9000:9000".parse().unwrap();
        assert_eq!(mapping.host_ip, Some(Ipv4Addr::LOCALHOST));
        let mapping: PortMapping = "5353:53/udp".parse().unwrap();
        assert_eq!(mapping.protocol, Protocol::Udp);
        assert_eq!(
            "0.0.0.0:80:80".parse::<PortMapping>().unwrap().host_ip,
            None
        );
        for bad in [
            "80",
            "0:80",
            "80:0",
            "70000:80",
            "a:80",
            "80:80/sctp",
            "::1:80:80",
            "1.2.3:80:80",
            "1:2:3:4",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn host_ports_collide_on_the_same_address_or_a_wildcard() {
        let key = |text: &str| text.parse::<PortMapping>().unwrap().host_port_key();
        assert!(key("8080:80").collides(&key("8080:81")));
        assert!(key("8080:80").collides(&key("127.0.0.1:8080:80")));
        assert!(!key("127.0.0.2:8080:80").collides(&key("127.0.0.1:8080:80")));
        assert!(!key("8080:80").collides(&key("8080:80/udp")));
        assert!(!key("8080:80").collides(&key("8081:80")));
    }

    #[test]
    fn volumes_parse_and_refuse_what_they_must() {
        let volume: VolumeMount = "/srv/web:/data:ro".parse().unwrap();
        assert_eq!(volume.source, VolumeSource::HostPath("/srv/web".into()));
        assert!(volume.read_only);
        let volume: VolumeMount = "cache:/var/cache/web".parse().unwrap();
        assert_eq!(volume.source, VolumeSource::Named("cache".into()));
        assert!(!volume.read_only);
        for bad in [
            "data:relative",
            "data:/",
            "data:/proc",
            "data:/sys/fs",
            "data:/dev",
            "data:/a/../b",
            "../x:/data",
            "/srv/../etc:/data",
            "-x:/data",
            "data:/data:rx",
            "data",
            "a:b:c:d",
        ] {
            assert!(bad.parse::<VolumeMount>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn tmpfs_sizes() {
        let tmpfs: TmpfsMount = "/tmp:size=64m".parse().unwrap();
        assert_eq!(tmpfs.size_bytes, 64 << 20);
        assert_eq!(
            "/run".parse::<TmpfsMount>().unwrap().size_bytes,
            TMPFS_SIZE_BYTES_DEFAULT
        );
        assert_eq!(
            "/x:size=4096".parse::<TmpfsMount>().unwrap().size_bytes,
            4096
        );
        for bad in [
            "/tmp:size=0",
            "/tmp:size=1t",
            "/tmp:mode=1777",
            "tmp",
            "/proc:size=1m",
            "/tmp:size=999999g",
        ] {
            assert!(bad.parse::<TmpfsMount>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn names() {
        assert!(check_name("tls_key").is_ok());
        assert!(check_name("a.b-c").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad} accepted");
        }
    }
}
