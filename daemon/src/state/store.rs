//! The node's durable state in redb: a snapshot of the replica plus a log of the encoded
//! deltas accepted since, and the hybrid clock's last timestamp.
//!
//! Layout (store format version `STORE_FORMAT_VERSION`):
//! - `meta`: `"format_version"` -> u32 little endian, `"hlc_last"` -> encoded timestamp;
//! - `snapshot`: key 0 -> the encoded replica snapshot (absent until the first compaction);
//! - `log`: sequence number -> one encoded delta, appended in acceptance order.
//!
//! Every append is its own write transaction committed with redb's default
//! `Durability::Immediate`, so when `append` returns the delta survives kill -9. Loading
//! is: decode the snapshot, replay the log in order. `compact` writes a new snapshot and
//! clears the log in one transaction, so a crash leaves either the old pair or the new one.
//! The store deals in bytes only; `node.rs` owns the encodings.
//!
//! The file holds service specs, environment values included, so it is mode 0600 whatever the
//! umask: created so, and an existing file with wider permissions is tightened when opened.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

/// Bump when the table layout changes; a database with another version is refused.
pub const STORE_FORMAT_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshot");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

/// Mode of the database file: the daemon's user only.
pub const DATABASE_FILE_MODE: u32 = 0o600;

const KEY_FORMAT_VERSION: &str = "format_version";
const KEY_HLC_LAST: &str = "hlc_last";

/// Why the store failed. Every message names the database file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {message}")]
    Database { path: PathBuf, message: String },
    #[error("database {path} has store format version {found}, this shoal supports {supported}")]
    UnknownFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("database {path}: corrupt {what}")]
    Corrupt { path: PathBuf, what: &'static str },
}

/// What `load` read: replay `log` on top of `snapshot`, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub snapshot: Option<Vec<u8>>,
    pub log: Vec<Vec<u8>>,
    pub hlc_last: Option<Vec<u8>>,
}

/// The open database. Dropping it closes the file.
#[derive(Debug)]
pub struct Store {
    database: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the database at `path`, mode 0600; refuses another store format
    /// version and a database already open in another process.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let database_error = |message: String| StoreError::Database {
            path: path.to_path_buf(),
            message,
        };
        // Created 0600 (the mode is only a ceiling under the umask), then set to exactly 0600,
        // which also tightens a file an older version created 0644.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(DATABASE_FILE_MODE)
            .open(path)
            .map_err(|error| database_error(error.to_string()))?;
        let metadata = file
            .metadata()
            .map_err(|error| database_error(error.to_string()))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode != DATABASE_FILE_MODE {
            file.set_permissions(std::fs::Permissions::from_mode(DATABASE_FILE_MODE))
                .map_err(|error| {
                    database_error(format!("cannot set mode {DATABASE_FILE_MODE:o}: {error}"))
                })?;
            if metadata.len() > 0 {
                tracing::info!(
                    path = %path.display(),
                    from = format!("{mode:o}"),
                    to = format!("{DATABASE_FILE_MODE:o}"),
                    "tightened the permissions of the state database"
                );
            }
        }
        let database = Database::builder()
            .create_file(file)
            .map_err(|error| database_error(error.to_string()))?;
        let store = Store {
            database,
            path: path.to_path_buf(),
        };
        store.check_or_write_version()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, error: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }

    fn check_or_write_version(&self) -> Result<(), StoreError> {
        let transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        {
            let mut meta = transaction.open_table(META).map_err(|e| self.error(e))?;
            let found = meta
                .get(KEY_FORMAT_VERSION)
                .map_err(|e| self.error(e))?
                .map(|value| value.value().to_vec());
            match found {
                Some(bytes) => {
                    let array: [u8; 4] =
                        bytes
                            .as_slice()
                            .try_into()
                            .map_err(|_| StoreError::Corrupt {
                                path: self.path.clone(),
                                what: "format version",
                            })?;
                    let found = u32::from_le_bytes(array);
                    if found != STORE_FORMAT_VERSION {
                        return Err(StoreError::UnknownFormat {
                            path: self.path.clone(),
                            found,
                            supported: STORE_FORMAT_VERSION,
                        });
                    }
                }
                None => {
                    meta.insert(
                        KEY_FORMAT_VERSION,
                        STORE_FORMAT_VERSION.to_le_bytes().as_slice(),
                    )
                    .map_err(|e| self.error(e))?;
                }
            }
            transaction
                .open_table(SNAPSHOT)
                .map_err(|e| self.error(e))?;
            transaction.open_table(LOG).map_err(|e| self.error(e))?;
        }
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Reads the snapshot, the log in order and the clock's last timestamp.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let meta = transaction.open_table(META).map_err(|e| self.error(e))?;
        let snapshot_table = transaction
            .open_table(SNAPSHOT)
            .map_err(|e| self.error(e))?;
        let log_table = transaction.open_table(LOG).map_err(|e| self.error(e))?;
        let snapshot = snapshot_table
            .get(0)
            .map_err(|e| self.error(e))?
            .map(|value| value.value().to_vec());
        let hlc_last = meta
            .get(KEY_HLC_LAST)
            .map_err(|e| self.error(e))?
            .map(|value| value.value().to_vec());
        let mut log = Vec::new();
        for item in log_table.iter().map_err(|e| self.error(e))? {
            let (_, value) = item.map_err(|e| self.error(e))?;
            log.push(value.value().to_vec());
        }
        Ok(Loaded {
            snapshot,
            log,
            hlc_last,
        })
    }

    /// Appends one encoded delta and the clock's last timestamp, durably; returns the number
    /// of log entries after the append.
    pub fn append(&self, delta: &[u8], hlc_last: &[u8]) -> Result<u64, StoreError> {
        self.append_all(&[delta], hlc_last)
    }

    /// Appends encoded deltas, in order, and the clock's last timestamp, durably, in one
    /// transaction (one fsync); returns the number of log entries after the append.
    pub fn append_all(&self, deltas: &[&[u8]], hlc_last: &[u8]) -> Result<u64, StoreError> {
        let transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        let length;
        {
            let mut log = transaction.open_table(LOG).map_err(|e| self.error(e))?;
            let next = log
                .last()
                .map_err(|e| self.error(e))?
                .map(|(key, _)| key.value() + 1)
                .unwrap_or(0);
            for (key, delta) in (next..).zip(deltas) {
                log.insert(key, *delta).map_err(|e| self.error(e))?;
            }
            length = log.len().map_err(|e| self.error(e))?;
            let mut meta = transaction.open_table(META).map_err(|e| self.error(e))?;
            meta.insert(KEY_HLC_LAST, hlc_last)
                .map_err(|e| self.error(e))?;
        }
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(length)
    }

    /// Replaces the snapshot and clears the log in one transaction.
    pub fn compact(&self, snapshot: &[u8], hlc_last: &[u8]) -> Result<(), StoreError> {
        let transaction = self.database.begin_write().map_err(|e| self.error(e))?;
        {
            let mut snapshot_table = transaction
                .open_table(SNAPSHOT)
                .map_err(|e| self.error(e))?;
            snapshot_table
                .insert(0, snapshot)
                .map_err(|e| self.error(e))?;
            let mut log = transaction.open_table(LOG).map_err(|e| self.error(e))?;
            log.retain(|_, _| false).map_err(|e| self.error(e))?;
            let mut meta = transaction.open_table(META).map_err(|e| self.error(e))?;
            meta.insert(KEY_HLC_LAST, hlc_last)
                .map_err(|e| self.error(e))?;
        }
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Number of log entries since the last compaction.
    pub fn log_len(&self) -> Result<u64, StoreError> {
        let transaction = self.database.begin_read().map_err(|e| self.error(e))?;
        let log = transaction.open_table(LOG).map_err(|e| self.error(e))?;
        log.len().map_err(|e| self.error(e))
    }

    #[cfg(test)]
    fn set_format_version(&self, version: u32) {
        let transaction = self.database.begin_write().unwrap();
        {
            let mut meta = transaction.open_table(META).unwrap();
            meta.insert(KEY_FORMAT_VERSION, version.to_le_bytes().as_slice())
                .unwrap();
        }
        transaction.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.load().unwrap(), Loaded::default());
            assert_eq!(store.append(b"one", b"t1").unwrap(), 1);
            assert_eq!(store.append(b"two", b"t2").unwrap(), 2);
        }
        let store = Store::open(&path).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.snapshot, None);
        assert_eq!(loaded.log, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(loaded.hlc_last, Some(b"t2".to_vec()));
    }

    #[test]
    fn compaction_replaces_snapshot_and_clears_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&path).unwrap();
        store.append(b"one", b"t1").unwrap();
        store.compact(b"snap", b"t1").unwrap();
        assert_eq!(store.log_len().unwrap(), 0);
        store.append(b"three", b"t3").unwrap();
        drop(store);
        let loaded = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.snapshot, Some(b"snap".to_vec()));
        assert_eq!(loaded.log, vec![b"three".to_vec()]);
        assert_eq!(loaded.hlc_last, Some(b"t3".to_vec()));
    }

    #[test]
    fn unknown_format_version_is_refused_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        Store::open(&path).unwrap().set_format_version(99);
        let error = Store::open(&path).unwrap_err();
        assert!(matches!(error, StoreError::UnknownFormat { found: 99, .. }));
        assert!(error.to_string().contains("state.redb"), "{error}");
    }

    #[test]
    fn a_second_open_of_a_live_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = Store::open(&path).unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(error.to_string().contains("state.redb"), "{error}");
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The process umask, set for the closure and restored after. Tests run on several
    /// threads, so only a test that needs a umask sets one, and it restores it at once.
    fn with_umask<T>(umask: u32, run: impl FnOnce() -> T) -> T {
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
        let value = run();
        nix::sys::stat::umask(old);
        value
    }

    #[test]
    fn the_database_is_created_0600_whatever_the_umask_and_an_old_one_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let created = dir.path().join("created.redb");
        with_umask(0o000, || drop(Store::open(&created).unwrap()));
        assert_eq!(mode(&created), 0o600, "created under umask 000");

        // A database an older shoal created 0644 (or 0666) is tightened when opened, and keeps
        // what it holds.
        let old = dir.path().join("old.redb");
        {
            let store = Store::open(&old).unwrap();
            store.append(b"one", b"t1").unwrap();
        }
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o666)).unwrap();
        let store = Store::open(&old).unwrap();
        assert_eq!(mode(&old), 0o600, "tightened at open");
        assert_eq!(store.load().unwrap().log, vec![b"one".to_vec()]);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        std::fs::write(&path, b"this is not redb").unwrap();
        let error = Store::open(&path).unwrap_err();
        assert!(error.to_string().contains("state.redb"), "{error}");
    }
}
