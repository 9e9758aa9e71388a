//! Unpacks one layer tar (plain or gzip) into a directory, safely, while hashing it.
//!
//! Paths that are absolute, contain `..`, or would be written through a symlink are refused,
//! as are device nodes and hard links that leave the layer. OCI whiteouts are converted to
//! overlayfs form so the same directory can be an overlay lower dir: `.wh.<name>` becomes a
//! 0:0 character device `<name>`, `.wh..wh..opq` becomes the `trusted.overlay.opaque=y`
//! xattr on its directory. `rootfs` understands the same form when it has to copy.

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::digest::{Digest, HashingReader};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?} escapes the root")]
    PathEscapes { entry: String },
    #[error("layer entry {entry:?} would be written through the symlink {symlink:?}")]
    ThroughSymlink { entry: String, symlink: PathBuf },
    #[error("layer entry {entry:?} is a device node, which images may not contain")]
    DeviceNode { entry: String },
    #[error("layer entry {entry:?} has unsupported type {kind}")]
    UnsupportedEntry { entry: String, kind: String },
    #[error("layer uses an unsupported compression (only plain tar and gzip are supported)")]
    UnsupportedCompression,
    #[error("layer entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error("read layer: {0}")]
    Read(#[source] io::Error),
}

/// Digests of what was read: the stored blob and the uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackDigests {
    pub blob: Digest,
    pub blob_bytes: u64,
    pub tar: Digest,
}

enum Decompressed<R: BufRead> {
    Plain(R),
    Gzip(Box<GzDecoder<R>>),
}

impl<R: BufRead> Read for Decompressed<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(reader) => reader.read(buffer),
            Self::Gzip(reader) => reader.read(buffer),
        }
    }
}

impl<R: BufRead> Decompressed<R> {
    fn into_inner(self) -> R {
        match self {
            Self::Plain(reader) => reader,
            Self::Gzip(reader) => reader.into_inner(),
        }
    }
}

/// Unpacks `blob` into `destination` (an empty directory) and returns the digests of what
/// was read. The caller must compare them with the expected ones before using the result.
pub fn unpack_layer(blob: impl Read, destination: &Path) -> Result<UnpackDigests, UnpackError> {
    let mut buffered = BufReader::new(HashingReader::new(blob));
    let head = buffered.fill_buf().map_err(UnpackError::Read)?;
    let decompressed = if head.starts_with(&[0x1f, 0x8b]) {
        Decompressed::Gzip(Box::new(GzDecoder::new(buffered)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || head.starts_with(b"BZh") {
        return Err(UnpackError::UnsupportedCompression);
    } else {
        Decompressed::Plain(buffered)
    };
    let mut archive = tar::Archive::new(HashingReader::new(decompressed));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        unpack_entry(&mut entry, destination)?;
    }
    let (tar, _, decompressed) = archive.into_inner().finish().map_err(UnpackError::Read)?;
    let hashing_blob = decompressed.into_inner().into_inner();
    let (blob, blob_bytes, _) = hashing_blob.finish().map_err(UnpackError::Read)?;
    Ok(UnpackDigests {
        blob,
        blob_bytes,
        tar,
    })
}

/// Turns a tar path into a relative path of normal components, refusing anything else.
fn clean_relative(entry: &str, path: &Path) -> Result<PathBuf, UnpackError> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::PathEscapes {
                    entry: entry.to_owned(),
                });
            }
        }
    }
    Ok(clean)
}

/// Creates the parent directories of `relative` under `root`, refusing to pass a symlink.
fn prepare_parents(entry: &str, root: &Path, relative: &Path) -> Result<(), UnpackError> {
    let mut current = root.to_path_buf();
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        current.push(part);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink {
                    entry: entry.to_owned(),
                    symlink: current,
                });
            }
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                // A file where a directory is needed: the later entry wins, as in docker.
                fs::remove_file(&current).map_err(|source| entry_error(entry, source))?;
                fs::create_dir(&current).map_err(|source| entry_error(entry, source))?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| entry_error(entry, source))?;
            }
            Err(error) => return Err(entry_error(entry, error)),
        }
    }
    Ok(())
}

fn entry_error(entry: &str, source: io::Error) -> UnpackError {
    UnpackError::Entry {
        entry: entry.to_owned(),
        source,
    }
}

/// Removes whatever is at `path` (file, symlink or directory tree), if anything.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Makes the overlayfs whiteout (a 0:0 character device) at `path`.
pub fn make_whiteout(path: &Path) -> io::Result<()> {
    remove_any(path)?;
    mknod(
        path,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o000),
        makedev(0, 0),
    )
    .map_err(io::Error::from)
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, root: &Path) -> Result<(), UnpackError> {
    let raw_path = entry.path().map_err(UnpackError::Read)?.into_owned();
    let name = raw_path.to_string_lossy().into_owned();
    let relative = clean_relative(&name, &raw_path)?;
    if relative.as_os_str().is_empty() {
        return Ok(());
    }
    prepare_parents(&name, root, &relative)?;
    let target = root.join(&relative);
    let file_name = relative
        .file_name()
        .map(|file_name| file_name.to_string_lossy().into_owned())
        .unwrap_or_default();

    if file_name == OPAQUE_MARKER {
        let directory = target.parent().unwrap_or(root);
        xattr::set(directory, OPAQUE_XATTR, b"y").map_err(|source| entry_error(&name, source))?;
        return Ok(());
    }
    if let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) {
        // `.wh..` would name the parent directory: a whiteout may only hide a sibling.
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(UnpackError::PathEscapes { entry: name });
        }
        let hidden_path = target.with_file_name(hidden);
        return make_whiteout(&hidden_path).map_err(|source| entry_error(&name, source));
    }

    let kind = entry.header().entry_type();
    match kind {
        tar::EntryType::Block | tar::EntryType::Char => {
            Err(UnpackError::DeviceNode { entry: name })
        }
        tar::EntryType::Link => {
            let link_name = entry
                .link_name()
                .map_err(UnpackError::Read)?
                .ok_or_else(|| UnpackError::UnsupportedEntry {
                    entry: name.clone(),
                    kind: "hard link without a target".to_owned(),
                })?
                .into_owned();
            // Hard link targets are paths inside the layer; a leading `/` means its root.
            let stripped = link_name
                .strip_prefix("/")
                .unwrap_or(&link_name)
                .to_path_buf();
            let source_relative = clean_relative(&name, &stripped)?;
            prepare_parents(&name, root, &source_relative)?;
            let source = root.join(&source_relative);
            let metadata =
                fs::symlink_metadata(&source).map_err(|error| entry_error(&name, error))?;
            if metadata.is_dir() {
                return Err(UnpackError::UnsupportedEntry {
                    entry: name,
                    kind: "hard link to a directory".to_owned(),
                });
            }
            remove_any(&target).map_err(|error| entry_error(&name, error))?;
            fs::hard_link(&source, &target).map_err(|error| entry_error(&name, error))
        }
        tar::EntryType::Regular
        | tar::EntryType::Continuous
        | tar::EntryType::Symlink
        | tar::EntryType::Fifo => {
            remove_any(&target).map_err(|error| entry_error(&name, error))?;
            entry
                .unpack(&target)
                .map(|_| ())
                .map_err(|error| entry_error(&name, error))
        }
        tar::EntryType::Directory => {
            if let Ok(metadata) = fs::symlink_metadata(&target)
                && !metadata.is_dir()
            {
                remove_any(&target).map_err(|error| entry_error(&name, error))?;
            }
            entry
                .unpack(&target)
                .map(|_| ())
                .map_err(|error| entry_error(&name, error))
        }
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => Ok(()),
        other => Err(UnpackError::UnsupportedEntry {
            entry: name,
            kind: format!("{other:?}"),
        }),
    }
}
