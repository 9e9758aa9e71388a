{
  description = "shoal: a leaderless container orchestrator (CRDT cluster state synced over mutually authenticated HTTP/3)";

  # No flake.lock is committed: see nixos-module/README.md.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f (import nixpkgs {
        inherit system;
        overlays = [ self.overlays.default ];
      }));
      vmTests = [
        "deploy"
        "isolate"
        "partition"
        "pairwise-cut"
        "restart"
        "rogue"
        "tombstones"
        # Issue 11: named as the netns tests in vm-tests/tests/workloads.rs.
        "ports_host_mode"
        "ports_mesh_mode"
        "ports_conflict_unplaced"
        "egress_masquerade"
        "named_volume_survives_restarts"
        "secrets_stay_off_the_state"
        # Issue 12: named as the netns tests in vm-tests/tests/updates.rs.
        "rolling_update_serves_every_request"
        "failed_update_rolls_back_by_itself"
        "drain_moves_replicas_with_no_failed_request"
        "partition_during_update_ends_on_one_version"
        "global_service_follows_the_fleet_and_constraints_hold"
        # Issue 14: named as the netns test in vm-tests/tests/scenarios.rs.
        "fleet_of_48_split_in_halves_converges_after_the_heal"
      ];
    in
    {
      overlays.default = final: prev: {
        shoal = prev.callPackage ./nixos-module/package.nix { };
        shoal-example-image = final.callPackage ./nixos-module/examples/image.nix { };
      };

      packages = forAllSystems (pkgs: {
        default = pkgs.shoal;
        shoal = pkgs.shoal;
        example-image = pkgs.shoal-example-image;
      });

      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nixos-module ];
        services.shoal.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      checks = forAllSystems (pkgs:
        { package = pkgs.shoal; }
        // lib.genAttrs vmTests (test: import ./vm-tests/nix/${test}.nix { inherit pkgs; }));

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ pkgs.shoal ];
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.deadnix
            pkgs.nixpkgs-fmt
            pkgs.nftables
            pkgs.iproute2
            pkgs.skopeo
            pkgs.runc
          ];
        };
      });
    };
}
