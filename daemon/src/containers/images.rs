//! Where a service's image comes from: the `Images` seam the executor prepares images
//! through. `shoal_oci::ImageStore` is the real one (verified, unpacked into the layer
//! cache); `FakeImages` (tests and the cluster simulator) hands out an empty image and
//! refuses the paths it was told to.

use std::path::{Path, PathBuf};

use shoal_crdt::ServiceSpec;
use shoal_oci::{Digest, ImageStore, PreparedImage};

/// Why a service's image cannot be used. Every message names the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageProblem {
    #[error("image_digest {text}: {message}")]
    Digest { text: String, message: String },
    #[error("image {image}: {source}")]
    Prepare {
        image: String,
        #[source]
        source: Box<shoal_oci::ImageError>,
    },
    #[error("image {image}: {message}")]
    Refused { image: String, message: String },
}

/// Prepares a service's image for a container.
pub trait Images: Send + Sync {
    fn prepare(&self, spec: &ServiceSpec) -> Result<PreparedImage, ImageProblem>;
}

impl Images for ImageStore {
    fn prepare(&self, spec: &ServiceSpec) -> Result<PreparedImage, ImageProblem> {
        let expected: Option<Digest> =
            match &spec.image_digest {
                Some(text) => Some(text.parse().map_err(
                    |error: shoal_oci::digest::DigestError| ImageProblem::Digest {
                        text: text.clone(),
                        message: error.to_string(),
                    },
                )?),
                None => None,
            };
        ImageStore::prepare(self, Path::new(&spec.image), expected.as_ref()).map_err(|source| {
            ImageProblem::Prepare {
                image: spec.image.clone(),
                source: Box::new(source),
            }
        })
    }
}

/// Images that need no files: every image path is an empty image but those under
/// `missing_prefix`, which are refused as a bad image would be.
#[derive(Debug, Clone)]
pub struct FakeImages {
    missing_prefix: String,
}

impl FakeImages {
    /// Refuses every image path starting with `missing_prefix`.
    pub fn new(missing_prefix: &str) -> FakeImages {
        FakeImages {
            missing_prefix: missing_prefix.to_string(),
        }
    }
}

impl Images for FakeImages {
    fn prepare(&self, spec: &ServiceSpec) -> Result<PreparedImage, ImageProblem> {
        if spec.image.starts_with(&self.missing_prefix) {
            return Err(ImageProblem::Refused {
                image: spec.image.clone(),
                message: "no such image".to_string(),
            });
        }
        let config = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
        }))
        .expect("a fixed, valid image configuration");
        Ok(PreparedImage {
            path: PathBuf::from(&spec.image),
            manifest_digest: None,
            config_digest: Digest::of_bytes(spec.image.as_bytes()),
            config,
            layer_dirs: Vec::new(),
        })
    }
}
