//! Test helpers: build small OCI images (layout, OCI archive, docker-archive) from
//! `/bin/busybox` and hand-made tar entries, so nothing is downloaded at test time.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest as _, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";

/// Fails under CI when not root; elsewhere tells why the test does nothing.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root (real containers, mounts, cgroups) and CI=true is set");
    }
    eprintln!("not root: skipping a test that needs real containers");
    false
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One entry of a hand-made layer.
pub enum Entry {
    Dir(&'static str),
    File(&'static str, Vec<u8>, u32),
    Symlink(&'static str, &'static str),
    /// A header written byte by byte, for names `tar::Builder` would refuse.
    RawFile(&'static str, Vec<u8>),
    CharDevice(&'static str),
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// An uncompressed layer tar.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            Entry::Dir(path) => {
                let mut header = header(tar::EntryType::Directory, 0, 0o755);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Entry::File(path, data, mode) => {
                let mut header = header(tar::EntryType::Regular, data.len() as u64, *mode);
                builder.append_data(&mut header, path, &data[..]).unwrap();
            }
            Entry::Symlink(path, target) => {
                let mut header = header(tar::EntryType::Symlink, 0, 0o777);
                builder.append_link(&mut header, path, target).unwrap();
            }
            Entry::RawFile(path, data) => {
                let mut header = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                let name = &mut header.as_old_mut().name;
                name.fill(0);
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_cksum();
                builder.append(&header, &data[..]).unwrap();
            }
            Entry::CharDevice(path) => {
                let mut header = header(tar::EntryType::Char, 0, 0o666);
                header.set_device_major(1).unwrap();
                header.set_device_minor(3).unwrap();
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// The base layer: busybox and the directories a container needs.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = fs::read(BUSYBOX).expect("busybox-static is installed");
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", busybox, 0o755),
    ];
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "dd", "head", "tr", "grep", "seq", "unshare", "ip",
        "ls", "test",
    ] {
        entries.push(Entry::Symlink(
            Box::leak(format!("bin/{applet}").into_boxed_str()),
            "busybox",
        ));
    }
    for dir in ["proc/", "dev/", "sys/", "tmp/", "etc/", "root/"] {
        entries.push(Entry::Dir(dir));
    }
    layer_tar(&entries)
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A layer as stored: the blob (maybe gzip) and the digest of the uncompressed tar.
pub struct Layer {
    pub blob: Vec<u8>,
    pub diff_id: String,
    pub gzipped: bool,
}

pub fn layer(tar: Vec<u8>, gzipped: bool) -> Layer {
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let blob = if gzipped { gzip(&tar) } else { tar };
    Layer {
        blob,
        diff_id,
        gzipped,
    }
}

pub fn image_config(layers: &[Layer], cmd: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/" },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|layer| layer.diff_id.clone()).collect::<Vec<_>>() },
    }))
    .unwrap()
}

/// What was written, for the tests to pin or tamper with.
pub struct WrittenImage {
    pub path: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_blob_paths: Vec<PathBuf>,
}

/// Writes an OCI image layout directory.
pub fn write_oci_layout(dir: &Path, layers: &[Layer], cmd: &[&str]) -> WrittenImage {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let mut layer_descriptors = Vec::new();
    let mut layer_blob_paths = Vec::new();
    for layer in layers {
        let hex = sha256_hex(&layer.blob);
        let path = blobs.join(&hex);
        fs::write(&path, &layer.blob).unwrap();
        layer_blob_paths.push(path);
        let media_type = if layer.gzipped {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layer_descriptors.push(json!({ "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": layer.blob.len() }));
    }
    let config = image_config(layers, cmd);
    let config_hex = sha256_hex(&config);
    fs::write(blobs.join(&config_hex), &config).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_hex}"), "size": config.len() },
        "layers": layer_descriptors,
    }))
    .unwrap();
    let manifest_hex = sha256_hex(&manifest);
    fs::write(blobs.join(&manifest_hex), &manifest).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest_hex}"), "size": manifest.len() }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    WrittenImage {
        path: dir.to_owned(),
        manifest_digest: format!("sha256:{manifest_hex}"),
        config_digest: format!("sha256:{config_hex}"),
        layer_blob_paths,
    }
}

/// Tars up every file under `dir` into `archive`.
pub fn tar_directory(dir: &Path, archive: &Path) {
    let mut builder = tar::Builder::new(fs::File::create(archive).unwrap());
    builder.append_dir_all(".", dir).unwrap();
    builder.finish().unwrap();
}

/// Writes a docker-archive tar as `docker save` / `skopeo copy docker-archive:` make it.
pub fn write_docker_archive(archive: &Path, layers: &[Layer], cmd: &[&str]) -> WrittenImage {
    let mut builder = tar::Builder::new(fs::File::create(archive).unwrap());
    let mut append = |name: &str, data: &[u8]| {
        let mut header = header(tar::EntryType::Regular, data.len() as u64, 0o644);
        builder.append_data(&mut header, name, data).unwrap();
    };
    let mut layer_names = Vec::new();
    for layer in layers {
        let name = format!("{}.tar", layer.diff_id.trim_start_matches("sha256:"));
        append(&name, &layer.blob);
        layer_names.push(name);
    }
    let config = image_config(layers, cmd);
    let config_hex = sha256_hex(&config);
    append(&format!("{config_hex}.json"), &config);
    let manifest = json!([{ "Config": format!("{config_hex}.json"), "RepoTags": ["test:latest"], "Layers": layer_names }]);
    append("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    builder.into_inner().unwrap().flush().unwrap();
    WrittenImage {
        path: archive.to_owned(),
        manifest_digest: String::new(),
        config_digest: format!("sha256:{config_hex}"),
        layer_blob_paths: Vec::new(),
    }
}

/// A busybox OCI layout in `dir` whose default command is `cmd`.
pub fn busybox_image(dir: &Path, cmd: &[&str]) -> WrittenImage {
    write_oci_layout(dir, &[layer(busybox_layer(), true)], cmd)
}
