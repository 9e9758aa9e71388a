//! The content-addressed layer cache: one unpacked directory per layer, named by the layer's
//! uncompressed digest (its diff id). A layer is unpacked into a temporary directory, verified,
//! and only then renamed into place, so a directory under `layers/` is always complete and
//! verified; a crash leaves only a temporary directory, which is removed on the next open.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::image_source::{LayerRef, ResolvedImage, SourceError};
use crate::layer_unpack::{UnpackError, remove_any, unpack_layer};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("layer cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("image {image}: layer {blob_name}: {source}")]
    Unpack {
        image: PathBuf,
        blob_name: String,
        #[source]
        source: UnpackError,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("image {image}: layer {blob_name} has {what} {actual}, expected {expected}")]
    LayerMismatch {
        image: PathBuf,
        blob_name: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
}

static TEMPORARY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory of unpacked, verified layers.
pub struct LayerCache {
    root: PathBuf,
}

impl LayerCache {
    /// Opens (creating if needed) the cache at `root` and removes leftovers of interrupted
    /// unpacks.
    pub fn open(root: &Path) -> Result<Self, CacheError> {
        let io_error = |source| CacheError::Io {
            path: root.to_owned(),
            source,
        };
        fs::create_dir_all(root.join("layers")).map_err(io_error)?;
        let temporary = root.join("tmp");
        if temporary.exists() {
            fs::remove_dir_all(&temporary).map_err(io_error)?;
        }
        fs::create_dir_all(&temporary).map_err(io_error)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Where the layer with this diff id lives once cached.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    /// Returns the cached directory of `layer`, unpacking and verifying it first if needed.
    pub fn ensure_layer(
        &self,
        image: &ResolvedImage,
        layer: &LayerRef,
    ) -> Result<PathBuf, CacheError> {
        let final_path = self.layer_path(&layer.diff_id);
        if final_path.is_dir() {
            return Ok(final_path);
        }
        let temporary = self.root.join("tmp").join(format!(
            "{}.{}.{}",
            layer.diff_id.hex(),
            std::process::id(),
            TEMPORARY_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let io_error = |source| CacheError::Io {
            path: temporary.clone(),
            source,
        };
        fs::create_dir(&temporary).map_err(io_error)?;
        let result = self.unpack_verified(image, layer, &temporary);
        if let Err(error) = result {
            let _ = remove_any(&temporary);
            return Err(error);
        }
        match fs::rename(&temporary, &final_path) {
            Ok(()) => Ok(final_path),
            // Another unpack of the same layer won the race; its result is as good as ours.
            Err(_) if final_path.is_dir() => {
                remove_any(&temporary).map_err(io_error)?;
                Ok(final_path)
            }
            Err(source) => {
                let _ = remove_any(&temporary);
                Err(CacheError::Io {
                    path: final_path,
                    source,
                })
            }
        }
    }

    fn unpack_verified(
        &self,
        image: &ResolvedImage,
        layer: &LayerRef,
        into: &Path,
    ) -> Result<(), CacheError> {
        let (blob, _) = image.open_layer(layer)?;
        let digests = unpack_layer(blob, into).map_err(|source| CacheError::Unpack {
            image: image.path.clone(),
            blob_name: layer.blob_name.clone(),
            source,
        })?;
        let mismatch = |what, expected: String, actual: String| CacheError::LayerMismatch {
            image: image.path.clone(),
            blob_name: layer.blob_name.clone(),
            what,
            expected,
            actual,
        };
        if let Some((blob_digest, blob_bytes)) = &layer.blob_digest {
            if &digests.blob != blob_digest {
                return Err(mismatch(
                    "digest",
                    blob_digest.to_string(),
                    digests.blob.to_string(),
                ));
            }
            if digests.blob_bytes != *blob_bytes {
                return Err(mismatch(
                    "size",
                    blob_bytes.to_string(),
                    digests.blob_bytes.to_string(),
                ));
            }
        }
        if digests.tar != layer.diff_id {
            return Err(mismatch(
                "diff id",
                layer.diff_id.to_string(),
                digests.tar.to_string(),
            ));
        }
        Ok(())
    }
}
