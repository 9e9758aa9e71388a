# Evaluates a NixOS configuration with the stub NixOS options, failing like
# NixOS does when an assertion does not hold.
{ lib, pkgs }:
{ modules, specialArgs ? { } }:
let
  evaluated = lib.evalModules {
    modules = [ ./base.nix ] ++ modules;
    specialArgs = { inherit pkgs; modulesPath = ./.; } // specialArgs;
  };
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) evaluated.config.assertions);
in
evaluated // {
  assertionFailures = failed;
  checked =
    if failed != [ ] then throw "failed assertions:\n- ${builtins.concatStringsSep "\n- " failed}"
    else evaluated.config;
}
