# The stub `pkgs.formats.toml`: the option type for freeform TOML settings
# and a generator. The real generator runs a converter at build time; this
# one renders the TOML text during evaluation (the drift test reads it as the
# `text` attribute of the file's derivation), for the value shapes TOML has:
# tables, arrays of tables, strings, integers, floats, booleans and arrays.
{ lib, writeText }:
let
  inherit (lib) all attrNames concatMap concatStringsSep filter isAttrs isBool isDerivation
    isFloat isInt isList isPath isString mkOptionType toJSON types;

  isTable = v: isAttrs v && !(isDerivation v);
  isTableArray = v: isList v && v != [ ] && all isTable v;

  key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else toJSON k;

  scalar = loc: v:
    if isString v || isPath v || isDerivation v then toJSON (toString v)
    else if isBool v then (if v then "true" else "false")
    else if isInt v || isFloat v then toString v
    else if isList v then "[${concatStringsSep ", " (map (scalar loc) v)}]"
    else if isTable v then "{ ${concatStringsSep ", " (map (k: "${key k} = ${scalar (loc ++ [k]) v.${k}}") (attrNames v))} }"
    else throw "formats.toml: `${concatStringsSep "." loc}' is a ${builtins.typeOf v}, which TOML cannot represent";

  # A table's own keys first, then its sub-tables, then its arrays of tables.
  table = path: attrs:
    let
      names = attrNames attrs;
      plain = filter (k: !(isTable attrs.${k}) && !(isTableArray attrs.${k})) names;
      tables = filter (k: isTable attrs.${k}) names;
      arrays = filter (k: isTableArray attrs.${k}) names;
      header = p: concatStringsSep "." (map key p);
      lines = map (k: "${key k} = ${scalar (path ++ [ k ]) attrs.${k}}\n") plain;
      subTables = map (k: "\n[${header (path ++ [ k ])}]\n" + table (path ++ [ k ]) attrs.${k}) tables;
      subArrays = concatMap
        (k: map (e: "\n[[${header (path ++ [ k ])}]]\n" + table (path ++ [ k ]) e) attrs.${k})
        arrays;
    in
    concatStringsSep "" (lines ++ subTables ++ subArrays);

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
      check = v: isTable v && valueCheck v;
      merge = types.anything.merge;
    };
    generate = name: value: writeText name (table [ ] value);
  };
}
