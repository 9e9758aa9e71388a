//! Mounts in real containers through libcontainer, as root: a read-write bind of a host
//! directory (shared between containers, kept after they are deleted), a read-only bind
//! (also read-only below its submounts), a read-only bind of a single file at a path the
//! image does not have, and a size-limited tmpfs that starts empty in every container.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use shoal_oci::{
    ContainerConfig, ExitStatus, ImageStore, LibcontainerRuntime, Limits, Mount, PreparedImage,
    RootfsMode, Runtime, RuntimeSettings,
};

struct Fixture {
    dir: tempfile::TempDir,
    image: PreparedImage,
    runtime: LibcontainerRuntime,
}

/// A failing test still removes its containers, cgroups and mounts.
impl Drop for Fixture {
    fn drop(&mut self) {
        for id in self.runtime.list() {
            let _ = self.runtime.delete(&id);
        }
    }
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let layout = busybox_image(&dir.path().join("image"), &["/bin/true"]);
    let image = ImageStore::open(&dir.path().join("cache"))
        .unwrap()
        .prepare(&layout.path, None)
        .unwrap();
    let mut settings = RuntimeSettings::new(&dir.path().join("runtime"));
    settings.cgroup_parent = "shoal-test".to_owned();
    settings.zygote = common::zygote_command();
    let (runtime, _) = LibcontainerRuntime::open(settings).unwrap();
    Fixture {
        dir,
        image,
        runtime,
    }
}

impl Fixture {
    /// A fresh directory on the host, outside the runtime's root.
    fn host_dir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("host").join(name);
        fs::create_dir_all(&path).unwrap();
        path
    }

    fn config(&self, name: &str, script: &str, mounts: Vec<Mount>) -> ContainerConfig {
        ContainerConfig {
            id: format!("{name}-{}", std::process::id()),
            image: self.image.clone(),
            command: Some(vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                format!("{{\n{script}\n}}; status=$?; echo {END}; echo {END} >&2; exit $status"),
            ]),
            env: Vec::new(),
            limits: Limits::default(),
            netns_path: None,
            rootfs_mode: RootfsMode::Auto,
            mounts,
            annotations: Default::default(),
        }
    }

    /// Runs the container to its end and returns its exit status and the script's stdout
    /// and stderr; the container is deleted.
    fn run(&self, config: &ContainerConfig) -> (ExitStatus, String, String) {
        self.runtime.create(config).unwrap();
        self.runtime.start(&config.id).unwrap();
        let exit = self
            .runtime
            .wait(&config.id, 20_000)
            .unwrap()
            .expect("container ends in time");
        let (stdout, stderr) = self.runtime.log_paths(&config.id);
        let (stdout, stderr) = (complete_log(&stdout), complete_log(&stderr));
        self.runtime.delete(&config.id).unwrap();
        (exit, stdout, stderr)
    }
}

/// The last line of both outputs after every script, so a log is complete once it has that
/// line (the reader thread may still be draining the FIFO right after the exit).
const END: &str = "end-of-script";

/// The log without its `END` line; an incomplete log after 5 s is returned as it is.
fn complete_log(path: &Path) -> String {
    let last_line = format!("{END}\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if let Some(script_output) = text.strip_suffix(&last_line) {
            return script_output.to_owned();
        }
        if Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount::Bind {
        source: source.to_owned(),
        target: target.to_owned(),
        read_only,
    }
}

#[test]
fn a_read_write_bind_is_shared_with_the_host_and_the_next_container() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let host = fixture.host_dir("data");
    let writer = fixture.config(
        "bind-writer",
        "echo written-inside > /data/from-container",
        vec![bind(&host, "/data", false)],
    );
    let (exit, stdout, stderr) = fixture.run(&writer);
    assert_eq!(
        (exit, stdout.as_str()),
        (ExitStatus::Code(0), ""),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(host.join("from-container")).unwrap(),
        "written-inside\n",
        "the host sees the file, also after the container is deleted"
    );

    // A second container, on a copied rootfs this time (whose deletion removes a plain
    // directory tree, so a bind still visible there would lose the host's files).
    let mut reader = fixture.config(
        "bind-reader",
        "cat /data/from-container; grep ' /data ' /proc/mounts",
        vec![bind(&host, "/data", false)],
    );
    reader.rootfs_mode = RootfsMode::Copy;
    let (exit, stdout, stderr) = fixture.run(&reader);
    assert_eq!(exit, ExitStatus::Code(0), "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("written-inside"), "{stdout}");
    let mount_line = lines.next().unwrap_or_default();
    let options: Vec<&str> = mount_line
        .split(' ')
        .nth(3)
        .unwrap_or_default()
        .split(',')
        .collect();
    for option in ["rw", "nosuid", "nodev"] {
        assert!(options.contains(&option), "{option} in {mount_line:?}");
    }
    assert_eq!(
        fs::read_to_string(host.join("from-container")).unwrap(),
        "written-inside\n",
        "deleting the containers left the host's files alone"
    );
}

/// Unmounts a host mount the test made, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_read_only_bind_refuses_writes_also_below_its_submounts() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let host = fixture.host_dir("config");
    fs::write(host.join("existing"), "kept\n").unwrap();
    let submount = host.join("sub");
    fs::create_dir(&submount).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &submount,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    let _unmount = Unmount(submount.clone());
    let config = fixture.config(
        "bind-ro",
        "cat /data/existing; \
         if echo x > /data/sub/y; then echo sub-writable; fi; \
         echo x > /data/new",
        vec![bind(&host, "/data", true)],
    );
    let (exit, stdout, stderr) = fixture.run(&config);
    assert!(
        matches!(exit, ExitStatus::Code(code) if code != 0),
        "{exit:?}"
    );
    assert_eq!(stdout, "kept\n", "readable, and the submount is read-only");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert!(!host.join("new").exists());
    assert!(!submount.join("y").exists());
    assert_eq!(fs::read_to_string(host.join("existing")).unwrap(), "kept\n");
}

#[test]
fn a_read_only_file_bind_appears_where_the_image_has_no_directory() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let secret = fixture.host_dir("secrets").join("tls_key");
    fs::write(&secret, "s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    // Writable by its owner, so only the read-only mount can refuse the write. The busybox
    // image has no /run: the runtime makes /run/secrets and the file's mount point.
    let config = fixture.config(
        "bind-file",
        "cat /run/secrets/tls_key; \
         if echo tampered > /run/secrets/tls_key; then echo writable; fi; \
         ls /run/secrets",
        vec![bind(&secret, "/run/secrets/tls_key", true)],
    );
    let (exit, stdout, stderr) = fixture.run(&config);
    assert_eq!(exit, ExitStatus::Code(0), "{stderr}");
    assert_eq!(stdout, "s3cret\ntls_key\n");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    assert_eq!(fs::read_to_string(&secret).unwrap(), "s3cret\n");
}

#[test]
fn a_tmpfs_is_bounded_and_empty_in_each_container() {
    if !require_root() {
        return;
    }
    let fixture = fixture();
    let scratch = || {
        vec![Mount::Tmpfs {
            target: "/scratch".to_owned(),
            size_bytes: 1 << 20,
        }]
    };
    // The write fails for want of space, not for want of a writable directory: the small
    // file beside it goes in.
    let first = fixture.config(
        "tmpfs-first",
        "echo small > /scratch/marker && cat /scratch/marker; \
         stat -c %a /scratch; grep ' /scratch ' /proc/mounts; \
         if head -c 2097152 /dev/zero > /scratch/big; then echo big-fits; fi; \
         wc -c < /scratch/big",
        scratch(),
    );
    let (exit, stdout, stderr) = fixture.run(&first);
    assert_eq!(exit, ExitStatus::Code(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[..2], ["small", "1777"]);
    let options: Vec<&str> = lines[2]
        .split(' ')
        .nth(3)
        .unwrap_or_default()
        .split(',')
        .collect();
    assert!(
        lines[2].starts_with("tmpfs /scratch tmpfs "),
        "{}",
        lines[2]
    );
    for option in ["rw", "nosuid", "nodev", "size=1024k"] {
        assert!(options.contains(&option), "{option} in {}", lines[2]);
    }
    let written_bytes: u64 = lines[3].trim().parse().expect("a byte count, not big-fits");
    assert!(
        written_bytes <= 1 << 20,
        "{written_bytes} bytes fit in a 1 MiB tmpfs"
    );
    assert!(stderr.contains("head:"), "the write failed: {stderr}");

    let second = fixture.config(
        "tmpfs-second",
        "echo \"entries:$(ls -A /scratch)\"",
        scratch(),
    );
    let (exit, stdout, stderr) = fixture.run(&second);
    assert_eq!(exit, ExitStatus::Code(0), "{stderr}");
    assert_eq!(stdout, "entries:\n");
}
