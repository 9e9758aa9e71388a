# The stub nixpkgs `lib`: the small part of the real one that shoal's flake,
# NixOS module and VM tests use, written from scratch so that
# `nix flake check --no-build` and the module drift test run offline.
# Every function keeps the real one's name and meaning for the inputs we use;
# anything not provided is an evaluation error, which is the point: a typo in
# the real files is caught here too.
let
  builtinsSubset = {
    inherit (builtins)
      attrNames attrValues concatLists concatMap concatStringsSep elem elemAt
      filter foldl' functionArgs genList hasAttr head isAttrs isBool isFloat
      isFunction isInt isList isPath isString length listToAttrs mapAttrs match
      replaceStrings split stringLength substring tail toJSON toString typeOf;
  };

  base = with builtinsSubset; rec {
    inherit (builtinsSubset)
      attrNames attrValues concatLists concatMap concatStringsSep elem elemAt
      filter foldl' functionArgs genList hasAttr head isAttrs isBool isFloat
      isFunction isInt isList isPath isString length listToAttrs mapAttrs match
      replaceStrings stringLength substring tail toJSON typeOf;

    id = x: x;
    const = x: _: x;
    fix = f: let x = f x; in x;
    flip = f: a: b: f b a;
    optional = cond: x: if cond then [ x ] else [ ];
    optionals = cond: xs: if cond then xs else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    optionalString = cond: s: if cond then s else "";
    foldl = op: nul: list: builtins.foldl' op nul list;
    foldr = op: nul: list:
      let
        len = length list;
        go = n: if n == len then nul else op (elemAt list n) (go (n + 1));
      in
      go 0;
    any = builtins.any;
    all = builtins.all;
    last = list: assert list != [ ]; elemAt list (length list - 1);
    unique = foldl' (acc: e: if elem e acc then acc else acc ++ [ e ]) [ ];
    flatten = x: if isList x then concatMap flatten x else [ x ];
    range = first: last: if first > last then [ ] else genList (n: first + n) (last - first + 1);
    imap0 = f: list: genList (n: f n (elemAt list n)) (length list);
    imap1 = f: list: genList (n: f (n + 1) (elemAt list n)) (length list);
    sort = builtins.sort;
    reverseList = xs: let l = length xs; in genList (n: elemAt xs (l - n - 1)) l;
    intersectLists = e: filter (x: elem x e);
    subtractLists = e: filter (x: !(elem x e));
    zipListsWith = f: a: b:
      genList (n: f (elemAt a n) (elemAt b n)) (if length a < length b then length a else length b);

    # strings
    splitString = sep: s:
      filter isString (split (escapeRegex sep) s);
    escapeRegex = s:
      replaceStrings
        [ "\\" "[" "]" "{" "}" "(" ")" "." "*" "+" "?" "^" "$" "|" ]
        [ "\\\\" "\\[" "\\]" "\\{" "\\}" "\\(" "\\)" "\\." "\\*" "\\+" "\\?" "\\^" "\\$" "\\|" ]
        s;
    hasPrefix = pref: s: substring 0 (stringLength pref) s == pref;
    hasSuffix = suf: s:
      let
        ls = stringLength s;
        lf = stringLength suf;
      in
      lf <= ls && substring (ls - lf) lf s == suf;
    hasInfix = infix: s:
      let plain = builtins.unsafeDiscardStringContext; in
      match ".*${escapeRegex (plain infix)}.*" (plain s) != null;
    removePrefix = pref: s:
      if hasPrefix pref s then substring (stringLength pref) (stringLength s) s else s;
    concatMapStringsSep = sep: f: list: concatStringsSep sep (map f list);
    concatMapStrings = f: list: concatStringsSep "" (map f list);
    concatStrings = concatStringsSep "";
    # As the real one, a leading zero is an error (octal or zero-padded?).
    toInt = s:
      let stripped = match "[[:space:]]*(-?[0-9]+)[[:space:]]*" s; in
      if stripped == null then throw "toInt: Could not convert ${toJSON s} to int."
      else if match "0[0-9]+" (head stripped) != null then
        throw "toInt: Ambiguity in interpretation of ${toJSON s} between octal and zero padded integer."
      else builtins.fromJSON (head stripped);
    escapeShellArg = arg:
      let s = builtins.toString arg; in
      if match "[[:alnum:],._+:@%/-]+" s != null then s
      else "'${replaceStrings [ "'" ] [ "'\\''" ] s}'";
    escapeShellArgs = concatMapStringsSep " " escapeShellArg;
    toUpper = replaceStrings (stringToCharacters "abcdefghijklmnopqrstuvwxyz")
      (stringToCharacters "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    stringToCharacters = s: genList (p: substring p 1 s) (stringLength s);
    isStorePath = x:
      let s = builtins.toString x; in
      isString s && hasPrefix "${builtins.storeDir}/" s;
    strings = { inherit hasPrefix hasSuffix isStorePath; };
    # lib.path.hasStorePathPrefix: the path is a store path or below one
    # (the real one takes only path values; types.pathWith converts strings).
    path.hasStorePathPrefix = x:
      let s = builtins.unsafeDiscardStringContext (builtins.toString x); in
      hasPrefix "${builtins.storeDir}/" s && stringLength s > stringLength builtins.storeDir + 1;

    # attribute sets
    attrByPath = path: default: set:
      if path == [ ] then set
      else if isAttrs set && set ? ${head path} then attrByPath (tail path) default set.${head path}
      else default;
    getAttrFromPath = path: set:
      attrByPath path (throw "cannot find attribute `${concatStringsSep "." path}'") set;
    setAttrByPath = path: value:
      if path == [ ] then value else { ${head path} = setAttrByPath (tail path) value; };
    nameValuePair = name: value: { inherit name value; };
    mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (attrNames attrs);
    mapAttrs' = f: attrs: listToAttrs (mapAttrsToList f attrs);
    filterAttrs = pred: attrs:
      listToAttrs (filter (nv: pred nv.name nv.value) (mapAttrsToList nameValuePair attrs));
    filterAttrsRecursive = pred: attrs:
      listToAttrs (concatMap
        (name:
          let v = attrs.${name}; in
          if pred name v then [ (nameValuePair name (if isAttrs v && !(isDerivation v) then filterAttrsRecursive pred v else v)) ]
          else [ ])
        (attrNames attrs));
    genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
    recursiveUpdate = lhs: rhs:
      lhs // mapAttrs
        (name: value:
          if isAttrs value && lhs ? ${name} && isAttrs lhs.${name} && !(isDerivation value)
          then recursiveUpdate lhs.${name} value
          else value)
        rhs;
    isDerivation = x: isAttrs x && (x.type or null) == "derivation";
    attrsets = { inherit recursiveUpdate filterAttrs mapAttrsToList; };
    zipAttrsWith = f: sets:
      let names = unique (concatMap attrNames sets); in
      genAttrs names (n: f n (concatMap (s: if s ? ${n} then [ s.${n} ] else [ ]) sets));

    # documentation helpers: values only the manual renders
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    literalMD = text: { _type = "literalMD"; inherit text; };
    mdDoc = x: x;

    # diagnostics
    throwIf = cond: msg: x: if cond then throw msg else x;
    throwIfNot = cond: msg: x: if cond then x else throw msg;
    warn = msg: x: builtins.trace "warning: ${msg}" x;
    assertMsg = cond: msg: if cond then true else throw msg;

    versions = { majorMinor = v: concatStringsSep "." (genList (n: elemAt (splitString "." v) n) 2); };
    platforms = { linux = [ "x86_64-linux" "aarch64-linux" ]; };
    licenses = { asl20 = { spdxId = "Apache-2.0"; fullName = "Apache License 2.0"; }; };
    maintainers = { };
    systems = { flakeExposed = [ "x86_64-linux" "aarch64-linux" ]; };
  };

  lib = base // (import ./fileset.nix { lib = base; }) // (import ./modules.nix { inherit lib; });
in
lib
