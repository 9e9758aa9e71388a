# The stub `rustPlatform.buildRustPackage`: checks what a real build would
# need first (a lock file that exists, a source, a name and version) and
# returns a derivation that cannot be built.
{ mkStub, requireOnly }:
attrs:
let
  a = requireOnly "buildRustPackage"
    [ "pname" "version" "src" "cargoLock" "cargoBuildFlags" "cargoTestFlags" "nativeBuildInputs" "buildInputs" "doCheck" "meta" "env" "buildAndTestSubdir" ]
    attrs;
  lockFile = a.cargoLock.lockFile;
in
if !(builtins.pathExists lockFile) then throw "buildRustPackage ${a.pname}: cargoLock.lockFile ${toString lockFile} does not exist"
else
  mkStub "${a.pname}-${a.version}"
    {
      inherit (a) src;
      cargoLockHash = builtins.hashFile "sha256" lockFile;
      cargoBuildFlags = a.cargoBuildFlags or [ ];
      nativeBuildInputs = a.nativeBuildInputs or [ ];
      buildInputs = a.buildInputs or [ ];
      doCheck = a.doCheck or true;
    } // {
    inherit (a) pname version;
    meta = a.meta or { };
  }
