# The stub `lib.fileset`: sets of files under a root, turned into a store
# path with `toSource`. A file set here is a membership predicate on absolute
# path strings plus the list of its top paths (so `toSource` keeps the
# directories leading to them). Like the real one, naming a path that does
# not exist is an error, and so is a file set that reaches outside `root`.
{ lib }:
let
  inherit (lib) any hasPrefix isPath;

  isFileset = x: builtins.isAttrs x && (x._type or null) == "fileset";

  under = top: path: path == top || hasPrefix "${top}/" path;

  coerce = context: x:
    if isFileset x then x
    else if isPath x then
      if builtins.pathExists x then
        let top = toString x; in
        { _type = "fileset"; contains = under top; tops = [ top ]; }
      else throw "lib.fileset.${context}: path ${toString x} does not exist"
    else throw "lib.fileset.${context}: expected a path or a file set, got a ${builtins.typeOf x}";

  unions = list:
    let sets = map (coerce "unions") list; in
    {
      _type = "fileset";
      contains = path: any (s: s.contains path) sets;
      tops = builtins.concatMap (s: s.tops) sets;
    };

  difference = positive: negative:
    let
      pos = coerce "difference" positive;
      neg = coerce "difference" negative;
    in
    {
      _type = "fileset";
      contains = path: pos.contains path && !(neg.contains path);
      inherit (pos) tops;
    };

  toSource = { root, fileset }:
    let
      set = coerce "toSource" fileset;
      rootString = toString root;
      outside = builtins.filter (t: !(under rootString t)) set.tops;
      isAncestorOfTop = path: any (t: hasPrefix "${path}/" t) set.tops;
    in
    if outside != [ ] then
      throw "lib.fileset.toSource: ${builtins.head outside} is not under root ${rootString}"
    else
      builtins.path {
        name = "source";
        path = root;
        filter = path: type:
          set.contains path || (type == "directory" && isAncestorOfTop path);
      };
in
{
  fileset = { inherit unions difference toSource; };
}
