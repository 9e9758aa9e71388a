//! Build check: libcontainer's seccomp support links the system's libseccomp
//! (`-lseccomp`). Without it the build would end much later in a bare linker error
//! (`unable to find library -lseccomp`); this stops it at once with the package to install.
//! `LIBSECCOMP_LIB_PATH` (read by libseccomp-sys too) adds a directory to search.

use std::path::{Path, PathBuf};

const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/local/lib",
];

fn main() {
    println!("cargo:rerun-if-env-changed=LIBSECCOMP_LIB_PATH");
    println!("cargo:rerun-if-changed=build.rs");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" {
        return;
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LIBSECCOMP_LIB_PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(LIB_DIRS.iter().map(PathBuf::from));
    let found = dirs.iter().any(|dir| {
        ["libseccomp.so", "libseccomp.a"]
            .iter()
            .any(|name| Path::new(dir).join(name).exists())
    });
    if !found {
        panic!(
            "\n\nshoal-oci needs libseccomp to link (libcontainer applies the containers' seccomp \
             filters through it), and it is not installed.\n\
             On Debian or Ubuntu, as root:  apt-get install libseccomp-dev\n\
             or run the project's setup:    scripts/setup-host.sh\n\
             (or point LIBSECCOMP_LIB_PATH at the directory holding libseccomp.so)\n\n"
        );
    }
}
