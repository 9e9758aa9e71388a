//! Image handling against real files: the three on-disk formats, digest checks, tampering,
//! unsafe layer entries, whiteouts, and both rootfs strategies (overlayfs and copy).

mod common;

use std::fs;
use std::path::Path;

use common::*;
use shoal_oci::image_source::SourceError;
use shoal_oci::layer_cache::CacheError;
use shoal_oci::layer_unpack::UnpackError;
use shoal_oci::rootfs::{RootfsKind, build_rootfs, remove_rootfs};
use shoal_oci::{Digest, ImageError, ImageStore, RootfsMode};

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("cache")).unwrap()
}

fn assert_busybox_rootfs(root: &Path) {
    let busybox = fs::read(root.join("bin/busybox")).unwrap();
    assert_eq!(busybox, fs::read(BUSYBOX).unwrap());
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
}

#[test]
fn oci_layout_oci_archive_and_docker_archive_all_prepare() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());

    let layout = busybox_image(&dir.path().join("layout"), &["/bin/true"]);
    let prepared = store.prepare(&layout.path, None).unwrap();
    assert_eq!(
        prepared.manifest_digest.as_ref().unwrap().to_string(),
        layout.manifest_digest
    );
    assert_eq!(prepared.layer_dirs.len(), 1);
    assert_busybox_rootfs(&prepared.layer_dirs[0]);

    let archive_path = dir.path().join("image.oci.tar");
    tar_directory(&layout.path, &archive_path);
    let from_archive = store.prepare(&archive_path, None).unwrap();
    assert_eq!(from_archive.manifest_digest, prepared.manifest_digest);
    // Same uncompressed layer, same cache entry.
    assert_eq!(from_archive.layer_dirs, prepared.layer_dirs);

    for gzipped in [false, true] {
        let docker_path = dir.path().join(format!("docker-{gzipped}.tar"));
        let written = write_docker_archive(
            &docker_path,
            &[layer(busybox_layer(), gzipped)],
            &["/bin/true"],
        );
        let from_docker = store.prepare(&docker_path, None).unwrap();
        assert_eq!(from_docker.manifest_digest, None);
        assert_eq!(from_docker.config_digest.to_string(), written.config_digest);
        assert_eq!(from_docker.layer_dirs, prepared.layer_dirs);
    }
}

#[test]
fn expected_digest_must_match() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = busybox_image(&dir.path().join("layout"), &["/bin/true"]);
    let manifest: Digest = layout.manifest_digest.parse().unwrap();
    let config: Digest = layout.config_digest.parse().unwrap();
    store.prepare(&layout.path, Some(&manifest)).unwrap();
    store.prepare(&layout.path, Some(&config)).unwrap();
    let other = Digest::of_bytes(b"another image");
    let error = store.prepare(&layout.path, Some(&other)).unwrap_err();
    assert!(
        matches!(error, ImageError::UnexpectedDigest { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&other.to_string()));
}

#[test]
fn tampered_layer_is_refused_and_nothing_is_cached() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = write_oci_layout(
        &dir.path().join("layout"),
        &[layer(
            layer_tar(&[Entry::File("hello", b"hello world".to_vec(), 0o644)]),
            false,
        )],
        &["/bin/true"],
    );
    let blob_path = &layout.layer_blob_paths[0];
    let mut blob = fs::read(blob_path).unwrap();
    let position = blob
        .windows(5)
        .position(|window| window == b"hello")
        .unwrap()
        + 512;
    let position = blob[position..].iter().position(|&b| b == b'w').unwrap() + position;
    blob[position] = b'W';
    fs::write(blob_path, &blob).unwrap();

    let error = store.prepare(&layout.path, None).unwrap_err();
    assert!(
        matches!(
            &error,
            ImageError::Cache(CacheError::LayerMismatch { what: "digest", .. })
        ),
        "{error}"
    );
    assert_eq!(
        fs::read_dir(dir.path().join("cache/layers"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        fs::read_dir(dir.path().join("cache/tmp")).unwrap().count(),
        0
    );
}

#[test]
fn tampered_config_and_missing_blobs_are_refused() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = busybox_image(&dir.path().join("layout"), &["/bin/true"]);
    let config_path = layout
        .path
        .join("blobs/sha256")
        .join(layout.config_digest.trim_start_matches("sha256:"));
    let config = fs::read(&config_path).unwrap();
    fs::write(
        &config_path,
        String::from_utf8(config.clone())
            .unwrap()
            .replace("true", "echo"),
    )
    .unwrap();
    let error = store.prepare(&layout.path, None).unwrap_err();
    assert!(
        matches!(
            &error,
            ImageError::Source(SourceError::DigestMismatch { .. })
        ),
        "{error}"
    );

    fs::remove_file(&config_path).unwrap();
    let error = store.prepare(&layout.path, None).unwrap_err();
    assert!(
        matches!(&error, ImageError::Source(SourceError::MissingBlob { .. })),
        "{error}"
    );

    let error = store
        .prepare(&dir.path().join("nowhere"), None)
        .unwrap_err();
    assert!(
        matches!(&error, ImageError::Source(SourceError::NotFound { .. })),
        "{error}"
    );

    let not_an_image = dir.path().join("empty");
    fs::create_dir(&not_an_image).unwrap();
    let error = store.prepare(&not_an_image, None).unwrap_err();
    assert!(
        matches!(
            &error,
            ImageError::Source(SourceError::UnknownFormat { .. })
        ),
        "{error}"
    );
}

fn unpack_error(entries: Vec<Entry>) -> UnpackError {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = write_oci_layout(
        &dir.path().join("layout"),
        &[layer(layer_tar(&entries), false)],
        &["/bin/true"],
    );
    let error = store.prepare(&layout.path, None).unwrap_err();
    assert_eq!(
        fs::read_dir(dir.path().join("cache/layers"))
            .unwrap()
            .count(),
        0
    );
    match error {
        ImageError::Cache(CacheError::Unpack { source, .. }) => source,
        other => panic!("expected an unpack error, got {other}"),
    }
}

#[test]
fn escaping_paths_symlink_tricks_and_devices_are_refused() {
    if !require_root() {
        return;
    }
    let error = unpack_error(vec![Entry::RawFile("../escaped", b"x".to_vec())]);
    assert!(
        matches!(&error, UnpackError::PathEscapes { entry } if entry == "../escaped"),
        "{error}"
    );

    let error = unpack_error(vec![Entry::RawFile("a/../../escaped", b"x".to_vec())]);
    assert!(matches!(&error, UnpackError::PathEscapes { .. }), "{error}");

    let error = unpack_error(vec![Entry::RawFile("/etc/escaped", b"x".to_vec())]);
    assert!(matches!(&error, UnpackError::PathEscapes { .. }), "{error}");

    let error = unpack_error(vec![Entry::File("a/.wh...", Vec::new(), 0o644)]);
    assert!(matches!(&error, UnpackError::PathEscapes { .. }), "{error}");

    let outside = tempfile::tempdir().unwrap();
    let outside_path: &'static str = Box::leak(
        outside
            .path()
            .to_string_lossy()
            .into_owned()
            .into_boxed_str(),
    );
    let error = unpack_error(vec![
        Entry::Symlink("link", outside_path),
        Entry::File("link/escaped", b"x".to_vec(), 0o644),
    ]);
    assert!(
        matches!(&error, UnpackError::ThroughSymlink { .. }),
        "{error}"
    );
    assert!(!outside.path().join("escaped").exists());

    let error = unpack_error(vec![Entry::CharDevice("dev/null")]);
    assert!(matches!(&error, UnpackError::DeviceNode { .. }), "{error}");
}

fn whiteout_image(dir: &Path) -> shoal_oci::PreparedImage {
    let lower = layer_tar(&[
        Entry::Dir("a/"),
        Entry::File("a/keep", b"keep".to_vec(), 0o644),
        Entry::File("a/gone", b"gone".to_vec(), 0o644),
        Entry::Dir("d/"),
        Entry::File("d/old", b"old".to_vec(), 0o644),
        Entry::File("replaced", b"v1".to_vec(), 0o644),
    ]);
    let upper = layer_tar(&[
        Entry::File("a/.wh.gone", Vec::new(), 0o644),
        Entry::File("d/.wh..wh..opq", Vec::new(), 0o644),
        Entry::File("d/new", b"new".to_vec(), 0o644),
        Entry::File("replaced", b"v2".to_vec(), 0o600),
    ]);
    let layout = write_oci_layout(
        &dir.join("layout"),
        &[layer(lower, true), layer(upper, false)],
        &["/bin/true"],
    );
    store(dir).prepare(&layout.path, None).unwrap()
}

fn assert_whiteouts_applied(root: &Path) {
    assert_eq!(fs::read(root.join("a/keep")).unwrap(), b"keep");
    assert!(!root.join("a/gone").exists());
    assert!(!root.join("d/old").exists());
    assert_eq!(fs::read(root.join("d/new")).unwrap(), b"new");
    assert_eq!(fs::read(root.join("replaced")).unwrap(), b"v2");
    let names: Vec<_> = fs::read_dir(root.join("d"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["new"]);
}

#[test]
fn whiteouts_work_with_copy_and_overlay() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = whiteout_image(dir.path());

    let copy_dir = dir.path().join("copy");
    fs::create_dir(&copy_dir).unwrap();
    let copied = build_rootfs(&image.layer_dirs, &copy_dir, RootfsMode::Copy).unwrap();
    assert_eq!(copied.kind, RootfsKind::Copy);
    assert_whiteouts_applied(&copied.path);
    remove_rootfs(&copied).unwrap();
    assert!(!copied.path.exists());

    let overlay_dir = dir.path().join("overlay");
    fs::create_dir(&overlay_dir).unwrap();
    let overlaid = build_rootfs(&image.layer_dirs, &overlay_dir, RootfsMode::Overlay).unwrap();
    assert_eq!(overlaid.kind, RootfsKind::Overlay);
    assert_whiteouts_applied(&overlaid.path);
    // Writes go to the container's upper dir, never into the shared cache.
    fs::write(overlaid.path.join("a/keep"), b"changed").unwrap();
    assert_eq!(
        fs::read(image.layer_dirs[0].join("a/keep")).unwrap(),
        b"keep"
    );
    remove_rootfs(&overlaid).unwrap();
    assert!(!overlaid.path.exists());
    assert!(!overlay_dir.join("upper").exists());

    let auto_dir = dir.path().join("auto");
    fs::create_dir(&auto_dir).unwrap();
    let auto = build_rootfs(&image.layer_dirs, &auto_dir, RootfsMode::Auto).unwrap();
    assert_whiteouts_applied(&auto.path);
    remove_rootfs(&auto).unwrap();
}

/// Runs skopeo; it must be installed under CI (the test script installs it).
fn skopeo(args: &[&str]) -> bool {
    match std::process::Command::new("skopeo").args(args).output() {
        Ok(output) => {
            assert!(
                output.status.success(),
                "skopeo {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            true
        }
        Err(error) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "skopeo is needed under CI: {error}"
            );
            eprintln!("skopeo not installed: skipping");
            false
        }
    }
}

#[test]
fn archives_written_by_skopeo_prepare() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let layout = busybox_image(&dir.path().join("layout"), &["/bin/true"]);
    let ours = store.prepare(&layout.path, None).unwrap();
    let source = format!("oci:{}", layout.path.display());
    let docker_archive = dir.path().join("docker.tar");
    let oci_archive = dir.path().join("oci.tar");
    let docker_target = format!(
        "docker-archive:{}:shoal/test:latest",
        docker_archive.display()
    );
    let oci_target = format!("oci-archive:{}", oci_archive.display());
    if !skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        &source,
        &docker_target,
    ]) {
        return;
    }
    skopeo(&["--insecure-policy", "copy", "--quiet", &source, &oci_target]);

    let from_docker = store.prepare(&docker_archive, None).unwrap();
    assert_eq!(
        from_docker.layer_dirs, ours.layer_dirs,
        "same diff id, same cache entry"
    );
    assert_busybox_rootfs(&from_docker.layer_dirs[0]);
    let from_oci = store.prepare(&oci_archive, None).unwrap();
    assert_eq!(from_oci.layer_dirs, ours.layer_dirs);
}
