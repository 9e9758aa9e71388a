# The stub nixpkgs package set: every attribute shoal's flake, module and VM
# tests use, as derivations that can be instantiated (so `nix flake check
# --no-build` can compute their store paths) but whose builder only fails:
# nothing here can be built. Functions that take a build description check
# the parts a typo could break (files that must exist, required arguments).
{ system ? builtins.currentSystem, overlays ? [ ], config ? { }, ... }:
let
  lib = import ../lib;
  inherit (lib) attrNames filter functionArgs isFunction;

  mkStub = name: attrs:
    derivation ({
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" "echo 'stub nixpkgs: ${name} cannot be built offline' >&2; exit 1" ];
    } // attrs);

  # Only the named arguments, so a misspelt or unknown one is an error.
  requireOnly = context: allowed: attrs:
    let unknown = filter (n: !(builtins.elem n allowed)) (attrNames attrs); in
    if unknown != [ ] then throw "${context}: unexpected argument(s) ${builtins.concatStringsSep ", " unknown}"
    else attrs;

  tool = name: mkStub name { };

  base = final: {
    inherit lib system config;
    stdenv = {
      hostPlatform = { inherit system; isLinux = true; };
      buildPlatform = { inherit system; };
    };

    callPackage = fn: overrides:
      let f = if isFunction fn then fn else import fn; in
      f (builtins.intersectAttrs (functionArgs f) final // overrides);

    # tools the dev shell, the tests and the image use
    pkg-config = tool "pkg-config";
    libseccomp = tool "libseccomp";
    cargo = tool "cargo";
    rustc = tool "rustc";
    clippy = tool "clippy";
    rustfmt = tool "rustfmt";
    rust-analyzer = tool "rust-analyzer";
    deadnix = tool "deadnix";
    nixpkgs-fmt = tool "nixpkgs-fmt";
    jq = tool "jq";
    nftables = tool "nftables";
    iproute2 = tool "iproute2";
    busybox = tool "busybox";
    skopeo = tool "skopeo";
    runc = tool "runc";
    curl = tool "curl";
    python3 = tool "python3";

    writeText = name: text: mkStub name { inherit text; };

    runCommand = name: env: buildCommand:
      mkStub name (removeAttrs (requireOnly "runCommand ${name}" [ "nativeBuildInputs" "buildInputs" "meta" ] env) [ "meta" ]
        // { inherit buildCommand; });

    formats = import ./formats.nix { inherit lib mkStub; };

    rustPlatform.buildRustPackage = import ./rust.nix { inherit mkStub requireOnly; };

    mkShell = attrs:
      let a = requireOnly "mkShell" [ "name" "packages" "inputsFrom" "nativeBuildInputs" "buildInputs" "shellHook" "env" ] attrs; in
      mkStub (a.name or "nix-shell") {
        packages = a.packages or [ ];
        inputsFrom = a.inputsFrom or [ ];
        nativeBuildInputs = a.nativeBuildInputs or [ ];
        shellHook = a.shellHook or "";
      };

    buildEnv = attrs:
      let a = requireOnly "buildEnv" [ "name" "paths" "pathsToLink" ] attrs; in
      mkStub a.name { inherit (a) paths; pathsToLink = a.pathsToLink or [ "/" ]; };

    dockerTools.buildImage = attrs:
      let
        a = requireOnly "dockerTools.buildImage"
          [ "name" "tag" "copyToRoot" "config" "compressor" "created" "extraCommands" ]
          attrs;
        compressor = a.compressor or "gz";
        suffix = { none = ".tar"; gz = ".tar.gz"; zstd = ".tar.zst"; }.${compressor}
          or (throw "dockerTools.buildImage: unknown compressor ${compressor}");
      in
      mkStub "docker-image-${a.name}${suffix}" {
        imageConfig = builtins.toJSON (a.config or { });
        copyToRoot = a.copyToRoot or [ ];
        imageTag = a.tag or "latest";
      };

    testers.runNixOSTest = import ../nixos/test.nix { inherit lib mkStub; pkgs = final; };
  };

  pkgs = lib.fix (final: builtins.foldl' (prev: overlay: prev // overlay final prev) (base final) overlays);
in
pkgs
