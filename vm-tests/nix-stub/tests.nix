# Checks of the stub's own semantics, so the offline checks built on it can
# be trusted: a list of { name, ok } cases, every `ok` must be true. Run by
# scripts/nix-checks.sh (nix-instantiate --eval --strict).
let
  lib = import ./lib;
  pkgs = import ./pkgs { system = "x86_64-linux"; };
  inherit (lib) mkOption types mkIf mkMerge mkDefault mkForce;

  toml = pkgs.formats.toml { };
  eval = modules: (lib.evalModules { modules = [ declare ] ++ modules; }).config.x;
  fails = value: !(builtins.tryEval (builtins.deepSeq value value)).success;

  declare = { config, ... }: {
    options.x = {
      enable = mkOption { type = types.bool; default = false; };
      port = mkOption { type = types.port; default = 1; };
      list = mkOption { type = types.listOf types.str; default = [ ]; };
      derived = mkOption { type = types.int; default = 0; };
      named = mkOption {
        type = types.attrsOf (types.submodule ({ name, ... }: {
          options.id = mkOption { type = types.str; default = name; };
          options.count = mkOption { type = types.ints.positive; default = 1; };
        }));
        default = { };
      };
      settings = mkOption {
        type = types.submodule {
          freeformType = toml.type;
          options.typed = mkOption { type = types.nullOr types.str; default = null; };
        };
        default = { };
      };
    };
    # A condition on the configuration itself, as `mkIf cfg.enable` does.
    config.x = mkIf config.x.enable { derived = config.x.port + 1; };
  };

  case = name: ok: { inherit name ok; };
in
[
  (case "defaults apply" (eval [ ] == {
    enable = false;
    port = 1;
    list = [ ];
    derived = 0;
    named = { };
    settings = { typed = null; };
  }))
  (case "mkIf on own config" ((eval [{ x.enable = true; x.port = 7; }]).derived == 8))
  (case "mkIf false defines nothing" ((eval [{ x.port = mkIf false 9; }]).port == 1))
  (case "definition beats mkDefault" ((eval [{ x.port = mkDefault 5; } { x.port = 6; }]).port == 6))
  (case "mkForce beats definition" ((eval [{ x.port = mkForce 5; } { x.port = 6; }]).port == 5))
  (case "lists concatenate in order" ((eval [{ x.list = [ "a" ]; } { x.list = mkMerge [ [ "b" ] [ "c" ] ]; }]).list == [ "a" "b" "c" ]))
  (case "conflicting definitions fail" (fails (eval [{ x.port = 5; } { x.port = 6; }]).port))
  (case "type errors fail" (fails (eval [{ x.port = 70000; }]).port))
  (case "undeclared options fail" (fails (eval [{ x.nope = 1; }])))
  (case "submodule name and defaults" ((eval [{ x.named.web.count = 2; }]).named == { web = { id = "web"; count = 2; }; }))
  (case "submodule type errors fail" (fails (eval [{ x.named.web.count = 0; }]).named))
  (case "freeform keys merge with typed ones" ((eval [{ x.settings.a.b = 1; } { x.settings.a.c = "s"; x.settings.typed = "t"; }]).settings
    == { typed = "t"; a = { b = 1; c = "s"; }; }))
  (case "freeform conflicts fail" (fails (eval [{ x.settings.a = 1; } { x.settings.a = 2; }]).settings))
  (case "toml rendering" (
    (toml.generate "t.toml" { z = 1; s = "q\"uote"; l = [ 1 2 ]; t.k = true; arr = [{ n = "a"; } { n = "b"; }]; }).text
    == "l = [1, 2]\ns = \"q\\\"uote\"\nz = 1\n\n[t]\nk = true\n\n[[arr]]\nn = \"a\"\n\n[[arr]]\nn = \"b\"\n"
  ))
  (case "toml refuses null" (fails (toml.generate "t.toml" { a = null; }).text))
  (case "fileset refuses missing paths" (fails (lib.fileset.toSource { root = ./.; fileset = ./no-such-file; })))
  (case "fileset keeps only the named files" (
    builtins.attrNames
      (builtins.readDir (lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.difference ./lib ./lib/fileset.nix;
      })) == [ "lib" ]
    && builtins.attrNames (builtins.readDir "${lib.fileset.toSource { root = ./.; fileset = lib.fileset.difference ./lib ./lib/fileset.nix; }}/lib")
    == [ "default.nix" "modules.nix" ]
  ))
]
