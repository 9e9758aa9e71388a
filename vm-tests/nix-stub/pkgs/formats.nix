# The stub `pkgs.formats.toml`, shaped like the real one: the option type
# for freeform TOML settings, and a generator whose result is a derivation
# that converts the value's JSON (`builtins.toJSON value`, passed as the
# `value` attribute) to TOML at build time. Like the real one it has no
# `text`: nothing can read the TOML during evaluation. (The drift test gets
# the value itself, see vm-tests/nix/drift.nix.)
{ lib, mkStub }:
let
  inherit (lib) all attrNames isAttrs isBool isDerivation isFloat isInt isList isPath isString
    mkOptionType types;

  isTable = v: isAttrs v && !(isDerivation v);

  # The real type is `oneOf [ bool int float str path (attrsOf valueType)
  # (listOf valueType) ]`: no null.
  valueCheck = v:
    isString v || isBool v || isInt v || isFloat v || isPath v || isDerivation v
    || (isList v && all valueCheck v)
    || (isTable v && all (k: valueCheck v.${k}) (attrNames v));
in
{
  toml = {}: {
    type = mkOptionType {
      name = "toml";
      description = "TOML value";
      check = valueCheck;
      merge = types.anything.merge;
    };
    generate = name: value: mkStub name {
      value = builtins.toJSON value;
      passAsFile = [ "value" ];
      buildCommand = ''json2toml "$valuePath" "$out"'';
    };
  };
}
