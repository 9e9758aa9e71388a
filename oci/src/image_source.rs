//! Reads an image from disk in one of three shapes — an OCI image layout directory, an OCI
//! archive (a tar of such a layout) or a docker-archive tar (`manifest.json` plus layer tars,
//! as made by Nix `dockerTools` and `skopeo copy`) — and resolves it to a verified config and
//! an ordered list of layers. Manifests and configs are checked against their digests here;
//! layer contents are checked while they are unpacked (see `layer_unpack`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::digest::Digest;

/// Manifests, indexes and configs are small; anything bigger is refused before it is read.
pub const METADATA_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// An archive with more entries than this is refused while it is indexed.
pub const ARCHIVE_ENTRIES_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("image {path}: not found")]
    NotFound { path: PathBuf },
    #[error("image {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("image {path}: neither an OCI layout, an OCI archive nor a docker-archive")]
    UnknownFormat { path: PathBuf },
    #[error("image {path}: {name} is missing")]
    MissingBlob { path: PathBuf, name: String },
    #[error("image {path}: {name} is larger than {bytes_max} bytes")]
    TooLarge {
        path: PathBuf,
        name: String,
        bytes_max: u64,
    },
    #[error("image {path}: {name} is not valid json: {message}")]
    BadJson {
        path: PathBuf,
        name: String,
        message: String,
    },
    #[error("image {path}: {name} has digest {actual}, expected {expected}")]
    DigestMismatch {
        path: PathBuf,
        name: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("image {path}: {name} has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        path: PathBuf,
        name: String,
        expected: u64,
        actual: u64,
    },
    #[error("image {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where blobs are read from: a directory, or an indexed (uncompressed) tar.
enum BlobSource {
    Directory(PathBuf),
    Archive {
        path: PathBuf,
        /// Normalised entry name -> (offset of the data, size).
        entries: HashMap<String, (u64, u64)>,
    },
}

fn normalise_entry_name(name: &str) -> String {
    name.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

impl BlobSource {
    fn index_archive(path: &Path) -> Result<Self, SourceError> {
        let io_error = |what: &str, source| SourceError::Io {
            path: path.to_owned(),
            what: what.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|error| io_error("open", error))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive
            .entries()
            .map_err(|error| io_error("read archive", error))?
        {
            let entry = entry.map_err(|error| io_error("read archive entry", error))?;
            if entries.len() >= ARCHIVE_ENTRIES_MAX {
                return Err(SourceError::Invalid {
                    path: path.to_owned(),
                    message: format!("archive has more than {ARCHIVE_ENTRIES_MAX} entries"),
                });
            }
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(|error| io_error("read archive entry name", error))?;
            let name = normalise_entry_name(&name.to_string_lossy());
            entries.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self::Archive {
            path: path.to_owned(),
            entries,
        })
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Self::Directory(root) => root.join(name).is_file(),
            Self::Archive { entries, .. } => entries.contains_key(name),
        }
    }

    /// Opens a blob by its path inside the image, with its size.
    fn open(
        &self,
        image_path: &Path,
        name: &str,
    ) -> Result<(Box<dyn Read + Send>, u64), SourceError> {
        let missing = || SourceError::MissingBlob {
            path: image_path.to_owned(),
            name: name.to_owned(),
        };
        let io_error = |source| SourceError::Io {
            path: image_path.to_owned(),
            what: format!("read {name}"),
            source,
        };
        if name.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(SourceError::Invalid {
                path: image_path.to_owned(),
                message: format!("blob name {name:?} leaves the image"),
            });
        }
        match self {
            Self::Directory(root) => {
                let path = root.join(name);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => return Err(missing()),
                    Err(error) => return Err(io_error(error)),
                };
                let metadata = file.metadata().map_err(io_error)?;
                if !metadata.is_file() {
                    return Err(missing());
                }
                Ok((Box::new(file), metadata.len()))
            }
            Self::Archive { path, entries } => {
                let (offset, size) = *entries.get(name).ok_or_else(missing)?;
                let mut file = File::open(path).map_err(io_error)?;
                file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    fn read_small(&self, image_path: &Path, name: &str) -> Result<Vec<u8>, SourceError> {
        let (reader, size) = self.open(image_path, name)?;
        if size > METADATA_BYTES_MAX {
            return Err(SourceError::TooLarge {
                path: image_path.to_owned(),
                name: name.to_owned(),
                bytes_max: METADATA_BYTES_MAX,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(METADATA_BYTES_MAX)
            .read_to_end(&mut bytes)
            .map_err(|source| SourceError::Io {
                path: image_path.to_owned(),
                what: format!("read {name}"),
                source,
            })?;
        Ok(bytes)
    }
}

/// One layer of a resolved image, bottom first.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// Path of the blob inside the image.
    pub blob_name: String,
    /// Digest and size of the blob as stored (possibly compressed), when the format names it.
    pub blob_digest: Option<(Digest, u64)>,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`); the cache key.
    pub diff_id: Digest,
}

/// An image whose manifest and config have been verified.
pub struct ResolvedImage {
    pub path: PathBuf,
    /// The OCI manifest digest; `None` for docker-archives, which have no manifest blob.
    pub manifest_digest: Option<Digest>,
    /// The config digest, which is also the docker image id.
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    pub layers: Vec<LayerRef>,
    source: BlobSource,
}

impl ResolvedImage {
    /// Opens a layer blob for unpacking.
    pub fn open_layer(&self, layer: &LayerRef) -> Result<(Box<dyn Read + Send>, u64), SourceError> {
        self.source.open(&self.path, &layer.blob_name)
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|error| SourceError::BadJson {
        path: path.to_owned(),
        name: name.to_owned(),
        message: error.to_string(),
    })
}

fn parse_digest(path: &Path, text: &str) -> Result<Digest, SourceError> {
    text.parse()
        .map_err(|error: crate::digest::DigestError| SourceError::Invalid {
            path: path.to_owned(),
            message: error.to_string(),
        })
}

fn check_digest(
    path: &Path,
    name: &str,
    bytes: &[u8],
    expected: &Digest,
) -> Result<(), SourceError> {
    let actual = Digest::of_bytes(bytes);
    if &actual != expected {
        return Err(SourceError::DigestMismatch {
            path: path.to_owned(),
            name: name.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

fn blob_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Opens the image at `path`, detecting its format.
pub fn resolve(path: &Path) -> Result<ResolvedImage, SourceError> {
    let metadata = std::fs::metadata(path).map_err(|error| {
        if error.kind() == io::ErrorKind::NotFound {
            SourceError::NotFound {
                path: path.to_owned(),
            }
        } else {
            SourceError::Io {
                path: path.to_owned(),
                what: "stat".to_owned(),
                source: error,
            }
        }
    })?;
    let source = if metadata.is_dir() {
        BlobSource::Directory(path.to_owned())
    } else {
        BlobSource::index_archive(path)?
    };
    if source.contains("oci-layout") && source.contains("index.json") {
        resolve_oci(path, source)
    } else if source.contains("manifest.json") {
        resolve_docker_archive(path, source)
    } else {
        Err(SourceError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}

fn resolve_oci(path: &Path, source: BlobSource) -> Result<ResolvedImage, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        path: path.to_owned(),
        message,
    };
    let index: ImageIndex =
        parse_json(path, "index.json", &source.read_small(path, "index.json")?)?;
    let mut descriptor = index
        .manifests()
        .first()
        .cloned()
        .ok_or_else(|| invalid("index.json lists no manifest".to_owned()))?;
    // One level of nested index is followed (what `docker save` and some tools write).
    let mut manifest_bytes;
    let mut depth = 0;
    loop {
        let digest = parse_digest(path, descriptor.digest().as_ref())?;
        let name = blob_name(&digest);
        manifest_bytes = source.read_small(path, &name)?;
        check_digest(path, &name, &manifest_bytes, &digest)?;
        if manifest_bytes.len() as u64 != descriptor.size() {
            return Err(SourceError::SizeMismatch {
                path: path.to_owned(),
                name,
                expected: descriptor.size(),
                actual: manifest_bytes.len() as u64,
            });
        }
        if descriptor.media_type() != &MediaType::ImageIndex || depth > 0 {
            break;
        }
        let nested: ImageIndex = parse_json(path, &name, &manifest_bytes)?;
        descriptor = nested
            .manifests()
            .first()
            .cloned()
            .ok_or_else(|| invalid(format!("{name} lists no manifest")))?;
        depth += 1;
    }
    let manifest_digest = parse_digest(path, descriptor.digest().as_ref())?;
    let manifest: ImageManifest = parse_json(path, &blob_name(&manifest_digest), &manifest_bytes)?;

    let config_digest = parse_digest(path, manifest.config().digest().as_ref())?;
    let config_name = blob_name(&config_digest);
    let config_bytes = source.read_small(path, &config_name)?;
    check_digest(path, &config_name, &config_bytes, &config_digest)?;
    if config_bytes.len() as u64 != manifest.config().size() {
        return Err(SourceError::SizeMismatch {
            path: path.to_owned(),
            name: config_name,
            expected: manifest.config().size(),
            actual: config_bytes.len() as u64,
        });
    }
    let config: ImageConfiguration = parse_json(path, &config_name, &config_bytes)?;

    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(invalid(format!(
            "manifest has {} layers but the config has {} diff ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let digest = parse_digest(path, layer.digest().as_ref())?;
        layers.push(LayerRef {
            blob_name: blob_name(&digest),
            blob_digest: Some((digest, layer.size())),
            diff_id: parse_digest(path, diff_id)?,
        });
    }
    Ok(ResolvedImage {
        path: path.to_owned(),
        manifest_digest: Some(manifest_digest),
        config_digest,
        config,
        layers,
        source,
    })
}

#[derive(serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn resolve_docker_archive(path: &Path, source: BlobSource) -> Result<ResolvedImage, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        path: path.to_owned(),
        message,
    };
    let entries: Vec<DockerManifestEntry> = parse_json(
        path,
        "manifest.json",
        &source.read_small(path, "manifest.json")?,
    )?;
    let [entry] = <[DockerManifestEntry; 1]>::try_from(entries).map_err(|entries| {
        invalid(format!(
            "manifest.json lists {} images, expected exactly one",
            entries.len()
        ))
    })?;
    let config_name = normalise_entry_name(&entry.config);
    let config_bytes = source.read_small(path, &config_name)?;
    let config_digest = Digest::of_bytes(&config_bytes);
    // The config's file name is its digest (`<hex>.json` or `blobs/sha256/<hex>`); when it
    // is, it must match, which catches a config edited in place.
    let stem = config_name
        .rsplit('/')
        .next()
        .unwrap_or(&config_name)
        .trim_end_matches(".json");
    if let Ok(named) = Digest::from_hex(stem) {
        check_digest(path, &config_name, &config_bytes, &named)?;
    }
    let config: ImageConfiguration = parse_json(path, &config_name, &config_bytes)?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(invalid(format!(
            "manifest.json has {} layers but the config has {} diff ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (layer, diff_id) in entry.layers.iter().zip(diff_ids) {
        layers.push(LayerRef {
            blob_name: normalise_entry_name(layer),
            blob_digest: None,
            diff_id: parse_digest(path, diff_id)?,
        });
    }
    Ok(ResolvedImage {
        path: path.to_owned(),
        manifest_digest: None,
        config_digest,
        config,
        layers,
        source,
    })
}
