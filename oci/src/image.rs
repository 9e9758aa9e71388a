//! The image store: turns an image on disk (and an optional expected digest) into a verified
//! image whose layers are in the content-addressed cache, ready for `rootfs::build_rootfs`.

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;

use crate::digest::Digest;
use crate::image_source::{self, SourceError};
use crate::layer_cache::{CacheError, LayerCache};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("image {path}: digest is {actual}, the service asks for {expected}")]
    UnexpectedDigest {
        path: PathBuf,
        expected: Digest,
        actual: String,
    },
}

/// A verified image whose layers are unpacked in the cache.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub path: PathBuf,
    pub manifest_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// Cached layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
}

pub struct ImageStore {
    cache: LayerCache,
}

impl ImageStore {
    /// Opens the store with its layer cache under `cache_dir`.
    pub fn open(cache_dir: &Path) -> Result<Self, ImageError> {
        Ok(Self {
            cache: LayerCache::open(cache_dir)?,
        })
    }

    /// Verifies the image at `path` and makes sure its layers are cached.
    ///
    /// `expected` may name either the manifest digest (OCI layouts and archives) or the
    /// config digest, i.e. the image id (any format); a docker-archive has no manifest blob,
    /// so only its image id can be pinned.
    pub fn prepare(
        &self,
        path: &Path,
        expected: Option<&Digest>,
    ) -> Result<PreparedImage, ImageError> {
        let image = image_source::resolve(path)?;
        if let Some(expected) = expected {
            let matches = image.manifest_digest.as_ref() == Some(expected)
                || &image.config_digest == expected;
            if !matches {
                let actual = match &image.manifest_digest {
                    Some(manifest) => format!("{manifest} (image id {})", image.config_digest),
                    None => format!("image id {}", image.config_digest),
                };
                return Err(ImageError::UnexpectedDigest {
                    path: path.to_owned(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let mut layer_dirs = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            layer_dirs.push(self.cache.ensure_layer(&image, layer)?);
        }
        Ok(PreparedImage {
            path: path.to_owned(),
            manifest_digest: image.manifest_digest.clone(),
            config_digest: image.config_digest.clone(),
            config: image.config.clone(),
            layer_dirs,
        })
    }
}
