# The stub of nixpkgs' nixos/lib/eval-config.nix, at the same path: a NixOS
# configuration from `modules`, evaluated with the stub NixOS options. The
# result has the real one's `config` and `options`, so code that evaluates a
# configuration this way (vm-tests/nix/drift.nix) runs unchanged against the
# real nixpkgs.
{ system ? builtins.currentSystem
, pkgs ? null
, modules
, specialArgs ? { }
, ...
}:
let
  lib = import ../../lib;
  packages = if pkgs == null then import ../../pkgs { inherit system; } else pkgs;
in
import ../eval.nix { inherit lib; pkgs = packages; } { inherit modules specialArgs; }
