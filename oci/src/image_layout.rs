//! Writing OCI image layouts, for images made on the spot: `shoal demo` and the tests and
//! benches build a one-layer busybox image from the host's static `/bin/busybox`
//! (`busybox_image`), so nothing is ever downloaded. Layers are tars, optionally gzipped;
//! every blob is named by its sha256 as the image spec requires, so the result passes
//! `ImageStore::prepare`'s digest checks like any real image.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// The host's static busybox (Debian: busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the busybox image's `/bin`.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "dd", "head", "tr", "grep", "seq", "unshare", "ip", "ls",
    "test", "wget", "nc", "httpd",
];

/// Why an image layout could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io { what, path, source }
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A layer as stored: the blob (maybe gzipped) and the digest of the uncompressed tar.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub gzipped: bool,
}

/// A layer from an uncompressed tar, gzipped when asked.
pub fn layer(tar: Vec<u8>, gzipped: bool) -> Layer {
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let blob = if gzipped {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder
            .write_all(&tar)
            .and_then(|()| encoder.finish())
            .expect("gzip into memory cannot fail")
    } else {
        tar
    };
    Layer {
        blob,
        diff_id,
        gzipped,
    }
}

/// The image configuration of `layers` with default command `cmd`.
pub fn image_config(layers: &[Layer], cmd: &[&str]) -> Vec<u8> {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let diff_ids: Vec<&str> = layers.iter().map(|layer| layer.diff_id.as_str()).collect();
    serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("a json value serialises")
}

/// What was written, for callers that pin or tamper with it.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    pub path: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_blob_paths: Vec<PathBuf>,
}

/// Writes an OCI image layout directory at `dir` holding `layers` and a config with `cmd`.
pub fn write_oci_layout(
    dir: &Path,
    layers: &[Layer],
    cmd: &[&str],
) -> Result<WrittenImage, LayoutError> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io("cannot create", &blobs))?;
    let write_blob = |bytes: &[u8]| -> Result<(String, PathBuf), LayoutError> {
        let hex = sha256_hex(bytes);
        let path = blobs.join(&hex);
        std::fs::write(&path, bytes).map_err(io("cannot write", &path))?;
        Ok((hex, path))
    };
    let mut descriptors = Vec::new();
    let mut layer_blob_paths = Vec::new();
    for layer in layers {
        let (hex, path) = write_blob(&layer.blob)?;
        layer_blob_paths.push(path);
        let media_type = if layer.gzipped {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descriptors.push(json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": layer.blob.len() }));
    }
    let config = image_config(layers, cmd);
    let (config_hex, _) = write_blob(&config)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len() },
        "layers": descriptors,
    }))
    .expect("a json value serialises");
    let (manifest_hex, _) = write_blob(&manifest)?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_hex}"), "size": manifest.len() }],
    }))
    .expect("a json value serialises");
    let index_path = dir.join("index.json");
    std::fs::write(&index_path, index).map_err(io("cannot write", &index_path))?;
    let layout_path = dir.join("oci-layout");
    std::fs::write(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io("cannot write", &layout_path))?;
    Ok(WrittenImage {
        path: dir.to_path_buf(),
        manifest_digest: format!("sha256:{manifest_hex}"),
        config_digest: format!("sha256:{config_hex}"),
        layer_blob_paths,
    })
}

/// A tar header owned by root, dated 0, so a layer's bytes (and digest) depend only on its files.
pub fn tar_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// One uncompressed layer: `busybox` as `/bin/busybox`, its applets as links, and the
/// directories a container needs.
pub fn busybox_layer(busybox: &Path) -> Result<Vec<u8>, LayoutError> {
    let binary = std::fs::read(busybox).map_err(io("cannot read", busybox))?;
    let build = || -> std::io::Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for dir in ["bin/", "proc/", "dev/", "sys/", "tmp/", "etc/", "root/"] {
            let mut header = tar_header(tar::EntryType::Directory, 0, 0o755);
            builder.append_data(&mut header, dir, &[][..])?;
        }
        let mut header = tar_header(tar::EntryType::Regular, binary.len() as u64, 0o755);
        builder.append_data(&mut header, "bin/busybox", &binary[..])?;
        for applet in BUSYBOX_APPLETS {
            let mut header = tar_header(tar::EntryType::Symlink, 0, 0o777);
            builder.append_link(&mut header, format!("bin/{applet}"), "busybox")?;
        }
        builder.into_inner()
    };
    build().map_err(io("cannot build a layer from", busybox))
}

/// A one-layer (gzipped) busybox OCI layout at `dir` whose default command is `cmd`.
pub fn busybox_image(dir: &Path, cmd: &[&str]) -> Result<WrittenImage, LayoutError> {
    let tar = busybox_layer(Path::new(BUSYBOX))?;
    write_oci_layout(dir, &[layer(tar, true)], cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_layout_is_prepared_with_its_digests() {
        let dir = tempfile::tempdir().unwrap();
        let fake_busybox = dir.path().join("busybox");
        std::fs::write(&fake_busybox, b"#!/bin/sh\n").unwrap();
        let tar = busybox_layer(&fake_busybox).unwrap();
        let written = write_oci_layout(
            &dir.path().join("image"),
            &[layer(tar, true)],
            &["/bin/true"],
        )
        .unwrap();
        let store = crate::ImageStore::open(&dir.path().join("cache")).unwrap();
        let expected: crate::Digest = written.manifest_digest.parse().unwrap();
        let image = store.prepare(&written.path, Some(&expected)).unwrap();
        assert_eq!(image.layer_dirs.len(), 1);
        assert!(image.layer_dirs[0].join("bin/busybox").is_file());
        assert!(image.layer_dirs[0].join("bin/sh").is_symlink());
        let missing = busybox_layer(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
