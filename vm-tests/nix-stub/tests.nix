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
  # pkgs.formats.toml: the TOML is written at build time by a converter, so
  # the generated file has no `text`; its input is the value's JSON.
  (case "toml generate has no text" (!(toml.generate "t.toml" { a = 1; } ? text)))
  (case "toml generate passes the value as JSON" (
    (toml.generate "t.toml" { z = 1; l = [ 1 2 ]; t.k = true; }).value == builtins.toJSON { z = 1; l = [ 1 2 ]; t.k = true; }
  ))
  (case "toml type refuses null" (!(toml.type.check { a = null; }) && toml.type.check { a.b = [ 1 "s" ]; }))
  # The module system's own options, as in the real lib.
  (case "submodule options include _module" (
    let sub = (types.submodule { options.a = mkOption { type = types.int; }; }).getSubOptions [ ]; in
    builtins.attrNames sub == [ "_module" "a" ]
    && builtins.attrNames sub._module == [ "args" "check" "freeformType" "specialArgs" ]
  ))
  (case "config has no _module" (!((lib.evalModules { modules = [ declare ]; }).config ? _module)
    && (eval [{ x.named.web = { }; }]).named.web == { id = "web"; count = 1; }))
  (case "options carry highestPrio" (
    let options = modules: (lib.evalModules { modules = [ declare ] ++ modules; }).options.x.port; in
    (options [ ]).highestPrio == 1500
    && (options [{ x.port = mkDefault 2; }]).highestPrio == 1000
    && (options [{ x.port = 2; }]).highestPrio == 100
  ))
  (case "mkPackageOption looks its default up lazily" (
    let option = lib.mkPackageOption { } "shoal" { }; in
    option.defaultText.text == "pkgs.shoal" && fails option.default
    && (lib.mkPackageOption { shoal = pkgs.jq; } "shoal" { }).default == pkgs.jq
  ))
  (case "toInt refuses a leading zero" (fails (lib.toInt "07443") && lib.toInt "7443" == 7443 && fails (lib.toInt "localhost")))
  (case "externalPath takes absolute strings outside the store only" (
    types.externalPath.check "/var/lib/shoal-keys/node.key"
    && !(types.externalPath.check ./tests.nix)
    && !(types.externalPath.check "${builtins.storeDir}/00000000000000000000000000000000-node.key")
    && !(types.externalPath.check "node.key")
  ))
  (case "path takes absolute strings, path literals and derivations" (
    types.path.check "/var/lib/images/web.tar" && types.path.check ./tests.nix && types.path.check pkgs.jq
    && !(types.path.check "web.tar")
  ))
  (case "a top-level meta is config.meta, maintainers from lib.maintainers only" (
    let
      nixos = modules: (import ./nixos/lib/eval-config.nix { system = "x86_64-linux"; inherit modules; }).config;
      module = meta: { options.y = mkOption { default = 1; }; inherit meta; };
    in
    (nixos [ (module { maintainers = [ ]; doc = ./README; }) ]).y == 1
    && fails (nixos [ (module { maintainers = [{ name = "someone"; }]; }) ]).meta.maintainers
  ))
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
