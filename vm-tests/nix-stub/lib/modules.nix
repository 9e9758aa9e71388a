# The stub module system: `evalModules`, `mkOption`, the `mk*` properties
# and the option types shoal's module uses, with nixpkgs' semantics for them:
# properties (mkIf, mkMerge, mkOverride, mkOrder) are pushed down to the
# options they define so that conditions are only evaluated when an option's
# value is needed (which is what lets `config = mkIf cfg.enable ...` refer to
# its own configuration); the definition with the best priority wins;
# defining an undeclared option is an error unless the module has a
# `freeformType`, which then takes every unmatched definition.
{ lib }:
let
  inherit (lib)
    all attrNames concatLists concatMap concatStringsSep elem filter foldl' functionArgs
    genAttrs head isAttrs isBool isDerivation isFloat isFunction isInt isList isPath
    isString length mapAttrs optional recursiveUpdate setAttrByPath sort tail toJSON unique;

  showLoc = loc: concatStringsSep "." loc;
  showValue = v:
    if isString v || isInt v || isBool v || v == null then toJSON v
    else "<${builtins.typeOf v}>";
  typeOfProperty = v: if isAttrs v then v._type or null else null;

  # ---- properties --------------------------------------------------------
  mkIf = condition: content: { _type = "if"; inherit condition content; };
  mkMerge = contents: { _type = "merge"; inherit contents; };
  mkOverride = priority: content: { _type = "override"; inherit priority content; };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkOrder = priority: content: { _type = "order"; inherit priority content; };
  mkBefore = mkOrder 500;
  mkAfter = mkOrder 1500;

  # An attribute set of definitions with properties around it becomes a list
  # of plain attribute sets whose values carry the properties; no condition
  # is evaluated here.
  pushDown = loc: file: v:
    let t = typeOfProperty v; in
    if t == "merge" then concatMap (pushDown loc file) v.contents
    else if t == "if" then map (mapAttrs (_: mkIf v.condition)) (pushDown loc file v.content)
    else if t == "override" then map (mapAttrs (_: mkOverride v.priority)) (pushDown loc file v.content)
    else if t == "order" then map (mapAttrs (_: mkOrder v.priority)) (pushDown loc file v.content)
    else if isAttrs v then [ v ]
    else throw "the option set `${showLoc loc}' is defined as a ${builtins.typeOf v} in ${file}, not an attribute set";

  # One definition of a single option becomes the list of its values with
  # their priority and order; conditions are evaluated here.
  discharge = loc: file: priority: order: v:
    let t = typeOfProperty v; in
    if t == "merge" then concatMap (discharge loc file priority order) v.contents
    else if t == "if" then
      if !(isBool v.condition) then
        throw "mkIf on `${showLoc loc}' in ${file}: the condition is a ${builtins.typeOf v.condition}, not a boolean"
      else if v.condition then discharge loc file priority order v.content
      else [ ]
    else if t == "override" then discharge loc file v.priority order v.content
    else if t == "order" then discharge loc file priority v.priority v.content
    else [{ inherit file priority order; value = v; }];

  # ---- options -------------------------------------------------------------
  mkOption = attrs: attrs // { _type = "option"; };
  isOption = x: isAttrs x && (x._type or null) == "option";
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  # As the real one: the default is looked up lazily and throws
  # "NAME cannot be found in pkgs" only when it is needed.
  mkPackageOption = pkgs: name: { nullable ? false, default ? name, example ? null, extraDescription ? "", pkgsText ? "pkgs" }:
    let
      name' = if isList name then lib.last name else name;
      path = if isList default then default else [ default ];
      defaultText = showLoc path;
      defaults =
        if default != null then {
          default = lib.attrByPath path (throw "${defaultText} cannot be found in ${pkgsText}") pkgs;
          defaultText = lib.literalExpression "${pkgsText}.${defaultText}";
        }
        else lib.optionalAttrs nullable { default = null; };
    in
    mkOption (defaults // {
      description = "The ${name'} package to use." + (if extraDescription == "" then "" else " ") + extraDescription;
      type = (if nullable then types.nullOr else lib.id) types.package;
    } // lib.optionalAttrs (example != null) { example = lib.literalExpression example; });

  # The value of one option from its definitions: { isDefined, value }.
  evalOptionValue = loc: opt: defs:
    let
      type = opt.type or types.anything;
      discharged = concatMap (d: discharge loc d.file 100 1000 d.value) defs;
      fromDefault = optional (opt ? default) {
        file = "the default of `${showLoc loc}'";
        priority = 1500;
        order = 1000;
        value = opt.default;
      };
      candidates = discharged ++ (if discharged == [ ] then fromDefault else [ ]);
      best = foldl' (m: d: if d.priority < m then d.priority else m) 9999 candidates;
      chosen = sort (a: b: a.order < b.order) (filter (d: d.priority == best) candidates);
      badDefs = filter (d: !(type.check d.value)) chosen;
      bad = head badDefs;
      merged = type.merge loc (map (d: { inherit (d) file value; }) chosen);
      applied = if opt ? apply then opt.apply merged else merged;
    in
    {
      isDefined = chosen != [ ];
      # As the real option attribute: the winning priority (1500 when only
      # the default is left, 9999 when nothing is defined).
      highestPrio = best;
      value =
        if chosen == [ ] then throw "the option `${showLoc loc}' is used but not defined"
        else if badDefs != [ ] then
          throw "a definition for option `${showLoc loc}' is not of type `${type.description}': ${showValue bad.value} in ${bad.file}"
        else if (opt.readOnly or false) && length (filter (d: d.file != "the default of `${showLoc loc}'") chosen) > 1 then
          throw "the option `${showLoc loc}' is read-only, but it is set more than once"
        else applied;
    };

  # ---- types ---------------------------------------------------------------
  mkOptionType =
    { name
    , description ? name
    , check ? (_: true)
    , merge ? mergeEqualOption
    , getSubOptions ? (_: { })
    , nestedTypes ? { }
    , ...
    }@attrs:
    attrs // {
      _type = "option-type";
      inherit name description check merge getSubOptions nestedTypes;
    };

  mergeEqualOption = loc: defs:
    let first = head defs; in
    foldl'
      (value: d:
        if d.value == value then value
        else throw "the option `${showLoc loc}' has conflicting definitions: ${showValue first.value} in ${first.file} and ${showValue d.value} in ${d.file}")
      first.value
      (tail defs);

  # The merge of `anything` and of the freeform formats: attribute sets
  # merge attribute by attribute (with properties inside them honoured),
  # lists concatenate, anything else must be equal.
  mergeAny = loc: defs:
    let values = map (d: d.value) defs; in
    if all isList values then concatLists values
    else if all (v: isAttrs v && !(isDerivation v)) values then mergeAttrsOf types.anything loc defs
    else mergeEqualOption loc defs;

  mergeAttrsOf = elemType: loc: defs:
    let
      names = unique (concatMap (d: attrNames d.value) defs);
      results = genAttrs names (n:
        evalOptionValue (loc ++ [ n ]) { type = elemType; }
          (concatMap (d: optional (d.value ? ${n}) { inherit (d) file; value = d.value.${n}; }) defs));
    in
    mapAttrs (_: r: r.value) (lib.filterAttrs (_: r: r.isDefined) results);

  isStringLike = x: isString x || isPath x || (isAttrs x && (x ? outPath || x ? __toString));

  ints = {
    positive = mkOptionType { name = "positiveInt"; description = "positive integer"; check = x: isInt x && x > 0; };
    unsigned = mkOptionType { name = "unsignedInt"; description = "unsigned integer"; check = x: isInt x && x >= 0; };
    between = lo: hi: mkOptionType {
      name = "intBetween";
      description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
      check = x: isInt x && x >= lo && x <= hi;
    };
    u16 = ints.between 0 65535;
  };

  types = rec {
    inherit ints;
    str = mkOptionType { name = "str"; description = "string"; check = isString; };
    nonEmptyStr = mkOptionType {
      name = "nonEmptyStr";
      description = "non-empty string";
      check = x: isString x && builtins.match "[ \t\n]*" x == null;
    };
    bool = mkOptionType { name = "bool"; description = "boolean"; check = isBool; };
    int = mkOptionType { name = "int"; description = "signed integer"; check = isInt; };
    float = mkOptionType { name = "float"; description = "floating point number"; check = isFloat; };
    port = ints.u16;
    # As the real pathWith: `inStore = false` takes only strings (a path
    # literal would be copied to the store by whatever uses it), and a
    # string with a store path prefix is in the store.
    pathWith = { inStore ? null, absolute ? null }:
      mkOptionType {
        name = "path";
        description =
          (if absolute == null then "" else if absolute then "absolute " else "relative ")
          + "path"
          + (if inStore == null then "" else if inStore then " in the Nix store" else " not in the Nix store");
        check = x:
          let
            isInStore = lib.path.hasStorePathPrefix (if isPath x then x else builtins.unsafeDiscardStringContext x);
            isAbsolute = builtins.substring 0 1 (toString x) == "/";
            isExpectedType = if inStore == null || inStore then isStringLike x else isString x;
          in
          isExpectedType && (inStore == null || inStore == isInStore) && (absolute == null || absolute == isAbsolute);
      };
    path = pathWith { absolute = true; };
    pathInStore = pathWith { inStore = true; };
    externalPath = pathWith { absolute = true; inStore = false; };
    package = mkOptionType {
      name = "package";
      description = "package";
      check = x: isDerivation x || lib.isStorePath x;
    };
    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = _: defs: concatStringsSep "\n" (map (d: d.value) defs);
    };
    anything = mkOptionType { name = "anything"; description = "anything"; merge = mergeAny; };
    raw = mkOptionType {
      name = "raw";
      description = "raw value";
      merge = loc: defs: if length defs == 1 then (head defs).value else mergeEqualOption loc defs;
    };
    unspecified = anything;
    attrs = mkOptionType {
      name = "attrs";
      description = "attribute set";
      check = isAttrs;
      merge = _: defs: foldl' (acc: d: acc // d.value) { } defs;
    };
    enum = values: mkOptionType {
      name = "enum";
      description = "one of ${concatStringsSep ", " (map showValue values)}";
      check = x: elem x values;
    };
    nullOr = elemType: mkOptionType {
      name = "nullOr";
      description = "null or ${elemType.description}";
      check = x: x == null || elemType.check x;
      merge = loc: defs:
        let nulls = filter (d: d.value == null) defs; in
        if length nulls == length defs then null
        else if nulls != [ ] then throw "the option `${showLoc loc}' is defined both null and not null in ${(head nulls).file}"
        else elemType.merge loc defs;
      getSubOptions = elemType.getSubOptions;
      nestedTypes.elemType = elemType;
    };
    listOf = elemType: mkOptionType {
      name = "listOf";
      description = "list of ${elemType.description}";
      check = isList;
      merge = loc: defs:
        map (r: r.value) (filter (r: r.isDefined) (concatLists (lib.imap1
          (i: d: lib.imap1
            (j: v: evalOptionValue (loc ++ [ "[definition ${toString i}-entry ${toString j}]" ]) { type = elemType; }
              [{ inherit (d) file; value = v; }])
            d.value)
          defs)));
      getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "*" ]);
      nestedTypes.elemType = elemType;
    };
    attrsOf = elemType: mkOptionType {
      name = "attrsOf";
      description = "attribute set of ${elemType.description}";
      check = x: isAttrs x && !(isDerivation x);
      merge = mergeAttrsOf elemType;
      getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "<name>" ]);
      nestedTypes.elemType = elemType;
    };
    lazyAttrsOf = attrsOf;
    either = left: right: mkOptionType {
      name = "either";
      description = "${left.description} or ${right.description}";
      check = x: left.check x || right.check x;
      merge = loc: defs:
        if all (d: left.check d.value) defs then left.merge loc defs
        else if all (d: right.check d.value) defs then right.merge loc defs
        else mergeEqualOption loc defs;
      nestedTypes = { inherit left right; };
    };
    oneOf = typeList: lib.foldr either (head typeList) (tail typeList);
    submoduleWith = { modules, specialArgs ? { } }: mkOptionType {
      name = "submodule";
      description = "submodule";
      check = x: isAttrs x || isFunction x || isPath x;
      merge = loc: defs:
        (evalModules {
          prefix = loc;
          specialArgs = specialArgs // { name = lib.last loc; };
          modules = modules ++ map
            (d:
              if isAttrs d.value then { _file = d.file; config = d.value; }
              else { _file = d.file; imports = [ d.value ]; })
            defs;
        }).config;
      getSubOptions = prefix:
        (evalModules {
          inherit prefix modules;
          specialArgs = specialArgs // { name = "<name>"; };
        }).options;
    };
    submodule = modules: submoduleWith { modules = if isList modules then modules else [ modules ]; };
  };

  # ---- evaluation ----------------------------------------------------------
  moduleKeywords = [ "_file" "key" "imports" "options" "config" "meta" "freeformType" "disabledModules" "_class" ];

  evalModules = { modules, specialArgs ? { }, prefix ? [ ] }:
    let
      args = { inherit lib config options; } // specialArgs;

      load = context: m:
        let
          fromFile = isPath m || isString m;
          file = if fromFile then toString m else context;
          imported = if fromFile then import m else m;
          called =
            if isFunction imported then imported (builtins.intersectAttrs (functionArgs imported) args)
            else imported;
          structured = called ? options || called ? config;
          unknown = filter (n: !(elem n moduleKeywords)) (attrNames called);
          # A top-level `meta` is a definition of config.meta, as in the
          # real module system (NixOS declares meta.maintainers, meta.doc).
          withMeta = c: if called ? meta then mkMerge [ c { inherit (called) meta; } ] else c;
          module = {
            file = called._file or file;
            options = called.options or { };
            config =
              if !structured then removeAttrs called (lib.filter (k: k != "meta") moduleKeywords)
              else if unknown != [ ] then throw "module ${file} has unsupported top-level attributes: ${concatStringsSep ", " unknown}"
              else withMeta (called.config or { });
            freeformType = called.freeformType or null;
            imports = called.imports or [ ];
          };
        in
        if !(isAttrs called) then throw "module ${file} is a ${builtins.typeOf called}, not an attribute set or a function"
        else [ module ] ++ concatMap (load module.file) module.imports;

      # The options every real evaluation has, under `_module` (a
      # submodule's getSubOptions lists them too); the returned config
      # leaves `_module` out, as the real one does.
      internalModule = {
        _file = "lib/modules.nix";
        options._module = {
          args = mkOption { type = types.attrsOf types.raw; default = { }; internal = true; description = "Arguments passed to each module."; };
          check = mkOption { type = types.bool; default = true; internal = true; description = "Whether to check whether all option definitions have matching declarations."; };
          freeformType = mkOption { type = types.nullOr types.raw; default = null; internal = true; description = "The type of unmatched definitions."; };
          specialArgs = mkOption { type = types.attrsOf types.raw; default = specialArgs; readOnly = true; internal = true; description = "Externally provided module arguments."; };
        };
      };

      collected = concatMap (load "<inline module>") ([ internalModule ] ++ modules);

      mergeDeclarations = loc: a: b:
        a // mapAttrs
          (n: bv:
            if !(a ? ${n}) then bv
            else if isOption bv || isOption a.${n} then throw "the option `${showLoc (loc ++ [ n ])}' is declared more than once"
            else mergeDeclarations (loc ++ [ n ]) a.${n} bv)
          b;
      declarations = foldl' (mergeDeclarations prefix) { } (map (m: m.options) collected);

      freeforms = filter (t: t != null) (map (m: m.freeformType) collected);

      evalTree = loc: decls: defs:
        let
          pushed = concatMap (d: map (v: { inherit (d) file; value = v; }) (pushDown loc d.file d.value)) defs;
          subDefs = n: concatMap (d: optional (d.value ? ${n}) { inherit (d) file; value = d.value.${n}; }) pushed;
          defNames = unique (concatMap (d: attrNames d.value) pushed);
          results = mapAttrs
            (n: decl:
              if isOption decl then
                let r = evalOptionValue (loc ++ [ n ]) decl (subDefs n); in
                { inherit (r) value; unmatched = [ ]; details = { inherit (r) isDefined highestPrio; }; }
              else evalTree (loc ++ [ n ]) decl (subDefs n))
            decls;
          undeclared = filter (n: !(decls ? ${n})) defNames;
        in
        {
          value = mapAttrs (_: r: r.value) results;
          details = mapAttrs (_: r: r.details) results;
          unmatched = concatMap (n: results.${n}.unmatched) (attrNames decls)
            ++ concatMap (n: map (d: d // { path = loc ++ [ n ]; }) (subDefs n)) undeclared;
        };

      root = evalTree prefix declarations (map (m: { inherit (m) file; value = m.config; }) collected);
      relative = path: lib.genList (i: builtins.elemAt path (length prefix + i)) (length path - length prefix);

      fullConfig =
        if root.unmatched == [ ] then root.value
        else if freeforms == [ ] then
          let u = head root.unmatched; in
          throw "the option `${showLoc u.path}' does not exist (defined in ${u.file})"
        else
          recursiveUpdate
            ((head freeforms).merge prefix (map (u: { inherit (u) file; value = setAttrByPath (relative u.path) u.value; }) root.unmatched))
            root.value;

      config = removeAttrs fullConfig [ "_module" ];

      annotate = loc: decls:
        mapAttrs
          (n: decl:
            if isOption decl then
              decl // {
                loc = loc ++ [ n ];
                type = decl.type or types.anything;
                value = lib.getAttrFromPath (relative (loc ++ [ n ])) fullConfig;
              } // lib.getAttrFromPath (relative (loc ++ [ n ])) root.details
            else annotate (loc ++ [ n ]) decl)
          decls;
      options = annotate prefix declarations;
    in
    { inherit config options; };
in
{
  inherit mkIf mkMerge mkOverride mkOptionDefault mkDefault mkForce mkOrder mkBefore mkAfter
    mkOption isOption mkEnableOption mkPackageOption mkOptionType mergeEqualOption types
    evalModules showLoc;
  options = { inherit mkOption mkEnableOption mkPackageOption isOption showLoc mergeEqualOption; };
  modules = { inherit evalModules mkIf mkMerge mkOverride mkDefault mkForce; };
}
