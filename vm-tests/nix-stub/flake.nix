# A stub nixpkgs flake for offline checks of shoal's flake:
#   nix flake check --no-build --override-input nixpkgs path:vm-tests/nix-stub
# It has nixpkgs' shape (`lib`, `legacyPackages`, and `import nixpkgs { ... }`
# through default.nix) with only what shoal uses; see lib/ and pkgs/.
{
  description = "stub nixpkgs for offline evaluation of shoal's flake";

  outputs = { self }: {
    lib = import ./lib;
    legacyPackages = self.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ]
      (system: import ./default.nix { inherit system; });
  };
}
