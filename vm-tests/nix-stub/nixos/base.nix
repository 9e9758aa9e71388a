# The stub NixOS: the top-level options a NixOS configuration of shoal
# touches. `assertions`, `warnings` and `meta` are typed as in NixOS; the other
# namespaces are open (any attribute merges, lists concatenate), because the
# stub cannot hold all of NixOS. `services` is not declared here: every
# `services.*` option must come from a module, so a misspelt
# `services.shoal.*` option is an error.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  open = mkOption { type = types.anything; default = { }; };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf (types.submodule {
        options.assertion = mkOption { type = types.bool; };
        options.message = mkOption { type = types.str; };
      });
      default = [ ];
    };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    # As NixOS's misc/meta.nix: a maintainer must be one of lib.maintainers
    # (the stub's list is empty, like any name not in nixpkgs' list), and
    # doc is a path to a Markdown file.
    meta = {
      maintainers = mkOption {
        type = types.listOf (lib.mkOptionType {
          name = "maintainer";
          check = maintainer: lib.elem maintainer (lib.attrValues lib.maintainers);
        });
        default = [ ];
      };
      doc = mkOption {
        type = types.path // { merge = _: defs: defs; };
        internal = true;
      };
    };
    boot = open;
    documentation = open;
    environment = open;
    networking = open;
    nix = open;
    security = open;
    system = open;
    systemd = open;
    users = open;
    virtualisation = open;
  };
}
