//! A container's root filesystem built from cached layers: an overlayfs mount (layers as
//! read-only lower dirs, a private upper dir) where the kernel allows it, otherwise a full
//! copy that applies the layers in order and honours whiteouts and opaque directories.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::layer_unpack::{OPAQUE_XATTR, remove_any};

/// The overlay option string must fit in a page.
const OVERLAY_OPTIONS_BYTES_MAX: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("rootfs {path}: overlay mount failed: {source}")]
    Overlay {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("rootfs {path}: unmount failed: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// How to build a root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RootfsMode {
    /// overlayfs if the mount succeeds, else a copy.
    Auto,
    /// Always a copy (for kernels or file systems without overlayfs).
    Copy,
    /// overlayfs or an error.
    Overlay,
}

/// What was built, so it can be torn down.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RootfsKind {
    Overlay,
    Copy,
}

/// A built root filesystem under a container directory: `rootfs/`, and for overlays also
/// `upper/` and `work/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rootfs {
    pub path: PathBuf,
    pub kind: RootfsKind,
}

fn io_error(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> RootfsError + use<> {
    let path = path.to_owned();
    move |source| RootfsError::Io { path, what, source }
}

/// Builds `<container_dir>/rootfs` from `layers` (bottom first).
pub fn build_rootfs(
    layers: &[PathBuf],
    container_dir: &Path,
    mode: RootfsMode,
) -> Result<Rootfs, RootfsError> {
    let target = container_dir.join("rootfs");
    fs::create_dir_all(&target).map_err(io_error(&target, "create"))?;
    if mode != RootfsMode::Copy {
        match mount_overlay(layers, container_dir, &target) {
            Ok(()) => {
                return Ok(Rootfs {
                    path: target,
                    kind: RootfsKind::Overlay,
                });
            }
            Err(error) if mode == RootfsMode::Overlay => return Err(error),
            Err(error) => {
                tracing::info!(%error, "overlayfs unavailable, copying layers instead");
                for leftover in ["upper", "work"] {
                    let path = container_dir.join(leftover);
                    remove_any(&path).map_err(io_error(&path, "remove"))?;
                }
            }
        }
    }
    for layer in layers {
        apply_layer(layer, &target)?;
    }
    Ok(Rootfs {
        path: target,
        kind: RootfsKind::Copy,
    })
}

fn mount_overlay(
    layers: &[PathBuf],
    container_dir: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for directory in [&upper, &work] {
        fs::create_dir_all(directory).map_err(io_error(directory, "create"))?;
    }
    let mut lower = Vec::with_capacity(layers.len());
    for layer in layers.iter().rev() {
        let text = layer.to_string_lossy().into_owned();
        if text.contains([':', ',']) {
            return Err(RootfsError::Io {
                path: layer.clone(),
                what: "use as overlay lower dir",
                source: io::Error::new(io::ErrorKind::InvalidInput, "path contains ':' or ','"),
            });
        }
        lower.push(text);
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() > OVERLAY_OPTIONS_BYTES_MAX {
        return Err(RootfsError::Io {
            path: target.to_owned(),
            what: "mount overlay",
            source: io::Error::new(io::ErrorKind::InvalidInput, "too many layers for one mount"),
        });
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| RootfsError::Overlay {
        path: target.to_owned(),
        source,
    })
}

fn is_whiteout(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    metadata.file_type().is_char_device() && metadata.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    matches!(xattr::get(path, OPAQUE_XATTR), Ok(Some(value)) if value == b"y")
}

/// Applies one cached layer onto `target`, as overlayfs would show it.
fn apply_layer(layer: &Path, target: &Path) -> Result<(), RootfsError> {
    for entry in fs::read_dir(layer).map_err(io_error(layer, "read layer"))? {
        let entry = entry.map_err(io_error(layer, "read layer"))?;
        let source = entry.path();
        let destination = target.join(entry.file_name());
        let metadata = fs::symlink_metadata(&source).map_err(io_error(&source, "stat"))?;
        if is_whiteout(&metadata) {
            remove_any(&destination).map_err(io_error(&destination, "remove whited-out path"))?;
            continue;
        }
        let existing = fs::symlink_metadata(&destination).ok();
        if metadata.is_dir() {
            let keep =
                matches!(&existing, Some(existing) if existing.is_dir()) && !is_opaque(&source);
            if !keep {
                remove_any(&destination).map_err(io_error(&destination, "replace"))?;
                fs::create_dir(&destination).map_err(io_error(&destination, "create dir"))?;
            }
            apply_layer(&source, &destination)?;
            copy_attributes(&metadata, &destination)?;
            continue;
        }
        if existing.is_some() {
            remove_any(&destination).map_err(io_error(&destination, "replace"))?;
        }
        if metadata.file_type().is_symlink() {
            let link = fs::read_link(&source).map_err(io_error(&source, "read link"))?;
            std::os::unix::fs::symlink(&link, &destination)
                .map_err(io_error(&destination, "symlink"))?;
            lchown(&destination, Some(metadata.uid()), Some(metadata.gid()))
                .map_err(io_error(&destination, "chown"))?;
        } else if metadata.is_file() {
            fs::copy(&source, &destination).map_err(io_error(&destination, "copy"))?;
            copy_attributes(&metadata, &destination)?;
        } else {
            // FIFOs and sockets: recreate the node with the same type and mode.
            nix::sys::stat::mknod(
                &destination,
                nix::sys::stat::SFlag::from_bits_truncate(metadata.mode() & libc::S_IFMT),
                nix::sys::stat::Mode::from_bits_truncate(metadata.mode() & 0o7777),
                0,
            )
            .map_err(|error| RootfsError::Io {
                path: destination.clone(),
                what: "mknod",
                source: error.into(),
            })?;
        }
    }
    Ok(())
}

fn copy_attributes(metadata: &fs::Metadata, destination: &Path) -> Result<(), RootfsError> {
    lchown(destination, Some(metadata.uid()), Some(metadata.gid()))
        .map_err(io_error(destination, "chown"))?;
    fs::set_permissions(
        destination,
        fs::Permissions::from_mode(metadata.mode() & 0o7777),
    )
    .map_err(io_error(destination, "chmod"))
}

/// Unmounts (if an overlay) and removes a root filesystem and its upper and work dirs.
pub fn remove_rootfs(rootfs: &Rootfs) -> Result<(), RootfsError> {
    if rootfs.kind == RootfsKind::Overlay {
        match umount2(&rootfs.path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(source) => {
                return Err(RootfsError::Unmount {
                    path: rootfs.path.clone(),
                    source,
                });
            }
        }
    }
    remove_any(&rootfs.path).map_err(io_error(&rootfs.path, "remove"))?;
    if let Some(container_dir) = rootfs.path.parent() {
        for leftover in ["upper", "work"] {
            let path = container_dir.join(leftover);
            remove_any(&path).map_err(io_error(&path, "remove"))?;
        }
    }
    Ok(())
}
