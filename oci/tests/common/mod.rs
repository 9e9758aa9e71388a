//! Test helpers: small OCI images from `/bin/busybox` and hand-made tar entries (OCI
//! layouts through `shoal_oci::image_layout`, plus OCI archives and docker-archives and
//! layers with entries a real builder refuses), so nothing is downloaded at test time.
//! Included by the daemon's and vm-tests' tests too (`#[path]`).

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;

#[allow(unused_imports)] // each test file uses a different part
pub use shoal_oci::image_layout::{BUSYBOX, Layer, WrittenImage, image_config, layer, sha256_hex};

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
    shoal_oci::image_layout::tar_header(kind, size, mode)
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

/// The base layer: busybox, its applets and the directories a container needs.
pub fn busybox_layer() -> Vec<u8> {
    shoal_oci::image_layout::busybox_layer(Path::new(BUSYBOX)).expect("busybox-static is installed")
}

/// Writes an OCI image layout directory.
pub fn write_oci_layout(dir: &Path, layers: &[Layer], cmd: &[&str]) -> WrittenImage {
    shoal_oci::image_layout::write_oci_layout(dir, layers, cmd).unwrap()
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
    shoal_oci::image_layout::busybox_image(dir, cmd).expect("busybox-static is installed")
}

/// How a test or bench binary starts the runtime's zygote. It cannot re-run itself as one
/// (a test harness has its own `main`), so: this crate's `shoal-oci-zygote`; else the
/// including package's `shoal` binary as `shoal zygote`; else `SHOAL_BIN`, or the `shoal`
/// that cargo built next to this binary's `deps/` directory.
pub fn zygote_command() -> shoal_oci::ZygoteCommand {
    const ZYGOTE: &str = "zygote";
    if let Some(path) = option_env!("CARGO_BIN_EXE_shoal-oci-zygote") {
        return shoal_oci::ZygoteCommand::new(path, Vec::<String>::new());
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_shoal") {
        return shoal_oci::ZygoteCommand::new(path, [ZYGOTE]);
    }
    let shoal = std::env::var_os("SHOAL_BIN")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.join("shoal"))
        })
        .expect("a path for the shoal binary");
    shoal_oci::ZygoteCommand::new(shoal, [ZYGOTE])
}

/// Times `samples` create+start runs of a container of the image at `image_dir`, each until
/// the runtime reports it running, through `LibcontainerRuntime` directly (no daemon, no
/// state, no network): the baseline of the apply-to-running benches. Needs root.
pub fn time_direct_create_start(
    image_dir: &Path,
    root: &Path,
    samples: usize,
    command: &[&str],
) -> Vec<std::time::Duration> {
    use shoal_oci::{
        ContainerConfig, ContainerStatus, ImageStore, LibcontainerRuntime, Limits, RootfsMode,
        Runtime, RuntimeSettings,
    };
    let images = ImageStore::open(&root.join("images")).unwrap();
    let image = images.prepare(image_dir, None).unwrap();
    let mut settings = RuntimeSettings::new(&root.join("runtime"));
    settings.cgroup_parent = "shoal/bench-direct".to_string();
    settings.zygote = zygote_command();
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    let mut times = Vec::with_capacity(samples);
    for index in 0..samples {
        let id = format!("direct-{index}");
        let config = ContainerConfig {
            id: id.clone(),
            image: image.clone(),
            command: Some(command.iter().map(|part| part.to_string()).collect()),
            env: Vec::new(),
            limits: Limits {
                cpu_millis: Some(100),
                memory_bytes: Some(64 << 20),
                pids_max: Some(256),
            },
            netns_path: None,
            rootfs_mode: RootfsMode::Auto,
            mounts: Vec::new(),
            annotations: Default::default(),
        };
        let started = std::time::Instant::now();
        runtime.create(&config).unwrap();
        runtime.start(&id).unwrap();
        while runtime.state(&id).unwrap().status != ContainerStatus::Running {
            assert!(started.elapsed().as_secs() < 10, "{id} never ran");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        times.push(started.elapsed());
        runtime.stop(&id, 0).unwrap();
        runtime.delete(&id).unwrap();
    }
    times
}
