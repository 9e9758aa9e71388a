# The shoal binary, built from this repository's Cargo workspace.
{ lib, rustPlatform, pkg-config, libseccomp }:
let
  root = ../.;
in
rustPlatform.buildRustPackage {
  pname = "shoal";
  version = "0.0.0";

  # Only what cargo reads, so editing Nix files or docs does not rebuild.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crdt
      ../oci
      ../daemon
      (lib.fileset.difference ../vm-tests (lib.fileset.unions [ ../vm-tests/nix ../vm-tests/nix-stub ]))
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [ "--package" "shoal" ];

  # youki's libcontainer links libseccomp (its default `libseccomp` feature:
  # without it seccomp rules in a container spec are silently ignored).
  nativeBuildInputs = [ pkg-config ];
  buildInputs = [ libseccomp ];

  # The test suite needs what a Nix build sandbox does not give: root, real
  # containers, cgroups, network namespaces and UDP sockets between daemons.
  # It runs in CI (scripts/test-all.sh) and the VM tests run the built binary.
  doCheck = false;

  meta = {
    description = "Leaderless container orchestrator: CRDT cluster state synced over mutually authenticated HTTP/3";
    license = lib.licenses.asl20;
    mainProgram = "shoal";
    platforms = lib.platforms.linux;
  };
}
