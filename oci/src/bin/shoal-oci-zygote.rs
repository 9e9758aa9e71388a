//! A bare zygote binary for this crate's own tests and benches, which cannot re-run the
//! test harness as a zygote (`shoal` itself runs as `shoal zygote`). Not installed: the
//! package build only builds the `shoal` package.

fn main() -> std::process::ExitCode {
    shoal_oci::zygote::main()
}
