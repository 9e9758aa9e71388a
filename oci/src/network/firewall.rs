//! shoal's own nftables table: the `Firewall` seam, `NftFirewall` that installs
//! `FirewallRules` with `nft -j -f` in the caller's network namespace, and
//! `FakeFirewall` for the simulator and tests. The rules and the batch are built
//! in `firewall_rules`; see there for what the table holds.
//!
//! `nft` starts through `spawn` (posix_spawnp, empty environment), never through
//! `Command`: see `spawn` for the clone/env-lock hazard. Like `NodeNetwork`,
//! every call acts on the network namespace of the calling thread and blocks.

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::NetworkError;
use super::firewall_rules::{DEFAULT_TABLE, FirewallRules, check_table_name, removal_json};
use super::spawn;

/// The nftables command-line tool, looked up in `PATH`.
const NFT: &str = "nft";
/// Standard error of `nft` kept in an error message.
const STDERR_BYTES_MAX: u64 = 4096;
/// `route_localnet` of one interface, read in the calling thread's namespace.
const ROUTE_LOCALNET_DIR: &str = "/proc/sys/net/ipv4/conf";

/// A node's firewall as shoal sees it: one table, replaced as a whole.
pub trait Firewall: Send + Sync {
    /// Replaces shoal's table with exactly `rules`, atomically: on an error the
    /// table the kernel holds is the one from before. Idempotent.
    fn apply(&self, rules: &FirewallRules) -> Result<(), NetworkError>;
    /// Deletes shoal's table, and nothing else; no error when it is absent.
    fn remove(&self) -> Result<(), NetworkError>;
}

/// The real firewall: `nft` in the calling thread's network namespace.
///
/// Each batch is written to `batch_path` (mode 0600) and handed to
/// `nft -j -f`; the file stays, so the last batch can be read when a rule
/// misbehaves. Calls on one value are serialised; two values must not share a
/// path. Needs `nft` in `PATH` and CAP_NET_ADMIN.
#[derive(Debug)]
pub struct NftFirewall {
    table: String,
    batch_path: PathBuf,
    serial: Mutex<()>,
}

impl NftFirewall {
    /// The firewall of table `ip shoal`.
    pub fn new(batch_path: impl Into<PathBuf>) -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            batch_path: batch_path.into(),
            serial: Mutex::new(()),
        }
    }

    /// The firewall of table `ip <table>`: 1..=64 characters of
    /// [A-Za-z0-9_-], starting with a letter.
    pub fn with_table(table: &str, batch_path: impl Into<PathBuf>) -> Result<Self, NetworkError> {
        check_table_name(table)?;
        Ok(Self {
            table: table.to_owned(),
            ..Self::new(batch_path)
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn batch_path(&self) -> &Path {
        &self.batch_path
    }

    fn serial(&self) -> MutexGuard<'_, ()> {
        self.serial
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the batch and runs it as one nft transaction.
    fn run_batch(&self, batch: &str) -> Result<(), NetworkError> {
        write_private(&self.batch_path, batch.as_bytes()).map_err(|source| {
            NetworkError::FirewallFile {
                path: self.batch_path.clone(),
                source,
            }
        })?;
        let path = self.batch_path.to_string_lossy().into_owned();
        let args = ["-j", "-f", path.as_str()];
        let command = || format!("{NFT} {}", args.join(" "));
        let finished =
            spawn::run(NFT, &args, STDERR_BYTES_MAX).map_err(|source| NetworkError::Spawn {
                command: command(),
                source,
            })?;
        if !finished.status.success() {
            return Err(NetworkError::Command {
                command: command(),
                status: finished.status,
                stderr: String::from_utf8_lossy(&finished.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

impl Firewall for NftFirewall {
    /// Also turns `route_localnet` on for the bridge (which must exist), so the
    /// node reaches its published ports through 127.0.0.1. It stays on after
    /// `remove`.
    fn apply(&self, rules: &FirewallRules) -> Result<(), NetworkError> {
        let batch = rules.to_nft_json(&self.table)?;
        let _serial = self.serial();
        enable_route_localnet(&rules.bridge)?;
        self.run_batch(&batch)
    }

    fn remove(&self) -> Result<(), NetworkError> {
        let batch = removal_json(&self.table)?;
        let _serial = self.serial();
        self.run_batch(&batch)
    }
}

/// Creates or truncates `path` with mode 0600 (also when it existed with
/// another), refusing to follow a symlink, and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

/// Lets packets from 127.0.0.0/8 be routed out of `bridge` (after the output
/// DNAT of a connection to 127.0.0.1), in the calling thread's namespace.
fn enable_route_localnet(bridge: &str) -> Result<(), NetworkError> {
    let path = Path::new(ROUTE_LOCALNET_DIR)
        .join(bridge)
        .join("route_localnet");
    let current = std::fs::read_to_string(&path).map_err(|source| NetworkError::Sysctl {
        action: "read",
        path: path.clone(),
        source,
    })?;
    if current.trim() != "1" {
        std::fs::write(&path, "1\n").map_err(|source| NetworkError::Sysctl {
            action: "write",
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[derive(Debug, Default)]
struct FakeState {
    applied: Option<FirewallRules>,
    applies: u64,
    removes: u64,
    failures: VecDeque<String>,
}

/// An in-memory firewall: validates and builds the batch like `NftFirewall`,
/// then only records. `fail_next` makes the next call fail (and change nothing).
#[derive(Debug, Default)]
pub struct FakeFirewall {
    state: Mutex<FakeState>,
}

impl FakeFirewall {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next apply or remove fail with this message.
    pub fn fail_next(&self, message: &str) {
        self.lock().failures.push_back(message.to_owned());
    }

    /// The rules a real node would hold now: the last applied, unless removed since.
    pub fn applied(&self) -> Option<FirewallRules> {
        self.lock().applied.clone()
    }

    /// Successful applies so far.
    pub fn apply_count(&self) -> u64 {
        self.lock().applies
    }

    /// Successful removes so far.
    pub fn remove_count(&self) -> u64 {
        self.lock().removes
    }

    fn injected(state: &mut FakeState) -> Result<(), NetworkError> {
        match state.failures.pop_front() {
            Some(message) => Err(NetworkError::Injected { message }),
            None => Ok(()),
        }
    }
}

impl Firewall for FakeFirewall {
    fn apply(&self, rules: &FirewallRules) -> Result<(), NetworkError> {
        let mut state = self.lock();
        Self::injected(&mut state)?;
        rules.to_nft_json(DEFAULT_TABLE)?;
        state.applied = Some(rules.clone());
        state.applies += 1;
        Ok(())
    }

    fn remove(&self) -> Result<(), NetworkError> {
        let mut state = self.lock();
        Self::injected(&mut state)?;
        state.applied = None;
        state.removes += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{PortForward, Protocol};
    use std::net::Ipv4Addr;

    fn rules(backends: Vec<Ipv4Addr>) -> FirewallRules {
        FirewallRules {
            bridge: "shoal0".to_owned(),
            own_subnet: "10.88.1.0/24".parse().unwrap(),
            cluster_subnets: Vec::new(),
            forwards: vec![PortForward {
                host_ip: None,
                host_port: 8080,
                protocol: Protocol::Tcp,
                container_port: 80,
                backends,
                masquerade: false,
            }],
        }
    }

    #[test]
    fn the_fake_records_valid_rules_and_refuses_bad_ones_without_change() {
        let fake = FakeFirewall::new();
        let good = rules(vec![Ipv4Addr::new(10, 88, 1, 2)]);
        fake.apply(&good).unwrap();
        fake.apply(&good).unwrap();
        assert_eq!(fake.applied(), Some(good.clone()));
        assert_eq!(fake.apply_count(), 2);

        let error = fake.apply(&rules(Vec::new())).unwrap_err();
        assert!(matches!(error, NetworkError::NoBackends { .. }), "{error}");
        fake.fail_next("nft is gone");
        let error = fake.remove().unwrap_err();
        assert_eq!(error.to_string(), "injected failure: nft is gone");
        assert_eq!(fake.applied(), Some(good));
        assert_eq!((fake.apply_count(), fake.remove_count()), (2, 0));

        fake.remove().unwrap();
        fake.remove().unwrap();
        assert_eq!(fake.applied(), None);
        assert_eq!(fake.remove_count(), 2);
    }

    #[test]
    fn batch_files_are_private_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firewall.json");
        std::fs::write(&path, "an older and longer batch").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(write_private(&link, b"[]").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }

    #[test]
    fn table_names_are_checked() {
        assert_eq!(NftFirewall::new("/x").table(), "shoal");
        assert!(NftFirewall::with_table("shoal_test-1", "/x").is_ok());
        let error = NftFirewall::with_table("bad name", "/x").unwrap_err();
        assert!(matches!(error, NetworkError::TableName { .. }), "{error}");
    }
}
